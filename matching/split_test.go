package matching

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"computebroker/market"
	"computebroker/voucher"

	"github.com/shopspring/decimal"
)

type bruteSet struct {
	region               string
	parts                []Candidate
	units                []int64
	gross, disc, net     decimal.Decimal
	voucherID, programID string
}

func compareBrute(a, b *bruteSet) int {
	if c := a.net.Cmp(b.net); c != 0 {
		return c
	}
	if c := a.gross.Cmp(b.gross); c != 0 {
		return c
	}
	if len(a.parts) != len(b.parts) {
		return len(a.parts) - len(b.parts)
	}
	for i := range a.parts {
		if c := compareSlots(candidateSlot(a.parts[i]), candidateSlot(b.parts[i])); c != 0 {
			return c
		}
	}
	return strings.Compare(a.region, b.region)
}

// bruteSplit enumerates every set of up to four eligible offers of one
// region with decimals and the voucher rules: the oracle of DecideSplit.
func bruteSplit(req Request, snaps []*Snapshot) *bruteSet {
	q := newQuery(&req)
	q.minUnits = 1
	grants := slices.Clone(req.Grants)
	if !req.Job.UseVouchers {
		grants = nil
	}
	slices.SortStableFunc(grants, func(a, b voucher.Grant) int {
		if c := a.Voucher.ExpiresAt.Compare(b.Voucher.ExpiresAt); c != 0 {
			return c
		}
		return strings.Compare(a.Voucher.ID, b.Voucher.ID)
	})
	var best *bruteSet
	for _, sn := range snaps {
		var el []Candidate
		for _, c := range sn.Candidates() {
			sl := candidateSlot(c)
			if defaultChain.check(&q, &sl) == ReasonNone {
				el = append(el, c)
			}
		}
		var rec func(start int, set []int)
		rec = func(start int, set []int) {
			if len(set) > 0 {
				if bs := priceBrute(req, grants, sn.Market.Region, el, set); bs != nil && (best == nil || compareBrute(bs, best) < 0) {
					best = bs
				}
			}
			if len(set) == MaxSplitParts {
				return
			}
			for j := start; j < len(el); j++ {
				rec(j+1, append(set, j))
			}
		}
		rec(0, nil)
	}
	return best
}

func priceBrute(req Request, grants []voucher.Grant, region string, el []Candidate, set []int) *bruteSet {
	left := req.Job.Units
	bs := &bruteSet{region: region}
	cost := decimal.Zero
	for _, j := range set {
		u := min(el[j].Offer.UnitsFree, left)
		if u <= 0 {
			return nil
		}
		left -= u
		bs.parts = append(bs.parts, el[j])
		bs.units = append(bs.units, u)
		cost = cost.Add(el[j].Offer.Price.Mul(decimal.NewFromInt(u * req.Job.Hours)))
	}
	if left > 0 {
		return nil
	}
	bs.gross = cost.Round(2)
	bs.net = bs.gross
	for _, g := range grants {
		applies := true
		for _, p := range bs.parts {
			var ref decimal.Decimal
			if req.Reference != nil {
				ref = req.Reference(p.Offer.Market())
			}
			if req.Rules.Applies(req.Now, req.SME, p.Provider, p.Offer, req.Class, ref, g) != "" {
				applies = false
				break
			}
		}
		if !applies {
			continue
		}
		if d := voucher.Discount(voucher.Rate(g.Program, req.Class, req.SME), bs.gross, g); d.IsPositive() {
			bs.disc, bs.net = d, bs.gross.Sub(d)
			bs.voucherID, bs.programID = g.Voucher.ID, g.Program.ID
			break
		}
	}
	return bs
}

