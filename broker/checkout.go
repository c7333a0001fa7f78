package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"computebroker/catalog"
	"computebroker/ledger"
	"computebroker/market"
	"computebroker/matching"
	"computebroker/voucher"
)

// JobRequest is an SME's job before validation.
type JobRequest struct {
	ResourceClass  string
	Regions        []string
	Units          int64
	Hours          int64
	MaxPrice       string
	Certifications []string
	UseVouchers    *bool
	TimeInForce    string
	ExpiresAt      time.Time
	AllowSplit     bool
}

// maxRest is how long a gtc job may rest.
const maxRest = 90 * 24 * time.Hour

// planDepth is how many ranked offers a plan keeps: the best and four
// alternatives for a quote, the candidates a checkout tries in turn.
const planDepth = 5

// maxQuantity bounds units × hours of one job so that every gross amount
// fits the history's Decimal(18,2) with room to spare.
const maxQuantity = 1_000_000_000

func (s *Service) validJob(r JobRequest) (market.Job, error) {
	j := market.Job{ResourceClass: r.ResourceClass, Units: r.Units, Hours: r.Hours, UseVouchers: true, AllowSplit: r.AllowSplit}
	if _, ok := s.cfg.Catalog.Class(r.ResourceClass); !ok {
		if r.ResourceClass == "" {
			return j, market.Invalid("resource_class is required")
		}
		return j, market.Invalid("unknown resource_class %q", r.ResourceClass)
	}
	regions, err := validList("regions", r.Regions, 16)
	if err != nil {
		return j, err
	}
	for _, rg := range regions {
		if _, ok := s.cfg.Catalog.Region(rg); !ok {
			return j, market.Invalid("unknown region %q", rg)
		}
	}
	j.Regions = regions
	if err := validUnits("units", r.Units); err != nil {
		return j, err
	}
	if err := validHours("hours", r.Hours); err != nil {
		return j, err
	}
	if r.Units*r.Hours > maxQuantity {
		return j, market.Invalid("units × hours must be at most %d", maxQuantity)
	}
	if r.MaxPrice != "" {
		if j.MaxPrice, err = market.ParsePrice("max_price", r.MaxPrice); err != nil {
			return j, err
		}
	}
	if j.Certifications, err = validList("certifications", r.Certifications, 16); err != nil {
		return j, err
	}
	if r.UseVouchers != nil {
		j.UseVouchers = *r.UseVouchers
	}
	switch r.TimeInForce {
	case "", string(market.IOC):
		j.TimeInForce = market.IOC
		if !r.ExpiresAt.IsZero() {
			return j, market.Invalid("expires_at applies to gtc jobs only")
		}
	case string(market.GTC):
		j.TimeInForce = market.GTC
		now := s.now()
		switch {
		case r.ExpiresAt.IsZero():
			return j, market.Invalid("a gtc job needs expires_at (RFC 3339)")
		case !r.ExpiresAt.After(now):
			return j, market.Invalid("expires_at must be in the future")
		case r.ExpiresAt.After(now.Add(maxRest)):
			return j, market.Invalid("expires_at must be within %d days", int(maxRest.Hours()/24))
		}
		j.ExpiresAt = r.ExpiresAt.UTC()
	default:
		return j, market.Invalid("time_in_force must be ioc or gtc")
	}
	return j, nil
}

// plan finds the eligible offers for a job, best net first.
func (s *Service) plan(ctx context.Context, sme market.Account, job market.Job) (matching.Result, []voucher.Grant, error) {
	req, err := s.request(ctx, sme, job)
	if err != nil {
		return matching.Result{}, nil, err
	}
	if s.live != nil {
		return s.live.Engine().Match(req, planDepth), req.Grants, nil
	}
	markets, err := s.jobMarkets(job.ResourceClass, job.Regions, false)
	if err != nil {
		return matching.Result{}, nil, err
	}
	offers, _, err := s.offers.ListOffers(ctx, catalog.OfferFilter{Markets: markets})
	if err != nil {
		return matching.Result{}, nil, err
	}
	providers, err := s.offers.Accounts(ctx, market.RoleProvider)
	if err != nil {
		return matching.Result{}, nil, err
	}
	byID := make(map[string]market.Account, len(providers))
	for _, p := range providers {
		byID[p.ID] = p
	}
	cands := make([]matching.Candidate, 0, len(offers))
	for _, o := range offers {
		cands = append(cands, matching.Candidate{Offer: o, Provider: byID[o.ProviderID]})
	}
	return matching.Rank(req, cands, planDepth), req.Grants, nil
}

