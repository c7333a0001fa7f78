package history

import (
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"computebroker/market"
)

// analyticsTrades stores a hand-computed market: three providers in the
// 09:00 hour of t0, one trade two hours later in cn-east, and a refunded
// trade that every aggregate must ignore.
func analyticsTrades(t *testing.T, s *Store) {
	t.Helper()
	d := decimal.RequireFromString
	a := trade(1) // prov-1, 8×10 at 21.5000, gross 1720.00, discount 516.00
	a.TS = t0
	b := trade(2)
	b.ProviderID, b.Units, b.Hours, b.UnitPrice = "prov-2", 4, 3, d("20.0000")
	b.Gross, b.Discount, b.Net, b.VoucherID, b.ProgramID = d("240.00"), d("0"), d("240.00"), "", ""
	b.TS = t0.Add(10 * time.Second)
	c := trade(3)
	c.ProviderID, c.SMEID, c.Units, c.Hours, c.UnitPrice = "prov-3", "sme-2", 2, 10, d("23.0000")
	c.Gross, c.Discount, c.Net = d("460.00"), d("100.00"), d("360.00")
	c.TS = t0.Add(20 * time.Second)
	dd := trade(4)
	dd.Region, dd.Units, dd.Hours, dd.UnitPrice = "cn-east", 1, 1, d("30.0000")
	dd.Gross, dd.Discount, dd.Net, dd.VoucherID, dd.ProgramID = d("30.00"), d("0"), d("30.00"), "", ""
	dd.TS = t0.Add(2 * time.Hour)
	e := trade(5) // refunded below
	e.ProviderID, e.UnitPrice, e.Gross, e.Discount, e.Net = "prov-2", d("100.0000"), d("8000.00"), d("0"), d("8000.00")
	e.TS = t0.Add(30 * time.Second)
	ctx := testContext(t)
	if err := s.InsertTrades(ctx, []market.Trade{a, b, c, dd, e}); err != nil {
		t.Fatal(err)
	}
	r := e
	r.ID, r.TS = "rfd-5", t0.Add(40*time.Second)
	if err := s.InsertRefunds(ctx, []market.Trade{r}); err != nil {
		t.Fatal(err)
	}
}

func TestPriceIndexAndOHLC(t *testing.T) {
	s := openStore(t)
	analyticsTrades(t, s)
	ctx := testContext(t)
	h9 := time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC)

	pts, err := s.PriceIndex(ctx, AnalyticsFilter{}, "1h")
	if err != nil {
		t.Fatal(err)
	}
	// (21.5×80 + 20×12 + 23×20) / 112 = 2420/112 = 21.607142… → 21.6071.
	want := []PricePoint{{h9, decimal.RequireFromString("21.6071"), 112, 3}, {h9.Add(2 * time.Hour), decimal.RequireFromString("30"), 1, 1}}
	if len(pts) != len(want) {
		t.Fatalf("price index %+v, want %+v", pts, want)
	}
	for i, w := range want {
		p := pts[i]
		if !p.Bucket.Equal(w.Bucket) || p.VWAP.StringFixed(4) != w.VWAP.StringFixed(4) || p.Units != w.Units || p.Trades != w.Trades {
			t.Errorf("point %d = %+v, want %+v", i, p, w)
		}
	}
	pts, err = s.PriceIndex(ctx, AnalyticsFilter{Region: "cn-east"}, "1d")
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != 1 || !pts[0].Bucket.Equal(time.Date(2025, 3, 14, 0, 0, 0, 0, time.UTC)) || pts[0].Units != 1 {
		t.Fatalf("cn-east daily index %+v", pts)
	}
	pts, err = s.PriceIndex(ctx, AnalyticsFilter{From: t0.Add(15 * time.Second), To: t0.Add(time.Hour)}, "1m")
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != 1 || pts[0].VWAP.StringFixed(4) != "23.0000" || !pts[0].Bucket.Equal(t0.Add(20*time.Second).Truncate(time.Minute)) {
		t.Fatalf("time-filtered index %+v", pts)
	}
	if _, err := s.PriceIndex(ctx, AnalyticsFilter{}, "5m"); !market.IsCode(err, market.CodeInvalidArgument) {
		t.Fatalf("bad interval: %v", err)
	}

	cs, err := s.OHLC(ctx, AnalyticsFilter{ResourceClass: "gpu.h100-80g", Region: "cn-north"}, "1h")
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 {
		t.Fatalf("candles %+v", cs)
	}
	c := cs[0]
	if !c.Bucket.Equal(h9) || c.Open.String() != "21.5" || c.High.String() != "23" || c.Low.String() != "20" || c.Close.String() != "23" || c.Units != 112 {
		t.Fatalf("candle %+v", c)
	}
	if cs, err := s.OHLC(ctx, AnalyticsFilter{ResourceClass: "cpu.standard"}, "1d"); err != nil || len(cs) != 0 {
		t.Fatalf("other class: %+v %v", cs, err)
	}
}

