package hub

import (
	"fmt"
	"strconv"
	"sync"

	"computebroker/market"
)

// Subscription is one subscriber: a Conn, its filter and its pending
// updates. Its frames are written by its hub's writer loops, not by a
// goroutine of its own.
type Subscription struct {
	hub    *Hub
	id     uint64
	conn   Conn
	filter Filter
	snap   SnapshotFunc
	loop   *loop

	// Registry place; pos is guarded by the shard's lock, -1 once removed.
	grp *group
	pos int

	mu       sync.Mutex
	offers   offerQueue // latest pending state per offer
	trades   tradeRing  // latest pending trades
	stamp    uint64     // arrival counter ordering offers and trades
	needSnap bool       // a snapshot goes first; updates until it starts are reflected in it
	syncing  bool       // a snapshot is being taken; updates are kept
	resync   bool       // an overflow while syncing: take the snapshot again
	queued   bool       // in its loop's ready list
	busy     bool       // the conn is owned: a loop or a goroutine of s is writing (or taking the snapshot)
	closed   bool
	finished bool // done is closed
	err      error
	done     chan struct{}

	// seq is the last seq sent; only the owner of the conn (busy) uses it.
	seq uint64
}

// ID identifies the subscription within its hub.
func (s *Subscription) ID() uint64 { return s.id }

// Filter returns the filter s was subscribed with.
func (s *Subscription) Filter() Filter { return s.filter }

// Close is s.hub.Unsubscribe(s).
func (s *Subscription) Close() { s.hub.Unsubscribe(s) }

// Done is closed once s has ended (Unsubscribe, Close of the hub, or an
// error of the Conn or the snapshot function) and no write to its Conn is
// in flight any more.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err returns why the subscription ended: nil while it runs or when it was
// unsubscribed, else the wrapped Conn or snapshot error.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// deliver queues f for s without blocking. It reports whether f was taken
// (not when s has ended or its coming snapshot reflects f) and how many
// pending updates, f included, were dropped as obsolete. The caller holds
// the registry shard's read lock.
func (s *Subscription) deliver(f *frame) (taken bool, coalesced uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, 0
	}
	if f.kind == KindTrade {
		// Snapshots hold no trades: keep them whatever the sync state.
		s.stamp++
		if s.trades.push(entry{f, s.stamp}, s.hub.opts.TradeRing) {
			coalesced = 1
		}
	} else if s.resync || (s.needSnap && !s.syncing) {
		return false, 0 // reflected in the snapshot still to be taken
	} else if e, ok := s.offers.find(f.offerID); ok {
		if supersedes(f, e.f) {
			e.f = f
		}
		return true, 1 // already scheduled: it has work pending
	} else if s.offers.len() >= s.hub.opts.MaxPending {
		coalesced = uint64(s.offers.reset()) + 1
		s.hub.resyncs.Add(1)
		if s.syncing {
			s.resync = true
		} else {
			s.needSnap = true
		}
	} else {
		s.stamp++
		s.offers.push(entry{f, s.stamp})
	}
	s.schedule()
	return true, coalesced
}

// schedule puts s in its loop's ready list unless it is there already or
// its conn is owned (the owner reschedules it when done). The caller holds
// s.mu.
func (s *Subscription) schedule() {
	if s.queued || s.busy || s.closed {
		return
	}
	s.queued = true
	s.loop.push(s)
}

// hasWork reports whether anything waits to be written; s.mu is held.
func (s *Subscription) hasWork() bool {
	return s.needSnap || s.offers.len() > 0 || s.trades.n > 0
}

// supersedes reports whether n replaces o as the pending state of an offer:
// a higher version wins; with equal or unknown versions the later update
// wins, except that a tick does not bring back a removed offer.
func supersedes(n, o *frame) bool {
	if n.version != 0 && o.version != 0 && n.version != o.version {
		return n.version > o.version
	}
	return !(o.kind == KindRemove && n.kind == KindTick)
}

// end marks s closed with err (nil: unsubscribed) and drops what is
// pending; once no write is in flight, Done is closed. It reports whether
// s was open.
func (s *Subscription) end(err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.closed = true
	s.err = err
	s.offers.reset()
	s.trades = tradeRing{}
	if !s.busy {
		s.finish()
	}
	return true
}

// finish closes done; s.mu is held, s is closed and its conn not owned.
func (s *Subscription) finish() {
	if s.finished {
		return
	}
	s.finished = true
	close(s.done)
	s.hub.writers.Done()
}

// fail ends s because its Conn or snapshot failed.
func (s *Subscription) fail(err error) {
	s.hub.unregister(s)
	if s.end(err) {
		s.hub.dropped.Add(1)
	}
}

// release gives up the conn after a write or a snapshot: s is finished if
// it was closed meanwhile, else rescheduled if more is pending.
func (s *Subscription) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy = false
	if s.closed {
		s.finish()
	} else if s.hasWork() {
		s.schedule()
	}
}

// next pops the oldest pending update, offers and trades merged in order
// of arrival. The caller holds s.mu and has checked that one is pending.
func (s *Subscription) next() entry {
	switch {
	case s.trades.n == 0:
		return s.offers.pop()
	case s.offers.len() == 0:
		return s.trades.pop()
	case s.trades.front().stamp < s.offers.front().stamp:
		return s.trades.pop()
	default:
		return s.offers.pop()
	}
}

