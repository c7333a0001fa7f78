package ledger

import (
	"context"
	"fmt"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"computebroker/market"
)

// tripCounter counts the round trips a client makes: a command or a
// pipeline each.
type tripCounter struct{ n atomic.Int64 }

func (c *tripCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *tripCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.n.Add(1); return next(ctx, cmd) }
}
func (c *tripCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { c.n.Add(1); return next(ctx, cmds) }
}

// fundsWorld stores, for one SME, vouchers of four programmes in every
// state Funds tells apart: live, spent, expired, partly held, a second
// voucher of one programme, and the one voucher of a programme whose hash
// lacks the programme field (as a hand-repaired one might); with caps and
// budgets partly used and held.
func fundsWorld(t testing.TB, s *Store, sme string, now time.Time) {
	ctx := context.Background()
	d := decimal.RequireFromString
	for i, p := range []market.Program{
		{ID: "prgA", Name: "a", Rate: d("0.5"), AnnualCapPerCompany: d("1000.00"), Budget: d("5000.00"), ValidFrom: now.Add(-time.Hour), ValidTo: now.Add(time.Hour)},
		{ID: "prgB", Name: "b", Rate: d("0.3"), AnnualCapPerCompany: d("800.00"), Budget: d("300.00"), PerOrderCap: d("50"), ValidFrom: now.Add(-time.Hour), ValidTo: now.Add(time.Hour), Regions: []string{"cn-east"}},
		{ID: "prgC", Name: "c", Rate: d("0.2"), AnnualCapPerCompany: d("100.00"), Budget: d("900.00"), ValidFrom: now.Add(-time.Hour), ValidTo: now.Add(time.Hour), Providers: []string{"prv1"}},
		{ID: "prgD", Name: "d", Rate: d("0.1"), AnnualCapPerCompany: d("200.00"), Budget: d("400.00"), ValidFrom: now.Add(-time.Hour), ValidTo: now.Add(time.Hour)},
	} {
		if err := s.CreateProgram(ctx, p); err != nil && !market.IsCode(err, market.CodeConflict) {
			t.Fatal(i, err)
		}
	}
	vs := []market.Voucher{
		{ID: "v1", ProgramID: "prgA", Amount: d("500.00"), ExpiresAt: now.Add(48 * time.Hour)},
		{ID: "v2", ProgramID: "prgA", Amount: d("20.00"), ExpiresAt: now.Add(24 * time.Hour)},
		{ID: "v3", ProgramID: "prgB", Amount: d("100.00"), ExpiresAt: now.Add(24 * time.Hour)},
		{ID: "v4", ProgramID: "prgC", Amount: d("100.00"), ExpiresAt: now.Add(-time.Minute)}, // expired
		{ID: "v5", ProgramID: "prgC", Amount: d("0.00"), ExpiresAt: now.Add(time.Hour)},      // spent
		{ID: "v6", ProgramID: "prgD", Amount: d("30.00"), ExpiresAt: now.Add(72 * time.Hour)},
	}
	for _, v := range vs {
		v.HolderID = sme
		if err := s.IssueVoucher(ctx, v); err != nil && !market.IsCode(err, market.CodeConflict) {
			t.Fatal(err)
		}
	}
	year := CapYear(now)
	r := s.rdb
	for _, c := range []error{
		r.HSet(ctx, voucherKey(sme, "v1"), "held", 12345).Err(),
		r.HSet(ctx, voucherKey(sme, "v3"), "held", 10000).Err(), // all of it
		r.HDel(ctx, voucherKey(sme, "v6"), "program").Err(),
		r.HSet(ctx, capKey(sme, "prgA", year), "used", 40000, "held", 1500).Err(),
		r.HSet(ctx, capKey(sme, "prgC", year), "used", 9000).Err(),
		r.HSet(ctx, budgetKey("prgA"), "spent", 70000, "held", 2500).Err(),
		r.HSet(ctx, budgetKey("prgC"), "held", 100).Err(),
		r.HSet(ctx, capKey(sme, "prgD", year), "used", 3000, "held", 200).Err(),
		r.HSet(ctx, budgetKey("prgD"), "spent", 1000).Err(),
	} {
		if c != nil {
			t.Fatal(c)
		}
	}
}

