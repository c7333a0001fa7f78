package catalog

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
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
	member := "0000000000000215000|old"
	rdb.HSet(ctx, offerLocKey, "old", m.String())
	rdb.SAdd(ctx, providerOffersKey("p"), "old")
	rdb.HSet(ctx, OfferKey(m, "old"), "id", "old", "provider", "p", "class", m.Class, "region", m.Region,
		"units", "16", "free", "12", "price", "21.5", "list_price", "20", "max_hours", "720", "specs", "{}",
		"version", "7", "status", "active", "listed", "1", "price_at", "1790000000000",
		"updated_at", "1790000001000", "member", member)
	rdb.ZAdd(ctx, IndexKey(m), redis.Z{Member: member})

	n, err := s.MigrateOfferStates(ctx)
	if err != nil || n != 2 { // moved, then re-scored
		t.Fatalf("migrated %d, %v; want 2", n, err)
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
	if idx := rdb.ZRangeWithScores(ctx, IndexKey(m), 0, -1).Val(); len(idx) != 1 || idx[0].Member != "old" || idx[0].Score != 190000 {
		t.Fatalf("index = %v", idx)
	}
	if n, err := s.MigrateOfferStates(ctx); err != nil || n != 0 {
		t.Fatalf("second migration: %d, %v", n, err)
	}
}

// TestMigrateIndex: offers stored in the state-hash layout with the index
// of "ticks|id" members (brokerds of session 4) get their index scored by
// price: listed active offers only, the listing and its cursors work, and
// updates move the scores.
func TestMigrateIndex(t *testing.T) {
	ctx := context.Background()
	rdb, _ := historyRedis(t)
	s := New(rdb)
	m := market.MarketKey{Class: "gpu.h100-80g", Region: "cn-east"}
	old := func(id string, ticks int64, price, status, listed string) {
		member := fmt.Sprintf("%019d|%s", ticks, id)
		rdb.HSet(ctx, offerLocKey, id, m.String())
		rdb.HSet(ctx, OfferKey(m, id), "id", id, "provider", "p", "class", m.Class, "region", m.Region,
			"list_price", "0", "max_hours", "720", "specs", "{}")
		rdb.HSet(ctx, StateKey(m), id, strings.Join([]string{"3", status, listed, price, "1790000000000", "8", "8", "1790000000000", member, "p"}, "\t"))
		if status == "active" && listed == "1" {
			rdb.ZAdd(ctx, IndexKey(m), redis.Z{Member: member})
		}
	}
	old("b", 200000, "20", "active", "1")
	old("a", 200000, "20", "active", "1")
	old("c", 0, "0", "active", "1")
	old("d", 150000, "15", "active", "0")
	old("e", 100000, "10", "deleted", "1")
	rdb.Set(ctx, layoutKey, layoutStateHash, 0)

	n, err := s.MigrateOfferStates(ctx)
	if err != nil || n != 5 {
		t.Fatalf("migrated %d, %v; want 5", n, err)
	}
	idx := rdb.ZRangeWithScores(ctx, IndexKey(m), 0, -1).Val()
	want := []redis.Z{{Score: 0, Member: "c"}, {Score: 200000, Member: "a"}, {Score: 200000, Member: "b"}}
	if !reflect.DeepEqual(idx, want) {
		t.Fatalf("index %v, want %v", idx, want)
	}
	if st, ok := stateOf(rdb.HGet(ctx, StateKey(m), "d").Val()); !ok || st.score != "150000" {
		t.Fatalf("state of d: %+v, %v", st, ok)
	}
	var ids []string
	cursor := ""
	for {
		page, next, err := s.ListOffers(ctx, OfferFilter{Markets: []market.MarketKey{m}, Limit: 1, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page {
			ids = append(ids, o.ID)
		}
		if cursor = next; cursor == "" {
			break
		}
	}
	if !slices.Equal(ids, []string{"c", "a", "b"}) {
		t.Fatalf("pages: %v", ids)
	}
	r := s.UpdateOffers(ctx, []OfferUpdate{{ID: "b", ProviderID: "p", Price: ptrPrice("19.5"), Now: time.UnixMilli(1790000002000)}})
	if r[0].Err != nil {
		t.Fatal(r[0].Err)
	}
	if sc := rdb.ZScore(ctx, IndexKey(m), "b").Val(); sc != 195000 {
		t.Fatalf("score of b after an update: %v", sc)
	}
	if n, err := s.MigrateOfferStates(ctx); err != nil || n != 0 {
		t.Fatalf("second migration: %d, %v", n, err)
	}
	// A layout this brokerd does not know is refused, not migrated again.
	rdb.Set(ctx, layoutKey, "some-later-layout", 0)
	if _, err := s.MigrateOfferStates(ctx); err == nil || !strings.Contains(err.Error(), "some-later-layout") {
		t.Fatalf("migration over an unknown layout: %v", err)
	}
}
