package voucher

import (
	"fmt"
	"math/big"
	"math/rand"
	"reflect"
	"slices"
	"testing"
	"time"
	"unsafe"

	"computebroker/market"

	"github.com/shopspring/decimal"
)

// TestPreparedChooseEqualsChoose: the integer form gives the decimal form's
// choice and discount on random grants, offers and references.
func TestPreparedChooseEqualsChoose(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	pick := func(xs ...string) string { return xs[rng.Intn(len(xs))] }
	amount := func() decimal.Decimal {
		switch rng.Intn(5) {
		case 0:
			return decimal.Zero
		case 1:
			return decimal.New(int64(rng.Intn(3000)), -3)
		default:
			return decimal.New(int64(rng.Intn(10_000_000)), -2)
		}
	}
	var p, pt Prepared
	chosen := 0
	for n := 0; n < 20000; n++ {
		class := market.ResourceClass{ID: pick("gpu.h100-80g", "gpu.910b-64g"), Domestic: rng.Intn(2) == 0}
		s := sme()
		s.Startup = rng.Intn(3) == 0
		if rng.Intn(5) == 0 {
			s.RelatedPartyKeys = append(s.RelatedPartyKeys, "tax:P1")
		}
		prov := provider()
		if rng.Intn(3) == 0 {
			prov.ID = "prov2"
		}
		o := offer()
		o.ProviderID, o.ResourceClass, o.Region = prov.ID, class.ID, pick("cn-east", "cn-west")
		o.Price = decimal.New(int64(1+rng.Intn(400000)), -4)
		o.ListPrice = []decimal.Decimal{decimal.Zero, o.Price, o.Price.Mul(d("0.8")).Round(4), o.Price.Mul(d("0.8")).Round(4).Add(d("0.0001"))}[rng.Intn(4)]
		var grants []Grant
		for i, k := 0, rng.Intn(5); i < k; i++ {
			g := grant()
			g.Voucher.ID = fmt.Sprintf("v%d", rng.Intn(4))
			g.Voucher.ExpiresAt = t0.Add(time.Duration(rng.Intn(3)-1) * time.Hour)
			g.Program.Rate = d(pick("0.1", "0.2", "0.3", "0.3333", "0.6"))
			g.Program.DomesticRate = d(pick("0", "0.45"))
			g.Program.StartupRate = d(pick("0", "0.5"))
			g.Program.PerOrderCap = d(pick("0", "100", "0.05"))
			if rng.Intn(3) == 0 {
				g.Program.Regions = []string{pick("cn-east", "cn-west")}
			}
			if rng.Intn(3) == 0 {
				g.Program.Providers = []string{pick("prov1", "prov2")}
			}
			if rng.Intn(4) == 0 {
				g.Program.ResourceClasses = []string{pick("gpu.h100-80g", "gpu.910b-64g")}
			}
			g.Available, g.CapLeft, g.BudgetLeft = amount(), amount(), amount()
			grants = append(grants, g)
		}
		var ref decimal.Decimal
		var refp *Reference
		switch rng.Intn(6) {
		case 0, 1, 2:
			ref = o.Price.Div(d(pick("1.25", "1.2", "1.3", "3"))).Truncate(int32(rng.Intn(12)))
		case 3:
			// More digits than 64 bits hold: the guard compares decimals.
			ref = o.Price.Mul(d("0.8")).Add(d("0.0000000000000000003"))
		case 4:
			// A market without a reference yet: the list price.
			r := NewReference(decimal.Zero)
			refp = &r
		}
		if !ref.IsZero() {
			r := NewReference(ref)
			if !r.Decimal().Equal(ref) || (r.c != 0) != (ref.NumDigits() <= 18) {
				t.Fatalf("case %d: NewReference(%s) = %+v", n, ref, r)
			}
			refp = &r
		}
		rules := DefaultRules()
		if rng.Intn(4) == 0 {
			rules.GuardRatio = d(pick("1.2", "1.2345678901234567890123", "2"))
		}
		units, hours := int64(1+rng.Intn(64)), int64(1+rng.Intn(200))
		gross := market.Gross(o.Price, units, hours)
		want, ok := rules.Choose(t0, s, prov, o, class, ref, gross, grants)
		if !rules.Prepare(&p, t0, s, class, grants) {
			t.Fatal("Prepare refused representable grants")
		}
		// From the integer terms: the same compiled grants.
		terms := TermsOf(grants)
		if !rules.PrepareTerms(&pt, t0, &s, &class, grants, terms) || !reflect.DeepEqual(p.Grants(), pt.Grants()) {
			t.Fatalf("case %d: from terms %+v, from grants %+v", n, pt.Grants(), p.Grants())
		}
		// Without the scope lists: the same grants, their scopes left to
		// the caller, which reads them from the terms.
		var pu Prepared
		if !rules.PrepareTermsUnscoped(&pu, t0, &s, &class, grants, terms) || len(pu.Grants()) != len(p.Grants()) {
			t.Fatalf("case %d: unscoped %+v, from grants %+v", n, pu.Grants(), p.Grants())
		}
		for i, c := range pu.Grants() {
			w := p.Grants()[i]
			if c.Index != w.Index || c.RateBP != w.RateBP || c.CapCents != w.CapCents || c.Regions != nil || c.Providers != nil {
				t.Fatalf("case %d: unscoped grant %d %+v, want %+v without scopes", n, i, c, w)
			}
			if tm := &terms[c.Index]; !slices.Equal(tm.RegionScope(), w.Regions) || !slices.Equal(tm.ProviderScope(), w.Providers) {
				t.Fatalf("case %d: terms' scopes %v %v, grant's %v %v", n, tm.RegionScope(), tm.ProviderScope(), w.Regions, w.Providers)
			}
		}
		ticks, _ := market.PriceTicks(o.Price)
		list, exact := market.PriceTicks(o.ListPrice)
		if !exact || rng.Intn(2) == 0 {
			list = -1
		}
		tg := Target{Provider: &prov, Offer: &o, Region: o.Region, PriceTicks: ticks, ListTicks: list, Ref: refp}
		if rng.Intn(2) == 0 {
			tg.ProviderSig = KeysSig(prov.RelatedPartyKeys)
		}
		idx, disc := p.Choose(&tg, gross.Shift(2).IntPart())
		// With the grants in scope given as a mask: the same choice.
		var in uint64
		for i, c := range p.Grants() {
			if inScope(c.Regions, tg.Region) && tg.inProviders(c.Providers) {
				in |= 1 << i
			}
		}
		if idx2, disc2 := p.ChooseIn(&tg, gross.Shift(2).IntPart(), in); idx2 != idx || disc2 != disc {
			t.Fatalf("case %d: ChooseIn %d %d, Choose %d %d", n, idx2, disc2, idx, disc)
		}
		if (idx >= 0) != ok {
			t.Fatalf("case %d: prepared %d, decimal %v %+v", n, idx, ok, want)
		}
		if ok {
			chosen++
			if grants[idx].Voucher.ID != want.VoucherID || !decimal.New(disc, -2).Equal(want.Discount) {
				t.Fatalf("case %d: prepared %s %d, decimal %+v", n, grants[idx].Voucher.ID, disc, want)
			}
		}
	}
	if chosen < 1000 {
		t.Fatalf("only %d choices", chosen)
	}
}

