package broker_test

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"computebroker/broker/hub"
)

// approvedProvider creates and approves a provider.
func (e *env) approvedProvider(reg account, name string) account {
	e.t.Helper()
	p := e.account("provider", name, nil)
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/approve", reg.token, nil)
	return p
}

// priceFor is the price of offer i at update k: always valid, 2 decimals.
func priceFor(i, k int) string {
	return fmt.Sprintf("%d.%02d", 15+(i+k)%20, (7*i+k)%100)
}

// listed returns GET /api/v1/offers of a market on base, by id.
func (e *env) listed(base, class, region string) map[string]offerState {
	e.t.Helper()
	r := e.do(base, "GET", "/api/v1/offers?limit=500&resource_class="+class+"&region="+region, "", nil)
	if r.Status != 200 {
		e.t.Fatalf("GET /api/v1/offers: %d %s", r.Status, r.Raw)
	}
	out := map[string]offerState{}
	for _, o := range r.Body["offers"].([]any) {
		m := o.(map[string]any)
		out[m["id"].(string)] = offerState{price: m["price"].(string), unitsFree: int64(m["units_free"].(float64)), version: int64(m["version"].(float64))}
	}
	return out
}

func sameOffers(a, b map[string]offerState) bool {
	if len(a) != len(b) {
		return false
	}
	for id, x := range a {
		y, ok := b[id]
		if !ok || x.price != y.price || x.unitsFree != y.unitsFree {
			return false
		}
	}
	return true
}

func keys(m map[string]offerState) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestStreamAcrossBrokers: a price change sent on brokerd #1's provider
// stream reaches a market-stream subscriber of brokerd #2 (its own process)
// within a second, with the price, the version the ack gave and the next
// seq; a new subscriber's snapshot agrees with GET /api/v1/offers; a
// suspension reaches the subscriber as removes within a second.
func TestStreamAcrossBrokers(t *testing.T) { streamAcrossBrokers(t, newEnv(t)) }

func streamAcrossBrokers(t *testing.T, e *env) {
	url2 := startProcess(t, e, "brokerd-2")
	reg := e.account("regulator", "R", nil)
	p := e.approvedProvider(reg, "Alpha Streams")
	other := e.approvedProvider(reg, "Beta Streams")
	const class, region = "gpu.h100-80g", "cn-east"
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, e.must(201, "POST", "/api/v1/offers", p.token, offerBody(class, region, 8, priceFor(i, 0))).str("id"))
	}
	otherID := e.must(201, "POST", "/api/v1/offers", other.token, offerBody(class, region, 16, "23.00")).str("id")
	e.must(201, "POST", "/api/v1/offers", p.token, offerBody("cpu.standard", region, 64, "0.24")) // another market

	// #2 learns the offers from the change stream; its snapshot then agrees
	// with GET /api/v1/offers (read from Redis).
	want := e.listed(url2, class, region)
	if len(want) != 4 {
		t.Fatalf("GET /api/v1/offers lists %d offers, want 4", len(want))
	}
	var sub *subscriber
	deadline := time.Now().Add(10 * time.Second)
	for {
		sub = subscribe(t, url2, "?resource_class="+class+"&region="+region, 0)
		sub.snapshot()
		got, _ := sub.state()
		if sameOffers(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshot on #2 %v, GET /api/v1/offers %v", got, want)
		}
		sub.ws.Close()
		time.Sleep(50 * time.Millisecond)
	}
	sub.run()

	prov := openProvider(t, e.urls[0], p.token, false)
	for k := 1; k <= 5; k++ {
		id := ids[k%len(ids)]
		price := priceFor(k, 100+k)
		before, _ := sub.state()
		sub.mu.Lock()
		seq := sub.seq
		sub.mu.Unlock()
		start := time.Now()
		version := prov.price(fmt.Sprintf("r%d", k), id, price)
		if version != before[id].version+1 {
			t.Fatalf("ack version %d, offer was at v%d", version, before[id].version)
		}
		sub.waitUntil("tick "+id, time.Second, func(st map[string]offerState) bool { return st[id].version >= version })
		took := time.Since(start)
		st, _ := sub.state()
		sub.mu.Lock()
		newSeq := sub.seq
		sub.mu.Unlock()
		if st[id].price != price || st[id].version != version || newSeq != seq+1 {
			t.Fatalf("after price %s v%d: subscriber has %+v, seq %d→%d", price, version, st[id], seq, newSeq)
		}
		t.Logf("price change %d: ack→tick on the other brokerd in %s", k, took)
		if took > time.Second {
			t.Fatalf("tick took %s", took)
		}
	}
	// A new subscriber's snapshot agrees with the list after the changes.
	fresh := subscribe(t, url2, "?resource_class="+class+"&region="+region, 0)
	fresh.snapshot()
	got, _ := fresh.state()
	if want := e.listed(url2, class, region); !sameOffers(got, want) {
		t.Fatalf("fresh snapshot %v, GET /api/v1/offers %v", got, want)
	}

	// Suspension: the provider's offers leave the stream within a second.
	start := time.Now()
	e.must(200, "POST", "/api/v1/providers/"+p.id+"/suspend", reg.token, nil)
	sub.waitUntil("removes after suspension", time.Second, func(st map[string]offerState) bool {
		for _, id := range ids {
			if _, ok := st[id]; ok {
				return false
			}
		}
		return true
	})
	t.Logf("suspension → removes on the other brokerd in %s", time.Since(start))
	st, err := sub.state()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st[otherID]; !ok || len(st) != 1 {
		t.Fatalf("after suspension the subscriber holds %v, want only %s", keys(st), otherID)
	}
	sub.mu.Lock()
	removes := append([]string(nil), sub.removes...)
	sub.mu.Unlock()
	sort.Strings(removes)
	sort.Strings(ids)
	if strings.Join(removes, ",") != strings.Join(ids, ",") {
		t.Fatalf("removes %v, want %v", removes, ids)
	}
}

