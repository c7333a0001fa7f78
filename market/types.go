package market

import (
	"time"

	"github.com/shopspring/decimal"
)

// Role is what an account may do.
type Role string

// The roles of the public API.
const (
	RoleAdmin     Role = "admin"
	RoleRegulator Role = "regulator"
	RoleProvider  Role = "provider"
	RoleSME       Role = "sme"
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool {
	switch r {
	case RoleAdmin, RoleRegulator, RoleProvider, RoleSME:
		return true
	}
	return false
}

// ProviderStatus is a provider's standing with the regulator.
type ProviderStatus string

// Provider statuses. New provider accounts are pending.
const (
	ProviderPending   ProviderStatus = "pending"
	ProviderApproved  ProviderStatus = "approved"
	ProviderSuspended ProviderStatus = "suspended"
)

// Company sizes of an account.
const (
	SizeMicro  = "micro"
	SizeSmall  = "small"
	SizeMedium = "medium"
	SizeLarge  = "large"
)

// ValidSize reports whether s is a known company size ("" is allowed and
// means unknown).
func ValidSize(s string) bool {
	switch s {
	case "", SizeMicro, SizeSmall, SizeMedium, SizeLarge:
		return true
	}
	return false
}

// Account is a party of the market: the operator, a regulator, a provider or
// an SME. Status is set for providers only.
type Account struct {
	ID               string         `json:"id"`
	Role             Role           `json:"role"`
	Name             string         `json:"name"`
	Region           string         `json:"region,omitempty"`
	Size             string         `json:"size,omitempty"`
	Startup          bool           `json:"startup"`
	RelatedPartyKeys []string       `json:"related_party_keys"`
	Certifications   []string       `json:"certifications"`
	Status           ProviderStatus `json:"status,omitempty"`
	Revoked          bool           `json:"revoked,omitempty"`
	CreatedAt        time.Time      `json:"created_at"`
}

// Approved reports whether a provider account may list and be matched.
func (a Account) Approved() bool {
	return a.Role == RoleProvider && a.Status == ProviderApproved && !a.Revoked
}

// RelatedTo reports whether a and b share a related-party key (tax id, legal
// representative, bank account, …).
func (a Account) RelatedTo(b Account) bool {
	for _, k := range a.RelatedPartyKeys {
		for _, l := range b.RelatedPartyKeys {
			if k == l {
				return true
			}
		}
	}
	return false
}

// HasCertifications reports whether a holds every certification in want.
func (a Account) HasCertifications(want []string) bool {
	for _, w := range want {
		found := false
		for _, c := range a.Certifications {
			if c == w {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Unit is what a resource class is sold in.
type Unit string

// Units of sale.
const (
	UnitGPUHour  Unit = "gpu-hour"
	UnitVCPUHour Unit = "vcpu-hour"
)

// ResourceClass fixes what is sold and its unit. Domestic marks domestic
// accelerators, which programmes may subsidise at a higher rate.
type ResourceClass struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Unit     Unit   `json:"unit"`
	Domestic bool   `json:"domestic"`
	// Typical is a typical price per unit-hour in CNY, for demo data.
	Typical decimal.Decimal `json:"-"`
}

// Region is where capacity sits.
type Region struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// MarketKey names a market: a resource class in a region.
type MarketKey struct {
	Class  string
	Region string
}

func (m MarketKey) String() string { return m.Class + ":" + m.Region }

// OfferStatus is whether an offer can be matched.
type OfferStatus string

// Offer statuses.
const (
	OfferActive  OfferStatus = "active"
	OfferDeleted OfferStatus = "deleted"
)

// Offer is capacity a provider sells in one market at one price.
type Offer struct {
	ID            string          `json:"id"`
	ProviderID    string          `json:"provider_id"`
	ResourceClass string          `json:"resource_class"`
	Region        string          `json:"region"`
	Units         int64           `json:"units"`
	UnitsFree     int64           `json:"units_free"`
	Price         decimal.Decimal `json:"price"`
	// ListPrice is the price the offer was first published at: the reference
	// price of the subsidy-capture guard until market history exists.
	ListPrice decimal.Decimal `json:"list_price"`
	MaxHours  int64           `json:"max_hours"`
	Specs     map[string]any  `json:"specs,omitempty"`
	Version   int64           `json:"version"`
	Status    OfferStatus     `json:"status"`
	// PriceAt is when the current price was set; earlier prices win ties.
	PriceAt   time.Time `json:"price_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Market returns the market the offer is listed in.
func (o Offer) Market() MarketKey { return MarketKey{Class: o.ResourceClass, Region: o.Region} }

// TimeInForce says what happens to a job that cannot fill at once.
type TimeInForce string

// Time-in-force values: ioc fills now or fails; gtc rests until expires_at.
const (
	IOC TimeInForce = "ioc"
	GTC TimeInForce = "gtc"
)

// Job is what an SME wants to buy.
type Job struct {
	ResourceClass  string          `json:"resource_class"`
	Regions        []string        `json:"regions"`
	Units          int64           `json:"units"`
	Hours          int64           `json:"hours"`
	MaxPrice       decimal.Decimal `json:"max_price"` // zero: no limit
	Certifications []string        `json:"certifications"`
	UseVouchers    bool            `json:"use_vouchers"`
	TimeInForce    TimeInForce     `json:"time_in_force"`
	ExpiresAt      time.Time       `json:"expires_at"`
	AllowSplit     bool            `json:"allow_split"`
}

// HasMaxPrice reports whether the job limits the price.
func (j Job) HasMaxPrice() bool { return j.MaxPrice.IsPositive() }

// InRegion reports whether the job accepts capacity in region.
func (j Job) InRegion(region string) bool {
	if len(j.Regions) == 0 {
		return true
	}
	for _, r := range j.Regions {
		if r == region {
			return true
		}
	}
	return false
}

// OrderStatus is where an order stands.
type OrderStatus string

// Order statuses.
const (
	OrderFilled    OrderStatus = "filled"
	OrderResting   OrderStatus = "resting"
	OrderCancelled OrderStatus = "cancelled"
	OrderExpired   OrderStatus = "expired"
)

// Order is an SME's purchase: the job, and once filled, what was bought at
// which amounts.
type Order struct {
	ID            string          `json:"id"`
	SMEID         string          `json:"sme_id"`
	Status        OrderStatus     `json:"status"`
	Job           Job             `json:"job"`
	OfferID       string          `json:"offer_id,omitempty"`
	ProviderID    string          `json:"provider_id,omitempty"`
	LeaseID       string          `json:"lease_id,omitempty"`
	ResourceClass string          `json:"resource_class"`
	Region        string          `json:"region,omitempty"`
	UnitPrice     decimal.Decimal `json:"unit_price"`
	Units         int64           `json:"units"`
	Hours         int64           `json:"hours"`
	Gross         decimal.Decimal `json:"gross"`
	Discount      decimal.Decimal `json:"discount"`
	Net           decimal.Decimal `json:"net"`
	VoucherID     string          `json:"voucher_id,omitempty"`
	ProgramID     string          `json:"program_id,omitempty"`
	// Parts are the offers a split order was filled from (allow_split); the
	// order's offer, provider and lease are then the first part's and its unit
	// price the average weighted by units.
	Parts []OrderPart `json:"parts,omitempty"`
	// IdempotencyKey is the key the order was placed with.
	IdempotencyKey string    `json:"idempotency_key,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`
}

// OrderPart is the share of a split order filled from one offer.
type OrderPart struct {
	OfferID    string          `json:"offer_id"`
	ProviderID string          `json:"provider_id"`
	LeaseID    string          `json:"lease_id"`
	Units      int64           `json:"units"`
	UnitPrice  decimal.Decimal `json:"unit_price"`
	Gross      decimal.Decimal `json:"gross"`
	Discount   decimal.Decimal `json:"discount"`
	Net        decimal.Decimal `json:"net"`
}

// LeaseStatus is where a lease stands.
type LeaseStatus string

// Lease statuses.
const (
	LeaseReserved  LeaseStatus = "reserved"
	LeaseStarted   LeaseStatus = "started"
	LeaseCompleted LeaseStatus = "completed"
	LeaseFailed    LeaseStatus = "failed"
	LeaseCancelled LeaseStatus = "cancelled"
)

// Lease is capacity reserved on an offer for one order.
type Lease struct {
	ID            string          `json:"id"`
	OrderID       string          `json:"order_id"`
	OfferID       string          `json:"offer_id"`
	ProviderID    string          `json:"provider_id"`
	SMEID         string          `json:"sme_id"`
	ResourceClass string          `json:"resource_class"`
	Region        string          `json:"region"`
	Units         int64           `json:"units"`
	Hours         int64           `json:"hours"`
	UnitPrice     decimal.Decimal `json:"unit_price"`
	Status        LeaseStatus     `json:"status"`
	CreatedAt     time.Time       `json:"created_at"`
}

// Trade is a committed sale, as the history keeps it.
type Trade struct {
	ID            string          `json:"id"`
	OrderID       string          `json:"order_id"`
	LeaseID       string          `json:"lease_id"`
	OfferID       string          `json:"offer_id"`
	ProviderID    string          `json:"provider_id"`
	SMEID         string          `json:"sme_id"`
	ResourceClass string          `json:"resource_class"`
	Region        string          `json:"region"`
	Units         int64           `json:"units"`
	Hours         int64           `json:"hours"`
	UnitPrice     decimal.Decimal `json:"unit_price"`
	Gross         decimal.Decimal `json:"gross"`
	Discount      decimal.Decimal `json:"discount"`
	Net           decimal.Decimal `json:"net"`
	VoucherID     string          `json:"voucher_id"`
	ProgramID     string          `json:"program_id"`
	TS            time.Time       `json:"ts"`
}

// Tick is an accepted price or capacity change of an offer, as the history
// keeps it.
type Tick struct {
	OfferID       string          `json:"offer_id"`
	ProviderID    string          `json:"provider_id"`
	ResourceClass string          `json:"resource_class"`
	Region        string          `json:"region"`
	Price         decimal.Decimal `json:"price"`
	UnitsFree     int64           `json:"units_free"`
	Version       int64           `json:"version"`
	TS            time.Time       `json:"ts"`
}

// Program is a voucher programme run by a regulator. Zero PerOrderCap,
// DomesticRate or StartupRate mean none. Empty scope lists mean all.
type Program struct {
	ID                  string          `json:"id"`
	Name                string          `json:"name"`
	Rate                decimal.Decimal `json:"rate"`
	DomesticRate        decimal.Decimal `json:"domestic_rate"`
	StartupRate         decimal.Decimal `json:"startup_rate"`
	PerOrderCap         decimal.Decimal `json:"per_order_cap"`
	AnnualCapPerCompany decimal.Decimal `json:"annual_cap_per_company"`
	Budget              decimal.Decimal `json:"budget"`
	ValidFrom           time.Time       `json:"valid_from"`
	ValidTo             time.Time       `json:"valid_to"`
	ResourceClasses     []string        `json:"resource_classes"`
	Regions             []string        `json:"regions"`
	Providers           []string        `json:"providers"`
	CreatedAt           time.Time       `json:"created_at"`
}

// MaxRate is the highest subsidy rate a programme may pay.
var MaxRate = decimal.RequireFromString("0.60")

// Voucher is a grant from a programme to one SME. Balance is what is left
// after captured redemptions; holds in flight are tracked by the ledger.
type Voucher struct {
	ID        string          `json:"id"`
	ProgramID string          `json:"program_id"`
	HolderID  string          `json:"holder_id"`
	Amount    decimal.Decimal `json:"amount"`
	Balance   decimal.Decimal `json:"balance"`
	ExpiresAt time.Time       `json:"expires_at"`
	CreatedAt time.Time       `json:"created_at"`
}

// Redemption is a captured voucher discount, as the history keeps it.
type Redemption struct {
	OrderID   string          `json:"order_id"`
	VoucherID string          `json:"voucher_id"`
	ProgramID string          `json:"program_id"`
	SMEID     string          `json:"sme_id"`
	Amount    decimal.Decimal `json:"amount"`
	TS        time.Time       `json:"ts"`
}
