package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"computebroker/market"
)

// reserveScript is step 2 of the checkout and its commit point: in one
// market slot it checks the offer is still eligible at the matched price,
// takes the units, writes the lease, and appends the trade to the market's
// trade stream and the new capacity to its change stream. It is idempotent by
// order id: a repeated call returns the lease the first one made.
//
// KEYS: offer, olease, lease, trades stream, changes stream, state
// ARGV: lease id, expected price, units, hours, lease json, trade json, now ms, maxlen, offer id
var reserveScript = redis.NewScript(stateLua + `
local prev = redis.call('GET', KEYS[2])
if prev then return {'dup', prev} end
local o = sget(KEYS[6], ARGV[9])
if not o or o.status ~= 'active' then return {'reject', 'offer_inactive'} end
if o.listed ~= '1' then return {'reject', 'provider_not_approved'} end
if o.price ~= ARGV[2] then return {'reject', 'price_changed'} end
local units = tonumber(ARGV[3])
if tonumber(o.free) < units then return {'reject', 'too_few_units'} end
if tonumber(redis.call('HGET', KEYS[1], 'max_hours')) < tonumber(ARGV[4]) then return {'reject', 'too_few_hours'} end
o.free, o.version, o.updated_at = tostring(tonumber(o.free) - units), tostring(tonumber(o.version) + 1), ARGV[7]
redis.call('HSET', KEYS[6], ARGV[9], spack(o))
redis.call('HSET', KEYS[3], 'json', ARGV[5], 'status', 'reserved')
redis.call('SET', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[4], '*', 'k', 'trade', 'v', ARGV[6])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*', 't', 'upsert', unpack(offer(KEYS[1], o)))
return {'ok', ARGV[1], o.free, o.version}
`)

// Reservation is the market-slot step of a checkout.
type Reservation struct {
	Lease market.Lease // ID, OrderID, OfferID, market, units, hours, price set
	Trade market.Trade // the trade to append, amounts final
	Price decimal.Decimal
	Now   time.Time
}

// Reserved is what a reservation made.
type Reserved struct {
	LeaseID string
	// Duplicate is true when the order had already reserved (a retry).
	Duplicate bool
	UnitsFree int64
	Version   int64
}

// Reserve runs the commit point of a checkout. It fails with a conflict
// *market.Error whose message is the reason when the offer can no longer
// serve the order at that price ("price_changed", "too_few_units", …).
func (s *Store) Reserve(ctx context.Context, r Reservation) (Reserved, error) {
	m := market.MarketKey{Class: r.Lease.ResourceClass, Region: r.Lease.Region}
	lease, err := json.Marshal(r.Lease)
	if err != nil {
		return Reserved{}, fmt.Errorf("catalog: encode lease: %w", err)
	}
	trade, err := json.Marshal(r.Trade)
	if err != nil {
		return Reserved{}, fmt.Errorf("catalog: encode trade: %w", err)
	}
	res, err := reserveScript.Run(ctx, s.rdb,
		[]string{OfferKey(m, r.Lease.OfferID), OrderLeaseKey(m, r.Lease.OrderID), LeaseKey(m, r.Lease.ID), TradeStreamKey(m), ChangeStreamKey(m), StateKey(m)},
		r.Lease.ID, r.Price.String(), r.Lease.Units, r.Lease.Hours, lease, trade, ms(r.Now), changeStreamMaxLen, r.Lease.OfferID).StringSlice()
	if err != nil {
		return Reserved{}, unavailable("reserve", err)
	}
	var out Reserved
	switch res[0] {
	case "dup":
		out = Reserved{LeaseID: res[1], Duplicate: true}
	case "reject":
		return Reserved{}, &market.Error{Code: market.CodeConflict, Message: res[1]}
	default:
		out = Reserved{LeaseID: res[1]}
		fmt.Sscan(res[2], &out.UnitsFree)
		fmt.Sscan(res[3], &out.Version)
	}
	// The lease indexes (the provider's list, the location) can be rebuilt
	// from the trade stream; they are written after the commit point, again
	// by a retry in case the first attempt died before.
	pipe := s.rdb.Pipeline()
	pipe.ZAdd(ctx, "provider:"+r.Lease.ProviderID+":leases", redis.Z{Score: float64(ms(r.Now)), Member: m.String() + "|" + out.LeaseID})
	pipe.HSet(ctx, leaseLocKey, out.LeaseID, m.String())
	if _, err := pipe.Exec(ctx); err != nil {
		return out, unavailable("index lease", err)
	}
	return out, nil
}

// OrderLease returns the lease id the order's commit made in market m, or ""
// when the order never committed there. The reconciler uses it to settle
// holds a dead broker left.
func (s *Store) OrderLease(ctx context.Context, m market.MarketKey, orderID string) (string, error) {
	id, err := s.rdb.Get(ctx, OrderLeaseKey(m, orderID)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", unavailable("get order lease", err)
	}
	return id, nil
}

