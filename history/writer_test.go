package history

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"computebroker/catalog"
	"computebroker/internal/testsvc"
	"computebroker/market"
)

// catalogSource adapts catalog.HistorySource to Source; brokerd wires the
// two the same way (catalog may not import history).
type catalogSource struct{ *catalog.HistorySource }

func (c catalogSource) Read(ctx context.Context, max int) ([]Message, error) {
	entries, err := c.HistorySource.Read(ctx, max)
	msgs := make([]Message, len(entries))
	for i, e := range entries {
		msgs[i] = Message{ID: e.ID, Stream: e.Stream, Kind: e.Kind, Value: e.Value}
	}
	return msgs, err
}

func (c catalogSource) Ack(ctx context.Context, msgs []Message) error {
	entries := make([]catalog.StreamEntry, len(msgs))
	for i, m := range msgs {
		entries[i] = catalog.StreamEntry{ID: m.ID, Stream: m.Stream}
	}
	return c.HistorySource.Ack(ctx, entries)
}

var _ Source = catalogSource{}

var testMarkets = []market.MarketKey{
	{Class: "gpu.h100-80g", Region: "cn-north"},
	{Class: "gpu.910b-64g", Region: "cn-east"},
	{Class: "cpu.standard", Region: "cn-south"},
}

const group = "history"

func newRedis(t testing.TB) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(testsvc.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func newSource(rdb redis.UniversalClient, consumer string) catalogSource {
	return catalogSource{catalog.NewHistorySource(rdb, testMarkets, group, consumer)}
}

// xadd appends a trade stream entry to the stream of market m.
func xadd(t testing.TB, rdb *redis.Client, m market.MarketKey, kind string, v any) {
	t.Helper()
	var raw string
	switch v := v.(type) {
	case string:
		raw = v
	default:
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		raw = string(b)
	}
	err := rdb.XAdd(context.Background(), &redis.XAddArgs{
		Stream: catalog.TradeStreamKey(m),
		Values: []any{"k", kind, "v", raw},
	}).Err()
	if err != nil {
		t.Fatal(err)
	}
}

// streamTrade is trade i as the checkout appends it to its market's stream.
func streamTrade(i int) (market.MarketKey, market.Trade) {
	m := testMarkets[i%len(testMarkets)]
	tr := trade(i)
	tr.ResourceClass, tr.Region = m.Class, m.Region
	tr.TS = t0.Add(time.Duration(i) * 100 * time.Millisecond)
	if i%4 == 0 {
		tr.Discount, tr.Net, tr.VoucherID, tr.ProgramID = decimal.Zero, tr.Gross, "", ""
	}
	return m, tr
}

// addTrades appends trades numbered from..to-1, spread over the markets.
func addTrades(t testing.TB, rdb *redis.Client, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		m, tr := streamTrade(i)
		xadd(t, rdb, m, catalog.StreamKindTrade, tr)
	}
}

