package catalog

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"computebroker/internal/testsvc"
	"computebroker/market"
)

var historyMarkets = []market.MarketKey{
	{Class: "gpu.h100-80g", Region: "cn-north"},
	{Class: "gpu.910b-64g", Region: "cn-east"},
	{Class: "cpu.standard", Region: "cn-south"},
}

const historyGroup = "history"

func historyRedis(t *testing.T) (*redis.Client, context.Context) {
	t.Helper()
	opt, err := redis.ParseURL(testsvc.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return rdb, ctx
}

// historyAddEntries appends n entries to market m's trade stream and returns their ids.
func historyAddEntries(t *testing.T, ctx context.Context, rdb *redis.Client, m market.MarketKey, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		id, err := rdb.XAdd(ctx, &redis.XAddArgs{
			Stream: TradeStreamKey(m),
			Values: []any{"k", StreamKindTrade, "v", fmt.Sprintf(`{"id":"%s-%d"}`, m, i)},
		}).Result()
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	return ids
}

func historyReadAll(t *testing.T, ctx context.Context, s *HistorySource, max int) []StreamEntry {
	t.Helper()
	var out []StreamEntry
	for range 100 {
		got, err := s.Read(ctx, max)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > max {
			t.Fatalf("Read(%d) returned %d entries", max, len(got))
		}
		if len(got) == 0 {
			return out
		}
		out = append(out, got...)
	}
	t.Fatal("Read never ran dry")
	return nil
}

func historyPendingCount(t *testing.T, ctx context.Context, rdb *redis.Client) int64 {
	t.Helper()
	var n int64
	for _, m := range historyMarkets {
		p, err := rdb.XPending(ctx, TradeStreamKey(m), historyGroup).Result()
		if err != nil {
			t.Fatal(err)
		}
		n += p.Count
	}
	return n
}

func TestHistorySourceReadAck(t *testing.T) {
	rdb, ctx := historyRedis(t)
	historyAddEntries(t, ctx, rdb, historyMarkets[0], 10)
	historyAddEntries(t, ctx, rdb, historyMarkets[1], 5)
	// historyMarkets[2] has no stream yet.

	s := NewHistorySource(rdb, historyMarkets, historyGroup, "c1")
	got := historyReadAll(t, ctx, s, 100)
	if len(got) != 15 {
		t.Fatalf("read %d entries, want 15", len(got))
	}
	for _, e := range got {
		if e.Kind != StreamKindTrade || len(e.Value) == 0 || e.ID == "" {
			t.Errorf("entry %+v", e)
		}
		if e.Stream != TradeStreamKey(historyMarkets[0]) && e.Stream != TradeStreamKey(historyMarkets[1]) {
			t.Errorf("entry from stream %q", e.Stream)
		}
	}
	if n := historyPendingCount(t, ctx, rdb); n != 15 {
		t.Errorf("%d pending before ack, want 15", n)
	}
	if err := s.Ack(ctx, got); err != nil {
		t.Fatal(err)
	}
	if n := historyPendingCount(t, ctx, rdb); n != 0 {
		t.Errorf("%d pending after ack", n)
	}
	// Acknowledged entries stay in the stream.
	if n := rdb.XLen(ctx, TradeStreamKey(historyMarkets[0])).Val(); n != 10 {
		t.Errorf("XLEN = %d, want 10", n)
	}
	// The group was created on the missing stream too.
	groups, err := rdb.XInfoGroups(ctx, TradeStreamKey(historyMarkets[2])).Result()
	if err != nil || len(groups) != 1 || groups[0].Name != historyGroup {
		t.Errorf("groups on the empty stream: %v, %v", groups, err)
	}

	// Nothing to read: returns none after a short wait.
	start := time.Now()
	again, err := s.Read(ctx, 100)
	if err != nil || len(again) != 0 {
		t.Errorf("Read = %d entries, %v", len(again), err)
	}
	// It waited (about 100 ms), and came back: the upper bound is loose,
	// as a busy machine (CI runs the packages in parallel) delays it.
	if d := time.Since(start); d < 80*time.Millisecond || d > 10*time.Second {
		t.Errorf("empty Read took %s", d)
	}

	// Entries added later are read once.
	historyAddEntries(t, ctx, rdb, historyMarkets[2], 3)
	if got := historyReadAll(t, ctx, s, 100); len(got) != 3 {
		t.Errorf("read %d new entries, want 3", len(got))
	}
}

func TestHistorySourceRespectsMax(t *testing.T) {
	rdb, ctx := historyRedis(t)
	for _, m := range historyMarkets {
		historyAddEntries(t, ctx, rdb, m, 10)
	}
	s := NewHistorySource(rdb, historyMarkets, historyGroup, "c1")
	for _, max := range []int{1, 2, 4} {
		got, err := s.Read(ctx, max)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 || len(got) > max {
			t.Errorf("Read(%d) returned %d", max, len(got))
		}
		if err := s.Ack(ctx, got); err != nil {
			t.Fatal(err)
		}
	}
	rest := historyReadAll(t, ctx, s, 4)
	if len(rest) != 30-1-2-4 {
		t.Errorf("read %d more entries, want %d", len(rest), 30-7)
	}
	seen := map[string]bool{}
	for _, e := range rest {
		if seen[e.Stream+e.ID] {
			t.Errorf("entry %s %s twice", e.Stream, e.ID)
		}
		seen[e.Stream+e.ID] = true
	}
}

func TestHistorySourceRedeliversOwnPending(t *testing.T) {
	rdb, ctx := historyRedis(t)
	ids := historyAddEntries(t, ctx, rdb, historyMarkets[0], 6)

	crashed := NewHistorySource(rdb, historyMarkets, historyGroup, "c1")
	if got := historyReadAll(t, ctx, crashed, 100); len(got) != 6 {
		t.Fatalf("read %d, want 6", len(got))
	}
	// Restart with the same consumer name; a second group create is fine.
	later := historyAddEntries(t, ctx, rdb, historyMarkets[0], 2)
	s := NewHistorySource(rdb, historyMarkets, historyGroup, "c1")
	first, err := s.Read(ctx, 4)
	if err != nil {
		t.Fatal(err)
	}
	rest := historyReadAll(t, ctx, s, 4)
	got := append(first, rest...)
	want := append(ids, later...)
	if len(got) != len(want) {
		t.Fatalf("read %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].ID != want[i] {
			t.Errorf("entry %d: %s, want %s (pending ones first, in order)", i, got[i].ID, want[i])
		}
	}
	if err := s.Ack(ctx, got); err != nil {
		t.Fatal(err)
	}
	if n := historyPendingCount(t, ctx, rdb); n != 0 {
		t.Errorf("%d pending", n)
	}
}

func TestHistorySourceReclaimsDeadConsumer(t *testing.T) {
	rdb, ctx := historyRedis(t)
	historyAddEntries(t, ctx, rdb, historyMarkets[1], 5)
	dead := NewHistorySource(rdb, historyMarkets, historyGroup, "dead")
	if got := historyReadAll(t, ctx, dead, 100); len(got) != 5 {
		t.Fatalf("read %d, want 5", len(got))
	}

	s := NewHistorySource(rdb, historyMarkets, historyGroup, "alive")
	s.ReclaimIdle = 300 * time.Millisecond
	s.ReclaimInterval = 50 * time.Millisecond
	if got := historyReadAll(t, ctx, s, 100); len(got) != 0 {
		t.Fatalf("claimed %d entries that were not idle yet", len(got))
	}
	time.Sleep(350 * time.Millisecond)
	got := historyReadAll(t, ctx, s, 100)
	if len(got) != 5 {
		t.Fatalf("reclaimed %d, want 5", len(got))
	}
	for _, e := range got {
		if e.Kind != StreamKindTrade || len(e.Value) == 0 {
			t.Errorf("reclaimed entry %+v", e)
		}
	}
	ext, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
		Stream: TradeStreamKey(historyMarkets[1]), Group: historyGroup, Start: "-", End: "+", Count: 10,
	}).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ext {
		if p.Consumer != "alive" {
			t.Errorf("entry %s still owned by %s", p.ID, p.Consumer)
		}
	}
	if err := s.Ack(ctx, got); err != nil {
		t.Fatal(err)
	}
	if n := historyPendingCount(t, ctx, rdb); n != 0 {
		t.Errorf("%d pending", n)
	}
}

