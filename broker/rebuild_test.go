package broker_test

import (
	"testing"
	"time"

	"computebroker/internal/testsvc"
)

// TestBooksAndRestingJobsRebuiltAtStart: a brokerd that starts after the
// market exists loads the offers into its books and the resting jobs into its
// engine from Redis: with the first brokerd gone, it quotes the offers and
// fills the resting job on a price cut.
func TestBooksAndRestingJobsRebuiltAtStart(t *testing.T) {
	e := &env{t: t, client: newEnvClient(), redis: testsvc.Redis(t), ch: testsvc.ClickHouse(t)}
	url, stop := startStoppable(t, e)
	e.urls = []string{url}

	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	s := e.account("sme", "S", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	cheap := e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.h20-96g", "cn-east", 8, "15.00")).str("id")
	dear := e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.h20-96g", "cn-east", 8, "17.00")).str("id")
	gtc := map[string]any{"resource_class": "gpu.h20-96g", "units": 8, "hours": 2, "max_price": "14.00",
		"time_in_force": "gtc", "expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}
	o := e.must(201, "POST", "/api/v1/orders", s.token, gtc, "Idempotency-Key", "rest")
	if o.str("status") != "resting" {
		t.Fatalf("gtc: %s", o.Raw)
	}
	if err := stop(); err != nil {
		t.Fatalf("first brokerd: %v", err)
	}

	// Only the new brokerd runs now.
	e.urls = []string{startProcess(t, e, "brokerd-late")}
	q := e.must(200, "POST", "/api/v1/quotes", s.token, map[string]any{"resource_class": "gpu.h20-96g", "units": 8, "hours": 2})
	if q.str("offer_id") != cheap || q.str("gross") != "240.00" {
		t.Fatalf("quote from rebuilt books: %s", q.Raw)
	}
	alts, _ := q.Body["alternatives"].([]any)
	if len(alts) != 1 || alts[0].(map[string]any)["offer_id"] != dear {
		t.Fatalf("alternatives: %v", alts)
	}
	e.must(200, "PATCH", "/api/v1/offers/"+dear, p.token, map[string]any{"price": "13.90"})
	f, _ := e.waitOrder(e.urls[0], s.token, o.str("id"), "filled", 5*time.Second)
	if f.str("offer_id") != dear || f.str("unit_price") != "13.90" {
		t.Fatalf("filled: %s", f.Raw)
	}
}
