package broker_test

import (
	"context"
	"testing"

	"computebroker/history"
	"computebroker/internal/testsvc"
)

// TestShutdownFlushesHistory: a brokerd stopped right after an order drains
// the request and stores the pending trade in ClickHouse before it exits.
func TestShutdownFlushesHistory(t *testing.T) {
	e := &env{t: t, client: newEnvClient(), redis: testsvc.Redis(t), ch: testsvc.ClickHouse(t)}
	url, stop := startStoppable(t, e)
	e.urls = []string{url}

	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	s := e.account("sme", "S", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.l40s-48g", "cn-east", 8, "10.50"))
	o := e.must(201, "POST", "/api/v1/orders", s.token, map[string]any{"resource_class": "gpu.l40s-48g", "units": 2, "hours": 3}, "Idempotency-Key", "k")
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	// No brokerd runs now: what is in ClickHouse was flushed on the way out.
	h, err := history.Open(context.Background(), e.ch)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	trades, _, err := h.Trades(context.Background(), history.TradeFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(trades) != 1 || trades[0].OrderID != o.str("id") || trades[0].Gross.StringFixed(2) != "63.00" {
		t.Fatalf("history after shutdown: %+v", trades)
	}
}
