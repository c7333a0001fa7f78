package matching

import (
	"cmp"
	"math"
	"math/bits"
	"slices"

	"computebroker/market"
	"computebroker/voucher"

	"github.com/shopspring/decimal"
)

// Pick is one ranked offer in exact integer units, as a decision holds it
// before conversion to a Match.
type Pick struct {
	// Offer and Provider point into an immutable snapshot: read, never modify.
	Offer    *market.Offer
	Provider *market.Account
	// PriceTicks is the unit price in 0.0001 CNY; the amounts are in cents.
	PriceTicks, GrossCents, DiscountCents, NetCents int64
	// Grant is the index in Request.Grants of the voucher used, -1 for none.
	Grant int
}

type pick struct {
	s                *slot
	sn               *Snapshot // s is sn.slots[at]
	at               int
	gross, disc, net int64
	grant            int
}

// comparePick is compareMatch in integers: net, unit price, price time, id.
func comparePick(a, b *pick) int {
	if a.net != b.net {
		if a.net < b.net {
			return -1
		}
		return 1
	}
	return compareSlotAt(a.sn, a.at, b)
}

// after reports whether w comes after a pick of net net for sn.slots[at].
func (w *pick) after(net int64, sn *Snapshot, at int) bool {
	if net != w.net {
		return net < w.net
	}
	return compareSlotAt(sn, at, w) < 0
}

// set fills p field by field (see price).
func (p *pick) set(sl *slot, sn *Snapshot, at int, gross, disc, net int64, grant int) {
	p.s, p.sn, p.at = sl, sn, at
	p.gross, p.disc, p.net, p.grant = gross, disc, net, grant
}

// compareSlotAt compares sn.slots[i] with the slot of w in book order. In
// one snapshot that is the order of their indices: the slots are not read.
func compareSlotAt(sn *Snapshot, i int, w *pick) int {
	if sn == w.sn {
		return cmp.Compare(i, w.at)
	}
	return compareSlotPtrs(&sn.slots[i], w.s)
}

// grossCents is round_half_up(ticks × uh / 100): the gross in cents of a
// price in ticks for uh unit-hours. ticks ≤ maxTicks and uh ≤ MaxUnits ×
// MaxHours keep the quotient inside an int64.
func grossCents(ticks, uh int64) int64 {
	hi, lo := bits.Mul64(uint64(ticks), uint64(uh))
	lo, c := bits.Add64(lo, 50, 0)
	if hi+c == 0 {
		return int64(lo / 100) // a multiplication, where Div64 divides
	}
	q, _ := bits.Div64(hi+c, lo, 100)
	return int64(q)
}

func floorRate(rateBP, gross int64) int64 {
	hi, lo := bits.Mul64(uint64(rateBP), uint64(gross))
	q, _ := bits.Div64(hi, lo, 10_000)
	return int64(q)
}

// span is a run of a snapshot's offers: slots[from:to] or, with prov, the
// slots of the entries prov[from:to].
type span struct {
	sn       *Snapshot
	prov     []provEntry
	from, to int
}

// cursor is the scan's position in one market.
type cursor struct {
	sn     *Snapshot
	f      filter
	i      int    // next offer
	ticks  int64  // its price
	region uint64 // the grants whose region scope takes the market
	state  uint8  // scanning, or why the scan of the market ended
}

// A grant mask has bit i set for the i-th prepared grant (see
// Scratch.bounds); decisions with more than maxMasked grants bound offers
// by the largest discount any grant pays instead.
const maxMasked = 64

// scopedProv is a provider that some scoped grant names, with the mask of
// the grants naming it (and its id, unless bounds took it by number).
type scopedProv struct {
	id   string
	num  int32
	mask uint64
}

// scoped is a provider that a scoped grant names, in a market whose scan
// stopped at the bound: its list is scanned from the stop.
type scoped struct {
	cur   int    // in Scratch.curs
	bound uint64 // the grants that can pay on its offers in the market
	num   int32
	head  provHead // read in one pass over all of them
}

// Cursor states.
const (
	scanning uint8 = iota
	atEnd          // every offer examined
	atCut          // the offers from i on are above the max price
	atBound        // no offer from i on can enter the best limit
)

