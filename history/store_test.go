package history

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"computebroker/internal/testsvc"
	"computebroker/market"
)

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open(testContext(t), testsvc.ClickHouse(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var t0 = time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC)

// trade returns a valid trade numbered i, one second apart from t0.
func trade(i int) market.Trade {
	d := decimal.RequireFromString
	return market.Trade{
		ID:            fmt.Sprintf("tr-%05d", i),
		OrderID:       fmt.Sprintf("ord-%05d", i),
		LeaseID:       fmt.Sprintf("ls-%05d", i),
		OfferID:       "off-1",
		ProviderID:    "prov-1",
		SMEID:         "sme-1",
		ResourceClass: "gpu.h100-80g",
		Region:        "cn-north",
		Units:         8,
		Hours:         10,
		UnitPrice:     d("21.5000"),
		Gross:         d("1720.00"),
		Discount:      d("516.00"),
		Net:           d("1204.00"),
		VoucherID:     "v-1",
		ProgramID:     "prog-1",
		TS:            t0.Add(time.Duration(i) * time.Second),
	}
}

func (s *Store) countOf(t testing.TB, table string) uint64 {
	t.Helper()
	n, err := s.count(testContext(t), table)
	if err != nil {
		t.Fatalf("count %s: %v", table, err)
	}
	return n
}

func TestOpenMigrationsIdempotent(t *testing.T) {
	ctx := testContext(t)
	url := testsvc.ClickHouse(t)

	// Several processes starting at once on a database that does not exist.
	const n = 4
	stores := make([]*Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stores[i], errs[i] = Open(ctx, url)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("concurrent Open %d: %v", i, errs[i])
		}
		defer stores[i].Close()
	}

	// And again, one after the other.
	for range 2 {
		s, err := Open(ctx, url)
		if err != nil {
			t.Fatalf("Open again: %v", err)
		}
		v, err := s.SchemaVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := migrations[len(migrations)-1].version; v != want {
			t.Errorf("SchemaVersion = %d, want %d", v, want)
		}
		if got := s.countOf(t, "schema_migrations"); got != uint64(len(migrations)) {
			t.Errorf("schema_migrations has %d distinct versions, want %d", got, len(migrations))
		}
		s.Close()
	}
	if err := stores[0].Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := testContext(t)
	for _, tc := range []struct {
		name, url string
		code      market.Code
	}{
		{"http scheme", "http://127.0.0.1:8123/market", market.CodeInvalidArgument},
		{"bad database", "clickhouse://127.0.0.1:9000/drop;table", market.CodeInvalidArgument},
		{"no host", "clickhouse:///market", market.CodeInvalidArgument},
		{"nothing listening", "clickhouse://127.0.0.1:1/market?dial_timeout=1s", market.CodeUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(ctx, tc.url)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if got := market.ErrorCode(err); got != tc.code {
				t.Errorf("code = %s, want %s (%v)", got, tc.code, err)
			}
		})
	}
}

func TestParseURLDefaults(t *testing.T) {
	opts, db, err := parseURL("clickhouse://u:p@localhost")
	if err != nil {
		t.Fatal(err)
	}
	if db != DefaultDatabase || opts.Addr[0] != "localhost:9000" || opts.Auth.Username != "u" || opts.Auth.Database != "" {
		t.Errorf("got db %q addr %v auth %+v", db, opts.Addr, opts.Auth)
	}
}

