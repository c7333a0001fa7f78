package voucher

import (
	"testing"
	"time"

	"computebroker/market"

	"github.com/shopspring/decimal"
)

var (
	d   = decimal.RequireFromString
	t0  = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	gpu = market.ResourceClass{ID: "gpu.h100-80g", Unit: market.UnitGPUHour}
	dom = market.ResourceClass{ID: "gpu.910b-64g", Unit: market.UnitGPUHour, Domestic: true}
)

func program() market.Program {
	return market.Program{
		ID: "p1", Rate: d("0.30"),
		AnnualCapPerCompany: d("2000000"), Budget: d("100000000"),
		ValidFrom: t0.AddDate(0, -1, 0), ValidTo: t0.AddDate(1, 0, 0),
	}
}

func grant() Grant {
	return Grant{
		Voucher:   market.Voucher{ID: "v1", ProgramID: "p1", HolderID: "sme1", Amount: d("10000"), Balance: d("10000"), ExpiresAt: t0.AddDate(0, 6, 0)},
		Program:   program(),
		Available: d("10000"), CapLeft: d("2000000"), BudgetLeft: d("100000000"),
	}
}

func sme() market.Account {
	return market.Account{ID: "sme1", Role: market.RoleSME, RelatedPartyKeys: []string{"tax:S1"}}
}

func provider() market.Account {
	return market.Account{ID: "prov1", Role: market.RoleProvider, Status: market.ProviderApproved, RelatedPartyKeys: []string{"tax:P1"}}
}

func offer() market.Offer {
	return market.Offer{ID: "o1", ProviderID: "prov1", ResourceClass: gpu.ID, Region: "cn-east", Units: 8, UnitsFree: 8,
		Price: d("20.00"), ListPrice: d("20.00"), MaxHours: 720, Status: market.OfferActive}
}

