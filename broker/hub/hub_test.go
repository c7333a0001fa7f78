package hub

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"computebroker/market"
)

func TestFrames(t *testing.T) {
	h := New(Options{Now: func() time.Time { return t0 }})
	defer h.Close()
	offer := market.Offer{ID: "of-1", ProviderID: "p-1", ResourceClass: h100East.Class, Region: h100East.Region,
		Units: 8, UnitsFree: 6, Price: decimal.RequireFromString("21.5"), MaxHours: 720, Version: 3,
		Status: market.OfferActive, UpdatedAt: t0.In(time.FixedZone("CST", 8*3600))}
	other := offer
	other.ID, other.Region = "of-2", "cn-west" // outside the filter
	c := &recConn{}
	mustSubscribe(t, h, c, Filter{ResourceClass: h100East.Class, Region: h100East.Region},
		func() ([]market.Offer, error) { return []market.Offer{offer, other}, nil })
	waitFor(t, "snapshot", func() bool { return c.count() == 1 })

	// One at a time: a remove published before the tick is written would
	// replace it.
	mustPublish(t, h, Update{Kind: KindTick, Market: h100East, OfferID: "of-1", Version: 4,
		Price: decimal.RequireFromString("20.1234"), UnitsFree: 5, TS: t0.Add(1500 * time.Millisecond)})
	waitFor(t, "tick", func() bool { return c.count() == 2 })
	mustPublish(t, h, RemoveUpdate(h100East, "of-1", 5))
	waitFor(t, "remove", func() bool { return c.count() == 3 })
	mustPublish(t, h, TradeUpdate(market.Trade{ID: "tr-1", ResourceClass: h100East.Class, Region: h100East.Region,
		Units: 2, Hours: 10, UnitPrice: decimal.RequireFromString("20")})) // no ts: the hub's clock
	mustPublish(t, h, TickUpdate(market.Tick{OfferID: "of-9", ResourceClass: "gpu.a800-80g", Region: "cn-east",
		Price: decimal.RequireFromString("9"), Version: 1, TS: t0})) // another market: not delivered
	waitFor(t, "trade", func() bool { return c.count() == 4 })

	want := []string{
		`{"type":"snapshot","seq":1,"offers":[{"id":"of-1","provider_id":"p-1","resource_class":"gpu.h100-80g","region":"cn-east","units":8,"units_free":6,"price":"21.50","max_hours":720,"version":3,"status":"active","updated_at":"2026-03-01T08:00:00Z"}]}`,
		`{"type":"tick","seq":2,"offer_id":"of-1","price":"20.1234","units_free":5,"ts":"2026-03-01T08:00:01.5Z","version":4}`,
		`{"type":"remove","seq":3,"offer_id":"of-1","version":5}`,
		`{"type":"trade","seq":4,"resource_class":"gpu.h100-80g","region":"cn-east","price":"20.00","units":2,"hours":10,"ts":"2026-03-01T08:00:00Z"}`,
	}
	time.Sleep(10 * time.Millisecond)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.frames) != len(want) {
		t.Fatalf("got %d frames, want %d", len(c.frames), len(want))
	}
	for i, w := range want {
		if got := string(c.frames[i]); got != w {
			t.Errorf("frame %d:\n got %s\nwant %s", i, got, w)
		}
		decode(t, c.frames[i])
	}
}

func TestAppendStringEscapes(t *testing.T) {
	for _, s := range []string{"plain", `q"uote`, `back\slash`, "ctl\n", "云计算", ""} {
		got := string(AppendJSONString(nil, s))
		var back string
		if err := jsonUnmarshal(got, &back); err != nil || back != s {
			t.Errorf("AppendJSONString(%q) = %s (%v)", s, got, err)
		}
	}
}

func TestPublishRejectsMalformedUpdates(t *testing.T) {
	h := New(Options{})
	defer h.Close()
	for name, u := range map[string]Update{
		"no market":       {Kind: KindTick, OfferID: "x"},
		"tick no offer":   {Kind: KindTick, Market: h100East},
		"remove no offer": {Kind: KindRemove, Market: h100East},
		"unknown kind":    {Kind: 9, Market: h100East, OfferID: "x"},
	} {
		if err := h.Publish(u); !market.IsCode(err, market.CodeInvalidArgument) {
			t.Errorf("%s: err = %v, want invalid_argument", name, err)
		}
	}
}

