package broker_test

import (
	"testing"
	"time"
)

// waitOrder polls an order until its status is want.
func (e *env) waitOrder(url, token, id, want string, within time.Duration) (resp, time.Duration) {
	e.t.Helper()
	start := time.Now()
	for {
		r := e.do(url, "GET", "/api/v1/orders/"+id, token, nil)
		if r.Status == 200 && r.str("status") == want {
			return r, time.Since(start)
		}
		if time.Since(start) > within {
			e.t.Fatalf("order %s is %q after %s, want %q: %s", id, r.str("status"), within, want, r.Raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRestingOrderFillsOnPriceCutAcrossProcesses: a gtc job rests on
// brokerd #1; a price cut made on brokerd #2 fills it within a second,
// exactly once.
func TestRestingOrderFillsOnPriceCutAcrossProcesses(t *testing.T) {
	restingFillsAcrossProcesses(t, newEnv(t))
}

func restingFillsAcrossProcesses(t *testing.T, e *env) {
	e.urls = append(e.urls, startProcess(t, e, "brokerd-rest"))
	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	s := e.account("sme", "S", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	off := e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.910b-64g", "cn-west", 16, "14.00")).str("id")

	job := map[string]any{"resource_class": "gpu.910b-64g", "units": 8, "hours": 10, "max_price": "13.00",
		"time_in_force": "gtc", "expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}
	o := e.must(201, "POST", "/api/v1/orders", s.token, job, "Idempotency-Key", "rest-1")
	if o.str("status") != "resting" || o.str("lease_id") != "" {
		t.Fatalf("gtc order: %s", o.Raw)
	}
	// The same key answers the same resting order.
	if again := e.must(201, "POST", "/api/v1/orders", s.token, job, "Idempotency-Key", "rest-1"); again.str("id") != o.str("id") {
		t.Fatalf("replay: %s", again.Raw)
	}
	// A cut that is still too dear leaves it resting.
	e.do(e.urls[1], "PATCH", "/api/v1/offers/"+off, p.token, map[string]any{"price": "13.50"})
	time.Sleep(300 * time.Millisecond)
	if r := e.must(200, "GET", "/api/v1/orders/"+o.str("id"), s.token, nil); r.str("status") != "resting" {
		t.Fatalf("filled above its limit: %s", r.Raw)
	}
	// The cut below the limit, on the other brokerd.
	cut := e.do(e.urls[1], "PATCH", "/api/v1/offers/"+off, p.token, map[string]any{"price": "12.80"})
	if cut.Status != 200 {
		t.Fatalf("price cut: %s", cut.Raw)
	}
	f, took := e.waitOrder(e.urls[1], s.token, o.str("id"), "filled", 5*time.Second)
	if took > time.Second {
		t.Errorf("the resting order filled %s after the cut, want < 1s", took)
	}
	if f.str("offer_id") != off || f.str("unit_price") != "12.80" || f.str("gross") != "1024.00" || f.str("lease_id") == "" {
		t.Fatalf("filled order: %s", f.Raw)
	}
	// Exactly once: one lease, units taken once, one trade.
	time.Sleep(500 * time.Millisecond)
	if ls := e.must(200, "GET", "/api/v1/leases", p.token, nil).Body["leases"].([]any); len(ls) != 1 {
		t.Fatalf("%d leases, want 1", len(ls))
	}
	if r := e.must(200, "GET", "/api/v1/offers/"+off, "", nil); r.num("units_free") != 8 {
		t.Fatalf("units_free %d, want 8", r.num("units_free"))
	}
	e.waitTrades(reg.token, 1)
}

func TestCancelOrders(t *testing.T) {
	e := newEnv(t)
	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	s := e.account("sme", "S", nil)
	other := e.account("sme", "T", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	off := e.must(201, "POST", "/api/v1/offers", p.token, offerBody("cpu.highmem", "cn-east", 100, "0.40")).str("id")
	prog := e.must(201, "POST", "/api/v1/programs", reg.token, programBody("P", "0.25", nil)).str("id")
	e.must(201, "POST", "/api/v1/vouchers", reg.token, map[string]any{"program_id": prog, "holder_id": s.id, "amount": "100.00"})
	balance := func() string {
		return e.must(200, "GET", "/api/v1/vouchers", s.token, nil).Body["vouchers"].([]any)[0].(map[string]any)["balance"].(string)
	}
	job := map[string]any{"resource_class": "cpu.highmem", "units": 40, "hours": 10}

	// 0.40 × 400 = 160.00 gross, 40.00 discount.
	o := e.must(201, "POST", "/api/v1/orders", s.token, job, "Idempotency-Key", "c1")
	if o.str("discount") != "40.00" || balance() != "60.00" {
		t.Fatalf("order %s, balance %s", o.Raw, balance())
	}
	if r := e.call("POST", "/api/v1/orders/"+o.str("id")+"/cancel", other.token, nil); r.Status != 404 {
		t.Fatalf("another SME cancelled: %d", r.Status)
	}
	c := e.must(200, "POST", "/api/v1/orders/"+o.str("id")+"/cancel", s.token, nil)
	if c.str("status") != "cancelled" {
		t.Fatalf("cancel: %s", c.Raw)
	}
	if b := balance(); b != "100.00" {
		t.Fatalf("voucher balance after cancel %s, want 100.00", b)
	}
	if r := e.must(200, "GET", "/api/v1/offers/"+off, "", nil); r.num("units_free") != 100 {
		t.Fatalf("units_free after cancel %d, want 100", r.num("units_free"))
	}
	// Cancelling again changes nothing.
	e.must(200, "POST", "/api/v1/orders/"+o.str("id")+"/cancel", s.token, nil)
	if b := balance(); b != "100.00" {
		t.Fatalf("second cancel moved the balance to %s", b)
	}

	// A started lease cannot be cancelled; the provider moves it along.
	o2 := e.must(201, "POST", "/api/v1/orders", s.token, job, "Idempotency-Key", "c2")
	lease := o2.str("lease_id")
	if r := e.call("POST", "/api/v1/leases/"+lease+"/complete", p.token, nil); r.Status != 409 {
		t.Fatalf("completing a reserved lease: %d %s", r.Status, r.Raw)
	}
	if r := e.must(200, "POST", "/api/v1/leases/"+lease+"/start", p.token, nil); r.str("status") != "started" {
		t.Fatalf("start: %s", r.Raw)
	}
	if r := e.call("POST", "/api/v1/orders/"+o2.str("id")+"/cancel", s.token, nil); r.Status != 409 || r.errCode() != "conflict" {
		t.Fatalf("cancel of a started order: %d %s", r.Status, r.Raw)
	}
	e.must(200, "POST", "/api/v1/leases/"+lease+"/complete", p.token, nil)
	if b := balance(); b != "60.00" {
		t.Fatalf("balance %s, want 60.00", b)
	}

	// A resting order stops resting when cancelled.
	gtc := map[string]any{"resource_class": "cpu.highmem", "units": 40, "hours": 10, "max_price": "0.10",
		"time_in_force": "gtc", "expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}
	r := e.must(201, "POST", "/api/v1/orders", s.token, gtc, "Idempotency-Key", "c3")
	if r.str("status") != "resting" {
		t.Fatalf("gtc: %s", r.Raw)
	}
	if c := e.must(200, "POST", "/api/v1/orders/"+r.str("id")+"/cancel", s.token, nil); c.str("status") != "cancelled" {
		t.Fatalf("cancel resting: %s", c.Raw)
	}
	e.must(200, "PATCH", "/api/v1/offers/"+off, p.token, map[string]any{"price": "0.05"})
	time.Sleep(500 * time.Millisecond)
	if g := e.must(200, "GET", "/api/v1/orders/"+r.str("id"), s.token, nil); g.str("status") != "cancelled" {
		t.Fatalf("a cancelled resting order filled: %s", g.Raw)
	}

	// A gtc order expires at its expires_at.
	short := map[string]any{"resource_class": "cpu.highmem", "units": 40, "hours": 10, "max_price": "0.01",
		"time_in_force": "gtc", "expires_at": time.Now().Add(2 * time.Second).UTC().Format(time.RFC3339Nano)}
	x := e.must(201, "POST", "/api/v1/orders", s.token, short, "Idempotency-Key", "c4")
	e.waitOrder(e.urls[0], s.token, x.str("id"), "expired", 6*time.Second)

	// gtc needs a sane expires_at.
	bad := map[string]any{"resource_class": "cpu.highmem", "units": 1, "hours": 1, "time_in_force": "gtc"}
	if r := e.call("POST", "/api/v1/orders", s.token, bad, "Idempotency-Key", "c5"); r.Status != 400 {
		t.Fatalf("gtc without expires_at: %d", r.Status)
	}
}
