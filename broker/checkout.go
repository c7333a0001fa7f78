package broker

import (
	"context"
	"encoding/json"
	"errors"
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
		return j, market.Invalid("time_in_force gtc is not supported yet; use ioc")
	default:
		return j, market.Invalid("time_in_force must be ioc or gtc")
	}
	if j.AllowSplit {
		return j, market.Invalid("allow_split is not supported yet")
	}
	return j, nil
}

// plan finds the eligible offers for a job, best net first.
func (s *Service) plan(ctx context.Context, sme market.Account, job market.Job) (matching.Result, []voucher.Grant, error) {
	now := s.now()
	class, _ := s.cfg.Catalog.Class(job.ResourceClass)
	req := matching.Request{Job: job, SME: sme, Class: class, Now: now, Rules: s.cfg.Rules}
	if job.UseVouchers {
		funds, err := s.ledger.Funds(ctx, sme.ID, now)
		if err != nil {
			return matching.Result{}, nil, err
		}
		for _, f := range funds {
			req.Grants = append(req.Grants, voucher.Grant{Voucher: f.Voucher, Program: f.Program, Available: f.Available, CapLeft: f.CapLeft, BudgetLeft: f.BudgetLeft})
		}
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
	o, err = s.checkout(ctx, caller, key, b.OrderID, job)
	switch {
	case err == nil:
		return o, true, nil
	case market.IsCode(err, market.CodeNoMatch):
		if ferr := s.ledger.FailOrder(ctx, caller.ID, key, encodeError(err)); ferr != nil {
			s.log.Warn("record failed order", "order", b.OrderID, "err", ferr)
		}
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
func (s *Service) checkout(ctx context.Context, sme market.Account, key, orderID string, job market.Job) (market.Order, error) {
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
			o, err := s.try(ctx, sme, key, orderID, job, m, grants)
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

// try runs the saga for one candidate.
func (s *Service) try(ctx context.Context, sme market.Account, key, orderID string, job market.Job, m matching.Match, grants []voucher.Grant) (market.Order, error) {
	now := s.now()
	mk := m.Offer.Market()
	o := market.Order{
		ID: orderID, SMEID: sme.ID, Status: market.OrderFilled, Job: job,
		OfferID: m.Offer.ID, ProviderID: m.Offer.ProviderID, LeaseID: s.cfg.NewID("lse"),
		ResourceClass: mk.Class, Region: mk.Region, UnitPrice: m.UnitPrice, Units: job.Units, Hours: job.Hours,
		Gross: m.Gross, Discount: m.Discount, Net: m.Net, VoucherID: m.VoucherID, ProgramID: m.ProgramID,
		CreatedAt: now, UpdatedAt: now,
	}
	var hold *ledger.Hold
	if m.Discount.IsPositive() {
		// The programme is in the grant; its annual cap bounds the hold.
		cap := decimal.Zero
		for _, g := range grants {
			if g.Voucher.ID == m.VoucherID {
				cap = g.Program.AnnualCapPerCompany
			}
		}
		hold = &ledger.Hold{OrderID: orderID, SMEID: sme.ID, VoucherID: m.VoucherID, ProgramID: m.ProgramID, Amount: m.Discount, AnnualCap: cap, Market: mk, Now: now}
		if err := s.ledger.HoldDiscount(ctx, *hold); err != nil {
			return market.Order{}, err
		}
	}
	undo := func(cause error) (market.Order, error) {
		if hold != nil {
			if err := s.ledger.ReleaseDiscount(context.WithoutCancel(ctx), *hold); err != nil {
				s.log.Error("release hold", "order", orderID, "err", err)
			}
		}
		return market.Order{}, cause
	}
	if err := s.ledger.SaveDraft(ctx, ledger.Draft{Key: key, Order: o, Hold: hold}); err != nil {
		return undo(err)
	}
	trade := market.Trade{
		ID: "trd_" + strings.TrimPrefix(orderID, "ord_"), OrderID: orderID, LeaseID: o.LeaseID, OfferID: o.OfferID,
		ProviderID: o.ProviderID, SMEID: sme.ID, ResourceClass: mk.Class, Region: mk.Region,
		Units: o.Units, Hours: o.Hours, UnitPrice: o.UnitPrice, Gross: o.Gross, Discount: o.Discount, Net: o.Net,
		VoucherID: o.VoucherID, ProgramID: o.ProgramID, TS: now,
	}
	lease := market.Lease{
		ID: o.LeaseID, OrderID: orderID, OfferID: o.OfferID, ProviderID: o.ProviderID, SMEID: sme.ID,
		ResourceClass: mk.Class, Region: mk.Region, Units: o.Units, Hours: o.Hours, UnitPrice: o.UnitPrice,
		Status: market.LeaseReserved, CreatedAt: now,
	}
	res, err := s.offers.Reserve(ctx, catalog.Reservation{Lease: lease, Trade: trade, Price: m.UnitPrice, Now: now})
	// Either way the book's view of the offer is stale now.
	defer s.refreshID(context.WithoutCancel(ctx), m.Offer.ID)
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
		return market.Order{}, err
	}
	return o, nil
}

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
