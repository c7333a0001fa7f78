package broker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"sort"
	"strings"
	"time"

	"computebroker/catalog"
	"computebroker/market"
	"computebroker/voucher"
)

// Config is what a Service needs besides its stores.
type Config struct {
	Catalog *market.Catalog
	Rules   voucher.Rules
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// NewID returns a fresh id with a prefix; nil means random hex ids.
	NewID  func(prefix string) string
	Logger *slog.Logger
	// CheckoutAttempts bounds how many reservations one order tries before it
	// gives up on a moving market.
	CheckoutAttempts int
}

// Service implements the use cases of the marketplace.
type Service struct {
	cfg     Config
	offers  OfferStore
	ledger  Ledger
	history History
	log     *slog.Logger
	metrics *Metrics
	// live, when set, holds the books matching reads; without it matching
	// reads the offers from Redis on every request.
	live *Live
	// refs are the markets' reference prices of the subsidy-capture guard.
	refs references
}

// UseLive makes matching read the live books, and local writes refresh them.
func (s *Service) UseLive(l *Live) { s.live = l }

// refresh brings this brokerd's book up to date with an offer after a local
// change (read-your-writes); the change stream brings it to the others.
func (s *Service) refresh(ctx context.Context, o market.Offer) {
	if s.live == nil {
		return
	}
	if err := s.live.Refresh(ctx, o); err != nil {
		s.log.Warn("refresh book", "offer", o.ID, "err", err)
	}
}

func (s *Service) refreshID(ctx context.Context, id string) {
	if s.live == nil {
		return
	}
	if err := s.live.RefreshID(ctx, id); err != nil {
		s.log.Warn("refresh book", "offer", id, "err", err)
	}
}

