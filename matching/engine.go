package matching

import (
	"context"
	"errors"
	"math"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"computebroker/market"

	"github.com/shopspring/decimal"
)

// EventKind says what an Event changes.
type EventKind uint8

// Event kinds.
const (
	// EventUpsert adds or replaces Event.Offer, sold by Event.Provider.
	EventUpsert EventKind = iota + 1
	// EventRemove removes offer Event.OfferID from market Event.Market.
	EventRemove
	// EventProvider records Event.Provider in every market.
	EventProvider
	// EventReference sets the reference price of market Event.Market (see
	// SetReference).
	EventReference
)

// Event is one change to the books, as the catalog's change streams carry it.
type Event struct {
	Kind      EventKind
	Offer     market.Offer     // EventUpsert
	Provider  market.Account   // EventUpsert, EventProvider
	Market    market.MarketKey // EventRemove, EventReference
	OfferID   string           // EventRemove
	Reference decimal.Decimal  // EventReference
}

// Upsert returns the event that adds or replaces offer.
func Upsert(offer market.Offer, provider market.Account) Event {
	return Event{Kind: EventUpsert, Offer: offer, Provider: provider}
}

// Remove returns the event that removes the offer with id from m.
func Remove(m market.MarketKey, offerID string) Event {
	return Event{Kind: EventRemove, Market: m, OfferID: offerID}
}

// SetProvider returns the event that records a provider's account (status,
// certifications) in every market.
func SetProvider(p market.Account) Event { return Event{Kind: EventProvider, Provider: p} }

// SetReference returns the event that sets the reference price of market m
// for the voucher guard (the market's 30-day unsubsidised VWAP); zero
// clears it, so that offers are held to their list prices. Decisions on a
// request without its own Request.Reference take the reference from the
// market's snapshot: read with the snapshot, asked nothing.
func SetReference(m market.MarketKey, ref decimal.Decimal) Event {
	return Event{Kind: EventReference, Market: m, Reference: ref}
}

// Errors of the Engine.
var (
	// ErrClosed is returned once Close has been called.
	ErrClosed = errors.New("matching: engine closed")
	// ErrUnknownMarket is returned for an event of a market the engine was
	// not configured with.
	ErrUnknownMarket = errors.New("matching: unknown market")
)

// Fill is a resting job that an update made matchable: the broker runs the
// normal checkout for it. The job is no longer resting; if checkout fails,
// Rest it again.
type Fill struct {
	JobID string
	Match Match  // the best single-offer match (zero when Split is set)
	Split *Split // the best split, for jobs that allow splitting
}

// Config configures an Engine.
type Config struct {
	// Markets are the markets the engine keeps books for (see
	// market.Catalog.Markets). Events of other markets are refused.
	Markets []market.MarketKey
	// QueueSize bounds each market's event queue (default 1024).
	QueueSize int
	// Now is the clock resting jobs are matched at (voucher validity, and
	// jobs past expires_at are not filled). Nil: the time in the job's
	// Request.
	Now func() time.Time
	// OnFill receives resting jobs that became matchable, oldest job first
	// within one market's batch. It is called from a market's goroutine and
	// must not block (hand the fill to a buffered channel or a worker).
	OnFill func(Fill)
}

// Engine keeps one Book per market, each owned by one goroutine that drains
// a bounded queue of events and publishes an immutable snapshot after each
// batch; readers (Match, Snapshot) never lock and never wait for writers.
// All methods are safe for concurrent use.
type Engine struct {
	cfg     Config
	markets map[market.MarketKey]*owner
	byClass map[string]*classMarkets
	byNum   []*classMarkets // by class number (see mktNums)
	pool    sync.Pool       // *Scratch
	wg      sync.WaitGroup
	done    chan struct{}
	once    sync.Once
	rest    restRegistry
}

// classMarkets is a class's markets, by region, with the books' published
// snapshots side by side so that a decision finds them in a cache line or
// two.
type classMarkets struct {
	regions []string
	snaps   []atomic.Pointer[Snapshot] // snaps[i] is the book of regions[i]'s
	// mask has the bits of the regions (see mktNums), and byBit[b] is the
	// index in regions of bit b's. complete: every region has a bit.
	mask     uint64
	byBit    [64]uint8
	complete bool
}

// owner is the goroutine that owns one market's book.
type owner struct {
	book  *Book
	queue chan ownerMsg
}

type ownerMsg struct {
	ev      Event
	group   *providerGroup // for EventProvider: shared by every market
	barrier chan struct{}
}

// providerGroup gathers, across markets, the offers a provider change
// touched; the last market to apply the change checks resting jobs against
// all of them, so a fill sees the change in every market.
type providerGroup struct {
	remaining atomic.Int32
	mu        sync.Mutex
	changed   []slot
}

