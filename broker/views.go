package broker

import (
	"encoding/json"
	"time"

	"computebroker/market"
	"computebroker/matching"
)

// The JSON shapes of API.md. Money and prices are decimal strings.

type accountView struct {
	ID               string   `json:"id"`
	Role             string   `json:"role"`
	Name             string   `json:"name"`
	Region           string   `json:"region,omitempty"`
	Size             string   `json:"size,omitempty"`
	Startup          bool     `json:"startup"`
	RelatedPartyKeys []string `json:"related_party_keys"`
	Certifications   []string `json:"certifications"`
	Status           string   `json:"status,omitempty"`
	Revoked          bool     `json:"revoked,omitempty"`
	CreatedAt        string   `json:"created_at"`
	Token            string   `json:"token,omitempty"`
}

func ts(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func nonNil(xs []string) []string {
	if xs == nil {
		return []string{}
	}
	return xs
}

func viewAccount(a market.Account) accountView {
	return accountView{ID: a.ID, Role: string(a.Role), Name: a.Name, Region: a.Region, Size: a.Size, Startup: a.Startup,
		RelatedPartyKeys: nonNil(a.RelatedPartyKeys), Certifications: nonNil(a.Certifications), Status: string(a.Status),
		Revoked: a.Revoked, CreatedAt: ts(a.CreatedAt)}
}

type offerView struct {
	ID            string         `json:"id"`
	ProviderID    string         `json:"provider_id"`
	ResourceClass string         `json:"resource_class"`
	Region        string         `json:"region"`
	Units         int64          `json:"units"`
	UnitsFree     int64          `json:"units_free"`
	Price         string         `json:"price"`
	ListPrice     string         `json:"list_price"`
	MaxHours      int64          `json:"max_hours"`
	Specs         map[string]any `json:"specs,omitempty"`
	Version       int64          `json:"version"`
	Status        string         `json:"status"`
	UpdatedAt     string         `json:"updated_at"`
}

func viewOffer(o market.Offer) offerView {
	return offerView{ID: o.ID, ProviderID: o.ProviderID, ResourceClass: o.ResourceClass, Region: o.Region,
		Units: o.Units, UnitsFree: o.UnitsFree, Price: market.FormatPrice(o.Price), ListPrice: market.FormatPrice(o.ListPrice),
		MaxHours: o.MaxHours, Specs: o.Specs, Version: o.Version, Status: string(o.Status), UpdatedAt: ts(o.UpdatedAt)}
}

func viewOffers(os []market.Offer) []offerView {
	out := make([]offerView, len(os))
	for i, o := range os {
		out[i] = viewOffer(o)
	}
	return out
}

type programView struct {
	ID                  string   `json:"id"`
	Name                string   `json:"name"`
	Rate                string   `json:"rate"`
	DomesticRate        string   `json:"domestic_rate,omitempty"`
	StartupRate         string   `json:"startup_rate,omitempty"`
	PerOrderCap         string   `json:"per_order_cap,omitempty"`
	AnnualCapPerCompany string   `json:"annual_cap_per_company"`
	Budget              string   `json:"budget"`
	ValidFrom           string   `json:"valid_from"`
	ValidTo             string   `json:"valid_to"`
	ResourceClasses     []string `json:"resource_classes"`
	Regions             []string `json:"regions"`
	Providers           []string `json:"providers"`
	CreatedAt           string   `json:"created_at"`
}

func viewProgram(p market.Program) programView {
	v := programView{ID: p.ID, Name: p.Name, Rate: market.FormatPrice(p.Rate), AnnualCapPerCompany: market.FormatAmount(p.AnnualCapPerCompany),
		Budget: market.FormatAmount(p.Budget), ValidFrom: ts(p.ValidFrom), ValidTo: ts(p.ValidTo),
		ResourceClasses: nonNil(p.ResourceClasses), Regions: nonNil(p.Regions), Providers: nonNil(p.Providers), CreatedAt: ts(p.CreatedAt)}
	if p.DomesticRate.IsPositive() {
		v.DomesticRate = market.FormatPrice(p.DomesticRate)
	}
	if p.StartupRate.IsPositive() {
		v.StartupRate = market.FormatPrice(p.StartupRate)
	}
	if p.PerOrderCap.IsPositive() {
		v.PerOrderCap = market.FormatAmount(p.PerOrderCap)
	}
	return v
}

type voucherView struct {
	ID        string `json:"id"`
	ProgramID string `json:"program_id"`
	HolderID  string `json:"holder_id"`
	Amount    string `json:"amount"`
	Balance   string `json:"balance"`
	ExpiresAt string `json:"expires_at"`
	CreatedAt string `json:"created_at"`
}

func viewVoucher(v market.Voucher) voucherView {
	return voucherView{ID: v.ID, ProgramID: v.ProgramID, HolderID: v.HolderID, Amount: market.FormatAmount(v.Amount),
		Balance: market.FormatAmount(v.Balance), ExpiresAt: ts(v.ExpiresAt), CreatedAt: ts(v.CreatedAt)}
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

type quoteView struct {
	OfferID       string      `json:"offer_id"`
	ProviderID    string      `json:"provider_id"`
	ResourceClass string      `json:"resource_class"`
	Region        string      `json:"region"`
	UnitPrice     string      `json:"unit_price"`
	Units         int64       `json:"units"`
	Hours         int64       `json:"hours"`
	Gross         string      `json:"gross"`
	Discount      string      `json:"discount"`
	Net           string      `json:"net"`
	VoucherID     *string     `json:"voucher_id"`
	ProgramID     *string     `json:"program_id"`
	Alternatives  []quoteView `json:"alternatives,omitempty"`
}

func viewMatch(m matching.Match, job JobRequest) quoteView {
	return quoteView{OfferID: m.Offer.ID, ProviderID: m.Offer.ProviderID, ResourceClass: m.Offer.ResourceClass, Region: m.Offer.Region,
		UnitPrice: market.FormatPrice(m.UnitPrice), Units: job.Units, Hours: job.Hours, Gross: market.FormatAmount(m.Gross),
		Discount: market.FormatAmount(m.Discount), Net: market.FormatAmount(m.Net), VoucherID: optional(m.VoucherID), ProgramID: optional(m.ProgramID)}
}

type orderView struct {
	ID            string          `json:"id"`
	SMEID         string          `json:"sme_id"`
	Status        string          `json:"status"`
	OfferID       string          `json:"offer_id"`
	ProviderID    string          `json:"provider_id"`
	LeaseID       string          `json:"lease_id"`
	ResourceClass string          `json:"resource_class"`
	Region        string          `json:"region"`
	UnitPrice     string          `json:"unit_price"`
	Units         int64           `json:"units"`
	Hours         int64           `json:"hours"`
	Gross         string          `json:"gross"`
	Discount      string          `json:"discount"`
	Net           string          `json:"net"`
	VoucherID     *string         `json:"voucher_id"`
	ProgramID     *string         `json:"program_id"`
	Parts         []orderPartView `json:"parts,omitempty"`
	CreatedAt     string          `json:"created_at"`
	UpdatedAt     string          `json:"updated_at"`
}

type orderPartView struct {
	OfferID    string `json:"offer_id"`
	ProviderID string `json:"provider_id"`
	LeaseID    string `json:"lease_id"`
	Units      int64  `json:"units"`
	UnitPrice  string `json:"unit_price"`
	Gross      string `json:"gross"`
	Discount   string `json:"discount"`
	Net        string `json:"net"`
}

func viewOrder(o market.Order) orderView {
	v := viewOrderFields(o)
	for _, p := range o.Parts {
		v.Parts = append(v.Parts, orderPartView{OfferID: p.OfferID, ProviderID: p.ProviderID, LeaseID: p.LeaseID, Units: p.Units,
			UnitPrice: market.FormatPrice(p.UnitPrice), Gross: market.FormatAmount(p.Gross), Discount: market.FormatAmount(p.Discount),
			Net: market.FormatAmount(p.Net)})
	}
	return v
}

func viewOrderFields(o market.Order) orderView {
	return orderView{ID: o.ID, SMEID: o.SMEID, Status: string(o.Status), OfferID: o.OfferID, ProviderID: o.ProviderID, LeaseID: o.LeaseID,
		ResourceClass: o.ResourceClass, Region: o.Region, UnitPrice: market.FormatPrice(o.UnitPrice), Units: o.Units, Hours: o.Hours,
		Gross: market.FormatAmount(o.Gross), Discount: market.FormatAmount(o.Discount), Net: market.FormatAmount(o.Net),
		VoucherID: optional(o.VoucherID), ProgramID: optional(o.ProgramID), CreatedAt: ts(o.CreatedAt), UpdatedAt: ts(o.UpdatedAt)}
}

type leaseView struct {
	ID            string `json:"id"`
	OrderID       string `json:"order_id"`
	OfferID       string `json:"offer_id"`
	ProviderID    string `json:"provider_id"`
	SMEID         string `json:"sme_id"`
	ResourceClass string `json:"resource_class"`
	Region        string `json:"region"`
	Units         int64  `json:"units"`
	Hours         int64  `json:"hours"`
	UnitPrice     string `json:"unit_price"`
	Status        string `json:"status"`
	CreatedAt     string `json:"created_at"`
}

func viewLease(l market.Lease) leaseView {
	return leaseView{ID: l.ID, OrderID: l.OrderID, OfferID: l.OfferID, ProviderID: l.ProviderID, SMEID: l.SMEID,
		ResourceClass: l.ResourceClass, Region: l.Region, Units: l.Units, Hours: l.Hours, UnitPrice: market.FormatPrice(l.UnitPrice),
		Status: string(l.Status), CreatedAt: ts(l.CreatedAt)}
}

type tradeView struct {
	ID            string `json:"id"`
	OrderID       string `json:"order_id"`
	ProviderID    string `json:"provider_id"`
	SMEID         string `json:"sme_id"`
	ResourceClass string `json:"resource_class"`
	Region        string `json:"region"`
	Units         int64  `json:"units"`
	Hours         int64  `json:"hours"`
	UnitPrice     string `json:"unit_price"`
	Gross         string `json:"gross"`
	Discount      string `json:"discount"`
	Net           string `json:"net"`
	VoucherID     string `json:"voucher_id"`
	ProgramID     string `json:"program_id"`
	TS            string `json:"ts"`
}

// tradeColumns are the CSV columns, in the order of tradeView.
var tradeColumns = []string{"id", "order_id", "provider_id", "sme_id", "resource_class", "region", "units", "hours", "unit_price", "gross", "discount", "net", "voucher_id", "program_id", "ts"}

func viewTrade(t market.Trade) tradeView {
	return tradeView{ID: t.ID, OrderID: t.OrderID, ProviderID: t.ProviderID, SMEID: t.SMEID, ResourceClass: t.ResourceClass, Region: t.Region,
		Units: t.Units, Hours: t.Hours, UnitPrice: market.FormatPrice(t.UnitPrice), Gross: market.FormatAmount(t.Gross),
		Discount: market.FormatAmount(t.Discount), Net: market.FormatAmount(t.Net), VoucherID: t.VoucherID, ProgramID: t.ProgramID, TS: ts(t.TS)}
}

func (t tradeView) row() []string {
	return []string{t.ID, t.OrderID, t.ProviderID, t.SMEID, t.ResourceClass, t.Region, itoa64(t.Units), itoa64(t.Hours), t.UnitPrice, t.Gross, t.Discount, t.Net, t.VoucherID, t.ProgramID, t.TS}
}

// appendOfferView encodes an offer as GET /api/v1/offers does, for the
// market stream's snapshots.
func appendOfferView(dst []byte, o market.Offer) []byte {
	b, err := json.Marshal(viewOffer(o))
	if err != nil {
		return append(dst, "null"...)
	}
	return append(dst, b...)
}
