package broker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"computebroker/broker/hub"
	"computebroker/catalog"
	"computebroker/market"
	"computebroker/matching"
)

// LiveStore is what the live view reads: every market's offers and the
// change and trade streams that keep them current.
type LiveStore interface {
	LoadMarket(ctx context.Context, m market.MarketKey) (catalog.MarketState, error)
	Follow(ctx context.Context, states []catalog.MarketState, block time.Duration, apply func([]catalog.Change)) error
	FollowTrades(ctx context.Context, markets []market.MarketKey, block time.Duration, apply func([]market.Trade)) error
	Offer(ctx context.Context, id string) (market.Offer, error)
	Account(ctx context.Context, id string) (market.Account, error)
}

var _ LiveStore = (*catalog.Store)(nil)

// Live is this brokerd's view of the market, kept current from Redis: the
// matching engine's books and the market hub of the streams. Books are
// loaded at start and then follow every market's change stream, so any
// number of brokerd processes stay in step; trades are followed from the
// markets' trade streams and handed to listeners (the hub, the provider
// streams).
//
// One goroutine follows the change streams and applies each change to the
// engine and then the hub, in stream order per market; another follows the
// trade streams. Methods are safe for concurrent use.
type Live struct {
	store   LiveStore
	markets []market.MarketKey
	engine  *matching.Engine
	hub     *hub.Hub
	log     *slog.Logger

	mu        sync.Mutex
	providers map[string]market.Account
	listeners map[int]func(market.Trade)
	nextID    int
	fills     chan matching.Fill
	onFill    func(matching.Fill)
}

// NewLive returns a Live view of the markets; Start loads and follows them.
func NewLive(store LiveStore, markets []market.MarketKey, log *slog.Logger) *Live {
	if log == nil {
		log = slog.Default()
	}
	l := &Live{store: store, markets: markets, log: log, providers: map[string]market.Account{},
		listeners: map[int]func(market.Trade){}, fills: make(chan matching.Fill, 4096)}
	// 256 events per market: a queue's buffer is allocated whole (456
	// bytes an event) and, once ingest has cycled through it, resident.
	// The market's goroutine drains all it holds at each batch, so a
	// longer queue only holds the follower back later.
	l.engine = matching.NewEngine(matching.Config{Markets: markets, QueueSize: 256, OnFill: func(f matching.Fill) {
		select {
		case l.fills <- f:
		default:
			l.log.Warn("fill queue full; resting job left for the next change", "job", f.JobID)
		}
	}})
	l.hub = hub.New(hub.Options{EncodeOffer: appendOfferView})
	return l
}

// Engine is the matching engine the books live in.
func (l *Live) Engine() *matching.Engine { return l.engine }

// Hub is the market stream's fan-out.
func (l *Live) Hub() *hub.Hub { return l.hub }

// Markets lists the markets followed.
func (l *Live) Markets() []market.MarketKey { return l.markets }

// Start loads every market into the books and follows the streams until ctx
// ends.
func (l *Live) Start(ctx context.Context) error {
	states := make([]catalog.MarketState, 0, len(l.markets))
	for _, m := range l.markets {
		st, err := l.store.LoadMarket(ctx, m)
		if err != nil {
			return err
		}
		states = append(states, st)
		for _, o := range st.Offers {
			if err := l.upsert(ctx, o); err != nil {
				return err
			}
		}
	}
	if err := l.engine.Sync(ctx); err != nil {
		return err
	}
	go func() {
		_ = l.store.Follow(ctx, states, time.Second, func(cs []catalog.Change) { l.apply(ctx, cs) })
	}()
	go func() {
		_ = l.store.FollowTrades(ctx, l.markets, time.Second, l.trades)
	}()
	go l.runFills(ctx)
	return nil
}

// Close stops the engine and the hub.
func (l *Live) Close() {
	l.hub.Close()
	l.engine.Close()
}

// provider returns the provider account an offer belongs to, fetching it
// when unknown or not approved (approval may have come since).
func (l *Live) provider(ctx context.Context, id string) (market.Account, error) {
	l.mu.Lock()
	p, ok := l.providers[id]
	l.mu.Unlock()
	if ok && p.Approved() {
		return p, nil
	}
	p, err := l.store.Account(ctx, id)
	if err != nil {
		return p, err
	}
	l.mu.Lock()
	prev, had := l.providers[id]
	l.providers[id] = p
	l.mu.Unlock()
	if had && prev.Status != p.Status {
		if err := l.engine.Apply(ctx, matching.SetProvider(p)); err != nil {
			return p, err
		}
	}
	return p, nil
}

