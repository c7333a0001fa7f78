package matching

import (
	"context"
	"sync"
	"testing"
	"time"

	"computebroker/market"
)

type fillLog struct {
	mu    sync.Mutex
	fills []Fill
}

func (l *fillLog) add(f Fill) { l.mu.Lock(); l.fills = append(l.fills, f); l.mu.Unlock() }

func (l *fillLog) take() []Fill {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.fills
	l.fills = nil
	return out
}

func restingEngine(t *testing.T, now *time.Time) (*Engine, *fillLog) {
	t.Helper()
	log := &fillLog{}
	var ms []market.MarketKey
	for _, r := range []string{"cn-east", "cn-west"} {
		ms = append(ms, market.MarketKey{Class: h100.ID, Region: r})
	}
	e := NewEngine(Config{Markets: ms, QueueSize: 16, OnFill: log.add, Now: func() time.Time { return *now }})
	t.Cleanup(e.Close)
	return e, log
}

func TestRestingJobs(t *testing.T) {
	ctx := context.Background()
	now := t0
	e, log := restingEngine(t, &now)
	apply := func(evs ...Event) {
		t.Helper()
		for _, ev := range evs {
			if err := e.Apply(ctx, ev); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	rest := func(id string, maxPrice string, units int64, regions ...string) {
		t.Helper()
		req := request()
		req.Job.TimeInForce, req.Job.MaxPrice, req.Job.Units, req.Job.Regions = market.GTC, d(maxPrice), units, regions
		if err := e.Rest(ctx, id, req, t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(want ...string) {
		t.Helper()
		fills := log.take()
		if len(fills) != len(want) {
			t.Fatalf("fills %+v, want %v", fills, want)
		}
		for i, f := range fills {
			if got := f.JobID + "@" + f.Match.Offer.ID; got != want[i] {
				t.Fatalf("fill %d = %s, want %s", i, got, want[i])
			}
		}
	}

	dear := off("dear", "p1", "22")
	apply(Upsert(dear, prov("p1")))
	rest("old", "20", 8)
	rest("young", "20", 8)
	expect()
	if err := e.Rest(ctx, "old", request(), t0.Add(time.Hour)); !market.IsCode(err, market.CodeConflict) {
		t.Fatalf("duplicate rest: %v", err)
	}

	// A price cut below the limit fills the older job, at the offer's price;
	// the offer has units for one job only.
	dear.Price, dear.Version, dear.UnitsFree = d("19.50"), 2, 8
	apply(Upsert(dear, prov("p1")))
	fills := log.fills
	expect("old@dear")
	if !fills[0].Match.UnitPrice.Equal(d("19.50")) || !fills[0].Match.Gross.Equal(d("1560")) {
		t.Fatalf("fill priced %s %s", fills[0].Match.UnitPrice, fills[0].Match.Gross)
	}
	if e.Resting() != 1 {
		t.Fatalf("resting %d", e.Resting())
	}

	// An update that does not make the job matchable reports nothing.
	apply(Upsert(off("other", "p2", "25"), prov("p2")))
	expect()

	// A new cheap offer fills the younger job.
	apply(Upsert(off("cheap", "p2", "18"), prov("p2")))
	expect("young@cheap")

	// Resting when already matchable fills at once.
	rest("instant", "20", 4)
	expect("instant@cheap")

	// A pending provider's approval makes its offer matchable.
	pending := prov("p9")
	pending.Status = market.ProviderPending
	apply(Upsert(off("new", "p9", "15"), pending))
	rest("waits", "16", 8, "cn-east")
	expect()
	apply(SetProvider(prov("p9")))
	expect("waits@new")

	// Cancel and expiry.
	rest("cancelled", "10", 8)
	rest("expires", "10", 8)
	rest("later", "10", 8)
	if !e.Cancel("cancelled") || e.Cancel("cancelled") || e.Cancel("nope") {
		t.Fatal("cancel")
	}
	now = t0.Add(time.Hour)
	// Past expires_at by the clock: not filled even before Expire runs.
	apply(Upsert(off("bargain", "p3", "9"), prov("p3")))
	expect()
	if got := e.Expire(now); len(got) != 2 || got[0] != "expires" || got[1] != "later" {
		t.Fatalf("expired %v", got)
	}
	if e.Resting() != 0 {
		t.Fatalf("resting %d", e.Resting())
	}
	// A job can rest again under the same id once it ended.
	now = t0
	rest("expires", "10", 8)
	expect("expires@bargain")
}

func TestRestingSplitAndRegions(t *testing.T) {
	ctx := context.Background()
	now := t0
	e, log := restingEngine(t, &now)
	west := off("w1", "p1", "12")
	west.Region, west.UnitsFree = "cn-west", 4
	if err := e.Apply(ctx, Upsert(west, prov("p1"))); err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	req := request()
	req.Job.Regions, req.Job.AllowSplit, req.Job.Units = nil, true, 8
	if err := e.Rest(ctx, "split", req, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if len(log.take()) != 0 {
		t.Fatal("filled with 4 of 8 units")
	}
	w2 := off("w2", "p2", "13")
	w2.Region, w2.UnitsFree = "cn-west", 4
	if err := e.Apply(ctx, Upsert(w2, prov("p2"))); err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	fills := log.take()
	if len(fills) != 1 || fills[0].Split == nil || len(fills[0].Split.Parts) != 2 || !fills[0].Split.Gross.Equal(d("1000")) {
		t.Fatalf("split fill %+v", fills)
	}
}