// TestOrderAndSeq: a subscriber that keeps up gets every update in publish
// order, trades interleaved where they were published, seq rising by one.
func TestOrderAndSeq(t *testing.T) {
	t.Run("whole", func(t *testing.T) { testOrderAndSeq(t, 0) })
	// Every batch split mid-frame: TryWrite takes a few bytes, a goroutine
	// writes the rest before anything else goes out.
	t.Run("split", func(t *testing.T) { testOrderAndSeq(t, 7) })
}

func testOrderAndSeq(t *testing.T, tryLimit int) {
	h := New(Options{TradeRing: 1000})
	defer h.Close()
	var conns []*recConn
	for range 3 {
		c := &recConn{tryLimit: tryLimit}
		conns = append(conns, c)
		mustSubscribe(t, h, c, Filter{}, emptySnapshot)
	}
	for _, c := range conns {
		waitFor(t, "snapshot", func() bool { return c.count() == 1 })
	}
	var want []string
	for i := range 600 {
		if i%10 == 9 {
			mustPublish(t, h, Update{Kind: KindTrade, Market: h100East, Price: decimal.NewFromInt(int64(i)), Units: 1, Hours: 1, TS: t0})
			want = append(want, fmt.Sprintf("trade %d.00", i))
			continue
		}
		id := offerID(i) // a new offer each time: nothing to coalesce
		mustPublish(t, h, Update{Kind: KindTick, Market: h100East, OfferID: id, Version: 1, Price: decimal.NewFromInt(int64(i)), TS: t0})
		want = append(want, "tick "+id)
	}
	for _, c := range conns {
		waitFor(t, "all frames", func() bool { return c.count() == len(want)+1 })
		ms := c.msgs(t)
		newModel().apply(t, ms)
		for i, m := range ms[1:] {
			got := "tick " + m.OfferID
			if m.Type == "trade" {
				got = "trade " + m.Price
			}
			if got != want[i] {
				t.Fatalf("frame %d = %s, want %s", i+1, got, want[i])
			}
		}
	}
	if st := h.Stats(); st.Coalesced != 0 || st.Published != 600 || st.Enqueued != 1800 {
		t.Fatalf("stats %+v", st)
	}
}

// TestBatching: what piles up while a subscriber's write is blocked goes
// out in one write (at most MaxBatch frames each), in order, with seq
// rising by one per frame.
func TestBatching(t *testing.T) {
	h := New(Options{})
	defer h.Close()
	c := &recConn{}
	mustSubscribe(t, h, c, Filter{}, emptySnapshot)
	waitFor(t, "snapshot", func() bool { return c.count() == 1 })
	c.gate.Lock()
	mustPublish(t, h, Update{Kind: KindTick, Market: h100East, OfferID: offerID(0), Version: 1, Price: decimal.NewFromInt(1), TS: t0})
	// The snapshot's Write, a TryWrite that took nothing, the Write of
	// the rest that blocks.
	waitFor(t, "the blocked write", func() bool { return c.entered.Load() == 3 })
	const n = MaxBatch + 10
	for i := 1; i <= n; i++ {
		mustPublish(t, h, Update{Kind: KindTick, Market: h100East, OfferID: offerID(i), Version: 1, Price: decimal.NewFromInt(int64(i)), TS: t0})
	}
	c.gate.Unlock()
	waitFor(t, "all frames", func() bool { return c.count() == 1+1+n })
	ms := c.msgs(t)
	newModel().apply(t, ms)
	for i, m := range ms[1:] {
		if m.Type != "tick" || m.OfferID != offerID(i) {
			t.Fatalf("frame %d = %+v, want a tick of %s", i+1, m, offerID(i))
		}
	}
	c.mu.Lock()
	batches := slices.Clone(c.batches)
	c.mu.Unlock()
	if want := []int{1, 1, MaxBatch, 10}; !slices.Equal(batches, want) { // the snapshot, the blocked tick, the rest
		t.Fatalf("frames per batch %v, want %v", batches, want)
	}
}

