package catalog

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"computebroker/market"
)

// offerLocKey maps offer ids to their market.
const offerLocKey = "offers:loc"

// changeStreamMaxLen bounds each market's change stream (approximately).
const changeStreamMaxLen = "100000"

// indexMember is an offer's entry in its market's price index: all members
// have score 0 and sort lexicographically by zero-padded price ticks, then id,
// which gives exact keyset pagination with ZRANGE BYLEX.
func indexMember(ticks int64, id string) string {
	var b [84]byte
	return string(appendMember(b[:0], ticks, id))
}

// appendMember appends indexMember(ticks, id) to b.
func appendMember(b []byte, ticks int64, id string) []byte {
	var d [20]byte
	digits := strconv.AppendInt(d[:0], ticks, 10)
	if ticks < 0 || len(digits) > 19 {
		return fmt.Appendf(b, "%019d|%s", ticks, id) // not a price PriceTicks gives
	}
	const zeros = "0000000000000000000"
	b = append(append(b, zeros[:19-len(digits)]...), digits...)
	return append(append(b, '|'), id...)
}

var memberRe = regexp.MustCompile(`^[0-9]{19}\|[A-Za-z0-9_.-]{1,64}$`)

// createScript stores a new offer: its hash and its state.
// KEYS: offer, state, index, changes, trades. ARGV: id, provider, class,
// region, units, price, max_hours, specs, now ms, index member, listed,
// maxlen, now RFC 3339.
var createScript = redis.NewScript(stateLua + `
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return redis.error_reply('exists')
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'provider', ARGV[2], 'class', ARGV[3], 'region', ARGV[4],
  'list_price', ARGV[6], 'max_hours', ARGV[7], 'specs', ARGV[8])
local o = {version = '1', status = 'active', listed = ARGV[11], price = ARGV[6], price_at = ARGV[9],
  units = ARGV[5], free = ARGV[5], updated_at = ARGV[9], member = ARGV[10], provider = ARGV[2]}
redis.call('HSET', KEYS[2], ARGV[1], spack(o))
local h = offer(KEYS[1], o)
if ARGV[11] == '1' then
  redis.call('ZADD', KEYS[3], 0, ARGV[10])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[12], '*', 't', 'upsert', unpack(h))
  redis.call('XADD', KEYS[5], '*', 'k', 'tick', 'v', cjson.encode({offer_id = ARGV[1], provider_id = ARGV[2],
    resource_class = ARGV[3], region = ARGV[4], price = ARGV[6], units_free = tonumber(ARGV[5]), version = 1, ts = ARGV[13]}))
end
return h
`)

// deleteScript withdraws an active offer. KEYS: state, index, changes.
// ARGV: id, provider, now ms, maxlen.
var deleteScript = redis.NewScript(stateLua + `
local o = sget(KEYS[1], ARGV[1])
if not o or o.status ~= 'active' then return redis.error_reply('not_found') end
if o.provider ~= ARGV[2] then return redis.error_reply('forbidden') end
o.version, o.status, o.updated_at = tostring(tonumber(o.version) + 1), 'deleted', ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], spack(o))
redis.call('ZREM', KEYS[2], o.member)
if o.listed == '1' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 't', 'remove', 'id', ARGV[1], 'provider', o.provider,
    'version', o.version, 'updated_at', ARGV[3])
end
return tonumber(o.version)
`)

// listScript lists or unlists an active offer when its provider's standing
// changes. KEYS: offer, state, index, changes. ARGV: id, listed ("1"/"0"),
// now ms, maxlen.
var listScript = redis.NewScript(stateLua + `
local o = sget(KEYS[2], ARGV[1])
if not o or o.status ~= 'active' or o.listed == ARGV[2] then return 0 end
o.version, o.listed, o.updated_at = tostring(tonumber(o.version) + 1), ARGV[2], ARGV[3]
redis.call('HSET', KEYS[2], ARGV[1], spack(o))
if ARGV[2] == '1' then
  redis.call('ZADD', KEYS[3], 0, o.member)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 't', 'upsert', unpack(offer(KEYS[1], o)))
else
  redis.call('ZREM', KEYS[3], o.member)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 't', 'remove', 'id', ARGV[1], 'provider', o.provider,
    'version', o.version, 'updated_at', ARGV[3])
end
return 1
`)

