package ledger

import (
	"context"
	"fmt"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"computebroker/internal/testsvc"
	"computebroker/market"
)

func newStore(t testing.TB) *Store {
	t.Helper()
	opt, err := redis.ParseURL(testsvc.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	return New(rdb)
}

// TestHoldsNeverOverdraw is a property test of the SME and programme slots:
// many goroutines hold, release and capture random discounts against one
// voucher, one annual cap and one budget. Whatever interleaving happens, no
// balance, cap or budget goes below zero, and what was captured is exactly
// what left each of them.
func TestHoldsNeverOverdraw(t *testing.T) {
	for seed := int64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { holdsNeverOverdraw(t, seed) })
	}
}

func holdsNeverOverdraw(t *testing.T, seed int64) {
	ctx := context.Background()
	s := newStore(t)
	d := decimal.RequireFromString
	now := time.Now().UTC()
	// The voucher (500.00), the cap (400.00) and the budget (300.00) each
	// bind at some point.
	p := market.Program{ID: "prg", Name: "p", Rate: d("0.5"), AnnualCapPerCompany: d("400.00"), Budget: d("300.00"),
		ValidFrom: now.Add(-time.Hour), ValidTo: now.Add(time.Hour)}
	if err := s.CreateProgram(ctx, p); err != nil {
		t.Fatal(err)
	}
	v := market.Voucher{ID: "vch", ProgramID: "prg", HolderID: "sme", Amount: d("500.00"), Balance: d("500.00"), ExpiresAt: now.Add(time.Hour)}
	if err := s.IssueVoucher(ctx, v); err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		captured = decimal.Zero
		wg       sync.WaitGroup
	)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed*100 + int64(g)))
			for i := 0; i < 40; i++ {
				amount := decimal.New(int64(1+rng.Intn(4000)), -2) // 0.01 .. 40.00
				h := Hold{OrderID: fmt.Sprintf("o%d-%d", g, i), SMEID: "sme", VoucherID: "vch", ProgramID: "prg",
					Amount: amount, AnnualCap: p.AnnualCapPerCompany, Market: market.MarketKey{Class: "c", Region: "r"}, Now: now}
				if err := s.HoldDiscount(ctx, h); err != nil {
					if !market.IsCode(err, market.CodeConflict) {
						t.Error(err)
					}
					continue
				}
				if rng.Intn(3) == 0 {
					if err := s.ReleaseDiscount(ctx, h); err != nil {
						t.Error(err)
					}
					continue
				}
				o := market.Order{ID: h.OrderID, SMEID: "sme", Status: market.OrderFilled, Discount: amount, CreatedAt: now}
				if err := s.Complete(ctx, o, "key-"+h.OrderID, &h); err != nil {
					t.Error(err)
					continue
				}
				// A retried step 3 captures nothing more.
				if err := s.Complete(ctx, o, "key-"+h.OrderID, &h); err != nil {
					t.Error(err)
				}
				mu.Lock()
				captured = captured.Add(amount)
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()

	vs, err := s.Vouchers(ctx, "sme")
	if err != nil || len(vs) != 1 {
		t.Fatalf("vouchers %v %v", vs, err)
	}
	used, held, err := s.CapUsed(ctx, "sme", "prg", CapYear(now))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.ProgramBudget(ctx, "prg")
	if err != nil {
		t.Fatal(err)
	}
	if !vs[0].Held.IsZero() || !held.IsZero() || !b.Held.IsZero() {
		t.Fatalf("holds left: voucher %s, cap %s, budget %s", vs[0].Held, held, b.Held)
	}
	if vs[0].Balance.IsNegative() || b.Left().IsNegative() || used.GreaterThan(p.AnnualCapPerCompany) {
		t.Fatalf("overdrawn: balance %s, budget left %s, cap used %s", vs[0].Balance, b.Left(), used)
	}
	for name, got := range map[string]decimal.Decimal{
		"voucher": d("500.00").Sub(vs[0].Balance), "cap": used, "budget": b.Spent,
	} {
		if !got.Equal(captured) {
			t.Errorf("%s debited %s, captured %s", name, got, captured)
		}
	}
	// The budget (the tightest bound) was nearly used up: the test exercised
	// the limit, not just the easy path.
	if b.Left().GreaterThan(d("40.00")) {
		t.Errorf("budget left %s: the run never neared the limit", b.Left())
	}
}