// TestStreamSlowSubscriber: 10,000 price updates flow through the provider
// stream (eight connections of one provider) while one subscriber stops
// reading. The others get every offer's latest state at once; the slow
// one holds at most one pending update per offer in the hub (read from
// the hub counters on /metrics) and, reading again, gets the latest price
// of every offer.
func TestStreamSlowSubscriber(t *testing.T) {
	t.Setenv("BROKER_STREAM_RATE_LIMIT", "100000:100000") // this test floods on purpose
	// The slow subscriber stalls while the updates flow; past the write
	// timeout the server would drop it, by design. Allow slow machines
	// (and the race detector) a minute.
	t.Setenv("BROKER_STREAM_WRITE_TIMEOUT", "60s")
	e := newEnv(t)
	base := e.urls[0]
	reg := e.account("regulator", "R", nil)
	p := e.approvedProvider(reg, "Fast Pricer")
	const class, region, offers, updates = "gpu.l40s-48g", "cn-south", 200, 10_000
	ids := make([]string, offers)
	for i := range ids {
		ids[i] = e.must(201, "POST", "/api/v1/offers", p.token, offerBody(class, region, 8, priceFor(i, 0))).str("id")
	}
	q := "?resource_class=" + class + "&region=" + region
	fast := make([]*subscriber, 3)
	for i := range fast {
		fast[i] = subscribe(t, base, q, 0)
		fast[i].snapshot()
	}
	// The slow one has a tiny receive buffer, so the server's writes to it
	// block soon after it stops reading.
	slow := subscribe(t, base, q, 4096)
	slow.snapshot()
	for _, s := range append(fast, slow) {
		s.waitUntil("all offers in the snapshot", 10*time.Second, func(st map[string]offerState) bool { return len(st) == offers })
	}
	for _, s := range fast {
		s.run()
	}

	// Eight connections, each owning an eighth of the offers, pipelining.
	const conns = 8
	type final struct {
		price   string
		version int64
	}
	var mu sync.Mutex
	finals := map[string]final{}
	sentPrice := map[string]string{}
	var wg sync.WaitGroup
	start := time.Now()
	errs := make(chan error, conns)
	for c := 0; c < conns; c++ {
		prov := openProvider(t, base, p.token, c%2 == 1)
		wg.Add(1)
		go func(c int, prov *providerClient) {
			defer wg.Done()
			n := updates / conns
			refs := make(map[string][2]string, n)
			go func() {
				for k := 0; k < n; k++ {
					i := conns*(k%(offers/conns)) + c
					price := priceFor(i, k+1)
					ref := fmt.Sprintf("c%d-%d", c, k)
					mu.Lock()
					refs[ref] = [2]string{ids[i], price}
					mu.Unlock()
					if err := prov.sendRaw(fmt.Sprintf(`{"type":"price","ref":%q,"offer_id":%q,"price":%q}`, ref, ids[i], price)); err != nil {
						errs <- err
						return
					}
				}
			}()
			for k := 0; k < n; k++ {
				m, err := prov.recv(20 * time.Second)
				if err != nil || m.Type != "ack" {
					errs <- fmt.Errorf("conn %d reply %d: %v %s", c, k, err, m.raw)
					return
				}
				mu.Lock()
				r := refs[m.Ref]
				if f := finals[r[0]]; m.Version > f.version {
					finals[r[0]] = final{r[1], m.Version}
				}
				sentPrice[r[0]] = r[1]
				mu.Unlock()
			}
		}(c, prov)
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	acked := time.Since(start)
	t.Logf("%d updates acknowledged in %s (%.0f/s)", updates, acked, updates/acked.Seconds())
	if acked > 50*time.Second {
		t.Fatalf("ingest took %s: too slow for this test's stall to stay under the write timeout", acked)
	}
	if len(finals) != offers {
		t.Fatalf("acks cover %d offers, want %d", len(finals), offers)
	}
	upToDate := func(st map[string]offerState) bool {
		for id, f := range finals {
			if st[id].version != f.version || st[id].price != f.price {
				return false
			}
		}
		return true
	}
	// In time: every fast subscriber has the final state of every offer
	// within a second of the last ack.
	for _, s := range fast {
		s.waitUntil("final state of every offer", time.Second, upToDate)
		s.mu.Lock()
		t.Logf("fast subscriber: %d ticks for %d updates (%.1f%%), seq %d", s.ticks, updates, 100*float64(s.ticks)/updates, s.seq)
		if s.snaps != 1 {
			t.Errorf("fast subscriber got %d snapshots", s.snaps)
		}
		s.mu.Unlock()
	}

	// Bounded: what waits for the slow one in the hub is at most one
	// update per offer, plus the batch of frames its writer is blocked
	// writing (the fast ones have nothing pending).
	m := scrape(t, base, "broker_hub_")
	pending := hubPending(m)
	t.Logf("hub while the slow subscriber stalls: pending %.0f, coalesced %.0f, resyncs %.0f, frames %.0f",
		pending, m["broker_hub_coalesced_total"], m["broker_hub_resyncs_total"], m["broker_hub_frames_sent_total"])
	if pending > offers+hub.MaxBatch || pending < 0 {
		t.Fatalf("%.0f deliveries pending in the hub, want at most %d (one per offer, one batch in flight)", pending, offers+hub.MaxBatch)
	}
	if m["broker_hub_coalesced_total"] == 0 {
		t.Fatal("nothing was coalesced: the slow subscriber did not hold the server back")
	}
	if m["broker_hub_subscribers"] != 4 {
		t.Fatalf("hub has %.0f subscribers, want 4 (the slow one must not be dropped)", m["broker_hub_subscribers"])
	}

	// The slow one reads again and gets the latest price of every offer.
	slow.run()
	slow.waitUntil("latest price of every offer", 5*time.Second, upToDate)
	slow.mu.Lock()
	t.Logf("slow subscriber: %d ticks, %d snapshots, seq %d", slow.ticks, slow.snaps, slow.seq)
	slow.mu.Unlock()
	if _, err := slow.state(); err != nil {
		t.Fatal(err)
	}
	// And the server agrees.
	if got := e.listed(base, class, region); len(got) != offers {
		t.Fatalf("listed %d offers", len(got))
	} else {
		for id, f := range finals {
			if got[id].price != f.price || got[id].version != f.version {
				t.Fatalf("offer %s listed %+v, last ack %+v", id, got[id], f)
			}
		}
	}
}

// TestStreamProviderBadMessages: each bad message gets the documented
// error for its ref, changes nothing, and leaves the connection usable;
// floods and oversized frames close it.
func TestStreamProviderBadMessages(t *testing.T) {
	e := newEnv(t)
	base := e.urls[0]
	reg := e.account("regulator", "R", nil)
	p := e.approvedProvider(reg, "P")
	q := e.approvedProvider(reg, "Q")
	sme := e.account("sme", "S", nil)
	off := e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.a800-80g", "cn-north", 8, "10.00"))
	id := off.str("id")
	qid := e.must(201, "POST", "/api/v1/offers", q.token, offerBody("gpu.a800-80g", "cn-north", 8, "11.00")).str("id")

	// Upgrade refusals are ordinary JSON errors.
	for _, c := range []struct {
		name, path, token string
		status            int
		code              string
	}{
		{"no token", "/api/v1/stream/provider", "", 401, "unauthenticated"},
		{"bad token", "/api/v1/stream/provider", "nope", 401, "unauthenticated"},
		{"sme token", "/api/v1/stream/provider", sme.token, 403, "forbidden"},
		{"unknown class", "/api/v1/stream/market?resource_class=gpu.nope", "", 400, "invalid_argument"},
		{"unknown region", "/api/v1/stream/market?region=mars", "", 400, "invalid_argument"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			if c.token != "" {
				h.Set("Authorization", "Bearer "+c.token)
			}
			_, resp, err := dialWS(t, wsURL(base, c.path), h, 0)
			if err == nil || resp == nil || resp.StatusCode != c.status {
				t.Fatalf("dial: %v, response %v, want %d", err, resp, c.status)
			}
		})
		r := e.call("GET", c.path, c.token, nil, "Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		if r.Status != c.status || r.errCode() != c.code {
			t.Fatalf("%s: %d %s, want %d %s", c.name, r.Status, r.Raw, c.status, c.code)
		}
	}
	if r := e.call("GET", "/api/v1/stream/market", "", nil); r.Status != 400 || r.errCode() != "invalid_argument" {
		t.Fatalf("plain GET of the market stream: %d %s", r.Status, r.Raw)
	}

	prov := openProvider(t, base, p.token, true) // token in the query
	cases := []struct {
		name, frame, ref, code string
	}{
		{"malformed JSON", `{"type":"price","ref":"m1",`, "", "invalid_argument"},
		{"not an object", `[1,2]`, "", "invalid_argument"},
		{"two objects", `{"type":"price","ref":"m2","offer_id":"` + id + `","price":"9.00"} {}`, "", "invalid_argument"},
		{"unknown type", `{"type":"bid","ref":"m3","offer_id":"` + id + `","price":"9.00"}`, "m3", "invalid_argument"},
		{"unknown field", `{"type":"price","ref":"m4","offer_id":"` + id + `","price":"9.00","x":1}`, "m4", "invalid_argument"},
		{"missing ref", `{"type":"price","offer_id":"` + id + `","price":"9.00"}`, "", "invalid_argument"},
		{"missing type", `{"ref":"m5","offer_id":"` + id + `","price":"9.00"}`, "m5", "invalid_argument"},
		{"missing offer", `{"type":"price","ref":"m6","price":"9.00"}`, "m6", "invalid_argument"},
		{"missing price", `{"type":"price","ref":"m7","offer_id":"` + id + `"}`, "m7", "invalid_argument"},
		{"price and units", `{"type":"price","ref":"m8","offer_id":"` + id + `","price":"9.00","units":4}`, "m8", "invalid_argument"},
		{"price as number", `{"type":"price","ref":"m9","offer_id":"` + id + `","price":9.5}`, "m9", "invalid_argument"},
		{"negative price", `{"type":"price","ref":"m10","offer_id":"` + id + `","price":"-1.00"}`, "m10", "invalid_argument"},
		{"zero price", `{"type":"price","ref":"m11","offer_id":"` + id + `","price":"0"}`, "m11", "invalid_argument"},
		{"over-precise price", `{"type":"price","ref":"m12","offer_id":"` + id + `","price":"9.12345"}`, "m12", "invalid_argument"},
		{"units 0", `{"type":"units","ref":"m13","offer_id":"` + id + `","units":0}`, "m13", "invalid_argument"},
		{"units negative", `{"type":"units","ref":"m14","offer_id":"` + id + `","units":-3}`, "m14", "invalid_argument"},
		{"units fraction", `{"type":"units","ref":"m15","offer_id":"` + id + `","units":1.5}`, "m15", "invalid_argument"},
		{"units as string", `{"type":"units","ref":"m16","offer_id":"` + id + `","units":"8"}`, "m16", "invalid_argument"},
		{"another provider's offer", `{"type":"price","ref":"m17","offer_id":"` + qid + `","price":"9.00"}`, "m17", "forbidden"},
		{"unknown offer", `{"type":"price","ref":"m18","offer_id":"off_nope","price":"9.00"}`, "m18", "not_found"},
		{"odd ref", `{"type":"bid","ref":"é\"<x>\n"}`, "é\"<x>\n", "invalid_argument"},
	}
	for _, c := range cases {
		if err := prov.sendRaw(c.frame); err != nil {
			t.Fatalf("%s: send: %v", c.name, err)
		}
		m := prov.reply()
		if m.Type != "error" || m.Code != c.code || m.Ref != c.ref || m.Message == "" {
			t.Errorf("%s: got %s, want error %s for ref %q", c.name, m.raw, c.code, c.ref)
		}
	}
	// Nothing changed, and the connection still works.
	for _, oid := range []string{id, qid} {
		o := e.must(200, "GET", "/api/v1/offers/"+oid, "", nil)
		if o.num("version") != 1 || o.num("units") != 8 {
			t.Fatalf("offer changed by rejected messages: %s", o.Raw)
		}
	}
	if o := e.must(200, "GET", "/api/v1/offers/"+id, "", nil); o.str("price") != "10.00" {
		t.Fatalf("price changed: %s", o.Raw)
	}
	if v := prov.price("ok", id, "9.50"); v != 2 {
		t.Fatalf("valid price acked with version %d, want 2", v)
	}
	prov.send(map[string]any{"type": "units", "ref": "ok2", "offer_id": id, "units": 12})
	if m := prov.reply(); m.Type != "ack" || m.Version != 3 {
		t.Fatalf("units: %s", m.raw)
	}
	if o := e.must(200, "GET", "/api/v1/offers/"+id, "", nil); o.str("price") != "9.50" || o.num("units") != 12 || o.num("version") != 3 {
		t.Fatalf("after valid messages: %s", o.Raw)
	}

	t.Run("flood", func(t *testing.T) {
		fl := openProvider(t, base, p.token, false)
		go func() { // as fast as it can, cheap invalid messages
			for i := 0; i < 20_000; i++ {
				if fl.sendRaw(`{"type":"nope","ref":"f"}`) != nil {
					return
				}
			}
		}()
		code, err := fl.closeCode(10 * time.Second)
		if err != nil || code != websocket.ClosePolicyViolation {
			t.Fatalf("flood: close code %d (%v), want %d", code, err, websocket.ClosePolicyViolation)
		}
	})
	t.Run("oversized frame", func(t *testing.T) {
		big := openProvider(t, base, p.token, false)
		frame := `{"type":"price","ref":"` + strings.Repeat("x", 5000) + `","offer_id":"` + id + `","price":"9.00"}`
		if err := big.sendRaw(frame); err != nil {
			t.Fatal(err)
		}
		code, err := big.closeCode(10 * time.Second)
		if err != nil || (code != websocket.CloseMessageTooBig && code != websocket.ClosePolicyViolation) {
			t.Fatalf("oversized frame: close code %d (%v), want 1009 or 1008", code, err)
		}
	})
	t.Run("too many streams", func(t *testing.T) {
		for i := 0; i < 15; i++ { // prov is the 16th
			openProvider(t, base, p.token, false)
		}
		h := http.Header{"Authorization": {"Bearer " + p.token}}
		_, resp, err := dialWS(t, wsURL(base, "/api/v1/stream/provider"), h, 0)
		if err == nil || resp == nil || resp.StatusCode != 429 {
			t.Fatalf("17th stream: %v, response %v, want 429", err, resp)
		}
	})
	// The abuse changed nothing either.
	if o := e.must(200, "GET", "/api/v1/offers/"+id, "", nil); o.num("version") != 3 {
		t.Fatalf("after abuse: %s", o.Raw)
	}
	m := scrape(t, base, "broker_stream_")
	if m["broker_stream_policy_closes_total"] < 2 {
		t.Fatalf("policy closes %v", m)
	}
}

