package broker_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Clients of the streams for the tests: gorilla/websocket, as any outside
// client would connect.

func wsURL(base, path string) string {
	return "ws" + strings.TrimPrefix(base, "http") + path
}

// dialWS opens a WebSocket; rcvbuf > 0 shrinks the socket's receive buffer
// before it connects, so that a client that stops reading pushes back on
// the server quickly.
func dialWS(t *testing.T, url string, header http.Header, rcvbuf int) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	if rcvbuf > 0 {
		nd := &net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf) })
			if err != nil {
				return err
			}
			return serr
		}}
		d.NetDialContext = nd.DialContext
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return d.DialContext(ctx, url, header)
}

// marketMsg is any market-stream message.
type marketMsg struct {
	Type      string           `json:"type"`
	Seq       int64            `json:"seq"`
	OfferID   string           `json:"offer_id"`
	Price     string           `json:"price"`
	UnitsFree int64            `json:"units_free"`
	Version   int64            `json:"version"`
	TS        string           `json:"ts"`
	Offers    []map[string]any `json:"offers"`
	Class     string           `json:"resource_class"`
	Region    string           `json:"region"`
	Units     int64            `json:"units"`
	Hours     int64            `json:"hours"`
}

// offerState is what a subscriber knows of an offer.
type offerState struct {
	price     string
	unitsFree int64
	version   int64
}

// subscriber is a market-stream client that checks the stream as it
// reads: seq rises by one, an offer's version never goes back.
type subscriber struct {
	t    *testing.T
	name string
	ws   *websocket.Conn

	mu      sync.Mutex
	seq     int64
	offers  map[string]offerState
	ticks   int
	removes []string
	snaps   int
	err     error
	seen    chan struct{} // pinged after every message
}

func subscribe(t *testing.T, base, query string, rcvbuf int) *subscriber {
	t.Helper()
	ws, resp, err := dialWS(t, wsURL(base, "/api/v1/stream/market"+query), nil, rcvbuf)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("market stream %s: %v (status %d)", query, err, status)
	}
	s := &subscriber{t: t, name: base + query, ws: ws, offers: map[string]offerState{}, seen: make(chan struct{}, 1)}
	t.Cleanup(func() { ws.Close() })
	return s
}

// read reads and applies one message.
func (s *subscriber) read(timeout time.Duration) (marketMsg, error) {
	_ = s.ws.SetReadDeadline(time.Now().Add(timeout))
	var m marketMsg
	_, b, err := s.ws.ReadMessage()
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("bad frame %q: %v", b, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.Seq != s.seq+1 {
		s.err = fmt.Errorf("%s: seq %d after %d: %s", s.name, m.Seq, s.seq, b)
	}
	s.seq = m.Seq
	switch m.Type {
	case "snapshot":
		s.snaps++
		s.offers = map[string]offerState{}
		for _, o := range m.Offers {
			s.offers[o["id"].(string)] = offerState{price: o["price"].(string), unitsFree: int64(o["units_free"].(float64)), version: int64(o["version"].(float64))}
		}
	case "tick":
		s.ticks++
		if old, ok := s.offers[m.OfferID]; ok && m.Version < old.version {
			s.err = fmt.Errorf("%s: offer %s went back from v%d to v%d", s.name, m.OfferID, old.version, m.Version)
		}
		s.offers[m.OfferID] = offerState{price: m.Price, unitsFree: m.UnitsFree, version: m.Version}
	case "remove":
		s.removes = append(s.removes, m.OfferID)
		delete(s.offers, m.OfferID)
	case "trade":
	default:
		s.err = fmt.Errorf("%s: unknown message %s", s.name, b)
	}
	select {
	case s.seen <- struct{}{}:
	default:
	}
	return m, nil
}

// snapshot reads the first message, which must be a snapshot.
func (s *subscriber) snapshot() marketMsg {
	s.t.Helper()
	m, err := s.read(10 * time.Second)
	if err != nil {
		s.t.Fatalf("%s: no snapshot: %v", s.name, err)
	}
	if m.Type != "snapshot" || m.Seq != 1 {
		s.t.Fatalf("%s: first message %s seq %d, want snapshot seq 1", s.name, m.Type, m.Seq)
	}
	return m
}

// run reads in the background until the connection ends.
func (s *subscriber) run() {
	go func() {
		for {
			if _, err := s.read(time.Minute); err != nil {
				return
			}
		}
	}()
}

// state returns a copy of the offers known and the check error.
func (s *subscriber) state() (map[string]offerState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]offerState, len(s.offers))
	for k, v := range s.offers {
		out[k] = v
	}
	return out, s.err
}

