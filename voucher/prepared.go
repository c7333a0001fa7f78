package voucher

import (
	"math"
	"math/bits"
	"time"

	"computebroker/market"

	"github.com/shopspring/decimal"
)

// Compiled is a Grant prepared for one request in integer units: everything
// that does not depend on the offer has been checked, and the discount of a
// gross of g cents is min(floor(RateBP × g / 10⁴), CapCents, g).
type Compiled struct {
	Index int // position in the grants given to Prepare: the voucher and programme
	// RateBP is the programme rate (Rate) in 0.0001, at most 10⁴.
	RateBP int64
	// CapCents is floor(min(per_order_cap when set, available, capLeft,
	// budgetLeft)) in cents: floor(min(…)) = min(floor(…)).
	CapCents int64
	// Regions and Providers are the programme's scope; empty means all.
	Regions, Providers []string
}

// MaxDiscountCents is the most this grant can pay on a gross of gross cents.
func (c *Compiled) MaxDiscountCents(gross int64) int64 {
	return discountCents(c.RateBP, c.CapCents, gross)
}

// Prepared is the grants of one request (SME, class, time, rules) compiled
// for the matching engine's hot path. Its Choose gives the same choice and
// discount as Rules.Choose. A Prepared is reusable: Prepare overwrites it
// without allocating once its buffer is large enough. Not safe for
// concurrent use.
type Prepared struct {
	grants  []Compiled // applicable-so-far grants, by (ExpiresAt, VoucherID)
	smeKeys []string   // the SME's related-party keys
	guard   decimal.Decimal
	guardC  uint64 // guard ratio coefficient, 0 when not representable
	guardE  int32
	// guardSet: guard, guardC and guardE are those of a guard ratio
	// (decimals are immutable, so the same one gives the same values).
	guardSet bool
	smeSig   uint64 // KeysSig of the SME's related-party keys, 0 until needed
}

// Grants returns the compiled grants in choice order (expires first, then
// voucher id). The slice is owned by p.
func (p *Prepared) Grants() []Compiled { return p.grants }

// Prepare compiles grants for sme buying class at now into p, keeping those
// that pass every check of Applies that does not depend on the offer:
// holder, programme, validity, class scope, balance, cap and budget. class
// must carry the id the offers are checked against. ok is false when a value
// cannot be held exactly in integers (a rate with more than four decimal
// places): the caller must then use the decimal rules.
func (r Rules) Prepare(p *Prepared, now time.Time, sme market.Account, class market.ResourceClass, grants []Grant) (ok bool) {
	p.begin(r, sme.RelatedPartyKeys)
	for i := range grants {
		gr := &grants[i]
		if !offerFree(now, sme.ID, class.ID, gr) {
			continue
		}
		rate := rate(&gr.Program, class.Domestic, sme.Startup)
		bp, exact, clamped := FloorScaled(rate, 4)
		if !exact && !clamped {
			return false
		}
		bp = min(max(bp, math.MinInt64/2), 10_000) // min(rate × g, g) = g from rate 1 up
		c := min(floorCents(gr.Available), floorCents(gr.CapLeft), floorCents(gr.BudgetLeft))
		if gr.Program.PerOrderCap.IsPositive() {
			c = min(c, floorCents(gr.Program.PerOrderCap))
		}
		p.grants = append(p.grants, Compiled{
			Index: i, RateBP: bp, CapCents: c, Regions: gr.Program.Regions, Providers: gr.Program.Providers,
		})
	}
	p.order(grants)
	return true
}

// begin resets p for a request of an SME with the related-party keys
// smeKeys.
func (p *Prepared) begin(r Rules, smeKeys []string) {
	p.grants = p.grants[:0]
	p.smeKeys = smeKeys
	p.smeSig = 0 // taken when first needed
	g := r.guard()
	if g == p.guard && p.guardSet {
		return // the same decimal as the last request's (rules rarely change)
	}
	p.guard, p.guardSet = g, true
	p.guardC, p.guardE = 0, g.Exponent()
	if g.NumDigits() <= 18 {
		p.guardC = uint64(g.CoefficientInt64())
	}
}

