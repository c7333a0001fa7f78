package catalog

import (
	"context"
	"encoding/base64"
	"fmt"
	"math/rand"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"computebroker/market"
)

// TestPredictionsAgreeWithChecks is a property test of the predicted price
// changes (offerState): two stores get the same random updates, in the same
// batches, mixed with reservations, cancellations, listing changes and
// deletions between batches. One predicts, the other checks every update in
// full. Every result, every offer hash, every price index and every change-
// and trade-stream entry must come out the same, and predictions must have
// been made, some of them stale.
//
// The predicting store sends a market whose updates are all predicted in
// form "f" (updateBatchScript), and also, in a second run of each seed,
// always in form "e".
func TestPredictionsAgreeWithChecks(t *testing.T) {
	for seed := int64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { predictionsAgree(t, seed, false) })
		t.Run(fmt.Sprint("seed", seed, "-entries"), func(t *testing.T) { predictionsAgree(t, seed, true) })
	}
}

func predictionsAgree(t *testing.T, seed int64, entriesOnly bool) {
	ctx := context.Background()
	newStore := func(checkedOnly bool) (*Store, *redis.Client) {
		rdb, _ := historyRedis(t)
		s := New(rdb)
		s.checkedOnly, s.entriesOnly = checkedOnly, entriesOnly
		return s, rdb
	}
	pred, rdbP := newStore(false)
	chk, rdbC := newStore(true)
	stores := []*Store{pred, chk}

	markets := []market.MarketKey{
		{Class: "gpu.h100-80g", Region: "cn-east"},
		{Class: "gpu.a100-40g", Region: "cn-east"},
		{Class: "cpu.standard", Region: "cn-north"},
	}
	type offer struct {
		id, prov string
		m        market.MarketKey
	}
	var offers []offer
	base := time.UnixMilli(1_790_000_000_000).UTC()
	step := 0
	now := func() time.Time { step++; return base.Add(time.Duration(step) * time.Millisecond) }
	for i := 0; i < 12; i++ {
		o := offer{id: fmt.Sprintf("o%d", i), prov: fmt.Sprintf("p%d", i%3), m: markets[i%len(markets)]}
		offers = append(offers, o)
		n := NewOffer{ID: o.id, ProviderID: o.prov, Market: o.m, Units: 16, Price: decimal.New(int64(1000+i), -2),
			MaxHours: 720, Listed: o.prov != "p2", Now: now()}
		for _, s := range stores {
			if _, err := s.CreateOffer(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
	}

	rng := rand.New(rand.NewSource(seed))
	type lease struct {
		m       market.MarketKey
		id, oid string
	}
	var leases []lease
	listed := map[string]bool{"p0": true, "p1": true, "p2": false}
	for round := 0; round < 400; round++ {
		us := make([]OfferUpdate, 1+rng.Intn(12))
		for i := range us {
			o := offers[rng.Intn(len(offers))]
			price := decimal.New(int64(900+rng.Intn(300)), -2)
			units := int64(rng.Intn(24))
			u := OfferUpdate{ID: o.id, ProviderID: o.prov, Price: &price, Now: now()}
			switch r := rng.Intn(20); {
			case r < 15:
			case r == 15:
				u.Price, u.Units = nil, &units
			case r == 16:
				u.Units = &units
			case r == 17:
				u.ProviderID = "p9" // not its provider
			case r == 18:
				u.Full = true
			default:
				u.ID = "nope"
			}
			us[i] = u
		}
		rp, rc := pred.UpdateOffers(ctx, us), chk.UpdateOffers(ctx, us)
		for i := range us {
			if rp[i].Version != rc[i].Version || market.ErrorCode(rp[i].Err) != market.ErrorCode(rc[i].Err) ||
				!reflect.DeepEqual(rp[i].Offer, rc[i].Offer) {
				t.Fatalf("round %d, update %d (%+v): predicting store %+v, checking store %+v", round, i, us[i], rp[i], rc[i])
			}
		}

		// Something else changes an offer between batches.
		o := offers[rng.Intn(len(offers))]
		switch rng.Intn(8) {
		case 0, 1: // a reservation at the offer's current price
			cur, err := chk.Offer(ctx, o.id)
			if err != nil {
				t.Fatal(err)
			}
			order := fmt.Sprintf("ord%d", round)
			r := Reservation{
				Lease: market.Lease{ID: "lse-" + order, OrderID: order, OfferID: o.id, ProviderID: o.prov, SMEID: "sme",
					ResourceClass: o.m.Class, Region: o.m.Region, Units: 1 + rng.Int63n(4), Hours: 1, UnitPrice: cur.Price},
				Trade: market.Trade{ID: "trd-" + order, OrderID: order}, Price: cur.Price, Now: now(),
			}
			var errs [2]error
			for k, s := range stores {
				_, errs[k] = s.Reserve(ctx, r)
			}
			if market.ErrorCode(errs[0]) != market.ErrorCode(errs[1]) {
				t.Fatalf("round %d: reserve: %v vs %v", round, errs[0], errs[1])
			}
			if errs[0] == nil {
				leases = append(leases, lease{o.m, r.Lease.ID, o.id})
			}
		case 2: // a cancellation
			if len(leases) == 0 {
				break
			}
			l := leases[0]
			leases = leases[1:]
			at := now()
			for _, s := range stores {
				if err := s.CancelLease(ctx, l.m, l.id, l.oid, market.Trade{ID: "ref-" + l.id}, at); err != nil {
					t.Fatal(err)
				}
			}
		case 3: // a provider's standing changes
			p := fmt.Sprintf("p%d", rng.Intn(3))
			listed[p] = !listed[p]
			at := now()
			for _, s := range stores {
				if err := s.syncProviderOffers(ctx, p, listed[p], at); err != nil {
					t.Fatal(err)
				}
			}
		case 4:
			if rng.Intn(4) == 0 {
				at := now()
				for _, s := range stores {
					_ = s.DeleteOffer(ctx, o.id, o.prov, at)
				}
			}
		}
	}

	// Redis holds the same in both.
	for _, o := range offers {
		hp, hc := rdbP.HGetAll(ctx, OfferKey(o.m, o.id)).Val(), rdbC.HGetAll(ctx, OfferKey(o.m, o.id)).Val()
		if !reflect.DeepEqual(hp, hc) {
			t.Fatalf("offer %s: predicting store %v, checking store %v", o.id, hp, hc)
		}
		sp, sc := rdbP.HGet(ctx, StateKey(o.m), o.id).Val(), rdbC.HGet(ctx, StateKey(o.m), o.id).Val()
		if sp != sc || sp == "" {
			t.Fatalf("offer %s state: predicting store %q, checking store %q", o.id, sp, sc)
		}
	}
	// An entry's delta and tick lines may differ in order between
	// offers (a batch sends all the predicted changes of an offer as one),
	// never within an offer: they are compared in a stable order by offer.
	byOffer := func(v string, head bool) string {
		lines := strings.Split(v, "\n")
		rest := lines
		if head {
			rest = lines[1:]
		}
		slices.SortStableFunc(rest, func(a, b string) int {
			ia, _, _ := strings.Cut(a, "\t")
			ib, _, _ := strings.Cut(b, "\t")
			return strings.Compare(ia, ib)
		})
		return strings.Join(lines, "\n")
	}
	entries := func(rdb *redis.Client, key string) [][]any {
		var out [][]any
		for _, e := range rdb.XRange(ctx, key, "-", "+").Val() {
			var kv []any
			for k, v := range e.Values {
				switch {
				case k == "d" && e.Values["t"] == "delta":
					v = byOffer(v.(string), false)
				case k == "v" && e.Values["k"] == "ticks":
					v = byOffer(v.(string), true)
				}
				kv = append(kv, k, v)
			}
			out = append(out, kv)
		}
		return out
	}
	for _, m := range markets {
		ip := rdbP.ZRangeWithScores(ctx, IndexKey(m), 0, -1).Val()
		ic := rdbC.ZRangeWithScores(ctx, IndexKey(m), 0, -1).Val()
		if !reflect.DeepEqual(ip, ic) {
			t.Fatalf("index of %s: %v vs %v", m, ip, ic)
		}
		for _, key := range []string{ChangeStreamKey(m), TradeStreamKey(m)} {
			ep, ec := entries(rdbP, key), entries(rdbC, key)
			if len(ep) != len(ec) {
				t.Fatalf("%s: %d entries vs %d", key, len(ep), len(ec))
			}
			for i := range ep {
				if !sameFields(ep[i], ec[i]) {
					t.Fatalf("%s entry %d: %v vs %v", key, i, ep[i], ec[i])
				}
			}
		}
	}
	applied, stale := pred.Predictions()
	if applied < 500 || stale == 0 {
		t.Fatalf("predictions applied %d, stale %d: the predicted path was not exercised", applied, stale)
	}
	if a, s := chk.Predictions(); a != 0 || s != 0 {
		t.Fatalf("the checking store predicted (%d, %d)", a, s)
	}
	t.Logf("predictions applied %d, stale %d", applied, stale)
}

// sameFields compares two stream entries' field-value lists as sets of pairs.
func sameFields(a, b []any) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[any]any{}
	for i := 0; i+1 < len(a); i += 2 {
		m[a[i]] = a[i+1]
	}
	for i := 0; i+1 < len(b); i += 2 {
		if v, ok := m[b[i]]; !ok || v != b[i+1] {
			return false
		}
	}
	return true
}

func TestCursor(t *testing.T) {
	for _, c := range []struct {
		ticks int64
		id    string
	}{{0, "a"}, {215000, "off_1"}, {1 << 62, "x.y-z_0"}} {
		raw, _ := base64.RawURLEncoding.DecodeString(cursorOf(c.ticks, c.id))
		if want := fmt.Sprintf("%019d|%s", c.ticks, c.id); string(raw) != want {
			t.Errorf("cursorOf(%d, %s) holds %q, want %q", c.ticks, c.id, raw, want)
		}
		if ticks, id, ok := parseCursor(cursorOf(c.ticks, c.id)); !ok || ticks != c.ticks || id != c.id {
			t.Errorf("parseCursor(cursorOf(%d, %s)) = %d, %s, %v", c.ticks, c.id, ticks, id, ok)
		}
	}
	for _, bad := range []string{"", "!!", base64.RawURLEncoding.EncodeToString([]byte("12|a")), base64.RawURLEncoding.EncodeToString([]byte("0000000000000215000|a b"))} {
		if _, _, ok := parseCursor(bad); ok {
			t.Errorf("parseCursor(%q) accepted", bad)
		}
	}
}

// TestPredictionNeedsTheSameUpdatedAt: an offer whose version came round
// again to the one brokerd knows, in another state (a Redis that lost its
// last writes and was changed since), is not predicted on: the update takes
// the checked path, and the index keeps one member for the offer.
func TestPredictionNeedsTheSameUpdatedAt(t *testing.T) {
	ctx := context.Background()
	rdb, _ := historyRedis(t)
	s := New(rdb)
	m := market.MarketKey{Class: "gpu.h100-80g", Region: "cn-east"}
	mustCreate(t, s, "o", "p", m, 16, "20.00", true)
	at := time.UnixMilli(1_790_000_000_000)
	for i, price := range []string{"19.00", "18.00"} {
		if r := s.UpdateOffers(ctx, []OfferUpdate{{ID: "o", ProviderID: "p", Price: ptrPrice(price), Now: at.Add(time.Duration(i) * time.Second)}}); r[0].Err != nil {
			t.Fatal(r[0].Err)
		}
	}
	if applied, _ := s.Predictions(); applied != 1 {
		t.Fatalf("predictions applied: %d, want 1", applied)
	}
	// Another state at the same version: other price, member, free units and
	// updated_at, the index in step with it.
	st, ok := stateOf(rdb.HGet(ctx, StateKey(m), "o").Val())
	if !ok {
		t.Fatal("no state")
	}
	st.price, st.score, st.free, st.updatedAt = "17", "170000", 3, "1790000000500"
	rdb.HSet(ctx, StateKey(m), "o", st.pack())
	rdb.ZAdd(ctx, IndexKey(m), redis.Z{Score: 170000, Member: "o"})

	r := s.UpdateOffers(ctx, []OfferUpdate{{ID: "o", ProviderID: "p", Price: ptrPrice("16.00"), Now: at.Add(5 * time.Second)}})
	if r[0].Err != nil {
		t.Fatal(r[0].Err)
	}
	if _, stale := s.Predictions(); stale != 1 {
		t.Fatalf("stale predictions: %d, want 1", stale)
	}
	if idx := rdb.ZRangeWithScores(ctx, IndexKey(m), 0, -1).Val(); len(idx) != 1 || idx[0].Member != "o" || idx[0].Score != 160000 {
		t.Fatalf("index = %v", idx)
	}
	o, err := s.Offer(ctx, "o")
	if err != nil {
		t.Fatal(err)
	}
	if o.UnitsFree != 3 || o.Price.String() != "16" || o.Version != r[0].Version {
		t.Fatalf("offer after the update: %+v", o)
	}
}

// TestStateCacheBound: the cache of offer states starts over when a new offer
// would pass maxStates, not when a known one is updated.
func TestStateCacheBound(t *testing.T) {
	s := New(nil)
	id := "o1"
	c := s.states(id)
	c.m = make(map[string]offerState)
	for i := 0; len(c.m) < maxStates-1; i++ {
		c.m[fmt.Sprint("x", i)] = offerState{}
	}
	s.keepState(id, offerState{version: 1})
	s.keepState(id, offerState{version: 2}) // known: kept with the others
	if len(c.m) != maxStates || c.m[id].version != 2 {
		t.Fatalf("%d states, %s at version %d", len(c.m), id, c.m[id].version)
	}
	var other string
	for i := 0; ; i++ { // a new offer of the same shard
		if other = fmt.Sprint("n", i); batchShard(other) == batchShard(id) {
			break
		}
	}
	s.keepState(other, offerState{version: 7})
	if len(c.m) != 1 || c.m[other].version != 7 {
		t.Fatalf("after the bound: %d states", len(c.m))
	}
}
