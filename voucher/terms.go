package voucher

import (
	"math"
	"slices"
	"strings"
	"time"

	"computebroker/market"
)

// Terms is a Grant in integers for Prepare's hot path. TermsOf makes them
// once when a request's grants are built (the ledger's figures are
// integers already); Prepare then reads one compact array instead of a
// voucher, a programme and a dozen decimals per grant spread over memory.
// Prepare gives the same result with or without them
// (TestPreparedChooseEqualsChoose, TestPrepareTermsTimes).
//
// A Terms is one cache line: what Prepare checks and compiles of a grant
// that is not scoped to classes, regions or providers, with the validity
// window in nanoseconds; the rest (scope lists, exact times, rates out of
// the int16 range) is behind cold, read only when a flag says so.
type Terms struct {
	holderID string
	// from is validFrom and until min(expiresAt, validTo) in Unix
	// nanoseconds, when termsWall is set: the grant is valid at now when
	// from ≤ now < until.
	from, until int64
	capCents    int64    // min(floor(per-order cap when set), floor(available), floor(capLeft), floor(budgetLeft))
	rateBP      [4]int16 // the applicable rate in 0.0001 for k = domestic | startup<<1, unless bit k of rateCold
	cold        *termsCold
	rank        int32 // position in choice order (expiry, then voucher id) among the terms made together
	// Bit k of rateOK is set when rate k is exact in 0.0001 (else Prepare
	// refuses, as on the decimal path); bit k of rateCold when it is
	// cold.rateBP[k] (outside the int16 range).
	rateOK, rateCold uint8
	flags            uint8
}

// Terms flags.
const (
	termsUsable  uint8 = 1 << iota // funded, and the voucher's programme is the programme's
	termsWall                      // from and until hold the window (no monotonic reading, in range)
	termsClasses                   // scoped to classes: see cold.classes
	termsScoped                    // scoped to regions or providers: see cold
)

// termsCold is the part of a Terms read only for scoped grants, exact
// times and large rates. The scope lists come first, and up to
// len(inline) of their ids are copied into it, the first in the same
// cache line: a decision reads a scoped grant's lists and their first ids
// with one miss fewer than through the programme's own arrays. 256 bytes:
// a size class whose objects start on a cache line.
type termsCold struct {
	providers, regions            []string
	inline                        [4]string // backing for short scope lists
	classes                       []string
	expiresAt, validFrom, validTo time.Time
	rateBP                        [4]int64
	_                             [16]byte
}

// keep returns list, copied into c.inline after its first n entries when
// it fits there; n is how many are taken then.
func (c *termsCold) keep(list []string, n *int) []string {
	if len(list) == 0 || *n+len(list) > len(c.inline) {
		return list
	}
	in := c.inline[*n : *n+len(list) : *n+len(list)]
	copy(in, list)
	*n += len(list)
	return in
}

// wallNanos returns t in Unix nanoseconds when t has no monotonic reading
// and that many nanoseconds fit an int64: times then compare as their
// nanoseconds do.
func wallNanos(t time.Time) (int64, bool) {
	const lim = math.MaxInt64/1_000_000_000 - 1
	if t != t.Round(0) {
		return 0, false // a monotonic reading: Before and After may use it
	}
	if s := t.Unix(); s < -lim || s > lim {
		return 0, false
	}
	return t.UnixNano(), true
}

// TermsOf returns the integer terms of grants, in the same order. The
// grants must not change afterwards.
func TermsOf(grants []Grant) []Terms {
	out := make([]Terms, len(grants))
	for i := range grants {
		g := &grants[i]
		t := &out[i]
		c := &termsCold{expiresAt: g.Voucher.ExpiresAt, validFrom: g.Program.ValidFrom, validTo: g.Program.ValidTo,
			classes: g.Program.ResourceClasses}
		n := 0
		c.providers = c.keep(g.Program.Providers, &n)
		c.regions = c.keep(g.Program.Regions, &n)
		*t = Terms{holderID: g.Voucher.HolderID, cold: c}
		if g.Available.IsPositive() && g.CapLeft.IsPositive() && g.BudgetLeft.IsPositive() &&
			!(g.Voucher.ProgramID != "" && g.Program.ID != "" && g.Voucher.ProgramID != g.Program.ID) {
			t.flags |= termsUsable
		}
		from, ok1 := wallNanos(c.validFrom)
		exp, ok2 := wallNanos(c.expiresAt)
		to, ok3 := wallNanos(c.validTo)
		if ok1 && ok2 && ok3 {
			t.flags |= termsWall
			t.from, t.until = from, min(exp, to)
		}
		if len(c.classes) > 0 {
			t.flags |= termsClasses
		}
		if len(c.regions) > 0 || len(c.providers) > 0 {
			t.flags |= termsScoped
		}
		for k := range t.rateBP {
			bp, exact, clamped := FloorScaled(rate(&g.Program, k&1 != 0, k&2 != 0), 4)
			if exact || clamped {
				t.rateOK |= 1 << k
			}
			bp = min(max(bp, math.MinInt64/2), 10_000)
			c.rateBP[k] = bp
			if bp >= math.MinInt16 {
				t.rateBP[k] = int16(bp)
			} else {
				t.rateCold |= 1 << k
			}
		}
		t.capCents = min(floorCents(g.Available), floorCents(g.CapLeft), floorCents(g.BudgetLeft))
		if g.Program.PerOrderCap.IsPositive() {
			t.capCents = min(t.capCents, floorCents(g.Program.PerOrderCap))
		}
	}
	// Rank the terms in choice order once, so that Prepare orders the
	// grants it keeps without reading their expiry or voucher id.
	idx := make([]int, len(grants))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		if c := grants[a].Voucher.ExpiresAt.Compare(grants[b].Voucher.ExpiresAt); c != 0 {
			return c
		}
		return strings.Compare(grants[a].Voucher.ID, grants[b].Voucher.ID)
	})
	for r, i := range idx {
		out[i].rank = int32(r)
	}
	return out
}

