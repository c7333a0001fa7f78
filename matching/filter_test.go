package matching

import (
	"fmt"
	"math/big"
	"math/rand"
	"reflect"
	"testing"
	"unsafe"

	"computebroker/market"

	"github.com/shopspring/decimal"
)

// TestFilterEqualsChain: on random books, including providers with more
// certifications than a book numbers and units or hours past the broker's
// limits, the filter compiled for a job and a market passes exactly the
// offers at or under the job's max price that the checker chain passes, and
// the per-provider lists hold every offer once, in book order.
func TestFilterEqualsChain(t *testing.T) {
	var exact, passed, failed int
	for seed := int64(1); seed <= 200; seed++ {
		w := newWorld(seed)
		rng := w.rng
		// Many certifications: some providers hold more than maxCerts.
		for i := range w.providers {
			for c := 0; c < rng.Intn(maxCerts+8); c++ {
				w.providers[i].Certifications = append(w.providers[i].Certifications, fmt.Sprintf("cert-%d", rng.Intn(maxCerts+10)))
			}
		}
		for i := 0; i < 20+rng.Intn(150); i++ {
			o := w.offer()
			switch rng.Intn(8) {
			case 0:
				o.UnitsFree = market.MaxUnits + rng.Int63n(3) - 1
			case 1:
				o.UnitsFree = -rng.Int63n(3)
			case 2:
				o.MaxHours = market.MaxHours + rng.Int63n(3) - 1
			case 3:
				o.MaxHours = -rng.Int63n(2)
			}
			if err := w.books[o.Market()].Upsert(o, w.provider(o.ProviderID)); err != nil {
				t.Fatal(err)
			}
		}
		if rng.Intn(3) == 0 {
			// A provider changes status and certifications.
			p := w.providers[rng.Intn(len(w.providers))]
			p.Status = []market.ProviderStatus{market.ProviderApproved, market.ProviderSuspended, market.ProviderPending}[rng.Intn(3)]
			p.Certifications = []string{"mlps-3", fmt.Sprintf("cert-%d", rng.Intn(maxCerts+10))}
			for _, b := range w.books {
				b.SetProvider(p, nil)
			}
		}
		var snaps []*Snapshot
		for _, b := range w.books {
			snaps = append(snaps, b.Publish())
		}
		for k := 0; k < 20; k++ {
			req := w.request()
			switch rng.Intn(6) {
			case 0:
				req.Job.Units = market.MaxUnits - rng.Int63n(2)
			case 1:
				req.Job.Hours = market.MaxHours - rng.Int63n(2)
			}
			if rng.Intn(2) == 0 {
				req.Job.Certifications = nil
				for c := 0; c < 1+rng.Intn(3); c++ {
					req.Job.Certifications = append(req.Job.Certifications, fmt.Sprintf("cert-%d", rng.Intn(maxCerts+12)))
				}
			}
			q := newQuery(&req)
			for _, sn := range snaps {
				q.enter(sn.mkt)
				f, ok := q.filter(sn)
				for i := range sn.slots {
					sl := &sn.slots[i]
					want := defaultChain.check(&q, sl) == ReasonNone
					got := ok && sl.ticks <= q.maxTicks && f.pass(&sn.hot[i]) &&
						(!f.exact || certificationsChecker{}.check(&q, sl) == ReasonNone)
					if f.exact {
						exact++
					}
					if want {
						passed++
					} else {
						failed++
					}
					if got != want {
						t.Fatalf("seed %d job %d market %s offer %s: filter %v, chain %v (exact %v)", seed, k, sn.Market, sl.it.Offer.ID, got, want, f.exact)
					}
				}
			}
		}
		for _, sn := range snaps {
			checkProviderLists(t, sn)
		}
	}
	if exact == 0 || passed < 1000 || failed < 1000 {
		t.Fatalf("cases not exercised: %d exact, %d passed, %d failed", exact, passed, failed)
	}
}

func checkProviderLists(t *testing.T, sn *Snapshot) {
	t.Helper()
	seen := make([]bool, len(sn.slots))
	for n := range sn.provHead {
		list := sn.provSlots(int32(n))
		for k := range list {
			e := &list[k]
			i := e.index()
			if seen[i] || sn.slots[i].prov.num != int32(n) || e.meta != sn.hot[i].meta || int64(e.key>>provIndexBits) != sn.hot[i].ticks ||
				k > 0 && list[k-1].key >= e.key || k == 0 && (sn.provHead[n].first != e.key || sn.provHead[n].sig != sn.slots[i].prov.sig || sn.provHead[n].acct != &sn.slots[i].prov.acct) {
				t.Fatalf("%s: provider %d entry %d wrong", sn.Market, n, k)
			}
			seen[i] = true
		}
	}
	for i, ok := range seen {
		if !ok {
			t.Fatalf("%s: offer %d in no provider list", sn.Market, i)
		}
		if w, sl := sn.warm[i], &sn.slots[i]; w != (warmSlot{acct: &sl.prov.acct, list: sl.listTicks, sig: sl.prov.sig, num: sl.prov.num}) || sn.hot[i] != packHot(sl) {
			t.Fatalf("%s: offer %d: packed copies differ from the slot", sn.Market, i)
		}
	}
}