func TestHistorySourceDeletedEntries(t *testing.T) {
	rdb, ctx := historyRedis(t)
	ids := historyAddEntries(t, ctx, rdb, historyMarkets[0], 2)
	first := NewHistorySource(rdb, historyMarkets, historyGroup, "c1")
	if got := historyReadAll(t, ctx, first, 100); len(got) != 2 {
		t.Fatalf("read %d, want 2", len(got))
	}
	// An entry deleted while pending comes back empty, to be acknowledged.
	// (XAUTOCLAIM drops such entries from the pending list itself; keep the
	// reclaim pass away to see what the pending read does.)
	rdb.XDel(ctx, TradeStreamKey(historyMarkets[0]), ids[0])
	s := NewHistorySource(rdb, historyMarkets, historyGroup, "c1")
	s.reclaim = time.Now().Add(time.Hour)
	got := historyReadAll(t, ctx, s, 100)
	if len(got) != 2 || got[0].ID != ids[0] || got[0].Kind != "" || got[0].Value != nil || got[1].Kind != StreamKindTrade {
		t.Fatalf("got %+v", got)
	}
	if err := s.Ack(ctx, got); err != nil {
		t.Fatal(err)
	}

	// A stream deleted outright: the group is created again.
	rdb.Del(ctx, TradeStreamKey(historyMarkets[0]))
	if _, err := s.Read(ctx, 100); err == nil {
		t.Error("Read on a deleted stream: no error")
	}
	historyAddEntries(t, ctx, rdb, historyMarkets[0], 3)
	if got := historyReadAll(t, ctx, s, 100); len(got) != 3 {
		t.Errorf("read %d after the stream came back, want 3", len(got))
	}
}