// Scratch holds the buffers of one decision so that, once warm, deciding
// allocates nothing. A Scratch is not safe for concurrent use: give each
// goroutine its own, or let Engine.Match take one from its pool.
type Scratch struct {
	req        *Request
	q          query
	prep       voucher.Prepared
	vouchers   bool // some grant survived Prepare
	uh         int64
	limit      int
	picks      []pick
	counts     reasonCounts
	considered int
	// spans are offers examined but not yet counted in counts: their
	// reasons are taken when asked for (Rejected, Result).
	spans    []span
	cuts     []span  // offers skipped above the job's max price
	fallback *Result // set when the request needs the decimal path
	snaps    []*Snapshot
	// byNum: the engine found the decision's markets by number (see
	// mktNums), each of the job's class and in its regions, and rbits
	// holds their regions' bits: the scan reads no name.
	byNum    bool
	rbits    []uint64
	cands    []Candidate
	curs     []cursor
	unscoped uint64 // the grants scoped to no provider
	// masked: the grants are few enough (maxMasked) for pricing to find
	// those whose scopes take an offer from the masks, see grantsIn.
	masked bool
	provs  []scopedProv
	refs   []marketRef // the markets' reference prices asked so far
	scoped []scoped
	act    []int32 // the merge's markets still scanning, see scan
	heads  []int64
	// exhaustive turns the bound off: every offer is checked with the
	// checker chain and priced (the brute-force scan the benchmarks compare
	// against).
	exhaustive bool
	sink       uint64 // see load
}

// load reads, one after the other, the first word of each part of req
// that a decision reads and that lies apart from the Request: its regions
// (unless compiled by number), its grants' terms and the masks compiled
// from their scopes and, unless req is compiled, its max price and the
// SME's related-party keys; then a
// field in each cache line of the Request that the decision reads (the
// class, the SME's id and startup flag, the time, the rules). None of
// these loads waits for another, so when the request is not in cache
// their misses overlap, where the decision would otherwise meet them one
// at a time far apart.
func (s *Scratch) load(req *Request) {
	j := &req.Job
	var x uint64
	if len(j.Regions) > 0 && !req.num.ok {
		x += uint64(len(j.Regions[0]))
	}
	if len(req.Terms) > 0 && req.Job.UseVouchers {
		x += voucher.Touch(req.Terms, !req.num.ok, !req.num.provsOK)
		if n := &req.num; len(n.termRegions) > 0 {
			x += n.termRegions[0] // the grants' region masks
		}
		if n := &req.num; len(n.provs) > 0 {
			x += n.provs[0].terms // the scoped providers' numbers
		}
		if !req.compiled {
			for _, k := range req.SME.RelatedPartyKeys {
				if len(k) > 0 {
					x += uint64(k[0])
				}
			}
		}
	}
	if len(j.Certifications) > 0 {
		x += uint64(len(j.Certifications[0]))
	}
	if !req.compiled && j.MaxPrice.Sign() != 0 {
		x += uint64(j.MaxPrice.CoefficientInt64())
	}
	x += uint64(len(req.Class.ID)) + uint64(len(req.SME.ID)) + uint64(req.Now.Nanosecond())
	if req.Class.Domestic != req.SME.Startup {
		x++
	}
	x += uint64(req.Rules.GuardRatio.Exponent())
	s.sink += x
}

// release drops the references a pooled Scratch would otherwise keep alive.
func (s *Scratch) release() {
	s.req, s.fallback, s.q, s.byNum = nil, nil, query{}, false
	clear(s.snaps)
	clear(s.picks)
	clear(s.cands)
	clear(s.cuts)
	clear(s.spans)
	clear(s.curs)
	clear(s.provs)
	clear(s.scoped)
	clear(s.refs)
	s.refs = s.refs[:0]
	s.provs, s.scoped = s.provs[:0], s.scoped[:0]
	s.snaps, s.picks, s.cands, s.cuts, s.spans, s.curs = s.snaps[:0], s.picks[:0], s.cands[:0], s.cuts[:0], s.spans[:0], s.curs[:0]
}

// NewScratch returns an empty Scratch.
func NewScratch() *Scratch { return &Scratch{} }

// Len returns the number of matches of the last decision.
func (s *Scratch) Len() int {
	if s.fallback != nil {
		return len(s.fallback.Matches)
	}
	return len(s.picks)
}

