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
	if d := time.Since(start); d < 80*time.Millisecond || d > time.Second {
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