// free is offerFree on the terms; nowNs is now in Unix nanoseconds, valid
// when nowWall is set (see wallNanos).
func (t *Terms) free(now time.Time, nowNs int64, nowWall bool, smeID, classID string) bool {
	if t.flags&termsUsable == 0 || t.holderID != "" && smeID != "" && t.holderID != smeID {
		return false
	}
	if t.flags&termsWall != 0 && nowWall {
		if nowNs < t.from || nowNs >= t.until {
			return false
		}
	} else if c := t.cold; !c.expiresAt.After(now) || !now.Before(c.validTo) || now.Before(c.validFrom) {
		return false
	}
	return t.flags&termsClasses == 0 || inScope(t.cold.classes, classID)
}

// PrepareTerms is Prepare with the grants' terms from TermsOf (ignored
// unless there is one per grant). It reads of sme and class only what it
// needs.
func (r Rules) PrepareTerms(p *Prepared, now time.Time, sme *market.Account, class *market.ResourceClass, grants []Grant, terms []Terms) (ok bool) {
	return r.prepareTerms(p, now, sme, class, grants, terms, true)
}

// PrepareTermsUnscoped is PrepareTerms for a caller that applies the
// grants' region and provider scopes itself (from masks it made of
// RegionScope and ProviderScope, through ChooseIn): the prepared grants
// carry no scope lists, so that the terms' cold parts are not read.
// Choose and Applicable would then take every grant as unscoped. Without
// one term per grant it is Prepare, with the scopes.
func (r Rules) PrepareTermsUnscoped(p *Prepared, now time.Time, sme *market.Account, class *market.ResourceClass, grants []Grant, terms []Terms) (ok bool) {
	return r.prepareTerms(p, now, sme, class, grants, terms, false)
}

func (r Rules) prepareTerms(p *Prepared, now time.Time, sme *market.Account, class *market.ResourceClass, grants []Grant, terms []Terms, scopes bool) (ok bool) {
	if len(terms) != len(grants) {
		return r.Prepare(p, now, *sme, *class, grants)
	}
	p.begin(r, sme.RelatedPartyKeys)
	k := 0
	if class.Domestic {
		k |= 1
	}
	if sme.Startup {
		k |= 2
	}
	// A monotonic reading of now is not used against times that have none.
	nowNs, nowWall := wallNanos(now.Round(0))
	for i := range terms {
		t := &terms[i]
		if !t.free(now, nowNs, nowWall, sme.ID, class.ID) {
			continue
		}
		if t.rateOK&(1<<k) == 0 {
			return false
		}
		c := Compiled{Index: i, RateBP: int64(t.rateBP[k]), CapCents: t.capCents}
		if t.rateCold&(1<<k) != 0 {
			c.RateBP = t.cold.rateBP[k]
		}
		if scopes && t.flags&termsScoped != 0 {
			c.Regions, c.Providers = t.cold.regions, t.cold.providers
		}
		p.grants = append(p.grants, c)
	}
	p.orderByRank(terms)
	return true
}

// RegionScope returns the regions the grant of t is scoped to, none when
// it is not scoped to regions.
func (t *Terms) RegionScope() []string {
	if t.flags&termsScoped == 0 {
		return nil
	}
	return t.cold.regions
}

// ProviderScope returns the providers the grant of t is scoped to, none
// when it is not scoped to providers.
func (t *Terms) ProviderScope() []string {
	if t.flags&termsScoped == 0 {
		return nil
	}
	return t.cold.providers
}

// Touch reads each of terms once and returns a value of no meaning. A
// caller about to compile terms that may not be in cache calls it early,
// next to its other independent loads, so that their cache misses overlap
// instead of each stalling in turn. With regionNames or providerNames
// false it leaves out the names in the region or provider scopes, for a
// caller that has them as numbers.
func Touch(terms []Terms, regionNames, providerNames bool) (x uint64) {
	for i := range terms {
		t := &terms[i]
		x += uint64(t.rank)
		if t.flags&termsScoped != 0 && (regionNames || providerNames) {
			// The scope lists, which the matching engine reads once per
			// decision (and looks the providers up).
			c := t.cold
			if p := c.providers; providerNames && len(p) > 0 && len(p[0]) > 0 {
				x += uint64(p[0][0])
			}
			if r := c.regions; regionNames && len(r) > 0 && len(r[0]) > 0 {
				x += uint64(r[0][0])
			}
		}
	}
	return x
}