func TestConcentration(t *testing.T) {
	s := openStore(t)
	analyticsTrades(t, s)
	ctx := testContext(t)
	type share struct{ id, share string }
	for _, tc := range []struct {
		by, hhi, cr4 string
		shares       []share
	}{
		// 81, 20, 12 unit-hours of 113: 10000×(81²+20²+12²)/113² = 5564.26.
		{"gpu_hours", "5564.26", "1.0000", []share{{"prov-1", "0.7168"}, {"prov-3", "0.1770"}, {"prov-2", "0.1062"}}},
		{"revenue", "5550.52", "1.0000", []share{{"prov-1", "0.7143"}, {"prov-3", "0.1878"}, {"prov-2", "0.0980"}}},
		{"subsidy", "7280.32", "1.0000", []share{{"prov-1", "0.8377"}, {"prov-3", "0.1623"}}},
	} {
		c, err := s.Concentration(ctx, AnalyticsFilter{}, tc.by)
		if err != nil {
			t.Fatal(err)
		}
		if c.HHI.StringFixed(2) != tc.hhi || c.CR4.StringFixed(4) != tc.cr4 || len(c.Shares) != len(tc.shares) {
			t.Errorf("%s: %+v", tc.by, c)
			continue
		}
		for i, w := range tc.shares {
			if c.Shares[i].ProviderID != w.id || c.Shares[i].Share.StringFixed(4) != w.share {
				t.Errorf("%s share %d = %s %s, want %s %s", tc.by, i, c.Shares[i].ProviderID, c.Shares[i].Share, w.id, w.share)
			}
		}
	}
	c, err := s.Concentration(ctx, AnalyticsFilter{Region: "cn-east"}, "revenue")
	if err != nil || c.HHI.StringFixed(2) != "10000.00" || len(c.Shares) != 1 {
		t.Fatalf("cn-east: %+v %v", c, err)
	}
	if _, err := s.Concentration(ctx, AnalyticsFilter{}, "units"); !market.IsCode(err, market.CodeInvalidArgument) {
		t.Fatalf("bad by: %v", err)
	}
	// CR4 of five equal providers is 4/5; HHI 5×20² = 2000.
	var five []Share
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		five = append(five, Share{ProviderID: id, Value: decimal.NewFromInt(7)})
	}
	if c := ComputeConcentration(five); c.CR4.StringFixed(4) != "0.8000" || c.HHI.StringFixed(2) != "2000.00" || c.Shares[0].ProviderID != "a" {
		t.Fatalf("five equal: %+v", c)
	}
}

func TestSubsidiesAndGini(t *testing.T) {
	s := openStore(t)
	analyticsTrades(t, s)
	ctx := testContext(t)
	gs, err := s.Subsidies(ctx, AnalyticsFilter{}, "provider")
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 2 || gs[0].Key != "prov-1" || gs[0].Gross.StringFixed(2) != "1720.00" || gs[0].Discount.StringFixed(2) != "516.00" ||
		gs[0].Orders != 1 || gs[0].Recipients != 1 || gs[1].Key != "prov-3" || gs[1].Discount.StringFixed(2) != "100.00" {
		t.Fatalf("by provider %+v", gs)
	}
	gs, err = s.Subsidies(ctx, AnalyticsFilter{}, "region")
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 1 || gs[0].Key != "cn-north" || gs[0].Gross.StringFixed(2) != "2180.00" || gs[0].Discount.StringFixed(2) != "616.00" ||
		gs[0].Orders != 2 || gs[0].Recipients != 2 {
		t.Fatalf("by region %+v", gs)
	}
	gs, err = s.Subsidies(ctx, AnalyticsFilter{}, "sme")
	if err != nil {
		t.Fatal(err)
	}
	var amounts []decimal.Decimal
	for _, g := range gs {
		amounts = append(amounts, g.Discount)
	}
	// Sorted 100, 516: ((2−3)×100 + (4−3)×516) / (2 × 616) = 416/1232.
	if g := Gini(amounts); g.StringFixed(4) != "0.3377" {
		t.Fatalf("gini %s of %v", g, amounts)
	}
	if g := Gini(nil); g.StringFixed(4) != "0.0000" {
		t.Fatalf("gini of none %s", g)
	}
	eq := []decimal.Decimal{decimal.NewFromInt(5), decimal.NewFromInt(5)}
	if g := Gini(eq); !g.IsZero() {
		t.Fatalf("gini of equals %s", g)
	}
	if _, err := s.Subsidies(ctx, AnalyticsFilter{}, "size"); !market.IsCode(err, market.CodeInvalidArgument) {
		t.Fatalf("size is grouped by the broker: %v", err)
	}
}