// NewOffer is what a provider publishes.
type NewOffer struct {
	ID         string
	ProviderID string
	Market     market.MarketKey
	Units      int64
	Price      decimal.Decimal
	MaxHours   int64
	Specs      map[string]any
	// Listed says whether the provider is approved, so the offer enters the
	// index and the change stream at once.
	Listed bool
	Now    time.Time
}

// CreateOffer stores a new active offer.
func (s *Store) CreateOffer(ctx context.Context, n NewOffer) (market.Offer, error) {
	ticks, ok := market.PriceTicks(n.Price)
	if !ok {
		return market.Offer{}, market.Invalid("price %s cannot be represented", n.Price)
	}
	specs := []byte("{}")
	if n.Specs != nil {
		b, err := json.Marshal(n.Specs)
		if err != nil {
			return market.Offer{}, market.Invalid("specs: %v", err)
		}
		specs = b
	}
	// The location goes first: an offer is never in a market without it.
	pipe := s.rdb.Pipeline()
	pipe.HSet(ctx, offerLocKey, n.ID, n.Market.String())
	pipe.SAdd(ctx, providerOffersKey(n.ProviderID), n.ID)
	if _, err := pipe.Exec(ctx); err != nil {
		return market.Offer{}, unavailable("create offer", err)
	}
	listed := "0"
	if n.Listed {
		listed = "1"
	}
	m := n.Market
	vals, err := createScript.Run(ctx, s.rdb, []string{OfferKey(m, n.ID), StateKey(m), IndexKey(m), ChangeStreamKey(m), TradeStreamKey(m)},
		n.ID, n.ProviderID, m.Class, m.Region, n.Units, n.Price.String(), n.MaxHours, string(specs),
		ms(n.Now), indexMember(ticks, n.ID), listed, changeStreamMaxLen, rfc3339(n.Now)).StringSlice()
	if err != nil {
		if scriptError(err) == "exists" {
			return market.Offer{}, market.Errorf(market.CodeConflict, "offer %s exists", n.ID)
		}
		return market.Offer{}, unavailable("create offer", err)
	}
	return decodeOffer(pairs(vals))
}

// OfferUpdate is a provider's change to an offer; nil fields stay.
type OfferUpdate struct {
	ID         string
	ProviderID string
	Price      *decimal.Decimal
	Units      *int64
	Now        time.Time
	// Full asks for the whole offer after the update in the result (the
	// REST answer); without it only the new version comes back.
	Full bool
}

// DeleteOffer withdraws an offer; leases already made stand.
func (s *Store) DeleteOffer(ctx context.Context, id, providerID string, now time.Time) error {
	m, err := s.OfferMarket(ctx, id)
	if err != nil {
		return err
	}
	err = deleteScript.Run(ctx, s.rdb, []string{StateKey(m), IndexKey(m), ChangeStreamKey(m)},
		id, providerID, ms(now), changeStreamMaxLen).Err()
	if err != nil {
		return offerScriptError(id, "delete offer", err)
	}
	return nil
}

func offerScriptError(id, op string, err error) error {
	msg := scriptError(err)
	switch {
	case msg == "not_found":
		return market.Errorf(market.CodeNotFound, "offer %s not found", id)
	case msg == "forbidden":
		return market.Errorf(market.CodeForbidden, "offer %s belongs to another provider", id)
	case strings.HasPrefix(msg, "below_leased:"):
		return market.Errorf(market.CodeConflict, "units cannot go below the %s already leased", strings.TrimPrefix(msg, "below_leased:"))
	}
	return unavailable(op, err)
}