func TestTradeRoundTripExact(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t)
	d := decimal.RequireFromString
	big := trade(2)
	big.UnitPrice, big.Gross, big.Discount, big.Net = d("999999.9999"), d("9999999999999999.99"), d("0"), d("9999999999999999.99")
	small := trade(3)
	small.UnitPrice, small.Gross, small.Discount, small.Net = d("0.0001"), d("0.01"), d("0.01"), d("0")
	in := []market.Trade{trade(1), big, small}
	if err := s.InsertTrades(ctx, in); err != nil {
		t.Fatal(err)
	}
	got, next, err := s.Trades(ctx, TradeFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if next != "" || len(got) != len(in) {
		t.Fatalf("got %d trades, next %q", len(got), next)
	}
	for i, g := range got {
		w := in[i]
		if !g.UnitPrice.Equal(w.UnitPrice) || !g.Gross.Equal(w.Gross) || !g.Discount.Equal(w.Discount) || !g.Net.Equal(w.Net) {
			t.Errorf("%s: money %s %s %s %s, want %s %s %s %s", w.ID, g.UnitPrice, g.Gross, g.Discount, g.Net,
				w.UnitPrice, w.Gross, w.Discount, w.Net)
		}
		g.UnitPrice, g.Gross, g.Discount, g.Net = w.UnitPrice, w.Gross, w.Discount, w.Net
		if g != w {
			t.Errorf("trade %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
	if p, g := market.FormatPrice(got[0].UnitPrice), market.FormatAmount(got[0].Gross); p != "21.50" || g != "1720.00" {
		t.Errorf("formatted %s %s", p, g)
	}

	// What SQL and Grafana see.
	var price, gross, discount, net string
	err = s.conn.QueryRow(ctx, "SELECT toString(unit_price), toString(gross), toString(discount), toString(net) FROM "+
		s.table("trades")+" WHERE id = 'tr-00001'").Scan(&price, &gross, &discount, &net)
	if err != nil {
		t.Fatal(err)
	}
	if price != "21.500000" || gross != "1720.00" || discount != "516.00" || net != "1204.00" {
		t.Errorf("stored %s %s %s %s", price, gross, discount, net)
	}

	// Redemptions: trades 1 and 3 had a discount.
	var n uint64
	var sum string
	err = s.conn.QueryRow(ctx, "SELECT count(), toString(sum(amount)) FROM "+s.table("voucher_redemptions")+" FINAL").Scan(&n, &sum)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 || sum != "516.01" {
		t.Errorf("redemptions: %d rows summing %s, want 2 and 516.01", n, sum)
	}
}

func TestInsertTradesRejectsInexact(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t)
	d := decimal.RequireFromString
	for _, tc := range []struct {
		name  string
		tweak func(*market.Trade)
	}{
		{"no id", func(tr *market.Trade) { tr.ID = "" }},
		{"no time", func(tr *market.Trade) { tr.TS = time.Time{} }},
		{"gross with fractions of a fen", func(tr *market.Trade) { tr.Gross = d("1720.005") }},
		{"price beyond 6 places", func(tr *market.Trade) { tr.UnitPrice = d("21.1234567") }},
		{"amount overflows", func(tr *market.Trade) { tr.Net = d("10000000000000000") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := trade(2)
			tc.tweak(&bad)
			err := s.InsertTrades(ctx, []market.Trade{trade(1), bad})
			if !market.IsCode(err, market.CodeInvalidArgument) {
				t.Fatalf("err = %v, want invalid_argument", err)
			}
		})
	}
	if n := s.countOf(t, "trades"); n != 0 {
		t.Errorf("%d trades stored", n)
	}
}

func TestDuplicateDeliveryAppearsOnce(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t)
	batch := []market.Trade{trade(1), trade(2), trade(1), trade(3)} // repeated within the batch
	if err := s.InsertTrades(ctx, batch); err != nil {
		t.Fatal(err)
	}
	// Re-delivered: skipped by the lookup.
	if err := s.InsertTrades(ctx, []market.Trade{trade(2), trade(3), trade(4)}); err != nil {
		t.Fatal(err)
	}
	// Two writers racing with the same trades: both may pass the lookup;
	// ReplacingMergeTree + FINAL keep one.
	race := make([]market.Trade, 500)
	for i := range race {
		race[i] = trade(100 + i)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.InsertTrades(ctx, race)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Bypass the lookup entirely: raw duplicates in the table.
	if err := s.sendTrades(ctx, "trades", race[:10]); err != nil {
		t.Fatal(err)
	}

	const want = 4 + 500
	n, err := s.TradeCount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != want {
		t.Errorf("TradeCount = %d, want %d", n, want)
	}
	seen := map[string]bool{}
	f := TradeFilter{Limit: 170}
	for {
		page, next, err := s.Trades(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, tr := range page {
			if seen[tr.ID] {
				t.Errorf("trade %s listed twice", tr.ID)
			}
			seen[tr.ID] = true
		}
		if next == "" {
			break
		}
		f.Cursor = next
	}
	if len(seen) != want {
		t.Errorf("listed %d trades, want %d", len(seen), want)
	}
	if n := s.countOf(t, "voucher_redemptions"); n != want {
		t.Errorf("%d redemptions, want %d", n, want)
	}
}

func TestTradesPagination(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t)
	// 250 trades, five per second, so that pages break inside a second.
	in := make([]market.Trade, 250)
	for i := range in {
		in[i] = trade(i)
		in[i].TS = t0.Add(time.Duration(i/5) * time.Second)
	}
	// Insert in an order unlike the listing order.
	rev := make([]market.Trade, len(in))
	for i := range in {
		rev[len(in)-1-i] = in[i]
	}
	if err := s.InsertTrades(ctx, rev); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		limit int
		pages []int
	}{
		{0, []int{100, 100, 50}},    // default
		{100, []int{100, 100, 50}},  //
		{7, nil},                    // many small pages
		{250, []int{250}},           // exactly all: no next page
		{5000, []int{250}},          // capped at 1000
		{1, nil},                    //
		{125, []int{125, 125}},      //
		{249, []int{249, 1}},        //
		{MaxTradeLimit, []int{250}}, //
	} {
		t.Run(fmt.Sprint(tc.limit), func(t *testing.T) {
			var got []market.Trade
			var sizes []int
			f := TradeFilter{Limit: tc.limit}
			for range 300 {
				page, next, err := s.Trades(ctx, f)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, page...)
				sizes = append(sizes, len(page))
				if next == "" {
					break
				}
				f.Cursor = next
			}
			if tc.pages != nil && fmt.Sprint(sizes) != fmt.Sprint(tc.pages) {
				t.Errorf("page sizes %v, want %v", sizes, tc.pages)
			}
			if len(got) != len(in) {
				t.Fatalf("got %d trades, want %d", len(got), len(in))
			}
			for i := range in {
				if got[i].ID != in[i].ID {
					t.Fatalf("position %d: %s, want %s", i, got[i].ID, in[i].ID)
				}
			}
		})
	}

	for _, c := range []string{"garbage!", "dDE6eA", encodeCursor(-1, "x"), "dDE6MTIzOg"} {
		_, _, err := s.Trades(ctx, TradeFilter{Cursor: c})
		if !market.IsCode(err, market.CodeInvalidArgument) {
			t.Errorf("cursor %q: err = %v, want invalid_argument", c, err)
		}
	}
	if _, _, err := s.Trades(ctx, TradeFilter{Limit: -1}); !market.IsCode(err, market.CodeInvalidArgument) {
		t.Errorf("limit -1: err = %v", err)
	}
}