// Pick returns the i-th best match of the last decision in integer units.
// After a decision on the decimal path (see Decide) it converts the Match.
func (s *Scratch) Pick(i int) Pick {
	if s.fallback != nil {
		m := &s.fallback.Matches[i]
		p := Pick{Offer: &m.Offer, Provider: &m.Provider, Grant: -1}
		p.PriceTicks, _ = market.PriceTicks(m.UnitPrice)
		p.GrossCents = m.Gross.Shift(2).IntPart()
		p.DiscountCents = m.Discount.Shift(2).IntPart()
		p.NetCents = m.Net.Shift(2).IntPart()
		for j := range s.req.Grants {
			if m.VoucherID != "" && s.req.Grants[j].Voucher.ID == m.VoucherID {
				p.Grant = j
				break
			}
		}
		return p
	}
	pk := &s.picks[i]
	return Pick{Offer: &pk.s.it.Offer, Provider: &pk.s.prov.acct, PriceTicks: pk.s.ticks,
		GrossCents: pk.gross, DiscountCents: pk.disc, NetCents: pk.net, Grant: pk.grant}
}

// Considered returns how many offers the last decision examined.
func (s *Scratch) Considered() int {
	if s.fallback != nil {
		return s.fallback.Considered
	}
	return s.considered
}

// Rejected returns how many examined offers the last decision rejected for
// reason r. Offers above the job's max price that the scan skipped are not
// counted here; Result counts them. The first call after a decision runs
// the checker chain over the examined offers that the scan's compiled
// filter rejected without naming a reason.
func (s *Scratch) Rejected(r Reason) int {
	if s.fallback != nil {
		return s.fallback.Rejected[r.String()]
	}
	s.tally()
	if r < numReasons {
		return s.counts[r]
	}
	return 0
}

// Result converts the last decision to a Result (this allocates). When the
// decision found fewer than its limit, Considered and Rejected cover every
// offer of the job's markets, as Rank's do.
func (s *Scratch) Result() Result {
	if s.fallback != nil {
		return *s.fallback
	}
	s.complete()
	out := Result{Rejected: s.counts.toMap(), Considered: s.considered}
	if len(s.picks) > 0 {
		out.Matches = make([]Match, len(s.picks))
	}
	for i := range s.picks {
		pk := &s.picks[i]
		it := pk.s.it
		m := Match{Offer: it.Offer, Provider: pk.s.prov.acct, UnitPrice: it.Offer.Price,
			Gross: decimal.New(pk.gross, -market.AmountScale), Net: decimal.New(pk.net, -market.AmountScale)}
		if pk.grant >= 0 {
			g := &s.req.Grants[pk.grant]
			m.Discount = decimal.New(pk.disc, -market.AmountScale)
			m.VoucherID, m.ProgramID = g.Voucher.ID, g.Program.ID
		}
		out.Matches[i] = m
	}
	return out
}

// count adds to s.counts the reason of every offer in sp.
func (s *Scratch) count(sp *span) {
	s.q.enter(sp.sn.mkt)
	slots := sp.sn.slots
	for k := sp.from; k < sp.to; k++ {
		i := k
		if sp.prov != nil {
			i = sp.prov[k].index()
		}
		s.counts[defaultChain.check(&s.q, &slots[i])]++
	}
}

// tally counts the reasons of the examined offers not counted yet.
func (s *Scratch) tally() {
	for i := range s.spans {
		s.count(&s.spans[i])
	}
	clear(s.spans)
	s.spans = s.spans[:0]
	s.counts[ReasonNone] = 0
}

// complete counts the examined offers and, for their reasons only, the
// offers a max-price cut skipped.
func (s *Scratch) complete() {
	s.tally()
	for i := range s.cuts {
		s.considered += s.cuts[i].to - s.cuts[i].from
		s.count(&s.cuts[i])
	}
	s.counts[ReasonNone] = 0
	clear(s.cuts)
	s.cuts = s.cuts[:0]
}

// examined records that the scan examined the span of sn, prov, from and
// to (see span).
func (s *Scratch) examined(sn *Snapshot, prov []provEntry, from, to int) {
	if to > from {
		s.considered += to - from
		s.spans = appendSpan(s.spans, sn, prov, from, to)
	}
}