func TestFloorScaled(t *testing.T) {
	tests := []struct {
		in             string
		scale          int32
		want           int64
		exact, clamped bool
	}{
		{"21.5", 4, 215000, true, false},
		{"0.00001", 4, 0, false, false},
		{"-0.00001", 4, -1, false, false},
		{"123.456", 2, 12345, false, false},
		{"-123.456", 2, -12346, false, false},
		{"1e30", 2, 1<<63 - 1, false, true},
		{"123456789012345678901234567890.5", 0, 1<<63 - 1, false, true},
		{"1.00000000000000000000001", 2, 100, false, false},
		{"0", 4, 0, true, false},
	}
	for _, tt := range tests {
		v, exact, clamped := FloorScaled(d(tt.in), tt.scale)
		if v != tt.want || exact != tt.exact || clamped != tt.clamped {
			t.Errorf("FloorScaled(%s, %d) = %d %v %v", tt.in, tt.scale, v, exact, clamped)
		}
	}
}

// TestKeysSig: accounts that share a key have meeting signatures; a
// signature is never 0 (0 means not given).
func TestKeysSig(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	apart := 0
	for n := 0; n < 5000; n++ {
		var a, b []string
		for i := rng.Intn(4); i > 0; i-- {
			a = append(a, fmt.Sprintf("tax:%d", rng.Intn(200)))
		}
		for i := rng.Intn(4); i > 0; i-- {
			b = append(b, fmt.Sprintf("tax:%d", rng.Intn(200)))
		}
		sa, sb := KeysSig(a), KeysSig(b)
		if sa == 0 || sb == 0 {
			t.Fatal("zero signature")
		}
		shared := (market.Account{RelatedPartyKeys: a}).RelatedTo(market.Account{RelatedPartyKeys: b})
		if shared && sa&sb&^sigKnown == 0 {
			t.Fatalf("%v and %v share a key, signatures %x %x do not meet", a, b, sa, sb)
		}
		if !shared && sa&sb&^sigKnown == 0 {
			apart++
		}
	}
	if apart < 1000 {
		t.Fatalf("signatures told only %d unrelated pairs apart", apart)
	}
}