func TestTradesFilters(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t)
	var in []market.Trade
	classes := []string{"gpu.h100-80g", "cpu.standard"}
	regions := []string{"cn-north", "cn-east", "cn-south"}
	for i := range 60 {
		tr := trade(i)
		tr.ResourceClass = classes[i%2]
		tr.Region = regions[i%3]
		tr.TS = t0.Add(time.Duration(i) * time.Hour) // crosses into other days
		in = append(in, tr)
	}
	// One trade in another month (another partition).
	other := trade(99)
	other.TS = time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)
	in = append(in, other)
	if err := s.InsertTrades(ctx, in); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		f    TradeFilter
		want int
	}{
		{"all", TradeFilter{}, 61},
		{"class", TradeFilter{ResourceClass: "cpu.standard"}, 30},
		{"region", TradeFilter{Region: "cn-east"}, 20},
		{"class and region", TradeFilter{ResourceClass: "gpu.h100-80g", Region: "cn-north"}, 10 + 1},
		{"from inclusive", TradeFilter{From: t0.Add(50 * time.Hour)}, 11},
		{"to exclusive", TradeFilter{To: t0.Add(10 * time.Hour)}, 10},
		{"window", TradeFilter{From: t0.Add(10 * time.Hour), To: t0.Add(20 * time.Hour)}, 10},
		{"window and class", TradeFilter{From: t0.Add(10 * time.Hour), To: t0.Add(20 * time.Hour), ResourceClass: "cpu.standard"}, 5},
		{"may", TradeFilter{From: time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)}, 1},
		{"nothing", TradeFilter{Region: "cn-west"}, 0},
		{"far past and future", TradeFilter{From: time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), To: time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)}, 61},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.f
			f.Limit = 7
			n := 0
			for {
				page, next, err := s.Trades(ctx, f)
				if err != nil {
					t.Fatal(err)
				}
				for _, tr := range page {
					if (f.ResourceClass != "" && tr.ResourceClass != f.ResourceClass) || (f.Region != "" && tr.Region != f.Region) ||
						(!f.From.IsZero() && tr.TS.Before(f.From)) || (!f.To.IsZero() && !tr.TS.Before(f.To)) {
						t.Errorf("trade %s (%s %s %s) outside the filter", tr.ID, tr.ResourceClass, tr.Region, tr.TS)
					}
				}
				n += len(page)
				if next == "" {
					break
				}
				f.Cursor = next
			}
			if n != tc.want {
				t.Errorf("got %d trades, want %d", n, tc.want)
			}
		})
	}
}

