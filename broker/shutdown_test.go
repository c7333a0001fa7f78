package broker_test

import (
	"context"
	"testing"
	"time"

	"computebroker/broker"
	"computebroker/history"
)

// TestShutdownFlushesHistory: a brokerd stopped right after an order drains
// the request and stores the pending trade in ClickHouse before it exits.
func TestShutdownFlushesHistory(t *testing.T) {
	e := &env{t: t, client: newEnvClient(), redis: testsvcRedis(t), ch: testsvcClickHouse(t)}
	cfg, err := broker.ConfigFromEnv(func(k string) string {
		return map[string]string{"BROKER_LISTEN": "127.0.0.1:0", "REDIS_URL": e.redis, "CLICKHOUSE_URL": e.ch,
			"BROKER_ADMIN_TOKEN": adminToken, "BROKER_VAR_DIR": t.TempDir()}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	m := broker.NewMain(cfg)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	<-m.Ready()
	e.urls = []string{"http://" + m.Addr()}

	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	s := e.account("sme", "S", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.l40s-48g", "cn-east", 8, "10.50"))
	o := e.must(201, "POST", "/api/v1/orders", s.token, map[string]any{"resource_class": "gpu.l40s-48g", "units": 2, "hours": 3}, "Idempotency-Key", "k")
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("brokerd did not stop in 30s")
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