// fundsOneByOne is Funds from the store's single reads, one at a time.
func fundsOneByOne(t testing.TB, s *Store, sme string, now time.Time) []Funds {
	ctx := context.Background()
	ids, err := s.rdb.SMembers(ctx, vouchersKey(sme)).Result()
	if err != nil {
		t.Fatal(err)
	}
	var refs [][2]string
	for _, id := range ids {
		refs = append(refs, [2]string{sme, id})
	}
	vs, err := s.loadVouchers(ctx, refs) // AllVouchers' reads, not Funds'
	if err != nil {
		t.Fatal(err)
	}
	var out []Funds
	for _, v := range vs {
		avail := v.Balance.Sub(v.Held)
		if !v.ExpiresAt.After(now) || !avail.IsPositive() {
			continue
		}
		p, err := s.Program(ctx, v.ProgramID)
		if err != nil {
			t.Fatal(err)
		}
		used, held, err := s.CapUsed(ctx, sme, v.ProgramID, CapYear(now))
		if err != nil {
			t.Fatal(err)
		}
		b, err := s.ProgramBudget(ctx, v.ProgramID)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, Funds{Voucher: v.Voucher, Program: p, Available: avail,
			CapLeft: p.AnnualCapPerCompany.Sub(used.Add(held)), BudgetLeft: b.Left()})
	}
	return out
}

// TestFundsEqualsOneByOne: Funds gives what the single reads give, for
// every state a voucher, cap and budget can be in.
func TestFundsEqualsOneByOne(t *testing.T) {
	s := newStore(t)
	now := time.Now().UTC().Truncate(time.Millisecond)
	fundsWorld(t, s, "smeF", now)
	got, err := s.Funds(context.Background(), "smeF", now)
	if err != nil {
		t.Fatal(err)
	}
	want := fundsOneByOne(t, s, "smeF", now)
	if len(want) != 3 {
		t.Fatalf("the world has %d live vouchers, want 3", len(want))
	}
	if !sameFunds(got, want) {
		t.Fatalf("Funds:\n%+v\nwant\n%+v", got, want)
	}
	// An SME without vouchers has no funds.
	if fs, err := s.Funds(context.Background(), "nobody", now); err != nil || len(fs) != 0 {
		t.Fatalf("nobody: %v %v", fs, err)
	}
}

func sameFunds(a, b []Funds) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Voucher.ID != y.Voucher.ID || !x.Voucher.Balance.Equal(y.Voucher.Balance) || !x.Available.Equal(y.Available) ||
			!x.CapLeft.Equal(y.CapLeft) || !x.BudgetLeft.Equal(y.BudgetLeft) || !x.Program.Rate.Equal(y.Program.Rate) ||
			x.Program.ID != y.Program.ID || !reflect.DeepEqual(x.Program.Regions, y.Program.Regions) ||
			!reflect.DeepEqual(x.Program.Providers, y.Program.Providers) || !x.Voucher.ExpiresAt.Equal(y.Voucher.ExpiresAt) {
			return false
		}
	}
	return true
}

// BenchmarkFunds: one SME's funds (six vouchers, three live, four
// programmes), with the round trips each read takes.
func BenchmarkFunds(b *testing.B) {
	s := newStore(b)
	trips := &tripCounter{}
	s.rdb.AddHook(trips)
	now := time.Now().UTC()
	fundsWorld(b, s, "smeB", now)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	trips.n.Store(0)
	for i := 0; i < b.N; i++ {
		if fs, err := s.Funds(ctx, "smeB", now); err != nil || len(fs) != 3 {
			b.Fatal(fmt.Sprint(len(fs)), err)
		}
	}
	b.ReportMetric(float64(trips.n.Load())/float64(b.N), "round-trips/op")
}