// Leases lists a provider's leases, newest first.
func (s *Store) Leases(ctx context.Context, providerID string, limit int64) ([]market.Lease, error) {
	members, err := s.rdb.ZRevRange(ctx, "provider:"+providerID+":leases", 0, limit-1).Result()
	if err != nil {
		return nil, unavailable("list leases", err)
	}
	out := make([]market.Lease, 0, len(members))
	for _, mem := range members {
		loc, id, _ := strings.Cut(mem, "|")
		class, region, _ := strings.Cut(loc, ":")
		m := market.MarketKey{Class: class, Region: region}
		vals, err := s.rdb.HGetAll(ctx, LeaseKey(m, id)).Result()
		if err != nil {
			return nil, unavailable("get lease", err)
		}
		var l market.Lease
		if json.Unmarshal([]byte(vals["json"]), &l) != nil {
			continue
		}
		l.Status = market.LeaseStatus(vals["status"])
		out = append(out, l)
	}
	return out, nil
}

// reserveAllScript reserves every part of a split order at once, all or
// nothing: the parts are offers of one market, so one slot. Idempotent by
// order id. KEYS: olease, trades stream, changes stream, state, then per
// part its offer and its lease. ARGV: n, now ms, maxlen, then per part:
// lease id, expected price, units, hours, lease json, trade json, offer id.
var reserveAllScript = redis.NewScript(stateLua + `
local prev = redis.call('GET', KEYS[1])
if prev then return {'dup', prev} end
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local k, a = KEYS[5 + 2 * i], 4 + 7 * i
  local o = sget(KEYS[4], ARGV[a + 6])
  if not o or o.status ~= 'active' then return {'reject', 'offer_inactive'} end
  if o.listed ~= '1' then return {'reject', 'provider_not_approved'} end
  if o.price ~= ARGV[a + 1] then return {'reject', 'price_changed'} end
  if tonumber(o.free) < tonumber(ARGV[a + 2]) then return {'reject', 'too_few_units'} end
  if tonumber(redis.call('HGET', k, 'max_hours')) < tonumber(ARGV[a + 3]) then return {'reject', 'too_few_hours'} end
end
for i = 0, n - 1 do
  local k, l, a = KEYS[5 + 2 * i], KEYS[6 + 2 * i], 4 + 7 * i
  local o = sget(KEYS[4], ARGV[a + 6])
  o.free, o.version, o.updated_at = tostring(tonumber(o.free) - tonumber(ARGV[a + 2])), tostring(tonumber(o.version) + 1), ARGV[2]
  redis.call('HSET', KEYS[4], ARGV[a + 6], spack(o))
  redis.call('HSET', l, 'json', ARGV[a + 4], 'status', 'reserved')
  redis.call('XADD', KEYS[2], '*', 'k', 'trade', 'v', ARGV[a + 5])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 't', 'upsert', unpack(offer(k, o)))
end
redis.call('SET', KEYS[1], ARGV[4])
return {'ok', ARGV[4]}
`)

// ReserveAll runs the commit point of a split order: every part, in one
// market, reserved at once or none. It answers like Reserve, with the first
// part's lease id.
func (s *Store) ReserveAll(ctx context.Context, parts []Reservation) (Reserved, error) {
	if len(parts) == 0 {
		return Reserved{}, market.Invalid("no parts to reserve")
	}
	first := parts[0].Lease
	m := market.MarketKey{Class: first.ResourceClass, Region: first.Region}
	keys := []string{OrderLeaseKey(m, first.OrderID), TradeStreamKey(m), ChangeStreamKey(m), StateKey(m)}
	args := []any{len(parts), ms(parts[0].Now), changeStreamMaxLen}
	for _, r := range parts {
		if r.Lease.ResourceClass != m.Class || r.Lease.Region != m.Region {
			return Reserved{}, market.Invalid("split parts must be in one market")
		}
		lease, err := json.Marshal(r.Lease)
		if err != nil {
			return Reserved{}, fmt.Errorf("catalog: encode lease: %w", err)
		}
		trade, err := json.Marshal(r.Trade)
		if err != nil {
			return Reserved{}, fmt.Errorf("catalog: encode trade: %w", err)
		}
		keys = append(keys, OfferKey(m, r.Lease.OfferID), LeaseKey(m, r.Lease.ID))
		args = append(args, r.Lease.ID, r.Price.String(), r.Lease.Units, r.Lease.Hours, lease, trade, r.Lease.OfferID)
	}
	res, err := reserveAllScript.Run(ctx, s.rdb, keys, args...).StringSlice()
	if err != nil {
		return Reserved{}, unavailable("reserve", err)
	}
	switch res[0] {
	case "reject":
		return Reserved{}, &market.Error{Code: market.CodeConflict, Message: res[1]}
	case "dup":
		// The first attempt's leases are the draft's; their ids are not ours.
		return Reserved{LeaseID: res[1], Duplicate: true}, nil
	}
	out := Reserved{LeaseID: res[1]}
	pipe := s.rdb.Pipeline()
	for _, r := range parts {
		pipe.ZAdd(ctx, "provider:"+r.Lease.ProviderID+":leases", redis.Z{Score: float64(ms(r.Now)), Member: m.String() + "|" + r.Lease.ID})
		pipe.HSet(ctx, leaseLocKey, r.Lease.ID, m.String())
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return out, unavailable("index lease", err)
	}
	return out, nil
}