func noMatch(res matching.Result) error {
	e := &market.Error{Code: market.CodeNoMatch, Message: "no eligible offer for this job", Reasons: res.Rejected}
	if len(res.Rejected) > 0 {
		parts := make([]string, 0, len(res.Rejected))
		for _, r := range sortedKeys(res.Rejected) {
			parts = append(parts, r+": "+itoa(res.Rejected[r]))
		}
		e.Message += " (" + strings.Join(parts, ", ") + ")"
	} else if res.Considered == 0 {
		e.Message += " (no offers listed in the job's markets)"
	}
	return e
}

// Quote prices a job for the calling SME without reserving anything: the
// best offer by net cost and up to four alternatives.
func (s *Service) Quote(ctx context.Context, caller market.Account, r JobRequest) (matching.Match, []matching.Match, error) {
	if err := requireRole(caller, market.RoleSME); err != nil {
		return matching.Match{}, nil, err
	}
	job, err := s.validJob(r)
	if err != nil {
		return matching.Match{}, nil, err
	}
	res, _, err := s.plan(ctx, caller, job)
	if err != nil {
		return matching.Match{}, nil, err
	}
	if len(res.Matches) == 0 {
		return matching.Match{}, nil, noMatch(res)
	}
	alts := res.Matches[1:]
	if len(alts) > 4 {
		alts = alts[:4]
	}
	return res.Matches[0], alts, nil
}

// PlaceOrder runs the checkout saga for the calling SME. The same
// idempotency key returns the same order (created is then false) and charges
// once; the same key with a different job is a conflict.
func (s *Service) PlaceOrder(ctx context.Context, caller market.Account, key string, r JobRequest) (o market.Order, created bool, err error) {
	defer func() { s.metrics.order(err, created) }()
	if err := requireRole(caller, market.RoleSME); err != nil {
		return o, false, err
	}
	if key == "" {
		return o, false, market.Invalid("the Idempotency-Key header is required")
	}
	if len(key) > 200 {
		return o, false, market.Invalid("Idempotency-Key must be at most 200 characters")
	}
	job, err := s.validJob(r)
	if err != nil {
		return o, false, err
	}
	fp := fingerprint(job)
	now := s.now()
	b, err := s.ledger.BeginOrder(ctx, caller.ID, key, fp, s.cfg.NewID("ord"), now)
	if err != nil {
		return o, false, err
	}
	if !b.New {
		o, err := s.replay(ctx, caller, key, fp, b)
		return o, false, err
	}
	o, err = s.checkout(ctx, caller, key, b.OrderID, job, now)
	switch {
	case err == nil:
		return o, true, nil
	case market.IsCode(err, market.CodeNoMatch) && job.TimeInForce == market.GTC:
		o, err = s.rest(ctx, caller, key, b.OrderID, job, now)
		if err != nil {
			if ferr := s.ledger.ForgetKey(context.WithoutCancel(ctx), caller.ID, key); ferr != nil {
				s.log.Warn("forget idempotency key", "order", b.OrderID, "err", ferr)
			}
			return o, false, err
		}
		return o, true, nil
	case market.IsCode(err, market.CodeNoMatch):
		if ferr := s.ledger.FailOrder(ctx, caller.ID, key, encodeError(err)); ferr != nil {
			s.log.Warn("record failed order", "order", b.OrderID, "err", ferr)
		}
	case errors.Is(err, errCommitted):
		// Committed: the key stays pending; a retry resumes from the draft.
	default:
		// Nothing committed: free the key so that a retry starts afresh.
		if ferr := s.ledger.ForgetKey(context.WithoutCancel(ctx), caller.ID, key); ferr != nil {
			s.log.Warn("forget idempotency key", "order", b.OrderID, "err", ferr)
		}
	}
	return o, false, err
}

func fingerprint(j market.Job) string {
	b, _ := json.Marshal(j)
	return HashToken(string(b))
}