// waitUntil waits, reading in the background (run), until cond holds on
// the state, or fails after timeout.
func (s *subscriber) waitUntil(what string, timeout time.Duration, cond func(map[string]offerState) bool) {
	s.t.Helper()
	deadline := time.After(timeout)
	for {
		st, err := s.state()
		if err != nil {
			s.t.Fatal(err)
		}
		if cond(st) {
			return
		}
		select {
		case <-s.seen:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			s.t.Fatalf("%s: %s not within %s", s.name, what, timeout)
		}
	}
}

// providerMsg is any provider-stream message from the server.
type providerMsg struct {
	Type    string         `json:"type"`
	Ref     string         `json:"ref"`
	Version int64          `json:"version"`
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Lease   map[string]any `json:"lease"`
	raw     string
}

// providerClient is a provider-stream client.
type providerClient struct {
	t  *testing.T
	ws *websocket.Conn
	wm sync.Mutex
}

func openProvider(t *testing.T, base, token string, inQuery bool) *providerClient {
	t.Helper()
	url, header := wsURL(base, "/api/v1/stream/provider"), http.Header{}
	if inQuery {
		url += "?token=" + token
	} else {
		header.Set("Authorization", "Bearer "+token)
	}
	ws, resp, err := dialWS(t, url, header, 0)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("provider stream: %v (status %d)", err, status)
	}
	t.Cleanup(func() { ws.Close() })
	return &providerClient{t: t, ws: ws}
}

func (p *providerClient) sendRaw(frame string) error {
	p.wm.Lock()
	defer p.wm.Unlock()
	_ = p.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return p.ws.WriteMessage(websocket.TextMessage, []byte(frame))
}

func (p *providerClient) send(v any) {
	p.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := p.sendRaw(string(b)); err != nil {
		p.t.Fatalf("send %s: %v", b, err)
	}
}

func (p *providerClient) recv(timeout time.Duration) (providerMsg, error) {
	_ = p.ws.SetReadDeadline(time.Now().Add(timeout))
	var m providerMsg
	_, b, err := p.ws.ReadMessage()
	if err != nil {
		return m, err
	}
	m.raw = string(b)
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("bad frame %q: %v", b, err)
	}
	return m, nil
}

// reply reads the next ack or error (skipping leases).
func (p *providerClient) reply() providerMsg {
	p.t.Helper()
	for {
		m, err := p.recv(10 * time.Second)
		if err != nil {
			p.t.Fatalf("provider stream: no reply: %v", err)
		}
		if m.Type != "lease" {
			return m
		}
	}
}

// price sends a price change and returns the acked version.
func (p *providerClient) price(ref, offer, price string) int64 {
	p.t.Helper()
	p.send(map[string]any{"type": "price", "ref": ref, "offer_id": offer, "price": price})
	m := p.reply()
	if m.Type != "ack" || m.Ref != ref {
		p.t.Fatalf("price %s %s: got %s", offer, price, m.raw)
	}
	return m.Version
}

// closeCode reads until the connection ends and returns its close code
// (0 when it ended without a close frame).
func (p *providerClient) closeCode(timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		_ = p.ws.SetReadDeadline(deadline)
		_, _, err := p.ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code, nil
		}
		return 0, err
	}
	return 0, fmt.Errorf("still open after %s", timeout)
}

// scrape reads the counters of /metrics whose names start with prefix.
func scrape(t *testing.T, base, prefix string) map[string]float64 {
	t.Helper()
	r, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(val, 64); err == nil {
			out[name] = f
		}
	}
	return out
}

// hubPending is how many deliveries wait in subscriber queues: taken in,
// neither written nor coalesced yet.
func hubPending(m map[string]float64) float64 {
	return m["broker_hub_enqueued_total"] - (m["broker_hub_frames_sent_total"] - m["broker_hub_snapshots_total"]) - m["broker_hub_coalesced_total"]
}