// appendSpan appends a span to spans, written in place field by field
// (see price).
func appendSpan(spans []span, sn *Snapshot, prov []provEntry, from, to int) []span {
	spans = append(spans, span{})
	sp := &spans[len(spans)-1]
	sp.sn, sp.prov, sp.from, sp.to = sn, prov, from, to
	return spans
}

// intRequest reports whether the request's job fits the integer path: units
// and hours within the broker's limits.
func intRequest(req *Request) bool {
	j := &req.Job
	return j.Units >= 1 && j.Units <= market.MaxUnits && j.Hours >= 1 && j.Hours <= market.MaxHours
}

// prepare resets s for req and compiles its grants; it reports whether the
// integer path can decide req.
func (s *Scratch) prepare(req *Request, limit int, scopes bool) bool {
	s.req, s.limit, s.fallback = req, limit, nil
	s.picks = s.picks[:0]
	clear(s.cuts)
	clear(s.spans)
	s.cuts, s.spans = s.cuts[:0], s.spans[:0]
	s.counts = reasonCounts{}
	s.considered = 0
	clear(s.refs)
	s.refs = s.refs[:0]
	s.q.reset(req)
	s.vouchers = false
	if !intRequest(req) {
		return false
	}
	s.uh = req.Job.Units * req.Job.Hours
	if req.Job.UseVouchers && len(req.Grants) > 0 {
		cl := &req.Class
		if cl.ID == "" {
			c := *cl
			c.ID = s.q.class
			cl = &c
		}
		var ok bool
		if scopes {
			ok = req.Rules.PrepareTerms(&s.prep, req.Now, &req.SME, cl, req.Grants, req.Terms)
		} else {
			ok = req.Rules.PrepareTermsUnscoped(&s.prep, req.Now, &req.SME, cl, req.Grants, req.Terms)
		}
		if !ok {
			return false
		}
		s.vouchers = len(s.prep.Grants()) > 0
		if req.compiled {
			s.prep.SetSMESig(req.smeSig)
		}
	}
	return true
}

// Decide matches req against snaps (one per market, each market once) into
// s and returns the number of matches, best first, at most limit (≤ 0: all).
//
// It gives the matches Rank gives over the snapshots' offers. It scans the
// markets together, always at the cheapest offer not yet examined, and
// stops in each market once no later offer of it can enter the best limit.
// For an offer of a provider that no provider-scoped grant names, the
// voucher is, if any, the first grant in expiry order whose scope takes the
// region and that pays on the gross — and none at all for a related party or
// a price above the guard — so its net is at least lb(gross) = gross − that
// grant's discount; lb never falls as the price rises, and a market's scan
// stops once lb is above the limit-th best net (or equal with a later rank
// key). The offers of providers a scoped grant names are then scanned the
// same way through the provider's own price-ordered list, bounded by their
// own grants, from where the market scan stopped. A market's scan also stops
// at its first offer above the job's max price.
//
// The scan filters offers with the checker chain compiled for the job and
// the market (see filter), which says whether an offer passes, not why not.
// Considered and the rejection counts of s cover the offers examined, the
// counts taken by the checker chain when first asked for; Result adds the
// offers skipped above the max price, so that when fewer than limit offers
// match its counts cover every offer, as Rank's do.
//
// A request whose units or hours lie outside market.MaxUnits/MaxHours, or
// whose programme rate has more than four decimal places, is decided on the
// decimal path (Rank over the snapshots' offers), which allocates.
func Decide(req *Request, snaps []*Snapshot, limit int, s *Scratch) int {
	return decide(req, snaps, false, limit, s)
}

// decide is Decide; byNum says that the engine found snaps by number, with
// their regions' bits in s.rbits (see Scratch.byNum).
func decide(req *Request, snaps []*Snapshot, byNum bool, limit int, s *Scratch) int {
	s.byNum = byNum && req.num.ok && len(s.rbits) == len(snaps)
	// With the markets and the scoped providers by number, the grants'
	// scope lists are not read (see bounds and marketGrants).
	if !s.prepare(req, limit, !(s.byNum && req.num.provsOK)) {
		s.cands = s.cands[:0]
		for _, sn := range snaps {
			for i := range sn.slots {
				s.cands = append(s.cands, sn.slots[i].candidate())
			}
		}
		res := Rank(*req, s.cands, limit)
		s.fallback = &res
		return len(res.Matches)
	}
	s.bounds()
	if s.exhaustive {
		for k, sn := range snaps {
			if sn != nil {
				s.scanAll(sn, s.marketGrants(k, sn))
			}
		}
	} else {
		s.scan(snaps)
	}
	if limit <= 0 {
		slices.SortFunc(s.picks, func(a, b pick) int { return comparePick(&a, &b) })
	}
	return len(s.picks)
}

