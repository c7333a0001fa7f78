package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"computebroker/market"
)

// Resting jobs:
//
//	resting            zset "sme|order" by creation time (oldest fills first)
//	resting:exp        zset "sme|order" by expires_at
//	resting:events     stream: "t" add|done, "sme", "order": every brokerd rests
//	                   every job and drops it when done
//	{sme:S}:claim:O    string: the brokerd filling the order now (expires)
const (
	restingKey       = "resting"
	restingExpKey    = "resting:exp"
	restingEventsKey = "resting:events"
)

func claimKey(sme, oid string) string { return smeTag(sme) + ":claim:" + oid }

// restScript records a resting order. KEYS: order, orders, idem. ARGV: json, id, created ms.
var restScript = redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[3], 'state', 'done')
return 'ok'
`)

// RestOrder records a gtc order that could not fill as resting and tells
// every brokerd to rest it.
func (s *Store) RestOrder(ctx context.Context, o market.Order) error {
	body, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("ledger: encode order: %w", err)
	}
	if err := restScript.Run(ctx, s.rdb, []string{orderKey(o.SMEID, o.ID), ordersKey(o.SMEID), idemKey(o.SMEID, o.IdempotencyKey)},
		body, o.ID, o.CreatedAt.UnixMilli()).Err(); err != nil {
		return unavailable("rest order", err)
	}
	member := o.SMEID + "|" + o.ID
	pipe := s.rdb.Pipeline()
	pipe.Set(ctx, orderOwnerKey(o.ID), o.SMEID, 0)
	zaddMS(ctx, pipe, restingKey, o.CreatedAt.UnixMilli(), member)
	zaddMS(ctx, pipe, restingExpKey, o.Job.ExpiresAt.UnixMilli(), member)
	pipe.XAdd(ctx, &redis.XAddArgs{Stream: restingEventsKey, MaxLen: 100000, Approx: true, Values: []string{"t", "add", "sme", o.SMEID, "order", o.ID}})
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable("rest order", err)
	}
	return nil
}

// RestingOrders lists the resting orders, oldest first.
func (s *Store) RestingOrders(ctx context.Context) ([]market.Order, error) {
	members, err := s.rdb.ZRange(ctx, restingKey, 0, -1).Result()
	if err != nil {
		return nil, unavailable("list resting", err)
	}
	out := make([]market.Order, 0, len(members))
	for _, m := range members {
		sme, oid, _ := strings.Cut(m, "|")
		o, err := s.SMEOrder(ctx, sme, oid)
		if market.IsCode(err, market.CodeNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if o.Status == market.OrderResting {
			out = append(out, o)
		}
	}
	return out, nil
}

// claimScript claims a resting order for filling. KEYS: order, claim. ARGV: owner, ttl ms.
var claimScript = redis.NewScript(`
local body = redis.call('GET', KEYS[1])
if not body then return redis.error_reply('not_found') end
if not string.find(body, '"status":"resting"', 1, true) then return redis.error_reply('not_resting') end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return redis.error_reply('claimed') end
return body
`)

// ClaimResting claims a resting order for this filler for ttl. ok is false
// when the order is no longer resting or another filler holds it.
func (s *Store) ClaimResting(ctx context.Context, smeID, orderID, owner string, ttl time.Duration) (o market.Order, ok bool, err error) {
	body, err := claimScript.Run(ctx, s.rdb, []string{orderKey(smeID, orderID), claimKey(smeID, orderID)}, owner, ttl.Milliseconds()).Text()
	if err != nil {
		switch scriptError(err) {
		case "not_found", "not_resting", "claimed":
			return o, false, nil
		}
		return o, false, unavailable("claim resting", err)
	}
	if err := json.Unmarshal([]byte(body), &o); err != nil {
		return o, false, fmt.Errorf("ledger: decode order: %w", err)
	}
	return o, true, nil
}

// ReleaseClaim lets another filler try the order.
func (s *Store) ReleaseClaim(ctx context.Context, smeID, orderID string) error {
	if err := s.rdb.Del(ctx, claimKey(smeID, orderID)).Err(); err != nil {
		return unavailable("release claim", err)
	}
	return nil
}

// transitionScript moves an order from one status to another. It edits the
// JSON as text (the encoding of market.Order has one "status" and one
// "updated_at" field) rather than through cjson, which would turn empty
// arrays into objects. KEYS: order, claim. ARGV: from, to, updated_at
// (RFC 3339), respect claim (1/0).
var transitionScript = redis.NewScript(`
local body = redis.call('GET', KEYS[1])
if not body then return redis.error_reply('not_found') end
local from = '"status":"' .. ARGV[1] .. '"'
if not string.find(body, from, 1, true) then
  return redis.error_reply('status:' .. (string.match(body, '"status":"([a-z]*)"') or '?'))
