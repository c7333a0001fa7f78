package broker_test

import (
	"fmt"
	"testing"
	"time"

	"computebroker/internal/testsvc"
)

// TestSubsidyGuardUsesMarketReference: once the market has unsubsidised
// trades, an offer listed more than 25% above their VWAP gets no voucher,
// even though it never moved from its own list price.
func TestSubsidyGuardUsesMarketReference(t *testing.T) {
	e := &env{t: t, client: newEnvClient(), redis: testsvc.Redis(t), ch: testsvc.ClickHouse(t),
		env: map[string]string{"BROKER_REFERENCE_REFRESH": "200ms"}}
	e.urls = append(e.urls, startInProcess(t, e))
	reg := e.account("regulator", "R", nil)
	a := e.account("provider", "A", nil)
	b := e.account("provider", "B", nil)
	payer := e.account("sme", "Payer", nil)
	holder := e.account("sme", "Holder", nil)
	e.must(200, "POST", "/api/v1/providers/"+a.id+"/approve", reg.token, nil)
	e.must(200, "POST", "/api/v1/providers/"+b.id+"/approve", reg.token, nil)
	prog := e.must(201, "POST", "/api/v1/programs", reg.token, programBody("P", "0.30", nil)).str("id")
	e.must(201, "POST", "/api/v1/vouchers", reg.token, map[string]any{"program_id": prog, "holder_id": holder.id, "amount": "1000.00"})

	// The market trades at 10.00 without vouchers; A's capacity sells out.
	e.must(201, "POST", "/api/v1/offers", a.token, offerBody("gpu.l40s-48g", "cn-west", 3, "10.00"))
	for i := 0; i < 3; i++ {
		e.must(201, "POST", "/api/v1/orders", payer.token, map[string]any{"resource_class": "gpu.l40s-48g", "units": 1, "hours": 10},
			"Idempotency-Key", fmt.Sprint("pay-", i))
	}
	// B lists at 12.60, 26% above the market: at its own list price the old
	// guard would let the voucher pay.
	bid := e.must(201, "POST", "/api/v1/offers", b.token, offerBody("gpu.l40s-48g", "cn-west", 8, "12.60")).str("id")
	job := map[string]any{"resource_class": "gpu.l40s-48g", "units": 1, "hours": 10}
	deadline := time.Now().Add(15 * time.Second)
	for {
		q := e.must(200, "POST", "/api/v1/quotes", holder.token, job)
		if q.str("gross") != "126.00" {
			t.Fatalf("quote %s", q.Raw)
		}
		if q.str("discount") == "0.00" && q.Body["voucher_id"] == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the voucher still pays 26%% above the market's reference: %s", q.Raw)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// At 12.40 (24% above) the voucher pays again.
	e.must(200, "PATCH", "/api/v1/offers/"+bid, b.token, map[string]any{"price": "12.40"})
	if q := e.must(200, "POST", "/api/v1/quotes", holder.token, job); q.str("discount") != "37.20" {
		t.Fatalf("at 24%% above the reference: %s", q.Raw)
	}
}