func (s *Scratch) full() bool { return s.limit > 0 && len(s.picks) >= s.limit && !s.exhaustive }

// bounds prepares the grant masks of the decision: the grants scoped to
// no provider, and per provider that some grant names, the grants naming
// it.
func (s *Scratch) bounds() {
	s.unscoped, s.masked = 0, false
	clear(s.provs)
	s.provs = s.provs[:0]
	grants := s.prep.Grants()
	if !s.vouchers || len(grants) > maxMasked {
		return
	}
	s.masked = true
	if n := &s.req.num; n.provsOK {
		s.boundsByNum(n, grants)
		return
	}
	for i := range grants {
		g := &grants[i]
		if len(g.Providers) == 0 {
			s.unscoped |= 1 << i
			continue
		}
	next:
		for _, pid := range g.Providers {
			for k := range s.provs {
				if s.provs[k].id == pid {
					s.provs[k].mask |= 1 << i
					continue next
				}
			}
			s.provs = append(s.provs, scopedProv{id: pid, num: providerNumber(pid), mask: 1 << i})
		}
	}
}

// boundsByNum is bounds from the provider numbers of the request's terms
// (see numbered): it reads no provider id.
func (s *Scratch) boundsByNum(n *numbered, grants []voucher.Compiled) {
	for i := range grants {
		if n.unscoped&(1<<grants[i].Index) != 0 {
			s.unscoped |= 1 << i
		}
	}
	for _, p := range n.provs {
		var m uint64
		for i := range grants {
			if p.terms&(1<<grants[i].Index) != 0 {
				m |= 1 << i
			}
		}
		if m != 0 {
			s.provs = append(s.provs, scopedProv{num: p.num, mask: m})
		}
	}
}

// grantsIn returns the grants whose scopes take an offer of the provider
// numbered num in a market whose region the grants in region take.
func (s *Scratch) grantsIn(region uint64, num int32) uint64 {
	m := s.unscoped
	for k := range s.provs {
		if s.provs[k].num == num {
			m |= s.provs[k].mask
		}
	}
	return region & m
}

// regionMask returns the grants whose region scope takes region.
func (s *Scratch) regionMask(region string) uint64 {
	grants := s.prep.Grants()
	if !s.vouchers || len(grants) > maxMasked {
		return 0
	}
	var m uint64
	for i := range grants {
		if inList(grants[i].Regions, region) {
			m |= 1 << i
		}
	}
	return m
}

// marketGrants returns the grants whose region scope takes the market of
// snaps[k], sn, of the decision.
func (s *Scratch) marketGrants(k int, sn *Snapshot) uint64 {
	if s.byNum {
		return s.regionMaskBit(s.rbits[k])
	}
	return s.regionMask(sn.Market.Region)
}

// regionMaskBit is regionMask of the region whose bit is b, from the
// request's numbers.
func (s *Scratch) regionMaskBit(b uint64) uint64 {
	grants := s.prep.Grants()
	if !s.vouchers || len(grants) > maxMasked {
		return 0
	}
	regions := s.req.num.termRegions
	if regions == nil {
		return ^uint64(0) >> (64 - len(grants))
	}
	var m uint64
	for i := range grants {
		if regions[grants[i].Index]&b != 0 {
			m |= 1 << i
		}
	}
	return m
}

