package catalog

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"computebroker/market"
)

// Offer updates are group-committed: whatever updates are waiting when a
// batch starts go to Redis together, in one Lua script per Redis slot group
// (one for a single Redis; one per market slot on Redis Cluster). Each
// update is still checked and applied on its own, in submission order, and
// the script appends one change-stream entry and one tick entry per market
// and batch instead of one per update. Under load the batches grow by
// themselves (updates queue while a batch is in Redis); an update alone
// goes at once.

// maxBatch bounds one batch: a script holds Redis for roughly 10 µs per
// update, so 256 keep other clients' commands waiting at most a few ms.
const maxBatch = 256

// updateBatchScript applies a batch of offer updates.
//
// KEYS: per market j (1-based) its index, change stream and trade stream at
// 3j-2, 3j-1, 3j; then per update i the offer hash at 3·nm + i.
// ARGV: nm, n, change-stream maxlen; per market class and region; per
// update: market number, offer id, provider, price ("" = unchanged), index
// member, units ("" = unchanged), full ("1": reply with the offer hash),
// now (ms).
//
// On Redis 7.0 every value crossing between Redis and Lua costs a few
// tenths of a microsecond (measured: 0.24 µs per argument, about 0.3 µs per
// field read or written), more than the commands themselves, so the script
// calls per update only HMGET and HSET, and per market one ZREM, one ZADD
// and the two XADDs (docs/BENCHMARKS.md).
//
// The reply has one element per update: the new version, the offer hash
// (full), or "E:<reason>" when the update was refused (nothing changed).
// A listed offer's change goes to its market's change stream as one line of
// a "delta" entry: id, version, price, units, free, price_at, updated_at,
// tab-separated; a price change also goes to the trade stream as one line of
// a "ticks" entry (the first line is class and region): id, provider,
// version, price, free, ts.
var updateBatchScript = redis.NewScript(`
local nm, n, maxlen = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local base = 3 + 2 * nm
local deltas, ticks, out = {}, {}, {}
-- The index moves of a market, one ZREM and one ZADD at the end: per offer
-- the member it had before the batch and the one it has after.
local moved, was, now_member = {}, {}, {}
for i = 1, n do
  local a = base + 8 * (i - 1)
  local mi, id, k, now = tonumber(ARGV[a + 1]), ARGV[a + 2], KEYS[3 * nm + i], ARGV[a + 8]
  local o
  if ARGV[a + 4] ~= '' then -- a new price: the old price and price_at are not needed
    o = redis.call('HMGET', k, 'provider', 'status', 'units', 'free', 'member', 'listed', 'version')
  else
    o = redis.call('HMGET', k, 'provider', 'status', 'units', 'free', 'member', 'listed', 'version', 'price', 'price_at')
  end
  local r
  if not o[1] then r = 'E:not_found'
  elseif o[1] ~= ARGV[a + 3] then r = 'E:forbidden'
  elseif o[2] ~= 'active' then r = 'E:not_found'
  else
    local units, free = tonumber(o[3]), tonumber(o[4])
    if ARGV[a + 6] ~= '' then
      local nu, leased = tonumber(ARGV[a + 6]), units - free
      if nu < leased then r = 'E:below_leased:' .. leased else units, free = nu, nu - leased end
    end
    if not r then
      local v, price, pat = tonumber(o[7]) + 1, o[8], o[9]
      if ARGV[a + 4] ~= '' then
        price, pat = ARGV[a + 4], now
        if ARGV[a + 6] ~= '' then redis.call('HSET', k, 'units', units, 'free', free) end
        redis.call('HSET', k, 'price', price, 'price_at', now, 'member', ARGV[a + 5], 'version', v, 'updated_at', now)
        if o[6] == '1' then
          local mv = moved[mi]
          if not mv then mv = {}; moved[mi] = mv end
          if not mv[id] then mv[id] = true; was[#was + 1] = {mi, o[5]} end
          now_member[id] = {mi, ARGV[a + 5]}
          local t = ticks[mi]
          if not t then t = {ARGV[2 + 2 * mi] .. '\t' .. ARGV[3 + 2 * mi]}; ticks[mi] = t end
          t[#t + 1] = id .. '\t' .. o[1] .. '\t' .. v .. '\t' .. price .. '\t' .. free .. '\t' .. now
        end
      else
        redis.call('HSET', k, 'units', units, 'free', free, 'version', v, 'updated_at', now)
      end
      if o[6] == '1' then
        local d = deltas[mi]
        if not d then d = {}; deltas[mi] = d end
        d[#d + 1] = id .. '\t' .. v .. '\t' .. price .. '\t' .. units .. '\t' .. free .. '\t' .. pat .. '\t' .. now
      end
      if ARGV[a + 7] == '1' then r = redis.call('HGETALL', k) else r = v end
    end
  end
  out[i] = r
end
if #was > 0 then
  local rem, add = {}, {}
  for _, w in ipairs(was) do
    local l = rem[w[1]]
    if not l then l = {}; rem[w[1]] = l end
    l[#l + 1] = w[2]
  end
  for _, m in pairs(now_member) do
    local l = add[m[1]]
    if not l then l = {}; add[m[1]] = l end
    l[#l + 1] = 0
    l[#l + 1] = m[2]
  end
  for mi, l in pairs(rem) do redis.call('ZREM', KEYS[3 * mi - 2], unpack(l)) end
  for mi, l in pairs(add) do redis.call('ZADD', KEYS[3 * mi - 2], unpack(l)) end
end
for mi = 1, nm do
  if deltas[mi] then
    redis.call('XADD', KEYS[3 * mi - 1], 'MAXLEN', '~', maxlen, '*', 't', 'delta', 'd', table.concat(deltas[mi], '\n'))
  end
  if ticks[mi] then
    redis.call('XADD', KEYS[3 * mi], '*', 'k', 'ticks', 'v', table.concat(ticks[mi], '\n'))
  end
end
return out
`)

