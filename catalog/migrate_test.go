package catalog

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"computebroker/market"
)

// TestMigrateOfferStates: an offer stored the way brokerds before the state
// hash stored it (every field in its hash) reads the same after the
// migration, takes updates, and a second migration does nothing.
func TestMigrateOfferStates(t *testing.T) {
	ctx := context.Background()
	rdb, _ := historyRedis(t)
	s := New(rdb)
	m := market.MarketKey{Class: "gpu.h100-80g", Region: "cn-east"}
	member := indexMember(215000, "old")
	rdb.HSet(ctx, offerLocKey, "old", m.String())
	rdb.SAdd(ctx, providerOffersKey("p"), "old")
	rdb.HSet(ctx, OfferKey(m, "old"), "id", "old", "provider", "p", "class", m.Class, "region", m.Region,
		"units", "16", "free", "12", "price", "21.5", "list_price", "20", "max_hours", "720", "specs", "{}",
		"version", "7", "status", "active", "listed", "1", "price_at", "1790000000000",
		"updated_at", "1790000001000", "member", member)
	rdb.ZAdd(ctx, IndexKey(m), redis.Z{Member: member})

	n, err := s.MigrateOfferStates(ctx)
	if err != nil || n != 1 {
		t.Fatalf("migrated %d, %v; want 1", n, err)
	}
	o, err := s.Offer(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	if o.Version != 7 || o.Price.String() != "21.5" || o.ListPrice.String() != "20" || o.Units != 16 || o.UnitsFree != 12 ||
		o.Status != market.OfferActive || o.MaxHours != 720 || o.ProviderID != "p" ||
		!o.PriceAt.Equal(time.UnixMilli(1790000000000)) || !o.UpdatedAt.Equal(time.UnixMilli(1790000001000)) {
		t.Fatalf("offer after the migration: %+v", o)
	}
	if h := rdb.HGetAll(ctx, OfferKey(m, "old")).Val(); h["version"] != "" || h["price"] != "" || h["max_hours"] != "720" {
		t.Fatalf("offer hash after the migration: %v", h)
	}
	if listed, err := s.Listed(ctx, o); err != nil || !listed {
		t.Fatalf("listed %v, %v", listed, err)
	}
	page, _, err := s.ListOffers(ctx, OfferFilter{Markets: []market.MarketKey{m}})
	if err != nil || len(page) != 1 || page[0].ID != "old" {
		t.Fatalf("list: %v, %v", page, err)
	}
	r := s.UpdateOffers(ctx, []OfferUpdate{{ID: "old", ProviderID: "p", Price: ptrPrice("19.00"), Now: time.UnixMilli(1790000002000)}})
	if r[0].Err != nil || r[0].Version != 8 {
		t.Fatalf("update after the migration: %+v", r[0])
	}
	if idx := rdb.ZRange(ctx, IndexKey(m), 0, -1).Val(); len(idx) != 1 || idx[0] != indexMember(190000, "old") {
		t.Fatalf("index = %v", idx)
	}
	if n, err := s.MigrateOfferStates(ctx); err != nil || n != 0 {
		t.Fatalf("second migration: %d, %v", n, err)
	}
}
