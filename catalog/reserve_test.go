package catalog

import (
	"context"
	"fmt"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"computebroker/internal/testsvc"
	"computebroker/market"
)

// TestReserveNeverOverbooks is a property test of the commit point: many
// goroutines reserve random unit counts on one offer, some retrying the same
// order, while the provider changes its units. Units leased never exceed
// what the offer lists, units_free never goes below zero, and a retried
// order leases once.
func TestReserveNeverOverbooks(t *testing.T) {
	ctx := context.Background()
	opt, err := redis.ParseURL(testsvc.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	s := New(rdb)
	m := market.MarketKey{Class: "gpu.h100-80g", Region: "cn-east"}
	price := decimal.RequireFromString("21.5")
	now := time.Now()
	if _, err := s.CreateOffer(ctx, NewOffer{ID: "off", ProviderID: "prv", Market: m, Units: 100, Price: price, MaxHours: 100, Listed: true, Now: now}); err != nil {
		t.Fatal(err)
	}
	var leased, reservations, refused atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(g)))
			for i := 0; i < 30; i++ {
				units := int64(1 + rng.Intn(9))
				order := fmt.Sprintf("o%d-%d", g, i)
				r := Reservation{
					Lease: market.Lease{ID: "lse-" + order, OrderID: order, OfferID: "off", ProviderID: "prv", SMEID: "sme",
						ResourceClass: m.Class, Region: m.Region, Units: units, Hours: 1, UnitPrice: price},
					Trade: market.Trade{ID: "trd-" + order, OrderID: order}, Price: price, Now: now,
				}
				for attempt := 0; attempt < 2; attempt++ { // the second is a retry of the same order
					res, err := s.Reserve(ctx, r)
					if market.IsCode(err, market.CodeConflict) {
						refused.Add(1)
						break
					}
					if err != nil {
						t.Error(err)
						return
					}
					if !res.Duplicate {
						leased.Add(units)
						reservations.Add(1)
					}
				}
			}
		}(g)
	}
	// The provider lists more units now and then, never below what is leased.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := int64(110); n <= 150; n += 10 {
			u := n
			if _, err := s.UpdateOffer(ctx, OfferUpdate{ID: "off", ProviderID: "prv", Units: &u, Now: time.Now()}); err != nil && !market.IsCode(err, market.CodeConflict) {
				t.Error(err)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	wg.Wait()
	o, err := s.Offer(ctx, "off")
	if err != nil {
		t.Fatal(err)
	}
	if o.UnitsFree < 0 || leased.Load() > o.Units || o.Units-o.UnitsFree != leased.Load() {
		t.Fatalf("offer %d units, %d free; %d leased by %d reservations", o.Units, o.UnitsFree, leased.Load(), reservations.Load())
	}
	n, err := rdb.XLen(ctx, TradeStreamKey(m)).Result()
	if err != nil {
		t.Fatal(err)
	}
	// One trade per reservation, plus the listing's first price tick.
	if n != reservations.Load()+1 {
		t.Fatalf("trade stream holds %d entries, want %d reservations + 1 tick", n, reservations.Load())
	}
	// About 1,200 units asked of at most 150: some reservations must have
	// been refused. (Units free at the end say nothing: the provider may
	// list 10 more after the last reservation.)
	if refused.Load() == 0 {
		t.Fatalf("no reservation refused (%d units free at the end): the run never reached the limit", o.UnitsFree)
	}
}
