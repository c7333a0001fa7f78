package hub

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"computebroker/market"
)

// msg is a decoded frame; decoding rejects unknown fields, so the tests
// pin the wire format.
type msg struct {
	Type          string      `json:"type"`
	Seq           uint64      `json:"seq"`
	Offers        []wireOffer `json:"offers"`
	OfferID       string      `json:"offer_id"`
	Price         string      `json:"price"`
	UnitsFree     *int64      `json:"units_free"`
	Version       int64       `json:"version"`
	TS            string      `json:"ts"`
	ResourceClass string      `json:"resource_class"`
	Region        string      `json:"region"`
	Units         int64       `json:"units"`
	Hours         int64       `json:"hours"`
}

type wireOffer struct {
	ID            string `json:"id"`
	ProviderID    string `json:"provider_id"`
	ResourceClass string `json:"resource_class"`
	Region        string `json:"region"`
	Units         int64  `json:"units"`
	UnitsFree     int64  `json:"units_free"`
	Price         string `json:"price"`
	MaxHours      int64  `json:"max_hours"`
	Version       int64  `json:"version"`
	Status        string `json:"status"`
	UpdatedAt     string `json:"updated_at"`
}

func decode(t testing.TB, p []byte) msg {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(p))
	d.DisallowUnknownFields()
	var m msg
	if err := d.Decode(&m); err != nil {
		t.Fatalf("decode %s: %v", p, err)
	}
	return m
}

// recConn records every frame: a Conn whose frame header is the frame's
// length as 4 bytes, big-endian. Locking gate blocks writes (a client that
// stops reading; TryWrite then takes nothing); tryLimit > 0 makes TryWrite
// take at most that many bytes (a socket buffer that fills mid-batch);
// failAt makes the write that completes the n-th frame fail.
type recConn struct {
	entered  atomic.Int64 // TryWrite and Write calls begun
	gate     sync.RWMutex
	tryLimit int
	mu       sync.Mutex
	stream   []byte // bytes of a frame not complete yet
	frames   [][]byte
	batches  []int // frames completed per write call
	failAt   int
}

var errBroken = errors.New("broken pipe")

func (c *recConn) AppendHeader(dst []byte, n int) []byte {
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}

func (c *recConn) TryWrite(b []byte) (int, error) {
	c.entered.Add(1)
	if !c.gate.TryRLock() {
		return 0, nil
	}
	defer c.gate.RUnlock()
	if c.tryLimit > 0 && len(b) > c.tryLimit {
		b = b[:c.tryLimit]
	}
	return len(b), c.take(b)
}

func (c *recConn) Write(b []byte) error {
	c.entered.Add(1)
	c.gate.RLock()
	defer c.gate.RUnlock()
	return c.take(b)
}

func (c *recConn) take(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	stream := append(bytes.Clone(c.stream), b...)
	var frames [][]byte
	for len(stream) >= 4 && int(binary.BigEndian.Uint32(stream)) <= len(stream)-4 {
		n := int(binary.BigEndian.Uint32(stream))
		frames = append(frames, bytes.Clone(stream[4:4+n]))
		stream = stream[4+n:]
	}
	if c.failAt > 0 && len(c.frames) < c.failAt && c.failAt <= len(c.frames)+len(frames) {
		return errBroken
	}
	c.stream = stream
	c.frames = append(c.frames, frames...)
	if len(frames) > 0 {
		c.batches = append(c.batches, len(frames))
	}
	return nil
}

func (c *recConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.frames)
}

func (c *recConn) msgs(t testing.TB) []msg {
	c.mu.Lock()
	frames := c.frames
	c.mu.Unlock()
	out := make([]msg, len(frames))
	for i, f := range frames {
		out[i] = decode(t, f)
	}
	return out
}

// waitFor polls cond until it holds or ten seconds pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// offerState is what a client knows of an offer.
type offerState struct {
	Price     string
	UnitsFree int64
	Version   int64
}

// model is a client of the market stream: it applies frames and checks
// seq and that no offer goes back in version.
type model struct {
	seq     uint64
	offers  map[string]offerState
	removed map[string]int64 // offer id -> version of its remove
	trades  []msg
	snaps   int
}

func newModel() *model {
	return &model{offers: map[string]offerState{}, removed: map[string]int64{}}
}

