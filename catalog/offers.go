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

// A market's price index (IndexKey) scores each listed active offer by its
// price in ticks, with the offer id as member: Redis orders it by price,
// then id, and a price change is one ZADD. A page of offers starts after a
// cursor (price, id), found by pageScript.

// cursorOf is the cursor after an offer: its price in ticks, zero-padded to
// 19 digits, "|", its id (the form cursors have always had).
func cursorOf(ticks int64, id string) string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%019d|%s", ticks, id))
}

var cursorRe = regexp.MustCompile(`^[0-9]{19}\|[A-Za-z0-9_.-]{1,64}$`)

// parseCursor reads a cursor made by cursorOf.
func parseCursor(c string) (ticks int64, id string, ok bool) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || !cursorRe.Match(raw) {
		return 0, "", false
	}
	ticks, err = strconv.ParseInt(string(raw[:19]), 10, 64)
	return ticks, string(raw[20:]), err == nil
}

// pageScript reads one page of a market's price index: the offers after
// the cursor (ARGV[1] ticks, ARGV[2] id; "" ticks: from the start), in
// index order, at most ARGV[4] of them (0: all), up to the price ARGV[3]
// in ticks ("": any), as id, score pairs. It finds where the cursor falls
// among the offers of the cursor's price by binary search. KEYS: index.
var pageScript = redis.NewScript(`
local key, after, id, count = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[4])
local max = tonumber(ARGV[3])
local start = 0
if after ~= '' then
  -- a <= b in byte order, as Redis orders members (Lua's < follows the locale)
  local function le(a, b)
    for i = 1, math.min(#a, #b) do
      local x, y = string.byte(a, i), string.byte(b, i)
      if x ~= y then return x < y end
    end
    return #a <= #b
  end
  local lo = redis.call('ZCOUNT', key, '-inf', '(' .. after)
  local hi = lo + redis.call('ZCOUNT', key, after, after)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if le(redis.call('ZRANGE', key, mid, mid)[1], id) then lo = mid + 1 else hi = mid end
  end
  start = lo
end
local stop = -1
if count > 0 then stop = start + count - 1 end
local got = redis.call('ZRANGE', key, start, stop, 'WITHSCORES')
if max then
  for i = 2, #got, 2 do
    if tonumber(got[i]) > max then
      for j = #got, i - 1, -1 do got[j] = nil end
      break
    end
  end
end
return got
`)

// createScript stores a new offer: its hash and its state.
// KEYS: offer, state, index, changes, trades. ARGV: id, provider, class,
// region, units, price, max_hours, specs, now ms, index score (the price in
// ticks), listed, maxlen, now RFC 3339.
var createScript = redis.NewScript(stateLua + `
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return redis.error_reply('exists')
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'provider', ARGV[2], 'class', ARGV[3], 'region', ARGV[4],
  'list_price', ARGV[6], 'max_hours', ARGV[7], 'specs', ARGV[8])
local o = {version = '1', status = 'active', listed = ARGV[11], price = ARGV[6], price_at = ARGV[9],
  units = ARGV[5], free = ARGV[5], updated_at = ARGV[9], score = ARGV[10], provider = ARGV[2]}
redis.call('HSET', KEYS[2], ARGV[1], spack(o))
local h = offer(KEYS[1], o)
if ARGV[11] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[10], ARGV[1])
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
redis.call('ZREM', KEYS[2], ARGV[1])
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
  redis.call('ZADD', KEYS[3], o.score, ARGV[1])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 't', 'upsert', unpack(offer(KEYS[1], o)))
else
  redis.call('ZREM', KEYS[3], ARGV[1])
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
		ms(n.Now), ticks, listed, changeStreamMaxLen, rfc3339(n.Now)).StringSlice()
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
	l, err := s.locate(ctx, id)
	if err != nil {
		return market.MarketKey{}, err
	}
	return l.m, nil
}

// locate returns where offer id is, from the cache or else from Redis.
func (s *Store) locate(ctx context.Context, id string) (*offerLoc, error) {
	if l, ok := s.cachedLoc(id); ok {
		return l, nil
	}
	loc, err := s.rdb.HGet(ctx, offerLocKey, id).Result()
	if errors.Is(err, redis.Nil) {
		return nil, market.Errorf(market.CodeNotFound, "offer %s not found", id)
	}
	if err != nil {
		return nil, unavailable("locate offer", err)
	}
	class, region, ok := strings.Cut(loc, ":")
	if !ok {
		return nil, fmt.Errorf("catalog: bad location %q of offer %s", loc, id)
	}
	m := market.MarketKey{Class: class, Region: region}
	l := &offerLoc{m: m, shard: s.marketShard(m)}
	s.locs.Store(id, l)
	return l, nil
}

// offerLoc is where an offer is: its market, and the market's batch shard.
type offerLoc struct {
	m     market.MarketKey
	shard int
}

// cachedLoc is where offer id is when this Store knows it.
func (s *Store) cachedLoc(id string) (*offerLoc, bool) {
	if v, ok := s.locs.Load(id); ok {
		return v.(*offerLoc), true
	}
	return nil, false
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
	after, afterID := "", ""
	if f.Cursor != "" {
		t, id, ok := parseCursor(f.Cursor)
		if !ok {
			return nil, "", market.Invalid("cursor is not valid")
		}
		after, afterID = strconv.FormatInt(t, 10), id
	}
	max := ""
	if f.MaxPrice.IsPositive() {
		ticks, ok := market.PriceTicks(f.MaxPrice)
		if !ok {
			return nil, "", market.Invalid("max_price cannot be represented")
		}
		max = strconv.FormatInt(ticks, 10)
	}
	limit := f.Limit
	count := 0
	if limit > 0 {
		count = limit + 1
	}
	type entry struct {
		ticks int64
		id    string
		m     market.MarketKey
	}
	calls := make([]scriptCall, len(f.Markets))
	for i, m := range f.Markets {
		calls[i] = scriptCall{keys: []string{IndexKey(m)}, args: []any{after, afterID, max, count}}
	}
	s.runScripts(ctx, pageScript, calls)
	var all []entry
	for i, c := range calls {
		if c.err != nil && !errors.Is(c.err, redis.Nil) {
			return nil, "", unavailable("list offers", c.err)
		}
		for j := 0; j+1 < len(c.out); j += 2 {
			id, _ := c.out[j].(string)
			sc, _ := c.out[j+1].(string)
			t, err := strconv.ParseFloat(sc, 64)
			if err != nil || id == "" {
				return nil, "", fmt.Errorf("catalog: market %s: bad index entry %v %v", f.Markets[i], c.out[j], c.out[j+1])
			}
			all = append(all, entry{int64(t), id, f.Markets[i]})
		}
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].ticks != all[j].ticks {
			return all[i].ticks < all[j].ticks
		}
		return all[i].id < all[j].id
	})
	next := ""
	if limit > 0 && len(all) > limit {
		all = all[:limit]
		next = cursorOf(all[limit-1].ticks, all[limit-1].id)
	}
	pipe := s.rdb.Pipeline()
	hs := make([]*redis.MapStringStringCmd, len(all))
	sts := make([]*redis.StringCmd, len(all))
	for i, e := range all {
		hs[i], sts[i] = pipe.HGetAll(ctx, OfferKey(e.m, e.id)), pipe.HGet(ctx, StateKey(e.m), e.id)
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
