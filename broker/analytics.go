package broker

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/shopspring/decimal"

	"computebroker/history"
	"computebroker/market"
)

// AnalyticsQuery filters the regulator's aggregates.
type AnalyticsQuery = history.AnalyticsFilter

// Alert thresholds.
const (
	// hikeWarnBP and hikeHighBP: a price tick more than 10% (25%) above its
	// offer's list price is a warning (high).
	hikeWarnBP = 1000
	hikeHighBP = 2500
	// capGamingMin orders of one SME under one programme with a discount in
	// [90%, 100%) of the per-order cap make a cap_gaming alert.
	capGamingMin = 3
)

// Alert is one suspicious pattern found in the history.
type Alert struct {
	Kind     string // related_party, round_trip, price_hike or cap_gaming
	Severity string // warning or high
	Subject  string // the SME or offer concerned
	Detail   string
	TS       time.Time
}

// checkAnalytics admits regulators and the operator with a valid filter.
func (s *Service) checkAnalytics(caller market.Account, f AnalyticsQuery) error {
	if err := requireRole(caller, market.RoleRegulator, market.RoleAdmin); err != nil {
		return err
	}
	if f.ResourceClass != "" {
		if _, ok := s.cfg.Catalog.Class(f.ResourceClass); !ok {
			return market.Invalid("unknown resource_class %q", f.ResourceClass)
		}
	}
	if f.Region != "" {
		if _, ok := s.cfg.Catalog.Region(f.Region); !ok {
			return market.Invalid("unknown region %q", f.Region)
		}
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		return market.Invalid("from must be before to")
	}
	return nil
}

func checkInterval(interval string) error {
	if _, ok := history.IntervalSeconds[interval]; !ok {
		return market.Invalid("interval must be 1m, 1h or 1d")
	}
	return nil
}

// PriceIndex returns the VWAP per bucket (regulator or operator).
func (s *Service) PriceIndex(ctx context.Context, caller market.Account, f AnalyticsQuery, interval string) ([]history.PricePoint, error) {
	if err := s.checkAnalytics(caller, f); err != nil {
		return nil, err
	}
	if err := checkInterval(interval); err != nil {
		return nil, err
	}
	return s.history.PriceIndex(ctx, f, interval)
}

// OHLC returns price candles (regulator or operator).
func (s *Service) OHLC(ctx context.Context, caller market.Account, f AnalyticsQuery, interval string) ([]history.Candle, error) {
	if err := s.checkAnalytics(caller, f); err != nil {
		return nil, err
	}
	if err := checkInterval(interval); err != nil {
		return nil, err
	}
	return s.history.OHLC(ctx, f, interval)
}

// Concentration returns providers' shares, HHI and CR4 (regulator or
// operator).
func (s *Service) Concentration(ctx context.Context, caller market.Account, f AnalyticsQuery, by string) (history.Concentration, error) {
	if err := s.checkAnalytics(caller, f); err != nil {
		return history.Concentration{}, err
	}
	switch by {
	case "gpu_hours", "revenue", "subsidy":
	default:
		return history.Concentration{}, market.Invalid("by must be gpu_hours, revenue or subsidy")
	}
	return s.history.Concentration(ctx, f, by)
}

// Subsidies returns the subsidised trades grouped by region, size (the SME's
// company size, "unknown" when it has none), provider or program, and the
// Gini coefficient of the discount received per recipient SME.
func (s *Service) Subsidies(ctx context.Context, caller market.Account, f AnalyticsQuery, groupBy string) ([]history.SubsidyGroup, decimal.Decimal, error) {
	if err := s.checkAnalytics(caller, f); err != nil {
		return nil, decimal.Zero, err
	}
	switch groupBy {
	case "region", "size", "provider", "program":
	default:
		return nil, decimal.Zero, market.Invalid("group_by must be region, size, provider or program")
	}
	perSME, err := s.history.Subsidies(ctx, f, "sme")
	if err != nil {
		return nil, decimal.Zero, err
	}
	amounts := make([]decimal.Decimal, len(perSME))
	for i, g := range perSME {
		amounts[i] = g.Discount
	}
	gini := history.Gini(amounts)
	if groupBy != "size" {
		groups, err := s.history.Subsidies(ctx, f, groupBy)
		return groups, gini, err
	}
	bySize := map[string]*history.SubsidyGroup{}
	for _, g := range perSME {
		size := "unknown"
		a, err := s.offers.Account(ctx, g.Key)
		switch {
		case err == nil && a.Size != "":
			size = a.Size
		case err != nil && !market.IsCode(err, market.CodeNotFound):
			return nil, decimal.Zero, err
		}
		sg := bySize[size]
		if sg == nil {
			sg = &history.SubsidyGroup{Key: size}
			bySize[size] = sg
		}
		// An order belongs to one SME, so per-SME order counts add up.
		sg.Gross, sg.Discount = sg.Gross.Add(g.Gross), sg.Discount.Add(g.Discount)
		sg.Orders += g.Orders
		sg.Recipients++
	}
	groups := make([]history.SubsidyGroup, 0, len(bySize))
	for _, g := range bySize {
		groups = append(groups, *g)
	}
	history.SortSubsidyGroups(groups)
	return groups, gini, nil
}

