package voucher

import (
	"math"
	"time"

	"computebroker/market"
)

// Terms is a Grant in integers for Prepare's hot path. TermsOf makes them
// once when a request's grants are built (the ledger's figures are
// integers already); Prepare then reads one compact array instead of a
// voucher, a programme and a dozen decimals per grant spread over memory.
// Prepare gives the same result with or without them
// (TestPreparedChooseEqualsChoose).
type Terms struct {
	holderID, voucherProgramID, programID, voucherID string
	expiresAt, validFrom, validTo                    time.Time
	classes, regions, providers                      []string
	// rateBP[k] is the applicable rate in 0.0001 for k = domestic | startup<<1,
	// limited to 10⁴; bit k of rateOK is set when that rate is exact in
	// 0.0001 (else Prepare refuses, as on the decimal path).
	rateBP   [4]int64
	capCents int64 // min(floor(per-order cap when set), floor(available), floor(capLeft), floor(budgetLeft))
	rateOK   uint8
	funded   bool // available, capLeft and budgetLeft all positive
}

// TermsOf returns the integer terms of grants, in the same order. The
// grants must not change afterwards.
func TermsOf(grants []Grant) []Terms {
	out := make([]Terms, len(grants))
	for i := range grants {
		g := &grants[i]
		t := &out[i]
		*t = Terms{
			holderID: g.Voucher.HolderID, voucherProgramID: g.Voucher.ProgramID, programID: g.Program.ID, voucherID: g.Voucher.ID,
			expiresAt: g.Voucher.ExpiresAt, validFrom: g.Program.ValidFrom, validTo: g.Program.ValidTo,
			classes: g.Program.ResourceClasses, regions: g.Program.Regions, providers: g.Program.Providers,
			funded: g.Available.IsPositive() && g.CapLeft.IsPositive() && g.BudgetLeft.IsPositive(),
		}
		for k := range t.rateBP {
			bp, exact, clamped := FloorScaled(rate(&g.Program, k&1 != 0, k&2 != 0), 4)
			if exact || clamped {
				t.rateOK |= 1 << k
			}
			t.rateBP[k] = min(max(bp, math.MinInt64/2), 10_000)
		}
		t.capCents = min(floorCents(g.Available), floorCents(g.CapLeft), floorCents(g.BudgetLeft))
		if g.Program.PerOrderCap.IsPositive() {
			t.capCents = min(t.capCents, floorCents(g.Program.PerOrderCap))
		}
	}
	return out
}

// free is offerFree on the terms.
func (t *Terms) free(now time.Time, smeID, classID string) bool {
	switch {
	case t.holderID != "" && smeID != "" && t.holderID != smeID,
		t.voucherProgramID != "" && t.programID != "" && t.voucherProgramID != t.programID,
		!t.expiresAt.After(now) || !now.Before(t.validTo),
		now.Before(t.validFrom),
		!inScope(t.classes, classID),
		!t.funded:
		return false
	}
	return true
}

// PrepareTerms is Prepare with the grants' terms from TermsOf (ignored
// unless there is one per grant).
func (r Rules) PrepareTerms(p *Prepared, now time.Time, sme market.Account, class market.ResourceClass, grants []Grant, terms []Terms) (ok bool) {
	if len(terms) != len(grants) {
		return r.Prepare(p, now, sme, class, grants)
	}
	p.begin(r, sme, class)
	k := 0
	if class.Domestic {
		k |= 1
	}
	if sme.Startup {
		k |= 2
	}
	for i := range terms {
		t := &terms[i]
		if !t.free(now, sme.ID, class.ID) {
			continue
		}
		if t.rateOK&(1<<k) == 0 {
			return false
		}
		p.grants = append(p.grants, Compiled{
			Index: i, VoucherID: t.voucherID, ProgramID: t.programID, ExpiresAt: t.expiresAt,
			RateBP: t.rateBP[k], CapCents: t.capCents, Regions: t.regions, Providers: t.providers,
		})
	}
	p.order()
	return true
}