// UpdateResult is the outcome of one OfferUpdate.
type UpdateResult struct {
	// Version is the offer's new version.
	Version int64
	// Offer is the offer after the update, when the update asked for it
	// (OfferUpdate.Full).
	Offer market.Offer
	Err   error
}

// UpdateOffers applies updates in order and returns one result per update.
// Each update is checked and applied on its own: one refused update does
// not refuse the others. A Redis failure fails every update of its group.
func (s *Store) UpdateOffers(ctx context.Context, us []OfferUpdate) []UpdateResult {
	res := make([]UpdateResult, len(us))
	type group struct {
		markets map[market.MarketKey]int // market → its number (1-based)
		order   []market.MarketKey
		idx     []int // update indices
		mkts    []int
	}
	groups := map[int]*group{}
	var gorder []int
	for i := range us {
		u := &us[i]
		m, err := s.OfferMarket(ctx, u.ID)
		if err != nil {
			res[i].Err = err
			continue
		}
		if u.Price != nil {
			if _, ok := market.PriceTicks(*u.Price); !ok {
				res[i].Err = market.Invalid("price %s cannot be represented", u.Price)
				continue
			}
		}
		gk := s.slotGroup(m)
		g := groups[gk]
		if g == nil {
			g = &group{markets: map[market.MarketKey]int{}}
			groups[gk] = g
			gorder = append(gorder, gk)
		}
		mi, ok := g.markets[m]
		if !ok {
			g.order = append(g.order, m)
			mi = len(g.order)
			g.markets[m] = mi
		}
		g.idx, g.mkts = append(g.idx, i), append(g.mkts, mi)
	}
	// One script per group, all in one round trip (on a cluster the client
	// sends each to its slot's node).
	calls := make([]scriptCall, len(gorder))
	for n, gk := range gorder {
		g := groups[gk]
		calls[n] = updateCall(us, g.order, g.idx, g.mkts)
	}
	s.runScripts(ctx, updateBatchScript, calls)
	for n, gk := range gorder {
		decodeUpdates(us, res, groups[gk].idx, calls[n])
	}
	return res
}

// scriptCall is one run of a script in a pipeline.
type scriptCall struct {
	keys []string
	args []any
	out  []any
	err  error
}

// runScripts runs the calls in one pipeline of EVALSHA; calls that find the
// script missing (a restarted or failed-over Redis) run again with EVAL.
func (s *Store) runScripts(ctx context.Context, sc *redis.Script, calls []scriptCall) {
	run := func(todo []*scriptCall, eval bool) {
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(todo))
		for i, c := range todo {
			if eval {
				cmds[i] = sc.Eval(ctx, pipe, c.keys, c.args...)
			} else {
				cmds[i] = sc.EvalSha(ctx, pipe, c.keys, c.args...)
			}
		}
		_, _ = pipe.Exec(ctx)
		for i, c := range todo {
			c.out, c.err = cmds[i].Slice()
		}
	}
	todo := make([]*scriptCall, len(calls))
	for i := range calls {
		todo[i] = &calls[i]
	}
	run(todo, false)
	var again []*scriptCall
	for _, c := range todo {
		if c.err != nil && redis.HasErrorPrefix(c.err, "NOSCRIPT") {
			again = append(again, c)
		}
	}
	if len(again) > 0 {
		run(again, true)
	}
}

// slotGroup says which updates may share one script: all of them on a single
// Redis, those of one market (one hash tag, so one slot) on a cluster.
func (s *Store) slotGroup(m market.MarketKey) int {
	if _, ok := s.rdb.(*redis.ClusterClient); !ok {
		return 0
	}
	return int(keySlot(MarketTag(m)))
}

