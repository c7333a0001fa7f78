package broker_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/shopspring/decimal"
)

// TestConcurrentCheckoutTwoProcesses: 50 parallel one-unit orders against an
// offer of 10 units, split across two brokerd processes on one Redis, fill
// exactly 10; the voucher they share never pays out more than its amount.
func TestConcurrentCheckoutTwoProcesses(t *testing.T) {
	e := newEnv(t)
	e.urls = append(e.urls, startProcess(t, e, "brokerd-2"))
	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	off := e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.a800-80g", "cn-east", 10, "10.00")).str("id")
	prog := e.must(201, "POST", "/api/v1/programs", reg.token, programBody("Half", "0.50", nil)).str("id")
	// Five SMEs share the load; the first holds a voucher worth four orders.
	var smes []account
	for i := 0; i < 5; i++ {
		smes = append(smes, e.account("sme", fmt.Sprintf("S%d", i), nil))
	}
	e.must(201, "POST", "/api/v1/vouchers", reg.token, map[string]any{"program_id": prog, "holder_id": smes[0].id, "amount": "100.00"})

	const n = 50
	results := make([]resp, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			job := map[string]any{"resource_class": "gpu.a800-80g", "units": 1, "hours": 5}
			results[i] = e.do(e.urls[i%2], "POST", "/api/v1/orders", smes[i%5].token, job, "Idempotency-Key", fmt.Sprintf("k-%d", i))
		}(i)
	}
	wg.Wait()
	filled, noMatch := 0, 0
	discount := decimal.Zero
	for _, r := range results {
		switch {
		case r.Status == 201:
			filled++
			if r.str("gross") != "50.00" {
				t.Errorf("gross %s", r.str("gross"))
			}
			discount = discount.Add(decimal.RequireFromString(r.str("discount")))
		case r.Status == 409 && r.errCode() == "no_match":
			noMatch++
		default:
			t.Errorf("unexpected answer %d %s", r.Status, r.Raw)
		}
	}
	if filled != 10 || noMatch != 40 {
		t.Fatalf("filled %d, no_match %d; want 10 and 40", filled, noMatch)
	}
	if o := e.must(200, "GET", "/api/v1/offers/"+off, "", nil); o.num("units_free") != 0 {
		t.Fatalf("units_free %d, want 0", o.num("units_free"))
	}
	vs := e.must(200, "GET", "/api/v1/vouchers", smes[0].token, nil).Body["vouchers"].([]any)
	balance := decimal.RequireFromString(vs[0].(map[string]any)["balance"].(string))
	if balance.IsNegative() || !balance.Add(discount).Equal(decimal.RequireFromString("100.00")) {
		t.Fatalf("voucher balance %s after discounts of %s; want balance + discounts = 100.00", balance, discount)
	}
	// Every trade reaches ClickHouse exactly once, whichever process sold it.
	trades := e.waitTrades(reg.token, 10)
	ids := map[string]bool{}
	for _, tr := range trades {
		ids[tr["id"].(string)] = true
	}
	if len(ids) != 10 {
		t.Fatalf("history holds %d distinct trades, want 10", len(ids))
	}
}

// TestVoucherNeverOverdrawn: parallel orders of one SME on one voucher, on
// plenty of capacity, take exactly its amount and no more.
func TestVoucherNeverOverdrawn(t *testing.T) {
	e := newEnv(t)
	e.urls = append(e.urls, startProcess(t, e, "brokerd-v2"))
	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	s := e.account("sme", "S", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.rtx4090-24g", "cn-south", 1000, "2.50"))
	prog := e.must(201, "POST", "/api/v1/programs", reg.token, programBody("Forty", "0.40", nil)).str("id")
	e.must(201, "POST", "/api/v1/vouchers", reg.token, map[string]any{"program_id": prog, "holder_id": s.id, "amount": "100.00"})

	// Each order: 2.50 × 4 × 10 = 100.00 gross, 40.00 discount; the voucher
	// pays two in full and 20.00 of a third.
	const n = 30
	results := make([]resp, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			job := map[string]any{"resource_class": "gpu.rtx4090-24g", "units": 4, "hours": 10}
			results[i] = e.do(e.urls[i%2], "POST", "/api/v1/orders", s.token, job, "Idempotency-Key", fmt.Sprintf("v-%d", i))
		}(i)
	}
	wg.Wait()
	total := decimal.Zero
	for _, r := range results {
		if r.Status != 201 {
			t.Fatalf("order failed: %d %s", r.Status, r.Raw)
		}
		d := decimal.RequireFromString(r.str("discount"))
		net := decimal.RequireFromString(r.str("net"))
		if !d.Add(net).Equal(decimal.RequireFromString("100.00")) {
			t.Errorf("discount %s + net %s != gross 100.00", d, net)
		}
		total = total.Add(d)
	}
	if !total.Equal(decimal.RequireFromString("100.00")) {
		t.Fatalf("discounts total %s, want exactly the voucher's 100.00", total)
	}
	vs := e.must(200, "GET", "/api/v1/vouchers", s.token, nil).Body["vouchers"].([]any)
	if b := vs[0].(map[string]any)["balance"]; b != "0.00" {
		t.Fatalf("voucher balance %v, want 0.00", b)
	}
}
