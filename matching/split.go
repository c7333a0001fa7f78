package matching

import (
	"math/bits"
	"strings"

	"computebroker/market"
	"computebroker/voucher"

	"github.com/shopspring/decimal"
)

// MaxSplitParts is the most offers one split fill buys from.
const MaxSplitParts = 4

// Part is one offer's share of a split fill. Its amounts are the order's
// amounts apportioned so that the parts add up exactly: Gross is the rounded
// running cost up to this part minus that before it; Discount likewise in
// proportion to the gross.
type Part struct {
	Offer                           market.Offer
	Provider                        market.Account
	Units                           int64
	UnitPrice, Gross, Discount, Net decimal.Decimal
}

// Split is an all-or-nothing fill of a job across up to MaxSplitParts offers
// of one region (one market).
//
// The units go to the parts cheapest first (book order), each part but the
// last taking all its free units. Gross = round_half_up(Σ price × units ×
// hours, 2) over the parts. One voucher pays for the whole order: of the
// grants that apply (voucher.Rules.Applies) to every part, the one expiring
// first that pays a positive discount, discount = floor(min(rate × Gross,
// caps…), 2); only the first 64 grants in expiry order are considered. Among
// all such sets the split with the least Net wins; ties:
// lower Gross, fewer parts, then the parts' book keys (price, price time,
// offer id) compared in order.
type Split struct {
	Region               string
	Parts                []Part
	Gross, Discount, Net decimal.Decimal
	VoucherID, ProgramID string
}

// u128 is an unsigned 128-bit cost in tick-unit-hours.
type u128 struct{ hi, lo uint64 }

func mul128(a, b int64) u128 {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	return u128{hi, lo}
}

func (x u128) add(y u128) u128 {
	lo, c := bits.Add64(x.lo, y.lo, 0)
	return u128{x.hi + y.hi + c, lo}
}

// cents is round_half_up(x / 100); x ≤ maxTicks × MaxUnits × MaxHours keeps
// it inside an int64.
func (x u128) cents() int64 {
	lo, c := bits.Add64(x.lo, 50, 0)
	hi := x.hi + c
	q, _ := bits.Div64(hi%100, lo, 100)
	return int64(q) // hi/100 is 0 within the limits
}

type splitEntry struct {
	s   *slot
	cap int64  // min(units_free, units)
	sig uint64 // bit i: prepared grant i applies to this offer
}

// splitSet is a candidate set: parts in book order, all but the last full.
type splitSet struct {
	n                int
	its              [MaxSplitParts]*slot
	units            [MaxSplitParts]int64
	gross, disc, net int64
	grant            int // index in prepared grants, -1 none
	region           string
}

type splitSearch struct {
	s            *Scratch
	entries      []splitEntry
	sufCap       []int64
	units, hours int64
	rateA, capA  int64
	grants       []voucher.Compiled
	region       string
	cur          [MaxSplitParts]int
	best         splitSet
	found        bool
}

// DecideSplit finds the best split fill of req over snaps (see Split) and
// counts in s the offers rejected as parts (which need units_free ≥ 1, not ≥
// units). It returns nil when no set of at most MaxSplitParts eligible offers
// of one region holds the job's units; the eligible offers are then counted
// under too_few_units. Unlike Decide it examines every offer of the markets
// and allocates. A request outside the integer limits of Decide gets nil,
// every offer counted as too_few_units.
//
// The search is exact: it enumerates sets in book order with two cuts that
// lose no better set — the units the remaining slots can still add, and a
// lower bound of the net (cost so far plus the missing units at the next
// price, less the largest discount a grant could pay) — and drops an offer
// no grant applies to when four earlier such offers each hold at least as
// many units (any set using it does no worse with one of them instead).
func DecideSplit(req *Request, snaps []*Snapshot, s *Scratch) *Split {
	ok := s.prepare(req, 0, true)
	s.q.minUnits = 1
	ss := &splitSearch{s: s, units: req.Job.Units, hours: req.Job.Hours}
	if s.vouchers {
		ss.grants = s.prep.Grants()
		if len(ss.grants) > 64 {
			ss.grants = ss.grants[:64]
		}
	}
	eligible := 0
	for _, sn := range snaps {
		if sn == nil {
			continue
		}
		if !ok {
			s.considered += len(sn.slots)
			s.counts[ReasonTooFewUnits] += len(sn.slots)
			continue
		}
		eligible += ss.market(sn)
	}
	if !ss.found {
		s.counts[ReasonTooFewUnits] += eligible
		return nil
	}
	return ss.result()
}

