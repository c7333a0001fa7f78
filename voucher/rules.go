package voucher

import (
	"time"

	"computebroker/market"

	"github.com/shopspring/decimal"
)

// Grant is one voucher of an SME with the state needed to price it.
type Grant struct {
	Voucher    market.Voucher
	Program    market.Program
	Available  decimal.Decimal // voucher balance minus holds in flight
	CapLeft    decimal.Decimal // the SME's annual cap left in this programme this year
	BudgetLeft decimal.Decimal // the programme's budget left
}

// Choice is the voucher chosen for one order and the discount it pays.
type Choice struct {
	VoucherID, ProgramID string
	Rate, Discount       decimal.Decimal
}

// Rules are the tunable ratios of the subsidy-capture guard. A zero ratio
// means its default, so the zero Rules behave like DefaultRules.
type Rules struct {
	// GuardRatio: no voucher applies where the offer's price is more than
	// GuardRatio × the reference price (1.25: more than 25% above).
	GuardRatio decimal.Decimal
	// AlertRatio: the regulator is alerted where a price is more than
	// AlertRatio × the reference price (1.10: more than 10% above).
	AlertRatio decimal.Decimal
}

// Default guard and alert ratios.
var (
	DefaultGuardRatio = decimal.RequireFromString("1.25")
	DefaultAlertRatio = decimal.RequireFromString("1.10")
)

// DefaultRules returns GuardRatio 1.25 and AlertRatio 1.10.
func DefaultRules() Rules {
	return Rules{GuardRatio: DefaultGuardRatio, AlertRatio: DefaultAlertRatio}
}

func (r Rules) guard() decimal.Decimal {
	if r.GuardRatio.IsPositive() {
		return r.GuardRatio
	}
	return DefaultGuardRatio
}

func (r Rules) alert() decimal.Decimal {
	if r.AlertRatio.IsPositive() {
		return r.AlertRatio
	}
	return DefaultAlertRatio
}

// Reasons Applies gives when a voucher does not apply.
const (
	ReasonNotHolder           = "not_holder"       // the voucher is another SME's (vouchers are not transferable)
	ReasonProgramMismatch     = "program_mismatch" // Grant.Program is not the voucher's programme
	ReasonExpired             = "expired"
	ReasonNotYetValid         = "not_yet_valid"
	ReasonOutOfScopeClass     = "out_of_scope_class"
	ReasonOutOfScopeRegion    = "out_of_scope_region"
	ReasonOutOfScopeProvider  = "out_of_scope_provider"
	ReasonRelatedParty        = "related_party"
	ReasonPriceAboveReference = "price_above_reference"
	ReasonNoBalance           = "no_balance"
	ReasonCapReached          = "cap_reached"
	ReasonBudgetExhausted     = "budget_exhausted"
)

// Applies says whether g can pay part of buying offer (from provider, in
// class) for sme at now. It returns "" when it applies, else the first failing
// reason, checked in this order: not_holder, program_mismatch (only when the
// ids are set and differ), expired, not_yet_valid, out_of_scope_class,
// out_of_scope_region, out_of_scope_provider, related_party,
// price_above_reference, no_balance, cap_reached, budget_exhausted.
//
// The voucher is valid when the programme window [ValidFrom, ValidTo)
// contains now and the voucher's ExpiresAt is after now ("expired" when
// either has passed, "not_yet_valid" before ValidFrom). Empty scope lists
// mean all. ref is the market reference price of the guard; zero means
// offer.ListPrice, and when that is zero too there is no guard.
func (r Rules) Applies(now time.Time, sme, provider market.Account, offer market.Offer, class market.ResourceClass, ref decimal.Decimal, g Grant) (reason string) {
	if g.Voucher.HolderID != "" && sme.ID != "" && g.Voucher.HolderID != sme.ID {
		return ReasonNotHolder
	}
	if g.Voucher.ProgramID != "" && g.Program.ID != "" && g.Voucher.ProgramID != g.Program.ID {
		return ReasonProgramMismatch
	}
	if !g.Voucher.ExpiresAt.After(now) || !now.Before(g.Program.ValidTo) {
		return ReasonExpired
	}
	if now.Before(g.Program.ValidFrom) {
		return ReasonNotYetValid
	}
	if !inScope(g.Program.ResourceClasses, classID(class, offer)) {
		return ReasonOutOfScopeClass
	}
	if !inScope(g.Program.Regions, offer.Region) {
		return ReasonOutOfScopeRegion
	}
	if !inScope(g.Program.Providers, providerID(provider, offer)) {
		return ReasonOutOfScopeProvider
	}
	if sme.RelatedTo(provider) {
		return ReasonRelatedParty
	}
	if !ref.IsPositive() {
		ref = offer.ListPrice
	}
	if ref.IsPositive() && offer.Price.GreaterThan(ref.Mul(r.guard())) {
		return ReasonPriceAboveReference
	}
	if !g.Available.IsPositive() {
		return ReasonNoBalance
	}
	if !g.CapLeft.IsPositive() {
		return ReasonCapReached
	}
	if !g.BudgetLeft.IsPositive() {
		return ReasonBudgetExhausted
	}
	return ""
}