// TestStreamLeasePush: a filled order reaches the provider's stream as a
// lease message shaped like GET /api/v1/leases.
func TestStreamLeasePush(t *testing.T) {
	e := newEnv(t)
	reg := e.account("regulator", "R", nil)
	p := e.approvedProvider(reg, "Lessor")
	s := e.account("sme", "Buyer", nil)
	id := e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.rtx4090-24g", "cn-west", 16, "2.50")).str("id")
	prov := openProvider(t, e.urls[0], p.token, false)
	other := e.approvedProvider(reg, "Bystander")
	bystander := openProvider(t, e.urls[0], other.token, false)

	o := e.must(201, "POST", "/api/v1/orders", s.token, map[string]any{"resource_class": "gpu.rtx4090-24g", "units": 4, "hours": 3}, "Idempotency-Key", "lease-1")
	var m providerMsg
	for {
		var err error
		m, err = prov.recv(5 * time.Second)
		if err != nil {
			t.Fatalf("no lease message: %v", err)
		}
		if m.Type == "lease" {
			break
		}
	}
	leases := e.must(200, "GET", "/api/v1/leases", p.token, nil).Body["leases"].([]any)
	if len(leases) != 1 {
		t.Fatalf("GET /api/v1/leases: %v", leases)
	}
	want := leases[0].(map[string]any)
	for _, k := range []string{"id", "order_id", "offer_id", "provider_id", "sme_id", "resource_class", "region", "units", "hours", "unit_price", "status"} {
		if m.Lease[k] != want[k] {
			t.Errorf("lease %s = %v, GET /api/v1/leases has %v", k, m.Lease[k], want[k])
		}
	}
	if m.Lease["id"] != o.str("lease_id") || m.Lease["offer_id"] != id || m.Lease["status"] != "reserved" || m.Lease["created_at"] == "" {
		t.Fatalf("lease %v for order %s", m.Lease, o.Raw)
	}
	if len(m.Lease) != len(want) {
		t.Errorf("lease fields %v, GET /api/v1/leases fields %v", m.Lease, want)
	}
	// Nobody else's stream hears of it.
	if m, err := bystander.recv(300 * time.Millisecond); err == nil {
		t.Fatalf("another provider got %s", m.raw)
	}
}