// TestDecideOtherMarkets: Decide over snapshots that include markets of
// other classes gives Rank's matches and, when it finds fewer than its
// limit, Rank's counts.
func TestDecideOtherMarkets(t *testing.T) {
	s := NewScratch()
	for seed := int64(1); seed <= 100; seed++ {
		w := newWorld(seed)
		w.fill(w.rng.Intn(120))
		var snaps []*Snapshot
		for _, c := range w.classes {
			for _, r := range w.regions {
				snaps = append(snaps, w.books[market.MarketKey{Class: c.ID, Region: r}].Snapshot())
			}
		}
		for k := 0; k < 10; k++ {
			req := w.request()
			limit := w.rng.Intn(4)
			want := Rank(req, candidatesOf(snaps), limit)
			Decide(&req, snaps, limit, s)
			got := s.Result()
			label := fmt.Sprintf("seed %d case %d", seed, k)
			sameMatches(t, label, got.Matches, want.Matches)
			if limit <= 0 || len(got.Matches) < limit {
				if got.Considered != want.Considered || !reflect.DeepEqual(got.Rejected, want.Rejected) {
					t.Fatalf("%s: considered %d rejected %v, want %d %v", label, got.Considered, got.Rejected, want.Considered, want.Rejected)
				}
			}
		}
	}
}

// TestScratchRejectedBeforeResult: Rejected counts the examined offers
// whether or not Result is called, and Result then adds the offers above
// the max price.
func TestScratchRejectedBeforeResult(t *testing.T) {
	b := NewBook(market.MarketKey{Class: h100.ID, Region: "cn-east"})
	for i, p := range []string{"10", "11", "12", "13"} {
		o := off(fmt.Sprintf("o%d", i), "p1", p)
		o.UnitsFree = int64(3 * i) // 0, 3, 6, 9: the last fails on its price only
		if err := b.Upsert(o, prov("p1")); err != nil {
			t.Fatal(err)
		}
	}
	sn := b.Publish()
	req := Request{Job: market.Job{ResourceClass: h100.ID, Units: 4, Hours: 1, MaxPrice: decimal.RequireFromString("12.5")}, Class: h100}
	s := NewScratch()
	if n := Decide(&req, []*Snapshot{sn}, 2, s); n != 1 {
		t.Fatalf("%d matches", n)
	}
	if s.Considered() != 3 || s.Rejected(ReasonTooFewUnits) != 2 || s.Rejected(ReasonOverMaxPrice) != 0 {
		t.Fatalf("considered %d, too few units %d", s.Considered(), s.Rejected(ReasonTooFewUnits))
	}
	res := s.Result()
	if res.Considered != 4 || !reflect.DeepEqual(res.Rejected, map[string]int{"too_few_units": 2, "over_max_price": 1}) {
		t.Fatalf("result %d %v", res.Considered, res.Rejected)
	}
}

// TestSlotSize: a slot fills one cache line, so that a slice of them, page
// aligned, never splits one across two.
func TestSlotSize(t *testing.T) {
	if n := unsafe.Sizeof(slot{}); n != 64 {
		t.Fatalf("slot is %d bytes", n)
	}
	if n := unsafe.Sizeof(hotSlot{}); n != 16 {
		t.Fatalf("hotSlot is %d bytes", n)
	}
}

// TestDecideManyGrants: a request with more grants than a grant mask
// holds is bounded by the largest discount and still gives Rank's answer.
func TestDecideManyGrants(t *testing.T) {
	s := NewScratch()
	withVoucher := 0
	for seed := int64(1); seed <= 60; seed++ {
		w := newWorld(seed)
		w.fill(50 + w.rng.Intn(100))
		for k := 0; k < 5; k++ {
			req := w.request()
			req.Job.UseVouchers = true
			for i := len(req.Grants); i < maxMasked+1+w.rng.Intn(10); i++ {
				req.Grants = append(req.Grants, w.grant(i))
			}
			limit := w.rng.Intn(4)
			snaps := w.snaps(&req)
			want := Rank(req, candidatesOf(snaps), limit)
			Decide(&req, snaps, limit, s)
			got := s.Result()
			sameMatches(t, fmt.Sprintf("seed %d case %d", seed, k), got.Matches, want.Matches)
			if len(want.Matches) > 0 && want.Matches[0].VoucherID != "" {
				withVoucher++
			}
		}
	}
	if withVoucher < 50 {
		t.Fatalf("only %d wins with a voucher", withVoucher)
	}
}

// TestGrossCents: round_half_up(ticks × uh / 100) against big integers,
// around the 64-bit boundary of the product too.
func TestGrossCents(t *testing.T) {
	rng := rand.New(rand.NewSource(9))
	for n := 0; n < 200000; n++ {
		ticks := rng.Int63n(maxTicks + 1)
		uh := rng.Int63n(market.MaxUnits*market.MaxHours) + 1
		if n%3 == 0 {
			// Products near 2⁶⁴ - 50.
			uh = int64((uint64(1<<63)/uint64(max(ticks, 1)))*2) + rng.Int63n(3) - 1
			uh = min(max(uh, 1), market.MaxUnits*market.MaxHours)
		}
		p := new(big.Int).Mul(big.NewInt(ticks), big.NewInt(uh))
		want := p.Add(p, big.NewInt(50)).Quo(p, big.NewInt(100)).Int64()
		if got := grossCents(ticks, uh); got != want {
			t.Fatalf("grossCents(%d, %d) = %d, want %d", ticks, uh, got, want)
		}
	}
}

// TestSnapshotLayout: a Snapshot is allocated in the 192-byte size class
// (177 to 192 bytes), whose objects start on a cache line, and its first
// line holds hot, first and Market.
func TestSnapshotLayout(t *testing.T) {
	var s Snapshot
	if n := unsafe.Sizeof(s); n <= 176 || n > 192 {
		t.Fatalf("Snapshot is %d bytes", n)
	}
	if end := unsafe.Offsetof(s.Market) + unsafe.Sizeof(s.Market); end > 64 {
		t.Fatalf("Market ends at %d", end)
	}
	if end := unsafe.Offsetof(s.first) + unsafe.Sizeof(s.first); end > 64 {
		t.Fatalf("first ends at %d", end)
	}
}
