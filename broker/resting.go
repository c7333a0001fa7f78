package broker

import (
	"context"
	"fmt"
	"strings"
	"time"

	"computebroker/ledger"
	"computebroker/market"
	"computebroker/matching"
	"computebroker/voucher"
)

// Resting jobs. A gtc job that finds no offer is recorded as a resting order
// in Redis and announced on the resting-jobs stream; every brokerd rests
// every such job in its engine (loaded at start, then from the stream). When
// a change makes one matchable, the engine reports a fill; the brokerd that
// wins the order's claim in Redis runs the normal checkout for it (the same
// order id, so at most one lease and one discount whatever happens), and
// announces it done so that the others drop it. A claim expires, so a
// brokerd that dies mid-fill only delays the job.

const (
	claimTTL    = 30 * time.Second
	fillWorkers = 4
)

func restingID(smeID, orderID string) string { return smeID + "|" + orderID }

// rest records a gtc job that found no offer now as a resting order.
func (s *Service) rest(ctx context.Context, sme market.Account, key, orderID string, job market.Job, now time.Time) (market.Order, error) {
	o := market.Order{ID: orderID, SMEID: sme.ID, Status: market.OrderResting, Job: job, ResourceClass: job.ResourceClass,
		Units: job.Units, Hours: job.Hours, IdempotencyKey: key, CreatedAt: now, UpdatedAt: now}
	if err := s.ledger.RestOrder(ctx, o); err != nil {
		return market.Order{}, err
	}
	s.restLocal(ctx, o, sme)
	s.log.Info("order resting", "order", o.ID, "sme", sme.ID, "expires_at", job.ExpiresAt)
	return o, nil
}

// request builds the matching request of a job for an SME, with its grants.
func (s *Service) request(ctx context.Context, sme market.Account, job market.Job) (matching.Request, error) {
	now := s.now()
	class, _ := s.cfg.Catalog.Class(job.ResourceClass)
	req := matching.Request{Job: job, SME: sme, Class: class, Now: now, Rules: s.cfg.Rules}
	if s.live == nil {
		// The live engine's books hold the reference prices (see
		// RefreshReferences); without it the request carries them.
		req.Reference = s.refs.of
	}
	if job.UseVouchers {
		funds, err := s.ledger.Funds(ctx, sme.ID, now)
		if err != nil {
			return req, err
		}
		for _, f := range funds {
			req.Grants = append(req.Grants, voucher.Grant{Voucher: f.Voucher, Program: f.Program, Available: f.Available, CapLeft: f.CapLeft, BudgetLeft: f.BudgetLeft})
		}
	}
	req.Compile()
	return req, nil
}

// restLocal rests an order's job in this brokerd's engine.
func (s *Service) restLocal(ctx context.Context, o market.Order, sme market.Account) {
	if s.live == nil || o.Status != market.OrderResting {
		return
	}
	req, err := s.request(ctx, sme, o.Job)
	if err == nil {
		err = s.live.Engine().Rest(ctx, restingID(o.SMEID, o.ID), req, o.Job.ExpiresAt)
	}
	if err != nil && !market.IsCode(err, market.CodeConflict) {
		s.log.Warn("rest job", "order", o.ID, "err", err)
	}
}

func (s *Service) restByID(ctx context.Context, smeID, orderID string) {
	o, err := s.ledger.SMEOrder(ctx, smeID, orderID)
	if err != nil {
		s.log.Warn("load resting order", "order", orderID, "err", err)
		return
	}
	sme, err := s.offers.Account(ctx, smeID)
	if err != nil {
		s.log.Warn("load resting order's SME", "order", orderID, "err", err)
		return
	}
	s.restLocal(ctx, o, sme)
}

// RunResting loads the resting jobs into this brokerd's engine, follows the
// resting-jobs stream, fills jobs the engine reports matchable and expires
// jobs past their expires_at, until ctx ends. Call after Live.Start.
func (s *Service) RunResting(ctx context.Context) error {
	if s.live == nil {
		return nil
	}
	// Fills first: resting a loaded job may report it matchable at once.
	fills := make(chan matching.Fill, 1024)
	s.live.OnFill(func(f matching.Fill) {
		select {
		case fills <- f:
		case <-ctx.Done():
		}
	})
	pos, err := s.ledger.RestingPosition(ctx)
	if err != nil {
		return err
	}
	orders, err := s.ledger.RestingOrders(ctx)
	if err != nil {
		return err
	}
	for _, o := range orders {
		s.restByID(ctx, o.SMEID, o.ID)
	}
	go func() {
		_ = s.ledger.FollowResting(ctx, pos, time.Second, func(evs []ledger.RestingEvent) {
			for _, ev := range evs {
				if ev.Done {
					s.live.Engine().Cancel(restingID(ev.SMEID, ev.OrderID))
				} else {
					s.restByID(ctx, ev.SMEID, ev.OrderID)
				}
			}
		})
	}()
	for i := 0; i < fillWorkers; i++ {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case f := <-fills:
					s.fillResting(ctx, f)
				}
			}
		}()
	}
	go every(ctx, time.Second, func() { s.expireResting(ctx) })
	return nil
}