// TestDiscountCents: min(floor(rate × gross / 10⁴), cap, gross) against big
// integers, with products past 64 bits too.
func TestDiscountCents(t *testing.T) {
	rng := rand.New(rand.NewSource(4))
	for n := 0; n < 200000; n++ {
		rate := rng.Int63n(10_001)
		gross := rng.Int63()
		if n%2 == 0 {
			gross = rng.Int63n(1 << 50)
		}
		capCents := rng.Int63()
		p := new(big.Int).Mul(big.NewInt(rate), big.NewInt(gross))
		want := min(p.Quo(p, big.NewInt(10_000)).Int64(), capCents, gross)
		if rate == 0 {
			want = 0
		}
		if got := discountCents(rate, capCents, gross); got != want {
			t.Fatalf("discountCents(%d, %d, %d) = %d, want %d", rate, capCents, gross, got, want)
		}
	}
}

// TestAbove: the integer guard comparison against decimals, at and around
// the threshold, for exponents on both sides of the no-division form.
func TestAbove(t *testing.T) {
	rng := rand.New(rand.NewSource(8))
	for _, g := range []string{"1.25", "1.2", "2", "1.1111111", "1.000000000000000001"} {
		var p Prepared
		r := Rules{GuardRatio: d(g)}
		r.Prepare(&p, t0, sme(), gpu, nil)
		for n := 0; n < 20000; n++ {
			refC := uint64(1 + rng.Int63n([]int64{100, 1e6, 1e12, 1e18}[rng.Intn(4)]))
			refE := int32(rng.Intn(16) - 13)
			ref := decimal.New(int64(refC), refE)
			limit := ref.Mul(r.guard()).Shift(4).Floor()
			var ticks int64
			if limit.LessThan(decimal.NewFromInt(1<<62)) && rng.Intn(4) > 0 {
				ticks = limit.IntPart() + rng.Int63n(3) - 1
			} else {
				ticks = rng.Int63n(1 << 40)
			}
			if ticks < 0 {
				continue
			}
			want := market.TicksPrice(ticks).GreaterThan(ref.Mul(r.guard()))
			if got := p.above(ticks, refC, refE); got != want {
				t.Fatalf("guard %s: above(%d, %d, %d) = %v, want %v", g, ticks, refC, refE, got, want)
			}
		}
	}
}

// TestPrepareTermsRefusesInexactRates: a rate with more than four decimal
// places makes Prepare refuse, from the grants or from their terms, and
// only where that rate applies (here: domestic classes).
func TestPrepareTermsRefusesInexactRates(t *testing.T) {
	g := grant()
	g.Program.DomesticRate = d("0.33333")
	grants := []Grant{g}
	var p Prepared
	rules := DefaultRules()
	domestic := market.ResourceClass{ID: "gpu.h100-80g", Domestic: true}
	plain := market.ResourceClass{ID: "gpu.h100-80g"}
	if rules.Prepare(&p, t0, sme(), domestic, grants) || rules.PrepareTerms(&p, t0, ptr(sme()), &domestic, grants, TermsOf(grants)) {
		t.Fatal("an inexact domestic rate was compiled")
	}
	if !rules.PrepareTerms(&p, t0, ptr(sme()), &plain, grants, TermsOf(grants)) || len(p.Grants()) != 1 {
		t.Fatal("the exact base rate was refused")
	}
	// Terms that do not match the grants one for one are ignored.
	if !rules.PrepareTerms(&p, t0, ptr(sme()), &plain, grants, nil) || len(p.Grants()) != 1 {
		t.Fatal("without terms")
	}
}

