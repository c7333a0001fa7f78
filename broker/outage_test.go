package broker_test

import (
	"strings"
	"testing"
	"time"

	"computebroker/internal/testsvc"
)

func hostPort(url string) string {
	rest := url[strings.Index(url, "://")+3:]
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return rest[:i]
	}
	return rest
}

func (e *env) waitReady(want int, within time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		r := e.call("GET", "/readyz", "", nil)
		if r.Status == want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("/readyz answers %d, want %d: %s", r.Status, want, r.Raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestClickHouseOutage: /readyz is 503 while ClickHouse is down, orders go on
// (the trade stream in Redis is the commit), and every trade made during the
// outage reaches ClickHouse exactly once after it.
func TestClickHouseOutage(t *testing.T) {
	e := &env{t: t, client: newEnvClient()}
	e.redis = testsvc.Redis(t)
	ch := testsvc.ClickHouse(t)
	px := testsvc.NewProxy(t, hostPort(ch))
	e.ch = strings.Replace(ch, hostPort(ch), px.Addr(), 1)
	e.urls = append(e.urls, startInProcess(t, e))

	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	s := e.account("sme", "S", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	e.must(201, "POST", "/api/v1/offers", p.token, offerBody("cpu.standard", "cn-north", 1000, "0.25"))
	job := map[string]any{"resource_class": "cpu.standard", "units": 10, "hours": 10}
	e.must(201, "POST", "/api/v1/orders", s.token, job, "Idempotency-Key", "before")
	e.waitReady(200, 5*time.Second)

	px.SetDown(true)
	e.waitReady(503, 10*time.Second)
	for _, k := range []string{"during-1", "during-2", "during-3"} {
		e.must(201, "POST", "/api/v1/orders", s.token, job, "Idempotency-Key", k)
	}
	if r := e.call("GET", "/api/v1/analytics/trades", reg.token, nil); r.Status != 503 || r.errCode() != "unavailable" {
		t.Fatalf("trades during the outage: %d %s", r.Status, r.Raw)
	}
	time.Sleep(1500 * time.Millisecond) // the writer tries, fails, keeps the batch
	px.SetDown(false)
	e.waitReady(200, 15*time.Second)
	trades := e.waitTrades(reg.token, 4)
	ids := map[string]bool{}
	for _, tr := range trades {
		ids[tr["id"].(string)] = true
	}
	if len(ids) != 4 {
		t.Fatalf("%d distinct trades in history, want 4", len(ids))
	}
}

// TestRedisOutageReadiness: /readyz is 503 while Redis is down and recovers.
func TestRedisOutageReadiness(t *testing.T) {
	e := &env{t: t, client: newEnvClient()}
	redisURL := testsvc.Redis(t)
	px := testsvc.NewProxy(t, hostPort(redisURL))
	e.redis = strings.Replace(redisURL, hostPort(redisURL), px.Addr(), 1)
	e.ch = testsvc.ClickHouse(t)
	e.urls = append(e.urls, startInProcess(t, e))
	e.waitReady(200, 5*time.Second)
	px.SetDown(true)
	e.waitReady(503, 10*time.Second)
	if s := e.call("GET", "/api/v1/offers", "", nil); s.Status != 503 || s.errCode() != "unavailable" {
		t.Fatalf("offers while Redis is down: %d %s", s.Status, s.Raw)
	}
	px.SetDown(false)
	e.waitReady(200, 15*time.Second)
	e.must(200, "GET", "/api/v1/offers", "", nil)
}
