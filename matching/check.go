package matching

import (
	"math"
	"slices"

	"computebroker/market"
	"computebroker/voucher"
)

// query is a Request prepared for checking: the fields every checker needs,
// converted once per decision.
type query struct {
	req   *Request
	class string // the job's resource class (Job.ResourceClass, else Class.ID)
	// maxTicks is the job's max price floored to ticks; MaxInt64 for no limit.
	// price ≤ max ⇔ ticks ≤ floor(max × 10⁴) because ticks are whole.
	maxTicks int64
	// minUnits is the least units_free an offer needs: the job's units, or 1
	// when looking for the parts of a split fill.
	minUnits int64
	// mkt is the market being scanned, with what the class and region
	// checkers answer for it, so that they need not read the strings again
	// for every offer of a book (whose slots all share its key).
	mkt                 *market.MarketKey
	mktClass, mktRegion Reason
}

// enter prepares q for scanning the offers of the market at mkt.
func (q *query) enter(mkt *market.MarketKey) {
	q.mkt = mkt
	q.judge(mkt)
}

// judge sets what the class and region checkers answer for the market
// key, a copy of the market's (a snapshot's, in the cache line the scan
// reads anyway). It leaves q.mkt as it is: filter needs only the answers.
func (q *query) judge(key *market.MarketKey) {
	q.mktClass, q.mktRegion = ReasonNone, ReasonNone
	if key.Class != q.class {
		q.mktClass = ReasonWrongClass
	}
	if !inRegions(q.req.Job.Regions, key.Region) {
		q.mktRegion = ReasonWrongRegion
	}
}

// inRegions is market.Job.InRegion on the job's regions, without copying
// the Job (a value receiver) for every market.
func inRegions(regions []string, region string) bool {
	return len(regions) == 0 || slices.Contains(regions, region)
}

func newQuery(req *Request) query {
	var q query
	q.reset(req)
	return q
}

// reset makes q the query of req, field by field: a query built whole and
// copied is stored in words and read back in wider loads that wait for the
// stores (no store forwarding). It reads the max price itself where
// Job.HasMaxPrice would copy the Job.
func (q *query) reset(req *Request) {
	q.req, q.class, q.maxTicks, q.minUnits = req, req.Job.ResourceClass, math.MaxInt64, req.Job.Units
	q.mkt, q.mktClass, q.mktRegion = nil, ReasonNone, ReasonNone
	if q.class == "" {
		q.class = req.Class.ID
	}
	if req.compiled {
		if req.maxTicks >= 0 {
			q.maxTicks = req.maxTicks
		}
	} else if req.Job.MaxPrice.IsPositive() {
		if t, _, clamped := voucher.FloorScaled(req.Job.MaxPrice, market.PriceScale); !clamped {
			q.maxTicks = t
		}
	}
}

// item is the cold part of a book entry: the offer as given. Its provider
// is its slot's record (slot.prov.acct): SetProvider gives each offer of
// the provider a new slot with the new record and the same item, so an
// older snapshot's slot keeps the account it was published with.
type item struct {
	Offer market.Offer
}

// Slot flags.
const (
	flagTicksOK   uint8 = 1 << iota // the price has an exact tick count
	flagActive                      // Offer.Status is active
	flagApproved                    // Provider.Approved()
	flagSuspended                   // Provider.Status is suspended
)

// slot is the hot part of a book entry, laid out in price order so that a
// scan reads one cache line per offer: every fact a checker or the pricing
// needs, and pointers to the shared provider account and market key.
type slot struct {
	ticks     int64 // Offer.Price in ticks (market.PriceTicks)
	unitsFree int64
	maxHours  int64
	listTicks int64 // Offer.ListPrice in ticks, -1 when not exact
	flags     uint8
	prov      *provider         // the provider, shared by its offers
	mkt       *market.MarketKey // the offer's market, shared by the book
	it        *item
}