// OfferMarket returns the market an offer is listed in, or not_found.
func (s *Store) OfferMarket(ctx context.Context, id string) (market.MarketKey, error) {
	if m, ok := s.locs.Load(id); ok {
		return m.(market.MarketKey), nil
	}
	loc, err := s.rdb.HGet(ctx, offerLocKey, id).Result()
	if errors.Is(err, redis.Nil) {
		return market.MarketKey{}, market.Errorf(market.CodeNotFound, "offer %s not found", id)
	}
	if err != nil {
		return market.MarketKey{}, unavailable("locate offer", err)
	}
	class, region, ok := strings.Cut(loc, ":")
	if !ok {
		return market.MarketKey{}, fmt.Errorf("catalog: bad location %q of offer %s", loc, id)
	}
	m := market.MarketKey{Class: class, Region: region}
	s.locs.Store(id, m)
	return m, nil
}

// Offer returns an offer in any status, or not_found.
func (s *Store) Offer(ctx context.Context, id string) (market.Offer, error) {
	m, err := s.OfferMarket(ctx, id)
	if err != nil {
		return market.Offer{}, err
	}
	pipe := s.rdb.Pipeline()
	h, st := pipe.HGetAll(ctx, OfferKey(m, id)), pipe.HGet(ctx, StateKey(m), id)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return market.Offer{}, unavailable("get offer", err)
	}
	vals := h.Val()
	if len(vals) == 0 || st.Err() != nil {
		return market.Offer{}, market.Errorf(market.CodeNotFound, "offer %s not found", id)
	}
	return offerOf(vals, st.Val())
}

// offerOf decodes an offer from its hash's fields and its stored state.
func offerOf(vals map[string]string, state string) (market.Offer, error) {
	if !mergeState(vals, state) {
		return market.Offer{}, fmt.Errorf("catalog: offer %s: malformed state %q", vals["id"], state)
	}
	return decodeOffer(vals)
}

// Listed reports whether the offer's provider was approved when the offer
// last changed (the offer is in its market's index).
func (s *Store) Listed(ctx context.Context, o market.Offer) (bool, error) {
	v, err := s.rdb.HGet(ctx, StateKey(o.Market()), o.ID).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, unavailable("get offer", err)
	}
	st, ok := stateOf(v)
	if !ok {
		return false, fmt.Errorf("catalog: offer %s: malformed state %q", o.ID, v)
	}
	return st.listed, nil
}

// OfferFilter selects listed offers.
type OfferFilter struct {
	Markets  []market.MarketKey
	MaxPrice decimal.Decimal // zero: no limit
	Limit    int
	Cursor   string
}

