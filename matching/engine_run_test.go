package matching

import (
	"context"
	"fmt"
	"math/rand"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"computebroker/market"

	"github.com/shopspring/decimal"
)

func testMarkets(w *world) []market.MarketKey {
	var ms []market.MarketKey
	for _, c := range w.classes {
		for _, r := range w.regions {
			ms = append(ms, market.MarketKey{Class: c.ID, Region: r})
		}
	}
	return ms
}

// events draws a random event sequence: new offers, price and units
// changes, removals, provider status changes.
func (w *world) events(n int) []Event {
	var evs []Event
	var live []market.Offer
	for i := 0; i < n; i++ {
		switch r := w.rng.Intn(10); {
		case r < 5 || len(live) == 0:
			o := w.offer()
			live = append(live, o)
			evs = append(evs, Upsert(o, w.provider(o.ProviderID)))
		case r < 8:
			k := w.rng.Intn(len(live))
			o := live[k]
			o.Version++
			if w.rng.Intn(2) == 0 {
				o.Price = w.price()
			} else {
				o.UnitsFree = int64(w.rng.Intn(int(o.Units) + 1))
			}
			live[k] = o
			evs = append(evs, Upsert(o, w.provider(o.ProviderID)))
		case r < 9:
			k := w.rng.Intn(len(live))
			evs = append(evs, Remove(live[k].Market(), live[k].ID))
			live = slices.Delete(live, k, k+1)
		case w.rng.Intn(2) == 0:
			p := w.providers[w.rng.Intn(len(w.providers))]
			p.Status = []market.ProviderStatus{market.ProviderApproved, market.ProviderSuspended}[w.rng.Intn(2)]
			evs = append(evs, SetProvider(p))
		default:
			// A market's reference price, as brokerd refreshes them: one
			// of marketReference's kinds, another market's, or none
			// (zero: a market whose history has no trade any more).
			ms := testMarkets(w)
			ref := marketReference(ms[w.rng.Intn(len(ms))])
			if w.rng.Intn(4) == 0 {
				ref = decimal.Zero
			}
			evs = append(evs, SetReference(ms[w.rng.Intn(len(ms))], ref))
		}
	}
	return evs
}

// TestEngineEqualsRank drives the engine's goroutines with random events and
// checks every Match against Rank over the engine's own snapshots, and the
// snapshots against books given the same events directly.
func TestEngineEqualsRank(t *testing.T) {
	ctx := context.Background()
	s := NewScratch()
	numbered, named, provsByNum, provsByID, bookRefs := 0, 0, 0, 0, 0
	for seed := int64(1); seed <= 30; seed++ {
		w := newWorld(seed)
		e := NewEngine(Config{Markets: testMarkets(w), QueueSize: 8})
		evs := w.events(300)
		// ref: the same events applied to books directly, to compare the
		// engine's snapshots with.
		ref := map[market.MarketKey]*Book{}
		for _, m := range testMarkets(w) {
			ref[m] = NewBook(m)
		}
		// refs: the markets' reference prices the events set.
		refs := map[market.MarketKey]decimal.Decimal{}
		for i, ev := range evs {
			switch ev.Kind {
			case EventUpsert:
				_ = ref[ev.Offer.Market()].Upsert(ev.Offer, ev.Provider)
			case EventRemove:
				ref[ev.Market].Remove(ev.OfferID)
			case EventProvider:
				for _, b := range ref {
					b.SetProvider(ev.Provider, nil)
				}
			case EventReference:
				ref[ev.Market].SetReference(ev.Reference)
				refs[ev.Market] = ev.Reference
			}
			if err := e.Apply(ctx, ev); err != nil {
				t.Fatal(err)
			}
			if i%20 != 19 {
				continue
			}
			if err := e.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			for m, b := range ref {
				key := func(cs []Candidate) []string {
					var out []string
					for _, c := range cs {
						out = append(out, fmt.Sprintf("%s v%d %s %s", c.Offer.ID, c.Offer.Version, c.Offer.Price, c.Provider.Status))
					}
					return out
				}
				if got, want := key(e.Snapshot(m).Candidates()), key(b.Publish().Candidates()); !slices.Equal(got, want) {
					t.Fatalf("seed %d event %d: market %s holds %v, want %v", seed, i, m, got, want)
				}
			}
			for k := 0; k < 10; k++ {
				req := w.request()
				limit := w.rng.Intn(4)
				switch w.rng.Intn(10) {
				case 0: // a region no engine has: decided by name
					req.Job.Regions = append(slices.Clone(req.Job.Regions), "cn-nowhere")
				case 1:
					if len(req.Grants) > 0 {
						req.Grants = slices.Clone(req.Grants)
						req.Grants[0].Program.Regions = []string{"cn-nowhere", w.pick(w.regions)}
					}
				case 2: // a provider no book has: looked up at each decision
					if len(req.Grants) > 0 {
						req.Grants = slices.Clone(req.Grants)
						req.Grants[0].Program.Providers = []string{"prov-none", w.providers[w.rng.Intn(len(w.providers))].ID}
					}
				}
				var snaps []*Snapshot
				for _, m := range testMarkets(w) {
					if m.Class == req.Job.ResourceClass && req.Job.InRegion(m.Region) {
						snaps = append(snaps, e.Snapshot(m))
					}
				}
				got := e.Match(req, limit)
				// Without a Reference of its own, the request is held to
				// the references the engine's books hold; Rank is told them.
				rreq := req
				if rreq.Reference == nil {
					rreq.Reference = func(k market.MarketKey) decimal.Decimal { return refs[k] }
					for _, sn := range snaps {
						if sn.ref != nil && len(req.Grants) > 0 && req.Job.UseVouchers {
							bookRefs++
							break
						}
					}
				}
				want := Rank(rreq, candidatesOf(snaps), limit)
				label := fmt.Sprintf("seed %d event %d case %d", seed, i, k)
				sameMatches(t, label, got.Matches, want.Matches)
				// Compiled, as the broker builds requests: the engine
				// finds the markets, and the grants whose region scope
				// takes each, by number.
				creq := req
				creq.Compile()
				if creq.num.ok {
					numbered++
				} else {
					named++
				}
				if len(creq.Terms) > 0 && creq.num.provsOK {
					provsByNum++
				} else if len(creq.Terms) > 0 {
					provsByID++
				}
				n := e.Decide(&creq, limit, s)
				res := s.Result()
				sameMatches(t, label+" compiled", res.Matches, want.Matches)
				if (limit <= 0 || n < limit) && (res.Considered != want.Considered || !reflect.DeepEqual(res.Rejected, want.Rejected)) {
					t.Fatalf("%s compiled: considered %d rejected %v, want %d %v", label, res.Considered, res.Rejected, want.Considered, want.Rejected)
				}
			}
		}
		e.Close()
	}
	t.Logf("compiled requests: %d decided by number, %d by name; with grants, %d took the providers by number, %d by id; %d with vouchers held to the books' reference prices",
		numbered, named, provsByNum, provsByID, bookRefs)
	if numbered < 1000 || named < 100 || provsByNum < 1000 || provsByID < 100 {
		t.Fatal("the requests do not exercise both ways of finding the markets")
	}
	if bookRefs < 500 {
		t.Fatal("the requests do not exercise the books' reference prices")
	}
}

