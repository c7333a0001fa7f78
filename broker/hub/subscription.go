package hub

import (
	"fmt"
	"strconv"
	"sync"

	"computebroker/market"
)

// keepBuf is the largest write buffer a writer keeps between frames; the
// buffer of a large snapshot is released.
const keepBuf = 1024

// Subscription is one subscriber: a Conn, its filter, its pending updates
// and the writer goroutine that owns the Conn.
type Subscription struct {
	hub    *Hub
	id     uint64
	conn   Conn
	filter Filter
	snap   SnapshotFunc

	// Registry place; pos is guarded by the shard's lock, -1 once removed.
	grp *group
	pos int

	mu       sync.Mutex
	offers   offerQueue // latest pending state per offer
	trades   tradeRing  // latest pending trades
	stamp    uint64     // arrival counter ordering offers and trades
	needSnap bool       // a snapshot goes first; updates until it starts are reflected in it
	syncing  bool       // the writer is taking a snapshot; updates are kept
	resync   bool       // an overflow while syncing: take the snapshot again
	waiting  bool       // the writer waits on wake
	closed   bool
	err      error
	wake     chan struct{}
	done     chan struct{}

	// Owned by the writer goroutine.
	seq uint64
	buf []byte
}

// ID identifies the subscription within its hub.
func (s *Subscription) ID() uint64 { return s.id }

// Filter returns the filter s was subscribed with.
func (s *Subscription) Filter() Filter { return s.filter }

// Close is s.hub.Unsubscribe(s).
func (s *Subscription) Close() { s.hub.Unsubscribe(s) }

// Done is closed once the writer goroutine has exited: after Unsubscribe,
// Close of the hub, or an error of the Conn or the snapshot function.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err returns why the subscription ended: nil while it runs or when it was
// unsubscribed, else the wrapped WriteFrame or snapshot error.
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
		return true, 1 // the writer already has work: no wake-up
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
	if s.waiting {
		s.waiting = false
		s.wake <- struct{}{}
	}
	return true, coalesced
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

// end marks s closed with err (nil: unsubscribed), drops what is pending
// and wakes the writer so that it exits. It reports whether s was open.
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
	if s.waiting {
		s.waiting = false
		s.wake <- struct{}{}
	}
	return true
}

// fail ends s because its Conn or snapshot failed.
func (s *Subscription) fail(err error) {
	s.hub.unregister(s)
	if s.end(err) {
		s.hub.dropped.Add(1)
	}
}

// run is the writer goroutine: it alone calls snapshot and WriteFrame, and
// it holds no lock while doing so.
func (s *Subscription) run() {
	defer s.hub.writers.Done()
	defer close(s.done)
	for {
		s.mu.Lock()
		for !s.closed && !s.needSnap && s.offers.len() == 0 && s.trades.n == 0 {
			s.waiting = true
			s.mu.Unlock()
			<-s.wake
			s.mu.Lock()
		}
		if s.closed {
			s.mu.Unlock()
			return
		}
		if s.needSnap {
			s.needSnap, s.syncing = false, true
			s.mu.Unlock()
			if err := s.sendSnapshot(); err != nil {
				s.fail(err)
				return
			}
			continue
		}
		var e entry
		switch {
		case s.trades.n == 0:
			e = s.offers.pop()
		case s.offers.len() == 0:
			e = s.trades.pop()
		case s.trades.front().stamp < s.offers.front().stamp:
			e = s.trades.pop()
		default:
			e = s.offers.pop()
		}
		s.mu.Unlock()
		if err := s.write(e.f); err != nil {
			s.fail(fmt.Errorf("hub: write frame: %w", err))
			return
		}
	}
}

// write sends f with the next seq.
func (s *Subscription) write(f *frame) error {
	b := append(s.buf[:0], prefix[f.kind]...)
	b = strconv.AppendUint(b, s.seq+1, 10)
	b = append(b, f.body...)
	s.buf = b
	if err := s.conn.WriteFrame(b); err != nil {
		return err
	}
	s.seq++
	s.hub.frames.Add(1)
	return nil
}

// sendSnapshot takes a snapshot, drops the pending updates it reflects and
// writes it. The caller has set syncing.
func (s *Subscription) sendSnapshot() error {
	offers, err := s.snap()
	if err != nil {
		s.mu.Lock()
		s.syncing = false
		s.mu.Unlock()
		return fmt.Errorf("hub: snapshot: %w", err)
	}
	b := append(s.buf[:0], snapshotPrefix...)
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
		s.keep(b)
		return nil
	}
	if s.offers.len() > 0 {
		s.hub.coalesced.Add(uint64(s.offers.filter(reflectedIn(s.filter, offers))))
	}
	s.mu.Unlock()

	err = s.conn.WriteFrame(b)
	s.keep(b)
	if err != nil {
		return fmt.Errorf("hub: write snapshot: %w", err)
	}
	s.seq++
	s.hub.frames.Add(1)
	s.hub.snaps.Add(1)
	return nil
}

// keep keeps b as the write buffer unless it is large.
func (s *Subscription) keep(b []byte) {
	if cap(b) > keepBuf {
		b = nil
	}
	s.buf = b[:0]
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
