package main

import (
	"math/rand/v2"

	"github.com/shopspring/decimal"
)

// band is a resource class's price range per unit-hour in CNY, after
// shared/market-reference.md (low, typical, high).
type band struct {
	Low, Typical, High decimal.Decimal
}

func mkBand(low, typical, high string) band {
	d := decimal.RequireFromString
	return band{Low: d(low), Typical: d(typical), High: d(high)}
}

// referenceBands are the public list/index ranges of market-reference.md.
var referenceBands = map[string]band{
	"gpu.h100-80g":    mkBand("14.00", "21.00", "36.00"),
	"gpu.h800-80g":    mkBand("10.00", "16.00", "26.00"),
	"gpu.h20-96g":     mkBand("10.00", "16.00", "26.00"),
	"gpu.a800-80g":    mkBand("6.00", "10.00", "21.00"),
	"gpu.a100-80g":    mkBand("6.00", "10.00", "21.00"),
	"gpu.910b-64g":    mkBand("8.00", "13.00", "20.00"),
	"gpu.l40s-48g":    mkBand("3.50", "10.50", "18.00"),
	"gpu.rtx4090-24g": mkBand("2.00", "2.50", "5.00"),
	"cpu.standard":    mkBand("0.15", "0.24", "0.40"),
	"cpu.highmem":     mkBand("0.20", "0.35", "0.60"),
}

var (
	cent       = decimal.New(1, -2)
	stateScale = int32(6)
	// reversion is the share of the gap to the anchor closed per step.
	reversion = decimal.RequireFromString("0.05")
	// idleCut is where an idle provider anchors its price: 8% under list.
	idleCut = decimal.RequireFromString("0.92")
	// idleDrift pushes an idle offer down by a quarter of the volatility
	// per step on top of the reversion.
	idleDrift = decimal.RequireFromString("0.25")
	shockUnit = decimal.New(1, -4)
)

// Walk is one offer's simulated price: a bounded random walk with mean
// reversion to its list price (or to a cut below it while the provider's
// capacity sits idle). The state is kept unrounded, as a decimal, so that
// small moves accumulate; published prices are rounded to 0.01 CNY and
// stay within the class's band (widened to hold the list price).
type Walk struct {
	List, Low, High decimal.Decimal
	state           decimal.Decimal
}

// NewWalk starts a walk at price (the offer's current price) around list
// for a resource class; classes outside the table get 0.6×–1.6× list.
func NewWalk(class string, list, price decimal.Decimal) *Walk {
	b, ok := referenceBands[class]
	if !ok {
		b = band{Low: list.Mul(decimal.RequireFromString("0.6")).RoundUp(2), High: list.Mul(decimal.RequireFromString("1.6")).RoundDown(2)}
	}
	w := &Walk{List: list, Low: decimal.Min(b.Low, list), High: decimal.Max(b.High, list)}
	if w.Low.LessThan(cent) {
		w.Low = cent
	}
	w.state = clamp(price, w.Low, w.High)
	return w
}

// Price is the current published price.
func (w *Walk) Price() decimal.Decimal { return roundCents(clamp(w.state, w.Low, w.High)) }

// Next moves the walk one step with a shock uniform in ±volatility (a
// fraction: 0.02 is ±2%) and returns the new published price. idle says
// the provider's capacity is unused, which pulls the price down.
func (w *Walk) Next(rng *rand.Rand, volatility decimal.Decimal, idle bool) decimal.Decimal {
	u := decimal.New(rng.Int64N(20001)-10000, 0).Mul(shockUnit) // uniform in [-1, 1]
	shock := w.state.Mul(volatility).Mul(u)
	anchor := w.List
	if idle {
		anchor = w.List.Mul(idleCut)
		shock = shock.Sub(w.state.Mul(volatility).Mul(idleDrift))
	}
	pull := anchor.Sub(w.state).Mul(reversion)
	w.state = clamp(w.state.Add(shock).Add(pull), w.Low, w.High).Round(stateScale)
	return w.Price()
}

func clamp(d, lo, hi decimal.Decimal) decimal.Decimal {
	if d.LessThan(lo) {
		return lo
	}
	if d.GreaterThan(hi) {
		return hi
	}
	return d
}

// roundCents rounds half up to 0.01.
func roundCents(d decimal.Decimal) decimal.Decimal { return d.Round(2) }
