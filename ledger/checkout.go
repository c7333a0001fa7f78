package ledger

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"computebroker/market"
)

// beginScript claims an idempotency key for an order, or returns what the key
// already holds. KEYS: idem. ARGV: order id, fingerprint, now ms.
var beginScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[1], 'order', 'fp', 'state', 'result')
if h[1] then return {'existing', h[1], h[2], h[3], h[4] or ''} end
redis.call('HSET', KEYS[1], 'order', ARGV[1], 'fp', ARGV[2], 'state', 'pending', 'created', ARGV[3])
return {'new', ARGV[1], ARGV[2], 'pending', ''}
`)

// Begin is what an idempotency key holds.
type Begin struct {
	OrderID string
	// New is true when this call claimed the key.
	New         bool
	Fingerprint string
	// State is "pending" (a checkout is in flight or died), "done" (the order
	// exists) or "failed" (Result holds the error the first call answered).
	State  string
	Result string
}

// BeginOrder claims the SME's idempotency key for orderID, or returns the
// order (or failure) a previous call with the same key made.
func (s *Store) BeginOrder(ctx context.Context, smeID, key, fingerprint, orderID string, now time.Time) (Begin, error) {
	r, err := beginScript.Run(ctx, s.rdb, []string{idemKey(smeID, key)}, orderID, fingerprint, now.UnixMilli()).StringSlice()
	if err != nil {
		return Begin{}, unavailable("begin order", err)
	}
	return Begin{New: r[0] == "new", OrderID: r[1], Fingerprint: r[2], State: r[3], Result: r[4]}, nil
}

// FailOrder records that the checkout under key answered with result (an
// encoded error), so the same key answers the same again.
func (s *Store) FailOrder(ctx context.Context, smeID, key, result string) error {
	if err := s.rdb.HSet(ctx, idemKey(smeID, key), "state", "failed", "result", result).Err(); err != nil {
		return unavailable("fail order", err)
	}
	return nil
}

// ForgetKey frees an idempotency key whose checkout changed nothing and could
// not finish (a store was unavailable), so a retry starts afresh.
func (s *Store) ForgetKey(ctx context.Context, smeID, key string) error {
	if err := s.rdb.Del(ctx, idemKey(smeID, key)).Err(); err != nil {
		return unavailable("forget key", err)
	}
	return nil
}

// holdScript is step 1 of the checkout: hold a voucher discount.
// KEYS: voucher, cap, hold. ARGV: amount fen, annual cap fen, voucher, program, year, market, now ms.
var holdScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[3], 'state')
if st == 'held' or st == 'captured' then return st end
local v = redis.call('HMGET', KEYS[1], 'balance', 'held', 'expires_ms')
if not v[1] then return redis.error_reply('voucher_not_found') end
if tonumber(v[3]) <= tonumber(ARGV[7]) then return redis.error_reply('expired') end
local amt = tonumber(ARGV[1])
if tonumber(v[1]) - tonumber(v[2]) < amt then return redis.error_reply('no_balance') end
local c = redis.call('HMGET', KEYS[2], 'used', 'held')
if tonumber(ARGV[2]) - tonumber(c[1] or '0') - tonumber(c[2] or '0') < amt then return redis.error_reply('cap_reached') end
redis.call('HINCRBY', KEYS[1], 'held', amt)
redis.call('HINCRBY', KEYS[2], 'held', amt)
redis.call('HSET', KEYS[3], 'state', 'held', 'voucher', ARGV[3], 'program', ARGV[4], 'amount', amt,
  'year', ARGV[5], 'market', ARGV[6], 'created', ARGV[7])
return 'held'
`)

// releaseScript gives a held discount back. KEYS: voucher, cap, hold.
var releaseScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[3], 'state', 'amount')
if h[1] ~= 'held' then return h[1] or 'none' end
local amt = tonumber(h[2])
redis.call('HINCRBY', KEYS[1], 'held', -amt)
redis.call('HINCRBY', KEYS[2], 'held', -amt)
redis.call('HSET', KEYS[3], 'state', 'released')
return 'released'
`)

// budgetHoldScript holds part of a programme's budget.
// KEYS: budget, hold. ARGV: amount fen, now ms.
var budgetHoldScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[2], 'state')
if st == 'held' or st == 'captured' then return st end
local b = redis.call('HMGET', KEYS[1], 'budget', 'spent', 'held')
if not b[1] then return redis.error_reply('program_not_found') end
local amt = tonumber(ARGV[1])
if tonumber(b[1]) - tonumber(b[2]) - tonumber(b[3]) < amt then return redis.error_reply('budget_exhausted') end
redis.call('HINCRBY', KEYS[1], 'held', amt)
redis.call('HSET', KEYS[2], 'state', 'held', 'amount', amt, 'created', ARGV[2])
return 'held'
`)

