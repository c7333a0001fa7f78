package hub

import (
	"errors"
	"hash/maphash"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"computebroker/market"
)

// ErrClosed is returned by Subscribe and Publish once the hub is closed.
var ErrClosed = errors.New("hub: closed")

// Conn is where a subscriber's frames go: one WebSocket connection, say.
// The hub frames each message itself (AppendHeader) and writes a batch of
// whole frames at a time. Its methods are never called concurrently for
// one Conn: one owner at a time (a writer loop, or the goroutine that
// takes a snapshot or finishes a write) writes to it.
type Conn interface {
	// AppendHeader appends to dst what goes on the wire before a message
	// of n bytes (for a WebSocket, the frame header); at most 16 bytes.
	AppendHeader(dst []byte, n int) []byte
	// TryWrite writes as much of b as the connection takes without
	// blocking and returns how much that was. The hub's writer loops call
	// it; it must never block, or one slow reader would hold up the
	// others of its loop. An error drops the subscriber.
	TryWrite(b []byte) (int, error)
	// Write writes all of b, blocking until it is written: the rest of a
	// batch TryWrite did not take, or a snapshot. It runs on a goroutine
	// of the subscription's own; give it a deadline so that Close does not
	// wait forever. An error drops the subscriber.
	Write(b []byte) error
}

// Filter selects the markets a subscriber follows; an empty field matches
// any value.
type Filter struct {
	ResourceClass string
	Region        string
}

// Match reports whether m is selected by f.
func (f Filter) Match(m market.MarketKey) bool {
	return (f.ResourceClass == "" || f.ResourceClass == m.Class) &&
		(f.Region == "" || f.Region == m.Region)
}

// SnapshotFunc returns the current offers of the subscriber's markets. It
// must reflect every update whose Publish began before the call, and no
// offer version that is not yet being published: take it from the book
// that the publisher updates just before calling Publish. (Redis read
// directly runs ahead of the change-stream follower; a subscriber could
// then see an offer go back to an older version.) Offers outside the
// filter or not active are left out of the snapshot frame. It is called
// from a goroutine of the subscription's, once at the start and again after
// an overflow; an error ends the subscription.
type SnapshotFunc func() ([]market.Offer, error)

// Options tune a Hub; zero fields take the defaults.
type Options struct {
	// Shards is the number of registry shards per filter (default 16).
	Shards int
	// MaxPending bounds the distinct offers pending for one subscriber
	// (default 4096). Past it the pending updates are dropped and the
	// subscriber gets a fresh snapshot instead.
	MaxPending int
	// TradeRing is how many trades wait for a slow subscriber; the oldest
	// is dropped when a new one arrives (default 16).
	TradeRing int
	// EncodeOffer encodes one offer of a snapshot (default AppendOffer);
	// set it to what GET /api/v1/offers writes.
	EncodeOffer OfferEncoder
	// Now stamps updates published without a time (default time.Now).
	Now func() time.Time
	// Writers is the number of writer loops (default GOMAXPROCS).
	Writers int
}

