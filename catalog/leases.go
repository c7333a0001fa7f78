package catalog

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

// leaseLocKey maps lease ids to their market.
const leaseLocKey = "leases:loc"

// leaseStatusScript moves a lease along reserved → started → completed|failed.
// KEYS: lease. ARGV: provider, to, allowed from statuses (comma list).
var leaseStatusScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[1], 'json', 'status')
if not h[1] then return redis.error_reply('not_found') end
if cjson.decode(h[1])['provider_id'] ~= ARGV[1] then return redis.error_reply('forbidden') end
if h[2] == ARGV[2] then return h[1] end
if not string.find(',' .. ARGV[3] .. ',', ',' .. h[2] .. ',', 1, true) then return redis.error_reply('status:' .. h[2]) end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
return h[1]
`)

// cancelLeaseScript cancels a reserved lease: the units go back to the offer
// and a refund joins the market's history stream. Idempotent.
// KEYS: lease, offer, trades stream, changes stream, state. ARGV: refund
// json, now ms, maxlen, offer id.
var cancelLeaseScript = redis.NewScript(stateLua + `
local h = redis.call('HMGET', KEYS[1], 'json', 'status')
if not h[1] then return redis.error_reply('not_found') end
if h[2] == 'cancelled' then return 'already' end
if h[2] ~= 'reserved' then return redis.error_reply('status:' .. h[2]) end
redis.call('HSET', KEYS[1], 'status', 'cancelled')
local units = tonumber(cjson.decode(h[1])['units'])
redis.call('XADD', KEYS[3], '*', 'k', 'refund', 'v', ARGV[1])
local o = sget(KEYS[5], ARGV[4])
if o then
  o.free, o.version, o.updated_at = tostring(tonumber(o.free) + units), tostring(tonumber(o.version) + 1), ARGV[2]
  redis.call('HSET', KEYS[5], ARGV[4], spack(o))
  if o.status == 'active' and o.listed == '1' then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 't', 'upsert', unpack(offer(KEYS[2], o)))
  end
end
return 'cancelled'
`)

// locateLease returns a lease's market.
func (s *Store) locateLease(ctx context.Context, id string) (market.MarketKey, error) {
	loc, err := s.rdb.HGet(ctx, leaseLocKey, id).Result()
	if errors.Is(err, redis.Nil) {
		return market.MarketKey{}, market.Errorf(market.CodeNotFound, "lease %s not found", id)
	}
	if err != nil {
		return market.MarketKey{}, unavailable("locate lease", err)
	}
	class, region, _ := strings.Cut(loc, ":")
	return market.MarketKey{Class: class, Region: region}, nil
}

// SetLeaseStatus moves the provider's lease to started (from reserved),
// completed or failed (from started). It fails with not_found, forbidden
// (another provider's lease) or conflict (a move the lease cannot make).
func (s *Store) SetLeaseStatus(ctx context.Context, providerID, id string, to market.LeaseStatus) (market.Lease, error) {
	m, err := s.locateLease(ctx, id)
	if err != nil {
		return market.Lease{}, err
	}
	from := map[market.LeaseStatus]string{market.LeaseStarted: "reserved", market.LeaseCompleted: "started", market.LeaseFailed: "reserved,started"}[to]
	if from == "" {
		return market.Lease{}, market.Invalid("a lease cannot be set to %s", to)
	}
	body, err := leaseStatusScript.Run(ctx, s.rdb, []string{LeaseKey(m, id)}, providerID, string(to), from).Text()
	if err != nil {
		msg := scriptError(err)
		switch {
		case msg == "not_found":
			return market.Lease{}, market.Errorf(market.CodeNotFound, "lease %s not found", id)
		case msg == "forbidden":
			return market.Lease{}, market.Errorf(market.CodeForbidden, "lease %s belongs to another provider", id)
		case strings.HasPrefix(msg, "status:"):
			return market.Lease{}, market.Errorf(market.CodeConflict, "lease %s is %s and cannot become %s", id, strings.TrimPrefix(msg, "status:"), to)
		}
		return market.Lease{}, unavailable("set lease status", err)
	}
	var l market.Lease
	if err := json.Unmarshal([]byte(body), &l); err != nil {
		return l, fmt.Errorf("catalog: decode lease: %w", err)
	}
	l.Status = to
	return l, nil
}

// CancelLease cancels a reserved lease (its order is cancelled before the
// lease started): the units go back to the offer and refund, the order's
// amounts, joins the history stream. It fails with conflict once the lease
// has started. Cancelling again is a no-op.
func (s *Store) CancelLease(ctx context.Context, m market.MarketKey, leaseID, offerID string, refund market.Trade, now time.Time) error {
	body, err := json.Marshal(refund)
	if err != nil {
		return fmt.Errorf("catalog: encode refund: %w", err)
	}
	err = cancelLeaseScript.Run(ctx, s.rdb, []string{LeaseKey(m, leaseID), OfferKey(m, offerID), TradeStreamKey(m), ChangeStreamKey(m), StateKey(m)},
		body, ms(now), changeStreamMaxLen, offerID).Err()
	if err != nil {
		msg := scriptError(err)
		switch {
		case msg == "not_found":
			return market.Errorf(market.CodeNotFound, "lease %s not found", leaseID)
		case strings.HasPrefix(msg, "status:"):
			return market.Errorf(market.CodeConflict, "the lease has %s; the order can no longer be cancelled", strings.TrimPrefix(msg, "status:"))
		}
		return unavailable("cancel lease", err)
	}
	return nil
}

// Lease returns a lease by id.
func (s *Store) Lease(ctx context.Context, id string) (market.Lease, error) {
	m, err := s.locateLease(ctx, id)
	if err != nil {
		return market.Lease{}, err
	}
	vals, err := s.rdb.HGetAll(ctx, LeaseKey(m, id)).Result()
	if err != nil {
		return market.Lease{}, unavailable("get lease", err)
	}
	var l market.Lease
	if err := json.Unmarshal([]byte(vals["json"]), &l); err != nil {
		return l, market.Errorf(market.CodeNotFound, "lease %s not found", id)
	}
	l.Status = market.LeaseStatus(vals["status"])
	return l, nil
}