end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('claimed') end
local i, j = string.find(body, from, 1, true)
body = string.sub(body, 1, i - 1) .. '"status":"' .. ARGV[2] .. '"' .. string.sub(body, j + 1)
body = string.gsub(body, '"updated_at":"[^"]*"', '"updated_at":"' .. ARGV[3] .. '"', 1)
redis.call('SET', KEYS[1], body)
return body
`)

// EndResting moves a resting order to status to (cancelled or expired)
// unless a filler holds it, and tells every brokerd to drop it. It fails
// with conflict when the order is not resting or is being filled.
func (s *Store) EndResting(ctx context.Context, smeID, orderID string, to market.OrderStatus, now time.Time) (market.Order, error) {
	body, err := transitionScript.Run(ctx, s.rdb, []string{orderKey(smeID, orderID), claimKey(smeID, orderID)},
		string(market.OrderResting), string(to), now.UTC().Format(time.RFC3339Nano), "1").Text()
	if err != nil {
		msg := scriptError(err)
		switch {
		case msg == "not_found":
			return market.Order{}, market.Errorf(market.CodeNotFound, "order %s not found", orderID)
		case msg == "claimed":
			return market.Order{}, market.Errorf(market.CodeConflict, "order %s is being filled", orderID)
		case strings.HasPrefix(msg, "status:"):
			return market.Order{}, market.Errorf(market.CodeConflict, "order %s is %s", orderID, strings.TrimPrefix(msg, "status:"))
		}
		return market.Order{}, unavailable("end resting", err)
	}
	var o market.Order
	if err := json.Unmarshal([]byte(body), &o); err != nil {
		return o, fmt.Errorf("ledger: decode order: %w", err)
	}
	return o, s.DoneResting(ctx, smeID, orderID)
}

// DoneResting removes an order from the resting sets and tells every
// brokerd to drop it (after a fill, a cancel or expiry).
func (s *Store) DoneResting(ctx context.Context, smeID, orderID string) error {
	member := smeID + "|" + orderID
	pipe := s.rdb.Pipeline()
	pipe.ZRem(ctx, restingKey, member)
	pipe.ZRem(ctx, restingExpKey, member)
	pipe.XAdd(ctx, &redis.XAddArgs{Stream: restingEventsKey, MaxLen: 100000, Approx: true, Values: []string{"t", "done", "sme", smeID, "order", orderID}})
	pipe.Del(ctx, claimKey(smeID, orderID))
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable("done resting", err)
	}
	return nil
}

// ExpiredResting lists resting orders whose expires_at is before now.
func (s *Store) ExpiredResting(ctx context.Context, now time.Time) ([][2]string, error) {
	members, err := s.rdb.ZRangeByScore(ctx, restingExpKey, &redis.ZRangeBy{Min: "-inf", Max: fmt.Sprint(now.UnixMilli()), Count: 500}).Result()
	if err != nil {
		return nil, unavailable("expired resting", err)
	}
	out := make([][2]string, 0, len(members))
	for _, m := range members {
		sme, oid, _ := strings.Cut(m, "|")
		out = append(out, [2]string{sme, oid})
	}
	return out, nil
}

// RestingEvent is an entry of the resting-jobs stream.
type RestingEvent struct {
	Done    bool // the order filled, was cancelled or expired
	SMEID   string
	OrderID string
}

// RestingPosition is the resting-jobs stream's newest entry, to follow from.
func (s *Store) RestingPosition(ctx context.Context) (string, error) {
	last, err := s.rdb.XRevRangeN(ctx, restingEventsKey, "+", "-", 1).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", unavailable("resting position", err)
	}
	if len(last) == 1 {
		return last[0].ID, nil
	}
	return "0-0", nil
}

// FollowResting calls apply with the resting-jobs stream's entries after
// from, until ctx ends.
func (s *Store) FollowResting(ctx context.Context, from string, block time.Duration, apply func([]RestingEvent)) error {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		res, err := s.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{restingEventsKey, from}, Count: 1000, Block: block}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			if backoff < 2*time.Second {
				backoff *= 2
			}
			continue
		}
		backoff = 100 * time.Millisecond
		var evs []RestingEvent
		for _, st := range res {
			for _, m := range st.Messages {
				from = m.ID
				t, _ := m.Values["t"].(string)
				sme, _ := m.Values["sme"].(string)
				oid, _ := m.Values["order"].(string)
				evs = append(evs, RestingEvent{Done: t == "done", SMEID: sme, OrderID: oid})
			}
		}
		if len(evs) > 0 {
			apply(evs)
		}
	}
	return ctx.Err()
}

// refundScript cancels a filled order and returns its discount.
// KEYS: order, hold, voucher, cap. ARGV: updated_at, with discount (1/0), return to voucher (1/0).
var refundScript = redis.NewScript(`
local body = redis.call('GET', KEYS[1])
if not body then return redis.error_reply('not_found') end
if string.find(body, '"status":"cancelled"', 1, true) then return body end
local from = '"status":"filled"'
local i, j = string.find(body, from, 1, true)
if not i then return redis.error_reply('status:' .. (string.match(body, '"status":"([a-z]*)"') or '?')) end
body = string.sub(body, 1, i - 1) .. '"status":"cancelled"' .. string.sub(body, j + 1)
body = string.gsub(body, '"updated_at":"[^"]*"', '"updated_at":"' .. ARGV[1] .. '"', 1)
redis.call('SET', KEYS[1], body)
if ARGV[2] == '1' then
  local h = redis.call('HMGET', KEYS[2], 'state', 'amount')
  if h[1] == 'captured' then
    local amt = tonumber(h[2])
    if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[3], 'balance', amt) end
    redis.call('HINCRBY', KEYS[4], 'used', -amt)
    redis.call('HSET', KEYS[2], 'state', 'refunded')
  end
