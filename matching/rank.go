package matching

import (
	"slices"
	"strings"
	"time"

	"computebroker/market"
	"computebroker/voucher"

	"github.com/shopspring/decimal"
)

// Candidate is an offer with its provider, as the book holds them.
type Candidate struct {
	Offer    market.Offer
	Provider market.Account
}

// Request is one job of one SME to match.
type Request struct {
	Job    market.Job
	SME    market.Account
	Class  market.ResourceClass // the job's class (Domestic decides the domestic rate)
	Grants []voucher.Grant      // ignored unless Job.UseVouchers
	// Terms, when the request's builder made them, are
	// voucher.TermsOf(Grants) of these very grants: Decide then compiles
	// the grants from integers. Nil: from the grants' decimals.
	Terms []voucher.Terms
	Now   time.Time
	Rules voucher.Rules
	// Reference gives a market's reference price for the voucher guard,
	// asked once per decision and market whose offers are priced with a
	// voucher; a zero answer means each offer's list price. Nil: a decision
	// over snapshots takes the reference their books hold (SetReference),
	// and Rank, which has no books, the list prices.
	Reference func(market.MarketKey) decimal.Decimal
	// Set by Compile: the job's max price in ticks (-1: no limit), the
	// SME's related-party key signature (voucher.KeysSig) and the names
	// resolved as numbers.
	compiled bool
	maxTicks int64
	smeSig   uint64
	num      numbered // and its markets by number
}

// Compile gives r the integer forms that Decide otherwise takes from its
// decimals and strings at every decision: the grants' Terms (when the job
// uses vouchers and r lacks them), the job's max price in ticks, the
// SME's related-party key signature and, when every engine's markets
// number them, its class, its regions and its grants' region scopes as
// numbers (Engine.Decide then finds the markets without a string). A request's builder calls it once r
// is complete; r's job, SME and grants must not change after. The broker
// compiles each request it builds: a resting job, decided again at each
// book change that may fill it, converts nothing again, and a new job's
// max price is read as ticks instead of through its decimal's big.Int.
func (r *Request) Compile() {
	if r.Job.UseVouchers && len(r.Grants) > 0 && len(r.Terms) != len(r.Grants) {
		r.Terms = voucher.TermsOf(r.Grants)
	}
	r.maxTicks = -1
	if r.Job.MaxPrice.IsPositive() {
		if t, _, clamped := voucher.FloorScaled(r.Job.MaxPrice, market.PriceScale); !clamped {
			r.maxTicks = t
		}
	}
	r.smeSig = voucher.KeysSig(r.SME.RelatedPartyKeys)
	r.resolve()
	r.compiled = true
}

// Match is an eligible offer priced for the job.
type Match struct {
	Offer    market.Offer
	Provider market.Account
	// UnitPrice is the offer's price per unit-hour; Gross = round(UnitPrice ×
	// units × hours, 2); Discount is the voucher's part; Net = Gross − Discount.
	UnitPrice, Gross, Discount, Net decimal.Decimal
	// VoucherID and ProgramID name the voucher used; empty when none.
	VoucherID, ProgramID string
}

// Result is the outcome of matching one job.
type Result struct {
	Matches    []Match        // eligible, best first
	Rejected   map[string]int // reason → count of offers rejected for it
	Considered int            // offers looked at
}

// Rank filters cands with the feasibility checkers and ranks the eligible ones
// by net (ties: lower gross unit price, earlier Offer.PriceAt, then offer id).
// limit ≤ 0 means all. It checks and prices every candidate: it is the
// reference the Engine is tested against.
func Rank(req Request, cands []Candidate, limit int) Result {
	q := newQuery(&req)
	var counts reasonCounts
	var out []Match
	for i := range cands {
		sl := candidateSlot(cands[i])
		if r := defaultChain.check(&q, &sl); r != ReasonNone {
			counts[r]++
			continue
		}
		out = append(out, priceDecimal(&req, &cands[i]))
	}
	slices.SortFunc(out, compareMatch)
	if limit > 0 && len(out) > limit {
		out = out[:limit:limit]
	}
	return Result{Matches: out, Rejected: counts.toMap(), Considered: len(cands)}
}

// priceDecimal prices an eligible candidate with exact decimals and the
// voucher rules.
func priceDecimal(req *Request, c *Candidate) Match {
	gross := market.Gross(c.Offer.Price, req.Job.Units, req.Job.Hours)
	m := Match{Offer: c.Offer, Provider: c.Provider, UnitPrice: c.Offer.Price, Gross: gross, Net: gross}
	if req.Job.UseVouchers && len(req.Grants) > 0 {
		var ref decimal.Decimal
		if req.Reference != nil {
			ref = req.Reference(c.Offer.Market())
		}
		if ch, ok := req.Rules.Choose(req.Now, req.SME, c.Provider, c.Offer, req.Class, ref, gross, req.Grants); ok {
			m.Discount = ch.Discount
			m.Net = gross.Sub(ch.Discount)
			m.VoucherID, m.ProgramID = ch.VoucherID, ch.ProgramID
		}
	}
	return m
}

// compareMatch is the ranking order: net, then unit price, then price time,
// then offer id.
func compareMatch(a, b Match) int {
	if c := a.Net.Cmp(b.Net); c != 0 {
		return c
	}
	if c := a.UnitPrice.Cmp(b.UnitPrice); c != 0 {
		return c
	}
	if c := a.Offer.PriceAt.Compare(b.Offer.PriceAt); c != 0 {
		return c
	}
	return strings.Compare(a.Offer.ID, b.Offer.ID)
}