// TestPrepareTermsTimes: the terms' validity window in nanoseconds keeps
// Prepare's answer for times at and around the edges, times too far out
// for nanoseconds, times with monotonic readings (which Before and After
// compare by when both sides have one), scoped grants and rates outside
// the terms' int16 range.
func TestPrepareTermsTimes(t *testing.T) {
	rng := rand.New(rand.NewSource(11))
	mono := time.Now()
	bases := []time.Time{t0, mono, mono.Round(0), time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), {}}
	at := func() time.Time {
		b := bases[rng.Intn(len(bases))]
		return b.Add(time.Duration(rng.Intn(5)-2) * []time.Duration{1, time.Second, time.Hour}[rng.Intn(3)])
	}
	rules := DefaultRules()
	var p, pt Prepared
	kept := 0
	for n := 0; n < 20000; n++ {
		now := at()
		if rng.Intn(3) == 0 {
			now = bases[rng.Intn(len(bases))]
		}
		var grants []Grant
		for i, k := 0, rng.Intn(4); i < k; i++ {
			g := grant()
			g.Voucher.ID = []string{"va", "vb", "vc"}[rng.Intn(3)]
			g.Voucher.ExpiresAt, g.Program.ValidFrom, g.Program.ValidTo = at(), at(), at()
			if rng.Intn(3) == 0 {
				g.Program.ValidFrom = time.Time{}
			}
			if rng.Intn(4) == 0 {
				g.Program.ResourceClasses = []string{"gpu.h100-80g"}
			}
			if rng.Intn(4) == 0 {
				g.Program.Regions = []string{"cn-east"}
			}
			if rng.Intn(6) == 0 {
				g.Program.Rate = d([]string{"-4", "-1e30", "0", "2"}[rng.Intn(4)])
			}
			grants = append(grants, g)
		}
		class := market.ResourceClass{ID: []string{"gpu.h100-80g", "gpu.910b-64g"}[rng.Intn(2)], Domestic: rng.Intn(2) == 0}
		ok := rules.Prepare(&p, now, sme(), class, grants)
		okT := rules.PrepareTerms(&pt, now, ptr(sme()), &class, grants, TermsOf(grants))
		if ok != okT || ok && !reflect.DeepEqual(slices.Clip(p.Grants()), slices.Clip(pt.Grants())) && len(p.Grants())+len(pt.Grants()) > 0 {
			t.Fatalf("case %d at %v: from grants %v %+v, from terms %v %+v", n, now, ok, p.Grants(), okT, pt.Grants())
		}
		kept += len(p.Grants())
	}
	if kept < 2000 {
		t.Fatalf("only %d grants kept", kept)
	}
}

func ptr[T any](v T) *T { return &v }

// TestTermsColdLayout: termsCold is 256 bytes (a size class whose objects
// start on a cache line) and its scope lists and first inline id share
// the first line.
func TestTermsColdLayout(t *testing.T) {
	var c termsCold
	if n := unsafe.Sizeof(c); n != 256 {
		t.Fatalf("termsCold is %d bytes", n)
	}
	if end := unsafe.Offsetof(c.inline) + unsafe.Sizeof(c.inline[0]); end > 64 {
		t.Fatalf("inline[0] ends at %d", end)
	}
}

// TestTermsInlineScopes: scope lists copied into the terms keep their
// entries, and lists too long to copy stay the programme's.
func TestTermsInlineScopes(t *testing.T) {
	long := []string{"a", "b", "c", "d", "e"}
	for _, tc := range []struct{ providers, regions []string }{
		{nil, nil}, {[]string{"p1", "p2"}, []string{"r1"}}, {long, []string{"r1"}},
		{[]string{"p1"}, long}, {[]string{"p1", "p2", "p3"}, []string{"r1", "r2"}}, {[]string{}, []string{"r"}},
	} {
		g := Grant{Program: market.Program{Providers: tc.providers, Regions: tc.regions}}
		c := TermsOf([]Grant{g})[0].cold
		if !slices.Equal(c.providers, tc.providers) || !slices.Equal(c.regions, tc.regions) ||
			len(c.providers) != len(tc.providers) || len(c.regions) != len(tc.regions) {
			t.Fatalf("TermsOf(%q, %q) kept %q, %q", tc.providers, tc.regions, c.providers, c.regions)
		}
	}
}