func TestRate(t *testing.T) {
	p := program()
	p.DomesticRate = d("0.40")
	p.StartupRate = d("0.50")
	startup := sme()
	startup.Startup = true
	noStartupRate := p
	noStartupRate.StartupRate = decimal.Zero
	lowDomestic := p
	lowDomestic.DomesticRate = d("0.10")
	tests := []struct {
		name  string
		p     market.Program
		class market.ResourceClass
		sme   market.Account
		want  string
	}{
		{"base", p, gpu, sme(), "0.30"},
		{"domestic", p, dom, sme(), "0.40"},
		{"startup", p, gpu, startup, "0.50"},
		{"domestic startup takes highest", p, dom, startup, "0.50"},
		{"startup without startup rate", noStartupRate, dom, startup, "0.40"},
		{"domestic rate below base", lowDomestic, dom, sme(), "0.30"},
		{"no extra rates", program(), dom, startup, "0.30"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Rate(tt.p, tt.class, tt.sme); !got.Equal(d(tt.want)) {
				t.Fatalf("Rate = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestDiscount(t *testing.T) {
	tests := []struct {
		name                         string
		rate, gross                  string
		perOrder, avail, cap, budget string
		want                         string
	}{
		{"rate x gross exact", "0.30", "1720.00", "", "10000", "1e9", "1e9", "516.00"},
		{"floor not round", "0.3333", "100.01", "", "10000", "1e9", "1e9", "33.33"},
		{"floor just below a cent", "0.3333", "2.99", "", "10000", "1e9", "1e9", "0.99"}, // 0.996567
		{"per order cap", "0.30", "1720.00", "500.00", "10000", "1e9", "1e9", "500.00"},
		{"per order cap unset", "0.30", "1720.00", "0", "10000", "1e9", "1e9", "516.00"},
		{"available", "0.30", "1720.00", "", "123.45", "1e9", "1e9", "123.45"},
		{"available with sub-cent holds floors", "0.30", "1720.00", "", "123.456", "1e9", "1e9", "123.45"},
		{"annual cap left", "0.30", "1720.00", "", "10000", "99.99", "1e9", "99.99"},
		{"budget left", "0.30", "1720.00", "", "10000", "1e9", "12.34", "12.34"},
		{"smallest wins", "0.30", "1720.00", "400", "300", "200", "100", "100.00"},
		{"negative available never negative", "0.30", "1720.00", "", "-5", "1e9", "1e9", "0"},
		{"zero gross", "0.30", "0", "", "10000", "1e9", "1e9", "0"},
		{"tiny discount floors to zero", "0.30", "0.03", "", "10000", "1e9", "1e9", "0"},
		{"never above gross", "1.50", "10.00", "", "10000", "1e9", "1e9", "10.00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := grant()
			if tt.perOrder != "" {
				g.Program.PerOrderCap = d(tt.perOrder)
			}
			g.Available, g.CapLeft, g.BudgetLeft = d(tt.avail), d(tt.cap), d(tt.budget)
			got := Discount(d(tt.rate), d(tt.gross), g)
			if !got.Equal(d(tt.want)) {
				t.Fatalf("Discount = %s, want %s", got, tt.want)
			}
			if got.IsNegative() || !got.Equal(got.RoundFloor(2)) {
				t.Fatalf("Discount = %s: negative or finer than a cent", got)
			}
		})
	}
}

func TestApplies(t *testing.T) {
	related := sme()
	related.RelatedPartyKeys = []string{"tax:S1", "bank:X", "tax:P1"}
	tests := []struct {
		name   string
		now    time.Time
		sme    market.Account
		offer  func(*market.Offer)
		grant  func(*Grant)
		ref    string
		reason string
	}{
		{name: "applies", reason: ""},
		{name: "voucher expired", grant: func(g *Grant) { g.Voucher.ExpiresAt = t0 }, reason: "expired"},
		{name: "voucher expires just after now", grant: func(g *Grant) { g.Voucher.ExpiresAt = t0.Add(time.Nanosecond) }, reason: ""},
		{name: "programme ended", grant: func(g *Grant) { g.Program.ValidTo = t0 }, reason: "expired"},
		{name: "programme starts now", grant: func(g *Grant) { g.Program.ValidFrom = t0 }, reason: ""},
		{name: "programme not yet started", grant: func(g *Grant) { g.Program.ValidFrom = t0.Add(time.Second) }, reason: "not_yet_valid"},
		{name: "class in scope", grant: func(g *Grant) { g.Program.ResourceClasses = []string{"cpu.standard", gpu.ID} }, reason: ""},
		{name: "class out of scope", grant: func(g *Grant) { g.Program.ResourceClasses = []string{"cpu.standard"} }, reason: "out_of_scope_class"},
		{name: "region out of scope", grant: func(g *Grant) { g.Program.Regions = []string{"cn-west"} }, reason: "out_of_scope_region"},
		{name: "region in scope", grant: func(g *Grant) { g.Program.Regions = []string{"cn-east"} }, reason: ""},
		{name: "provider out of scope", grant: func(g *Grant) { g.Program.Providers = []string{"provB"} }, reason: "out_of_scope_provider"},
		{name: "provider in scope", grant: func(g *Grant) { g.Program.Providers = []string{"provB", "prov1"} }, reason: ""},
		{name: "related party", sme: related, reason: "related_party"},
		{name: "price exactly 25% above reference", ref: "16.00", reason: ""}, // 20.00 = 1.25 × 16
		{name: "price just above 25%", offer: func(o *market.Offer) { o.Price = d("20.0001") }, ref: "16.00", reason: "price_above_reference"},
		{name: "guard uses list price when ref is zero", offer: func(o *market.Offer) { o.ListPrice = d("15.99") }, reason: "price_above_reference"},
		{name: "list price exactly 25% below", offer: func(o *market.Offer) { o.ListPrice = d("16") }, reason: ""},
		{name: "no reference, no guard", offer: func(o *market.Offer) { o.ListPrice = decimal.Zero; o.Price = d("999") }, reason: ""},
		{name: "ref overrides list price", offer: func(o *market.Offer) { o.ListPrice = d("1") }, ref: "20", reason: ""},
		{name: "no balance", grant: func(g *Grant) { g.Available = decimal.Zero }, reason: "no_balance"},
		{name: "cap reached", grant: func(g *Grant) { g.CapLeft = decimal.Zero }, reason: "cap_reached"},
		{name: "budget exhausted", grant: func(g *Grant) { g.BudgetLeft = d("-1") }, reason: "budget_exhausted"},
		{name: "not the holder", grant: func(g *Grant) { g.Voucher.HolderID = "sme2" }, reason: "not_holder"},
		{name: "programme mismatch", grant: func(g *Grant) { g.Voucher.ProgramID = "p2" }, reason: "program_mismatch"},
		{name: "expired beats scope", grant: func(g *Grant) { g.Voucher.ExpiresAt = t0; g.Program.Regions = []string{"x"} }, reason: "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := t0
			if !tt.now.IsZero() {
				now = tt.now
			}
			s := sme()
			if tt.sme.ID != "" {
				s = tt.sme
			}
			o := offer()
			if tt.offer != nil {
				tt.offer(&o)
			}
			g := grant()
			if tt.grant != nil {
				tt.grant(&g)
			}
			var ref decimal.Decimal
			if tt.ref != "" {
				ref = d(tt.ref)
			}
			if got := DefaultRules().Applies(now, s, provider(), o, gpu, ref, g); got != tt.reason {
				t.Fatalf("Applies = %q, want %q", got, tt.reason)
			}
		})
	}
}

func TestZeroRulesAreDefault(t *testing.T) {
	o := offer()
	o.Price = d("20.0001")
	if got := (Rules{}).Applies(t0, sme(), provider(), o, gpu, d("16"), grant()); got != ReasonPriceAboveReference {
		t.Fatalf("zero Rules guard: %q", got)
	}
	o.Price = d("20")
	if got := (Rules{}).Applies(t0, sme(), provider(), o, gpu, d("16"), grant()); got != "" {
		t.Fatalf("zero Rules guard at exactly 25%%: %q", got)
	}
}

func TestChoose(t *testing.T) {
	mk := func(id string, expires time.Time, mut func(*Grant)) Grant {
		g := grant()
		g.Voucher.ID = id
		g.Voucher.ExpiresAt = expires
		if mut != nil {
			mut(&g)
		}
		return g
	}
	later, sooner, soonest := t0.AddDate(0, 6, 0), t0.AddDate(0, 2, 0), t0.AddDate(0, 1, 0)
	tests := []struct {
		name     string
		grants   []Grant
		wantID   string
		wantDisc string
	}{
		{"none", nil, "", ""},
		{"expires first wins", []Grant{mk("a", later, nil), mk("b", sooner, nil)}, "b", "516.00"},
		{"tie on expiry: lower id", []Grant{mk("z", sooner, nil), mk("m", sooner, nil), mk("q", later, nil)}, "m", "516.00"},
		{"inapplicable sooner skipped", []Grant{mk("a", later, nil), mk("b", soonest, func(g *Grant) { g.Program.Regions = []string{"cn-west"} })}, "a", "516.00"},
		{"expired skipped", []Grant{mk("a", later, nil), mk("b", t0, nil)}, "a", "516.00"},
		{"zero discount skipped", []Grant{mk("a", later, nil), mk("b", soonest, func(g *Grant) { g.Available = d("0.001") })}, "a", "516.00"},
		{"sooner pays less, still chosen", []Grant{mk("a", later, nil), mk("b", soonest, func(g *Grant) { g.Available = d("10") })}, "b", "10.00"},
		{"all inapplicable", []Grant{mk("a", later, func(g *Grant) { g.CapLeft = decimal.Zero })}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, ok := DefaultRules().Choose(t0, sme(), provider(), offer(), gpu, decimal.Zero, d("1720.00"), tt.grants)
			if ok != (tt.wantID != "") {
				t.Fatalf("ok = %v, choice %+v", ok, c)
			}
			if !ok {
				return
			}
			if c.VoucherID != tt.wantID || c.ProgramID != "p1" || !c.Discount.Equal(d(tt.wantDisc)) || !c.Rate.Equal(d("0.30")) {
				t.Fatalf("choice = %+v, want %s discount %s", c, tt.wantID, tt.wantDisc)
			}
		})
	}
}

func TestPriceAlert(t *testing.T) {
	tests := []struct {
		price, ref string
		want       bool
	}{
		{"11.00", "10.00", false},
		{"11.0001", "10.00", true},
		{"9", "10", false},
		{"100", "0", false},
	}
	for _, tt := range tests {
		if got := DefaultRules().PriceAlert(d(tt.price), d(tt.ref)); got != tt.want {
			t.Errorf("PriceAlert(%s, %s) = %v, want %v", tt.price, tt.ref, got, tt.want)
		}
	}
}