// TestReplay: the same event sequence gives the same matches, twice.
func TestReplay(t *testing.T) {
	ctx := context.Background()
	run := func() []string {
		w := newWorld(42)
		var mu sync.Mutex
		var log []string
		e := NewEngine(Config{Markets: testMarkets(w), QueueSize: 4, Now: func() time.Time { return w.now },
			OnFill: func(f Fill) {
				mu.Lock()
				log = append(log, fmt.Sprintf("fill %s %s %s", f.JobID, f.Match.Offer.ID, f.Match.Net))
				mu.Unlock()
			}})
		defer e.Close()
		evs := w.events(600)
		reqs := make([]Request, 100)
		for i := range reqs {
			reqs[i] = w.request()
		}
		for i, ev := range evs {
			if err := e.Apply(ctx, ev); err != nil {
				t.Fatal(err)
			}
			if err := e.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			req := reqs[i%len(reqs)]
			if i%7 == 0 {
				req.Job.MaxPrice = decimal.RequireFromString("9.50")
				if err := e.Rest(ctx, fmt.Sprintf("job%d", i), req, w.now.Add(time.Hour)); err != nil {
					t.Fatal(err)
				}
				if err := e.Sync(ctx); err != nil {
					t.Fatal(err)
				}
				continue
			}
			res := e.Match(req, 3)
			line := fmt.Sprintf("%d:", i)
			for _, m := range res.Matches {
				line += fmt.Sprintf(" %s/%s/%s", m.Offer.ID, m.Net, m.VoucherID)
			}
			line += fmt.Sprint(" ", res.Rejected)
			mu.Lock()
			log = append(log, line)
			mu.Unlock()
		}
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(log)
	}
	a, b := run(), run()
	if !slices.Equal(a, b) {
		for i := range min(len(a), len(b)) {
			if a[i] != b[i] {
				t.Fatalf("replay differs at %d:\n%s\n%s", i, a[i], b[i])
			}
		}
		t.Fatalf("replay lengths %d, %d", len(a), len(b))
	}
	fills := 0
	for _, l := range a {
		if len(l) > 4 && l[:4] == "fill" {
			fills++
		}
	}
	t.Logf("%d log lines, %d fills", len(a), fills)
	if fills == 0 {
		t.Fatal("no resting job filled")
	}
}