// market collects one market's eligible offers, searches their sets and
// returns how many offers were eligible.
func (ss *splitSearch) market(sn *Snapshot) int {
	s := ss.s
	ss.entries = ss.entries[:0]
	ss.region = sn.Market.Region
	s.q.enter(sn.mkt)
	ss.rateA, ss.capA = 0, 0
	for i := range ss.grants {
		if inList(ss.grants[i].Regions, ss.region) {
			ss.rateA, ss.capA = max(ss.rateA, ss.grants[i].RateBP), max(ss.capA, ss.grants[i].CapCents)
		}
	}
	eligible := 0
	for i := range sn.slots {
		sl := &sn.slots[i]
		s.considered++
		if r := defaultChain.check(&s.q, sl); r != ReasonNone {
			s.counts[r]++
			continue
		}
		eligible++
		e := splitEntry{s: sl, cap: min(sl.unitsFree, ss.units)}
		if len(ss.grants) > 0 {
			t := s.target(sn, sl)
			for gi := range ss.grants {
				if s.prep.Applicable(&ss.grants[gi], &t) {
					e.sig |= 1 << gi
				}
			}
		}
		if e.sig == 0 && ss.dominated(e.cap) {
			continue
		}
		ss.entries = append(ss.entries, e)
	}
	n := len(ss.entries)
	if n == 0 {
		return eligible
	}
	ss.sufCap = ss.sufCap[:0]
	for i := 0; i <= n; i++ {
		ss.sufCap = append(ss.sufCap, 0)
	}
	for i := n - 1; i >= 0; i-- {
		ss.sufCap[i] = max(ss.sufCap[i+1], ss.entries[i].cap)
	}
	ss.dfs(0, 0, 0, u128{}, ^uint64(0))
	return eligible
}

// dominated reports whether MaxSplitParts kept offers without grants hold at
// least capacity units each; they all come earlier in book order.
func (ss *splitSearch) dominated(capacity int64) bool {
	n := 0
	for i := range ss.entries {
		if ss.entries[i].sig == 0 && ss.entries[i].cap >= capacity {
			if n++; n >= MaxSplitParts {
				return true
			}
		}
	}
	return false
}

// dfs extends the k parts in cur (all full, covering covered units at cost)
// with entries from start on.
func (ss *splitSearch) dfs(start, k int, covered int64, cost u128, sig uint64) {
	need := ss.units - covered
	for j := start; j < len(ss.entries); j++ {
		e := &ss.entries[j]
		if covered+int64(MaxSplitParts-k)*ss.sufCap[j] < ss.units {
			return // the remaining slots cannot hold the units, here or later
		}
		if ss.found {
			// Every completion costs at least the missing units at this price.
			lb := cost.add(mul128(e.s.ticks, need*ss.hours)).cents()
			if ss.netFloor(lb) > ss.best.net {
				return
			}
		}
		ss.cur[k] = j
		if e.cap >= need {
			ss.consider(k+1, need, cost.add(mul128(e.s.ticks, need*ss.hours)), sig&e.sig)
		} else if k+1 < MaxSplitParts {
			ss.dfs(j+1, k+1, covered+e.cap, cost.add(mul128(e.s.ticks, e.cap*ss.hours)), sig&e.sig)
		}
	}
}