// Alerts looks for related-party subsidised trades, round trips, price
// hikes over list price and per-order-cap gaming (regulator or operator),
// oldest first.
func (s *Service) Alerts(ctx context.Context, caller market.Account, f AnalyticsQuery) ([]Alert, error) {
	if err := s.checkAnalytics(caller, f); err != nil {
		return nil, err
	}
	alerts := []Alert{}
	accounts := map[string]*market.Account{}
	account := func(id string) (*market.Account, error) {
		if a, ok := accounts[id]; ok {
			return a, nil
		}
		a, err := s.offers.Account(ctx, id)
		if market.IsCode(err, market.CodeNotFound) {
			accounts[id] = nil
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		accounts[id] = &a
		return &a, nil
	}

	pairs, err := s.history.VoucherPairs(ctx, f)
	if err != nil {
		return nil, err
	}
	for _, p := range pairs {
		sme, err := account(p.SMEID)
		if err != nil {
			return nil, err
		}
		prov, err := account(p.ProviderID)
		if err != nil {
			return nil, err
		}
		if sme == nil || prov == nil || !sme.RelatedTo(*prov) {
			continue
		}
		alerts = append(alerts, Alert{Kind: "related_party", Severity: "high", Subject: p.SMEID, TS: p.LastTS,
			Detail: fmt.Sprintf("SME %s and provider %s share a related-party key; %d subsidised trades, discount %s",
				p.SMEID, p.ProviderID, p.Trades, market.FormatAmount(p.Discount))})
	}

	trips, err := s.roundTrips(ctx, f, account)
	if err != nil {
		return nil, err
	}
	alerts = append(alerts, trips...)

	hikes, err := s.history.PriceHikes(ctx, f, hikeWarnBP)
	if err != nil {
		return nil, err
	}
	hundred := decimal.NewFromInt(100)
	for _, h := range hikes {
		severity := "warning"
		if h.Price.Mul(decimal.NewFromInt(10000)).GreaterThan(h.ListPrice.Mul(decimal.NewFromInt(10000 + hikeHighBP))) {
			severity = "high"
		}
		pct := h.Price.Sub(h.ListPrice).Mul(hundred).DivRound(h.ListPrice, 2)
		alerts = append(alerts, Alert{Kind: "price_hike", Severity: severity, Subject: h.OfferID, TS: h.TS,
			Detail: fmt.Sprintf("offer %s of provider %s (%s, %s) priced %s at version %d, %s%% above its list price %s",
				h.OfferID, h.ProviderID, h.ResourceClass, h.Region, market.FormatPrice(h.Price), h.Version,
				pct.StringFixed(2), market.FormatPrice(h.ListPrice))})
	}

	orders, err := s.history.OrderDiscounts(ctx, f)
	if err != nil {
		return nil, err
	}
	programs := map[string]*market.Program{}
	type key struct{ sme, program string }
	type tally struct {
		n    int
		last time.Time
		cap  decimal.Decimal
	}
	near := map[key]*tally{}
	var keys []key
	for _, o := range orders {
		p, ok := programs[o.ProgramID]
		if !ok {
			prog, err := s.ledger.Program(ctx, o.ProgramID)
			switch {
			case err == nil:
				p = &prog
			case !market.IsCode(err, market.CodeNotFound):
				return nil, err
			}
			programs[o.ProgramID] = p
		}
		if p == nil || p.PerOrderCap.Sign() <= 0 {
			continue
		}
		floor := p.PerOrderCap.Mul(decimal.RequireFromString("0.9"))
		if o.Discount.LessThan(floor) || !o.Discount.LessThan(p.PerOrderCap) {
			continue
		}
		k := key{o.SMEID, o.ProgramID}
		t := near[k]
		if t == nil {
			t = &tally{cap: p.PerOrderCap}
			near[k] = t
			keys = append(keys, k)
		}
		t.n++
		if o.TS.After(t.last) {
			t.last = o.TS
		}
	}
	for _, k := range keys {
		t := near[k]
		if t.n < capGamingMin {
			continue
		}
		alerts = append(alerts, Alert{Kind: "cap_gaming", Severity: "warning", Subject: k.sme, TS: t.last,
			Detail: fmt.Sprintf("SME %s placed %d orders under programme %s with a discount within 10%% below its per-order cap %s",
				k.sme, t.n, k.program, market.FormatAmount(t.cap))})
	}

	sort.SliceStable(alerts, func(i, j int) bool {
		a, b := alerts[i], alerts[j]
		if !a.TS.Equal(b.TS) {
			return a.TS.Before(b.TS)
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.Subject < b.Subject
	})
	return alerts, nil
}

// roundTrips finds two related-party groups that sold capacity to each
// other: SME a bought from provider p while SME b, related to p, bought
// from provider q, related to a, with a voucher on at least one side. Each
// group pays the other with public money and gets it back as revenue. A
// trade inside one group is related_party, not a round trip. One alert per
// pair of trading pairs, its subject the SME of the first pair.
func (s *Service) roundTrips(ctx context.Context, f AnalyticsQuery, account func(string) (*market.Account, error)) ([]Alert, error) {
	pairs, err := s.history.TradePairs(ctx, f)
	if err != nil {
		return nil, err
	}
	type pairKey struct{ sme, provider string }
	index := make(map[pairKey]int, len(pairs))
	smesByKey, provsByKey := map[string][]string{}, map[string][]string{}
	seen := map[string]bool{}
	for i, p := range pairs {
		index[pairKey{p.SMEID, p.ProviderID}] = i
		for _, id := range []string{p.SMEID, p.ProviderID} {
			if seen[id] {
				continue
			}
			seen[id] = true
			a, err := account(id)
			if err != nil {
				return nil, err
			}
			if a == nil {
				continue
			}
			for _, k := range a.RelatedPartyKeys {
				if a.Role == market.RoleSME {
					smesByKey[k] = append(smesByKey[k], id)
				} else if a.Role == market.RoleProvider {
					provsByKey[k] = append(provsByKey[k], id)
				}
			}
		}
	}
	var out []Alert
	reported := map[[2]int]bool{}
	for i, p := range pairs {
		a, err := account(p.SMEID)
		if err != nil {
			return nil, err
		}
		prov, err := account(p.ProviderID)
		if err != nil {
			return nil, err
		}
		if a == nil || prov == nil || a.RelatedTo(*prov) {
			continue
		}
		for _, k := range prov.RelatedPartyKeys {
			for _, b := range smesByKey[k] { // SMEs related to p
				for _, l := range a.RelatedPartyKeys {
					for _, q := range provsByKey[l] { // providers related to a
						j, ok := index[pairKey{b, q}]
						if !ok || j == i {
							continue
						}
						o := pairs[j]
						key := [2]int{min(i, j), max(i, j)}
						if reported[key] || !p.Discount.IsPositive() && !o.Discount.IsPositive() {
							continue
						}
						reported[key] = true
						first, second := p, o
						if j < i {
							first, second = o, p
						}
						ts := first.LastTS
						if second.LastTS.After(ts) {
							ts = second.LastTS
						}
						out = append(out, Alert{Kind: "round_trip", Severity: "high", Subject: first.SMEID, TS: ts,
							Detail: fmt.Sprintf("SME %s bought from provider %s (%d trades, discount %s) while SME %s bought from provider %s (%d trades, discount %s): each SME is related to the other's provider",
								first.SMEID, first.ProviderID, first.Trades, market.FormatAmount(first.Discount),
								second.SMEID, second.ProviderID, second.Trades, market.FormatAmount(second.Discount))})
					}
				}
			}
		}
	}
	return out, nil
}

// ---- HTTP ----

// analyticsQuery reads the from, to, resource_class and region filters.
func analyticsQuery(c *fiber.Ctx) (AnalyticsQuery, error) {
	var q AnalyticsQuery
	var err error
	if q.From, err = queryTime(c, "from"); err != nil {
		return q, err
	}
	if q.To, err = queryTime(c, "to"); err != nil {
		return q, err
	}
	q.ResourceClass, q.Region = c.Query("resource_class"), c.Query("region")
	return q, nil
}

type pricePointView struct {
	Bucket string `json:"bucket"`
	VWAP   string `json:"vwap"`
	Units  int64  `json:"units"`
	Trades uint64 `json:"trades"`
}

func (h *handlers) priceIndex(c *fiber.Ctx) error {
	q, err := analyticsQuery(c)
	if err != nil {
		return err
	}
	pts, err := h.svc.PriceIndex(c.UserContext(), caller(c), q, c.Query("interval"))
	if err != nil {
		return err
	}
	out := make([]pricePointView, len(pts))
	for i, p := range pts {
		out[i] = pricePointView{Bucket: ts(p.Bucket), VWAP: p.VWAP.StringFixed(4), Units: p.Units, Trades: p.Trades}
	}
	return c.JSON(fiber.Map{"points": out})
}

type candleView struct {
	Bucket string `json:"bucket"`
	Open   string `json:"open"`
	High   string `json:"high"`
	Low    string `json:"low"`
	Close  string `json:"close"`
	Units  int64  `json:"units"`
}

func (h *handlers) ohlc(c *fiber.Ctx) error {
	q, err := analyticsQuery(c)
	if err != nil {
		return err
	}
	cs, err := h.svc.OHLC(c.UserContext(), caller(c), q, c.Query("interval"))
	if err != nil {
		return err
	}
	out := make([]candleView, len(cs))
	for i, k := range cs {
		out[i] = candleView{Bucket: ts(k.Bucket), Open: market.FormatPrice(k.Open), High: market.FormatPrice(k.High),
			Low: market.FormatPrice(k.Low), Close: market.FormatPrice(k.Close), Units: k.Units}
	}
	return c.JSON(fiber.Map{"candles": out})
}

type shareView struct {
	ProviderID string `json:"provider_id"`
	Share      string `json:"share"`
}

func (h *handlers) concentration(c *fiber.Ctx) error {
	q, err := analyticsQuery(c)
	if err != nil {
		return err
	}
	k, err := h.svc.Concentration(c.UserContext(), caller(c), q, c.Query("by"))
	if err != nil {
		return err
	}
	shares := make([]shareView, len(k.Shares))
	for i, sh := range k.Shares {
		shares[i] = shareView{ProviderID: sh.ProviderID, Share: sh.Share.StringFixed(4)}
	}
	return c.JSON(fiber.Map{"hhi": k.HHI.StringFixed(2), "cr4": k.CR4.StringFixed(4), "shares": shares})
}

type subsidyGroupView struct {
	Key        string `json:"key"`
	Gross      string `json:"gross"`
	Discount   string `json:"discount"`
	Orders     uint64 `json:"orders"`
	Recipients uint64 `json:"recipients"`
}

func (h *handlers) subsidies(c *fiber.Ctx) error {
	q, err := analyticsQuery(c)
	if err != nil {
		return err
	}
	gs, gini, err := h.svc.Subsidies(c.UserContext(), caller(c), q, c.Query("group_by"))
	if err != nil {
		return err
	}
	out := make([]subsidyGroupView, len(gs))
	for i, g := range gs {
		out[i] = subsidyGroupView{Key: g.Key, Gross: market.FormatAmount(g.Gross), Discount: market.FormatAmount(g.Discount),
			Orders: g.Orders, Recipients: g.Recipients}
	}
	return c.JSON(fiber.Map{"groups": out, "gini": gini.StringFixed(4)})
}

type alertView struct {
	Kind     string `json:"kind"`
	Severity string `json:"severity"`
	Subject  string `json:"subject"`
	Detail   string `json:"detail"`
	TS       string `json:"ts"`
}

func (h *handlers) alerts(c *fiber.Ctx) error {
	q, err := analyticsQuery(c)
	if err != nil {
		return err
	}
	as, err := h.svc.Alerts(c.UserContext(), caller(c), q)
	if err != nil {
		return err
	}
	out := make([]alertView, len(as))
	for i, a := range as {
		out[i] = alertView{Kind: a.Kind, Severity: a.Severity, Subject: a.Subject, Detail: a.Detail, TS: ts(a.TS)}
	}
	return c.JSON(fiber.Map{"alerts": out})
}