// order puts the grants compiled from grants in choice order (expiry, then
// voucher id): an insertion sort, stable, as a request holds few grants.
func (p *Prepared) order(grants []Grant) {
	for i := 1; i < len(p.grants); i++ {
		for j := i; j > 0 && choiceBefore(&grants[p.grants[j].Index].Voucher, &grants[p.grants[j-1].Index].Voucher); j-- {
			p.grants[j], p.grants[j-1] = p.grants[j-1], p.grants[j]
		}
	}
}

// orderByRank is order for grants compiled from terms, whose ranks are
// that order.
func (p *Prepared) orderByRank(terms []Terms) {
	for i := 1; i < len(p.grants); i++ {
		for j := i; j > 0 && terms[p.grants[j].Index].rank < terms[p.grants[j-1].Index].rank; j-- {
			p.grants[j], p.grants[j-1] = p.grants[j-1], p.grants[j]
		}
	}
}

// choiceBefore orders vouchers by expiry, then id.
func choiceBefore(a, b *market.Voucher) bool {
	if c := a.ExpiresAt.Compare(b.ExpiresAt); c != 0 {
		return c < 0
	}
	return a.ID < b.ID
}

// offerFree runs the checks of Applies that do not depend on the offer.
func offerFree(now time.Time, smeID, classID string, g *Grant) bool {
	switch {
	case g.Voucher.HolderID != "" && smeID != "" && g.Voucher.HolderID != smeID,
		g.Voucher.ProgramID != "" && g.Program.ID != "" && g.Voucher.ProgramID != g.Program.ID,
		!g.Voucher.ExpiresAt.After(now) || !now.Before(g.Program.ValidTo),
		now.Before(g.Program.ValidFrom),
		!inScope(g.Program.ResourceClasses, classID),
		!g.Available.IsPositive(), !g.CapLeft.IsPositive(), !g.BudgetLeft.IsPositive():
		return false
	}
	return true
}

func floorCents(d decimal.Decimal) int64 {
	v, _, _ := FloorScaled(d, market.AmountScale)
	return v
}

// discountCents is min(floor(rateBP × gross / 10⁴), capCents, gross), for
// 0 ≤ gross and rateBP ≤ 10⁴.
func discountCents(rateBP, capCents, gross int64) int64 {
	if rateBP <= 0 || gross <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(rateBP), uint64(gross))
	q := lo / 10_000 // a multiplication, where Div64 divides
	if hi != 0 {
		q, _ = bits.Div64(hi, lo, 10_000) // hi < 10⁴ since rateBP ≤ 10⁴, gross < 2⁶³
	}
	return min(int64(q), capCents, gross)
}

// Target is what Prepared needs to know about one offer.
type Target struct {
	Provider   *market.Account // ID (for scope) and related-party keys
	Offer      *market.Offer   // ListPrice read when ListTicks < 0
	Region     string          // the offer's region
	PriceTicks int64           // the offer's price in 0.0001 CNY
	// ListTicks is the offer's list price in ticks when that is exact, or -1
	// to read Offer.ListPrice.
	ListTicks int64
	// Ref is the reference price of the offer's market for the guard
	// (see NewReference); nil, or a zero reference, means the list price.
	Ref *Reference
	// ProviderSig is KeysSig(Provider.RelatedPartyKeys), or 0 for not
	// given; with it, the provider's keys are read only when the
	// signatures meet.
	ProviderSig uint64
}

// sigKnown marks a signature as computed: KeysSig sets it, so that a
// provider without keys is told from a signature not given.
const sigKnown = 1 << 63

// KeysSig hashes related-party keys into a set of 63 bits (and sigKnown):
// accounts that share a key have signatures that share a bit besides
// sigKnown.
func KeysSig(keys []string) uint64 {
	sig := uint64(sigKnown)
	for _, k := range keys {
		h := uint64(14695981039346656037) // FNV-1a
		for i := 0; i < len(k); i++ {
			h = (h ^ uint64(k[i])) * 1099511628211
		}
		sig |= 1 << (h % 63)
	}
	return sig
}