// TestSameOfferMonotonic: updates of one offer may be coalesced but never
// arrive out of version order, and the last one always arrives.
func TestSameOfferMonotonic(t *testing.T) {
	h := New(Options{})
	defer h.Close()
	b := newBook()
	c := &recConn{}
	mustSubscribe(t, h, c, Filter{ResourceClass: h100East.Class}, b.snapshot)
	for i := range 5000 {
		mustPublish(t, h, b.set(h100East, offerID(i%10), int64(1000+i)))
	}
	want := b.state(Filter{})
	m := newModel()
	waitFor(t, "final state", func() bool {
		m = newModel()
		m.apply(t, c.msgs(t))
		return equalState(m.offers, want)
	})
}

// TestSnapshotConsistency subscribes while a publisher changes, adds and
// removes offers: every subscriber ends with exactly the book's state and
// never sees an offer go back.
func TestSnapshotConsistency(t *testing.T) {
	h := New(Options{Shards: 4})
	defer h.Close()
	b := newBook()
	markets := []market.MarketKey{h100East, h100West, a800East}
	for i := range 30 {
		mustPublish(t, h, b.set(markets[i%3], offerID(i), 1000))
	}

	stop := make(chan struct{})
	var pubDone sync.WaitGroup
	pubDone.Add(1)
	go func() {
		defer pubDone.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		next := 30
		live := make([]int, 30)
		for i := range live {
			live[i] = i
		}
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			switch k := rng.IntN(20); {
			case k == 0 && len(live) > 10: // remove an offer
				j := rng.IntN(len(live))
				mustPublish(t, h, b.remove(offerID(live[j])))
				live = append(live[:j], live[j+1:]...)
			case k == 1: // a new offer
				mustPublish(t, h, b.set(markets[next%3], offerID(next), 1000))
				live = append(live, next)
				next++
			case k == 2:
				mustPublish(t, h, Update{Kind: KindTrade, Market: markets[n%3], Price: decimal.NewFromInt(10), Units: 1, Hours: 1})
			default:
				id := live[rng.IntN(len(live))]
				mustPublish(t, h, b.set(markets[id%3], offerID(id), int64(1000+n)))
			}
			if n%64 == 0 {
				runtime.Gosched()
			}
		}
	}()

	type sub struct {
		c *recConn
		f Filter
	}
	var subs []sub
	filters := []Filter{{}, {ResourceClass: h100East.Class}, {Region: "cn-east"}, {ResourceClass: h100East.Class, Region: "cn-west"}}
	for i := range 60 {
		s := sub{&recConn{}, filters[i%len(filters)]}
		mustSubscribe(t, h, s.c, s.f, b.snapshot)
		subs = append(subs, s)
		time.Sleep(time.Duration(i%3) * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	close(stop)
	pubDone.Wait()

	for i, s := range subs {
		want := b.state(s.f)
		var m *model
		waitFor(t, fmt.Sprintf("subscriber %d to converge", i), func() bool {
			m = newModel()
			m.apply(t, s.c.msgs(t))
			return equalState(m.offers, want)
		})
		if m.snaps != 1 {
			t.Errorf("subscriber %d got %d snapshots", i, m.snaps)
		}
	}
	t.Logf("stats: %+v", h.Stats())
}

// TestSlowSubscriber: one subscriber stops reading while 10k updates flow.
// The others get every update; the slow one's pending state stays bounded
// by the number of offers, and when it reads again it gets the latest
// state of every offer.
func TestSlowSubscriber(t *testing.T) {
	const offers, updates, fastN = 200, 10_000, 8
	h := New(Options{})
	defer h.Close()
	b := newBook()
	for i := range offers {
		mustPublish(t, h, b.set(h100East, offerID(i), 1000))
	}
	var fast []*recConn
	for range fastN {
		c := &recConn{}
		fast = append(fast, c)
		mustSubscribe(t, h, c, Filter{}, b.snapshot)
	}
	slow := &recConn{}
	slowSub := mustSubscribe(t, h, slow, Filter{}, b.snapshot)
	waitFor(t, "snapshots", func() bool { return h.Stats().Snapshots == fastN+1 })
	slow.gate.Lock() // the slow client stops reading

	var published []Update
	start := time.Now()
	var maxPending, maxTrades int
	for round := 0; round < updates/offers; round++ {
		for i := range offers { // each offer once per round: nothing for a keeping-up subscriber to coalesce
			var u Update
			if i%100 == 99 {
				u = Update{Kind: KindTrade, Market: h100East, Price: decimal.NewFromInt(int64(round)), Units: int64(i), Hours: 1}
			} else {
				u = b.set(h100East, offerID(i), int64(2000+round*offers+i))
			}
			mustPublish(t, h, u)
			published = append(published, u)
		}
		for _, c := range fast { // the slow one never holds the others up
			waitFor(t, "fast subscriber", func() bool { return c.count() == 1+len(published) })
		}
		slowSub.mu.Lock()
		maxPending = max(maxPending, slowSub.offers.len())
		maxTrades = max(maxTrades, slowSub.trades.n)
		slowSub.mu.Unlock()
	}
	elapsed := time.Since(start)

	for _, c := range fast {
		ms := c.msgs(t)
		newModel().apply(t, ms)
		for i, u := range published {
			m := ms[i+1]
			if u.Kind == KindTrade {
				if m.Type != "trade" || m.Units != u.Units {
					t.Fatalf("frame %d = %+v, want trade %+v", i+1, m, u)
				}
			} else if m.Type != "tick" || m.OfferID != u.OfferID || m.Version != u.Version {
				t.Fatalf("frame %d = %+v, want tick %s v%d", i+1, m, u.OfferID, u.Version)
			}
		}
	}
	if maxPending > offers-1 || maxTrades > h.opts.TradeRing {
		t.Fatalf("slow subscriber held %d offers and %d trades pending", maxPending, maxTrades)
	}
	slowFrames := slow.count()
	slow.gate.Unlock() // it reads again
	want := b.state(Filter{})
	m := newModel()
	waitFor(t, "slow subscriber to catch up", func() bool {
		m = newModel()
		m.apply(t, slow.msgs(t))
		return equalState(m.offers, want)
	})
	st := h.Stats()
	t.Logf("%d updates to %d+1 subscribers in %v; slow one: ≤%d offers and ≤%d trades pending, %d frames after unblocking (%d trades); stats %+v",
		len(published), fastN, elapsed, maxPending, maxTrades, slow.count()-slowFrames, len(m.trades), st)
	if len(m.trades) > h.opts.TradeRing+1 { // the ring, and one write in flight when it stopped
		t.Fatalf("slow subscriber got %d trades", len(m.trades))
	}
	if st.Coalesced == 0 {
		t.Fatalf("nothing coalesced")
	}
}

// TestTradeRing: a subscriber that does not read keeps only the latest
// trades.
func TestTradeRing(t *testing.T) {
	h := New(Options{TradeRing: 4})
	defer h.Close()
	c := &recConn{}
	sub := mustSubscribe(t, h, c, Filter{}, emptySnapshot)
	waitFor(t, "snapshot", func() bool { return c.count() == 1 })
	c.gate.Lock()
	trade := func(i int) Update {
		return Update{Kind: KindTrade, Market: cpuNorth, Price: decimal.NewFromInt(1), Units: int64(i), Hours: 1}
	}
	mustPublish(t, h, trade(1))
	// The snapshot's Write, a TryWrite that took nothing, the Write of
	// trade 1 that blocks.
	waitFor(t, "the writer to block on trade 1", func() bool { return c.entered.Load() == 3 })
	for i := 2; i <= 100; i++ {
		mustPublish(t, h, trade(i))
	}
	sub.mu.Lock()
	n := sub.trades.n
	sub.mu.Unlock()
	if n != 4 {
		t.Fatalf("%d trades pending, want 4", n)
	}
	c.gate.Unlock()
	waitFor(t, "trades", func() bool { return c.count() == 6 }) // snapshot, the one in flight, 4
	time.Sleep(10 * time.Millisecond)
	ms := c.msgs(t)
	newModel().apply(t, ms)
	var got []int64
	for _, m := range ms[1:] {
		got = append(got, m.Units)
	}
	if fmt.Sprint(got) != "[1 97 98 99 100]" {
		t.Fatalf("trades: %v, want the one in flight and the latest 4", got)
	}
	if st := h.Stats(); st.Coalesced != 95 {
		t.Fatalf("coalesced %d, want 95", st.Coalesced)
	}
}

// TestOverflowResync: a subscriber with more offers pending than
// MaxPending gets a fresh snapshot, with the next seq.
func TestOverflowResync(t *testing.T) {
	h := New(Options{MaxPending: 8})
	defer h.Close()
	b := newBook()
	c := &recConn{}
	mustSubscribe(t, h, c, Filter{}, b.snapshot)
	waitFor(t, "snapshot", func() bool { return c.count() == 1 })
	c.gate.Lock()
	for i := range 50 {
		mustPublish(t, h, b.set(a800West, offerID(i), int64(100+i)))
	}
	c.gate.Unlock()
	want := b.state(Filter{})
	var m *model
	waitFor(t, "resync", func() bool {
		m = newModel()
		m.apply(t, c.msgs(t))
		return equalState(m.offers, want)
	})
	if m.snaps < 2 || h.Stats().Resyncs == 0 {
		t.Fatalf("%d snapshots, stats %+v", m.snaps, h.Stats())
	}
}

func TestFilters(t *testing.T) {
	h := New(Options{})
	defer h.Close()
	all := []market.MarketKey{h100East, h100West, a800East, a800West, cpuNorth}
	b := newBook()
	for i, m := range all {
		b.set(m, offerID(i), 100)
	}
	filters := []Filter{
		{},
		{ResourceClass: h100East.Class},
		{Region: "cn-east"},
		{ResourceClass: h100East.Class, Region: "cn-west"},
		{ResourceClass: "gpu.none"},
	}
	conns := make([]*recConn, len(filters))
	for i, f := range filters {
		conns[i] = &recConn{}
		mustSubscribe(t, h, conns[i], f, b.snapshot)
	}
	for _, c := range conns { // updates before the snapshot are reflected in it
		waitFor(t, "snapshot", func() bool { return c.count() == 1 })
	}
	for i, m := range all {
		mustPublish(t, h, b.set(m, offerID(i), 200))
		mustPublish(t, h, Update{Kind: KindTrade, Market: m, Price: decimal.NewFromInt(1), Units: 1, Hours: 1})
	}
	for i, f := range filters {
		var want []string
		for _, m := range all {
			if f.Match(m) {
				want = append(want, m.String())
			}
		}
		waitFor(t, "frames", func() bool { return conns[i].count() == 1+2*len(want) })
		time.Sleep(5 * time.Millisecond)
		ms := conns[i].msgs(t)
		if len(ms) != 1+2*len(want) {
			t.Fatalf("filter %+v: %d frames", f, len(ms))
		}
		var snap, ticks, trades []string
		for _, o := range ms[0].Offers {
			snap = append(snap, o.ResourceClass+":"+o.Region)
		}
		for _, m := range ms[1:] {
			if m.Type == "trade" {
				trades = append(trades, m.ResourceClass+":"+m.Region)
			} else {
				o := b.offers[m.OfferID]
				ticks = append(ticks, o.Market().String())
			}
		}
		w := strings.Join(want, " ")
		if got := strings.Join(sortedCopy(snap), " "); got != strings.Join(sortedCopy(want), " ") {
			t.Errorf("filter %+v: snapshot markets %s, want %s", f, got, w)
		}
		if got := strings.Join(ticks, " "); got != w {
			t.Errorf("filter %+v: tick markets %s, want %s", f, got, w)
		}
		if got := strings.Join(trades, " "); got != w {
			t.Errorf("filter %+v: trade markets %s, want %s", f, got, w)
		}
	}
}

func TestUnsubscribe(t *testing.T) {
	h := New(Options{})
	defer h.Close()
	c := &recConn{}
	s := mustSubscribe(t, h, c, Filter{ResourceClass: h100East.Class}, emptySnapshot)
	other := mustSubscribe(t, h, &recConn{}, Filter{ResourceClass: h100East.Class}, emptySnapshot)
	waitFor(t, "snapshot", func() bool { return c.count() == 1 })
	if n := h.Stats().Subscribers; n != 2 {
		t.Fatalf("%d subscribers", n)
	}
	s.Close()
	h.Unsubscribe(s) // again: no effect
	<-s.Done()
	if s.Err() != nil {
		t.Fatalf("err after unsubscribe: %v", s.Err())
	}
	mustPublish(t, h, b0tick())
	time.Sleep(10 * time.Millisecond)
	if c.count() != 1 {
		t.Fatalf("frames after unsubscribe: %d", c.count())
	}
	if n := h.Stats().Subscribers; n != 1 {
		t.Fatalf("%d subscribers", n)
	}
	other.Close()
	<-other.Done()
	if n := len(*h.groups.Load()); n != 0 {
		t.Fatalf("%d groups left", n)
	}
}

func b0tick() Update {
	return Update{Kind: KindTick, Market: h100East, OfferID: "x", Version: 1, Price: decimal.NewFromInt(1), TS: t0}
}

func TestConnErrorDropsSubscriber(t *testing.T) {
	h := New(Options{})
	defer h.Close()
	c := &recConn{failAt: 2}
	s := mustSubscribe(t, h, c, Filter{}, emptySnapshot)
	waitFor(t, "snapshot", func() bool { return c.count() == 1 })
	mustPublish(t, h, b0tick())
	<-s.Done()
	if !errors.Is(s.Err(), errBroken) {
		t.Fatalf("err = %v", s.Err())
	}
	if st := h.Stats(); st.Subscribers != 0 || st.Dropped != 1 {
		t.Fatalf("stats %+v", st)
	}
	mustPublish(t, h, b0tick()) // nobody left: fine

	boom := errors.New("redis down")
	s = mustSubscribe(t, h, &recConn{}, Filter{}, func() ([]market.Offer, error) { return nil, boom })
	<-s.Done()
	if !errors.Is(s.Err(), boom) {
		t.Fatalf("err = %v", s.Err())
	}
}

func TestClose(t *testing.T) {
	h := New(Options{})
	var subs []*Subscription
	blocked := &recConn{}
	blocked.gate.Lock() // blocked in its first write until released
	defer blocked.gate.Unlock()
	subs = append(subs, mustSubscribe(t, h, blocked, Filter{}, emptySnapshot))
	for i := range 50 {
		subs = append(subs, mustSubscribe(t, h, &recConn{}, Filter{Region: fmt.Sprint(i % 3)}, emptySnapshot))
	}
	waitFor(t, "the blocked write", func() bool { return blocked.entered.Load() == 1 })
	subs[0].Close() // its write is in flight: Close waits for it
	h2 := subs[1:]
	closed := make(chan struct{})
	go func() { h.Close(); close(closed) }()
	for _, s := range h2 {
		<-s.Done()
	}
	select {
	case <-closed:
		t.Fatal("Close returned while a write was in flight")
	case <-time.After(10 * time.Millisecond):
	}
	blocked.gate.Unlock()
	<-closed
	blocked.gate.Lock() // for the deferred Unlock
	if _, err := h.Subscribe(&recConn{}, Filter{}, emptySnapshot); !errors.Is(err, ErrClosed) {
		t.Fatalf("subscribe after close: %v", err)
	}
	if err := h.Publish(b0tick()); !errors.Is(err, ErrClosed) {
		t.Fatalf("publish after close: %v", err)
	}
	if st := h.Stats(); st.Subscribers != 0 {
		t.Fatalf("stats %+v", st)
	}
}