// budgetSettleScript captures (ARGV[1]=capture) or releases a budget hold.
var budgetSettleScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[2], 'state', 'amount')
if h[1] ~= 'held' then return h[1] or 'none' end
local amt = tonumber(h[2])
redis.call('HINCRBY', KEYS[1], 'held', -amt)
if ARGV[1] == 'capture' then
  redis.call('HINCRBY', KEYS[1], 'spent', amt)
  redis.call('HSET', KEYS[2], 'state', 'captured')
  return 'captured'
end
redis.call('HSET', KEYS[2], 'state', 'released')
return 'released'
`)

// completeScript is step 3: capture the hold (if any) and record the order.
// KEYS: order, orders, idem, hold, voucher, cap. ARGV: order json, order id, created ms, with hold (1/0).
var completeScript = redis.NewScript(`
if ARGV[4] == '1' then
  local h = redis.call('HMGET', KEYS[4], 'state', 'amount')
  if h[1] == 'held' then
    local amt = tonumber(h[2])
    redis.call('HINCRBY', KEYS[5], 'held', -amt)
    redis.call('HINCRBY', KEYS[5], 'balance', -amt)
    redis.call('HINCRBY', KEYS[6], 'held', -amt)
    redis.call('HINCRBY', KEYS[6], 'used', amt)
    redis.call('HSET', KEYS[4], 'state', 'captured')
  elseif h[1] ~= 'captured' then
    return redis.error_reply('hold_lost:' .. tostring(h[1]))
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[3], 'state', 'done')
return 'ok'
`)

// Hold is a voucher discount held for one order.
type Hold struct {
	OrderID   string
	SMEID     string
	VoucherID string
	ProgramID string
	Amount    decimal.Decimal
	AnnualCap decimal.Decimal
	Market    market.MarketKey
	Now       time.Time
}

func (h Hold) keys() []string {
	return []string{voucherKey(h.SMEID, h.VoucherID), capKey(h.SMEID, h.ProgramID, CapYear(h.Now)), holdKey(h.SMEID, h.OrderID)}
}

// HoldDiscount runs step 1 of the checkout: it holds the discount on the
// voucher and the SME's annual cap, then on the programme budget. It fails
// with conflict ("no_balance", "cap_reached", "expired", "budget_exhausted")
// and leaves nothing held when either part cannot hold.
func (s *Store) HoldDiscount(ctx context.Context, h Hold) error {
	// Intent first, so a reconciler finds every hold a dead broker left.
	if err := zaddMS(ctx, s.rdb, pendingHoldsKey, h.Now.UnixMilli(), pendingMember(h)).Err(); err != nil {
		return unavailable("hold", err)
	}
	err := holdScript.Run(ctx, s.rdb, h.keys(), fen(h.Amount), fen(h.AnnualCap), h.VoucherID, h.ProgramID,
		CapYear(h.Now), h.Market.String(), h.Now.UnixMilli()).Err()
	if err != nil {
		s.rdb.ZRem(ctx, pendingHoldsKey, pendingMember(h))
		return holdError("hold voucher", err)
	}
	err = budgetHoldScript.Run(ctx, s.rdb, []string{budgetKey(h.ProgramID), budgetHoldKey(h.ProgramID, h.OrderID)},
		fen(h.Amount), h.Now.UnixMilli()).Err()
	if err != nil {
		if rerr := s.ReleaseDiscount(ctx, h); rerr != nil {
			return rerr
		}
		return holdError("hold budget", err)
	}
	return nil
}

func holdError(op string, err error) error {
	switch msg := scriptError(err); msg {
	case "no_balance", "cap_reached", "expired", "budget_exhausted", "voucher_not_found", "program_not_found":
		return &market.Error{Code: market.CodeConflict, Message: msg}
	}
	return unavailable(op, err)
}

func pendingMember(h Hold) string {
	return h.SMEID + "|" + h.OrderID + "|" + h.VoucherID + "|" + h.ProgramID + "|" + h.Market.String() + "|" + fmt.Sprint(CapYear(h.Now))
}

// ReleaseDiscount gives a held discount back to the voucher, cap and budget.
// It is idempotent and does nothing to a captured hold.
func (s *Store) ReleaseDiscount(ctx context.Context, h Hold) error {
	if err := releaseScript.Run(ctx, s.rdb, h.keys()).Err(); err != nil {
		return unavailable("release hold", err)
	}
	if err := budgetSettleScript.Run(ctx, s.rdb, []string{budgetKey(h.ProgramID), budgetHoldKey(h.ProgramID, h.OrderID)}, "release").Err(); err != nil {
		return unavailable("release budget", err)
	}
	if err := s.rdb.ZRem(ctx, pendingHoldsKey, pendingMember(h)).Err(); err != nil {
		return unavailable("release hold", err)
	}
	return nil
}

// Complete runs step 3 of the checkout: it captures the hold (when h is not
// nil) into a redemption, records the order and marks its idempotency key
// done, then captures the programme budget. Idempotent by order id.
func (s *Store) Complete(ctx context.Context, o market.Order, key string, h *Hold) error {
	body, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("ledger: encode order: %w", err)
	}
	keys := []string{orderKey(o.SMEID, o.ID), ordersKey(o.SMEID), idemKey(o.SMEID, key), holdKey(o.SMEID, o.ID), smeTag(o.SMEID) + ":none", smeTag(o.SMEID) + ":none"}
	withHold := "0"
	if h != nil {
		withHold = "1"
		hk := h.keys()
		keys[4], keys[5] = hk[0], hk[1]
	}
	if err := completeScript.Run(ctx, s.rdb, keys, body, o.ID, o.CreatedAt.UnixMilli(), withHold).Err(); err != nil {
		return unavailable("complete order", err)
	}
	pipe := s.rdb.Pipeline()
	pipe.Set(ctx, orderOwnerKey(o.ID), o.SMEID, 0)
	pipe.ZRem(ctx, checkoutsPendingKey, checkoutMember(o.SMEID, o.ID, market.MarketKey{Class: o.ResourceClass, Region: o.Region}))
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable("complete order", err)
	}
	if h != nil {
		if err := budgetSettleScript.Run(ctx, s.rdb, []string{budgetKey(h.ProgramID), budgetHoldKey(h.ProgramID, h.OrderID)}, "capture").Err(); err != nil {
			return unavailable("capture budget", err)
		}
		if err := s.rdb.ZRem(ctx, pendingHoldsKey, pendingMember(*h)).Err(); err != nil {
			return unavailable("complete order", err)
		}
	}
	return nil
}

// Order returns an order by id, or not_found.
func (s *Store) Order(ctx context.Context, id string) (market.Order, error) {
	sme, err := s.rdb.Get(ctx, orderOwnerKey(id)).Result()
	if isNil(err) {
		return market.Order{}, market.Errorf(market.CodeNotFound, "order %s not found", id)
	}
	if err != nil {
		return market.Order{}, unavailable("get order", err)
	}
	return s.SMEOrder(ctx, sme, id)
}

// SMEOrder returns an order of an SME by id, or not_found.
func (s *Store) SMEOrder(ctx context.Context, smeID, id string) (market.Order, error) {
	body, err := s.rdb.Get(ctx, orderKey(smeID, id)).Bytes()
	if isNil(err) {
		return market.Order{}, market.Errorf(market.CodeNotFound, "order %s not found", id)
	}
	if err != nil {
		return market.Order{}, unavailable("get order", err)
	}
	var o market.Order
	if err := json.Unmarshal(body, &o); err != nil {
		return market.Order{}, fmt.Errorf("ledger: decode order %s: %w", id, err)
	}
	return o, nil
}

// Orders lists an SME's orders, newest first.
func (s *Store) Orders(ctx context.Context, smeID string, limit int64) ([]market.Order, error) {
	ids, err := s.rdb.ZRevRange(ctx, ordersKey(smeID), 0, limit-1).Result()
	if err != nil {
		return nil, unavailable("list orders", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = orderKey(smeID, id)
	}
	vals, err := s.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, unavailable("list orders", err)
	}
	out := make([]market.Order, 0, len(ids))
	for _, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue
		}
		var o market.Order
		if json.Unmarshal([]byte(str), &o) == nil {
			out = append(out, o)
		}
	}
	return out, nil
}

// Draft is a checkout in flight: the order it will record and the hold it
// placed, saved before the commit point so that a retry with the same
// idempotency key, or the reconciler, can finish or undo it.
type Draft struct {
	Key   string       `json:"key"`
	Order market.Order `json:"order"`
	Hold  *Hold        `json:"hold,omitempty"`
}

func draftKey(sme, oid string) string { return smeTag(sme) + ":draft:" + oid }

// SaveDraft stores a checkout's draft.
func (s *Store) SaveDraft(ctx context.Context, d Draft) error {
	body, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("ledger: encode draft: %w", err)
	}
	if err := s.rdb.Set(ctx, draftKey(d.Order.SMEID, d.Order.ID), body, 7*24*time.Hour).Err(); err != nil {
		return unavailable("save draft", err)
	}
	return nil
}

// Draft returns a checkout's draft, if one was saved.
func (s *Store) Draft(ctx context.Context, smeID, orderID string) (Draft, bool, error) {
	body, err := s.rdb.Get(ctx, draftKey(smeID, orderID)).Bytes()
	if isNil(err) {
		return Draft{}, false, nil
	}
	if err != nil {
		return Draft{}, false, unavailable("get draft", err)
	}
	var d Draft
	if err := json.Unmarshal(body, &d); err != nil {
		return Draft{}, false, fmt.Errorf("ledger: decode draft: %w", err)
	}
	return d, true, nil
}

// StaleHolds returns up to max holds placed before before that were neither
// captured nor released: what a broker that died mid-checkout left behind.
func (s *Store) StaleHolds(ctx context.Context, before time.Time, max int64) ([]Hold, error) {
	members, err := s.rdb.ZRangeByScore(ctx, pendingHoldsKey, &redis.ZRangeBy{Min: "-inf", Max: fmt.Sprint(before.UnixMilli()), Count: max}).Result()
	if err != nil {
		return nil, unavailable("stale holds", err)
	}
	out := make([]Hold, 0, len(members))
	for _, m := range members {
		f := strings.Split(m, "|")
		if len(f) != 6 {
			s.rdb.ZRem(ctx, pendingHoldsKey, m)
			continue
		}
		class, region, _ := strings.Cut(f[4], ":")
		year, _ := strconv.Atoi(f[5])
		out = append(out, Hold{SMEID: f[0], OrderID: f[1], VoucherID: f[2], ProgramID: f[3],
			Market: market.MarketKey{Class: class, Region: region}, Now: time.Date(year, 7, 1, 0, 0, 0, 0, capZone)})
	}
	return out, nil
}

// checkoutsPendingKey lists checkouts without a hold that passed step 1 and
// have not finished: the reconciler's view of them (holds have their own).
const checkoutsPendingKey = "checkouts:pending"

func checkoutMember(smeID, orderID string, m market.MarketKey) string {
	return smeID + "|" + orderID + "|" + m.String()
}

// TrackCheckout records a checkout without a hold before its commit point, so
// that the reconciler finishes it if its broker dies past the commit point.
func (s *Store) TrackCheckout(ctx context.Context, smeID, orderID string, m market.MarketKey, now time.Time) error {
	if err := zaddMS(ctx, s.rdb, checkoutsPendingKey, now.UnixMilli(), checkoutMember(smeID, orderID, m)).Err(); err != nil {
		return unavailable("track checkout", err)
	}
	return nil
}

// UntrackCheckout forgets a tracked checkout (it finished or was undone).
func (s *Store) UntrackCheckout(ctx context.Context, smeID, orderID string, m market.MarketKey) error {
	if err := s.rdb.ZRem(ctx, checkoutsPendingKey, checkoutMember(smeID, orderID, m)).Err(); err != nil {
		return unavailable("untrack checkout", err)
	}
	return nil
}

// PendingCheckout is a tracked checkout without a hold.
type PendingCheckout struct {
	SMEID, OrderID string
	Market         market.MarketKey
}

// StaleCheckouts returns up to max tracked checkouts started before before.
func (s *Store) StaleCheckouts(ctx context.Context, before time.Time, max int64) ([]PendingCheckout, error) {
	members, err := s.rdb.ZRangeByScore(ctx, checkoutsPendingKey, &redis.ZRangeBy{Min: "-inf", Max: fmt.Sprint(before.UnixMilli()), Count: max}).Result()
	if err != nil {
		return nil, unavailable("stale checkouts", err)
	}
	out := make([]PendingCheckout, 0, len(members))
	for _, mem := range members {
		f := strings.Split(mem, "|")
		if len(f) != 3 {
			s.rdb.ZRem(ctx, checkoutsPendingKey, mem)
			continue
		}
		class, region, _ := strings.Cut(f[2], ":")
		out = append(out, PendingCheckout{SMEID: f[0], OrderID: f[1], Market: market.MarketKey{Class: class, Region: region}})
	}
	return out, nil
}