// updateCall prepares the script call for one group: the updates us[idx]
// over markets, mkts giving each update's market number.
func updateCall(us []OfferUpdate, markets []market.MarketKey, idx, mkts []int) scriptCall {
	keys := make([]string, 0, 3*len(markets)+len(idx))
	args := make([]any, 0, 3+2*len(markets)+8*len(idx))
	args = append(args, len(markets), len(idx), changeStreamMaxLen)
	for _, m := range markets {
		keys = append(keys, IndexKey(m), ChangeStreamKey(m), TradeStreamKey(m))
		args = append(args, m.Class, m.Region)
	}
	for k, i := range idx {
		u := &us[i]
		m := markets[mkts[k]-1]
		keys = append(keys, OfferKey(m, u.ID))
		price, member, units, full := "", "", "", "0"
		if u.Price != nil {
			ticks, _ := market.PriceTicks(*u.Price)
			price, member = u.Price.String(), indexMember(ticks, u.ID)
		}
		if u.Units != nil {
			units = strconv.FormatInt(*u.Units, 10)
		}
		if u.Full {
			full = "1"
		}
		now := u.Now
		if now.IsZero() {
			now = time.Now()
		}
		args = append(args, mkts[k], u.ID, u.ProviderID, price, member, units, full, ms(now))
	}
	return scriptCall{keys: keys, args: args}
}

// decodeUpdates fills the results of the updates us[idx] from their call.
func decodeUpdates(us []OfferUpdate, res []UpdateResult, idx []int, c scriptCall) {
	out, err := c.out, c.err
	if err == nil && len(out) != len(idx) {
		err = fmt.Errorf("update script answered %d results for %d updates", len(out), len(idx))
	}
	if err != nil {
		for _, i := range idx {
			res[i].Err = unavailable("update offer", err)
		}
		return
	}
	for k, i := range idx {
		switch v := out[k].(type) {
		case int64:
			res[i].Version = v
		case string:
			res[i].Err = offerScriptError(us[i].ID, "update offer", errors.New(strings.TrimPrefix(v, "E:")))
		case []any:
			kv := make([]string, len(v))
			for j, x := range v {
				kv[j], _ = x.(string)
			}
			o, err := decodeOffer(pairs(kv))
			res[i].Offer, res[i].Version, res[i].Err = o, o.Version, err
		default:
			res[i].Err = fmt.Errorf("catalog: update offer: unexpected reply %T", v)
		}
	}
}

// SubmitUpdate queues an offer update for the next batch and returns at
// once; done is called with its result, from the batch's goroutine, once
// the batch has run. done must not block. Updates of one offer are applied,
// and their done called, in submission order; updates of different offers
// may complete in any order.
func (s *Store) SubmitUpdate(u OfferUpdate, done func(UpdateResult)) {
	b := &s.batchers[batchShard(u.ID)]
	b.mu.Lock()
	b.queue = append(b.queue, pendingUpdate{u, done})
	if b.running {
		b.mu.Unlock()
		return
	}
	b.running = true
	b.mu.Unlock()
	go s.runBatches(b)
}

// batchShards is how many batches may be in Redis at once. Each offer
// belongs to one shard, whose batches run one after the other, so an
// offer's updates stay in order; two shards let brokerd prepare one batch
// while Redis runs the other.
const batchShards = 2

func batchShard(id string) int {
	var h uint32 = 2166136261
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return int(h % batchShards)
}

// batchTimeout bounds one batch's Redis call.
const batchTimeout = 10 * time.Second

type pendingUpdate struct {
	u    OfferUpdate
	done func(UpdateResult)
}

// batcher holds the updates of one shard waiting for the next batch. At
// most one batch of a shard runs at a time, which keeps every offer's
// updates in order; no goroutine stays behind when there is nothing to do.
type batcher struct {
	mu      sync.Mutex
	queue   []pendingUpdate
	spare   []pendingUpdate
	running bool
}

func (s *Store) runBatches(b *batcher) {
	var us []OfferUpdate
	for {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		// spare is an array nobody uses: it becomes the queue, and the
		// batch's array becomes the spare once the batch is done.
		batch := b.queue
		if len(batch) > maxBatch {
			b.queue = append([]pendingUpdate(nil), batch[maxBatch:]...)
			batch = batch[:maxBatch]
		} else {
			b.queue, b.spare = b.spare[:0], nil
		}
		b.mu.Unlock()

		us = us[:0]
		for _, p := range batch {
			us = append(us, p.u)
		}
		ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
		res := s.UpdateOffers(ctx, us)
		cancel()
		s.batchRuns.Add(1)
		for i, p := range batch {
			p.done(res[i])
		}
		clear(batch)
		if err := storeDown(res); err != nil {
			// Redis failed the whole batch: what queued meanwhile would
			// meet the same Redis, one timeout per batch. It fails now,
			// unsent, and the callers hear at once.
			b.mu.Lock()
			queued := b.queue
			b.queue = nil
			b.mu.Unlock()
			for _, p := range queued {
				p.done(UpdateResult{Err: err})
			}
		}
		b.mu.Lock()
		if b.spare == nil {
			b.spare = batch[:0]
		}
		b.mu.Unlock()
	}
}