end
return body
`)

// budgetRefundScript returns a captured discount to the programme budget.
var budgetRefundScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[2], 'state', 'amount')
if h[1] ~= 'captured' then return h[1] or 'none' end
redis.call('HINCRBY', KEYS[1], 'spent', -tonumber(h[2]))
redis.call('HSET', KEYS[2], 'state', 'refunded')
return 'refunded'
`)

// CancelFilled marks a filled order cancelled and gives its discount back:
// to the voucher (unless it has expired by now, when the amount stays with
// the programme), to the SME's annual cap, and to the programme budget.
// Idempotent; fails with conflict when the order is not filled.
func (s *Store) CancelFilled(ctx context.Context, o market.Order, now time.Time) (market.Order, error) {
	withDiscount, toVoucher := "0", "0"
	hk, vk, ck := holdKey(o.SMEID, o.ID), smeTag(o.SMEID)+":none", smeTag(o.SMEID)+":none"
	if o.Discount.IsPositive() && o.VoucherID != "" {
		withDiscount = "1"
		year, err := s.rdb.HGet(ctx, hk, "year").Int()
		if err != nil && !isNil(err) {
			return o, unavailable("cancel order", err)
		}
		if year == 0 {
			year = CapYear(o.CreatedAt)
		}
		vk, ck = voucherKey(o.SMEID, o.VoucherID), capKey(o.SMEID, o.ProgramID, year)
		exp, err := s.rdb.HGet(ctx, vk, "expires_ms").Int64()
		if err != nil && !isNil(err) {
			return o, unavailable("cancel order", err)
		}
		if exp > now.UnixMilli() {
			toVoucher = "1"
		}
	}
	body, err := refundScript.Run(ctx, s.rdb, []string{orderKey(o.SMEID, o.ID), hk, vk, ck},
		now.UTC().Format(time.RFC3339Nano), withDiscount, toVoucher).Text()
	if err != nil {
		msg := scriptError(err)
		switch {
		case msg == "not_found":
			return o, market.Errorf(market.CodeNotFound, "order %s not found", o.ID)
		case strings.HasPrefix(msg, "status:"):
			return o, market.Errorf(market.CodeConflict, "order %s is %s", o.ID, strings.TrimPrefix(msg, "status:"))
		}
		return o, unavailable("cancel order", err)
	}
	if withDiscount == "1" {
		if err := budgetRefundScript.Run(ctx, s.rdb, []string{budgetKey(o.ProgramID), budgetHoldKey(o.ProgramID, o.ID)}).Err(); err != nil {
			return o, unavailable("refund budget", err)
		}
	}
	var out market.Order
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		return o, fmt.Errorf("ledger: decode order: %w", err)
	}
	return out, nil
}