// pending returns the entries delivered to the group and not acknowledged,
// over all test streams.
func pending(t testing.TB, rdb *redis.Client) int64 {
	t.Helper()
	var n int64
	for _, m := range testMarkets {
		p, err := rdb.XPending(context.Background(), catalog.TradeStreamKey(m), group).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		if p != nil {
			n += p.Count
		}
	}
	return n
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// runWriter starts w and returns a function that stops it and returns what
// Run returned.
func runWriter(t testing.TB, w *Writer) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(15 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

func TestWriterEndToEnd(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t)
	rdb := newRedis(t)

	const trades = 1000
	addTrades(t, rdb, 0, trades)
	// 50 trades appended twice (a saga step retried after a timeout).
	for i := 0; i < 50; i++ {
		m, tr := streamTrade(i * 7)
		xadd(t, rdb, m, catalog.StreamKindTrade, tr)
	}
	// 10 refunds and 3 poison entries.
	for i := 0; i < 10; i++ {
		r := trade(i)
		r.ID = fmt.Sprintf("rf-%d", i)
		xadd(t, rdb, testMarkets[i%3], catalog.StreamKindRefund, r)
	}
	xadd(t, rdb, testMarkets[0], catalog.StreamKindTrade, "{not json")
	xadd(t, rdb, testMarkets[1], "mystery", "{}")
	bad := trade(5000)
	bad.Gross = decimal.RequireFromString("0.001")
	xadd(t, rdb, testMarkets[2], catalog.StreamKindTrade, bad)
	const entries = trades + 50 + 10 + 3

	w := NewWriter(s, newSource(rdb, "w1"), WriterOptions{BatchSize: 256, FlushInterval: 50 * time.Millisecond, Logger: quietLogger()})
	stop := runWriter(t, w)
	waitFor(t, 30*time.Second, "all entries stored", func() bool {
		st := w.Stats()
		return st.Written+st.Poison == entries
	})
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	if p := pending(t, rdb); p != 0 {
		t.Errorf("%d entries left pending", p)
	}
	n, err := s.TradeCount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != trades {
		t.Errorf("TradeCount = %d, want %d", n, trades)
	}
	if n := s.countOf(t, "refunds"); n != 10 {
		t.Errorf("%d refunds, want 10", n)
	}
	if n := s.countOf(t, "voucher_redemptions"); n != trades*3/4 {
		t.Errorf("%d redemptions, want %d", n, trades*3/4)
	}
	// Exactly once, listed in order.
	seen := map[string]bool{}
	f := TradeFilter{Limit: MaxTradeLimit}
	for {
		page, next, err := s.Trades(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, tr := range page {
			if seen[tr.ID] {
				t.Errorf("%s listed twice", tr.ID)
			}
			seen[tr.ID] = true
		}
		if next == "" {
			break
		}
		f.Cursor = next
	}
	if len(seen) != trades {
		t.Errorf("listed %d trades", len(seen))
	}
	st := w.Stats()
	if st.Written != entries-3 || st.Poison != 3 || st.Duplicates != 50 || st.Pending != 0 || st.LagSeconds != 0 || st.LastFlush.IsZero() {
		t.Errorf("stats %+v", st)
	}
	// The entries stay in the streams (no XDEL); trimming is separate.
	var xlen int64
	for _, m := range testMarkets {
		xlen += rdb.XLen(ctx, catalog.TradeStreamKey(m)).Val()
	}
	if xlen != entries {
		t.Errorf("streams hold %d entries, want %d", xlen, entries)
	}
}

// openBehindProxy opens a Store on a fresh database through a proxy, and a
// direct Store on the same database to check what arrived.
func openBehindProxy(t *testing.T) (viaProxy, direct *Store, p *testsvc.Proxy) {
	t.Helper()
	ctx := testContext(t)
	u, err := url.Parse(testsvc.ClickHouse(t))
	if err != nil {
		t.Fatal(err)
	}
	direct, err = Open(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { direct.Close() })
	p = testsvc.NewProxy(t, u.Host)
	u.Host = p.Addr()
	u.RawQuery = "dial_timeout=1s"
	viaProxy, err = Open(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { viaProxy.Close() })
	return viaProxy, direct, p
}

func TestWriterHoldsWhileClickHouseDown(t *testing.T) {
	ctx := testContext(t)
	store, direct, p := openBehindProxy(t)
	rdb := newRedis(t)

	p.SetDown(true)
	const n = 300
	addTrades(t, rdb, 0, n)
	w := NewWriter(store, newSource(rdb, "w1"), WriterOptions{
		BatchSize: 1000, FlushInterval: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: quietLogger(),
	})
	stop := runWriter(t, w)

	waitFor(t, 20*time.Second, "failing inserts", func() bool {
		st := w.Stats()
		return st.Pending == n && st.Failures >= 3
	})
	// Delivered to the writer, not acknowledged, not stored.
	if got := pending(t, rdb); got != n {
		t.Errorf("%d entries pending in the group, want %d", got, n)
	}
	if c, err := direct.TradeCount(ctx); err != nil || c != 0 {
		t.Errorf("TradeCount = %d, %v while down", c, err)
	}
	time.Sleep(100 * time.Millisecond)
	if st := w.Stats(); st.Written != 0 || st.LagSeconds <= 0 || !st.LastFlush.IsZero() {
		t.Errorf("stats while down: %+v", st)
	}

	p.SetDown(false)
	waitFor(t, 20*time.Second, "recovery", func() bool { return pending(t, rdb) == 0 })
	if c, err := direct.TradeCount(ctx); err != nil || c != n {
		t.Errorf("TradeCount = %d, %v after recovery, want %d", c, err, n)
	}
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if st := w.Stats(); st.Written != n || st.Pending != 0 || st.Duplicates != 0 {
		t.Errorf("stats after recovery: %+v", st)
	}
}

// failingAck stores but cannot acknowledge: a crash between the insert and
// the XACK.
type failingAck struct{ Source }

func (failingAck) Ack(context.Context, []Message) error { return errors.New("connection reset") }

func TestWriterRedeliveryAfterCrashIsNotDuplicated(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t)
	rdb := newRedis(t)
	const n = 200
	addTrades(t, rdb, 0, n)

	w1 := NewWriter(s, failingAck{newSource(rdb, "w1")}, WriterOptions{
		BatchSize: 1000, FlushInterval: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		FinalFlushTimeout: 300 * time.Millisecond, Logger: quietLogger(),
	})
	stop1 := runWriter(t, w1)
	waitFor(t, 20*time.Second, "trades stored by w1", func() bool {
		c, err := s.TradeCount(ctx)
		return err == nil && c == n && w1.Stats().Failures > 0
	})
	if err := stop1(); err == nil {
		t.Error("Run returned nil although it could not acknowledge")
	}
	if got := pending(t, rdb); got != n {
		t.Fatalf("%d entries pending after the crash, want %d", got, n)
	}

	// The same consumer restarts: its pending entries come first.
	w2 := NewWriter(s, newSource(rdb, "w1"), WriterOptions{BatchSize: 64, FlushInterval: 20 * time.Millisecond, Logger: quietLogger()})
	stop2 := runWriter(t, w2)
	waitFor(t, 20*time.Second, "redelivered entries acknowledged", func() bool { return pending(t, rdb) == 0 })
	if err := stop2(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if c, err := s.TradeCount(ctx); err != nil || c != n {
		t.Errorf("TradeCount = %d, %v, want %d", c, err, n)
	}
	if st := w2.Stats(); st.Written != n || st.Duplicates != n {
		t.Errorf("w2 stats %+v, want %d written, all duplicates", st, n)
	}
	if got := s.countOf(t, "voucher_redemptions"); got != n*3/4 {
		t.Errorf("%d redemptions, want %d", got, n*3/4)
	}
}

func TestWriterFlushesOnCancel(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t)
	rdb := newRedis(t)
	const n = 20
	addTrades(t, rdb, 0, n)
	w := NewWriter(s, newSource(rdb, "w1"), WriterOptions{FlushInterval: time.Hour, Logger: quietLogger()})
	stop := runWriter(t, w)
	waitFor(t, 10*time.Second, "entries read", func() bool { return w.Stats().Pending == n })
	if c, _ := s.TradeCount(ctx); c != 0 {
		t.Fatalf("flushed early: %d trades", c)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if c, err := s.TradeCount(ctx); err != nil || c != n {
		t.Errorf("TradeCount = %d, %v, want %d", c, err, n)
	}
	if p := pending(t, rdb); p != 0 {
		t.Errorf("%d entries pending", p)
	}
}

// sliceSource is a Source over a fixed list, for message shapes the trade
// streams do not carry yet (ticks, values decoded by the source).
type sliceSource struct {
	mu    sync.Mutex
	msgs  []Message
	acked []Message
}

func (s *sliceSource) Read(ctx context.Context, max int) ([]Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.msgs) == 0 {
		time.Sleep(10 * time.Millisecond)
		return nil, nil
	}
	n := min(max, len(s.msgs))
	out := s.msgs[:n:n]
	s.msgs = s.msgs[n:]
	return out, nil
}

func (s *sliceSource) Ack(ctx context.Context, msgs []Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acked = append(s.acked, msgs...)
	return nil
}

func (s *sliceSource) ackedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.acked)
}

