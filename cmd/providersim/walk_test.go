package main

import (
	"math/rand/v2"
	"testing"

	"github.com/shopspring/decimal"
)

func walkPrices(seed uint64, class, list string, steps int, idle bool) []decimal.Decimal {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	l := decimal.RequireFromString(list)
	w := NewWalk(class, l, l)
	vol := decimal.RequireFromString("0.02")
	out := make([]decimal.Decimal, steps)
	for i := range out {
		out[i] = w.Next(rng, vol, idle)
	}
	return out
}

func TestWalkBoundsAndRounding(t *testing.T) {
	for _, c := range []struct{ class, list string }{
		{"gpu.h100-80g", "21.00"}, {"gpu.rtx4090-24g", "2.20"}, {"cpu.standard", "0.24"},
		{"gpu.910b-64g", "13.80"}, {"gpu.unknown", "7.00"}, {"gpu.h100-80g", "40.00"}, // list above the band
	} {
		for _, idle := range []bool{false, true} {
			for seed := uint64(1); seed <= 5; seed++ {
				w := NewWalk(c.class, decimal.RequireFromString(c.list), decimal.RequireFromString(c.list))
				prices := walkPrices(seed, c.class, c.list, 2000, idle)
				moved := false
				for i, p := range prices {
					if !p.Equal(p.Round(2)) {
						t.Fatalf("%s step %d: price %s is not rounded to 0.01", c.class, i, p)
					}
					if p.LessThan(w.Low) || p.GreaterThan(w.High) || !p.IsPositive() {
						t.Fatalf("%s step %d: price %s outside [%s, %s]", c.class, i, p, w.Low, w.High)
					}
					if i > 0 && !p.Equal(prices[i-1]) {
						moved = true
					}
				}
				if !moved {
					t.Fatalf("%s seed %d: the price never moved", c.class, seed)
				}
			}
		}
	}
	if b := referenceBands["gpu.h100-80g"]; !b.Low.Equal(decimal.RequireFromString("14")) || !b.High.Equal(decimal.RequireFromString("36")) {
		t.Fatalf("h100 band %v", b)
	}
}

func TestWalkStepsAreSmall(t *testing.T) {
	prices := walkPrices(7, "gpu.h100-80g", "21.00", 1000, false)
	prev := decimal.RequireFromString("21.00")
	limit := decimal.RequireFromString("0.03") // 2% shock + reversion + rounding
	for i, p := range prices {
		if p.Sub(prev).Abs().GreaterThan(prev.Mul(limit).Add(decimal.New(1, -2))) {
			t.Fatalf("step %d: %s → %s is more than a few percent", i, prev, p)
		}
		prev = p
	}
}

func TestWalkDeterministicBySeed(t *testing.T) {
	a := walkPrices(42, "gpu.a800-80g", "9.80", 500, false)
	b := walkPrices(42, "gpu.a800-80g", "9.80", 500, false)
	c := walkPrices(43, "gpu.a800-80g", "9.80", 500, false)
	same := true
	for i := range a {
		if !a[i].Equal(b[i]) {
			t.Fatalf("same seed differs at step %d: %s vs %s", i, a[i], b[i])
		}
		if !a[i].Equal(c[i]) {
			same = false
		}
	}
	if same {
		t.Fatal("different seeds gave the same walk")
	}
}

// TestWalkIdleCutsPrice: an idle provider's price drifts below list; a
// busy one stays around it.
func TestWalkIdleCutsPrice(t *testing.T) {
	mean := func(ps []decimal.Decimal) decimal.Decimal {
		s := decimal.Zero
		for _, p := range ps[len(ps)/2:] {
			s = s.Add(p)
		}
		return s.Div(decimal.NewFromInt(int64(len(ps) - len(ps)/2)))
	}
	busy := mean(walkPrices(3, "gpu.h100-80g", "21.00", 2000, false))
	idle := mean(walkPrices(3, "gpu.h100-80g", "21.00", 2000, true))
	if !idle.LessThan(decimal.RequireFromString("20.00")) || !idle.LessThan(busy) {
		t.Fatalf("idle mean %s, busy mean %s: idle capacity should cut the price", idle, busy)
	}
	if busy.Sub(decimal.RequireFromString("21.00")).Abs().GreaterThan(decimal.RequireFromString("1.5")) {
		t.Fatalf("busy mean %s strays from the list price 21.00", busy)
	}
}