// SetSMESig gives p the SME's KeysSig, taken once by the request's
// builder, after a Prepare or PrepareTerms (which clear it): p then need
// not hash the SME's keys when it first meets a provider with keys.
func (p *Prepared) SetSMESig(sig uint64) { p.smeSig = sig }

// related reports whether the SME and the target's provider share a
// related-party key.
func (p *Prepared) related(t *Target) bool {
	if t.ProviderSig != 0 && p.smeSig == 0 {
		p.smeSig = KeysSig(p.smeKeys)
	}
	if t.ProviderSig != 0 && t.ProviderSig&p.smeSig&^sigKnown == 0 {
		return false
	}
	for _, k := range p.smeKeys {
		for _, l := range t.Provider.RelatedPartyKeys {
			if k == l {
				return true
			}
		}
	}
	return false
}

// inProviders reports whether scope takes the target's provider (an
// empty scope takes all; the provider's id is read only otherwise).
func (t *Target) inProviders(scope []string) bool {
	return len(scope) == 0 || inScope(scope, t.providerID())
}

func (t *Target) providerID() string {
	if t.Provider.ID != "" || t.Offer == nil {
		return t.Provider.ID
	}
	return t.Offer.ProviderID
}

// Choose gives what Rules.Choose gives for the target offer with gross in
// cents: the index in the Prepare grants of the chosen grant and its
// discount in cents, or -1, 0 when none pays.
func (p *Prepared) Choose(t *Target, gross int64) (index int, discount int64) {
	if len(p.grants) == 0 || gross <= 0 {
		return -1, 0
	}
	checked := false
	for i := range p.grants {
		c := &p.grants[i]
		if !inScope(c.Regions, t.Region) || !t.inProviders(c.Providers) {
			continue
		}
		if !checked {
			// Related party and the guard do not depend on the grant.
			if p.related(t) || p.aboveGuard(t) {
				return -1, 0
			}
			checked = true
		}
		if d := discountCents(c.RateBP, c.CapCents, gross); d > 0 {
			return c.Index, d
		}
	}
	return -1, 0
}

// ChooseIn is Choose when the caller knows which grants' scopes take the
// target: bit i of in is set exactly when the region and provider scopes of
// Grants()[i] take it (so at most the first 64 grants). It reads no scope
// list; the related-party and guard checks are Choose's.
func (p *Prepared) ChooseIn(t *Target, gross int64, in uint64) (index int, discount int64) {
	if in == 0 || gross <= 0 {
		return -1, 0
	}
	if p.related(t) || p.aboveGuard(t) {
		return -1, 0
	}
	for ; in != 0; in &= in - 1 {
		i := bits.TrailingZeros64(in)
		if i >= len(p.grants) {
			break
		}
		c := &p.grants[i]
		if d := discountCents(c.RateBP, c.CapCents, gross); d > 0 {
			return c.Index, d
		}
	}
	return -1, 0
}

// Applicable reports whether c applies to the target (scope, related party,
// guard), whatever discount it would pay.
func (p *Prepared) Applicable(c *Compiled, t *Target) bool {
	return inScope(c.Regions, t.Region) && t.inProviders(c.Providers) &&
		!p.related(t) && !p.aboveGuard(t)
}

// Reference is a market's reference price made ready for the guard once,
// for all the offers of the market that a decision prices: its
// coefficient and exponent when the coefficient fits 64 bits, else the
// decimal.
type Reference struct {
	d decimal.Decimal
	c uint64 // the coefficient; 0 when d is not positive or c and e do not hold it
	e int32
}

// NewReference prepares ref for the guard; a zero or negative ref means
// none (the offers' list prices are then the reference).
func NewReference(ref decimal.Decimal) Reference {
	r := Reference{d: ref}
	if ref.IsPositive() && ref.NumDigits() <= 18 {
		r.c, r.e = uint64(ref.CoefficientInt64()), ref.Exponent()
	}
	return r
}

// Decimal returns the reference as given to NewReference.
func (r *Reference) Decimal() decimal.Decimal { return r.d }