// NewEngine starts one goroutine per configured market. Call Close to stop
// them.
func NewEngine(cfg Config) *Engine {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1024
	}
	e := &Engine{markets: map[market.MarketKey]*owner{}, byClass: map[string]*classMarkets{}, done: make(chan struct{})}
	e.pool.New = func() any { return NewScratch() }
	e.rest.jobs = map[string]*restingJob{}
	e.rest.byMarket = map[market.MarketKey][]*restingJob{}
	classes := map[string][]string{} // class → regions
	for _, m := range cfg.Markets {
		if !slices.Contains(classes[m.Class], m.Region) {
			classes[m.Class] = append(classes[m.Class], m.Region)
		}
	}
	nums := numberMarkets(cfg.Markets)
	for c, regions := range classes {
		slices.Sort(regions)
		cm := &classMarkets{regions: regions, snaps: make([]atomic.Pointer[Snapshot], len(regions)), complete: true}
		e.byClass[c] = cm
		for i, r := range regions {
			m := market.MarketKey{Class: c, Region: r}
			e.markets[m] = &owner{book: newBook(m, &cm.snaps[i]), queue: make(chan ownerMsg, cfg.QueueSize)}
			if b, ok := nums.regionBit(r); ok && i <= math.MaxUint8 {
				cm.mask |= b
				cm.byBit[bits.TrailingZeros64(b)] = uint8(i)
			} else {
				cm.complete = false
			}
		}
		n := int(nums.classes[c])
		if n >= len(e.byNum) {
			e.byNum = append(e.byNum, make([]*classMarkets, n+1-len(e.byNum))...)
		}
		e.byNum[n] = cm
	}
	e.cfg = cfg
	for _, o := range e.markets {
		e.wg.Add(1)
		go e.run(o)
	}
	return e
}

// Close stops the market goroutines after they have drained what is queued
// and waits for them. Later calls to Apply, Sync and Rest return ErrClosed.
func (e *Engine) Close() {
	e.once.Do(func() { close(e.done) })
	e.wg.Wait()
}

// Apply queues ev for its market (an EventProvider for every market). It
// blocks while a queue is full — back-pressure for the change-stream reader,
// which must not drop events — until ctx is done (ctx.Err()) or the engine is
// closed (ErrClosed). ErrUnknownMarket is returned for a market the engine
// does not keep. An event whose offer the book refuses (see Book.Upsert) is
// dropped by the market goroutine.
func (e *Engine) Apply(ctx context.Context, ev Event) error {
	switch ev.Kind {
	case EventUpsert:
		return e.send(ctx, ev.Offer.Market(), ownerMsg{ev: ev})
	case EventRemove, EventReference:
		return e.send(ctx, ev.Market, ownerMsg{ev: ev})
	case EventProvider:
		g := &providerGroup{}
		g.remaining.Store(int32(len(e.markets)))
		for _, m := range e.cfg.Markets {
			if e.markets[m] == nil {
				continue
			}
			if err := e.send(ctx, m, ownerMsg{ev: ev, group: g}); err != nil {
				return err
			}
		}
		return nil
	}
	return market.Invalid("matching: unknown event kind %d", ev.Kind)
}

func (e *Engine) send(ctx context.Context, m market.MarketKey, msg ownerMsg) error {
	o := e.markets[m]
	if o == nil {
		return ErrUnknownMarket
	}
	select {
	case <-e.done:
		return ErrClosed
	default:
	}
	select {
	case o.queue <- msg:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-e.done:
		return ErrClosed
	}
}

// Sync waits until every event queued before it has been applied and
// published (and its fills reported).
func (e *Engine) Sync(ctx context.Context) error {
	chans := make([]chan struct{}, 0, len(e.markets))
	for _, m := range e.cfg.Markets {
		ch := make(chan struct{})
		if err := e.send(ctx, m, ownerMsg{barrier: ch}); err != nil {
			return err
		}
		chans = append(chans, ch)
	}
	for _, ch := range chans {
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-e.done:
			return ErrClosed
		}
	}
	return nil
}

// Snapshot returns the last published snapshot of m, nil for a market the
// engine does not keep.
func (e *Engine) Snapshot(m market.MarketKey) *Snapshot {
	o := e.markets[m]
	if o == nil {
		return nil
	}
	return o.book.Snapshot()
}

// Markets returns the snapshots of the markets req's job covers: its class in
// each of its regions (deduplicated, in the job's order), or in every region
// the engine keeps for the class when the job names none. dst is reused.
func (e *Engine) snapshots(req *Request, dst []*Snapshot) []*Snapshot {
	dst = dst[:0]
	class := req.Job.ResourceClass
	if class == "" {
		class = req.Class.ID
	}
	cm := e.byClass[class]
	if cm == nil {
		return dst
	}
	regions := req.Job.Regions
	if len(regions) == 0 {
		for i := range cm.snaps {
			dst = append(dst, cm.snaps[i].Load())
		}
		return dst
	}
	for i, r := range regions {
		if slices.Contains(regions[:i], r) {
			continue
		}
		if j := slices.Index(cm.regions, r); j >= 0 {
			dst = append(dst, cm.snaps[j].Load())
		}
	}
	return dst
}