func TestWriterTicksAndDecodedValues(t *testing.T) {
	s := openStore(t)
	tick := market.Tick{OfferID: "o1", ProviderID: "p", ResourceClass: "gpu.h100-80g", Region: "cn-north",
		Price: decimal.RequireFromString("21.50"), UnitsFree: 3, Version: 1, TS: t0}
	raw, _ := json.Marshal(tick)
	tick2 := tick
	tick2.Version = 2
	tr := trade(1)
	src := &sliceSource{msgs: []Message{
		{ID: "1", Kind: KindTick, Value: raw},
		{ID: "2", Kind: KindTick, Tick: &tick2},
		{ID: "3", Kind: KindTick, Value: raw}, // same offer and version
		{ID: "4", Kind: KindTrade, Trade: &tr},
		{ID: "5", Kind: KindTick, Value: []byte(`{"offer_id":""}`)}, // poison
	}}
	w := NewWriter(s, src, WriterOptions{BatchSize: 2, FlushInterval: 10 * time.Millisecond, Logger: quietLogger()})
	stop := runWriter(t, w)
	waitFor(t, 10*time.Second, "all acknowledged", func() bool { return src.ackedCount() == 5 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := s.countOf(t, "price_ticks"); n != 2 {
		t.Errorf("%d ticks, want 2", n)
	}
	if n := s.countOf(t, "trades"); n != 1 {
		t.Errorf("%d trades, want 1", n)
	}
	if st := w.Stats(); st.Written != 4 || st.Poison != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestWriterStatsLag(t *testing.T) {
	now := t0.Add(time.Hour)
	w := NewWriter(nil, &sliceSource{}, WriterOptions{Now: func() time.Time { return now }, Logger: quietLogger()})
	if st := w.Stats(); st.LagSeconds != 0 || st.Pending != 0 {
		t.Fatalf("idle stats %+v", st)
	}
	tr := trade(0) // at t0, an hour before now
	w.add([]Message{{ID: "1", Kind: KindTrade, Trade: &tr}, {ID: "2", Kind: "junk"}, {ID: "1", Kind: KindTrade, Trade: &tr}})
	st := w.Stats()
	if st.Pending != 2 || st.LagSeconds != 3600 {
		t.Errorf("stats %+v, want 2 pending (repeat dropped), lag 3600s", st)
	}
}