// replay answers a repeated idempotency key.
func (s *Service) replay(ctx context.Context, caller market.Account, key, fp string, b ledger.Begin) (market.Order, error) {
	if b.Fingerprint != fp {
		return market.Order{}, market.Errorf(market.CodeConflict, "Idempotency-Key %q was used for a different request", key)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		switch b.State {
		case "done":
			return s.ledger.SMEOrder(ctx, caller.ID, b.OrderID)
		case "failed":
			return market.Order{}, decodeError(b.Result)
		}
		// Pending: another request is checking out, or one died after its
		// commit point. Finish what a dead one committed.
		if o, done, err := s.resume(ctx, caller.ID, b.OrderID); err != nil || done {
			return o, err
		}
		if time.Now().After(deadline) {
			return market.Order{}, market.Errorf(market.CodeConflict, "a request with Idempotency-Key %q is still in progress", key)
		}
		select {
		case <-ctx.Done():
			return market.Order{}, market.Errorf(market.CodeUnavailable, "request cancelled")
		case <-time.After(50 * time.Millisecond):
		}
		nb, err := s.ledger.BeginOrder(ctx, caller.ID, key, fp, "", s.now())
		if err != nil {
			return market.Order{}, err
		}
		b = nb
	}
}

// resume completes an order whose checkout committed (the market holds its
// lease) but did not record it. done is false when there is nothing to
// resume (the checkout has not committed, or is still running).
func (s *Service) resume(ctx context.Context, smeID, orderID string) (market.Order, bool, error) {
	d, ok, err := s.ledger.Draft(ctx, smeID, orderID)
	if err != nil || !ok {
		return market.Order{}, false, err
	}
	m := market.MarketKey{Class: d.Order.ResourceClass, Region: d.Order.Region}
	lease, err := s.offers.OrderLease(ctx, m, orderID)
	if err != nil || lease == "" || lease != d.Order.LeaseID {
		return market.Order{}, false, err
	}
	if err := s.ledger.Complete(ctx, d.Order, d.Key, d.Hold); err != nil {
		return market.Order{}, false, err
	}
	return d.Order, true, nil
}

// checkout tries the best candidates in turn: hold the voucher discount,
// reserve at the market (the commit point), then capture and record. A
// candidate that moved is released and the market is planned again.
func (s *Service) checkout(ctx context.Context, sme market.Account, key, orderID string, job market.Job, created time.Time) (market.Order, error) {
	if job.AllowSplit {
		return s.checkoutSplit(ctx, sme, key, orderID, job, created)
	}
	attempts := 0
	var last matching.Result
	for attempts < s.cfg.CheckoutAttempts {
		res, grants, err := s.plan(ctx, sme, job)
		if err != nil {
			return market.Order{}, err
		}
		last = res
		if len(res.Matches) == 0 {
			return market.Order{}, noMatch(res)
		}
		for _, m := range res.Matches {
			if attempts >= s.cfg.CheckoutAttempts {
				break
			}
			attempts++
			o, err := s.try(ctx, sme, key, orderID, job, singleFill(m, job.Units), grants, created)
			if err == nil {
				return o, nil
			}
			if !market.IsCode(err, market.CodeConflict) {
				return market.Order{}, err
			}
			s.log.Debug("checkout candidate moved", "order", orderID, "offer", m.Offer.ID, "reason", err.Error())
			if isHoldConflict(err) {
				break // the SME's funds changed: plan again with fresh balances
			}
			if len(res.Matches) > 1 {
				continue
			}
			break
		}
	}
	if len(last.Matches) == 0 {
		return market.Order{}, noMatch(last)
	}
	return market.Order{}, market.Errorf(market.CodeConflict, "the market moved during checkout; try again")
}

// checkoutSplit fills an allow_split job from the cheapest set of up to
// four offers of one region, all or nothing.
func (s *Service) checkoutSplit(ctx context.Context, sme market.Account, key, orderID string, job market.Job, created time.Time) (market.Order, error) {
	if s.live == nil {
		return market.Order{}, market.Errorf(market.CodeUnavailable, "split fills need the live books")
	}
	for attempt := 0; attempt < s.cfg.CheckoutAttempts; attempt++ {
		req, err := s.request(ctx, sme, job)
		if err != nil {
			return market.Order{}, err
		}
		sp, res := s.live.Engine().MatchSplit(req)
		if sp == nil || len(sp.Parts) == 0 {
			return market.Order{}, noMatch(res)
		}
		o, err := s.try(ctx, sme, key, orderID, job, splitFill(sp), req.Grants, created)
		if err == nil || !market.IsCode(err, market.CodeConflict) {
			return o, err
		}
		s.log.Debug("split checkout moved", "order", orderID, "reason", err.Error())
	}
	return market.Order{}, market.Errorf(market.CodeConflict, "the market moved during checkout; try again")
}

func isHoldConflict(err error) bool {
	var e *market.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Message {
	case "no_balance", "cap_reached", "expired", "budget_exhausted", "voucher_not_found", "program_not_found":
		return true
	}
	return false
}

