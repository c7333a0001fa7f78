package catalog

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"computebroker/internal/testsvc"
	"computebroker/market"
)

func testStore(t *testing.T) *Store {
	t.Helper()
	rdb, _ := historyRedis(t)
	return New(rdb)
}

func mustCreate(t *testing.T, s *Store, id, prov string, m market.MarketKey, units int64, price string, listed bool) {
	t.Helper()
	_, err := s.CreateOffer(context.Background(), NewOffer{ID: id, ProviderID: prov, Market: m, Units: units,
		Price: decimal.RequireFromString(price), MaxHours: 720, Listed: listed, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
}

func ptrPrice(s string) *decimal.Decimal { d := decimal.RequireFromString(s); return &d }

// TestUpdateOffersBatch: one batch over two markets applies each update on
// its own and in order; refused updates change nothing and do not stop the
// others; the change streams get one delta entry per market and the trade
// streams one ticks entry per market with every price change.
func TestUpdateOffersBatch(t *testing.T) {
	ctx := context.Background()
	s := testStore(t)
	m1 := market.MarketKey{Class: "gpu.h100-80g", Region: "cn-east"}
	m2 := market.MarketKey{Class: "cpu.standard", Region: "cn-north"}
	mustCreate(t, s, "a", "p1", m1, 16, "20.00", true)
	mustCreate(t, s, "b", "p1", m2, 64, "0.30", true)
	mustCreate(t, s, "c", "p2", m1, 8, "18.00", false) // provider not approved: not listed
	pos1, _ := s.lastID(ctx, ChangeStreamKey(m1))
	pos2, _ := s.lastID(ctx, ChangeStreamKey(m2))
	tr1, _ := s.lastID(ctx, TradeStreamKey(m1))
	a1 := offerAt(t, s, "a", 1)

	units := int64(4)
	big := int64(32)
	res := s.UpdateOffers(ctx, []OfferUpdate{
		{ID: "a", ProviderID: "p1", Price: ptrPrice("19.50")},
		{ID: "b", ProviderID: "p1", Units: &big},
		{ID: "a", ProviderID: "p2", Price: ptrPrice("1.00")},  // forbidden
		{ID: "zz", ProviderID: "p1", Price: ptrPrice("1.00")}, // unknown
		{ID: "a", ProviderID: "p1", Price: ptrPrice("19.25"), Full: true},
		{ID: "c", ProviderID: "p2", Price: ptrPrice("17.00")},
		{ID: "a", ProviderID: "p1", Units: &units},
	})
	wantErr := []market.Code{"", "", market.CodeForbidden, market.CodeNotFound, "", "", ""}
	wantVersion := []int64{2, 2, 0, 0, 3, 2, 4}
	for i, r := range res {
		if got := market.ErrorCode(r.Err); r.Err != nil && got != wantErr[i] || r.Err == nil && wantErr[i] != "" {
			t.Fatalf("update %d: err %v, want %s", i, r.Err, wantErr[i])
		}
		if r.Version != wantVersion[i] {
			t.Fatalf("update %d: version %d, want %d", i, r.Version, wantVersion[i])
		}
	}
	if o := res[4].Offer; o.ID != "a" || o.Version != 3 || o.Price.String() != "19.25" || o.UnitsFree != 16 {
		t.Fatalf("full reply = %+v", o)
	}
	a, err := s.Offer(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if a.Version != 4 || a.Price.String() != "19.25" || a.Units != 4 || a.UnitsFree != 4 {
		t.Fatalf("offer a = %+v", a)
	}
	idx, _ := s.rdb.ZRangeWithScores(ctx, IndexKey(m1), 0, -1).Result()
	if len(idx) != 1 || idx[0].Member != "a" || idx[0].Score != 192500 {
		t.Fatalf("index of m1 = %v", idx) // c is not listed
	}

	// One delta entry per market, in order, with the listed offers only.
	var changes []Change
	follow(t, s, []MarketState{{Market: m1, Position: pos1, Offers: []market.Offer{a1}}, {Market: m2, Position: pos2}}, func(cs []Change) bool {
		changes = append(changes, cs...)
		return len(changes) >= 4
	})
	var got []string
	for _, c := range changes {
		got = append(got, fmt.Sprintf("%s v%d %s %d/%d", c.Offer.ID, c.Offer.Version, c.Offer.Price, c.Offer.UnitsFree, c.Offer.Units))
		if c.Offer.ProviderID != "p1" || c.Offer.MaxHours != 720 || c.Offer.Status != market.OfferActive {
			t.Errorf("change %s is not a complete offer: %+v", c, c.Offer)
		}
	}
	want := map[string]bool{"a v2 19.5 16/16": true, "a v3 19.25 16/16": true, "a v4 19.25 4/4": true, "b v2 0.3 32/32": true}
	if len(got) != 4 {
		t.Fatalf("changes %v", got)
	}
	for _, g := range got {
		if !want[g] {
			t.Fatalf("changes %v, want %v", got, want)
		}
	}
	n, _ := s.rdb.XLen(ctx, ChangeStreamKey(m1)).Result()
	if n != 2 { // the create of a, then one delta entry
		t.Fatalf("change stream of m1 has %d entries, want 2", n)
	}

	// The ticks: one entry for m1 with a's two price changes (c is not listed).
	msgs, err := s.rdb.XRange(ctx, TradeStreamKey(m1), "("+tr1, "+").Result()
	if err != nil || len(msgs) != 1 || msgs[0].Values["k"] != StreamKindTicks {
		t.Fatalf("trade stream of m1 after the batch: %v %v", msgs, err)
	}
	ticks, err := DecodeTicks([]byte(msgs[0].Values["v"].(string)))
	if err != nil || len(ticks) != 2 {
		t.Fatalf("ticks %v %v", ticks, err)
	}
	if tk := ticks[1]; tk.OfferID != "a" || tk.ProviderID != "p1" || tk.ResourceClass != m1.Class || tk.Region != m1.Region ||
		tk.Price.String() != "19.25" || tk.Version != 3 || tk.UnitsFree != 16 || tk.TS.IsZero() {
		t.Fatalf("tick = %+v", tk)
	}
}

func offerAt(t *testing.T, s *Store, id string, version int64) market.Offer {
	o, err := s.Offer(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if o.Version != version {
		t.Fatalf("offer %s at version %d, want %d", id, o.Version, version)
	}
	return o
}

// follow runs Follow until done says so (or 10 s pass).
func follow(t *testing.T, s *Store, states []MarketState, done func([]Change) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	finished := false
	_ = s.Follow(ctx, states, 50*time.Millisecond, func(cs []Change) {
		mu.Lock()
		defer mu.Unlock()
		if !finished && done(cs) {
			finished = true
			cancel()
		}
	})
	if !finished {
		t.Fatal("follow: timed out")
	}
}

// TestFollowCompletesDeltas: a follower that does not know an offer, or
// missed a version of it, reads it from Redis; one that knows it completes
// the delta itself; old deltas are not handed over again.
func TestFollowCompletesDeltas(t *testing.T) {
	ctx := context.Background()
	s := testStore(t)
	m := market.MarketKey{Class: "gpu.a800-80g", Region: "cn-south"}
	mustCreate(t, s, "k", "p", m, 8, "10.00", true)
	mustCreate(t, s, "u", "p", m, 8, "11.00", true)
	known := offerAt(t, s, "k", 1)
	pos, _ := s.lastID(ctx, ChangeStreamKey(m))
	for _, p := range []string{"9.90", "9.80", "9.70"} {
		for _, id := range []string{"k", "u"} {
			if r := s.UpdateOffers(ctx, []OfferUpdate{{ID: id, ProviderID: "p", Price: ptrPrice(p)}}); r[0].Err != nil {
				t.Fatal(r[0].Err)
			}
		}
	}
	stale := known
	stale.Version = 0 // a follower whose copy is behind by more than one version
	for _, tc := range []struct {
		name  string
		offer []market.Offer
	}{{"knows k", []market.Offer{known}}, {"k behind", []market.Offer{stale}}, {"knows none", nil}} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			last := map[string]int64{}
			follow(t, s, []MarketState{{Market: m, Position: pos, Offers: tc.offer}}, func(cs []Change) bool {
				for _, c := range cs {
					got = append(got, fmt.Sprintf("%s v%d %s", c.Offer.ID, c.Offer.Version, c.Offer.Price))
					last[c.Offer.ID] = c.Offer.Version
				}
				return last["k"] == 4 && last["u"] == 4
			})
			// Every change of k in order when it is known; an offer read from
			// Redis comes at its newest version, and its older deltas are
			// then skipped.
			var wantK []string
			if tc.name == "knows k" {
				wantK = []string{"k v2 9.9", "k v3 9.8", "k v4 9.7"}
			} else {
				wantK = []string{"k v4 9.7"}
			}
			var gotK, gotU []string
			for _, g := range got {
				if g[0] == 'k' {
					gotK = append(gotK, g)
				} else {
					gotU = append(gotU, g)
				}
			}
			if fmt.Sprint(gotK) != fmt.Sprint(wantK) || fmt.Sprint(gotU) != "[u v4 9.7]" {
				t.Fatalf("changes %v", got)
			}
		})
	}
}

// TestSubmitUpdateOrder: many callers submitting at once are group
// committed; each caller's updates are answered in order, every version of
// an offer is given once, and the offer ends at the last price sent.
func TestSubmitUpdateOrder(t *testing.T) {
	s := testStore(t)
	// Offers over five markets, so over every batch shard.
	const callers, each = 16, 200
	for c := 0; c < callers; c++ {
		m := market.MarketKey{Class: "gpu.l40s-48g", Region: fmt.Sprintf("cn-r%d", c%5)}
		mustCreate(t, s, fmt.Sprintf("o%d", c), "p", m, 8, "5.00", true)
	}
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			id := fmt.Sprintf("o%d", c)
			results := make(chan UpdateResult, each)
			for i := 0; i < each; i++ {
				p := decimal.New(int64(500+i), -2)
				s.SubmitUpdate(OfferUpdate{ID: id, ProviderID: "p", Price: &p, Now: time.Now()}, DoneFunc(func(r UpdateResult) { results <- r }))
			}
			for i := 0; i < each; i++ {
				r := <-results
				if r.Err != nil || r.Version != int64(i+2) {
					errs <- fmt.Errorf("%s: answer %d: version %d err %v", id, i, r.Version, r.Err)
					return
				}
			}
		}(c)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for c := 0; c < callers; c++ {
		o := offerAt(t, s, fmt.Sprintf("o%d", c), each+1)
		if o.Price.String() != decimal.New(int64(500+each-1), -2).String() {
			t.Fatalf("offer o%d ends at %s", c, o.Price)
		}
	}
	// Fewer entries than updates: the updates were committed in batches.
	var n int64
	for r := 0; r < 5; r++ {
		m := market.MarketKey{Class: "gpu.l40s-48g", Region: fmt.Sprintf("cn-r%d", r)}
		k, _ := s.rdb.XLen(context.Background(), ChangeStreamKey(m)).Result()
		n += k
	}
	if n >= callers+callers*each {
		t.Fatalf("%d change entries for %d updates: no batching", n, callers*each)
	}
	// Batches counts every update once, in fewer batches than updates.
	if batches, updates := s.Batches(); updates != callers*each || batches < 1 || batches >= updates {
		t.Fatalf("Batches() = %d batches, %d updates; %d updates were submitted", batches, updates, callers*each)
	}
}