func (l *Live) upsert(ctx context.Context, o market.Offer) error {
	p, err := l.provider(ctx, o.ProviderID)
	if err != nil {
		return err
	}
	return l.engine.Apply(ctx, matching.Upsert(o, p))
}

func (l *Live) apply(ctx context.Context, cs []catalog.Change) {
	for _, c := range cs {
		var err error
		if c.Remove {
			err = l.engine.Apply(ctx, matching.Remove(c.Market, c.Offer.ID))
		} else {
			err = l.upsert(ctx, c.Offer)
		}
		if err != nil && ctx.Err() == nil {
			l.log.Warn("apply market change", "change", c.String(), "err", err)
		}
		if c.Remove {
			err = l.hub.Publish(hub.RemoveUpdate(c.Market, c.Offer.ID, c.Offer.Version))
		} else {
			err = l.hub.Publish(hub.OfferUpdate(c.Offer))
		}
		if err != nil && !errors.Is(err, hub.ErrClosed) {
			l.log.Warn("publish market change", "change", c.String(), "err", err)
		}
	}
}

// Refresh reads an offer from Redis into this brokerd's book and waits until
// the book shows it: read-your-writes after a local change or a failed
// reservation, without waiting for the change stream.
func (l *Live) Refresh(ctx context.Context, o market.Offer) error {
	if o.Status == market.OfferActive {
		if err := l.upsert(ctx, o); err != nil {
			return err
		}
	} else {
		if err := l.engine.Apply(ctx, matching.Remove(o.Market(), o.ID)); err != nil {
			return err
		}
	}
	return l.engine.SyncMarket(ctx, o.Market())
}

// Apply queues an offer's new state for this brokerd's book without waiting
// for the book to show it.
func (l *Live) Apply(ctx context.Context, o market.Offer) error {
	if o.Status != market.OfferActive {
		return l.engine.Apply(ctx, matching.Remove(o.Market(), o.ID))
	}
	return l.upsert(ctx, o)
}

// RefreshID is Refresh for an offer known by id.
func (l *Live) RefreshID(ctx context.Context, id string) error {
	o, err := l.store.Offer(ctx, id)
	if err != nil {
		return err
	}
	return l.Refresh(ctx, o)
}

// Snapshot lists the offers of the markets a filter selects, as this
// brokerd's books hold them.
func (l *Live) Snapshot(f hub.Filter) ([]market.Offer, error) {
	var out []market.Offer
	for _, m := range l.markets {
		if !f.Match(m) {
			continue
		}
		snap := l.engine.Snapshot(m)
		if snap == nil {
			continue
		}
		for _, c := range snap.Candidates() {
			out = append(out, c.Offer)
		}
	}
	return out, nil
}

// OnTrade calls fn with every trade committed in any market, by any brokerd,
// from now on; fn must not block. The returned func stops the calls.
func (l *Live) OnTrade(fn func(market.Trade)) (cancel func()) {
	l.mu.Lock()
	id := l.nextID
	l.nextID++
	l.listeners[id] = fn
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		delete(l.listeners, id)
		l.mu.Unlock()
	}
}

func (l *Live) trades(ts []market.Trade) {
	l.mu.Lock()
	fns := make([]func(market.Trade), 0, len(l.listeners))
	for _, fn := range l.listeners {
		fns = append(fns, fn)
	}
	l.mu.Unlock()
	for _, t := range ts {
		if err := l.hub.Publish(hub.TradeUpdate(t)); err != nil && !errors.Is(err, hub.ErrClosed) {
			l.log.Warn("publish trade", "trade", t.ID, "err", err)
		}
		for _, fn := range fns {
			fn(t)
		}
	}
}

// OnFill sets where resting jobs that became matchable go.
func (l *Live) OnFill(fn func(matching.Fill)) {
	l.mu.Lock()
	l.onFill = fn
	l.mu.Unlock()
}

func (l *Live) runFills(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case f := <-l.fills:
			l.mu.Lock()
			fn := l.onFill
			l.mu.Unlock()
			if fn != nil {
				fn(f)
			}
		}
	}
}

// SetProvider applies a provider's new standing to this brokerd's books at
// once (its offers also leave or join the books through the change stream).
func (l *Live) SetProvider(ctx context.Context, p market.Account) error {
	l.mu.Lock()
	l.providers[p.ID] = p
	l.mu.Unlock()
	if err := l.engine.Apply(ctx, matching.SetProvider(p)); err != nil {
		return err
	}
	return l.engine.Sync(ctx)
}