func TestEngineApplyErrors(t *testing.T) {
	k := market.MarketKey{Class: h100.ID, Region: "cn-east"}
	e := NewEngine(Config{Markets: []market.MarketKey{k}, QueueSize: 1})
	ctx := context.Background()
	o := off("x", "p1", "20")
	o.Region = "cn-west"
	if err := e.Apply(ctx, Upsert(o, prov("p1"))); err != ErrUnknownMarket {
		t.Fatalf("unknown market: %v", err)
	}
	e.Close()
	if err := e.Apply(ctx, Upsert(off("y", "p1", "20"), prov("p1"))); err != ErrClosed {
		t.Fatalf("closed: %v", err)
	}
	// A full queue blocks until ctx is done.
	e2 := NewEngine(Config{Markets: []market.MarketKey{k}, QueueSize: 1})
	defer e2.Close()
	ctx2, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	var err error
	for i := 0; i < 100000 && err == nil; i++ {
		err = e2.Apply(ctx2, Upsert(off(fmt.Sprintf("o%d", i), "p1", "20"), prov("p1")))
	}
	if err != nil && err != context.DeadlineExceeded {
		t.Fatalf("full queue: %v", err)
	}
}

func TestBook(t *testing.T) {
	k := market.MarketKey{Class: h100.ID, Region: "cn-east"}
	b := NewBook(k)
	bad := []struct {
		name string
		o    market.Offer
		p    market.Account
	}{
		{"other market", func() market.Offer { o := off("a", "p1", "20"); o.Region = "cn-west"; return o }(), prov("p1")},
		{"other provider", off("a", "p1", "20"), prov("p2")},
		{"five decimals", off("a", "p1", "20.00001"), prov("p1")},
		{"above max price", off("a", "p1", "1000000.0001"), prov("p1")},
		{"negative", off("a", "p1", "-1"), prov("p1")},
	}
	for _, tt := range bad {
		if err := b.Upsert(tt.o, tt.p); !market.IsCode(err, market.CodeInvalidArgument) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.Upsert(off("a", "p1", "20"), prov("p1")))
	must(b.Upsert(off("b", "p2", "19"), prov("p2")))
	s1 := b.Publish()
	o := off("a", "p1", "18")
	o.Version = 2
	must(b.Upsert(o, prov("p1")))
	old := off("a", "p1", "30") // version 0 < 2: stale, ignored
	must(b.Upsert(old, prov("p1")))
	susp := prov("p2")
	susp.Status = market.ProviderSuspended
	b.SetProvider(susp, nil)
	must(b.Upsert(off("c", "p2", "17"), prov("p2"))) // stale approved copy: the book keeps the suspension
	s2 := b.Publish()
	if got := ids(Rank(request(), s1.Candidates(), 0).Matches); !slices.Equal(got, []string{"b", "a"}) {
		t.Fatalf("old snapshot changed: %v", got)
	}
	res := Rank(request(), s2.Candidates(), 0)
	if got := ids(res.Matches); !slices.Equal(got, []string{"a"}) || res.Rejected["provider_suspended"] != 2 {
		t.Fatalf("new snapshot: %v %v", got, res.Rejected)
	}
	if s2.Version != s1.Version+1 || b.Publish() != s2 {
		t.Fatalf("versions %d %d", s1.Version, s2.Version)
	}
	gone := off("a", "p1", "18")
	gone.Version, gone.Status = 3, market.OfferDeleted
	must(b.Upsert(gone, prov("p1")))
	if !b.Remove("b") || b.Remove("zz") {
		t.Fatal("remove")
	}
	if s3 := b.Publish(); s3.Len() != 1 {
		t.Fatalf("len %d", s3.Len())
	}
}

// A random-order cross-check of the book's order against a sort.
func TestBookOrder(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	b := NewBook(market.MarketKey{Class: h100.ID, Region: "cn-east"})
	for i := 0; i < 2000; i++ {
		o := off(fmt.Sprintf("o%d", rng.Intn(300)), "p1", fmt.Sprintf("%d.%02d", 10+rng.Intn(3), rng.Intn(4)*25))
		o.Version = int64(i)
		o.PriceAt = t0.Add(time.Duration(rng.Intn(3)) * time.Second)
		if rng.Intn(5) == 0 {
			b.Remove(o.ID)
			continue
		}
		if err := b.Upsert(o, prov("p1")); err != nil {
			t.Fatal(err)
		}
	}
	s := b.Publish()
	if !slices.IsSortedFunc(s.slots, compareSlots) || len(s.slots) != len(b.byID) || len(s.provSlots(providerNumber("p1"))) != len(s.slots) {
		t.Fatal("book order broken")
	}
}