// fill is what a checkout attempt buys: one offer, or the parts of a split
// in one market, with the amounts and the voucher of the whole order.
type fill struct {
	parts                []matching.Part
	gross, discount, net decimal.Decimal
	voucherID, programID string
}

func singleFill(m matching.Match, units int64) fill {
	return fill{
		parts: []matching.Part{{Offer: m.Offer, Provider: m.Provider, Units: units, UnitPrice: m.UnitPrice,
			Gross: m.Gross, Discount: m.Discount, Net: m.Net}},
		gross: m.Gross, discount: m.Discount, net: m.Net, voucherID: m.VoucherID, programID: m.ProgramID,
	}
}

func splitFill(sp *matching.Split) fill {
	return fill{parts: sp.Parts, gross: sp.Gross, discount: sp.Discount, net: sp.Net, voucherID: sp.VoucherID, programID: sp.ProgramID}
}

// try runs the saga for one candidate fill.
func (s *Service) try(ctx context.Context, sme market.Account, key, orderID string, job market.Job, f fill, grants []voucher.Grant, created time.Time) (market.Order, error) {
	now := s.now()
	first := f.parts[0]
	mk := first.Offer.Market()
	o := market.Order{
		ID: orderID, SMEID: sme.ID, Status: market.OrderFilled, Job: job,
		OfferID: first.Offer.ID, ProviderID: first.Offer.ProviderID, LeaseID: s.cfg.NewID("lse"),
		ResourceClass: mk.Class, Region: mk.Region, UnitPrice: first.UnitPrice, Units: job.Units, Hours: job.Hours,
		Gross: f.gross, Discount: f.discount, Net: f.net, VoucherID: f.voucherID, ProgramID: f.programID,
		IdempotencyKey: key, CreatedAt: created, UpdatedAt: now,
	}
	if len(f.parts) > 1 {
		weighted := decimal.Zero
		for i, p := range f.parts {
			lease := o.LeaseID
			if i > 0 {
				lease = s.cfg.NewID("lse")
			}
			o.Parts = append(o.Parts, market.OrderPart{OfferID: p.Offer.ID, ProviderID: p.Offer.ProviderID, LeaseID: lease,
				Units: p.Units, UnitPrice: p.UnitPrice, Gross: p.Gross, Discount: p.Discount, Net: p.Net})
			weighted = weighted.Add(p.UnitPrice.Mul(decimal.NewFromInt(p.Units)))
		}
		o.UnitPrice = weighted.Div(decimal.NewFromInt(job.Units)).Round(market.PriceScale)
	}
	var hold *ledger.Hold
	if f.discount.IsPositive() {
		// The programme is in the grant; its annual cap bounds the hold.
		cap := decimal.Zero
		for _, g := range grants {
			if g.Voucher.ID == f.voucherID {
				cap = g.Program.AnnualCapPerCompany
			}
		}
		hold = &ledger.Hold{OrderID: orderID, SMEID: sme.ID, VoucherID: f.voucherID, ProgramID: f.programID, Amount: f.discount, AnnualCap: cap, Market: mk, Now: now}
		if err := s.ledger.HoldDiscount(ctx, *hold); err != nil {
			return market.Order{}, err
		}
	}
	if hold == nil {
		// A hold is tracked for the reconciler; a checkout without one is
		// tracked here, so that a broker dying past the commit point leaves
		// nothing unfinished.
		if err := s.ledger.TrackCheckout(ctx, sme.ID, orderID, mk, now); err != nil {
			return market.Order{}, err
		}
	}
	undo := func(cause error) (market.Order, error) {
		bg := context.WithoutCancel(ctx)
		if hold != nil {
			if err := s.ledger.ReleaseDiscount(bg, *hold); err != nil {
				s.log.Error("release hold", "order", orderID, "err", err)
			}
		} else if err := s.ledger.UntrackCheckout(bg, sme.ID, orderID, mk); err != nil {
			s.log.Error("untrack checkout", "order", orderID, "err", err)
		}
		return market.Order{}, cause
	}
	if err := s.ledger.SaveDraft(ctx, ledger.Draft{Key: key, Order: o, Hold: hold}); err != nil {
		return undo(err)
	}
	base := strings.TrimPrefix(orderID, "ord_")
	reservations := make([]catalog.Reservation, len(f.parts))
	for i, p := range f.parts {
		leaseID, tradeID, units := o.LeaseID, "trd_"+base, o.Units
		gross, discount, net := o.Gross, o.Discount, o.Net
		if len(f.parts) > 1 {
			leaseID, tradeID, units = o.Parts[i].LeaseID, fmt.Sprintf("trd_%s_%d", base, i+1), p.Units
			gross, discount, net = p.Gross, p.Discount, p.Net
		}
		reservations[i] = catalog.Reservation{
			Lease: market.Lease{ID: leaseID, OrderID: orderID, OfferID: p.Offer.ID, ProviderID: p.Offer.ProviderID, SMEID: sme.ID,
				ResourceClass: mk.Class, Region: mk.Region, Units: units, Hours: o.Hours, UnitPrice: p.UnitPrice,
				Status: market.LeaseReserved, CreatedAt: now},
			Trade: market.Trade{ID: tradeID, OrderID: orderID, LeaseID: leaseID, OfferID: p.Offer.ID,
				ProviderID: p.Offer.ProviderID, SMEID: sme.ID, ResourceClass: mk.Class, Region: mk.Region,
				Units: units, Hours: o.Hours, UnitPrice: p.UnitPrice, Gross: gross, Discount: discount, Net: net,
				VoucherID: o.VoucherID, ProgramID: o.ProgramID, TS: now},
			Price: p.UnitPrice, Now: now,
		}
	}
	var res catalog.Reserved
	var err error
	if len(reservations) == 1 {
		res, err = s.offers.Reserve(ctx, reservations[0])
	} else {
		res, err = s.offers.ReserveAll(ctx, reservations)
	}
	// Either way the book's view of the offers is stale now.
	defer func() {
		for _, p := range f.parts {
			s.refreshID(context.WithoutCancel(ctx), p.Offer.ID)
		}
	}()
	if err != nil && !market.IsCode(err, market.CodeConflict) {
		// Not a rejection: the script may have run before the reply was
		// lost. Ask the market before undoing anything.
		lease, lerr := s.offers.OrderLease(context.WithoutCancel(ctx), mk, orderID)
		switch {
		case lerr != nil:
			// Unknown: keep the hold and the key; a retry or the reconciler
			// settles it once Redis answers.
			return market.Order{}, &market.Error{Code: market.CodeUnavailable,
				Message: "the outcome of the order is not known yet; retry with the same Idempotency-Key",
				Err:     fmt.Errorf("%w: %w", errCommitted, err)}
		case lease != "":
			res, err = catalog.Reserved{LeaseID: lease, Duplicate: true}, nil
		}
	}
	if err != nil {
		return undo(err)
	}
	if res.Duplicate && res.LeaseID != o.LeaseID {
		// An earlier attempt of this order committed; finish that one.
		if d, ok, derr := s.ledger.Draft(ctx, sme.ID, orderID); derr == nil && ok && d.Order.LeaseID == res.LeaseID {
			o, hold = d.Order, d.Hold
		}
	}
	// Past the commit point: the trade exists. Finishing must not be cut
	// short by the caller going away.
	if err := s.ledger.Complete(context.WithoutCancel(ctx), o, key, hold); err != nil {
		return market.Order{}, &market.Error{Code: market.CodeUnavailable,
			Message: "the order is committed but not yet recorded; retry with the same Idempotency-Key to get it",
			Err:     fmt.Errorf("%w: %w", errCommitted, err)}
	}
	return o, nil
}

// errCommitted marks a checkout that failed after its commit point: its
// idempotency key must stay, so that a retry (or the reconciler) finishes it
// rather than buying again.
var errCommitted = errors.New("checkout committed")

// encodeError and decodeError keep a failed checkout's answer with its key.
func encodeError(err error) string {
	var e *market.Error
	if !errors.As(err, &e) {
		e = &market.Error{Code: market.CodeInternal, Message: "internal error"}
	}
	b, _ := json.Marshal(struct {
		Code    market.Code    `json:"code"`
		Message string         `json:"message"`
		Reasons map[string]int `json:"reasons,omitempty"`
	}{e.Code, e.Message, e.Reasons})
	return string(b)
}

func decodeError(s string) error {
	var v struct {
		Code    market.Code    `json:"code"`
		Message string         `json:"message"`
		Reasons map[string]int `json:"reasons"`
	}
	if json.Unmarshal([]byte(s), &v) != nil || v.Code == "" {
		return market.Errorf(market.CodeInternal, "stored result unreadable")
	}
	return &market.Error{Code: v.Code, Message: v.Message, Reasons: v.Reasons}
}