// TestStreamProviderPipelined: a provider sends many commands without
// waiting; they commit in batches, and the replies still come one per
// command, in the order sent, with consecutive versions for each offer and
// errors in their places. The offers end at the last version, and a market
// stream subscriber sees the offer reach it without going back.
func TestStreamProviderPipelined(t *testing.T) { providerPipelined(t, newEnv(t)) }

func providerPipelined(t *testing.T, e *env) {
	base := e.urls[0]
	reg := e.account("regulator", "R", nil)
	p := e.approvedProvider(reg, "P")
	q := e.approvedProvider(reg, "Q")
	ids := []string{
		e.must(201, "POST", "/api/v1/offers", p.token, offerBody("gpu.a800-80g", "cn-north", 8, "10.00")).str("id"),
		e.must(201, "POST", "/api/v1/offers", p.token, offerBody("cpu.standard", "cn-east", 64, "0.30")).str("id"),
	}
	qid := e.must(201, "POST", "/api/v1/offers", q.token, offerBody("gpu.a800-80g", "cn-north", 8, "11.00")).str("id")
	sub := subscribe(t, base, "?resource_class=gpu.a800-80g&region=cn-north", 0)
	sub.snapshot()
	sub.run()

	prov := openProvider(t, base, p.token, false)
	type want struct {
		ref, typ string
		version  int64
	}
	var wants []want
	next := map[string]int64{ids[0]: 2, ids[1]: 2}
	const rounds = 300
	for i := 0; i < rounds; i++ {
		id := ids[i%2]
		ref := fmt.Sprintf("r%d", i)
		switch {
		case i%50 == 7: // another provider's offer: refused, takes no version
			prov.send(map[string]any{"type": "price", "ref": ref, "offer_id": qid, "price": "9.00"})
			wants = append(wants, want{ref, "error", 0})
		case i%50 == 9: // refused before it reaches Redis
			if err := prov.sendRaw(`{"type":"price","ref":"` + ref + `","offer_id":"` + id + `","price":"-1"}`); err != nil {
				t.Fatal(err)
			}
			wants = append(wants, want{ref, "error", 0})
		case i%10 == 3:
			prov.send(map[string]any{"type": "units", "ref": ref, "offer_id": id, "units": 8 + i%5})
			wants = append(wants, want{ref, "ack", next[id]})
			next[id]++
		default:
			prov.send(map[string]any{"type": "price", "ref": ref, "offer_id": id, "price": fmt.Sprintf("%d.%02d", 9+i%3, i%100)})
			wants = append(wants, want{ref, "ack", next[id]})
			next[id]++
		}
	}
	for i, w := range wants {
		m := prov.reply()
		if m.Ref != w.ref || m.Type != w.typ || m.Version != w.version {
			t.Fatalf("reply %d: %s, want %s %s version %d", i, m.raw, w.typ, w.ref, w.version)
		}
	}
	last := next[ids[0]] - 1
	sub.waitUntil(fmt.Sprintf("version %d of %s", last, ids[0]), 10*time.Second, func(st map[string]offerState) bool {
		return st[ids[0]].version == last
	})
	for _, id := range ids {
		o := e.must(200, "GET", "/api/v1/offers/"+id, "", nil)
		if o.num("version") != next[id]-1 {
			t.Fatalf("offer %s at version %v, want %d", id, o.num("version"), next[id]-1)
		}
	}
}

