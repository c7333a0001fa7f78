package broker_test

import "testing"

// TestSplitFill: an allow_split job takes the cheapest set of offers of one
// region, all or nothing, and cancelling gives every part back.
func TestSplitFill(t *testing.T) {
	e := newEnv(t)
	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	q := e.account("provider", "Q", nil)
	s := e.account("sme", "S", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	e.must(200, "POST", "/api/v1/providers/"+q.id+"/approve", reg.token, nil)
	a := e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.a800-80g", "cn-south", 4, "10.00")).str("id")
	b := e.must(201, "POST", "/api/v1/offers", q.token, offerBody("gpu.a800-80g", "cn-south", 4, "10.50")).str("id")
	c := e.must(201, "POST", "/api/v1/offers", q.token, offerBody("gpu.a800-80g", "cn-south", 8, "12.00")).str("id")

	// Without splitting only C can take 8 units.
	whole := map[string]any{"resource_class": "gpu.a800-80g", "units": 8, "hours": 10}
	if q := e.must(200, "POST", "/api/v1/quotes", s.token, whole); q.str("offer_id") != c || q.str("gross") != "960.00" {
		t.Fatalf("whole quote: %s", q.Raw)
	}
	split := map[string]any{"resource_class": "gpu.a800-80g", "units": 8, "hours": 10, "allow_split": true}
	o := e.must(201, "POST", "/api/v1/orders", s.token, split, "Idempotency-Key", "split-1")
	parts, _ := o.Body["parts"].([]any)
	if o.str("status") != "filled" || o.str("gross") != "820.00" || len(parts) != 2 {
		t.Fatalf("split order: %s", o.Raw)
	}
	got := map[string]float64{}
	for _, x := range parts {
		m := x.(map[string]any)
		got[m["offer_id"].(string)] = m["units"].(float64)
		if m["lease_id"] == "" {
			t.Fatalf("part without lease: %v", m)
		}
	}
	if got[a] != 4 || got[b] != 4 {
		t.Fatalf("parts %v, want 4 from %s and 4 from %s", got, a, b)
	}
	for _, id := range []string{a, b} {
		if r := e.must(200, "GET", "/api/v1/offers/"+id, "", nil); r.num("units_free") != 0 {
			t.Fatalf("offer %s units_free %d, want 0", id, r.num("units_free"))
		}
	}
	if r := e.must(200, "GET", "/api/v1/offers/"+c, "", nil); r.num("units_free") != 8 {
		t.Fatalf("C was touched: %s", r.Raw)
	}
	// One trade per part reaches the history.
	trades := e.waitTrades(reg.token, 2)
	sum := 0.0
	for _, tr := range trades {
		if tr["order_id"] != o.str("id") {
			t.Fatalf("trade of another order: %v", tr)
		}
		sum += tr["units"].(float64)
	}
	if sum != 8 {
		t.Fatalf("trades carry %v units, want 8", sum)
	}
	// Cancelling returns every part's units.
	e.must(200, "POST", "/api/v1/orders/"+o.str("id")+"/cancel", s.token, nil)
	for _, id := range []string{a, b} {
		if r := e.must(200, "GET", "/api/v1/offers/"+id, "", nil); r.num("units_free") != 4 {
			t.Fatalf("offer %s units_free %d after cancel, want 4", id, r.num("units_free"))
		}
	}
	// All or nothing: 17 units cannot be had from the 16 listed.
	nine := map[string]any{"resource_class": "gpu.a800-80g", "units": 17, "hours": 1, "allow_split": true}
	if r := e.call("POST", "/api/v1/orders", s.token, nine, "Idempotency-Key", "split-2"); r.Status != 409 || r.errCode() != "no_match" {
		t.Fatalf("17 units from 16 listed: %d %s", r.Status, r.Raw)
	}
}