func TestPriceHikesAndPairs(t *testing.T) {
	s := openStore(t)
	ctx := testContext(t)
	d := decimal.RequireFromString
	tick := func(offer, price string, version int64, sec int) market.Tick {
		return market.Tick{OfferID: offer, ProviderID: "prov-1", ResourceClass: "gpu.h100-80g", Region: "cn-north",
			Price: d(price), UnitsFree: 8, Version: version, TS: t0.Add(time.Duration(sec) * time.Second)}
	}
	ticks := []market.Tick{
		tick("off-1", "20.00", 1, 0), tick("off-1", "22.00", 2, 1), // exactly 10%: no alert
		tick("off-1", "22.0001", 3, 2), tick("off-1", "26.00", 4, 3),
		tick("off-2", "10.00", 1, 0), tick("off-2", "11.00", 2, 5),
	}
	if err := s.InsertTicks(ctx, ticks); err != nil {
		t.Fatal(err)
	}
	hs, err := s.PriceHikes(ctx, AnalyticsFilter{}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 2 || hs[0].Version != 3 || hs[1].Version != 4 || hs[1].ListPrice.String() != "20" || hs[1].Price.String() != "26" {
		t.Fatalf("hikes %+v", hs)
	}
	// The list price is the offer's first tick even when it lies before From.
	hs, err = s.PriceHikes(ctx, AnalyticsFilter{From: t0.Add(3 * time.Second)}, 2500)
	if err != nil || len(hs) != 1 || hs[0].Version != 4 {
		t.Fatalf("hikes over 25%% from t0+3s: %+v %v", hs, err)
	}

	analyticsTrades(t, s)
	ps, err := s.VoucherPairs(ctx, AnalyticsFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].SMEID != "sme-1" || ps[0].ProviderID != "prov-1" || ps[0].Discount.StringFixed(2) != "516.00" || ps[1].SMEID != "sme-2" {
		t.Fatalf("pairs %+v", ps)
	}
	os, err := s.OrderDiscounts(ctx, AnalyticsFilter{})
	if err != nil || len(os) != 2 || os[0].OrderID != "ord-00001" || os[0].Discount.StringFixed(2) != "516.00" {
		t.Fatalf("order discounts %+v %v", os, err)
	}
}

// TestProgramDiscountsAndVolumes: discounts per programme and volume per
// market over the hand-computed market, the refunded trade left out.
func TestProgramDiscountsAndVolumes(t *testing.T) {
	s := openStore(t)
	analyticsTrades(t, s)
	ctx := testContext(t)
	disc, err := s.ProgramDiscounts(ctx, AnalyticsFilter{})
	if err != nil {
		t.Fatal(err)
	}
	prog := trade(1).ProgramID
	if len(disc) != 1 || disc[prog].String() != "616" { // 516 + 100
		t.Fatalf("programme discounts %v", disc)
	}
	// A window after the 09:00 trades sees none.
	if disc, err := s.ProgramDiscounts(ctx, AnalyticsFilter{From: t0.Add(time.Hour)}); err != nil || len(disc) != 0 {
		t.Fatalf("later window: %v %v", disc, err)
	}
	vols, err := s.MarketVolumes(ctx, AnalyticsFilter{})
	if err != nil {
		t.Fatal(err)
	}
	want := []MarketVolume{{"gpu.h100-80g", "cn-east", 1, 1}, {"gpu.h100-80g", "cn-north", 112, 3}}
	if len(vols) != 2 || vols[0] != want[0] || vols[1] != want[1] {
		t.Fatalf("volumes %+v, want %+v", vols, want)
	}
	if vols, err := s.MarketVolumes(ctx, AnalyticsFilter{Region: "cn-east"}); err != nil || len(vols) != 1 || vols[0] != want[0] {
		t.Fatalf("cn-east volumes %+v %v", vols, err)
	}
}