func TestDecodeTicksRejectsMalformed(t *testing.T) {
	for _, v := range []string{
		"", "gpu.x\n", "gpu.x\tcn\n", "gpu.x\tcn\na\tp\t1\t1.5\t3", "gpu.x\tcn\na\tp\tx\t1.5\t3\t1",
		"gpu.x\tcn\na\tp\t1\tnan?\t3\t1", "gpu.x\tcn\na\tp\t1\t1.5\t3\t1\textra",
	} {
		if ticks, err := DecodeTicks([]byte(v)); err == nil {
			t.Errorf("DecodeTicks(%q) = %v, want an error", v, ticks)
		}
	}
	ticks, err := DecodeTicks([]byte("gpu.x\tcn\na\tp\t7\t1.5\t3\t1767225600000"))
	if err != nil || len(ticks) != 1 || ticks[0].Version != 7 || ticks[0].TS.Year() != 2026 {
		t.Fatalf("%v %v", ticks, err)
	}
}

// BenchmarkUpdateOffers: batches of price changes over 256 offers in 32
// markets, as the provider streams send them; ns/op is per update. After
// the first round all are predicted; "-entries" sends every market entry
// by entry (form "e") instead of in columns (form "f").
func BenchmarkUpdateOffers(b *testing.B) {
	for _, size := range []int{1, 16, 256} {
		for _, entries := range []bool{false, true} {
			name := fmt.Sprintf("batch%d", size)
			if entries {
				name += "-entries"
			}
			b.Run(name, func(b *testing.B) { benchUpdateOffers(b, size, entries) })
		}
	}
}

