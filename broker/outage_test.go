package broker_test

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// proxy forwards loopback TCP to a service and can cut every connection and
// refuse new ones, to play an outage.
type proxy struct {
	t        *testing.T
	ln       net.Listener
	upstream string
	mu       sync.Mutex
	down     bool
	conns    []net.Conn
}

func newProxy(t *testing.T, upstream string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln, upstream: upstream}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.cut() })
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(u, c); u.Close() }()
		go func() { _, _ = io.Copy(c, u); c.Close() }()
	}
}

// cut closes every connection and refuses new ones until restore.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

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
	e.redis = testsvcRedis(t)
	ch := testsvcClickHouse(t)
	px := newProxy(t, hostPort(ch))
	e.ch = strings.Replace(ch, hostPort(ch), px.addr(), 1)
	e.urls = append(e.urls, startInProcess(t, e))

	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	s := e.account("sme", "S", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	e.must(201, "POST", "/api/v1/offers", p.token, offerBody("cpu.standard", "cn-north", 1000, "0.25"))
	job := map[string]any{"resource_class": "cpu.standard", "units": 10, "hours": 10}
	e.must(201, "POST", "/api/v1/orders", s.token, job, "Idempotency-Key", "before")
	e.waitReady(200, 5*time.Second)

	px.cut()
	e.waitReady(503, 10*time.Second)
	for _, k := range []string{"during-1", "during-2", "during-3"} {
		e.must(201, "POST", "/api/v1/orders", s.token, job, "Idempotency-Key", k)
	}
	if r := e.call("GET", "/api/v1/analytics/trades", reg.token, nil); r.Status != 503 || r.errCode() != "unavailable" {
		t.Fatalf("trades during the outage: %d %s", r.Status, r.Raw)
	}
	time.Sleep(1500 * time.Millisecond) // the writer tries, fails, keeps the batch
	px.restore()
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
	redisURL := testsvcRedis(t)
	px := newProxy(t, hostPort(redisURL))
	e.redis = strings.Replace(redisURL, hostPort(redisURL), px.addr(), 1)
	e.ch = testsvcClickHouse(t)
	e.urls = append(e.urls, startInProcess(t, e))
	e.waitReady(200, 5*time.Second)
	px.cut()
	e.waitReady(503, 10*time.Second)
	s := e.call("GET", "/api/v1/offers", "", nil)
	if s.Status != 503 && s.Status != 200 {
		t.Fatalf("offers while Redis is down: %d %s", s.Status, s.Raw)
	}
	px.restore()
	e.waitReady(200, 15*time.Second)
	e.must(200, "GET", "/api/v1/offers", "", nil)
}