// aboveGuard reports, exactly, whether the price is above ref × GuardRatio
// (ref zero: the list price; both zero: never).
func (p *Prepared) aboveGuard(t *Target) bool {
	if r := t.Ref; r != nil {
		if r.c != 0 { // aboveRef's first case, here for the common path
			return p.above(t.PriceTicks, r.c, r.e)
		}
		if r.d.IsPositive() {
			return p.aboveRef(t.PriceTicks, r)
		}
	}
	switch {
	case t.ListTicks == 0:
		return false
	case t.ListTicks > 0:
		return p.above(t.PriceTicks, uint64(t.ListTicks), -market.PriceScale)
	case t.Offer.ListPrice.IsPositive():
		r := NewReference(t.Offer.ListPrice)
		return p.aboveRef(t.PriceTicks, &r)
	}
	return false
}

// aboveRef reports whether priceTicks is above r × GuardRatio; r must be
// positive.
func (p *Prepared) aboveRef(priceTicks int64, r *Reference) bool {
	if r.c != 0 {
		return p.above(priceTicks, r.c, r.e)
	}
	return market.TicksPrice(priceTicks).GreaterThan(r.d.Mul(p.guard))
}

// above reports whether priceTicks > refC × 10^refE × G (refC > 0):
// price > ref × G ⇔ ticks > floor(ref × G × 10⁴), ticks being whole.
func (p *Prepared) above(priceTicks int64, refC uint64, refE int32) bool {
	if p.guardC == 0 {
		return market.TicksPrice(priceTicks).GreaterThan(decimal.New(int64(refC), refE).Mul(p.guard))
	}
	hi, lo := bits.Mul64(refC, p.guardC)
	e := int(refE) + int(p.guardE) + market.PriceScale
	if e < 0 && e >= -19 {
		// With x = refC × guardC and d = 10^-e: ticks > floor(x / d) ⇔
		// ticks × d > x, ticks being whole; no division.
		th, tl := bits.Mul64(uint64(priceTicks), pow10u[-e])
		return th > hi || th == hi && tl > lo
	}
	for ; e > 0; e-- {
		if hi != 0 {
			return false // ≥ 2⁶⁴ ticks: no price is above
		}
		hi, lo = bits.Mul64(lo, 10)
	}
	for e < 0 {
		step := min(-e, 19)
		dv := pow10u[step]
		ql, _ := bits.Div64(hi%dv, lo, dv)
		hi, lo = hi/dv, ql
		e += step
	}
	return hi == 0 && uint64(priceTicks) > lo
}

var pow10u = [20]uint64{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19}

var pow10 = [19]int64{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18}

// FloorScaled returns floor(d × 10^scale) clamped to the int64 range; exact
// is false when digits below 10^-scale were dropped, clamped is true when the
// value did not fit. It does not allocate when d's coefficient has at most
// 18 digits.
func FloorScaled(d decimal.Decimal, scale int32) (v int64, exact, clamped bool) {
	if d.NumDigits() > 18 {
		return floorScaledSlow(d, scale)
	}
	c := d.CoefficientInt64()
	e := int64(d.Exponent()) + int64(scale)
	switch {
	case c == 0:
		return 0, true, false
	case e >= 0:
		if e > 18 {
			return clampSign(c)
		}
		p := pow10[e]
		if c > math.MaxInt64/p || c < math.MinInt64/p {
			return clampSign(c)
		}
		return c * p, true, false
	case -e > 18:
		// 0 < |c| < 10¹⁸ ≤ 10^-e: the result is 0 or -1.
		if c > 0 {
			return 0, false, false
		}
		return -1, false, false
	default:
		p := pow10[-e]
		q, r := c/p, c%p
		if r < 0 {
			q--
		}
		return q, r == 0, false
	}
}

func clampSign(sign int64) (int64, bool, bool) {
	if sign < 0 {
		return math.MinInt64, false, true
	}
	return math.MaxInt64, false, true
}

func floorScaledSlow(d decimal.Decimal, scale int32) (int64, bool, bool) {
	s := d.Shift(scale)
	f := s.Floor()
	if f.GreaterThan(decimal.NewFromInt(math.MaxInt64)) || f.LessThan(decimal.NewFromInt(math.MinInt64)) {
		return clampSign(int64(f.Sign()))
	}
	return f.IntPart(), f.Equal(s), false
}