// Match matches req over the current snapshots of its job's markets (see
// Decide): the same matches as Rank over those snapshots' offers.
func (e *Engine) Match(req Request, limit int) Result {
	s := e.pool.Get().(*Scratch)
	e.decide(&req, limit, s)
	res := s.Result()
	s.release()
	e.pool.Put(s)
	return res
}

// Decide is Match into a caller's Scratch, allocation-free once s is warm:
// read the outcome with s.Len, s.Pick, s.Rejected, or s.Result. req must
// stay unchanged while s is read.
func (e *Engine) Decide(req *Request, limit int, s *Scratch) int {
	s.load(req)
	return e.decide(req, limit, s)
}

// decide finds req's markets, by number when it can, and decides req.
func (e *Engine) decide(req *Request, limit int, s *Scratch) int {
	if cm := e.numbered(req); cm != nil {
		s.snaps, s.rbits = cm.pick(req.num.regions, s.snaps, s.rbits)
		return decide(req, s.snaps, true, limit, s)
	}
	s.snaps = e.snapshots(req, s.snaps)
	return decide(req, s.snaps, false, limit, s)
}

// numbered returns the markets of req's class when req names its class,
// regions and grants' region scopes by number and every market of the
// class has one; nil when the markets are to be found by their names.
func (e *Engine) numbered(req *Request) *classMarkets {
	if !req.num.ok || int(req.num.class) >= len(e.byNum) {
		return nil
	}
	if cm := e.byNum[req.num.class]; cm != nil && cm.complete {
		return cm
	}
	return nil
}

// run is a market's goroutine: it drains the queue in batches, applies each
// batch to the book, publishes once, then checks resting jobs against the
// offers the batch changed.
func (e *Engine) run(o *owner) {
	defer e.wg.Done()
	var changed []slot
	var barriers []chan struct{}
	type groupPart struct {
		g       *providerGroup
		changed []slot
	}
	var groups []groupPart
	handle := func(msg ownerMsg) {
		switch {
		case msg.barrier != nil:
			barriers = append(barriers, msg.barrier)
		case msg.group != nil:
			groups = append(groups, groupPart{msg.group, e.applyEvent(o, msg.ev, nil)})
		default:
			changed = e.applyEvent(o, msg.ev, changed)
		}
	}
	finish := func() {
		o.book.Publish()
		if len(changed) > 0 {
			e.checkResting(changed)
		}
		for _, gp := range groups {
			gp.g.mu.Lock()
			gp.g.changed = append(gp.g.changed, gp.changed...)
			gp.g.mu.Unlock()
			if gp.g.remaining.Add(-1) == 0 {
				e.checkResting(gp.g.changed)
			}
		}
		for _, b := range barriers {
			close(b)
		}
		clear(changed)
		clear(groups)
		changed, barriers, groups = changed[:0], barriers[:0], groups[:0]
	}
	for {
		var msg ownerMsg
		select {
		case msg = <-o.queue:
		case <-e.done:
			// Drain what is queued, then stop.
			for draining := true; draining; {
				select {
				case msg = <-o.queue:
					handle(msg)
				default:
					draining = false
				}
			}
			finish()
			return
		}
		handle(msg)
	batch:
		for n := 1; n < 4096; n++ {
			select {
			case msg = <-o.queue:
				handle(msg)
			default:
				break batch
			}
		}
		finish()
	}
}

// applyEvent applies ev to the book and appends the offers that may have
// become matchable (upserted, or whose provider changed).
func (e *Engine) applyEvent(o *owner, ev Event, changed []slot) []slot {
	b := o.book
	switch ev.Kind {
	case EventUpsert:
		if b.Upsert(ev.Offer, ev.Provider) == nil {
			if sl, ok := b.byID[ev.Offer.ID]; ok {
				changed = append(changed, sl)
			}
		}
	case EventRemove:
		b.Remove(ev.OfferID)
	case EventProvider:
		changed = b.SetProvider(ev.Provider, changed)
	case EventReference:
		// A reference moves discounts, not what a job's limits accept:
		// no resting job becomes matchable.
		b.SetReference(ev.Reference)
	}
	return changed
}

// SyncMarket waits until every event of market m queued before it has been
// applied and published: a writer's read-your-writes for one market.
func (e *Engine) SyncMarket(ctx context.Context, m market.MarketKey) error {
	ch := make(chan struct{})
	if err := e.send(ctx, m, ownerMsg{barrier: ch}); err != nil {
		return err
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-e.done:
		return ErrClosed
	}
}