func (o Options) withDefaults() Options {
	if o.Shards <= 0 {
		o.Shards = 16
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 4096
	}
	if o.TradeRing <= 0 {
		o.TradeRing = 16
	}
	if o.EncodeOffer == nil {
		o.EncodeOffer = AppendOffer
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Writers <= 0 {
		o.Writers = runtime.GOMAXPROCS(0)
	}
	return o
}

// Stats are the hub's counters since New.
type Stats struct {
	Subscribers int64  // subscribers registered now
	Published   uint64 // updates accepted by Publish
	Enqueued    uint64 // (update, subscriber) pairs taken into subscriber queues; each is eventually sent or coalesced, unless the subscription ends
	FramesSent  uint64 // frames written to Conns, snapshots included
	Writes      uint64 // TryWrite calls and snapshot writes: FramesSent/Writes frames go out per write
	Snapshots   uint64 // snapshot frames written
	Coalesced   uint64 // pending updates dropped: replaced by a newer state of the offer, pushed out of a full trade ring, or cleared by an overflow
	Resyncs     uint64 // overflows answered with a fresh snapshot
	Dropped     uint64 // subscribers ended by a write or snapshot error
}

// pubStripes is the number of locks that serialise Publish per market.
const pubStripes = 64

// Hub fans market updates out to subscribers. See the package doc for who
// owns which goroutine.
type Hub struct {
	opts Options
	seed maphash.Seed

	// regMu orders group creation and deletion against registration, and
	// guards closed. Publish does not take it: it reads groups.
	regMu  sync.RWMutex
	closed bool
	groups atomic.Pointer[map[Filter]*group]

	isClosed atomic.Bool
	nextID   atomic.Uint64
	pubMu    [pubStripes]sync.Mutex
	writers  sync.WaitGroup // open subscriptions, and writes still in flight for ended ones
	loops    []*loop

	subscribers                                atomic.Int64
	published, enqueued, frames, snaps, writes atomic.Uint64
	coalesced, resyncs, dropped                atomic.Uint64
}

// group holds the subscribers of one filter, sharded by subscription id.
type group struct {
	filter Filter
	n      atomic.Int64
	shards []shard
}

type shard struct {
	mu   sync.RWMutex
	subs []*Subscription
	_    [32]byte // keep neighbouring locks off one cache line
}

// New returns an empty hub.
func New(opts Options) *Hub {
	h := &Hub{opts: opts.withDefaults(), seed: maphash.MakeSeed()}
	empty := map[Filter]*group{}
	h.groups.Store(&empty)
	h.loops = make([]*loop, h.opts.Writers)
	for i := range h.loops {
		h.loops[i] = newLoop()
	}
	return h
}

// Subscribe registers conn for the markets filter selects and schedules
// its snapshot. The first frame written is
// {"type":"snapshot","seq":1,"offers":[…]} built from snapshot; every
// update published from the moment Subscribe returns follows it (updates
// the snapshot already reflects are skipped), each frame with the next seq.
// It returns ErrClosed once the hub is closed.
func (h *Hub) Subscribe(conn Conn, filter Filter, snapshot SnapshotFunc) (*Subscription, error) {
	if conn == nil || snapshot == nil {
		return nil, market.Invalid("hub: subscribe needs a conn and a snapshot function")
	}
	s := &Subscription{
		hub:      h,
		id:       h.nextID.Add(1),
		conn:     conn,
		filter:   filter,
		snap:     snapshot,
		pos:      -1,
		needSnap: true,
		done:     make(chan struct{}),
	}
	s.loop = h.loops[s.id%uint64(len(h.loops))]
	if err := h.register(s); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.schedule()
	s.mu.Unlock()
	return s, nil
}

// Unsubscribe ends s: no frame is written after the batch in flight, its
// pending updates are dropped, and Done is closed once that batch is
// written.
// It is safe to call more than once and from any goroutine.
func (h *Hub) Unsubscribe(s *Subscription) {
	h.unregister(s)
	s.end(nil)
}

// Close ends every subscription, refuses new ones and updates, waits for
// the writes in flight (a Write blocked on a stalled client included) and
// stops the writer loops.
func (h *Hub) Close() {
	h.regMu.Lock()
	if h.closed {
		h.regMu.Unlock()
		h.writers.Wait()
		return
	}
	h.closed = true
	h.isClosed.Store(true)
	var all []*Subscription
	for _, g := range *h.groups.Load() {
		for i := range g.shards {
			sh := &g.shards[i]
			sh.mu.RLock()
			all = append(all, sh.subs...)
			sh.mu.RUnlock()
		}
	}
	h.regMu.Unlock()
	for _, s := range all {
		h.Unsubscribe(s)
	}
	h.writers.Wait()
	for _, l := range h.loops {
		l.stop()
	}
}

// Publish encodes u once and hands it to every subscriber whose filter
// matches u's market, without waiting for any of them: a subscriber that
// lags gets the latest state per offer instead of every step. Publishes of
// one market are serialised, so all subscribers see them in the same order;
// publish each offer's updates in version order (one publisher per market
// does). It returns an invalid_argument error for a malformed update and
// ErrClosed once the hub is closed.
func (h *Hub) Publish(u Update) error {
	if h.isClosed.Load() {
		return ErrClosed
	}
	if err := validate(u); err != nil {
		return err
	}
	h.published.Add(1)
	c, r := u.Market.Class, u.Market.Region
	keys := [4]Filter{{c, r}, {c, ""}, {"", r}, {"", ""}}
	// Encoded only when some filter takes the market (a subscriber that
	// joins meanwhile takes its snapshot after joining).
	groups := h.groups.Load()
	if (*groups)[keys[0]] == nil && (*groups)[keys[1]] == nil && (*groups)[keys[2]] == nil && (*groups)[keys[3]] == nil {
		return nil
	}
	f := encode(u, h.opts.Now)

	mu := &h.pubMu[maphash.String(h.seed, c+"\x00"+r)%pubStripes]
	mu.Lock()
	groups = h.groups.Load()
	var sent, coalesced uint64
	for _, k := range keys {
		g := (*groups)[k]
		if g == nil {
			continue
		}
		for i := range g.shards {
			sh := &g.shards[i]
			sh.mu.RLock()
			for _, s := range sh.subs {
				taken, c := s.deliver(f)
				if taken {
					sent++
				}
				coalesced += c
			}
			sh.mu.RUnlock()
		}
	}
	mu.Unlock()

	h.enqueued.Add(sent)
	if coalesced > 0 {
		h.coalesced.Add(coalesced)
	}
	return nil
}

// Stats returns the hub's counters.
func (h *Hub) Stats() Stats {
	return Stats{
		Subscribers: h.subscribers.Load(),
		Published:   h.published.Load(),
		Enqueued:    h.enqueued.Load(),
		FramesSent:  h.frames.Load(),
		Writes:      h.writes.Load(),
		Snapshots:   h.snaps.Load(),
		Coalesced:   h.coalesced.Load(),
		Resyncs:     h.resyncs.Load(),
		Dropped:     h.dropped.Load(),
	}
}

// register adds s to its filter's group, creating the group if needed.
func (h *Hub) register(s *Subscription) error {
	h.regMu.RLock()
	if h.closed {
		h.regMu.RUnlock()
		return ErrClosed
	}
	if g := (*h.groups.Load())[s.filter]; g != nil {
		h.join(g, s)
		h.regMu.RUnlock()
		return nil
	}
	h.regMu.RUnlock()

	h.regMu.Lock()
	defer h.regMu.Unlock()
	if h.closed {
		return ErrClosed
	}
	old := *h.groups.Load()
	g := old[s.filter]
	if g == nil {
		g = &group{filter: s.filter, shards: make([]shard, h.opts.Shards)}
		next := make(map[Filter]*group, len(old)+1)
		for k, v := range old {
			next[k] = v
		}
		next[s.filter] = g
		h.groups.Store(&next)
	}
	h.join(g, s)
	return nil
}

// join adds s to g; the caller holds regMu (either way), so that g is not
// deleted meanwhile.
func (h *Hub) join(g *group, s *Subscription) {
	sh := &g.shards[s.id%uint64(len(g.shards))]
	sh.mu.Lock()
	s.grp = g
	s.pos = len(sh.subs)
	sh.subs = append(sh.subs, s)
	sh.mu.Unlock()
	g.n.Add(1)
	h.subscribers.Add(1)
	h.writers.Add(1)
}

// unregister removes s from its group, and the group from the hub once it
// is empty. It is idempotent.
func (h *Hub) unregister(s *Subscription) {
	g := s.grp
	sh := &g.shards[s.id%uint64(len(g.shards))]
	sh.mu.Lock()
	if s.pos < 0 {
		sh.mu.Unlock()
		return
	}
	last := len(sh.subs) - 1
	sh.subs[s.pos] = sh.subs[last]
	sh.subs[s.pos].pos = s.pos
	sh.subs[last] = nil
	sh.subs = sh.subs[:last]
	s.pos = -1
	sh.mu.Unlock()
	h.subscribers.Add(-1)
	if g.n.Add(-1) > 0 {
		return
	}
	h.regMu.Lock()
	defer h.regMu.Unlock()
	old := *h.groups.Load()
	if g.n.Load() != 0 || old[g.filter] != g {
		return
	}
	next := make(map[Filter]*group, len(old))
	for k, v := range old {
		if v != g {
			next[k] = v
		}
	}
	h.groups.Store(&next)
}
