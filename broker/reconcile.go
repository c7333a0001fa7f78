package broker

import (
	"context"
	"time"
)

// Reconcile settles the holds that checkouts started before before and never
// finished (their broker died between the steps of the saga): a hold whose
// order committed at the market is captured and the order recorded; a hold
// whose order never committed is released and its idempotency key freed.
// It is idempotent and safe to run from every brokerd at once.
func (s *Service) Reconcile(ctx context.Context, before time.Time) (completed, released int, err error) {
	holds, err := s.ledger.StaleHolds(ctx, before, 500)
	if err != nil {
		return 0, 0, err
	}
	for _, h := range holds {
		lease, err := s.offers.OrderLease(ctx, h.Market, h.OrderID)
		if err != nil {
			return completed, released, err
		}
		d, ok, err := s.ledger.Draft(ctx, h.SMEID, h.OrderID)
		if err != nil {
			return completed, released, err
		}
		if lease != "" && ok && d.Order.LeaseID == lease {
			if err := s.ledger.Complete(ctx, d.Order, d.Key, d.Hold); err != nil {
				return completed, released, err
			}
			completed++
			s.log.Warn("reconciled a committed checkout", "order", h.OrderID, "sme", h.SMEID)
			continue
		}
		if lease != "" {
			// Committed by an attempt whose draft was replaced: keep the
			// hold for a retry of the same key to finish.
			continue
		}
		if err := s.ledger.ReleaseDiscount(ctx, h); err != nil {
			return completed, released, err
		}
		if ok {
			if err := s.ledger.ForgetKey(ctx, h.SMEID, d.Key); err != nil {
				return completed, released, err
			}
		}
		released++
		s.log.Warn("released the hold of an unfinished checkout", "order", h.OrderID, "sme", h.SMEID)
	}
	n, m, err := s.reconcileCheckouts(ctx, before)
	return completed + n, released + m, err
}

// reconcileCheckouts settles tracked checkouts without a hold the same way:
// recorded when the market holds the order's lease, dropped (and the key
// freed) when it does not.
func (s *Service) reconcileCheckouts(ctx context.Context, before time.Time) (completed, dropped int, err error) {
	pending, err := s.ledger.StaleCheckouts(ctx, before, 500)
	if err != nil {
		return 0, 0, err
	}
	for _, p := range pending {
		lease, err := s.offers.OrderLease(ctx, p.Market, p.OrderID)
		if err != nil {
			return completed, dropped, err
		}
		d, ok, err := s.ledger.Draft(ctx, p.SMEID, p.OrderID)
		if err != nil {
			return completed, dropped, err
		}
		switch {
		case lease != "" && ok && d.Order.LeaseID == lease:
			if err := s.ledger.Complete(ctx, d.Order, d.Key, nil); err != nil {
				return completed, dropped, err
			}
			completed++
			s.log.Warn("reconciled a committed checkout", "order", p.OrderID, "sme", p.SMEID)
		case lease != "":
			// Committed by an earlier attempt whose draft was replaced; a
			// retry of the same key finishes it.
			continue
		default:
			if ok {
				if err := s.ledger.ForgetKey(ctx, p.SMEID, d.Key); err != nil {
					return completed, dropped, err
				}
			}
			if err := s.ledger.UntrackCheckout(ctx, p.SMEID, p.OrderID, p.Market); err != nil {
				return completed, dropped, err
			}
			dropped++
		}
	}
	return completed, dropped, nil
}

// RunReconciler calls Reconcile every interval for holds older than age,
// until ctx ends.
func (s *Service) RunReconciler(ctx context.Context, interval, age time.Duration) {
	every(ctx, interval, func() {
		if _, _, err := s.Reconcile(ctx, s.now().Add(-age)); err != nil && ctx.Err() == nil {
			s.log.Warn("reconcile", "err", err)
		}
	})
}

// every calls f every interval until ctx ends: the background loops of a
// Service (reconciler, reference prices, resting-order expiry).
func every(ctx context.Context, interval time.Duration, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}
