package matching

import (
	"fmt"
	"reflect"
	"testing"
)

func sameMatches(t *testing.T, label string, got, want []Match) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d matches %v, want %d %v", label, len(got), ids(got), len(want), ids(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Offer.ID != w.Offer.ID || !g.Gross.Equal(w.Gross) || !g.Discount.Equal(w.Discount) || !g.Net.Equal(w.Net) ||
			!g.UnitPrice.Equal(w.UnitPrice) || g.VoucherID != w.VoucherID || g.ProgramID != w.ProgramID || g.Provider.ID != w.Provider.ID {
			t.Fatalf("%s: match %d = %s gross %s disc %s net %s v %q, want %s gross %s disc %s net %s v %q", label, i,
				g.Offer.ID, g.Gross, g.Discount, g.Net, g.VoucherID, w.Offer.ID, w.Gross, w.Discount, w.Net, w.VoucherID)
		}
	}
}

// TestDecideEqualsRank: on thousands of random books and jobs, the engine's
// bounded scan gives exactly what the brute-force Rank gives over the same
// offers, and finds no match exactly when Rank finds none.
func TestDecideEqualsRank(t *testing.T) {
	cases, withVoucher, noMatch, early := 0, 0, 0, 0
	s := NewScratch()
	for seed := int64(1); seed <= 400; seed++ {
		w := newWorld(seed)
		w.fill(w.rng.Intn(150))
		for k := 0; k < 15; k++ {
			req := w.request()
			limit := w.rng.Intn(5) - 1 // -1 … 3
			snaps := w.snaps(&req)
			cands := candidatesOf(snaps)
			want := Rank(req, cands, limit)
			n := Decide(&req, snaps, limit, s)
			got := s.Result()
			label := fmt.Sprintf("seed %d case %d limit %d", seed, k, limit)
			if n != len(got.Matches) {
				t.Fatalf("%s: Decide returned %d, Result has %d", label, n, len(got.Matches))
			}
			sameMatches(t, label, got.Matches, want.Matches)
			if limit <= 0 || len(got.Matches) < limit {
				if got.Considered != want.Considered || !reflect.DeepEqual(got.Rejected, want.Rejected) {
					t.Fatalf("%s: considered %d rejected %v, want %d %v", label, got.Considered, got.Rejected, want.Considered, want.Rejected)
				}
			} else if got.Considered < want.Considered {
				early++
			}
			for i := 0; i < n; i++ {
				p := s.Pick(i)
				if p.Offer.ID != got.Matches[i].Offer.ID || p.NetCents != got.Matches[i].Net.Shift(2).IntPart() {
					t.Fatalf("%s: Pick(%d) = %+v", label, i, p)
				}
			}
			// The same request compiled, as the broker builds it.
			creq := req
			creq.Compile()
			Decide(&creq, snaps, limit, s)
			cres := s.Result()
			sameMatches(t, label+" compiled", cres.Matches, want.Matches)
			if cres.Considered != got.Considered || !reflect.DeepEqual(cres.Rejected, got.Rejected) {
				t.Fatalf("%s compiled: considered %d rejected %v, want %d %v", label, cres.Considered, cres.Rejected, got.Considered, got.Rejected)
			}
			cases++
			if len(want.Matches) == 0 {
				noMatch++
			} else if want.Matches[0].VoucherID != "" {
				withVoucher++
			}
		}
	}
	t.Logf("%d cases: %d won with a voucher, %d without a match, %d stopped early", cases, withVoucher, noMatch, early)
	if withVoucher < cases/20 || noMatch < cases/20 || early < cases/20 {
		t.Fatalf("generator does not exercise the cases enough")
	}
}