// netFloor is the least net any grant of this market can leave on gross.
func (ss *splitSearch) netFloor(gross int64) int64 {
	if ss.rateA <= 0 {
		return gross
	}
	return gross - min(floorRate(ss.rateA, gross), ss.capA, gross)
}

// consider prices the set cur[:n], whose last part takes last units.
func (ss *splitSearch) consider(n int, last int64, cost u128, sig uint64) {
	c := splitSet{n: n, gross: cost.cents(), grant: -1, region: ss.region}
	for i := 0; i < n; i++ {
		e := &ss.entries[ss.cur[i]]
		c.its[i], c.units[i] = e.s, e.cap
	}
	c.units[n-1] = last
	c.net = c.gross
	for gi := range ss.grants {
		if sig&(1<<gi) == 0 {
			continue
		}
		g := &ss.grants[gi]
		if d := g.MaxDiscountCents(c.gross); d > 0 {
			c.grant, c.disc, c.net = gi, d, c.gross-d
			break
		}
	}
	if !ss.found || compareSets(&c, &ss.best) < 0 {
		ss.best, ss.found = c, true
	}
}

// compareSets orders split sets: net, gross, parts, parts' book keys.
func compareSets(a, b *splitSet) int {
	switch {
	case a.net != b.net:
		return cmpInt(a.net, b.net)
	case a.gross != b.gross:
		return cmpInt(a.gross, b.gross)
	case a.n != b.n:
		return cmpInt(int64(a.n), int64(b.n))
	}
	for i := 0; i < a.n; i++ {
		if c := compareSlotPtrs(a.its[i], b.its[i]); c != 0 {
			return c
		}
	}
	return strings.Compare(a.region, b.region)
}

func cmpInt(a, b int64) int {
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}

// result converts the best set, apportioning gross and discount to parts.
func (ss *splitSearch) result() *Split {
	b := &ss.best
	sp := &Split{Region: b.region, Parts: make([]Part, b.n),
		Gross: decimal.New(b.gross, -market.AmountScale), Net: decimal.New(b.net, -market.AmountScale)}
	if b.grant >= 0 {
		g := &ss.grants[b.grant]
		gr := &ss.s.req.Grants[g.Index]
		sp.Discount = decimal.New(b.disc, -market.AmountScale)
		sp.VoucherID, sp.ProgramID = gr.Voucher.ID, gr.Program.ID
	}
	var cum u128
	var prevG, prevD int64
	for i := 0; i < b.n; i++ {
		sl := b.its[i]
		it := sl.it
		cum = cum.add(mul128(sl.ticks, b.units[i]*ss.hours))
		g := cum.cents()
		if i == b.n-1 {
			g = b.gross
		}
		d := int64(0)
		if b.gross > 0 {
			d = mulDiv(b.disc, g, b.gross)
		}
		p := Part{Offer: it.Offer, Provider: sl.prov.acct, Units: b.units[i], UnitPrice: it.Offer.Price,
			Gross: decimal.New(g-prevG, -market.AmountScale)}
		if b.grant >= 0 {
			p.Discount = decimal.New(d-prevD, -market.AmountScale)
		}
		p.Net = decimal.New(g-prevG-(d-prevD), -market.AmountScale)
		sp.Parts[i] = p
		prevG, prevD = g, d
	}
	return sp
}

// mulDiv is floor(a × b / c) for 0 ≤ a ≤ c, 0 ≤ b.
func mulDiv(a, b, c int64) int64 {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	q, _ := bits.Div64(hi, lo, uint64(c))
	return int64(q)
}

// MatchSplit finds the best split fill of req over the current snapshots of
// its job's markets (see DecideSplit, Split). The Result carries the
// rejection counts; its Matches are empty.
func (e *Engine) MatchSplit(req Request) (*Split, Result) {
	s := e.pool.Get().(*Scratch)
	s.snaps = e.snapshots(&req, s.snaps)
	sp := DecideSplit(&req, s.snaps, s)
	res := Result{Rejected: s.counts.toMap(), Considered: s.considered}
	s.release()
	e.pool.Put(s)
	return sp, res
}
