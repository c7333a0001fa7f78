package broker

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/shopspring/decimal"

	"computebroker/market"
	"computebroker/matching"
)

// referenceWindow is how far back the reference price looks (DESIGN.md:
// the 30-day unsubsidised VWAP).
const referenceWindow = 30 * 24 * time.Hour

// references holds each market's reference price for the subsidy-capture
// guard, refreshed from the history; readers never wait.
type references struct {
	prices atomic.Pointer[map[market.MarketKey]decimal.Decimal]
}

// of returns a market's reference, zero when the market has no
// unsubsidised history yet (the guard then uses the offers' list prices).
func (r *references) of(k market.MarketKey) decimal.Decimal {
	m := r.prices.Load()
	if m == nil {
		return decimal.Zero
	}
	return (*m)[k]
}

// RefreshReferences reloads the markets' reference prices from the history.
func (s *Service) RefreshReferences(ctx context.Context) error {
	prices, err := s.history.ReferencePrices(ctx, s.now().Add(-referenceWindow))
	if err != nil {
		return err
	}
	s.refs.prices.Store(&prices)
	if s.live != nil {
		// The engine's books hold them, so that a decision reads a
		// market's reference with its snapshot instead of asking.
		e := s.live.Engine()
		for _, m := range s.live.Markets() {
			if err := e.Apply(ctx, matching.SetReference(m, prices[m])); err != nil {
				return err
			}
		}
	}
	return nil
}

// RunReferences refreshes the reference prices every interval until ctx ends.
func (s *Service) RunReferences(ctx context.Context, interval time.Duration) {
	refresh := func() {
		if err := s.RefreshReferences(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("refresh reference prices", "err", err)
		}
	}
	refresh()
	every(ctx, interval, refresh)
}
