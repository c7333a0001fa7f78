package hub

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/shopspring/decimal"

	"computebroker/market"
)

// discardConn is a Conn that drops every frame, as fast as it can.
type discardConn struct{}

func (discardConn) AppendHeader(dst []byte, n int) []byte {
	return append(dst, 0x81, 126, byte(n>>8), byte(n))
}
func (discardConn) TryWrite(b []byte) (int, error) { return len(b), nil }
func (discardConn) Write([]byte) error             { return nil }

// idleBytesPerSubscriber subscribes n subscribers that have had their
// snapshot (20 offers) and a tick, and returns the heap and stack bytes
// they hold, per subscriber.
func idleBytesPerSubscriber(tb testing.TB, n int) (heap, stack float64) {
	b := newBook()
	for i := range 20 {
		b.set(h100East, offerID(i), int64(1000+i))
	}
	offers, _ := b.snapshot()
	snap := func() ([]market.Offer, error) { return offers, nil }

	var before, after runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)

	h := New(Options{})
	subs := make([]*Subscription, n)
	for i := range subs {
		f := Filter{ResourceClass: h100East.Class}
		if i%2 == 1 {
			f = Filter{} // two groups
		}
		subs[i] = mustSubscribe(tb, h, discardConn{}, f, snap)
	}
	waitFor(tb, "snapshots", func() bool { return h.Stats().Snapshots == uint64(n) })
	mustPublish(tb, h, Update{Kind: KindTick, Market: h100East, OfferID: offerID(0), Version: 9, Price: decimal.NewFromInt(5), TS: t0})
	waitFor(tb, "ticks", func() bool { return h.Stats().FramesSent == uint64(2*n) })

	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
	stack = float64(int64(after.StackInuse)-int64(before.StackInuse)) / float64(n)

	h.Close()
	runtime.KeepAlive(subs)
	return heap, stack
}

// TestIdleSubscriberMemory: an idle subscriber, goroutine stack included,
// costs well under 30 KB.
func TestIdleSubscriberMemory(t *testing.T) {
	const n = 5000
	heap, stack := idleBytesPerSubscriber(t, n)
	t.Logf("%d idle subscribers: %.0f B heap + %.0f B stack = %.0f B per subscriber", n, heap, stack, heap+stack)
	if raceEnabled {
		return // the race detector inflates both
	}
	if heap+stack > 30*1024 {
		t.Fatalf("%.0f B per idle subscriber, want ≤ 30 KB", heap+stack)
	}
}

func BenchmarkIdleSubscriberMemory(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			var heap, stack float64
			for range b.N {
				heap, stack = idleBytesPerSubscriber(b, n)
			}
			b.ReportMetric(heap+stack, "B/sub")
			b.ReportMetric(stack, "stackB/sub")
		})
	}
}

// TestSlowSubscriberMemoryBounded: a subscriber that never reads holds at
// most one pending state per offer, however many updates flow.
func TestSlowSubscriberMemoryBounded(t *testing.T) {
	const offers = 500
	h := New(Options{})
	defer h.Close()
	c := &recConn{}
	s := mustSubscribe(t, h, c, Filter{}, emptySnapshot)
	waitFor(t, "snapshot", func() bool { return c.count() == 1 })
	c.gate.Lock()
	defer c.gate.Unlock()

	heap := func() int64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			mustPublish(t, h, Update{Kind: KindTick, Market: h100East, OfferID: offerID(i % offers),
				Version: int64(i + 1), Price: decimal.New(int64(1000+i), -2), UnitsFree: 1, TS: t0})
			if i%50 == 0 {
				mustPublish(t, h, Update{Kind: KindTrade, Market: h100East, Price: decimal.NewFromInt(9), Units: 1, Hours: 1, TS: t0})
			}
		}
	}
	base := heap()
	publish(0, 10_000)
	h1 := heap()
	publish(10_000, 60_000)
	h2 := heap()
	s.mu.Lock()
	pending, trades := s.offers.len(), s.trades.n
	s.mu.Unlock()
	t.Logf("slow subscriber: %d offers + %d trades pending, %d B after 10k updates, %d B after 60k", pending, trades, h1-base, h2-base)
	if pending > offers || trades > h.opts.TradeRing {
		t.Fatalf("%d offers, %d trades pending", pending, trades)
	}
	if grew := h2 - h1; grew > 32<<10 {
		t.Fatalf("heap grew %d B over 50k more updates", grew)
	}
}