// TestHistorySourceTrim: only entries the group has stored go, and only
// those older than the cutoff; entries pending (read, not stored) or never
// read stay, whatever their age.
func TestHistorySourceTrim(t *testing.T) {
	rdb, ctx := historyRedis(t)
	m := historyMarkets[0]
	s := NewHistorySource(rdb, historyMarkets[:1], historyGroup, "c1")
	s.TrimAfter = -1 // trimmed by hand below
	ids := historyAddEntries(t, ctx, rdb, m, 10)
	if n, err := s.Trim(ctx, time.Now().Add(time.Hour)); err != nil || n != 0 {
		t.Fatalf("trim before the group exists: %d %v", n, err)
	}
	got, err := s.Read(ctx, 6) // reads 6 of 10
	if err != nil || len(got) != 6 {
		t.Fatalf("read %d: %v", len(got), err)
	}
	if err := s.Ack(ctx, got[:4]); err != nil { // stores the first 4; 2 stay pending
		t.Fatal(err)
	}
	// A cutoff before every entry trims nothing.
	if n, err := s.Trim(ctx, time.UnixMilli(0)); err != nil || n != 0 {
		t.Fatalf("trim with an old cutoff: %d %v", n, err)
	}
	n, err := s.Trim(ctx, time.Now().Add(time.Hour))
	if err != nil || n != 4 {
		t.Fatalf("trimmed %d (%v), want the 4 stored", n, err)
	}
	left, err := rdb.XRange(ctx, TradeStreamKey(m), "-", "+").Result()
	if err != nil || len(left) != 6 || left[0].ID != ids[4] {
		t.Fatalf("left %v %v, want from %s on", left, err, ids[4])
	}
	// Storing the pending ones and reading the rest lets everything go.
	if err := s.Ack(ctx, got[4:]); err != nil {
		t.Fatal(err)
	}
	rest := historyReadAll(t, ctx, s, 10)
	if len(rest) != 4 {
		t.Fatalf("read %d more", len(rest))
	}
	if err := s.Ack(ctx, rest); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Trim(ctx, time.Now().Add(time.Hour)); err != nil || n != 6 {
		t.Fatalf("trimmed %d (%v), want 6", n, err)
	}
	if s.Trimmed.Load() != 10 {
		t.Fatalf("Trimmed = %d", s.Trimmed.Load())
	}
	// Ack trims by itself once TrimInterval has passed.
	more := historyAddEntries(t, ctx, rdb, m, 3)
	s.TrimAfter, s.TrimInterval = 0, time.Hour
	e := historyReadAll(t, ctx, s, 10)
	if len(e) != 3 || e[0].ID != more[0] {
		t.Fatalf("read %v", e)
	}
	if err := s.Ack(ctx, e); err != nil {
		t.Fatal(err)
	}
	if l, _ := rdb.XLen(ctx, TradeStreamKey(m)).Result(); l != 0 {
		t.Fatalf("%d entries left after Ack", l)
	}
}