// provider is the account an offer's slot points to, with what the scan
// reads of it: a Book keeps one per provider and fills in num, certs and
// sig; a free-standing slot (Rank's) has only the account.
type provider struct {
	sig   uint64 // voucher.KeysSig of the related-party keys
	num   int32  // the provider's number (see provNums)
	certs uint32 // its certifications, as bits of the book's table
	acct  market.Account
}

// hotSlot is a slot packed into 16 bytes, four to a cache line, for the
// scan's filter. meta holds units_free clamped to [0, MaxUnits] (bits 0–19),
// max_hours clamped to [0, MaxHours] (bits 20–36), hotGate when the price
// checker, the provider checker and the active checker pass, and from
// hotCert0 up the provider's certifications in its book's table. Clamping
// keeps every comparison with a job's units or hours, which lie in
// [1, MaxUnits] and [1, MaxHours] on the integer path, exact.
type hotSlot struct {
	ticks int64
	meta  uint64
}

const (
	hotUnits      = 1<<20 - 1
	hotHoursShift = 20
	hotHours      = (1<<17 - 1) << hotHoursShift
	hotGate       = 1 << 37
	hotCert0      = 1 << 38
	// maxCerts is how many certifications a book numbers for the filter;
	// a job asking for one outside the table is checked on the slot.
	maxCerts = 64 - 38
)

// The limits must fit their fields.
var _ = [1]struct{}{}[market.MaxUnits>>20+market.MaxHours>>17]

func packHot(sl *slot) hotSlot {
	m := uint64(min(max(sl.unitsFree, 0), market.MaxUnits)) |
		uint64(min(max(sl.maxHours, 0), market.MaxHours))<<hotHoursShift |
		uint64(sl.prov.certs)<<38
	const gate = flagTicksOK | flagActive | flagApproved
	if sl.flags&gate == gate {
		m |= hotGate
	}
	return hotSlot{ticks: sl.ticks, meta: m}
}

// filter is the checker chain compiled for one query and one market of a
// book: an offer of the market at or under the job's max price passes every
// checker exactly when pass(h) holds and, if exact is set, the slot passes
// the certifications checker. TestFilterEqualsChain holds it to the chain.
type filter struct {
	minUnits uint64 // units, at hotUnits' position
	minHours uint64 // hours, at hotHours' position
	want     uint64 // hotGate and the job's certification bits
	exact    bool   // a certification outside the book's table: check the slot
}

// filter compiles q for the offers of sn; ok is false when none of them can
// pass (the market is of another class or outside the job's regions). q
// must have entered or judged sn's market, and its units and hours must lie within
// market.MaxUnits and market.MaxHours.
func (q *query) filter(sn *Snapshot) (f filter, ok bool) {
	if q.mktClass != ReasonNone || q.mktRegion != ReasonNone {
		return f, false
	}
	f = filter{minUnits: uint64(q.minUnits), minHours: uint64(q.req.Job.Hours) << hotHoursShift, want: hotGate}
	if want := q.req.Job.Certifications; len(want) > 0 {
		if b, known := sn.certBits(want); known {
			f.want |= b
		} else {
			f.exact = true
		}
	}
	return f, true
}

func (f *filter) pass(h *hotSlot) bool {
	m := h.meta
	return m&hotUnits >= f.minUnits && m&hotHours >= f.minHours && m&f.want == f.want
}

// newSlot builds the slot of c; prov and mkt must hold c's provider and the
// offer's class and region.
func newSlot(it *item, prov *provider, mkt *market.MarketKey) slot {
	o := &it.Offer
	s := slot{unitsFree: o.UnitsFree, maxHours: o.MaxHours, listTicks: -1, prov: prov, mkt: mkt, it: it}
	if t, ok := market.PriceTicks(o.Price); ok {
		s.ticks, s.flags = t, flagTicksOK
	}
	if t, ok := market.PriceTicks(o.ListPrice); ok {
		s.listTicks = t
	}
	if o.Status == market.OfferActive {
		s.flags |= flagActive
	}
	if prov.acct.Approved() {
		s.flags |= flagApproved
	}
	if prov.acct.Status == market.ProviderSuspended {
		s.flags |= flagSuspended
	}
	return s
}

