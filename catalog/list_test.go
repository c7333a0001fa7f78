package catalog

import (
	"context"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"computebroker/market"
)

// TestListOffersPages: on random markets with many offers at the same
// price, paging with random page sizes and price limits gives exactly the
// listed active offers at or below the limit, cheapest first, ties by id,
// across markets; and after prices move between two pages, the next page
// starts right after the cursor's (price, id) in the catalogue as it is
// then, whether the cursor's offer moved or not.
func TestListOffersPages(t *testing.T) {
	ctx := context.Background()
	rdb, _ := historyRedis(t)
	s := New(rdb)
	rng := rand.New(rand.NewSource(11))
	markets := []market.MarketKey{{Class: "gpu.h100-80g", Region: "cn-east"}, {Class: "gpu.h100-80g", Region: "cn-north"}, {Class: "cpu.std", Region: "cn-east"}}
	type off struct {
		id     string
		m      market.MarketKey
		ticks  int64
		listed bool
	}
	var offs []*off
	prices := []int64{95000, 100000, 100000, 120500, 200000}
	for i := 0; i < 120; i++ {
		o := &off{id: fmt.Sprintf("o%c%02d", 'a'+rng.Intn(26), i), m: markets[rng.Intn(len(markets))],
			ticks: prices[rng.Intn(len(prices))], listed: rng.Intn(6) > 0}
		mustCreate(t, s, o.id, "p", o.m, 4, decimal.New(o.ticks, -market.PriceScale).String(), o.listed)
		offs = append(offs, o)
	}
	// want: the offers after (ticks, id) (all when id is ""), at most max.
	want := func(ticks int64, id string, max int64) []string {
		var sel []*off
		for _, o := range offs {
			if o.listed && (max == 0 || o.ticks <= max) && (id == "" || o.ticks > ticks || o.ticks == ticks && o.id > id) {
				sel = append(sel, o)
			}
		}
		slices.SortFunc(sel, func(a, b *off) int {
			if a.ticks != b.ticks {
				return int(a.ticks - b.ticks)
			}
			return strings.Compare(a.id, b.id)
		})
		var ids []string
		for _, o := range sel {
			ids = append(ids, o.id)
		}
		return ids
	}
	ids := func(page []market.Offer) []string {
		var out []string
		for _, o := range page {
			out = append(out, o.ID)
		}
		return out
	}
	for round := 0; round < 30; round++ {
		limit := 1 + rng.Intn(25)
		var max int64
		f := OfferFilter{Markets: markets, Limit: limit}
		if rng.Intn(2) == 0 {
			max = prices[rng.Intn(len(prices))]
			f.MaxPrice = decimal.New(max, -market.PriceScale)
		}
		var got []string
		for pages := 0; ; pages++ {
			if pages > len(offs) {
				t.Fatal("paging does not end")
			}
			page, next, err := s.ListOffers(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) > limit || next != "" && len(page) != limit {
				t.Fatalf("round %d: a page of %d offers (limit %d), next %q", round, len(page), limit, next)
			}
			got = append(got, ids(page)...)
			if f.Cursor = next; next == "" {
				break
			}
		}
		if w := want(0, "", max); !slices.Equal(got, w) {
			t.Fatalf("round %d (limit %d, max %d): pages %v, want %v", round, limit, max, got, w)
		}

		// Prices move between two pages.
		f.Cursor = ""
		page, next, err := s.ListOffers(ctx, f)
		if err != nil || next == "" {
			continue
		}
		ct, cid, _ := parseCursor(next)
		var us []OfferUpdate
		for k := 0; k < 5; k++ {
			o := offs[rng.Intn(len(offs))]
			if k == 0 {
				o = offs[slices.IndexFunc(offs, func(x *off) bool { return x.id == page[len(page)-1].ID })] // the cursor's own offer
			}
			o.ticks = prices[rng.Intn(len(prices))]
			us = append(us, OfferUpdate{ID: o.id, ProviderID: "p", Price: ptrPrice(decimal.New(o.ticks, -market.PriceScale).String()), Now: time.Now()})
		}
		for _, r := range s.UpdateOffers(ctx, us) {
			if r.Err != nil {
				t.Fatal(r.Err)
			}
		}
		f.Cursor = next
		page, _, err = s.ListOffers(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		w := want(ct, cid, max)
		if len(w) > limit {
			w = w[:limit]
		}
		if g := ids(page); !slices.Equal(g, w) {
			t.Fatalf("round %d: the page after %d|%s once prices moved: %v, want %v", round, ct, cid, g, w)
		}
	}
}