func TestDecideSplitEqualsBruteForce(t *testing.T) {
	s, cs := NewScratch(), NewScratch()
	cases, found, multi, voucherd := 0, 0, 0, 0
	for seed := int64(1); seed <= 300; seed++ {
		w := newWorld(seed)
		w.fill(w.rng.Intn(90))
		for k := 0; k < 6; k++ {
			req := w.request()
			req.Job.AllowSplit = true
			req.Job.Units = int64(1 + w.rng.Intn(120))
			snaps := w.snaps(&req)
			want := bruteSplit(req, snaps)
			got := DecideSplit(&req, snaps, s)
			label := fmt.Sprintf("seed %d case %d", seed, k)
			cases++
			if (got == nil) != (want == nil) {
				t.Fatalf("%s: split %v, brute force %v", label, got != nil, want != nil)
			}
			// The same request compiled, as the broker builds it.
			creq := req
			creq.Compile()
			if c := DecideSplit(&creq, snaps, cs); (c == nil) != (got == nil) || c != nil &&
				(!c.Net.Equal(got.Net) || c.VoucherID != got.VoucherID || len(c.Parts) != len(got.Parts) || c.Parts[0].Offer.ID != got.Parts[0].Offer.ID) {
				t.Fatalf("%s: compiled, the split differs", label)
			}
			if got == nil {
				continue
			}
			found++
			if len(got.Parts) > 1 {
				multi++
			}
			if got.VoucherID != "" {
				voucherd++
			}
			if !got.Net.Equal(want.net) || !got.Gross.Equal(want.gross) || !got.Discount.Equal(want.disc) ||
				got.VoucherID != want.voucherID || got.ProgramID != want.programID || got.Region != want.region || len(got.Parts) != len(want.parts) {
				t.Fatalf("%s: split %s net %s gross %s disc %s v %q, brute %s net %s gross %s disc %s v %q", label,
					got.Region, got.Net, got.Gross, got.Discount, got.VoucherID, want.region, want.net, want.gross, want.disc, want.voucherID)
			}
			sumG, sumD, sumN, units := decimal.Zero, decimal.Zero, decimal.Zero, int64(0)
			for i, p := range got.Parts {
				if p.Offer.ID != want.parts[i].Offer.ID || p.Units != want.units[i] {
					t.Fatalf("%s: part %d = %s×%d, want %s×%d", label, i, p.Offer.ID, p.Units, want.parts[i].Offer.ID, want.units[i])
				}
				if p.Gross.IsNegative() || p.Discount.IsNegative() || p.Net.IsNegative() || !p.Net.Equal(p.Gross.Sub(p.Discount)) {
					t.Fatalf("%s: part %d amounts %s %s %s", label, i, p.Gross, p.Discount, p.Net)
				}
				sumG, sumD, sumN, units = sumG.Add(p.Gross), sumD.Add(p.Discount), sumN.Add(p.Net), units+p.Units
			}
			if !sumG.Equal(got.Gross) || !sumD.Equal(got.Discount) || !sumN.Equal(got.Net) || units != req.Job.Units {
				t.Fatalf("%s: parts add to %s %s %s %d units", label, sumG, sumD, sumN, units)
			}
		}
	}
	t.Logf("%d cases: %d split found, %d over several offers, %d with a voucher", cases, found, multi, voucherd)
	if multi < cases/10 || voucherd < cases/20 {
		t.Fatal("generator does not exercise splits enough")
	}
}

func TestSplitTable(t *testing.T) {
	mk := func(id, prov, price string, free int64) Candidate {
		c := cand(id, prov, price)
		c.Offer.UnitsFree = free
		return c
	}
	tests := []struct {
		name  string
		units int64
		cands []Candidate
		want  []string // offer:units
		gross string
	}{
		{"a split beats the single offer", 8, []Candidate{mk("a", "p1", "20", 16), mk("b", "p2", "19", 4)}, []string{"b:4", "a:4"}, "1560.00"},
		{"cheapest pair", 8, []Candidate{mk("a", "p1", "20", 8), mk("b", "p2", "19", 4), mk("c", "p3", "19.5", 4)}, []string{"b:4", "c:4"}, "1540.00"},
		{"four parts", 16, []Candidate{mk("a", "p1", "10", 4), mk("b", "p2", "11", 4), mk("c", "p3", "12", 4), mk("d", "p4", "13", 4), mk("e", "p5", "30", 16)}, []string{"a:4", "b:4", "c:4", "d:4"}, "1840.00"},
		{"five would be cheaper, four is the limit", 16, []Candidate{mk("a", "p1", "10", 3), mk("b", "p2", "10", 3), mk("c", "p3", "10", 3), mk("d", "p4", "10", 3), mk("e", "p5", "10", 4), mk("f", "p6", "12", 8)}, []string{"a:3", "b:3", "e:4", "f:6"}, "1720.00"},
		{"not enough units", 40, []Candidate{mk("a", "p1", "10", 8), mk("b", "p2", "11", 8), mk("c", "p3", "12", 8), mk("d", "p4", "13", 8), mk("e", "p5", "14", 7)}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBook(market.MarketKey{Class: h100.ID, Region: "cn-east"})
			for _, c := range tt.cands {
				if err := b.Upsert(c.Offer, c.Provider); err != nil {
					t.Fatal(err)
				}
			}
			req := request()
			req.Job.AllowSplit, req.Job.Units = true, tt.units
			s := NewScratch()
			sp := DecideSplit(&req, []*Snapshot{b.Publish()}, s)
			if tt.want == nil {
				if sp != nil {
					t.Fatalf("split %+v, want none", sp)
				}
				if s.Rejected(ReasonTooFewUnits) != len(tt.cands) {
					t.Fatalf("too_few_units = %d", s.Rejected(ReasonTooFewUnits))
				}
				return
			}
			var got []string
			for _, p := range sp.Parts {
				got = append(got, fmt.Sprintf("%s:%d", p.Offer.ID, p.Units))
			}
			if !slices.Equal(got, tt.want) || !sp.Gross.Equal(d(tt.gross)) {
				t.Fatalf("parts %v gross %s, want %v %s", got, sp.Gross, tt.want, tt.gross)
			}
		})
	}
}