// TestStreamEndsWhenTokenStops: a provider stream whose token is rotated
// (or the account revoked) ends within a second: the client gets a close
// frame with 1008, and the server lets go of the connection even when the
// client neither reads nor answers the close.
func TestStreamEndsWhenTokenStops(t *testing.T) {
	e := newEnv(t)
	base := e.urls[0]
	reg := e.account("regulator", "R", nil)
	for _, how := range []string{"rotate-token", "revoke"} {
		t.Run(how, func(t *testing.T) {
			p := e.approvedProvider(reg, "P "+how)
			prov := openProvider(t, base, p.token, false) // not read until the end
			open := func() float64 { return scrape(t, base, "broker_stream_")["broker_stream_provider_connections"] }
			deadline := time.Now().Add(5 * time.Second)
			for open() != 1 { // the server counts the stream once upgraded
				if time.Now().After(deadline) {
					t.Fatalf("provider streams open: %v", open())
				}
				time.Sleep(20 * time.Millisecond)
			}
			e.must(200, "POST", "/api/v1/accounts/"+p.id+"/"+how, adminToken, nil)
			deadline = time.Now().Add(5 * time.Second)
			for open() != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("the server still holds the stream after its token stopped working")
				}
				time.Sleep(50 * time.Millisecond)
			}
			code, err := prov.closeCode(5 * time.Second)
			if err != nil || code != websocket.ClosePolicyViolation {
				t.Fatalf("close code %d (%v), want %d", code, err, websocket.ClosePolicyViolation)
			}
		})
	}
}