func classID(class market.ResourceClass, offer market.Offer) string {
	if class.ID != "" {
		return class.ID
	}
	return offer.ResourceClass
}

func providerID(provider market.Account, offer market.Offer) string {
	if provider.ID != "" {
		return provider.ID
	}
	return offer.ProviderID
}

func inScope(scope []string, id string) bool {
	if len(scope) == 0 {
		return true
	}
	for _, s := range scope {
		if s == id {
			return true
		}
	}
	return false
}

// Rate is the programme rate for this class and SME: the highest of rate,
// domestic_rate (domestic classes) and startup_rate (startup SMEs).
func Rate(p market.Program, class market.ResourceClass, sme market.Account) decimal.Decimal {
	return rate(&p, class.Domestic, sme.Startup)
}

func rate(p *market.Program, domestic, startup bool) decimal.Decimal {
	r := p.Rate
	if domestic && p.DomesticRate.GreaterThan(r) {
		r = p.DomesticRate
	}
	if startup && p.StartupRate.GreaterThan(r) {
		r = p.StartupRate
	}
	return r
}

// Discount is floor(min(rate × gross, per_order_cap (when set), available,
// capLeft, budgetLeft), 2), never negative. It is also never more than gross,
// which only matters for a rate above 1 (programmes allow at most 0.60).
func Discount(rate, gross decimal.Decimal, g Grant) decimal.Decimal {
	d := rate.Mul(gross)
	if g.Program.PerOrderCap.IsPositive() {
		d = decimal.Min(d, g.Program.PerOrderCap)
	}
	d = decimal.Min(d, g.Available, g.CapLeft, g.BudgetLeft, gross)
	if !d.IsPositive() {
		return decimal.Zero
	}
	return market.FloorCents(d)
}

// Choose picks, among the grants that apply (see Applies) and pay a positive
// discount on gross, the one whose voucher expires first (ties: the lower
// voucher id), and returns it with its rate and discount. ok is false when no
// grant pays anything.
func (r Rules) Choose(now time.Time, sme, provider market.Account, offer market.Offer, class market.ResourceClass, ref, gross decimal.Decimal, grants []Grant) (Choice, bool) {
	best := -1
	var c Choice
	for i := range grants {
		g := &grants[i]
		if best >= 0 && !expiresBefore(g.Voucher, grants[best].Voucher) {
			continue
		}
		if r.Applies(now, sme, provider, offer, class, ref, *g) != "" {
			continue
		}
		rate := Rate(g.Program, class, sme)
		d := Discount(rate, gross, *g)
		if !d.IsPositive() {
			continue
		}
		best = i
		c = Choice{VoucherID: g.Voucher.ID, ProgramID: g.Program.ID, Rate: rate, Discount: d}
	}
	return c, best >= 0
}

// expiresBefore orders vouchers by expiry, then id.
func expiresBefore(a, b market.Voucher) bool {
	if !a.ExpiresAt.Equal(b.ExpiresAt) {
		return a.ExpiresAt.Before(b.ExpiresAt)
	}
	return a.ID < b.ID
}

// PriceAlert reports whether price is more than AlertRatio above ref (for the
// regulator's alerts). A ref that is not positive never alerts.
func (r Rules) PriceAlert(price, ref decimal.Decimal) bool {
	return ref.IsPositive() && price.GreaterThan(ref.Mul(r.alert()))
}
