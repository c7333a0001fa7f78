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
// KEYS: per market j (1-based) its state hash, index, change stream and
// trade stream at 4j-3 … 4j; then the offer hash of every checked update,
// in argument order. ARGV: nm, change-stream maxlen; then per market its
// class, region, number of entries n and form, followed by its entries.
//
// Form "e": the entries one after the other, each a kind and its
// arguments:
//
//	"s" (checked), seven: id, provider, price ("" = unchanged), index
//	    score (the price in ticks), units ("" = unchanged), full ("1":
//	    reply with the offer), now (ms)
//	"p" (predicted price change), six: id, expected state, new state, new
//	    index score, delta line, tick line ("" and "" when the offer is
//	    not listed)
//	"P" (several predicted price changes of one offer), seven: id, the
//	    state expected before the first, the state after the last, its
//	    index score, their delta lines and their tick lines (each joined
//	    by newlines), and each change's price, score and time (ms),
//	    tab-separated, a line each
//
// Form "f" (every entry of the market predicted, one per offer), in
// columns: z, the number of listed offers; the n ids; the n expected
// states; n pairs of id and new state (HSET's arguments); z pairs of new
// index score and id (ZADD's); the n entries' change lines ("" for a
// single change, else as in "P"); all delta lines joined by newlines; the
// ticks entry's value (class and region, then all tick lines; "" when no
// offer is listed).
//
// A "p" update is brokerd's prediction of what the checked path would do to
// an offer it knows (offerState): it applies only when the offer's stored
// state is still exactly the expected one, in which case the new state is
// what the checks would have made. (Every change of an offer bumps its
// version and sets updated_at, so the whole state also tells a version that
// came round again, after a Redis lost its last writes.) Otherwise it takes
// the checked path in place, with the price, index score and time of the
// new state, so the order of an offer's updates holds.
//
// A market in form "f" applies with five commands and no work per offer
// in Lua besides one comparison, when every offer's stored state is the
// expected one: its arguments are already the commands' arguments. If one
// is not, the whole market goes as form "e" would: entry by entry, each
// change of an offer whose state is not the expected one checked.
//
// Per market, the script reads the states of all its offers in one HMGET,
// keeps them in Lua while it applies the updates in order, and writes the
// changed ones back in one HSET; the index moves go in one ZADD, one score
// an offer (the index scores offers by price: a move is a new score; an
// offer that moves several times in a batch, as a busy one does, moves
// once), the change-stream lines in one entry, the ticks in one entry. On
// Redis 7.0 each command a script runs, and each value crossing between Lua
// and Redis, costs far more than the comparisons, which is why the
// predicted path carries whole packed states (docs/BENCHMARKS.md).
//
// A "P" entry applies whole when the stored state is the expected one;
// otherwise each of its changes takes the checked path in turn, and its
// reply is the list of their replies. Every other entry has one update.
//
// The reply has one element per entry: 1 (the prediction applied), "S"
// and the new packed state joined by a tab (the checked path applied), the
// offer as field-value pairs (full), or "E:<reason>" when the update was
// refused (nothing changed). A listed offer's change goes to its market's
// change stream as one line of a "delta" entry: id, version, price, units,
// free, price_at, updated_at, tab-separated; a price change also goes to
// the trade stream as one line of a "ticks" entry (the first line is class
// and region): id, provider, version, price, free, ts.
var updateBatchScript = redis.NewScript(stateLua + `
local nm, maxlen = tonumber(ARGV[1]), ARGV[2]
local a, ki, n, out = 2, 0, 0, {}
for mi = 1, nm do
  local class, region, cnt, form = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3]), ARGV[a + 4]
  local sk, ik, ck, tk = KEYS[4 * mi - 3], KEYS[4 * mi - 2], KEYS[4 * mi - 1], KEYS[4 * mi]
  a = a + 4
  -- ids: the market's offers; cur: each one's stored state as the batch
  -- goes (false: none)
  local ids, cur, dirty, fast = {}, {}, {}, false
  -- form "f": where its columns start
  local fid, fexp, fset, fzadd, fch, fdl
  if form == 'f' then
    local z = tonumber(ARGV[a + 1])
    fid = a + 2
    fexp = fid + cnt
    fset = fexp + cnt
    fzadd = fset + 2 * cnt
    fch = fzadd + 2 * z
    fdl = fch + cnt
    a = fdl + 1
    local got = redis.call('HMGET', sk, unpack(ARGV, fid, fexp - 1))
    fast = true
    for i = 1, cnt do
      if got[i] ~= ARGV[fexp + i - 1] then
        fast = false
        break
      end
    end
    if not fast then
      for i = 1, cnt do
        ids[i] = ARGV[fid + i - 1]
        cur[ids[i]] = got[i]
      end
    else
      redis.call('HSET', sk, unpack(ARGV, fset, fzadd - 1))
      if z > 0 then redis.call('ZADD', ik, unpack(ARGV, fzadd, fch - 1)) end
      if ARGV[fdl] ~= '' then redis.call('XADD', ck, 'MAXLEN', '~', maxlen, '*', 't', 'delta', 'd', ARGV[fdl]) end
      if ARGV[fdl + 1] ~= '' then redis.call('XADD', tk, '*', 'k', 'ticks', 'v', ARGV[fdl + 1]) end
      for _ = 1, cnt do
        n = n + 1
        out[n] = 1
      end
    end
  else
    local seen, at = {}, a
    for _ = 1, cnt do
      local id = ARGV[at + 2]
      if not seen[id] then
        seen[id] = true
        ids[#ids + 1] = id
      end
      if ARGV[at + 1] == 'p' then at = at + 7 else at = at + 8 end
    end
    local got = redis.call('HMGET', sk, unpack(ids))
    for i, id in ipairs(ids) do cur[id] = got[i] end
  end
  if not fast then
    -- moved: the offers whose index score changed, in order; score: their
    -- last score (an offer often moves several times in a batch)
    local deltas, ticks, moved, score = {}, {}, {}, {}
    local function move(id, sc)
      if not score[id] then moved[#moved + 1] = id end
      score[id] = sc
    end
    local function checked(id, prov, price, sc, units, full, now, k)
      local s = cur[id]
      if not s then return 'E:not_found' end
      local o = sparse(s)
      if o.provider ~= prov then return 'E:forbidden' end
      if o.status ~= 'active' then return 'E:not_found' end
      if units ~= '' then
        local nu, leased = tonumber(units), tonumber(o.units) - tonumber(o.free)
        if nu < leased then return 'E:below_leased:' .. leased end
        o.units, o.free = units, tostring(nu - leased)
      end
      o.version, o.updated_at = tostring(tonumber(o.version) + 1), now
      if price ~= '' then
        if o.listed == '1' then
          move(id, sc)
          ticks[#ticks + 1] = id .. '\t' .. prov .. '\t' .. o.version .. '\t' .. price .. '\t' .. o.free .. '\t' .. now
        end
        o.price, o.price_at, o.score = price, now, sc
      end
      if o.listed == '1' then
        deltas[#deltas + 1] = id .. '\t' .. o.version .. '\t' .. o.price .. '\t' .. o.units .. '\t' .. o.free .. '\t' .. o.price_at .. '\t' .. now
      end
      s = spack(o)
      cur[id], dirty[id] = s, true
      if full == '1' then return offer(k, o) end
      return 'S\t' .. s
    end
    -- predicted applies a prediction when the stored state is the
    -- expected one, and says whether it did
    local function predicted(id, expected, new, sc, delta, tick)
      if cur[id] ~= expected then return false end
      cur[id], dirty[id] = new, true
      if delta ~= '' then
        move(id, sc)
        deltas[#deltas + 1] = delta
        ticks[#ticks + 1] = tick
      end
      return true
    end
    -- rechecked takes the checked path for the predicted changes of an
    -- offer: the one that brought the state new, or each of changes
    -- (price, score and time a line); its reply is the one reply, or
    -- the list of them
    local function rechecked(id, expected, new, changes)
      local e = sparse(expected)
      if changes == '' then
        local t = sparse(new)
        return checked(id, e.provider, t.price, t.score, '', '0', t.updated_at)
      end
      local r = {}
      for price, sc, now in string.gmatch(changes, '([^\t\n]*)\t([^\t\n]*)\t([^\t\n]*)\n') do
        r[#r + 1] = checked(id, e.provider, price, sc, '', '0', now)
      end
      return r
    end
    if form == 'f' then
      -- Some offer changed: entry by entry. An offer still as expected
      -- gets what its prediction says (and its reply says so); its
      -- delta and tick lines, joined with the others', are made again.
      for i = 1, cnt do
        local id, expected = ids[i], ARGV[fexp + i - 1]
        local same = cur[id] == expected
        local r = rechecked(id, expected, ARGV[fset + 2 * i - 1], ARGV[fch + i - 1])
        if same then r = 1 end
        n = n + 1
        out[n] = r
      end
    else
      for _ = 1, cnt do
        local id, r = ARGV[a + 2]
        if ARGV[a + 1] == 'p' then
          if predicted(id, ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]) then
            r = 1
          else
            r = rechecked(id, ARGV[a + 3], ARGV[a + 4], '')
          end
          a = a + 7
        elseif ARGV[a + 1] == 'P' then
          -- several predicted price changes of one offer: all or none
          if predicted(id, ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]) then
            r = 1
          else
            r = rechecked(id, ARGV[a + 3], ARGV[a + 4], ARGV[a + 8])
          end
          a = a + 8
        else
          ki = ki + 1
          r = checked(id, ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], KEYS[4 * nm + ki])
          a = a + 8
        end
        n = n + 1
        out[n] = r
      end
    end
    local set = {}
    for _, id in ipairs(ids) do
      if dirty[id] then
        set[#set + 1] = id
        set[#set + 1] = cur[id]
      end
    end
    if #set > 0 then redis.call('HSET', sk, unpack(set)) end
    if #moved > 0 then
      local add = {}
      for _, id in ipairs(moved) do
        add[#add + 1] = score[id]
        add[#add + 1] = id
      end
      redis.call('ZADD', ik, unpack(add))
    end
    if #deltas > 0 then
      redis.call('XADD', ck, 'MAXLEN', '~', maxlen, '*', 't', 'delta', 'd', table.concat(deltas, '\n'))
    end
    if #ticks > 0 then
      redis.call('XADD', tk, '*', 'k', 'ticks', 'v', class .. '\t' .. region .. '\n' .. table.concat(ticks, '\n'))
    end
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

// offerState is what brokerd last knew of an offer's state (its changing
// fields, stateFields): enough to predict what a price change does to it
// (updateBatchScript, kind "p"). A stale state costs nothing but the
// prediction: the script finds the stored state changed and takes the
// checked path.
type offerState struct {
	version                   int64
	status, provider          string
	listed                    bool
	units, free               int64
	price, priceAt, updatedAt string // prices as stored, times in ms
	score                     string // index score: the price in ticks
	packed                    string // the state as stored
}

// reprice makes st the state after a price change to ticks at now (ms),
// its version already raised: price, times, index score and packed form,
// all parts of one new string built in buf, which it returns for reuse.
func (st *offerState) reprice(buf []byte, ticks int64, now string) []byte {
	b := strconv.AppendInt(buf[:0], st.version, 10)
	b = append(append(append(b, '\t'), st.status...), '\t')
	if st.listed {
		b = append(b, '1')
	} else {
		b = append(b, '0')
	}
	b = append(b, '\t')
	p0 := len(b)
	b = market.AppendTicks(b, ticks)
	p1 := len(b)
	b = append(append(append(b, '\t'), now...), '\t')
	b = append(strconv.AppendInt(b, st.units, 10), '\t')
	b = append(strconv.AppendInt(b, st.free, 10), '\t')
	b = append(append(b, now...), '\t')
	s0 := len(b)
	b = strconv.AppendInt(b, ticks, 10)
	s1 := len(b)
	b = append(append(b, '\t'), st.provider...)
	st.packed = string(b)
	st.price, st.score, st.priceAt, st.updatedAt = st.packed[p0:p1], st.packed[s0:s1], now, now
	return b
}

// stateCache holds the offerStates of one batch shard.
type stateCache struct {
	mu sync.Mutex
	m  map[string]offerState
}

// maxStates bounds a shard's stateCache: 65,536 offers a shard, 262,144 in
// all, about 85 MB (325 bytes an offer of Go heap, ids and the packed state
// included, measured with 12-character ids and a 110-byte state). Past it the shard's cache
// starts over and predictions resume as offers are updated again.
const maxStates = 1 << 16

func (s *Store) states(id string) *stateCache { return &s.stateCaches[batchShard(id)] }

// UpdateOffers applies updates, each offer's in the order given (a batch
// goes market by market), and returns one result per update. Each update
// is checked and applied on its own: one refused update does not refuse the
// others. A Redis failure fails every update of its group.
func (s *Store) UpdateOffers(ctx context.Context, us []OfferUpdate) []UpdateResult {
	return s.updateOffers(ctx, us, nil, make([]UpdateResult, len(us)))
}

// updateOffers is UpdateOffers into res, which holds len(us) zero results;
// markets, when not nil, holds the market of each update's offer.
func (s *Store) updateOffers(ctx context.Context, us []OfferUpdate, markets []market.MarketKey, res []UpdateResult) []UpdateResult {
	ticks := make([]int64, len(us)) // each new price in ticks
	type mkt struct {
		key market.MarketKey
		idx []int // update indices, in order
	}
	type group struct {
		markets map[market.MarketKey]int // market → its place in order
		order   []mkt
	}
	groups := map[int]*group{}
	var gorder []int
	for i := range us {
		u := &us[i]
		var m market.MarketKey
		if markets != nil {
			m = markets[i]
		} else {
			var err error
			if m, err = s.OfferMarket(ctx, u.ID); err != nil {
				res[i].Err = err
				continue
			}
		}
		if u.Price != nil {
			t, ok := market.PriceTicks(*u.Price)
			if !ok {
				res[i].Err = market.Invalid("price %s cannot be represented", u.Price)
				continue
			}
			ticks[i] = t
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
			mi = len(g.order)
			g.order = append(g.order, mkt{key: m})
			g.markets[m] = mi
		}
		g.order[mi].idx = append(g.order[mi].idx, i)
	}
	// One script per group, all in one round trip (on a cluster the client
	// sends each to its slot's node).
	type call struct {
		markets      []market.MarketKey
		counts, idx  []int
		pred         []*offerState
		order, sizes []int
	}
	cs := make([]call, len(gorder))
	calls := make([]scriptCall, len(gorder))
	for n, gk := range gorder {
		g := groups[gk]
		c := &cs[n]
		c.markets, c.counts = make([]market.MarketKey, len(g.order)), make([]int, len(g.order))
		for j, m := range g.order {
			c.markets[j], c.counts[j] = m.key, len(m.idx)
			c.idx = append(c.idx, m.idx...)
		}
		calls[n], c.pred, c.order, c.sizes = s.updateCall(us, ticks, c.markets, c.counts, c.idx)
	}
	s.runScripts(ctx, updateBatchScript, calls)
	for n := range cs {
		c := &cs[n]
		s.decodeUpdates(us, res, c.idx, c.pred, c.order, c.sizes, calls[n])
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
// (their new prices in ticks[idx]) over markets, counts[j] of them in
// markets[j], in that order. pred[k] is the state update idx[k] predicts
// (kind "p" or "P"), nil when it goes checked. The script answers one
// result per entry: entry e covers the updates idx[k] for k in
// order[at:at+sizes[e]], at the sum of the sizes before it.
//
// All the price changes of one offer in the batch that are predicted go
// as one entry (kind "P") when the offer has no checked update in it: the
// script then compares and writes its state once instead of once an
// update, and its delta and tick lines go as one argument each. Under load
// a busy offer has several updates in each batch. When every update of a
// market is predicted, the market goes in form "f" (fastForm), one entry
// per offer as well.
func (s *Store) updateCall(us []OfferUpdate, ticks []int64, markets []market.MarketKey, counts, idx []int) (c scriptCall, pred []*offerState, order, sizes []int) {
	keys := make([]string, 0, 4*len(markets))
	args := make([]any, 0, 2+3*len(markets)+8*len(idx))
	pred = make([]*offerState, len(idx))
	order, sizes = make([]int, 0, len(idx)), make([]int, 0, len(idx))
	// The predicted states, in one array, and the other strings a
	// prediction sends, in another: a prediction's arguments point into
	// them (go-redis writes a *string; boxing a string would allocate).
	// Both have room for all, so the pointers hold.
	states := make([]offerState, 0, 2*len(idx))
	strs := make([]string, 0, 3*len(idx))
	str := func(v string) *string {
		strs = append(strs, v)
		return &strs[len(strs)-1]
	}
	// batch: an offer's state after its earlier updates in this batch (nil:
	// unknown, after an update that goes checked).
	var batch map[string]*offerState
	// plans: a market's updates before they become entries; per offer
	// (offers: its index in ops), how many are predicted and whether one
	// goes checked.
	type offerPlan struct{ predicted, checked, last int }
	var plans []updatePlan
	var ops []offerPlan
	offers := map[string]int{}
	// lines: the predictions' delta and tick lines (updatePlan.lines)
	var buf, lines []byte
	lastMs, lastNow := int64(-1), ""
	args = append(args, len(markets), changeStreamMaxLen)
	for _, m := range markets {
		keys = append(keys, StateKey(m), IndexKey(m), ChangeStreamKey(m), TradeStreamKey(m))
	}
	k := 0
	for j, m := range markets {
		args = append(args, m.Class, m.Region, 0, "e")
		nEntries := len(args) - 2
		offerPrefix := OfferKey(m, "")
		plans, ops = plans[:0], ops[:0]
		clear(offers)
		checked := false // some update of the market goes checked
		for end := k + counts[j]; k < end; k++ {
			u := &us[idx[k]]
			t := u.Now
			if t.IsZero() {
				t = time.Now()
			}
			if msNow := ms(t); msNow != lastMs {
				lastMs, lastNow = msNow, strconv.FormatInt(msNow, 10)
			}
			now := lastNow
			oi, known := offers[u.ID]
			head := !known
			if head {
				oi = len(ops)
				ops = append(ops, offerPlan{last: -1})
				offers[u.ID] = oi
			}
			op := &ops[oi]
			if op.last >= 0 {
				plans[op.last].next = len(plans)
			}
			op.last = len(plans)
			// st: the offer's state before, as the batch has left it or
			// as cached (then copied into states)
			var st *offerState
			if b, ok := batch[u.ID]; ok {
				st = b
			} else if !s.checkedOnly {
				c := s.states(u.ID)
				c.mu.Lock()
				if cached, ok := c.m[u.ID]; ok {
					states = append(states, cached)
					st = &states[len(states)-1]
				}
				c.mu.Unlock()
			}
			if batch == nil {
				batch = make(map[string]*offerState)
			}
			if st != nil && u.Price != nil && u.Units == nil && !u.Full && st.provider == u.ProviderID && st.status == string(market.OfferActive) {
				// expected points at the stored state before: the one
				// cached, or the previous prediction's.
				expected := st
				states = append(states, *st)
				next := &states[len(states)-1]
				next.version++
				buf = next.reprice(buf, ticks[idx[k]], now)
				pred[k], batch[u.ID] = next, next
				from, mid := len(lines), len(lines)
				if st.listed {
					// The delta line: id, version, price, units, free,
					// price_at, updated_at; the tick line: id, provider,
					// version, price, free, ts.
					b := append(append(lines, u.ID...), '\t')
					b = append(strconv.AppendInt(b, next.version, 10), '\t')
					b = append(append(b, next.price...), '\t')
					b = append(strconv.AppendInt(b, next.units, 10), '\t')
					b = append(strconv.AppendInt(b, next.free, 10), '\t')
					b = append(append(append(b, now...), '\t'), now...)
					d := len(b)
					b = append(append(append(append(b, u.ID...), '\t'), u.ProviderID...), '\t')
					b = append(strconv.AppendInt(b, next.version, 10), '\t')
					b = append(append(b, next.price...), '\t')
					b = append(strconv.AppendInt(b, next.free, 10), '\t')
					b = append(b, now...)
					lines, mid = b, d
				}
				op.predicted++
				plans = append(plans, updatePlan{k: k, next: -1, head: head, expected: expected, lines: [3]int{from, mid, len(lines)}})
				continue
			}
			batch[u.ID] = nil
			op.checked++
			price, score := "", ""
			if u.Price != nil {
				price, score = market.TicksString(ticks[idx[k]]), strconv.FormatInt(ticks[idx[k]], 10)
			}
			units, full := "", "0"
			if u.Units != nil {
				units = strconv.FormatInt(*u.Units, 10)
			}
			if u.Full {
				full = "1"
			}
			keys = append(keys, offerPrefix+u.ID)
			plans = append(plans, updatePlan{k: k, next: -1, head: head, entry: []any{"s", u.ID, u.ProviderID, price, score, units, full, now}})
			checked = true
		}
		if !s.entriesOnly && !checked {
			// Every update of the market is predicted: form "f".
			args[nEntries+1] = "f"
			var n int
			args, order, sizes, buf, n = fastForm(args, plans, lines, us, idx, pred, order, sizes, buf, m, str)
			args[nEntries] = n
			continue
		}
		// The entries, in the updates' order; an offer's coalesced
		// entry goes where its first update was.
		entries := 0
		for n, p := range plans {
			u := &us[idx[p.k]]
			entries++
			switch op := &ops[offers[u.ID]]; {
			case p.entry != nil:
				args = append(args, p.entry...)
				order, sizes = append(order, p.k), append(sizes, 1)
			case op.predicted == 1 || op.checked > 0:
				next := pred[p.k]
				both := string(lines[p.lines[0]:p.lines[2]])
				d := p.lines[1] - p.lines[0]
				args = append(args, "p", &u.ID, &p.expected.packed, &next.packed, &next.score, str(both[:d]), str(both[d:]))
				order, sizes = append(order, p.k), append(sizes, 1)
			case op.predicted > 0: // the first of several: one entry for all
				// Their delta lines, then their tick lines, each set
				// joined by newlines (none when the offer is not listed).
				first := len(order)
				b := buf[:0]
				for q := n; q >= 0; q = plans[q].next {
					if len(order) > first && p.listed() {
						b = append(b, '\n')
					}
					b = append(b, plans[q].delta(lines)...)
					order = append(order, plans[q].k)
				}
				d := len(b)
				for q := n; q >= 0; q = plans[q].next {
					if q != n && p.listed() {
						b = append(b, '\n')
					}
					b = append(b, plans[q].tick(lines)...)
				}
				// What the checks need when the offer has changed: each
				// change's price, score and time.
				t := len(b)
				for _, k := range order[first:] {
					st := pred[k]
					b = append(append(append(append(append(append(b, st.price...), '\t'), st.score...), '\t'), st.updatedAt...), '\n')
				}
				joined := string(b)
				buf = b
				group := order[first:]
				next := pred[group[len(group)-1]]
				sizes = append(sizes, len(group))
				args = append(args, "P", &u.ID, &p.expected.packed, &next.packed, &next.score, str(joined[:d]), str(joined[d:t]), str(joined[t:]))
				op.predicted = 0 // emitted: its other updates are skipped
			default:
				entries-- // part of an entry already made
			}
		}
		args[nEntries] = entries
	}
	return scriptCall{keys: keys, args: args}, pred, order, sizes
}

// updatePlan is one update of a market on its way into the script's
// arguments (updateCall).
type updatePlan struct {
	k        int
	next     int         // the offer's next plan, -1: none
	head     bool        // the offer's first plan
	expected *offerState // predicted: the state before
	// lines: where a prediction's delta line and tick line are in the
	// call's lines, [lines[0]:lines[1]] and [lines[1]:lines[2]]; empty
	// when the offer is not listed
	lines [3]int
	entry []any // checked: the entry
}

func (p *updatePlan) listed() bool              { return p.lines[2] > p.lines[0] }
func (p *updatePlan) delta(lines []byte) []byte { return lines[p.lines[0]:p.lines[1]] }
func (p *updatePlan) tick(lines []byte) []byte  { return lines[p.lines[1]:p.lines[2]] }

// fastForm appends to args the columns of form "f" for a market m whose
// updates plans all go predicted, one entry per offer, and to order and
// sizes the entries' updates as updateCall says; it returns them, buf for
// reuse, and the number of entries. Strings that an argument points to
// are kept by str.
func fastForm(args []any, plans []updatePlan, lines []byte, us []OfferUpdate, idx []int, pred []*offerState, order, sizes []int, buf []byte,
	m market.MarketKey, str func(string) *string) ([]any, []int, []int, []byte, int) {
	entries, listed := 0, 0
	for _, p := range plans {
		if p.head {
			entries++
			if p.listed() {
				listed++
			}
		}
	}
	// last: the state after an offer's last change
	last := func(n int) *offerState {
		for plans[n].next >= 0 {
			n = plans[n].next
		}
		return pred[plans[n].k]
	}
	args = append(args, listed)
	for _, p := range plans {
		if p.head {
			args = append(args, &us[idx[p.k]].ID)
		}
	}
	for _, p := range plans {
		if p.head {
			args = append(args, &p.expected.packed)
		}
	}
	for n, p := range plans {
		if p.head {
			args = append(args, &us[idx[p.k]].ID, &last(n).packed)
		}
	}
	for n, p := range plans {
		if p.head && p.listed() {
			args = append(args, &last(n).score, &us[idx[p.k]].ID)
		}
	}
	// The change lines of each entry, the delta lines, the ticks value:
	// parts of one string, cut at ends.
	b := buf[:0]
	ends := make([]int, 0, entries+2)
	for n, p := range plans {
		if !p.head {
			continue
		}
		first := len(order)
		for q := n; q >= 0; q = plans[q].next {
			order = append(order, plans[q].k)
		}
		sizes = append(sizes, len(order)-first)
		if len(order)-first > 1 {
			for _, k := range order[first:] {
				st := pred[k]
				b = append(append(append(append(append(append(b, st.price...), '\t'), st.score...), '\t'), st.updatedAt...), '\n')
			}
		}
		ends = append(ends, len(b))
	}
	for n, p := range plans {
		if p.head && p.listed() {
			for q := n; q >= 0; q = plans[q].next {
				if len(b) > ends[len(ends)-1] {
					b = append(b, '\n')
				}
				b = append(b, plans[q].delta(lines)...)
			}
		}
	}
	ends = append(ends, len(b))
	if listed > 0 {
		b = append(append(append(append(b, m.Class...), '\t'), m.Region...), '\n')
		written := 0
		for n, p := range plans {
			if p.head && p.listed() {
				for q := n; q >= 0; q = plans[q].next {
					if written > 0 {
						b = append(b, '\n')
					}
					b = append(b, plans[q].tick(lines)...)
					written++
				}
			}
		}
	}
	ends = append(ends, len(b))
	joined := string(b)
	from := 0
	for _, end := range ends {
		args = append(args, str(joined[from:end]))
		from = end
	}
	return args, order, sizes, b, entries
}

// decodeUpdates fills the results of the updates us[idx] from their call
// (its entries as updateCall's order and sizes say) and keeps the offer
// states (offerState) for the next predictions.
func (s *Store) decodeUpdates(us []OfferUpdate, res []UpdateResult, idx []int, pred []*offerState, order, sizes []int, c scriptCall) {
	out, err := c.out, c.err
	if err == nil && len(out) != len(sizes) {
		err = fmt.Errorf("update script answered %d results for %d entries", len(out), len(sizes))
	}
	if err != nil {
		// The script may have run or not: what brokerd knew is unsure.
		for _, i := range idx {
			res[i].Err = unavailable("update offer", err)
			s.forgetState(us[i].ID)
		}
		return
	}
	at := 0
	for e, n := range sizes {
		ks := order[at : at+n]
		at += n
		if n == 1 {
			s.decodeUpdate(&us[idx[ks[0]]], &res[idx[ks[0]]], pred[ks[0]], out[e])
			continue
		}
		id := us[idx[ks[0]]].ID
		switch v := out[e].(type) {
		case int64:
			for _, k := range ks {
				res[idx[k]].Version = pred[k].version
			}
			s.predicted.Add(int64(n))
			s.keepState(id, *pred[ks[n-1]])
		case []any:
			// The offer had changed: each went checked, in order.
			if len(v) != n {
				for _, k := range ks {
					res[idx[k]].Err = fmt.Errorf("catalog: update offer %s: %d results for %d changes", id, len(v), n)
				}
				s.forgetState(id)
				continue
			}
			for j, k := range ks {
				s.decodeUpdate(&us[idx[k]], &res[idx[k]], pred[k], v[j])
			}
		default:
			for _, k := range ks {
				res[idx[k]].Err = fmt.Errorf("catalog: update offer %s: unexpected reply %T", id, v)
			}
			s.forgetState(id)
		}
	}
}

// decodeUpdate fills the result r of the update u, sent alone, from its
// reply v; p is the state it predicted (nil: sent checked).
func (s *Store) decodeUpdate(u *OfferUpdate, r *UpdateResult, p *offerState, v any) {
	switch v := v.(type) {
	case int64:
		// The prediction applied: the offer is now as predicted.
		if p == nil {
			r.Err = fmt.Errorf("catalog: update offer %s: a prediction applied that was not made", u.ID)
			s.forgetState(u.ID)
			return
		}
		s.predicted.Add(1)
		r.Version = p.version
		s.keepState(u.ID, *p)
	case string:
		if packed, ok := strings.CutPrefix(v, "S\t"); ok {
			if p != nil {
				s.mispredicted.Add(1)
			}
			st, ok := stateOf(packed)
			if !ok {
				r.Err = fmt.Errorf("catalog: update offer: malformed reply %q", v)
				s.forgetState(u.ID)
				return
			}
			r.Version = st.version
			s.keepState(u.ID, st)
			return
		}
		r.Err = offerScriptError(u.ID, "update offer", errors.New(strings.TrimPrefix(v, "E:")))
		s.forgetState(u.ID)
	case []any:
		kv := make([]string, len(v))
		for j, x := range v {
			kv[j], _ = x.(string)
		}
		o, err := decodeOffer(pairs(kv))
		r.Offer, r.Version, r.Err = o, o.Version, err
		s.forgetState(u.ID)
	default:
		r.Err = fmt.Errorf("catalog: update offer: unexpected reply %T", v)
		s.forgetState(u.ID)
	}
}

// Batches returns how many update batches went to Redis and how many
// updates they carried in all (SubmitUpdate).
func (s *Store) Batches() (batches, updates int64) {
	return s.batchRuns.Load(), s.batched.Load()
}

// Predictions returns how many price changes went as predictions and
// applied, and how many found the offer changed and took the checked path.
func (s *Store) Predictions() (applied, stale int64) {
	return s.predicted.Load(), s.mispredicted.Load()
}

func (s *Store) keepState(id string, st offerState) {
	c := s.states(id)
	c.mu.Lock()
	if len(c.m) >= maxStates {
		if _, known := c.m[id]; !known {
			c.m = nil // full: start again rather than grow
		}
	}
	if c.m == nil {
		c.m = make(map[string]offerState)
	}
	c.m[id] = st
	c.mu.Unlock()
}

func (s *Store) forgetState(id string) {
	c := s.states(id)
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

// Completer takes the result of a submitted update (SubmitUpdate).
type Completer interface {
	Complete(UpdateResult)
}

// DoneFunc is a function as a Completer.
type DoneFunc func(UpdateResult)

// Complete calls f.
func (f DoneFunc) Complete(r UpdateResult) { f(r) }

// SubmitUpdate queues an offer update for the next batch and returns;
// done is given its result, from the batch's goroutine, once the batch has
// run. done must not block. Updates of one offer are applied, and their
// done called, in submission order; updates of different offers may
// complete in any order. (An interface rather than a function: a caller
// that has an object per update anyway, as the provider stream does, then
// needs no closure.)
//
// The batch is its market's shard's: the first update of an offer this
// Store has not seen waits for its market to be read from Redis, and one
// that fails to find it gets done's answer at once, on the caller's
// goroutine.
func (s *Store) SubmitUpdate(u OfferUpdate, done Completer) {
	loc, ok := s.cachedLoc(u.ID)
	if !ok {
		ctx, cancel := context.WithTimeout(context.Background(), locateTimeout)
		var err error
		loc, err = s.locate(ctx, u.ID)
		cancel()
		if err != nil {
			done.Complete(UpdateResult{Err: err})
			return
		}
	}
	b := &s.batchers[loc.shard]
	b.mu.Lock()
	b.queue = append(b.queue, pendingUpdate{u, loc.m, done})
	if b.running {
		b.mu.Unlock()
		return
	}
	b.running = true
	b.mu.Unlock()
	go s.runBatches(b)
}

// batchShards is how many batches may be in Redis at once. Each market
// belongs to one shard, whose batches run one after the other, so an
// offer's updates stay in order. A batch's round trip takes several times
// its script's run in Redis (the request is read in 16 KB steps between
// other clients' commands, the reply waits for a core on a busy machine),
// so four shards keep Redis busier than two (docs/BENCHMARKS.md).
//
// Shards by market put all of a market's waiting updates in one batch: the
// script pays for a market (five commands, about 32 µs) once per round,
// not once per shard. Markets go to the shards in turn as they first
// appear, which spreads them evenly; a market that takes most updates has
// one batch in flight at a time (up to maxBatch updates a round trip).
// Session 4 hashed markets to shards, which spread the load client's 31
// markets unevenly, and went back to shards by offer. Against shards by
// offer, turn-taking shards cost Redis 6.7-7.2 µs per update instead of
// 7.8-9.8 (64 streams × 4 offers) and 20.0-20.3 instead of 24.7-26.8
// (64 × 64 offers) in alternating load runs (docs/BENCHMARKS.md).
const batchShards = 4

// locateTimeout bounds reading an offer's market when an update arrives
// for an offer this Store has not seen.
const locateTimeout = 2 * time.Second

// marketShard is market m's batch shard.
func (s *Store) marketShard(m market.MarketKey) int {
	if v, ok := s.shards.Load(m); ok {
		return v.(int)
	}
	v, _ := s.shards.LoadOrStore(m, int((s.nextShard.Add(1)-1)%batchShards))
	return v.(int)
}

// batchShard is the shard of an offer's predicted state (stateCache).
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
	m    market.MarketKey // the offer's market
	done Completer
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
	var ms []market.MarketKey
	var res []UpdateResult
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
			b.queue, b.spare = append(b.spare[:0], batch[maxBatch:]...), nil
			batch = batch[:maxBatch]
		} else {
			b.queue, b.spare = b.spare[:0], nil
		}
		b.mu.Unlock()

		us, ms = us[:0], ms[:0]
		for _, p := range batch {
			us, ms = append(us, p.u), append(ms, p.m)
		}
		ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
		if cap(res) < len(us) {
			res = make([]UpdateResult, len(us), maxBatch)
		}
		res = s.updateOffers(ctx, us, ms, res[:len(us)])
		cancel()
		s.batchRuns.Add(1)
		s.batched.Add(int64(len(us)))
		for i, p := range batch {
			p.done.Complete(res[i])
		}
		clear(batch[:cap(batch)]) // also the copies of what stayed queued
		err := storeDown(res)
		clear(res)
		if err != nil {
			// Redis failed the whole batch: what queued meanwhile would
			// meet the same Redis, one timeout per batch. It fails now,
			// unsent, and the callers hear at once.
			b.mu.Lock()
			queued := b.queue
			b.queue = nil
			b.mu.Unlock()
			for _, p := range queued {
				p.done.Complete(UpdateResult{Err: err})
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
	s.SubmitUpdate(u, DoneFunc(func(r UpdateResult) { ch <- r }))
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
		price, err := storedPrice(f[2])
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
		price, err := storedPrice(f[3])
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