// fillResting runs the checkout of a resting job the engine found matchable.
func (s *Service) fillResting(ctx context.Context, f matching.Fill) {
	smeID, orderID, _ := strings.Cut(f.JobID, "|")
	o, ok, err := s.ledger.ClaimResting(ctx, smeID, orderID, s.cfg.NewID("claim"), claimTTL)
	if err != nil || !ok {
		if err != nil {
			s.log.Warn("claim resting order", "order", orderID, "err", err)
		}
		return // filled, cancelled or being filled elsewhere
	}
	sme, err := s.offers.Account(ctx, smeID)
	if err != nil {
		s.log.Warn("resting order's SME", "order", orderID, "err", err)
		_ = s.ledger.ReleaseClaim(ctx, smeID, orderID)
		return
	}
	filled, err := s.checkout(ctx, sme, o.IdempotencyKey, orderID, o.Job, o.CreatedAt)
	if err != nil {
		// The market moved again: back to resting, here and in Redis.
		_ = s.ledger.ReleaseClaim(context.WithoutCancel(ctx), smeID, orderID)
		s.restLocal(ctx, o, sme)
		s.metrics.order(err, false)
		return
	}
	if err := s.ledger.DoneResting(context.WithoutCancel(ctx), smeID, orderID); err != nil {
		s.log.Warn("announce filled resting order", "order", orderID, "err", err)
	}
	s.metrics.order(nil, true)
	s.log.Info("resting order filled", "order", orderID, "offer", filled.OfferID, "net", filled.Net)
}

// expireResting ends the resting orders past their expires_at.
func (s *Service) expireResting(ctx context.Context) {
	now := s.now()
	s.live.Engine().Expire(now)
	due, err := s.ledger.ExpiredResting(ctx, now)
	if err != nil {
		s.log.Warn("list expired resting orders", "err", err)
		return
	}
	for _, d := range due {
		if _, err := s.ledger.EndResting(ctx, d[0], d[1], market.OrderExpired, now); err != nil && !market.IsCode(err, market.CodeConflict) {
			s.log.Warn("expire resting order", "order", d[1], "err", err)
		} else if market.IsCode(err, market.CodeConflict) {
			// Filled, cancelled or being filled: drop it from the expiry set
			// only when it no longer rests.
			if o, gerr := s.ledger.SMEOrder(ctx, d[0], d[1]); gerr == nil && o.Status != market.OrderResting {
				_ = s.ledger.DoneResting(ctx, d[0], d[1])
			}
		}
	}
}

// CancelOrder cancels the caller's order: a resting one stops resting; a
// filled one whose lease has not started gives back the units, the voucher
// amount (to the voucher, or to the programme if the voucher has expired),
// the annual cap and the budget. A started lease cannot be cancelled.
func (s *Service) CancelOrder(ctx context.Context, caller market.Account, id string) (market.Order, error) {
	if err := requireRole(caller, market.RoleSME); err != nil {
		return market.Order{}, err
	}
	o, err := s.ledger.SMEOrder(ctx, caller.ID, id)
	if err != nil {
		return o, err
	}
	now := s.now()
	switch o.Status {
	case market.OrderCancelled:
		return o, nil
	case market.OrderResting:
		o, err = s.ledger.EndResting(ctx, caller.ID, id, market.OrderCancelled, now)
		if err == nil && s.live != nil {
			s.live.Engine().Cancel(restingID(caller.ID, id))
		}
		return o, err
	case market.OrderFilled:
	default:
		return o, market.Errorf(market.CodeConflict, "order %s is %s and cannot be cancelled", id, o.Status)
	}
	mk := market.MarketKey{Class: o.ResourceClass, Region: o.Region}
	parts := o.Parts
	if len(parts) == 0 {
		parts = []market.OrderPart{{OfferID: o.OfferID, ProviderID: o.ProviderID, LeaseID: o.LeaseID, Units: o.Units,
			UnitPrice: o.UnitPrice, Gross: o.Gross, Discount: o.Discount, Net: o.Net}}
	}
	// Every lease must still be reserved before any is cancelled.
	for _, p := range parts {
		l, err := s.offers.Lease(ctx, p.LeaseID)
		if err != nil {
			return o, err
		}
		if l.Status != market.LeaseReserved && l.Status != market.LeaseCancelled {
			return o, market.Errorf(market.CodeConflict, "the lease has %s; the order can no longer be cancelled", l.Status)
		}
	}
	base := strings.TrimPrefix(o.ID, "ord_")
	for i, p := range parts {
		id := "rfd_" + base
		if len(parts) > 1 {
			id = fmt.Sprintf("rfd_%s_%d", base, i+1)
		}
		refund := market.Trade{
			ID: id, OrderID: o.ID, LeaseID: p.LeaseID, OfferID: p.OfferID, ProviderID: p.ProviderID, SMEID: o.SMEID,
			ResourceClass: mk.Class, Region: mk.Region, Units: p.Units, Hours: o.Hours, UnitPrice: p.UnitPrice,
			Gross: p.Gross, Discount: p.Discount, Net: p.Net, VoucherID: o.VoucherID, ProgramID: o.ProgramID, TS: now,
		}
		if err := s.offers.CancelLease(ctx, mk, p.LeaseID, p.OfferID, refund, now); err != nil {
			return o, err
		}
		s.refreshID(ctx, p.OfferID)
	}
	out, err := s.ledger.CancelFilled(context.WithoutCancel(ctx), o, now)
	if err != nil {
		return o, err
	}
	s.log.Info("order cancelled", "order", id, "sme", caller.ID, "refund", o.Discount)
	return out, nil
}

// SetLeaseStatus lets a provider start, complete or fail its lease.
func (s *Service) SetLeaseStatus(ctx context.Context, caller market.Account, id string, to market.LeaseStatus) (market.Lease, error) {
	if err := requireRole(caller, market.RoleProvider); err != nil {
		return market.Lease{}, err
	}
	return s.offers.SetLeaseStatus(ctx, caller.ID, id, to)
}