func TestInsertRefundsAndTicks(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t)
	r := trade(1)
	r.ID = "rf-1"
	if err := s.InsertRefunds(ctx, []market.Trade{r, r}); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertRefunds(ctx, []market.Trade{r}); err != nil {
		t.Fatal(err)
	}
	if n := s.countOf(t, "refunds"); n != 1 {
		t.Errorf("%d refunds, want 1", n)
	}
	if n := s.countOf(t, "voucher_redemptions"); n != 0 {
		t.Errorf("refund made %d redemptions", n)
	}

	tick := func(offer string, version int64, price string) market.Tick {
		return market.Tick{OfferID: offer, ProviderID: "p", ResourceClass: "gpu.h100-80g", Region: "cn-north",
			Price: decimal.RequireFromString(price), UnitsFree: 4, Version: version, TS: t0.Add(time.Duration(version) * time.Second)}
	}
	ticks := []market.Tick{tick("o1", 1, "21.50"), tick("o1", 2, "21.4999"), tick("o2", 1, "0.2375"), tick("o1", 1, "21.50")}
	if err := s.InsertTicks(ctx, ticks); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertTicks(ctx, ticks[1:2]); err != nil { // re-delivered
		t.Fatal(err)
	}
	if n := s.countOf(t, "price_ticks"); n != 3 {
		t.Errorf("%d ticks, want 3", n)
	}
	var price string
	if err := s.conn.QueryRow(ctx, "SELECT toString(price) FROM "+s.table("price_ticks")+" FINAL WHERE offer_id = 'o1' AND version = 2").Scan(&price); err != nil {
		t.Fatal(err)
	}
	if price != "21.499900" {
		t.Errorf("price %s", price)
	}
	bad := tick("o3", 1, "1.1234567")
	if err := s.InsertTicks(ctx, []market.Tick{bad}); !market.IsCode(err, market.CodeInvalidArgument) {
		t.Errorf("inexact tick: %v", err)
	}
}

func BenchmarkInsertTrades(b *testing.B) {
	s := openStore(b)
	ctx := context.Background()
	const batch = 10_000
	trades := make([]market.Trade, batch)
	b.ReportAllocs()
	b.ResetTimer()
	rows := 0
	for n := 0; b.Loop(); n++ {
		b.StopTimer()
		for i := range trades {
			trades[i] = trade(0)
			trades[i].ID = fmt.Sprintf("bench-%d-%d", n, i)
			trades[i].TS = t0.Add(time.Duration(i) * time.Millisecond)
		}
		b.StartTimer()
		if err := s.InsertTrades(ctx, trades); err != nil {
			b.Fatal(err)
		}
		rows += batch
	}
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
}
