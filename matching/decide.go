package matching

import (
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
	return compareSlotPtrs(a.s, b.s)
}

// grossCents is round_half_up(ticks × uh / 100): the gross in cents of a
// price in ticks for uh unit-hours. ticks ≤ maxTicks and uh ≤ MaxUnits ×
// MaxHours keep the quotient inside an int64.
func grossCents(ticks, uh int64) int64 {
	hi, lo := bits.Mul64(uint64(ticks), uint64(uh))
	lo, c := bits.Add64(lo, 50, 0)
	q, _ := bits.Div64(hi+c, lo, 100)
	return int64(q)
}

func floorRate(rateBP, gross int64) int64 {
	hi, lo := bits.Mul64(uint64(rateBP), uint64(gross))
	q, _ := bits.Div64(hi, lo, 10_000)
	return int64(q)
}

// cut is the part of a market a decision did not examine because every
// offer in it is above the job's max price.
type cut struct {
	sn   *Snapshot
	from int
}

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
	cuts       []cut
	fallback   *Result // set when the request needs the decimal path
	snaps      []*Snapshot
	cands      []Candidate
	bound      []int // indices of the grants that bound the current scan
	// exhaustive turns the bound off: every offer is checked and priced (the
	// brute-force scan the benchmarks compare against).
	exhaustive bool
}