func benchUpdateOffers(b *testing.B, size int, entries bool) {
	opt, err := redis.ParseURL(testsvc.Redis(b))
	if err != nil {
		b.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	s := New(rdb)
	s.entriesOnly = entries
	ctx := context.Background()
	const offers = 256
	for i := 0; i < offers; i++ {
		m := market.MarketKey{Class: fmt.Sprintf("gpu.c%d", i%8), Region: fmt.Sprintf("r%d", i/8%4)}
		if _, err := s.CreateOffer(ctx, NewOffer{ID: fmt.Sprintf("o%d", i), ProviderID: "p", Market: m, Units: 8,
			Price: decimal.New(int64(1000+i), -2), MaxHours: 720, Listed: true, Now: time.Now()}); err != nil {
			b.Fatal(err)
		}
	}
	us := make([]OfferUpdate, size)
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n += size {
		for k := range us {
			p := decimal.New(int64(1000+(n+k)%997), -2)
			us[k] = OfferUpdate{ID: fmt.Sprintf("o%d", (n+k)%offers), ProviderID: "p", Price: &p, Now: time.Now()}
		}
		for _, r := range s.UpdateOffers(ctx, us) {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
		}
	}
}

// TestUpdateOffersAfterScriptFlush: a Redis that lost its scripts (restart,
// failover) still takes a batch: EVALSHA fails with NOSCRIPT, EVAL runs it.
func TestUpdateOffersAfterScriptFlush(t *testing.T) {
	ctx := context.Background()
	s := testStore(t)
	m := market.MarketKey{Class: "gpu.h20-96g", Region: "cn-east"}
	mustCreate(t, s, "f1", "p", m, 8, "16.00", true)
	if err := s.rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if r := s.UpdateOffers(ctx, []OfferUpdate{{ID: "f1", ProviderID: "p", Price: ptrPrice("15.00")}}); r[0].Err != nil || r[0].Version != 2 {
		t.Fatalf("after SCRIPT FLUSH: %+v", r[0])
	}
}

// TestBatchesFailFastWhenRedisHangs: against a Redis that accepts
// connections and never answers, the first batch of each shard fails at
// the client's timeout, and every update queued behind it fails with it,
// unsent, instead of waiting a timeout per batch.
func TestBatchesFailFastWhenRedisHangs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // open, silent
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	// The timeouts outlast submitting the updates even on a busy machine, so
	// every update is queued before the first batch fails.
	rdb := redis.NewClient(&redis.Options{Addr: ln.Addr().String(), ReadTimeout: 2 * time.Second,
		WriteTimeout: 2 * time.Second, MaxRetries: -1, PoolSize: 4})
	defer rdb.Close()
	s := New(rdb)
	m := market.MarketKey{Class: "gpu.h100-80g", Region: "cn-east"}
	const n = 2000
	for i := 0; i < n; i++ {
		s.locs.Store(fmt.Sprintf("o%d", i), &offerLoc{m: m, shard: s.marketShard(m)}) // known offers: no lookup in Redis
	}
	results := make(chan UpdateResult, n)
	for i := 0; i < n; i++ {
		s.SubmitUpdate(OfferUpdate{ID: fmt.Sprintf("o%d", i), ProviderID: "p", Price: ptrPrice("20.00")}, DoneFunc(func(r UpdateResult) { results <- r }))
	}
	for i := 0; i < n; i++ {
		if r := <-results; !market.IsCode(r.Err, market.CodeUnavailable) {
			t.Fatalf("update %d against a hung Redis: %+v", i, r)
		}
	}
	// One batch reached Redis (every update was queued, in the market's
	// shard, before it failed); a batch at a time would be ⌈2000/256⌉ = 8.
	if runs := s.batchRuns.Load(); runs > batchShards {
		t.Fatalf("%d batches tried against a hung Redis", runs)
	}
}

