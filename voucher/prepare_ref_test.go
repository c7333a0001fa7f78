package voucher

import (
	"math"
	"math/rand"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"computebroker/market"

	"github.com/shopspring/decimal"
)

// prepareRef is Prepare written plainly with the decimal rules' own checks:
// the reference TestPrepareEqualsRef holds Prepare to.
func prepareRef(r Rules, now time.Time, sme market.Account, class market.ResourceClass, grants []Grant) ([]Compiled, bool) {
	var out []Compiled
	for i := range grants {
		gr := &grants[i]
		if gr.Voucher.HolderID != "" && sme.ID != "" && gr.Voucher.HolderID != sme.ID ||
			gr.Voucher.ProgramID != "" && gr.Program.ID != "" && gr.Voucher.ProgramID != gr.Program.ID ||
			!gr.Voucher.ExpiresAt.After(now) || !now.Before(gr.Program.ValidTo) || now.Before(gr.Program.ValidFrom) ||
			!inScope(gr.Program.ResourceClasses, class.ID) ||
			!gr.Available.IsPositive() || !gr.CapLeft.IsPositive() || !gr.BudgetLeft.IsPositive() {
			continue
		}
		scaled := Rate(gr.Program, class, sme).Shift(4)
		f := scaled.Floor()
		var bp int64
		switch {
		case f.GreaterThan(decimal.NewFromInt(math.MaxInt64)):
			bp = 10_000
		case f.LessThan(decimal.NewFromInt(math.MinInt64)):
			bp = math.MinInt64 / 2
		case !f.Equal(scaled):
			return nil, false
		default:
			bp = min(max(f.IntPart(), math.MinInt64/2), 10_000)
		}
		c := decimal.Min(gr.Available, gr.CapLeft, gr.BudgetLeft)
		if gr.Program.PerOrderCap.IsPositive() {
			c = decimal.Min(c, gr.Program.PerOrderCap)
		}
		cf := c.Shift(2).Floor()
		var cc int64
		switch {
		case cf.GreaterThan(decimal.NewFromInt(math.MaxInt64)):
			cc = math.MaxInt64
		default:
			cc = cf.IntPart()
		}
		out = append(out, Compiled{Index: i, RateBP: bp, CapCents: cc, Regions: gr.Program.Regions, Providers: gr.Program.Providers})
	}
	slices.SortStableFunc(out, func(a, b Compiled) int {
		va, vb := &grants[a.Index].Voucher, &grants[b.Index].Voucher
		if c := va.ExpiresAt.Compare(vb.ExpiresAt); c != 0 {
			return c
		}
		return strings.Compare(va.ID, vb.ID)
	})
	return out, true
}

// TestPrepareEqualsRef: on random grants with amounts and rates of every
// shape (zero, sub-cent, negative, more digits than an int64 holds, rates
// with more than four places), Prepare compiles what prepareRef does.
func TestPrepareEqualsRef(t *testing.T) {
	rng := rand.New(rand.NewSource(5))
	pick := func(xs ...string) string { return xs[rng.Intn(len(xs))] }
	amount := func() decimal.Decimal {
		if rng.Intn(3) > 0 {
			return d(pick("0.001", "12.345", "5000", "1e30", "92233720368547758.08"))
		}
		return d(pick("0", "0.001", "0.01", "-0.001", "-5", "12.345", "5000", "1e30", "-1e30",
			"123456789012345678901.23", "0.00000000000000000000000001", "92233720368547758.07", "92233720368547758.08"))
	}
	rateOf := func() decimal.Decimal {
		return d(pick("0", "0.2", "0.30", "0.3333", "0.33333", "0.6", "1", "1.5", "-0.1", "1e30", "-1e30", "0.30000000000000000000001"))
	}
	var p Prepared
	refused, kept := 0, 0
	for n := 0; n < 20000; n++ {
		class := market.ResourceClass{ID: pick("gpu.h100-80g", "gpu.910b-64g"), Domestic: rng.Intn(2) == 0}
		s := sme()
		s.Startup = rng.Intn(2) == 0
		var grants []Grant
		for i, k := 0, rng.Intn(5); i < k; i++ {
			g := grant()
			g.Voucher.ID = pick("v1", "v2", "v3")
			g.Voucher.ExpiresAt = t0.Add(time.Duration(rng.Intn(3)-1) * time.Hour)
			if rng.Intn(8) == 0 {
				g.Voucher.HolderID = "sme2"
			}
			if rng.Intn(8) == 0 {
				g.Program.ID = "p2"
			}
			if rng.Intn(8) == 0 {
				g.Program.ValidFrom = t0.Add(time.Hour)
			}
			if rng.Intn(4) == 0 {
				g.Program.ResourceClasses = []string{pick("gpu.h100-80g", "gpu.910b-64g")}
			}
			g.Program.Rate, g.Program.DomesticRate, g.Program.StartupRate = rateOf(), rateOf(), rateOf()
			if rng.Intn(2) == 0 {
				g.Program.DomesticRate = decimal.Decimal{}
			}
			g.Program.PerOrderCap = amount()
			g.Available, g.CapLeft, g.BudgetLeft = amount(), amount(), amount()
			grants = append(grants, g)
		}
		want, wantOK := prepareRef(DefaultRules(), t0, s, class, grants)
		ok := DefaultRules().Prepare(&p, t0, s, class, grants)
		if ok != wantOK || ok && !reflect.DeepEqual(slices.Clip(p.Grants()), slices.Clip(want)) && !(len(want) == 0 && len(p.Grants()) == 0) {
			t.Fatalf("case %d: Prepare %v %+v, want %v %+v", n, ok, p.Grants(), wantOK, want)
		}
		if !ok {
			refused++
		} else {
			kept += len(want)
		}
	}
	if refused < 100 || kept < 3000 {
		t.Fatalf("cases not exercised: %d refused, %d kept", refused, kept)
	}
}