// ListOffers returns listed active offers of the markets, cheapest first
// (ties by id), and a cursor for the next page ("" at the end).
func (s *Store) ListOffers(ctx context.Context, f OfferFilter) ([]market.Offer, string, error) {
	min := "-"
	if f.Cursor != "" {
		raw, err := base64.RawURLEncoding.DecodeString(f.Cursor)
		if err != nil || !memberRe.Match(raw) {
			return nil, "", market.Invalid("cursor is not valid")
		}
		min = "(" + string(raw)
	}
	max := "+"
	if f.MaxPrice.IsPositive() {
		ticks, ok := market.PriceTicks(f.MaxPrice)
		if !ok {
			return nil, "", market.Invalid("max_price cannot be represented")
		}
		max = "[" + fmt.Sprintf("%019d|~", ticks)
	}
	limit := f.Limit
	type entry struct {
		member string
		m      market.MarketKey
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringSliceCmd, len(f.Markets))
	for i, m := range f.Markets {
		by := &redis.ZRangeBy{Min: min, Max: max}
		if limit > 0 {
			by.Count = int64(limit + 1)
		}
		cmds[i] = pipe.ZRangeByLex(ctx, IndexKey(m), by)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, "", unavailable("list offers", err)
	}
	var all []entry
	for i, c := range cmds {
		for _, mem := range c.Val() {
			all = append(all, entry{mem, f.Markets[i]})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].member < all[j].member })
	next := ""
	if limit > 0 && len(all) > limit {
		all = all[:limit]
		next = base64.RawURLEncoding.EncodeToString([]byte(all[limit-1].member))
	}
	pipe = s.rdb.Pipeline()
	hs := make([]*redis.MapStringStringCmd, len(all))
	sts := make([]*redis.StringCmd, len(all))
	for i, e := range all {
		_, id, _ := strings.Cut(e.member, "|")
		hs[i], sts[i] = pipe.HGetAll(ctx, OfferKey(e.m, id)), pipe.HGet(ctx, StateKey(e.m), id)
	}
	if len(all) > 0 {
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, "", unavailable("list offers", err)
		}
	}
	out := make([]market.Offer, 0, len(all))
	for i, h := range hs {
		vals := h.Val()
		if len(vals) == 0 || sts[i].Err() != nil {
			continue // deleted since the index was read
		}
		if !mergeState(vals, sts[i].Val()) {
			return nil, "", fmt.Errorf("catalog: offer %s: malformed state %q", vals["id"], sts[i].Val())
		}
		if vals["status"] != string(market.OfferActive) || vals["listed"] != "1" {
			continue
		}
		o, err := decodeOffer(vals)
		if err != nil {
			return nil, "", err
		}
		out = append(out, o)
	}
	return out, next, nil
}

func pairs(kv []string) map[string]string {
	m := make(map[string]string, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func decodeOffer(v map[string]string) (market.Offer, error) {
	atoi := func(k string) int64 { n, _ := strconv.ParseInt(v[k], 10, 64); return n }
	price, err := storedPrice(v["price"])
	if err != nil {
		return market.Offer{}, fmt.Errorf("catalog: offer %s: price %q: %w", v["id"], v["price"], err)
	}
	list, err := decimal.NewFromString(v["list_price"])
	if err != nil {
		list = price
	}
	o := market.Offer{
		ID: v["id"], ProviderID: v["provider"], ResourceClass: v["class"], Region: v["region"],
		Units: atoi("units"), UnitsFree: atoi("free"), Price: price, ListPrice: list,
		MaxHours: atoi("max_hours"), Version: atoi("version"), Status: market.OfferStatus(v["status"]),
		PriceAt: fromMS(v["price_at"]), UpdatedAt: fromMS(v["updated_at"]),
	}
	if s := v["specs"]; s != "" && s != "{}" {
		_ = json.Unmarshal([]byte(s), &o.Specs)
	}
	return o, nil
}

// syncProviderOffers lists or unlists every active offer of a provider.
func (s *Store) syncProviderOffers(ctx context.Context, providerID string, listed bool, now time.Time) error {
	ids, err := s.rdb.SMembers(ctx, providerOffersKey(providerID)).Result()
	if err != nil {
		return unavailable("list provider offers", err)
	}
	flag := "0"
	if listed {
		flag = "1"
	}
	for _, id := range ids {
		m, err := s.OfferMarket(ctx, id)
		if err != nil {
			if market.IsCode(err, market.CodeNotFound) {
				continue
			}
			return err
		}
		if err := listScript.Run(ctx, s.rdb, []string{OfferKey(m, id), StateKey(m), IndexKey(m), ChangeStreamKey(m)}, id, flag, ms(now), changeStreamMaxLen).Err(); err != nil {
			return unavailable("list offer", err)
		}
	}
	return nil
}

// storedPrice parses a price Redis holds. Stored prices passed
// market.ParsePrice on their way in, whose fast path is far cheaper than
// decimal.NewFromString; anything else still parses the slow way.
func storedPrice(s string) (decimal.Decimal, error) {
	if d, err := market.ParsePrice("price", s); err == nil {
		return d, nil
	}
	return decimal.NewFromString(s)
}