// candidateSlot builds a free-standing slot for a candidate (Rank's).
func candidateSlot(c Candidate) slot {
	it := &item{Offer: c.Offer}
	return newSlot(it, &provider{acct: c.Provider}, &market.MarketKey{Class: c.Offer.ResourceClass, Region: c.Offer.Region})
}

// candidate is the offer of s with its provider.
func (s *slot) candidate() Candidate { return Candidate{Offer: s.it.Offer, Provider: s.prov.acct} }

// checker is one feasibility rule: check returns ReasonNone when the
// candidate passes, else why it is rejected.
type checker interface {
	check(q *query, s *slot) Reason
}

// chain runs checkers in order; the first failing one gives the reason.
type chain []checker

// newChain is the one place the feasibility checkers are assembled, in the
// order their reasons are reported.
func newChain() chain {
	return chain{
		priceValidChecker{},
		providerChecker{},
		activeChecker{},
		classChecker{},
		regionChecker{},
		unitsChecker{},
		hoursChecker{},
		maxPriceChecker{},
		certificationsChecker{},
	}
}

func (c chain) check(q *query, s *slot) Reason {
	for _, ck := range c {
		if r := ck.check(q, s); r != ReasonNone {
			return r
		}
	}
	return ReasonNone
}

var defaultChain = newChain()

// priceValidChecker rejects prices that have no exact tick count (more than
// four decimal places, negative or too large); books refuse them on entry.
type priceValidChecker struct{}

func (priceValidChecker) check(_ *query, s *slot) Reason {
	if s.flags&flagTicksOK == 0 {
		return ReasonInvalidPrice
	}
	return ReasonNone
}

// providerChecker: the provider is approved and not suspended.
type providerChecker struct{}

func (providerChecker) check(_ *query, s *slot) Reason {
	switch {
	case s.flags&flagApproved != 0:
		return ReasonNone
	case s.flags&flagSuspended != 0:
		return ReasonProviderSuspended
	default:
		return ReasonProviderNotApproved
	}
}

// activeChecker: the offer is active.
type activeChecker struct{}

func (activeChecker) check(_ *query, s *slot) Reason {
	if s.flags&flagActive == 0 {
		return ReasonOfferInactive
	}
	return ReasonNone
}

// classChecker: the offer sells the job's resource class.
type classChecker struct{}

func (classChecker) check(q *query, s *slot) Reason {
	if s.mkt == q.mkt {
		return q.mktClass
	}
	if s.mkt.Class != q.class {
		return ReasonWrongClass
	}
	return ReasonNone
}

// regionChecker: the offer's region is one the job accepts (none listed: any).
type regionChecker struct{}

func (regionChecker) check(q *query, s *slot) Reason {
	if s.mkt == q.mkt {
		return q.mktRegion
	}
	if !inRegions(q.req.Job.Regions, s.mkt.Region) {
		return ReasonWrongRegion
	}
	return ReasonNone
}

// unitsChecker: units_free ≥ units (≥ 1 for the parts of a split).
type unitsChecker struct{}

func (unitsChecker) check(q *query, s *slot) Reason {
	if s.unitsFree < q.minUnits {
		return ReasonTooFewUnits
	}
	return ReasonNone
}

// hoursChecker: max_hours ≥ hours.
type hoursChecker struct{}

func (hoursChecker) check(q *query, s *slot) Reason {
	if s.maxHours < q.req.Job.Hours {
		return ReasonTooFewHours
	}
	return ReasonNone
}

// maxPriceChecker: price ≤ max_price when the job sets one.
type maxPriceChecker struct{}

func (maxPriceChecker) check(q *query, s *slot) Reason {
	if s.ticks > q.maxTicks {
		return ReasonOverMaxPrice
	}
	return ReasonNone
}

// certificationsChecker: the provider holds every certification the job asks for.
type certificationsChecker struct{}

func (certificationsChecker) check(q *query, s *slot) Reason {
	if len(q.req.Job.Certifications) > 0 && !s.prov.acct.HasCertifications(q.req.Job.Certifications) {
		return ReasonMissingCertifications
	}
	return ReasonNone
}