// storeDown returns the error when every result of a batch is the store's
// failure (unavailable), nil otherwise.
func storeDown(res []UpdateResult) error {
	for _, r := range res {
		if r.Err == nil || !market.IsCode(r.Err, market.CodeUnavailable) {
			return nil
		}
	}
	if len(res) == 0 {
		return nil
	}
	return res[0].Err
}

// UpdateOffer changes an offer's price and/or units and bumps its version.
// It fails with not_found, forbidden (another provider's offer) or conflict
// (units below what is leased). It goes through the batches like
// SubmitUpdate and waits for its result (or ctx).
func (s *Store) UpdateOffer(ctx context.Context, u OfferUpdate) (market.Offer, error) {
	u.Full = true
	ch := make(chan UpdateResult, 1)
	s.SubmitUpdate(u, func(r UpdateResult) { ch <- r })
	select {
	case r := <-ch:
		return r.Offer, r.Err
	case <-ctx.Done():
		return market.Offer{}, unavailable("update offer", ctx.Err())
	}
}

// Delta is one line of a "delta" change-stream entry: the changing fields
// of a listed offer after an update.
type Delta struct {
	ID                 string
	Version            int64
	Price              decimal.Decimal
	Units, UnitsFree   int64
	PriceAt, UpdatedAt time.Time
}

// decodeDeltas parses a "delta" entry's lines; malformed lines are skipped.
func decodeDeltas(v string) []Delta {
	out := make([]Delta, 0, strings.Count(v, "\n")+1)
	for line := range strings.SplitSeq(v, "\n") {
		var f [7]string
		if !splitFields(line, f[:]) {
			continue
		}
		price, err := decimal.NewFromString(f[2])
		if err != nil {
			continue
		}
		d := Delta{ID: f[0], Price: price, PriceAt: fromMS(f[5]), UpdatedAt: fromMS(f[6])}
		var e1, e2, e3 error
		d.Version, e1 = strconv.ParseInt(f[1], 10, 64)
		d.Units, e2 = strconv.ParseInt(f[3], 10, 64)
		d.UnitsFree, e3 = strconv.ParseInt(f[4], 10, 64)
		if e1 != nil || e2 != nil || e3 != nil || d.ID == "" {
			continue
		}
		out = append(out, d)
	}
	return out
}

// DecodeTicks parses the value of a "ticks" trade-stream entry (kind
// StreamKindTicks). It fails on any malformed line: the history writer
// treats such an entry as poison.
func DecodeTicks(v []byte) ([]market.Tick, error) {
	s := string(v)
	head, rest, ok := strings.Cut(s, "\n")
	class, region, ok2 := strings.Cut(head, "\t")
	if !ok || !ok2 || class == "" || region == "" {
		return nil, fmt.Errorf("catalog: ticks entry without its market line")
	}
	out := make([]market.Tick, 0, strings.Count(rest, "\n")+1)
	for line := range strings.SplitSeq(rest, "\n") {
		var f [6]string
		if !splitFields(line, f[:]) {
			return nil, fmt.Errorf("catalog: malformed tick %q", line)
		}
		price, err := decimal.NewFromString(f[3])
		if err != nil {
			return nil, fmt.Errorf("catalog: tick price %q: %w", f[3], err)
		}
		version, e1 := strconv.ParseInt(f[2], 10, 64)
		free, e2 := strconv.ParseInt(f[4], 10, 64)
		ts, e3 := strconv.ParseInt(f[5], 10, 64)
		if e1 != nil || e2 != nil || e3 != nil {
			return nil, fmt.Errorf("catalog: malformed tick %q", line)
		}
		out = append(out, market.Tick{OfferID: f[0], ProviderID: f[1], ResourceClass: class, Region: region,
			Price: price, UnitsFree: free, Version: version, TS: time.UnixMilli(ts).UTC()})
	}
	return out, nil
}

// splitFields splits a tab-separated line into exactly len(f) fields.
func splitFields(line string, f []string) bool {
	for i := range f {
		if i == len(f)-1 {
			f[i] = line
			return !strings.Contains(line, "\t")
		}
		var ok bool
		f[i], line, ok = strings.Cut(line, "\t")
		if !ok {
			return false
		}
	}
	return true
}

// keySlot is Redis Cluster's hash slot of a key (CRC16 of the hash tag).
func keySlot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
}
