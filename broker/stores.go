package broker

import (
	"context"
	"time"

	"github.com/shopspring/decimal"

	"computebroker/catalog"
	"computebroker/history"
	"computebroker/ledger"
	"computebroker/market"
)

// OfferStore keeps accounts and offers and runs the market-slot step of the
// checkout.
type OfferStore interface {
	Ping(ctx context.Context) error
	CreateAccount(ctx context.Context, a market.Account, tokenHash string) error
	Account(ctx context.Context, id string) (market.Account, error)
	AccountByToken(ctx context.Context, tokenHash string) (market.Account, error)
	Accounts(ctx context.Context, role market.Role) ([]market.Account, error)
	RotateToken(ctx context.Context, id, newHash string) error
	Revoke(ctx context.Context, id string, now time.Time) error
	SetProviderStatus(ctx context.Context, id string, status market.ProviderStatus, now time.Time) (market.Account, error)
	CreateOffer(ctx context.Context, n catalog.NewOffer) (market.Offer, error)
	UpdateOffer(ctx context.Context, u catalog.OfferUpdate) (market.Offer, error)
	// SubmitUpdate queues an update for the next group commit and calls
	// done with its result; see catalog.Store.SubmitUpdate.
	SubmitUpdate(u catalog.OfferUpdate, done catalog.Completer)
	DeleteOffer(ctx context.Context, id, providerID string, now time.Time) error
	Offer(ctx context.Context, id string) (market.Offer, error)
	ListOffers(ctx context.Context, f catalog.OfferFilter) ([]market.Offer, string, error)
	Reserve(ctx context.Context, r catalog.Reservation) (catalog.Reserved, error)
	ReserveAll(ctx context.Context, parts []catalog.Reservation) (catalog.Reserved, error)
	OrderLease(ctx context.Context, m market.MarketKey, orderID string) (string, error)
	Leases(ctx context.Context, providerID string, limit int64) ([]market.Lease, error)
	Lease(ctx context.Context, id string) (market.Lease, error)
	SetLeaseStatus(ctx context.Context, providerID, id string, to market.LeaseStatus) (market.Lease, error)
	CancelLease(ctx context.Context, m market.MarketKey, leaseID, offerID string, refund market.Trade, now time.Time) error
}

// Ledger keeps programmes, vouchers, holds and orders.
type Ledger interface {
	CreateProgram(ctx context.Context, p market.Program) error
	Program(ctx context.Context, id string) (market.Program, error)
	Programs(ctx context.Context) ([]market.Program, error)
	ProgramBudget(ctx context.Context, id string) (ledger.Budget, error)
	IssueVoucher(ctx context.Context, v market.Voucher) error
	Vouchers(ctx context.Context, smeID string) ([]ledger.VoucherState, error)
	AllVouchers(ctx context.Context) ([]ledger.VoucherState, error)
	Funds(ctx context.Context, smeID string, now time.Time) ([]ledger.Funds, error)
	BeginOrder(ctx context.Context, smeID, key, fingerprint, orderID string, now time.Time) (ledger.Begin, error)
	SaveDraft(ctx context.Context, d ledger.Draft) error
	Draft(ctx context.Context, smeID, orderID string) (ledger.Draft, bool, error)
	FailOrder(ctx context.Context, smeID, key, result string) error
	ForgetKey(ctx context.Context, smeID, key string) error
	HoldDiscount(ctx context.Context, h ledger.Hold) error
	ReleaseDiscount(ctx context.Context, h ledger.Hold) error
	Complete(ctx context.Context, o market.Order, key string, h *ledger.Hold) error
	StaleHolds(ctx context.Context, before time.Time, max int64) ([]ledger.Hold, error)
	TrackCheckout(ctx context.Context, smeID, orderID string, m market.MarketKey, now time.Time) error
	UntrackCheckout(ctx context.Context, smeID, orderID string, m market.MarketKey) error
	StaleCheckouts(ctx context.Context, before time.Time, max int64) ([]ledger.PendingCheckout, error)
	RestOrder(ctx context.Context, o market.Order) error
	RestingOrders(ctx context.Context) ([]market.Order, error)
	ClaimResting(ctx context.Context, smeID, orderID, owner string, ttl time.Duration) (market.Order, bool, error)
	ReleaseClaim(ctx context.Context, smeID, orderID string) error
	EndResting(ctx context.Context, smeID, orderID string, to market.OrderStatus, now time.Time) (market.Order, error)
	DoneResting(ctx context.Context, smeID, orderID string) error
	ExpiredResting(ctx context.Context, now time.Time) ([][2]string, error)
	RestingPosition(ctx context.Context) (string, error)
	FollowResting(ctx context.Context, from string, block time.Duration, apply func([]ledger.RestingEvent)) error
	CancelFilled(ctx context.Context, o market.Order, now time.Time) (market.Order, error)
	Order(ctx context.Context, id string) (market.Order, error)
	SMEOrder(ctx context.Context, smeID, id string) (market.Order, error)
	Orders(ctx context.Context, smeID string, limit int64) ([]market.Order, error)
}

// History answers the regulator's questions from the trade history.
type History interface {
	Ping(ctx context.Context) error
	Trades(ctx context.Context, f history.TradeFilter) ([]market.Trade, string, error)
	ReferencePrices(ctx context.Context, since time.Time) (map[market.MarketKey]decimal.Decimal, error)
	PriceIndex(ctx context.Context, f history.AnalyticsFilter, interval string) ([]history.PricePoint, error)
	OHLC(ctx context.Context, f history.AnalyticsFilter, interval string) ([]history.Candle, error)
	Concentration(ctx context.Context, f history.AnalyticsFilter, by string) (history.Concentration, error)
	Subsidies(ctx context.Context, f history.AnalyticsFilter, groupBy string) ([]history.SubsidyGroup, error)
	PriceHikes(ctx context.Context, f history.AnalyticsFilter, basisPoints int64) ([]history.PriceHike, error)
	VoucherPairs(ctx context.Context, f history.AnalyticsFilter) ([]history.VoucherPair, error)
	TradePairs(ctx context.Context, f history.AnalyticsFilter) ([]history.VoucherPair, error)
	OrderDiscounts(ctx context.Context, f history.AnalyticsFilter) ([]history.OrderDiscount, error)
	ProgramDiscounts(ctx context.Context, f history.AnalyticsFilter) (map[string]decimal.Decimal, error)
	MarketVolumes(ctx context.Context, f history.AnalyticsFilter) ([]history.MarketVolume, error)
}

var (
	_ OfferStore = (*catalog.Store)(nil)
	_ Ledger     = (*ledger.Store)(nil)
	_ History    = (*history.Store)(nil)
)