// NewService returns a Service over its stores. metrics may be nil.
func NewService(cfg Config, offers OfferStore, l Ledger, h History, m *Metrics) *Service {
	if cfg.Catalog == nil {
		cfg.Catalog = market.DefaultCatalog()
	}
	if cfg.Rules.GuardRatio.IsZero() {
		cfg.Rules = voucher.DefaultRules()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NewID == nil {
		cfg.NewID = RandomID
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.CheckoutAttempts <= 0 {
		cfg.CheckoutAttempts = 8
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Service{cfg: cfg, offers: offers, ledger: l, history: h, log: cfg.Logger, metrics: m}
}

func (s *Service) now() time.Time { return s.cfg.Now().UTC() }

// RandomID returns prefix_ followed by 20 random hex digits.
func RandomID(prefix string) string {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return prefix + "_" + hex.EncodeToString(b[:])
}

// NewToken returns a fresh bearer token.
func NewToken() string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return "cbk_" + hex.EncodeToString(b[:])
}

// HashToken is how tokens are stored: never in clear.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

func forbidden(format string, args ...any) error {
	return market.Errorf(market.CodeForbidden, format, args...)
}

func requireRole(caller market.Account, roles ...market.Role) error {
	for _, r := range roles {
		if caller.Role == r {
			return nil
		}
	}
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = string(r)
	}
	return forbidden("this call needs the role %s", strings.Join(names, " or "))
}

// ---- accounts ----

// NewAccount is an admin's request for an account.
type NewAccount struct {
	Role             market.Role
	Name             string
	Region           string
	Size             string
	Startup          bool
	RelatedPartyKeys []string
	Certifications   []string
}

func validList(field string, xs []string, max int) ([]string, error) {
	if len(xs) > max {
		return nil, market.Invalid("%s has more than %d entries", field, max)
	}
	seen := map[string]bool{}
	out := make([]string, 0, len(xs))
	for _, x := range xs {
		x = strings.TrimSpace(x)
		if x == "" || len(x) > 200 {
			return nil, market.Invalid("%s entries must be 1 to 200 characters", field)
		}
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out, nil
}

// CreateAccount creates an account (admin only) and returns it with its
// token, which is shown this once.
func (s *Service) CreateAccount(ctx context.Context, caller market.Account, n NewAccount) (market.Account, string, error) {
	if err := requireRole(caller, market.RoleAdmin); err != nil {
		return market.Account{}, "", err
	}
	if !n.Role.Valid() {
		return market.Account{}, "", market.Invalid("role must be one of admin, regulator, provider, sme")
	}
	n.Name = strings.TrimSpace(n.Name)
	if n.Name == "" || len(n.Name) > 200 {
		return market.Account{}, "", market.Invalid("name must be 1 to 200 characters")
	}
	if n.Region != "" {
		if _, ok := s.cfg.Catalog.Region(n.Region); !ok {
			return market.Account{}, "", market.Invalid("unknown region %q", n.Region)
		}
	}
	if !market.ValidSize(n.Size) {
		return market.Account{}, "", market.Invalid("size must be one of micro, small, medium, large")
	}
	keys, err := validList("related_party_keys", n.RelatedPartyKeys, 32)
	if err != nil {
		return market.Account{}, "", err
	}
	certs, err := validList("certifications", n.Certifications, 32)
	if err != nil {
		return market.Account{}, "", err
	}
	a := market.Account{
		ID: s.cfg.NewID(idPrefix(n.Role)), Role: n.Role, Name: n.Name, Region: n.Region, Size: n.Size,
		Startup: n.Startup, RelatedPartyKeys: keys, Certifications: certs, CreatedAt: s.now(),
	}
	if a.Role == market.RoleProvider {
		a.Status = market.ProviderPending
	}
	token := NewToken()
	if err := s.offers.CreateAccount(ctx, a, HashToken(token)); err != nil {
		return market.Account{}, "", err
	}
	s.log.Info("account created", "id", a.ID, "role", a.Role, "by", caller.ID)
	return a, token, nil
}

func idPrefix(r market.Role) string {
	switch r {
	case market.RoleProvider:
		return "prv"
	case market.RoleSME:
		return "sme"
	case market.RoleRegulator:
		return "reg"
	}
	return "adm"
}

// EnsureAdmin makes sure the operator account "admin" exists and that token
// is its valid token.
func (s *Service) EnsureAdmin(ctx context.Context, token string) error {
	a := market.Account{ID: "admin", Role: market.RoleAdmin, Name: "operator", CreatedAt: s.now()}
	err := s.offers.CreateAccount(ctx, a, HashToken(token))
	if err == nil || !market.IsCode(err, market.CodeConflict) {
		return err
	}
	if _, err := s.offers.AccountByToken(ctx, HashToken(token)); err == nil {
		return nil
	}
	return s.offers.RotateToken(ctx, a.ID, HashToken(token))
}

// Authenticate returns the live account a bearer token belongs to.
func (s *Service) Authenticate(ctx context.Context, token string) (market.Account, error) {
	if token == "" {
		return market.Account{}, market.Errorf(market.CodeUnauthenticated, "missing bearer token")
	}
	return s.offers.AccountByToken(ctx, HashToken(token))
}

// RotateToken gives the account a new token; the old one stops working.
func (s *Service) RotateToken(ctx context.Context, caller market.Account, id string) (string, error) {
	if caller.Role != market.RoleAdmin && caller.ID != id {
		return "", forbidden("only the operator or the account itself may rotate its token")
	}
	token := NewToken()
	if err := s.offers.RotateToken(ctx, id, HashToken(token)); err != nil {
		return "", err
	}
	return token, nil
}

// Revoke stops every token of an account (admin only).
func (s *Service) Revoke(ctx context.Context, caller market.Account, id string) error {
	if err := requireRole(caller, market.RoleAdmin); err != nil {
		return err
	}
	if id == caller.ID {
		return market.Invalid("the operator cannot revoke itself")
	}
	return s.offers.Revoke(ctx, id, s.now())
}

// SetProviderStatus approves or suspends a provider (regulator only).
func (s *Service) SetProviderStatus(ctx context.Context, caller market.Account, id string, st market.ProviderStatus) (market.Account, error) {
	if err := requireRole(caller, market.RoleRegulator); err != nil {
		return market.Account{}, err
	}
	a, err := s.offers.SetProviderStatus(ctx, id, st, s.now())
	if err != nil {
		return a, err
	}
	s.log.Info("provider status", "id", id, "status", st, "by", caller.ID)
	if s.live != nil {
		if err := s.live.SetProvider(ctx, a); err != nil {
			s.log.Warn("refresh provider in books", "provider", id, "err", err)
		}
	}
	return a, nil
}

// Providers lists provider accounts, by name.
func (s *Service) Providers(ctx context.Context) ([]market.Account, error) {
	ps, err := s.offers.Accounts(ctx, market.RoleProvider)
	if err != nil {
		return nil, err
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Name+ps[i].ID < ps[j].Name+ps[j].ID })
	return ps, nil
}

// ---- offers ----

// NewOfferRequest is a provider's offer before validation.
type NewOfferRequest struct {
	ResourceClass string
	Region        string
	Units         int64
	Price         string
	MaxHours      int64
	Specs         map[string]any
}

func validUnits(field string, n int64) error {
	if n < 1 || n > market.MaxUnits {
		return market.Invalid("%s must be a whole number from 1 to %d", field, market.MaxUnits)
	}
	return nil
}

func validHours(field string, n int64) error {
	if n < 1 || n > market.MaxHours {
		return market.Invalid("%s must be a whole number from 1 to %d", field, market.MaxHours)
	}
	return nil
}

// CreateOffer publishes an offer for the calling provider. Offers of
// providers that are not approved are kept but neither listed nor matched.
func (s *Service) CreateOffer(ctx context.Context, caller market.Account, r NewOfferRequest) (market.Offer, error) {
	if err := requireRole(caller, market.RoleProvider); err != nil {
		return market.Offer{}, err
	}
	if _, ok := s.cfg.Catalog.Class(r.ResourceClass); !ok {
		return market.Offer{}, market.Invalid("unknown resource_class %q", r.ResourceClass)
	}
	if _, ok := s.cfg.Catalog.Region(r.Region); !ok {
		return market.Offer{}, market.Invalid("unknown region %q", r.Region)
	}
	if err := validUnits("units", r.Units); err != nil {
		return market.Offer{}, err
	}
	if r.MaxHours == 0 {
		r.MaxHours = 720
	}
	if err := validHours("max_hours", r.MaxHours); err != nil {
		return market.Offer{}, err
	}
	price, err := market.ParsePrice("price", r.Price)
	if err != nil {
		return market.Offer{}, err
	}
	o, err := s.offers.CreateOffer(ctx, catalog.NewOffer{
		ID: s.cfg.NewID("off"), ProviderID: caller.ID,
		Market: market.MarketKey{Class: r.ResourceClass, Region: r.Region},
		Units:  r.Units, Price: price, MaxHours: r.MaxHours, Specs: r.Specs,
		Listed: caller.Approved(), Now: s.now(),
	})
	if err == nil && caller.Approved() {
		s.refresh(ctx, o)
	}
	return o, err
}

// OfferPatch is a provider's change to an offer; empty fields stay.
type OfferPatch struct {
	Price *string
	Units *int64
}

// UpdateOffer changes the price and/or units of the caller's offer and
// returns the offer: the REST PATCH. It and SubmitOfferUpdate (the provider
// stream) check the same way and commit through the same group commit.
func (s *Service) UpdateOffer(ctx context.Context, caller market.Account, id string, p OfferPatch) (market.Offer, error) {
	u, err := s.offerUpdate(caller, id, p)
	if err != nil {
		return market.Offer{}, err
	}
	o, err := s.offers.UpdateOffer(ctx, u)
	if err == nil && caller.Approved() && s.live != nil {
		// Queue the change for this brokerd's book without waiting for it
		// (the change stream brings it too; versions make it once): a
		// quote a moment stale is safe, the commit point re-checks the price.
		if err := s.live.Apply(ctx, o); err != nil {
			s.log.Warn("apply offer change to book", "offer", o.ID, "err", err)
		}
	}
	return o, err
}

// SubmitOfferUpdate checks a change to the caller's offer and queues it for
// the next group commit, without waiting: a bad change fails at once, and
// otherwise done gets the result: the new version or the reason it was
// refused. done runs on the commit's goroutine and must not block. Changes
// one caller submits are committed, and answered, in order. This brokerd's
// book follows from the change stream.
func (s *Service) SubmitOfferUpdate(caller market.Account, id string, p OfferPatch, done catalog.Completer) error {
	u, err := s.offerUpdate(caller, id, p)
	if err != nil {
		return err
	}
	u.Full = false
	s.offers.SubmitUpdate(u, done)
	return nil
}

// offerUpdate checks a provider's change to an offer.
func (s *Service) offerUpdate(caller market.Account, id string, p OfferPatch) (catalog.OfferUpdate, error) {
	if err := requireRole(caller, market.RoleProvider); err != nil {
		return catalog.OfferUpdate{}, err
	}
	if p.Price == nil && p.Units == nil {
		return catalog.OfferUpdate{}, market.Invalid("give price and/or units")
	}
	if id == "" {
		return catalog.OfferUpdate{}, market.Invalid("offer_id is required")
	}
	u := catalog.OfferUpdate{ID: id, ProviderID: caller.ID, Now: s.now()}
	if p.Price != nil {
		price, err := market.ParsePrice("price", *p.Price)
		if err != nil {
			return u, err
		}
		if _, ok := market.PriceTicks(price); !ok {
			return u, market.Invalid("price %s cannot be represented", price)
		}
		u.Price = &price
	}
	if p.Units != nil {
		if err := validUnits("units", *p.Units); err != nil {
			return u, err
		}
		u.Units = p.Units
	}
	return u, nil
}

// DeleteOffer withdraws the caller's offer.
func (s *Service) DeleteOffer(ctx context.Context, caller market.Account, id string) error {
	if err := requireRole(caller, market.RoleProvider); err != nil {
		return err
	}
	if err := s.offers.DeleteOffer(ctx, id, caller.ID, s.now()); err != nil {
		return err
	}
	s.refreshID(ctx, id)
	return nil
}

// OfferQuery filters the public offer list.
type OfferQuery struct {
	ResourceClass, Region, MaxPrice, Cursor string
	Limit                                   int
}

// ListOffers lists approved providers' active offers, cheapest first.
func (s *Service) ListOffers(ctx context.Context, q OfferQuery) ([]market.Offer, string, error) {
	f := catalog.OfferFilter{Limit: q.Limit, Cursor: q.Cursor}
	if f.Limit == 0 {
		f.Limit = 100
	}
	if f.Limit < 1 || f.Limit > 500 {
		return nil, "", market.Invalid("limit must be from 1 to 500")
	}
	if q.MaxPrice != "" {
		p, err := market.ParsePrice("max_price", q.MaxPrice)
		if err != nil {
			return nil, "", err
		}
		f.MaxPrice = p
	}
	markets, err := s.markets(q.ResourceClass, q.Region)
	if err != nil {
		return nil, "", err
	}
	f.Markets = markets
	return s.offers.ListOffers(ctx, f)
}

// markets lists the markets of a class (all when empty) in a region (all
// when empty), validating both.
func (s *Service) markets(class, region string) ([]market.MarketKey, error) {
	var regions []string
	if region != "" {
		regions = []string{region}
	}
	return s.jobMarkets(class, regions, true)
}

func (s *Service) jobMarkets(class string, regions []string, anyClass bool) ([]market.MarketKey, error) {
	var classes []string
	switch {
	case class != "":
		if _, ok := s.cfg.Catalog.Class(class); !ok {
			return nil, market.Invalid("unknown resource_class %q", class)
		}
		classes = []string{class}
	case anyClass:
		for _, c := range s.cfg.Catalog.Classes {
			classes = append(classes, c.ID)
		}
	default:
		return nil, market.Invalid("resource_class is required")
	}
	if len(regions) == 0 {
		for _, r := range s.cfg.Catalog.Regions {
			regions = append(regions, r.ID)
		}
	}
	var out []market.MarketKey
	for _, c := range classes {
		for _, r := range regions {
			if _, ok := s.cfg.Catalog.Region(r); !ok {
				return nil, market.Invalid("unknown region %q", r)
			}
			out = append(out, market.MarketKey{Class: c, Region: r})
		}
	}
	return out, nil
}

// Leases lists the calling provider's leases.
func (s *Service) Leases(ctx context.Context, caller market.Account) ([]market.Lease, error) {
	if err := requireRole(caller, market.RoleProvider); err != nil {
		return nil, err
	}
	return s.offers.Leases(ctx, caller.ID, 500)
}

// ---- programmes and vouchers ----

// NewProgram is a regulator's programme before validation.
type NewProgram struct {
	Name                                     string
	Rate, DomesticRate, StartupRate          string
	PerOrderCap, AnnualCapPerCompany, Budget string
	ValidFrom, ValidTo                       time.Time
	ResourceClasses, Regions, Providers      []string
}

// CreateProgram opens a voucher programme (regulator only).
func (s *Service) CreateProgram(ctx context.Context, caller market.Account, n NewProgram) (market.Program, error) {
	if err := requireRole(caller, market.RoleRegulator); err != nil {
		return market.Program{}, err
	}
	p := market.Program{ID: s.cfg.NewID("prg"), Name: strings.TrimSpace(n.Name), CreatedAt: s.now()}
	if p.Name == "" || len(p.Name) > 200 {
		return p, market.Invalid("name must be 1 to 200 characters")
	}
	var err error
	if p.Rate, err = market.ParseRate("rate", n.Rate, market.MaxRate); err != nil {
		return p, err
	}
	if n.DomesticRate != "" {
		if p.DomesticRate, err = market.ParseRate("domestic_rate", n.DomesticRate, market.MaxRate); err != nil {
			return p, err
		}
	}
	if n.StartupRate != "" {
		if p.StartupRate, err = market.ParseRate("startup_rate", n.StartupRate, market.MaxRate); err != nil {
			return p, err
		}
	}
	if n.PerOrderCap != "" {
		if p.PerOrderCap, err = market.ParseAmount("per_order_cap", n.PerOrderCap); err != nil {
			return p, err
		}
	}
	if p.AnnualCapPerCompany, err = market.ParseAmount("annual_cap_per_company", n.AnnualCapPerCompany); err != nil {
		return p, err
	}
	if p.Budget, err = market.ParseAmount("budget", n.Budget); err != nil {
		return p, err
	}
	if n.ValidFrom.IsZero() || n.ValidTo.IsZero() {
		return p, market.Invalid("valid_from and valid_to are required (RFC 3339)")
	}
	if !n.ValidTo.After(n.ValidFrom) {
		return p, market.Invalid("valid_to must be after valid_from")
	}
	p.ValidFrom, p.ValidTo = n.ValidFrom.UTC(), n.ValidTo.UTC()
	if p.ResourceClasses, err = validList("resource_classes", n.ResourceClasses, 64); err != nil {
		return p, err
	}
	for _, c := range p.ResourceClasses {
		if _, ok := s.cfg.Catalog.Class(c); !ok {
			return p, market.Invalid("unknown resource class %q in resource_classes", c)
		}
	}
	if p.Regions, err = validList("regions", n.Regions, 64); err != nil {
		return p, err
	}
	for _, r := range p.Regions {
		if _, ok := s.cfg.Catalog.Region(r); !ok {
			return p, market.Invalid("unknown region %q in regions", r)
		}
	}
	if p.Providers, err = validList("providers", n.Providers, 1000); err != nil {
		return p, err
	}
	for _, id := range p.Providers {
		a, err := s.offers.Account(ctx, id)
		if market.IsCode(err, market.CodeNotFound) || (err == nil && a.Role != market.RoleProvider) {
			return p, market.Invalid("providers: %q is not a provider", id)
		}
		if err != nil {
			return p, err
		}
	}
	if err := s.ledger.CreateProgram(ctx, p); err != nil {
		return p, err
	}
	s.log.Info("program created", "id", p.ID, "by", caller.ID)
	return p, nil
}

// NewVoucher is a regulator's grant before validation.
type NewVoucher struct {
	ProgramID, HolderID, Amount string
	ExpiresAt                   time.Time
}

// IssueVoucher grants a voucher of a programme to an SME (regulator only).
func (s *Service) IssueVoucher(ctx context.Context, caller market.Account, n NewVoucher) (market.Voucher, error) {
	if err := requireRole(caller, market.RoleRegulator); err != nil {
		return market.Voucher{}, err
	}
	amount, err := market.ParseAmount("amount", n.Amount)
	if err != nil {
		return market.Voucher{}, err
	}
	if n.ProgramID == "" || n.HolderID == "" {
		return market.Voucher{}, market.Invalid("program_id and holder_id are required")
	}
	p, err := s.ledger.Program(ctx, n.ProgramID)
	if market.IsCode(err, market.CodeNotFound) {
		return market.Voucher{}, market.Invalid("program %q does not exist", n.ProgramID)
	}
	if err != nil {
		return market.Voucher{}, err
	}
	holder, err := s.offers.Account(ctx, n.HolderID)
	if market.IsCode(err, market.CodeNotFound) || (err == nil && holder.Role != market.RoleSME) {
		return market.Voucher{}, market.Invalid("holder %q is not an SME", n.HolderID)
	}
	if err != nil {
		return market.Voucher{}, err
	}
	now := s.now()
	exp := n.ExpiresAt.UTC()
	if exp.IsZero() {
		exp = p.ValidTo
	}
	if !exp.After(now) {
		return market.Voucher{}, market.Invalid("expires_at must be in the future")
	}
	if exp.After(p.ValidTo) {
		return market.Voucher{}, market.Invalid("expires_at must not be after the programme's valid_to %s", p.ValidTo.Format(time.RFC3339))
	}
	v := market.Voucher{ID: s.cfg.NewID("vch"), ProgramID: p.ID, HolderID: holder.ID, Amount: amount, Balance: amount, ExpiresAt: exp, CreatedAt: now}
	if err := s.ledger.IssueVoucher(ctx, v); err != nil {
		return market.Voucher{}, err
	}
	s.log.Info("voucher issued", "id", v.ID, "program", p.ID, "holder", holder.ID, "by", caller.ID)
	return v, nil
}

// Vouchers lists the caller's vouchers (SME) or all vouchers (regulator).
func (s *Service) Vouchers(ctx context.Context, caller market.Account) ([]market.Voucher, error) {
	var vs []ledgerVoucher
	var err error
	switch caller.Role {
	case market.RoleSME:
		vs, err = s.ledger.Vouchers(ctx, caller.ID)
	case market.RoleRegulator, market.RoleAdmin:
		vs, err = s.ledger.AllVouchers(ctx)
	default:
		return nil, forbidden("only SMEs and regulators see vouchers")
	}
	if err != nil {
		return nil, err
	}
	out := make([]market.Voucher, len(vs))
	for i, v := range vs {
		out[i] = v.Voucher
	}
	return out, nil
}

// ---- analytics ----

// Trades pages through the trade history (regulator or operator).
func (s *Service) Trades(ctx context.Context, caller market.Account, f TradeQuery) ([]market.Trade, string, error) {
	if err := requireRole(caller, market.RoleRegulator, market.RoleAdmin); err != nil {
		return nil, "", err
	}
	if f.ResourceClass != "" {
		if _, ok := s.cfg.Catalog.Class(f.ResourceClass); !ok {
			return nil, "", market.Invalid("unknown resource_class %q", f.ResourceClass)
		}
	}
	if f.Region != "" {
		if _, ok := s.cfg.Catalog.Region(f.Region); !ok {
			return nil, "", market.Invalid("unknown region %q", f.Region)
		}
	}
	return s.history.Trades(ctx, f)
}