// release drops the references a pooled Scratch would otherwise keep alive.
func (s *Scratch) release() {
	s.req, s.fallback, s.q = nil, nil, query{}
	clear(s.snaps)
	clear(s.picks)
	clear(s.cands)
	clear(s.cuts)
	s.snaps, s.picks, s.cands, s.cuts = s.snaps[:0], s.picks[:0], s.cands[:0], s.cuts[:0]
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
	return Pick{Offer: &pk.s.it.Offer, Provider: &pk.s.it.Provider, PriceTicks: pk.s.ticks,
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
// counted here; Result counts them.
func (s *Scratch) Rejected(r Reason) int {
	if s.fallback != nil {
		return s.fallback.Rejected[r.String()]
	}
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
		m := Match{Offer: it.Offer, Provider: it.Provider, UnitPrice: it.Offer.Price,
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

// complete checks, for their reasons only, the offers a max-price cut
// skipped.
func (s *Scratch) complete() {
	for _, c := range s.cuts {
		s.q.enter(c.sn.mkt)
		for i := c.from; i < len(c.sn.slots); i++ {
			s.considered++
			s.counts[defaultChain.check(&s.q, &c.sn.slots[i])]++
		}
	}
	s.counts[ReasonNone] = 0
	s.cuts = s.cuts[:0]
}

// intRequest reports whether the request's job fits the integer path: units
// and hours within the broker's limits.
func intRequest(req *Request) bool {
	j := &req.Job
	return j.Units >= 1 && j.Units <= market.MaxUnits && j.Hours >= 1 && j.Hours <= market.MaxHours
}

// prepare resets s for req and compiles its grants; it reports whether the
// integer path can decide req.
func (s *Scratch) prepare(req *Request, limit int) bool {
	s.req, s.limit, s.fallback = req, limit, nil
	s.picks = s.picks[:0]
	s.cuts = s.cuts[:0]
	s.counts = reasonCounts{}
	s.considered = 0
	s.q = newQuery(req)
	s.vouchers = false
	if !intRequest(req) {
		return false
	}
	s.uh = req.Job.Units * req.Job.Hours
	if req.Job.UseVouchers && len(req.Grants) > 0 {
		cl := req.Class
		if cl.ID == "" {
			cl.ID = s.q.class
		}
		if !req.Rules.Prepare(&s.prep, req.Now, req.SME, cl, req.Grants) {
			return false
		}
		s.vouchers = len(s.prep.Grants()) > 0
	}
	return true
}

// Decide matches req against snaps (one per market, each market once) into
// s and returns the number of matches, best first, at most limit (≤ 0: all).
//
// It gives the matches Rank gives over the snapshots' offers. It scans each
// market cheapest first and stops once no later offer can enter the best
// limit. For an offer of a provider that no provider-scoped grant names, the
// voucher is, if any, the first grant in expiry order whose scope takes the
// region and that pays on the gross — and none at all for a related party or
// a price above the guard — so its net is at least lb(gross) = gross − that
// grant's discount; lb never falls as the price rises, and the scan stops
// once lb is above the limit-th best net (or equal with a later rank key).
// The offers of providers a scoped grant names are then scanned the same way
// through the provider's own price-ordered list, bounded by their own
// grants, from where the market scan stopped. The scan also stops at the
// first offer above the job's max price.
//
// Consequently Considered and the rejection counts of s cover the offers
// examined; Result adds the offers skipped above the max price, so that when
// fewer than limit offers match its counts cover every offer, as Rank's do.
//
// A request whose units or hours lie outside market.MaxUnits/MaxHours, or
// whose programme rate has more than four decimal places, is decided on the
// decimal path (Rank over the snapshots' offers), which allocates.
func Decide(req *Request, snaps []*Snapshot, limit int, s *Scratch) int {
	if !s.prepare(req, limit) {
		s.cands = s.cands[:0]
		for _, sn := range snaps {
			for i := range sn.slots {
				s.cands = append(s.cands, sn.slots[i].it.Candidate)
			}
		}
		res := Rank(*req, s.cands, limit)
		s.fallback = &res
		return len(res.Matches)
	}
	for _, sn := range snaps {
		if sn != nil {
			s.scan(sn)
		}
	}
	if limit <= 0 {
		slices.SortFunc(s.picks, func(a, b pick) int { return comparePick(&a, &b) })
	}
	return len(s.picks)
}

func (s *Scratch) full() bool { return s.limit > 0 && len(s.picks) >= s.limit && !s.exhaustive }

// selectBound sets s.bound to the grants that can pay on an offer in region
// from a provider that no scoped grant names (pid ""), or from pid.
func (s *Scratch) selectBound(region, pid string) {
	s.bound = s.bound[:0]
	if !s.vouchers {
		return
	}
	grants := s.prep.Grants()
	for i := range grants {
		g := &grants[i]
		if inList(g.Regions, region) && (len(g.Providers) == 0 || pid != "" && slices.Contains(g.Providers, pid)) {
			s.bound = append(s.bound, i)
		}
	}
}

// beyond reports whether sl, and so every later slot of the same list, can
// no longer enter the best limit, given the grants in s.bound.
func (s *Scratch) beyond(sl *slot) bool {
	g := grossCents(sl.ticks, s.uh)
	lb := g
	if len(s.bound) > 0 {
		grants := s.prep.Grants()
		for _, i := range s.bound {
			if d := grants[i].MaxDiscountCents(g); d > 0 {
				lb -= d
				break
			}
		}
	}
	w := &s.picks[len(s.picks)-1]
	if lb != w.net {
		return lb > w.net
	}
	return compareSlotPtrs(sl, w.s) > 0
}

// scan examines one market's offers cheapest first, as Decide describes.
func (s *Scratch) scan(sn *Snapshot) {
	region := sn.Market.Region
	s.q.enter(sn.mkt)
	s.selectBound(region, "")
	stop := len(sn.slots)
	for i := range sn.slots {
		sl := &sn.slots[i]
		if sl.ticks > s.q.maxTicks {
			s.cuts = append(s.cuts, cut{sn, i})
			return // no later offer is at or under the max price
		}
		if s.full() && s.beyond(sl) {
			stop = i
			break
		}
		s.consider(sl)
	}
	if stop == len(sn.slots) || !s.vouchers {
		return
	}
	// Offers of providers some scoped grant names may still win past stop.
	first := &sn.slots[stop]
	grants := s.prep.Grants()
	for i := range grants {
		g := &grants[i]
		if len(g.Providers) == 0 || !inList(g.Regions, region) {
			continue
		}
		for j, pid := range g.Providers {
			if slices.Contains(g.Providers[:j], pid) || seenProvider(grants[:i], region, pid) {
				continue
			}
			s.selectBound(region, pid)
			if s.full() && s.beyond(first) {
				continue // even at the stop price this provider cannot win
			}
			list := sn.byProv[pid]
			if len(list) == 0 {
				continue
			}
			k, _ := slices.BinarySearchFunc(list, *first, compareSlots)
			for ; k < len(list); k++ {
				sl := &list[k]
				if sl.ticks > s.q.maxTicks || s.full() && s.beyond(sl) {
					break
				}
				s.consider(sl)
			}
		}
	}
}

// seenProvider reports whether an earlier scoped grant in region named pid.
func seenProvider(grants []voucher.Compiled, region, pid string) bool {
	for i := range grants {
		if len(grants[i].Providers) > 0 && inList(grants[i].Regions, region) && slices.Contains(grants[i].Providers, pid) {
			return true
		}
	}
	return false
}

func inList(scope []string, id string) bool { return len(scope) == 0 || slices.Contains(scope, id) }

// target describes sl for the voucher rules.
func (s *Scratch) target(sl *slot) voucher.Target {
	var region string
	if sl.mkt == s.q.mkt {
		region = s.q.mkt.Region
	} else {
		region = sl.mkt.Region
	}
	return voucher.Target{Provider: sl.prov, Offer: &sl.it.Offer, Region: region,
		PriceTicks: sl.ticks, ListTicks: sl.listTicks, Ref: s.req.Reference}
}

// consider checks one offer and, when eligible, prices it and keeps it if it
// is among the best limit so far.
func (s *Scratch) consider(sl *slot) {
	s.considered++
	if r := defaultChain.check(&s.q, sl); r != ReasonNone {
		s.counts[r]++
		return
	}
	p := pick{s: sl, gross: grossCents(sl.ticks, s.uh), grant: -1}
	p.net = p.gross
	if s.vouchers {
		t := s.target(sl)
		if idx, d := s.prep.Choose(&t, p.gross); idx >= 0 {
			p.grant, p.disc, p.net = idx, d, p.gross-d
		}
	}
	if s.limit <= 0 {
		s.picks = append(s.picks, p)
		return
	}
	n := len(s.picks)
	if n >= s.limit {
		if comparePick(&p, &s.picks[n-1]) >= 0 {
			return
		}
		n--
		s.picks = s.picks[:n]
	}
	i := n
	for i > 0 && comparePick(&p, &s.picks[i-1]) < 0 {
		i--
	}
	s.picks = slices.Insert(s.picks, i, p)
}