// TestTokenCacheFollowsRotationAndRevocation: a token that worked is
// remembered, but rotation and revocation still stop it at once, and an
// unknown token stays unknown.
func TestTokenCacheFollowsRotationAndRevocation(t *testing.T) {
	ctx := context.Background()
	s := testStore(t)
	a := market.Account{ID: "acc1", Role: market.RoleSME, Name: "S"}
	if err := s.CreateAccount(ctx, a, "hash-1"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // the second from the cache
		if got, err := s.AccountByToken(ctx, "hash-1"); err != nil || got.ID != "acc1" {
			t.Fatalf("lookup %d: %+v %v", i, got, err)
		}
	}
	if err := s.RotateToken(ctx, "acc1", "hash-2"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AccountByToken(ctx, "hash-1"); !market.IsCode(err, market.CodeUnauthenticated) {
		t.Fatalf("rotated token: %v", err)
	}
	if got, err := s.AccountByToken(ctx, "hash-2"); err != nil || got.ID != "acc1" {
		t.Fatalf("new token: %+v %v", got, err)
	}
	if err := s.Revoke(ctx, "acc1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AccountByToken(ctx, "hash-2"); !market.IsCode(err, market.CodeUnauthenticated) {
		t.Fatalf("revoked account's token: %v", err)
	}
	if _, err := s.AccountByToken(ctx, "nope"); !market.IsCode(err, market.CodeUnauthenticated) {
		t.Fatalf("unknown token: %v", err)
	}
}

// TestCoalescedPriceChanges: the predicted price changes of one offer in a
// batch go as one entry, and each still gets its own version, delta line
// and tick line, in order; when the offer has changed meanwhile, each takes
// the checked path in turn with its own price and time.
func TestCoalescedPriceChanges(t *testing.T) {
	ctx := context.Background()
	s := testStore(t)
	m := market.MarketKey{Class: "gpu.h100-80g", Region: "cn-east"}
	mustCreate(t, s, "o", "p1", m, 16, "20.00", true)
	mustCreate(t, s, "x", "p1", m, 16, "30.00", true)
	at := time.UnixMilli(1_790_000_000_000)
	// The first changes go checked and teach the store the offers' states.
	for _, r := range s.UpdateOffers(ctx, []OfferUpdate{{ID: "o", ProviderID: "p1", Price: ptrPrice("19.00"), Now: at}, {ID: "x", ProviderID: "p1", Price: ptrPrice("29.00"), Now: at}}) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	batch := func(prices ...string) []UpdateResult {
		var us []OfferUpdate
		for i, p := range prices {
			id := "o"
			if i == 1 {
				id = "x"
			}
			at = at.Add(time.Millisecond)
			us = append(us, OfferUpdate{ID: id, ProviderID: "p1", Price: ptrPrice(p), Now: at})
		}
		return s.UpdateOffers(ctx, us)
	}
	lastLines := func(key, field string) []string {
		e := s.rdb.XRevRangeN(ctx, key, "+", "-", 1).Val()
		if len(e) != 1 {
			t.Fatalf("%s: no entry", key)
		}
		v, _ := e[0].Values[field].(string)
		return strings.Split(v, "\n")
	}
	applied0, stale0 := s.Predictions()
	res := batch("18.50", "28.50", "18.00", "17.50") // o, x, o, o
	for i, want := range []int64{3, 3, 4, 5} {
		if res[i].Err != nil || res[i].Version != want {
			t.Fatalf("update %d: %+v, want version %d", i, res[i], want)
		}
	}
	if applied, _ := s.Predictions(); applied-applied0 != 4 {
		t.Fatalf("predictions applied: %d, want 4", applied-applied0)
	}
	var got []string
	for _, l := range lastLines(ChangeStreamKey(m), "d") {
		f := strings.Split(l, "\t")
		got = append(got, f[0]+" "+f[1]+" "+f[2])
	}
	if want := []string{"o 3 18.5", "o 4 18", "o 5 17.5", "x 3 28.5"}; !slices.Equal(got, want) {
		t.Fatalf("delta lines %v, want %v", got, want)
	}
	got = nil
	for _, l := range lastLines(TradeStreamKey(m), "v")[1:] {
		f := strings.Split(l, "\t")
		got = append(got, f[0]+" "+f[2]+" "+f[3])
	}
	if want := []string{"o 3 18.5", "o 4 18", "o 5 17.5", "x 3 28.5"}; !slices.Equal(got, want) {
		t.Fatalf("tick lines %v, want %v", got, want)
	}
	if sc := s.rdb.ZScore(ctx, IndexKey(m), "o").Val(); sc != 175000 {
		t.Fatalf("index score of o: %v", sc)
	}

	// Something else changes o: the next coalesced changes go checked.
	if _, err := s.rdb.HSet(ctx, StateKey(m), "o", strings.Replace(s.rdb.HGet(ctx, StateKey(m), "o").Val(), "\t16\t16\t", "\t16\t9\t", 1)).Result(); err != nil {
		t.Fatal(err)
	}
	res = batch("17.00", "28.00", "16.50")
	for i, want := range []int64{6, 4, 7} {
		if res[i].Err != nil || res[i].Version != want {
			t.Fatalf("after a change: update %d: %+v, want version %d", i, res[i], want)
		}
	}
	if _, stale := s.Predictions(); stale-stale0 != 2 {
		t.Fatalf("stale predictions: %d, want 2", stale-stale0)
	}
	o, err := s.Offer(ctx, "o")
	if err != nil || o.Price.String() != "16.5" || o.UnitsFree != 9 || o.Version != 7 || !o.PriceAt.Equal(at) {
		t.Fatalf("o after checked changes: %+v, %v", o, err)
	}
	got = nil
	for _, l := range lastLines(TradeStreamKey(m), "v")[1:] {
		f := strings.Split(l, "\t")
		got = append(got, f[0]+" "+f[2]+" "+f[3]+" "+f[4])
	}
	if want := []string{"o 6 17 9", "o 7 16.5 9", "x 4 28 16"}; !slices.Equal(got, want) {
		t.Fatalf("tick lines after a change %v, want %v", got, want)
	}
}

// TestSubmitUpdateShards: markets take the batch shards in turn as they
// first appear; an update of an offer the Store has not seen finds its
// market first, and one of an offer that does not exist is answered at
// once.
func TestSubmitUpdateShards(t *testing.T) {
	s := testStore(t)
	var ms []market.MarketKey
	for i := 0; i < 2*batchShards+1; i++ {
		ms = append(ms, market.MarketKey{Class: "gpu.h100-80g", Region: fmt.Sprintf("cn-s%d", i)})
		mustCreate(t, s, fmt.Sprintf("s%d", i), "p", ms[i], 8, "5.00", true)
	}
	for i, m := range ms {
		if got := s.marketShard(m); got != i%batchShards {
			t.Fatalf("market %d: shard %d, want %d", i, got, i%batchShards)
		}
	}
	if s.marketShard(ms[0]) != 0 || s.marketShard(ms[batchShards+1]) != 1 {
		t.Fatal("a market changed shard")
	}
	fresh := New(s.rdb) // knows no offer's market yet
	results := make(chan UpdateResult, 2)
	fresh.SubmitUpdate(OfferUpdate{ID: "s3", ProviderID: "p", Price: ptrPrice("4.50")}, DoneFunc(func(r UpdateResult) { results <- r }))
	if r := <-results; r.Err != nil || r.Version != 2 {
		t.Fatalf("update of an offer the store had not seen: %+v", r)
	}
	fresh.SubmitUpdate(OfferUpdate{ID: "nope", ProviderID: "p", Price: ptrPrice("4.50")}, DoneFunc(func(r UpdateResult) { results <- r }))
	select {
	case r := <-results:
		if market.ErrorCode(r.Err) != market.CodeNotFound {
			t.Fatalf("update of no offer: %+v", r)
		}
	default:
		t.Fatal("an update of no offer was not answered at once")
	}
}
