package broker_test

import (
	"strings"
	"testing"
	"time"
)

// TestAnalyticsEndpoints places a few orders through the API and checks the
// regulator's aggregates to the cent.
func TestAnalyticsEndpoints(t *testing.T) {
	// The orders below must fall in one hour (and so one day) for the exact
	// bucket checks: start clear of an hour boundary.
	if left := time.Until(time.Now().Truncate(time.Hour).Add(time.Hour)); left < 45*time.Second {
		time.Sleep(left + time.Second)
	}
	e := newEnv(t)
	reg := e.account("regulator", "R", nil)
	pa := e.account("provider", "Alpha", nil)
	pb := e.account("provider", "Beta", nil)
	s1 := e.account("sme", "Small Co", map[string]any{"size": "small"})
	s2 := e.account("sme", "Micro Co", map[string]any{"size": "micro"})
	s3 := e.account("sme", "Medium Co", map[string]any{"size": "medium"})
	e.must(200, "POST", "/api/v1/providers/"+pa.id+"/approve", reg.token, nil)
	e.must(200, "POST", "/api/v1/providers/"+pb.id+"/approve", reg.token, nil)

	const class = "gpu.h100-80g"
	oa := e.must(201, "POST", "/api/v1/offers", pa.token, offerBody(class, "cn-east", 16, "20.00")).str("id")
	ob := e.must(201, "POST", "/api/v1/offers", pb.token, offerBody(class, "cn-north", 16, "21.00")).str("id")
	prog := e.must(201, "POST", "/api/v1/programs", reg.token, programBody("Pilot", "0.20", []string{})).str("id")
	for _, s := range []account{s1, s2} {
		e.must(201, "POST", "/api/v1/vouchers", reg.token, map[string]any{
			"program_id": prog, "holder_id": s.id, "amount": "1000.00", "expires_at": "2029-06-30T00:00:00Z"})
	}
	order := func(s account, region string, units, hours int, wantDiscount string) {
		t.Helper()
		o := e.must(201, "POST", "/api/v1/orders", s.token, map[string]any{
			"resource_class": class, "regions": []string{region}, "units": units, "hours": hours}, "Idempotency-Key", "k-"+s.id)
		if o.str("discount") != wantDiscount {
			t.Fatalf("order %s", o.Raw)
		}
	}
	order(s1, "cn-east", 2, 10, "80.00")                                                   // A at 20.00: gross 400.00, 20% off
	order(s2, "cn-north", 4, 5, "84.00")                                                   // B at 21.00: gross 420.00
	order(s3, "cn-east", 1, 3, "0.00")                                                     // A, no voucher: gross 60.00
	e.must(200, "PATCH", "/api/v1/offers/"+oa, pa.token, map[string]any{"price": "25.00"}) // +25%: warning
	e.must(200, "PATCH", "/api/v1/offers/"+ob, pb.token, map[string]any{"price": "27.00"}) // +28.57%: high
	trades := e.waitTrades(reg.token, 3)

	get := func(path string) resp {
		t.Helper()
		return e.must(200, "GET", "/api/v1/analytics/"+path, reg.token, nil)
	}
	items := func(r resp, k string) []map[string]any {
		t.Helper()
		xs, ok := r.Body[k].([]any)
		if !ok {
			t.Fatalf("no %s in %s", k, r.Raw)
		}
		out := make([]map[string]any, len(xs))
		for i, x := range xs {
			out[i] = x.(map[string]any)
		}
		return out
	}
	day := time.Now().UTC().Truncate(24 * time.Hour).Format(time.RFC3339)

	// (20×20 + 21×20 + 20×3) / 43 = 880/43 = 20.46511… → 20.4651.
	pts := items(get("price-index?interval=1d"), "points")
	if len(pts) != 1 || pts[0]["vwap"] != "20.4651" || pts[0]["units"] != float64(43) || pts[0]["trades"] != float64(3) || pts[0]["bucket"] != day {
		t.Fatalf("price index %v (day %s)", pts, day)
	}
	pts = items(get("price-index?interval=1h&region=cn-east&resource_class="+class), "points")
	if len(pts) != 1 || pts[0]["vwap"] != "20.0000" || pts[0]["units"] != float64(23) {
		t.Fatalf("cn-east price index %v", pts)
	}
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if pts := items(get("price-index?interval=1m&from="+future), "points"); len(pts) != 0 {
		t.Fatalf("future price index %v", pts)
	}

	cs := items(get("ohlc?interval=1d"), "candles")
	if len(cs) != 1 || cs[0]["high"] != "21.00" || cs[0]["low"] != "20.00" || cs[0]["units"] != float64(43) ||
		cs[0]["open"] != trades[0]["unit_price"] || cs[0]["close"] != trades[2]["unit_price"] {
		t.Fatalf("candles %v, trades %v", cs, trades)
	}

	type share struct{ id, share string }
	for _, tc := range []struct {
		by, hhi string
		shares  []share
	}{
		{"gpu_hours", "5024.34", []share{{pa.id, "0.5349"}, {pb.id, "0.4651"}}}, // 23 and 20 GPU-hours
		{"revenue", "5010.33", []share{{pa.id, "0.5227"}, {pb.id, "0.4773"}}},   // 460.00 and 420.00
		{"subsidy", "5002.97", []share{{pb.id, "0.5122"}, {pa.id, "0.4878"}}},   // 84.00 and 80.00
	} {
		r := get("concentration?by=" + tc.by)
		sh := items(r, "shares")
		if r.str("hhi") != tc.hhi || r.str("cr4") != "1.0000" || len(sh) != 2 {
			t.Errorf("concentration by %s: %s", tc.by, r.Raw)
			continue
		}
		for i, w := range tc.shares {
			if sh[i]["provider_id"] != w.id || sh[i]["share"] != w.share {
				t.Errorf("concentration by %s share %d = %v, want %v", tc.by, i, sh[i], w)
			}
		}
	}

	type group struct {
		key, gross, discount string
		orders, recipients   float64
	}
	for _, tc := range []struct {
		by     string
		groups []group
	}{
		{"size", []group{{"micro", "420.00", "84.00", 1, 1}, {"small", "400.00", "80.00", 1, 1}}},
		{"region", []group{{"cn-north", "420.00", "84.00", 1, 1}, {"cn-east", "400.00", "80.00", 1, 1}}},
		{"provider", []group{{pb.id, "420.00", "84.00", 1, 1}, {pa.id, "400.00", "80.00", 1, 1}}},
		{"program", []group{{prog, "820.00", "164.00", 2, 2}}},
	} {
		r := get("subsidies?group_by=" + tc.by)
		gs := items(r, "groups")
		// Discounts 80 and 84: (84 − 80) / (2 × 164) = 0.012195… → 0.0122.
		if r.str("gini") != "0.0122" || len(gs) != len(tc.groups) {
			t.Errorf("subsidies by %s: %s", tc.by, r.Raw)
			continue
		}
		for i, w := range tc.groups {
			g := gs[i]
			if g["key"] != w.key || g["gross"] != w.gross || g["discount"] != w.discount || g["orders"] != w.orders || g["recipients"] != w.recipients {
				t.Errorf("subsidies by %s group %d = %v, want %+v", tc.by, i, g, w)
			}
		}
	}

	// The price ticks reach the history asynchronously.
	var alerts []map[string]any
	deadline := time.Now().Add(20 * time.Second)
	for {
		alerts = items(get("alerts"), "alerts")
		if len(alerts) >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	sev := map[string]string{}
	for _, a := range alerts {
		if a["kind"] != "price_hike" || a["ts"] == "" {
			t.Errorf("unexpected alert %v", a)
		}
		sev[a["subject"].(string)] = a["severity"].(string)
	}
	if len(alerts) != 2 || sev[oa] != "warning" || sev[ob] != "high" {
		t.Fatalf("alerts %v", alerts)
	}
	for _, a := range alerts {
		if a["subject"] == ob && !strings.Contains(a["detail"].(string), "28.57% above its list price 21.00") {
			t.Errorf("alert detail %q", a["detail"])
		}
	}
	if as := items(get("alerts?region=cn-west"), "alerts"); len(as) != 0 {
		t.Fatalf("cn-west alerts %v", as)
	}

	// Cap gaming: three orders whose discount sits just under the per-order
	// cap (37.80 of 40.00); and a cancelled order that no aggregate counts.
	pc := e.account("provider", "Gamma", nil)
	s4 := e.account("sme", "Splitter", map[string]any{"size": "small"})
	e.must(200, "POST", "/api/v1/providers/"+pc.id+"/approve", reg.token, nil)
	e.must(201, "POST", "/api/v1/offers", pc.token, offerBody(class, "cn-south", 16, "21.00"))
	capped := programBody("Capped", "0.20", []string{})
	capped["per_order_cap"] = "40.00"
	prog2 := e.must(201, "POST", "/api/v1/programs", reg.token, capped).str("id")
	e.must(201, "POST", "/api/v1/vouchers", reg.token, map[string]any{
		"program_id": prog2, "holder_id": s4.id, "amount": "1000.00", "expires_at": "2029-06-30T00:00:00Z"})
	for i := range 3 {
		o := e.must(201, "POST", "/api/v1/orders", s4.token, map[string]any{
			"resource_class": class, "regions": []string{"cn-south"}, "units": 1, "hours": 9}, "Idempotency-Key", "split-"+string(rune('a'+i)))
		if o.str("gross") != "189.00" || o.str("discount") != "37.80" {
			t.Fatalf("split order %s", o.Raw)
		}
	}
	cancelled := e.must(201, "POST", "/api/v1/orders", s3.token, map[string]any{
		"resource_class": class, "regions": []string{"cn-south"}, "units": 2, "hours": 1}, "Idempotency-Key", "to-cancel").str("id")
	e.must(200, "POST", "/api/v1/orders/"+cancelled+"/cancel", s3.token, nil)
	e.waitTrades(reg.token, 7)
	deadline = time.Now().Add(20 * time.Second)
	for {
		pts = items(get("price-index?interval=1d&region=cn-south"), "points")
		if (len(pts) == 1 && pts[0]["trades"] == float64(3)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(pts) != 1 || pts[0]["trades"] != float64(3) || pts[0]["units"] != float64(27) || pts[0]["vwap"] != "21.0000" {
		t.Fatalf("cn-south price index with a cancelled order %v", pts)
	}
	alerts = items(get("alerts"), "alerts")
	var gaming []map[string]any
	for _, a := range alerts {
		if a["kind"] == "cap_gaming" {
			gaming = append(gaming, a)
		}
	}
	if len(alerts) != 3 || len(gaming) != 1 || gaming[0]["subject"] != s4.id || gaming[0]["severity"] != "warning" ||
		!strings.Contains(gaming[0]["detail"].(string), "3 orders under programme "+prog2) {
		t.Fatalf("alerts after split orders %v", alerts)
	}
	r := get("subsidies?group_by=size")
	if gs := items(r, "groups"); len(gs) != 2 || gs[0]["key"] != "small" || gs[0]["discount"] != "193.40" || gs[0]["orders"] != float64(4) || gs[0]["recipients"] != float64(2) {
		t.Fatalf("subsidies by size after split orders %s", r.Raw)
	}

	// Only regulators and the operator; bad parameters are invalid_argument.
	for _, p := range []string{"price-index?interval=1h", "ohlc?interval=1h", "concentration?by=revenue", "subsidies?group_by=size", "alerts"} {
		if r := e.call("GET", "/api/v1/analytics/"+p, s1.token, nil); r.Status != 403 || r.errCode() != "forbidden" {
			t.Errorf("SME on %s: %d %s", p, r.Status, r.Raw)
		}
		e.must(200, "GET", "/api/v1/analytics/"+p, adminToken, nil)
		if r := e.call("GET", "/api/v1/analytics/"+p+"&region=mars", reg.token, nil); p != "alerts" && (r.Status != 400 || r.errCode() != "invalid_argument") {
			t.Errorf("bad region on %s: %d %s", p, r.Status, r.Raw)
		}
	}
	for _, p := range []string{"price-index?interval=5m", "price-index", "ohlc?interval=1w", "concentration?by=units", "concentration",
		"subsidies?group_by=city", "subsidies", "alerts?resource_class=gpu.nope", "alerts?from=yesterday", "ohlc?interval=1h&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"} {
		if r := e.call("GET", "/api/v1/analytics/"+p, reg.token, nil); r.Status != 400 || r.errCode() != "invalid_argument" {
			t.Errorf("%s: %d %s", p, r.Status, r.Raw)
		}
	}
}

// TestBudgetAndCapacityAnalytics: a programme's burn over the window and
// its exhaustion forecast; capacity listed now against unit-hours sold.
func TestBudgetAndCapacityAnalytics(t *testing.T) {
	e := newEnv(t)
	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "Alpha", nil)
	s := e.account("sme", "Small Co", map[string]any{"size": "small"})
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.h100-80g", "cn-east", 16, "20.00"))
	e.must(201, "POST", "/api/v1/offers", p.token, offerBody("cpu.standard", "cn-north", 64, "0.30"))
	body := programBody("Pilot", "0.20", []string{})
	body["budget"] = "1000.00"
	prog := e.must(201, "POST", "/api/v1/programs", reg.token, body).str("id")
	e.must(201, "POST", "/api/v1/vouchers", reg.token, map[string]any{
		"program_id": prog, "holder_id": s.id, "amount": "1000.00", "expires_at": "2029-06-30T00:00:00Z"})
	o := e.must(201, "POST", "/api/v1/orders", s.token, map[string]any{
		"resource_class": "gpu.h100-80g", "regions": []string{"cn-east"}, "units": 2, "hours": 10}, "Idempotency-Key", "k1")
	if o.str("gross") != "400.00" || o.str("discount") != "80.00" {
		t.Fatalf("order %s", o.Raw)
	}
	e.waitTrades(reg.token, 1)

	// 80.00 burned in 10 days: 8.00 a day; 920.00 left lasts 115 days.
	before := time.Now()
	r := e.must(200, "GET", "/api/v1/analytics/budgets?days=10", reg.token, nil)
	progs, _ := r.Body["programs"].([]any)
	if r.num("window_days") != 10 || len(progs) != 1 {
		t.Fatalf("budgets %s", r.Raw)
	}
	g := progs[0].(map[string]any)
	for k, want := range map[string]any{"program_id": prog, "name": "Pilot", "budget": "1000.00", "spent": "80.00", "held": "0.00",
		"left": "920.00", "burned": "80.00", "burn_per_day": "8.00", "days_left": "115.0", "valid_to": "2030-01-01T00:00:00Z",
		"exhausts_before_end": true} {
		if g[k] != want {
			t.Errorf("budgets: %s = %v, want %v", k, g[k], want)
		}
	}
	at, err := time.Parse(time.RFC3339, g["exhausts_at"].(string))
	if want := before.Add(115 * 24 * time.Hour); err != nil || at.Before(want.Add(-time.Minute)) || at.After(want.Add(time.Minute)) {
		t.Errorf("exhausts_at %v (%v), want about %v", g["exhausts_at"], err, want)
	}
	for _, q := range []string{"days=0", "days=400", "days=ten"} {
		if r := e.call("GET", "/api/v1/analytics/budgets?"+q, reg.token, nil); r.Status != 400 || r.errCode() != "invalid_argument" {
			t.Errorf("budgets?%s: %d %s", q, r.Status, r.Raw)
		}
	}
	for _, path := range []string{"budgets", "capacity"} {
		if r := e.call("GET", "/api/v1/analytics/"+path, s.token, nil); r.Status != 403 {
			t.Errorf("%s as an SME: %d", path, r.Status)
		}
	}

	// Capacity: the books show the 2 units leased within a moment.
	type row struct {
		class, region                string
		offers, listed, free, leased float64
		util                         string
		sold, trades                 float64
	}
	want := []row{{"cpu.standard", "cn-north", 1, 64, 64, 0, "0.0000", 0, 0}, {"gpu.h100-80g", "cn-east", 1, 16, 14, 2, "0.1250", 20, 1}}
	var got []row
	deadline := time.Now().Add(10 * time.Second)
	for {
		got = got[:0]
		for _, x := range e.must(200, "GET", "/api/v1/analytics/capacity", reg.token, nil).Body["markets"].([]any) {
			m := x.(map[string]any)
			got = append(got, row{m["resource_class"].(string), m["region"].(string), m["offers"].(float64), m["units_listed"].(float64),
				m["units_free"].(float64), m["units_leased"].(float64), m["utilisation"].(string), m["sold_unit_hours"].(float64), m["trades"].(float64)})
		}
		if len(got) == 2 && got[0] == want[0] && got[1] == want[1] || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("capacity %+v, want %+v", got, want)
	}
	ms := e.must(200, "GET", "/api/v1/analytics/capacity?region=cn-north", reg.token, nil).Body["markets"].([]any)
	if len(ms) != 1 || ms[0].(map[string]any)["resource_class"] != "cpu.standard" {
		t.Fatalf("capacity in cn-north %v", ms)
	}
}

// TestRoundTripAlert: two related-party groups buying each other's capacity
// with a voucher make one round_trip alert; a third, unrelated buyer and a
// pair without any voucher make none.
func TestRoundTripAlert(t *testing.T) {
	e := newEnv(t)
	reg := e.account("regulator", "R", nil)
	keys := func(k string) map[string]any { return map[string]any{"related_party_keys": []string{k}} }
	p1 := e.account("provider", "North Compute", keys("tax:north"))
	p2 := e.account("provider", "South Compute", keys("tax:south"))
	p3 := e.account("provider", "West Compute", keys("tax:west"))
	s1 := e.account("sme", "North Labs", keys("tax:north"))
	s2 := e.account("sme", "South Labs", keys("tax:south"))
	s3 := e.account("sme", "Independent", nil)
	s4 := e.account("sme", "West Labs", keys("tax:west"))
	for _, p := range []account{p1, p2, p3} {
		e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	}
	const class = "gpu.l40s-48g"
	e.must(201, "POST", "/api/v1/offers", p1.token, offerBody(class, "cn-north", 16, "10.00"))
	e.must(201, "POST", "/api/v1/offers", p2.token, offerBody(class, "cn-south", 16, "10.00"))
	e.must(201, "POST", "/api/v1/offers", p3.token, offerBody(class, "cn-west", 16, "10.00"))
	prog := e.must(201, "POST", "/api/v1/programs", reg.token, programBody("Pilot", "0.20", []string{})).str("id")
	e.must(201, "POST", "/api/v1/vouchers", reg.token, map[string]any{
		"program_id": prog, "holder_id": s1.id, "amount": "1000.00", "expires_at": "2029-06-30T00:00:00Z"})
	buy := func(s account, region, key string) {
		t.Helper()
		e.must(201, "POST", "/api/v1/orders", s.token, map[string]any{
			"resource_class": class, "regions": []string{region}, "units": 1, "hours": 10}, "Idempotency-Key", key)
	}
	buy(s1, "cn-south", "a") // North buys South's capacity with a voucher: 20.00 off
	buy(s2, "cn-north", "b") // South buys North's, no voucher
	buy(s3, "cn-north", "c") // unrelated
	buy(s4, "cn-south", "d") // West buys South's and South never buys West's
	e.waitTrades(reg.token, 4)

	var trips []map[string]any
	for _, x := range e.must(200, "GET", "/api/v1/analytics/alerts", reg.token, nil).Body["alerts"].([]any) {
		if a := x.(map[string]any); a["kind"] == "round_trip" {
			trips = append(trips, a)
		}
	}
	if len(trips) != 1 {
		t.Fatalf("round trips %v", trips)
	}
	a := trips[0]
	first, other := s1, s2
	if s2.id < s1.id {
		first, other = s2, s1
	}
	if a["severity"] != "high" || a["subject"] != first.id || !strings.Contains(a["detail"].(string), other.id) ||
		!strings.Contains(a["detail"].(string), "discount 20.00") {
		t.Fatalf("round trip alert %v", a)
	}
}
