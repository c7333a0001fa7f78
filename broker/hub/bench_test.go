package hub

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

var benchSubs = []int{1000, 5000}

// benchHub returns a hub with n subscribers (discarding Conns) on the
// h100/cn-east market, half of them through the class-only filter, all
// past their snapshot.
func benchHub(b *testing.B, n int) *Hub {
	h := New(Options{})
	for i := range n {
		f := Filter{ResourceClass: h100East.Class, Region: h100East.Region}
		if i%2 == 1 {
			f = Filter{ResourceClass: h100East.Class}
		}
		mustSubscribe(b, h, discardConn{}, f, emptySnapshot)
	}
	waitFor(b, "snapshots", func() bool { return h.Stats().Snapshots == uint64(n) })
	// Warm up: every writer has its queue ring and write buffer, so that
	// allocs/op shows the steady state.
	for i, u := range benchTicks()[:8] {
		u.Version = int64(i + 1)
		mustPublish(b, h, u)
		waitDrained(h)
	}
	return h
}

// benchTicks are pre-built updates for 100 offers, so the benchmark
// measures encoding and fan-out, not building Update values.
func benchTicks() []Update {
	us := make([]Update, 100)
	for i := range us {
		us[i] = Update{Kind: KindTick, Market: h100East, OfferID: offerID(i), Version: 1,
			Price: decimal.New(int64(2150+i), -2), UnitsFree: 8, TS: t0}
	}
	return us
}

// drained reports whether every enqueued delivery was written or coalesced.
func drained(h *Hub) bool {
	st := h.Stats()
	return st.FramesSent-st.Snapshots+st.Coalesced >= st.Enqueued
}

func waitDrained(h *Hub) {
	for !drained(h) {
		runtime.Gosched()
	}
}

// BenchmarkFanout publishes ticks as fast as Publish returns, round robin
// over 100 offers; writers that fall behind coalesce. ns/op is per
// published update, including the time the writers need to drain at the
// end; deliveries/s counts frames written.
func BenchmarkFanout(b *testing.B) {
	for _, n := range benchSubs {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			h := benchHub(b, n)
			defer h.Close()
			us := benchTicks()
			before := h.Stats()
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				u := us[i%len(us)]
				u.Version = int64(i + 100)
				if err := h.Publish(u); err != nil {
					b.Fatal(err)
				}
			}
			waitDrained(h)
			elapsed := time.Since(start)
			b.StopTimer()
			st := h.Stats()
			frames := float64(st.FramesSent - before.FramesSent)
			b.ReportMetric(frames/elapsed.Seconds(), "deliveries/s")
			b.ReportMetric(float64(elapsed.Nanoseconds())/frames, "ns/delivery")
			b.ReportMetric(float64(st.Coalesced-before.Coalesced)/float64(b.N), "coalesced/op")
		})
	}
}

// BenchmarkFanoutSync publishes one tick and waits until every subscriber
// has written it: nothing is coalesced, each op is n deliveries, and ns/op
// is the time from Publish to the last subscriber's write.
func BenchmarkFanoutSync(b *testing.B) {
	for _, n := range benchSubs {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			h := benchHub(b, n)
			defer h.Close()
			us := benchTicks()
			before := h.Stats()
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				u := us[i%len(us)]
				u.Version = int64(i + 100)
				if err := h.Publish(u); err != nil {
					b.Fatal(err)
				}
				waitDrained(h)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			st := h.Stats()
			frames := float64(st.FramesSent - before.FramesSent)
			if c := st.Coalesced - before.Coalesced; c != 0 {
				b.Fatalf("%d coalesced", c)
			}
			b.ReportMetric(frames/elapsed.Seconds(), "deliveries/s")
			b.ReportMetric(float64(elapsed.Nanoseconds())/frames, "ns/delivery")
		})
	}
}

// BenchmarkPublishEncode is the one encoding an update pays when some
// subscriber's filter takes its market (before session 6, every update
// paid it, through Publish; it is now encode itself).
func BenchmarkPublishEncode(b *testing.B) {
	us := benchTicks()
	now := time.Now
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		encode(us[i%len(us)], now)
	}
}

// BenchmarkPublishUnwatched is Publish of an update whose market no
// subscriber's filter takes: checked, counted, not encoded.
func BenchmarkPublishUnwatched(b *testing.B) {
	h := New(Options{})
	defer h.Close()
	mustSubscribe(b, h, discardConn{}, Filter{ResourceClass: "cpu.standard"}, emptySnapshot)
	us := benchTicks()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := h.Publish(us[i%len(us)]); err != nil {
			b.Fatal(err)
		}
	}
}
