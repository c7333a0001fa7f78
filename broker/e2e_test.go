package broker_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"computebroker/history"
)

func programBody(name, rate string, providers []string) map[string]any {
	return map[string]any{
		"name": name, "rate": rate, "per_order_cap": "5000.00", "annual_cap_per_company": "2000000.00",
		"budget": "1000000.00", "valid_from": "2026-01-01T00:00:00Z", "valid_to": "2030-01-01T00:00:00Z",
		"resource_classes": []string{}, "regions": []string{}, "providers": providers,
	}
}

func offerBody(class, region string, units int, price string) map[string]any {
	return map[string]any{"resource_class": class, "region": region, "units": units, "price": price, "max_hours": 720}
}

func offerIDs(r resp) []string {
	var ids []string
	for _, o := range r.Body["offers"].([]any) {
		ids = append(ids, o.(map[string]any)["id"].(string))
	}
	return ids
}

// waitTrades polls the trade history until it holds n trades.
func (e *env) waitTrades(token string, n int) []map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := e.must(200, "GET", "/api/v1/analytics/trades?limit=1000", token, nil)
		ts := r.Body["trades"].([]any)
		if len(ts) >= n || time.Now().After(deadline) {
			if len(ts) != n {
				e.t.Fatalf("history holds %d trades, want %d: %s", len(ts), n, r.Raw)
			}
			out := make([]map[string]any, len(ts))
			for i, t := range ts {
				out[i] = t.(map[string]any)
			}
			return out
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestWalkingSkeleton drives the whole marketplace over HTTP: accounts,
// approval, offers, a provider-scoped programme, the cheapest-net order with
// exact amounts, and the same trade in ClickHouse.
func TestWalkingSkeleton(t *testing.T) { walkingSkeleton(t, newEnv(t)) }

// TestOnRedisCluster runs the walking skeleton, the streams across two
// brokerd, a resting fill across processes, the pipelined provider stream
// and the price-tick history on a Redis Cluster of three masters: every
// atomic step touches one slot, and the live view follows streams spread
// over the nodes.
func TestOnRedisCluster(t *testing.T) {
	for _, c := range []struct {
		name string
		run  func(*testing.T, *env)
	}{
		{"walking skeleton", walkingSkeleton}, {"pipelined provider stream", providerPipelined},
		{"ticks reach history", priceTicksReachHistory}, {"stream across brokers", streamAcrossBrokers},
		{"resting fill across processes", restingFillsAcrossProcesses},
	} {
		t.Run(c.name, func(t *testing.T) { c.run(t, newClusterEnv(t)) })
	}
}

func walkingSkeleton(t *testing.T, e *env) {
	reg := e.account("regulator", "Shanghai Economic Commission", nil)
	pa := e.account("provider", "Alpha Compute", map[string]any{"related_party_keys": []string{"tax:alpha"}})
	pb := e.account("provider", "Beta Cloud", map[string]any{"certifications": []string{"mlps-3"}})
	pc := e.account("provider", "Gamma Unapproved", nil)
	s1 := e.account("sme", "Little Model Co", map[string]any{"size": "small", "region": "cn-east"})
	s2 := e.account("sme", "Alpha Subsidiary", map[string]any{"size": "micro", "related_party_keys": []string{"tax:alpha"}})

	e.must(200, "POST", "/api/v1/providers/"+pa.id+"/approve", reg.token, nil)
	r := e.must(200, "POST", "/api/v1/providers/"+pb.id+"/approve", reg.token, nil)
	if r.str("status") != "approved" || r.str("id") != pb.id {
		t.Fatalf("approve answered %s", r.Raw)
	}

	const class = "gpu.h100-80g"
	oc := e.must(201, "POST", "/api/v1/offers", pc.token, offerBody(class, "cn-east", 8, "15.00")).str("id")
	oa := e.must(201, "POST", "/api/v1/offers", pa.token, offerBody(class, "cn-east", 8, "20.00"))
	ob := e.must(201, "POST", "/api/v1/offers", pb.token, offerBody(class, "cn-north", 8, "21.9999"))
	if oa.str("status") != "active" || oa.num("units_free") != 8 || oa.num("version") != 1 || oa.str("price") != "20.00" {
		t.Fatalf("offer answered %s", oa.Raw)
	}

	// The unapproved provider's cheapest offer is never listed.
	list := e.must(200, "GET", "/api/v1/offers?resource_class="+class, "", nil)
	ids := offerIDs(list)
	if strings.Join(ids, ",") != oa.str("id")+","+ob.str("id") {
		t.Fatalf("listed %v, want [%s %s] (cheapest first, no unapproved)", ids, oa.str("id"), ob.str("id"))
	}

	// A programme scoped to provider B and a voucher for s1.
	prog := e.must(201, "POST", "/api/v1/programs", reg.token, programBody("Beta pilot", "0.3333", []string{pb.id}))
	v := e.must(201, "POST", "/api/v1/vouchers", reg.token, map[string]any{
		"program_id": prog.str("id"), "holder_id": s1.id, "amount": "1000.00", "expires_at": "2029-06-30T00:00:00Z"})
	if v.str("balance") != "1000.00" || v.str("amount") != "1000.00" {
		t.Fatalf("voucher answered %s", v.Raw)
	}

	job := map[string]any{"resource_class": class, "units": 4, "hours": 10}
	// Without the voucher A is cheaper: 800.00 against 880.00.
	q := e.must(200, "POST", "/api/v1/quotes", s2.token, job)
	if q.str("offer_id") != oa.str("id") || q.str("gross") != "800.00" || q.str("net") != "800.00" {
		t.Fatalf("s2 quote %s", q.Raw)
	}
	// With it, B's dearer offer nets less: gross round(21.9999×40)=880.00,
	// discount floor(0.3333×880.00)=293.30, net 586.70.
	q = e.must(200, "POST", "/api/v1/quotes", s1.token, job)
	if q.str("offer_id") != ob.str("id") || q.str("gross") != "880.00" || q.str("discount") != "293.30" || q.str("net") != "586.70" {
		t.Fatalf("s1 quote %s", q.Raw)
	}

	o := e.must(201, "POST", "/api/v1/orders", s1.token, job, "Idempotency-Key", "order-1")
	want := map[string]string{"status": "filled", "offer_id": ob.str("id"), "provider_id": pb.id, "unit_price": "21.9999",
		"gross": "880.00", "discount": "293.30", "net": "586.70", "voucher_id": v.str("id"), "program_id": prog.str("id")}
	for k, w := range want {
		if got := o.str(k); got != w {
			t.Errorf("order %s = %q, want %q", k, got, w)
		}
	}
	if o.str("lease_id") == "" || o.num("units") != 4 || o.num("hours") != 10 {
		t.Fatalf("order %s", o.Raw)
	}
	// The same key returns the same order and charges once.
	o2 := e.must(201, "POST", "/api/v1/orders", s1.token, job, "Idempotency-Key", "order-1")
	if o2.str("id") != o.str("id") || o2.str("net") != o.str("net") {
		t.Fatalf("replay gave %s, first %s", o2.Raw, o.Raw)
	}
	// The same key with another job is a conflict.
	other := map[string]any{"resource_class": class, "units": 1, "hours": 10}
	if c := e.call("POST", "/api/v1/orders", s1.token, other, "Idempotency-Key", "order-1"); c.Status != 409 || c.errCode() != "conflict" {
		t.Fatalf("reused key: %d %s", c.Status, c.Raw)
	}
	vs := e.must(200, "GET", "/api/v1/vouchers", s1.token, nil).Body["vouchers"].([]any)
	if len(vs) != 1 || vs[0].(map[string]any)["balance"] != "706.70" {
		t.Fatalf("vouchers after order: %v", vs)
	}
	if off := e.must(200, "GET", "/api/v1/offers/"+ob.str("id"), "", nil); off.num("units_free") != 4 || off.num("version") != 2 {
		t.Fatalf("offer after order: %s", off.Raw)
	}

	// s2 shares a related-party key with A only; it pays list price at A.
	o3 := e.must(201, "POST", "/api/v1/orders", s2.token, job, "Idempotency-Key", "order-1")
	if o3.str("offer_id") != oa.str("id") || o3.str("discount") != "0.00" || o3.str("net") != "800.00" || o3.Body["voucher_id"] != nil {
		t.Fatalf("s2 order %s", o3.Raw)
	}

	// Who sees an order.
	e.must(200, "GET", "/api/v1/orders/"+o.str("id"), s1.token, nil)
	e.must(200, "GET", "/api/v1/orders/"+o.str("id"), pb.token, nil)
	e.must(200, "GET", "/api/v1/orders/"+o.str("id"), reg.token, nil)
	if r := e.call("GET", "/api/v1/orders/"+o.str("id"), s2.token, nil); r.Status != 404 {
		t.Fatalf("another SME read the order: %d", r.Status)
	}
	if r := e.call("GET", "/api/v1/orders/"+o.str("id"), pa.token, nil); r.Status != 404 {
		t.Fatalf("another provider read the order: %d", r.Status)
	}
	if os := e.must(200, "GET", "/api/v1/orders", s1.token, nil).Body["orders"].([]any); len(os) != 1 {
		t.Fatalf("s1 lists %d orders", len(os))
	}
	if ls := e.must(200, "GET", "/api/v1/leases", pb.token, nil).Body["leases"].([]any); len(ls) != 1 {
		t.Fatalf("B lists %d leases", len(ls))
	}

	// The trades reach ClickHouse with the same amounts, once each.
	trades := e.waitTrades(reg.token, 2)
	var tb map[string]any
	for _, tr := range trades {
		if tr["order_id"] == o.str("id") {
			tb = tr
		}
	}
	if tb == nil {
		t.Fatalf("trade of order %s not in history: %v", o.str("id"), trades)
	}
	for k, w := range map[string]any{"provider_id": pb.id, "sme_id": s1.id, "resource_class": class, "region": "cn-north",
		"unit_price": "21.9999", "gross": "880.00", "discount": "293.30", "net": "586.70", "voucher_id": v.str("id"),
		"program_id": prog.str("id"), "units": float64(4), "hours": float64(10)} {
		if tb[k] != w {
			t.Errorf("history trade %s = %v, want %v", k, tb[k], w)
		}
	}
	csv := e.must(200, "GET", "/api/v1/analytics/trades?format=csv&region=cn-north", reg.token, nil)
	lines := strings.Split(strings.TrimSpace(string(csv.Raw)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "id,order_id,provider_id,sme_id,") || !strings.Contains(lines[1], ",880.00,293.30,586.70,") {
		t.Fatalf("csv:\n%s", csv.Raw)
	}
	if r := e.call("GET", "/api/v1/analytics/trades", s1.token, nil); r.Status != 403 {
		t.Fatalf("an SME read the trade history: %d", r.Status)
	}

	// Suspension takes B's offers out of the list and the matching at once.
	e.must(200, "POST", "/api/v1/providers/"+pb.id+"/suspend", reg.token, nil)
	if ids := offerIDs(e.must(200, "GET", "/api/v1/offers?resource_class="+class, "", nil)); len(ids) != 1 || ids[0] != oa.str("id") {
		t.Fatalf("after suspension listed %v", ids)
	}
	if q := e.must(200, "POST", "/api/v1/quotes", s1.token, job); q.str("offer_id") != oa.str("id") {
		t.Fatalf("after suspension quoted %s", q.Raw)
	}
	// C was never approved: its offer is never matched, even at any price.
	cheap := map[string]any{"resource_class": class, "units": 8, "hours": 1, "max_price": "16.00"}
	if r := e.call("POST", "/api/v1/quotes", s1.token, cheap); r.Status != 409 || r.errCode() != "no_match" {
		t.Fatalf("quote that only C could serve: %d %s", r.Status, r.Raw)
	}
	if r := e.call("POST", "/api/v1/orders", s1.token, cheap, "Idempotency-Key", "cheap"); r.Status != 409 || r.errCode() != "no_match" {
		t.Fatalf("order that only C could serve: %d %s", r.Status, r.Raw)
	}
	if off := e.must(200, "GET", "/api/v1/offers/"+oc, "", nil); off.num("units_free") != 8 {
		t.Fatalf("C's offer was touched: %s", off.Raw)
	}
}

// TestNoMatchReasons checks that a failed quote says why per reason.
func TestNoMatchReasons(t *testing.T) {
	e := newEnv(t)
	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	s := e.account("sme", "S", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	e.must(201, "POST", "/api/v1/offers", p.token, offerBody("cpu.standard", "cn-west", 64, "0.24"))
	e.must(201, "POST", "/api/v1/offers", p.token, offerBody("cpu.standard", "cn-west", 8, "0.20"))
	r := e.call("POST", "/api/v1/quotes", s.token, map[string]any{"resource_class": "cpu.standard", "units": 32, "hours": 2, "max_price": "0.22"})
	if r.Status != 409 || r.errCode() != "no_match" {
		t.Fatalf("quote: %d %s", r.Status, r.Raw)
	}
	reasons := r.Body["error"].(map[string]any)["reasons"].(map[string]any)
	if reasons["over_max_price"] != float64(1) || reasons["too_few_units"] != float64(1) {
		t.Fatalf("reasons %v", reasons)
	}
}

func TestTokenRotationAndRevocation(t *testing.T) {
	e := newEnv(t)
	s := e.account("sme", "S", nil)
	e.must(200, "GET", "/api/v1/vouchers", s.token, nil)
	nt := e.must(200, "POST", "/api/v1/accounts/"+s.id+"/rotate-token", s.token, nil).str("token")
	if r := e.call("GET", "/api/v1/vouchers", s.token, nil); r.Status != 401 {
		t.Fatalf("old token still works: %d", r.Status)
	}
	e.must(200, "GET", "/api/v1/vouchers", nt, nil)
	e.must(200, "POST", "/api/v1/accounts/"+s.id+"/revoke", adminToken, nil)
	if r := e.call("GET", "/api/v1/vouchers", nt, nil); r.Status != 401 || r.errCode() != "unauthenticated" {
		t.Fatalf("revoked token: %d %s", r.Status, r.Raw)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	e := newEnv(t)
	e.must(200, "GET", "/healthz", "", nil)
	e.must(200, "GET", "/readyz", "", nil)
	rc := e.must(200, "GET", "/api/v1/resource-classes", "", nil).Body["resource_classes"].([]any)
	found := map[string]bool{}
	for _, c := range rc {
		found[c.(map[string]any)["id"].(string)] = true
	}
	for _, want := range []string{"gpu.h100-80g", "gpu.a800-80g", "gpu.h20-96g", "gpu.910b-64g", "gpu.l40s-48g", "gpu.rtx4090-24g", "cpu.standard", "cpu.highmem"} {
		if !found[want] {
			t.Errorf("resource class %s missing", want)
		}
	}
	if regs := e.must(200, "GET", "/api/v1/regions", "", nil).Body["regions"].([]any); len(regs) < 4 {
		t.Errorf("regions: %v", regs)
	}
	m := e.call("GET", "/metrics", "", nil)
	for _, series := range []string{"broker_http_request_duration_seconds", "broker_history_lag_seconds",
		// what only grows is a counter, so rate() and increase() take it
		"# TYPE broker_offer_updates_predicted_total counter", "# TYPE broker_offer_updates_mispredicted_total counter",
		"# TYPE broker_offer_update_batches_total counter", "# TYPE broker_offer_updates_batched_total counter",
		"# TYPE broker_history_trimmed_total counter", "# TYPE broker_history_pending gauge"} {
		if !strings.Contains(string(m.Raw), series) {
			t.Errorf("/metrics lacks %s", series)
		}
	}
	if r := e.call("GET", "/api/v1/nope", "", nil); r.Status != 404 || r.errCode() != "not_found" {
		t.Errorf("unknown path: %d %s", r.Status, r.Raw)
	}
	e.must(200, "GET", "/api/v1/openapi.json", "", nil)
}

func TestOfferPagination(t *testing.T) {
	e := newEnv(t)
	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	for i := 0; i < 25; i++ {
		e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.l40s-48g", "cn-south", 8, fmt.Sprintf("%d.50", 5+i%7)))
	}
	var got []string
	cursor := ""
	for pages := 0; pages < 10; pages++ {
		r := e.must(200, "GET", "/api/v1/offers?resource_class=gpu.l40s-48g&limit=10&cursor="+url.QueryEscape(cursor), "", nil)
		got = append(got, offerIDs(r)...)
		cursor = r.str("next_cursor")
		if cursor == "" {
			break
		}
	}
	if len(got) != 25 {
		t.Fatalf("paged %d offers, want 25", len(got))
	}
	seen := map[string]bool{}
	for _, id := range got {
		if seen[id] {
			t.Fatalf("offer %s paged twice", id)
		}
		seen[id] = true
	}
	if r := e.call("GET", "/api/v1/offers?cursor=garbage", "", nil); r.Status != 400 {
		t.Fatalf("bad cursor: %d", r.Status)
	}
}

// TestPriceTicksReachHistory: every accepted price of a listed offer (the
// first listing and each change) becomes a price tick in ClickHouse.
func TestPriceTicksReachHistory(t *testing.T) { priceTicksReachHistory(t, newEnv(t)) }

func priceTicksReachHistory(t *testing.T, e *env) {
	reg := e.account("regulator", "R", nil)
	p := e.account("provider", "P", nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	id := e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.h20-96g", "cn-north", 16, "16.00")).str("id")
	e.must(200, "PATCH", "/api/v1/offers/"+id, p.token, map[string]any{"price": "15.5000"})
	e.must(200, "PATCH", "/api/v1/offers/"+id, p.token, map[string]any{"units": 20}) // not a price change
	e.must(200, "PATCH", "/api/v1/offers/"+id, p.token, map[string]any{"price": "15.25"})

	h, err := history.Open(context.Background(), e.ch)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ticks, err := h.OfferTicks(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if len(ticks) == 3 {
			want := []struct {
				price   string
				version int64
				free    int64
			}{{"16", 1, 16}, {"15.5", 2, 16}, {"15.25", 4, 20}}
			for i, w := range want {
				if ticks[i].Price.String() != w.price || ticks[i].Version != w.version || ticks[i].UnitsFree != w.free || ticks[i].ProviderID != p.id || ticks[i].Region != "cn-north" {
					t.Errorf("tick %d = %+v, want price %s version %d free %d", i, ticks[i], w.price, w.version, w.free)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("history holds %d ticks of %s, want 3: %+v", len(ticks), id, ticks)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