// beyond reports whether sl, priced at ticks, and so every later slot of
// the same list, can no longer enter the best limit, when the grants in
// bound are the ones that can pay on it. It reads sl only when the net
// ties.
func (s *Scratch) beyond(bound uint64, ticks int64, sn *Snapshot, i int) bool {
	g := grossCents(ticks, s.uh)
	lb := g
	if s.vouchers {
		grants := s.prep.Grants()
		if len(grants) > maxMasked {
			// Bound by the largest discount any grant pays.
			d := int64(0)
			for i := range grants {
				d = max(d, grants[i].MaxDiscountCents(g))
			}
			lb -= d
		} else {
			for m := bound; m != 0; m &= m - 1 {
				if d := grants[bits.TrailingZeros64(m)].MaxDiscountCents(g); d > 0 {
					lb -= d
					break
				}
			}
		}
	}
	w := &s.picks[len(s.picks)-1]
	if lb != w.net {
		return lb > w.net
	}
	return compareSlotAt(sn, i, w) > 0
}

// allBeyond reports whether no offer at ticks or dearer can enter the best
// limit, whatever its market's grants: its net is then at least its gross
// less the largest discount a grant scoped to no provider pays on it.
func (s *Scratch) allBeyond(ticks int64) bool {
	g := grossCents(ticks, s.uh)
	lb := g
	if s.vouchers {
		grants := s.prep.Grants()
		d := int64(0)
		for i := range grants {
			if len(grants) > maxMasked || s.unscoped&(1<<i) != 0 {
				d = max(d, grants[i].MaxDiscountCents(g))
			}
		}
		lb -= d
	}
	return lb > s.picks[len(s.picks)-1].net
}

// scan examines the offers of snaps cheapest first across markets, as
// Decide describes.
func (s *Scratch) scan(snaps []*Snapshot) {
	s.curs = s.curs[:0]
	for k, sn := range snaps {
		if sn == nil || len(sn.hot) == 0 {
			continue
		}
		if !s.byNum {
			s.q.judge(&sn.Market)
		} // else of the job's class and in its regions (see Engine.numbered)
		f, ok := s.q.filter(sn)
		if !ok {
			// No offer of the market passes: all examined, to the max price.
			end := len(sn.hot)
			if s.q.maxTicks < math.MaxInt64 {
				end, _ = slices.BinarySearchFunc(sn.hot, s.q.maxTicks+1, func(h hotSlot, t int64) int { return cmp.Compare(h.ticks, t) })
			}
			s.examined(sn, nil, 0, end)
			if end < len(sn.hot) {
				s.cuts = appendSpan(s.cuts, sn, nil, end, len(sn.hot))
			}
			continue
		}
		s.curs = append(s.curs, cursor{}) // written in place (see price)
		c := &s.curs[len(s.curs)-1]
		c.sn, c.f, c.ticks, c.region = sn, f, sn.first, s.marketGrants(k, sn)
	}
	if len(s.curs) == 1 {
		s.run(&s.curs[0], math.MaxInt64)
	} else {
		// The market with the cheapest next offer runs until another
		// market's next offer is cheaper. act lists the markets still
		// scanning and heads their next offers' prices.
		act, heads := s.act[:0], s.heads[:0]
		for j := range s.curs {
			act, heads = append(act, int32(j)), append(heads, s.curs[j].ticks)
		}
		for len(act) > 0 {
			m, lo, next := 0, heads[0], int64(math.MaxInt64)
			for k := 1; k < len(heads); k++ {
				if t := heads[k]; t < lo {
					m, lo, next = k, t, lo
				} else if t < next {
					next = t
				}
			}
			if s.full() && s.allBeyond(lo) {
				// No market's next offer can enter: each stops where it is.
				for _, j := range act {
					s.curs[j].state = atBound
				}
				break
			}
			c := &s.curs[act[m]]
			s.run(c, next)
			if c.state == scanning {
				heads[m] = c.ticks
			} else {
				last := len(act) - 1
				act[m], heads[m] = act[last], heads[last]
				act, heads = act[:last], heads[:last]
			}
		}
		s.act, s.heads = act, heads
	}
	if len(s.provs) > 0 {
		s.scanScoped()
	}
	for j := range s.curs {
		c := &s.curs[j]
		s.examined(c.sn, nil, 0, c.i)
		if c.state == atCut {
			s.cuts = appendSpan(s.cuts, c.sn, nil, c.i, len(c.sn.slots))
		}
	}
}