func (m *model) apply(t testing.TB, ms []msg) {
	t.Helper()
	for _, x := range ms {
		if x.Seq != m.seq+1 {
			t.Fatalf("seq %d after %d (%s)", x.Seq, m.seq, x.Type)
		}
		m.seq = x.Seq
		switch x.Type {
		case "snapshot":
			m.snaps++
			m.offers = map[string]offerState{}
			m.removed = map[string]int64{}
			for _, o := range x.Offers {
				m.offers[o.ID] = offerState{o.Price, o.UnitsFree, o.Version}
			}
		case "tick":
			if m.snaps == 0 {
				t.Fatalf("tick before the snapshot")
			}
			if old, ok := m.offers[x.OfferID]; ok && x.Version < old.Version {
				t.Fatalf("offer %s went back from version %d to %d", x.OfferID, old.Version, x.Version)
			}
			if rv, ok := m.removed[x.OfferID]; ok && x.Version <= rv {
				t.Fatalf("offer %s ticked at version %d after its remove at %d", x.OfferID, x.Version, rv)
			}
			m.offers[x.OfferID] = offerState{x.Price, *x.UnitsFree, x.Version}
		case "remove":
			if old, ok := m.offers[x.OfferID]; ok && x.Version < old.Version {
				t.Fatalf("offer %s removed at version %d after version %d", x.OfferID, x.Version, old.Version)
			}
			delete(m.offers, x.OfferID)
			m.removed[x.OfferID] = x.Version
		case "trade":
			m.trades = append(m.trades, x)
		default:
			t.Fatalf("unknown frame type %q", x.Type)
		}
	}
}

// book is the publisher's side of a test: offers it updates and then
// publishes, and the snapshot function of the subscribers.
type book struct {
	mu     sync.Mutex
	offers map[string]market.Offer
}

func newBook() *book { return &book{offers: map[string]market.Offer{}} }

var t0 = time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)

func offerID(i int) string { return fmt.Sprintf("of-%04d", i) }

// set changes offer id's price and returns the tick update.
func (b *book) set(m market.MarketKey, id string, cents int64) Update {
	b.mu.Lock()
	defer b.mu.Unlock()
	o, ok := b.offers[id]
	if !ok {
		o = market.Offer{ID: id, ProviderID: "p-1", ResourceClass: m.Class, Region: m.Region,
			Units: 8, UnitsFree: 8, MaxHours: 720, Status: market.OfferActive}
	}
	o.Version++
	o.Price = decimal.New(cents, -2)
	o.UnitsFree = cents % 9
	o.UpdatedAt = t0.Add(time.Duration(o.Version) * time.Millisecond)
	b.offers[id] = o
	return OfferUpdate(o)
}

// remove deletes offer id and returns the remove update.
func (b *book) remove(id string) Update {
	b.mu.Lock()
	defer b.mu.Unlock()
	o := b.offers[id]
	delete(b.offers, id)
	return RemoveUpdate(o.Market(), id, o.Version+1)
}

func (b *book) snapshot() ([]market.Offer, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]market.Offer, 0, len(b.offers))
	for _, o := range b.offers {
		out = append(out, o)
	}
	return out, nil
}

// state is what a client should know after reading everything.
func (b *book) state(f Filter) map[string]offerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]offerState{}
	for _, o := range b.offers {
		if f.Match(o.Market()) {
			out[o.ID] = offerState{market.FormatPrice(o.Price), o.UnitsFree, o.Version}
		}
	}
	return out
}

func equalState(a, b map[string]offerState) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func mustPublish(t testing.TB, h *Hub, u Update) {
	t.Helper()
	if err := h.Publish(u); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func mustSubscribe(t testing.TB, h *Hub, c Conn, f Filter, snap SnapshotFunc) *Subscription {
	t.Helper()
	s, err := h.Subscribe(c, f, snap)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	return s
}

func emptySnapshot() ([]market.Offer, error) { return nil, nil }

var (
	h100East = market.MarketKey{Class: "gpu.h100-80g", Region: "cn-east"}
	h100West = market.MarketKey{Class: "gpu.h100-80g", Region: "cn-west"}
	a800East = market.MarketKey{Class: "gpu.a800-80g", Region: "cn-east"}
	a800West = market.MarketKey{Class: "gpu.a800-80g", Region: "cn-west"}
	cpuNorth = market.MarketKey{Class: "cpu.standard", Region: "cn-north"}
)