// MaxBatch bounds the frames of one write (about 200 bytes each): the
// frames a stalled subscriber holds in flight, besides the one pending
// state per offer.
const MaxBatch = 128

// serve writes what s has pending, on loop l: a snapshot is handed to a
// goroutine of its own; updates (at most MaxBatch) go out in one TryWrite,
// and what the connection does not take at once is finished by a
// goroutine, so that a slow reader never holds up the loop.
func (s *Subscription) serve(l *loop) {
	s.mu.Lock()
	s.queued = false
	if s.closed || s.busy || !s.hasWork() {
		s.mu.Unlock()
		return
	}
	s.busy = true
	if s.needSnap {
		s.needSnap, s.syncing = false, true
		s.mu.Unlock()
		go func() {
			if err := s.sendSnapshot(); err != nil {
				s.fail(err)
			}
			s.release()
		}()
		return
	}
	ents := l.ents[:0]
	for len(ents) < MaxBatch && (s.offers.len() > 0 || s.trades.n > 0) {
		ents = append(ents, s.next())
	}
	s.mu.Unlock()

	buf := l.buf[:0]
	seq := s.seq
	for _, e := range ents {
		seq++
		p := prefix[e.f.kind]
		buf = s.conn.AppendHeader(buf, len(p)+digits(seq)+len(e.f.body))
		buf = append(buf, p...)
		buf = strconv.AppendUint(buf, seq, 10)
		buf = append(buf, e.f.body...)
	}
	clear(ents)
	l.ents = ents[:0]
	if cap(buf) > 64<<10 {
		l.buf = nil // a rare huge batch: do not keep its buffer
	} else {
		l.buf = buf[:0]
	}
	n, err := s.conn.TryWrite(buf)
	s.hub.writes.Add(1)
	if err != nil {
		s.fail(fmt.Errorf("hub: write frames: %w", err))
		s.release()
		return
	}
	s.seq = seq
	s.hub.frames.Add(uint64(len(ents)))
	if n < len(buf) {
		rest := append([]byte(nil), buf[n:]...)
		go func() {
			if err := s.conn.Write(rest); err != nil {
				s.fail(fmt.Errorf("hub: write frames: %w", err))
			}
			s.release()
		}()
		return
	}
	s.release()
}

// digits is the length of n in decimal.
func digits(n uint64) int {
	d := 1
	for n >= 10 {
		n /= 10
		d++
	}
	return d
}

// maxHeader is room for any Conn's frame header in front of a snapshot.
const maxHeader = 16

// sendSnapshot takes a snapshot, drops the pending updates it reflects and
// writes it. The caller owns the conn and has set syncing.
func (s *Subscription) sendSnapshot() error {
	offers, err := s.snap()
	if err != nil {
		s.mu.Lock()
		s.syncing = false
		s.mu.Unlock()
		return fmt.Errorf("hub: snapshot: %w", err)
	}
	b := make([]byte, maxHeader, maxHeader+256+256*len(offers))
	b = append(b, snapshotPrefix...)
	b = strconv.AppendUint(b, s.seq+1, 10)
	b = append(b, `,"offers":[`...)
	first := true
	for i := range offers {
		o := &offers[i]
		if !s.filter.Match(o.Market()) || (o.Status != "" && o.Status != market.OfferActive) {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = s.hub.opts.EncodeOffer(b, *o)
	}
	b = append(b, "]}"...)

	s.mu.Lock()
	s.syncing = false
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	if s.resync { // pending overflowed meanwhile: this snapshot may miss what was cleared
		s.resync, s.needSnap = false, true
		s.offers.reset()
		s.mu.Unlock()
		return nil
	}
	if s.offers.len() > 0 {
		s.hub.coalesced.Add(uint64(s.offers.filter(reflectedIn(s.filter, offers))))
	}
	s.mu.Unlock()

	var hdr [maxHeader]byte
	h := s.conn.AppendHeader(hdr[:0], len(b)-maxHeader)
	if len(h) > maxHeader {
		return fmt.Errorf("hub: frame header of %d bytes", len(h))
	}
	start := maxHeader - len(h)
	copy(b[start:], h)
	if err := s.conn.Write(b[start:]); err != nil {
		return fmt.Errorf("hub: write snapshot: %w", err)
	}
	s.seq++
	s.hub.writes.Add(1)
	s.hub.frames.Add(1)
	s.hub.snaps.Add(1)
	return nil
}

// reflectedIn returns a filter keeping the pending updates that offers do
// not already reflect: ticks and removes of a version above the snapshot's
// (or of unknown version) for offers in it, ticks for offers not in it
// (offers that appeared after it). A remove of an offer the snapshot does
// not hold tells the subscriber nothing.
func reflectedIn(filter Filter, offers []market.Offer) func(*frame) bool {
	versions := make(map[string]int64, len(offers))
	for i := range offers {
		o := &offers[i]
		if filter.Match(o.Market()) && (o.Status == "" || o.Status == market.OfferActive) {
			versions[o.ID] = o.Version
		}
	}
	return func(f *frame) bool {
		v, ok := versions[f.offerID]
		if !ok {
			return f.kind == KindTick
		}
		return f.version == 0 || f.version > v
	}
}