// run scans c's market while its offers cost at most next.
func (s *Scratch) run(c *cursor, next int64) {
	hot, slots, warm := c.sn.hot, c.sn.slots[:len(c.sn.hot)], c.sn.warm[:len(c.sn.hot)]
	maxTicks := s.q.maxTicks
	bound := c.region & s.unscoped
	full := s.full()
	for i := c.i; i < len(hot); i++ {
		h := &hot[i]
		if h.ticks > maxTicks {
			c.i, c.state = i, atCut
			return
		}
		if h.ticks > next {
			c.i, c.ticks = i, h.ticks
			return
		}
		if full && s.beyond(bound, h.ticks, c.sn, i) {
			c.i, c.ticks, c.state = i, h.ticks, atBound
			return
		}
		if c.f.pass(h) && (!c.f.exact || s.certified(&slots[i])) {
			w := &warm[i]
			s.price(c.sn, i, c.sn.Market.Region, c.region, h.ticks, w.list, w.acct, w.sig, w.num)
			full = s.full()
		}
	}
	c.i, c.state = len(hot), atEnd
}

// certified is the certifications checker.
func (s *Scratch) certified(sl *slot) bool {
	return certificationsChecker{}.check(&s.q, sl) == ReasonNone
}

// scanScoped scans, past where a market's scan stopped at the bound, the
// offers of the providers that a scoped grant names, each through its own
// list. It first lists the (market, provider) pairs that may still win at
// the market's stop price (no memory read), then reads their lists' heads
// in one short pass (a head is seldom in cache, and these reads then
// overlap), then scans.
func (s *Scratch) scanScoped() {
	s.scoped = s.scoped[:0]
	for ci := range s.curs {
		c := &s.curs[ci]
		if c.state != atBound {
			continue
		}
		for _, p := range s.provs {
			if p.mask&c.region == 0 || p.num < 0 {
				continue // no grant in this region names it, or no book has its offers
			}
			bound := c.region & (s.unscoped | p.mask)
			if s.full() && s.beyond(bound, c.ticks, c.sn, c.i) {
				continue // even at the stop price this provider cannot win
			}
			s.scoped = append(s.scoped, scoped{}) // written in place (see price)
			sc := &s.scoped[len(s.scoped)-1]
			sc.cur, sc.bound, sc.num = ci, bound, p.num
		}
	}
	for k := range s.scoped {
		p := &s.scoped[k]
		if hs := s.curs[p.cur].sn.provHead; int(p.num) < len(hs) {
			p.head = hs[p.num]
		}
	}
	for k := range s.scoped {
		p := &s.scoped[k]
		if p.head.end > p.head.start {
			s.scanProvider(&s.curs[p.cur], p.bound, &p.head, p.num)
		}
	}
}

// scanProvider scans, from where c's market scan stopped, the list of
// the provider with head h, bounded by the grants in bound.
func (s *Scratch) scanProvider(c *cursor, bound uint64, h *provHead, num int32) {
	sn := c.sn
	from := uint64(c.ticks)<<provIndexBits | uint64(c.i) // the key of the stop
	list, k0 := sn.prov[h.start:h.end], 0
	if h.first < from {
		k0 = searchFrom(list, from)
	} else if s.full() && s.beyond(bound, int64(h.first>>provIndexBits), sn, int(h.first&(maxBookOffers-1))) {
		return // the list's first entry, which the head holds, is past the bound
	}
	region := sn.Market.Region
	k := k0
	for ; k < len(list); k++ {
		e := &list[k]
		ticks := int64(e.key >> provIndexBits)
		at := e.index()
		if ticks > s.q.maxTicks || s.full() && s.beyond(bound, ticks, sn, at) {
			break
		}
		if c.f.pass(&hotSlot{meta: e.meta}) && (!c.f.exact || s.certified(&sn.slots[at])) {
			// The entry and the head hold what pricing reads of the slot.
			s.price(sn, at, region, c.region, ticks, e.list, h.acct, h.sig, num)
		}
	}
	if k > k0 {
		s.examined(sn, list, k0, k)
	}
}

// searchFrom returns the position of the first entry of list whose key is
// at least from, searching outwards from the start: the scan's stop is
// mostly near the cheap end of a list.
func searchFrom(list []provEntry, from uint64) int {
	hi := 1
	for hi < len(list) && list[hi-1].key < from {
		hi *= 2
	}
	lo := hi / 2
	hi = min(hi, len(list))
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if list[m].key < from {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// scanAll checks every offer of sn up to the job's max price with the
// checker chain and prices every eligible one: the brute-force scan.
func (s *Scratch) scanAll(sn *Snapshot, rm uint64) {
	s.q.enter(sn.mkt)
	for i := range sn.slots {
		sl := &sn.slots[i]
		if sl.ticks > s.q.maxTicks {
			s.cuts = appendSpan(s.cuts, sn, nil, i, len(sn.slots))
			return
		}
		s.considered++
		if r := defaultChain.check(&s.q, sl); r != ReasonNone {
			s.counts[r]++
			continue
		}
		s.take(sn, i, rm)
	}
}

func inList(scope []string, id string) bool { return len(scope) == 0 || slices.Contains(scope, id) }

// marketRef is the reference price of a market (its book's shared key),
// prepared once per decision for the voucher guard.
type marketRef struct {
	mkt *market.MarketKey
	ref voucher.Reference
}

// reference returns the guard's reference price for the offers of sn:
// with Request.Reference, its answer for the market, asked once per
// decision and market (the pointer is good until the next call);
// without, the one the market's book holds (see Book.SetReference).
func (s *Scratch) reference(sn *Snapshot) *voucher.Reference {
	if s.req.Reference == nil {
		return sn.ref
	}
	mkt := sn.mkt
	for i := range s.refs {
		if s.refs[i].mkt == mkt {
			return &s.refs[i].ref
		}
	}
	s.refs = append(s.refs, marketRef{mkt: mkt, ref: voucher.NewReference(s.req.Reference(*mkt))})
	return &s.refs[len(s.refs)-1].ref
}

// target describes sl, an offer of sn, for the voucher rules.
func (s *Scratch) target(sn *Snapshot, sl *slot) voucher.Target {
	return voucher.Target{Provider: &sl.prov.acct, Offer: &sl.it.Offer, Region: sl.mkt.Region,
		PriceTicks: sl.ticks, ListTicks: sl.listTicks, Ref: s.reference(sn), ProviderSig: sl.prov.sig}
}

// take prices the eligible offer sn.slots[i], rm being the grants whose
// region scope takes its market (see regionMask), and keeps it if it is
// among the best limit so far.
func (s *Scratch) take(sn *Snapshot, i int, rm uint64) {
	w := &sn.warm[i] // what the provider record holds, without reading it
	s.price(sn, i, sn.Market.Region, rm, sn.slots[i].ticks, w.list, w.acct, w.sig, w.num)
}

// price is take with the slot's price, list price, provider account, key
// signature and number given: it reads the slot itself only for the
// voucher guard's reference price, and the provider's account only when
// the signatures meet.
func (s *Scratch) price(sn *Snapshot, at int, region string, rm uint64, ticks, listTicks int64, acct *market.Account, sig uint64, num int32) {
	sl := &sn.slots[at]
	gross := grossCents(ticks, s.uh)
	grant, disc, net := -1, int64(0), gross
	if s.vouchers {
		t := voucher.Target{Provider: acct, Region: region, PriceTicks: ticks, ListTicks: listTicks,
			Ref: s.reference(sn), ProviderSig: sig}
		if listTicks < 0 {
			t.Offer = &sl.it.Offer
		}
		var idx int
		var d int64
		if s.masked {
			idx, d = s.prep.ChooseIn(&t, gross, s.grantsIn(rm, num))
		} else {
			idx, d = s.prep.Choose(&t, gross)
		}
		if idx >= 0 {
			grant, disc, net = idx, d, gross-d
		}
	}
	// The pick is written in place, field by field, once its position is
	// known: a pick built whole and copied is stored in words and read back
	// in wider loads that wait for the stores (no store forwarding).
	n := len(s.picks)
	if s.limit <= 0 {
		s.picks = append(s.picks, pick{})
		s.picks[n].set(sl, sn, at, gross, disc, net, grant)
		return
	}
	if n >= s.limit {
		if !s.picks[n-1].after(net, sn, at) {
			return
		}
		n-- // the new pick replaces the last
	} else {
		s.picks = append(s.picks, pick{})
	}
	j := n
	for j > 0 && s.picks[j-1].after(net, sn, at) {
		j--
	}
	if j < n {
		copy(s.picks[j+1:n+1], s.picks[j:n])
	}
	s.picks[j].set(sl, sn, at, gross, disc, net, grant)
}
