package broker

import (
	"context"
	"sort"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/shopspring/decimal"

	"computebroker/broker/hub"
	"computebroker/catalog"
	"computebroker/history"
	"computebroker/ledger"
	"computebroker/market"
)

// The regulator's view of the programmes' money and of the capacity on
// sale: budget burn with an exhaustion forecast, and capacity sold vs
// listed.

// BudgetForecast is a programme's budget use and, at the rate its vouchers
// paid over the last WindowDays, when its budget runs out.
type BudgetForecast struct {
	Program    market.Program
	Budget     ledger.Budget
	WindowDays int
	// Burned is what the programme paid in discounts in the window
	// (refunded orders left out); BurnPerDay is Burned / WindowDays.
	Burned, BurnPerDay decimal.Decimal
	// DaysLeft (Left ÷ BurnPerDay) and ExhaustsAt are nil when nothing was
	// burned in the window.
	DaysLeft   *decimal.Decimal
	ExhaustsAt *time.Time
	// ExhaustsBeforeEnd: the budget runs out before the programme ends.
	ExhaustsBeforeEnd bool
}

// maxBudgetWindow bounds the burn window, in days.
const maxBudgetWindow = 366

// Budgets forecasts every programme's budget at the burn rate of the last
// days (regulator or operator), programmes by id.
func (s *Service) Budgets(ctx context.Context, caller market.Account, days int) ([]BudgetForecast, error) {
	if err := requireRole(caller, market.RoleRegulator, market.RoleAdmin); err != nil {
		return nil, err
	}
	if days < 1 || days > maxBudgetWindow {
		return nil, market.Invalid("days must be from 1 to %d", maxBudgetWindow)
	}
	now := s.now()
	programs, err := s.ledger.Programs(ctx)
	if err != nil {
		return nil, err
	}
	burned, err := s.history.ProgramDiscounts(ctx, history.AnalyticsFilter{From: now.AddDate(0, 0, -days), To: now})
	if err != nil {
		return nil, err
	}
	out := make([]BudgetForecast, 0, len(programs))
	perDay := decimal.NewFromInt(int64(days))
	for _, p := range programs {
		b, err := s.ledger.ProgramBudget(ctx, p.ID)
		if err != nil {
			return nil, err
		}
		f := BudgetForecast{Program: p, Budget: b, WindowDays: days, Burned: burned[p.ID]}
		f.BurnPerDay = f.Burned.DivRound(perDay, market.AmountScale)
		if f.Burned.IsPositive() {
			// Left ÷ (Burned ÷ days), kept exact until the last step.
			left := decimal.Max(b.Left(), decimal.Zero)
			dl := left.Mul(perDay).DivRound(f.Burned, 1)
			f.DaysLeft = &dl
			secs := left.Mul(perDay).Mul(decimal.NewFromInt(86400)).Div(f.Burned).IntPart()
			at := now.Add(time.Duration(secs) * time.Second).UTC().Truncate(time.Second)
			f.ExhaustsAt = &at
			f.ExhaustsBeforeEnd = !p.ValidTo.IsZero() && at.Before(p.ValidTo)
		}
		out = append(out, f)
	}
	return out, nil
}

// MarketCapacity is what a market lists now and what it sold in a window.
type MarketCapacity struct {
	Market market.MarketKey
	// Offers, UnitsListed and UnitsFree describe the listed active offers
	// now; the units leased are UnitsListed − UnitsFree.
	Offers                 int
	UnitsListed, UnitsFree int64
	// SoldUnitHours and Trades sum the trades of the window (refunded ones
	// left out).
	SoldUnitHours, Trades int64
}

// Capacity compares, per market the filter selects, the capacity listed now
// with the unit-hours sold in the filter's window (regulator or operator).
// Markets with neither offers nor trades are left out.
func (s *Service) Capacity(ctx context.Context, caller market.Account, f AnalyticsQuery) ([]MarketCapacity, error) {
	if err := s.checkAnalytics(caller, f); err != nil {
		return nil, err
	}
	byMarket := map[market.MarketKey]*MarketCapacity{}
	get := func(m market.MarketKey) *MarketCapacity {
		c := byMarket[m]
		if c == nil {
			c = &MarketCapacity{Market: m}
			byMarket[m] = c
		}
		return c
	}
	var markets []market.MarketKey
	for _, m := range s.cfg.Catalog.Markets() {
		if (f.ResourceClass == "" || m.Class == f.ResourceClass) && (f.Region == "" || m.Region == f.Region) {
			markets = append(markets, m)
		}
	}
	offers, err := s.listedOffers(ctx, markets)
	if err != nil {
		return nil, err
	}
	for _, o := range offers {
		c := get(o.Market())
		c.Offers++
		c.UnitsListed += o.Units
		c.UnitsFree += o.UnitsFree
	}
	vols, err := s.history.MarketVolumes(ctx, f)
	if err != nil {
		return nil, err
	}
	for _, v := range vols {
		c := get(market.MarketKey{Class: v.ResourceClass, Region: v.Region})
		c.SoldUnitHours, c.Trades = v.UnitHours, v.Trades
	}
	out := make([]MarketCapacity, 0, len(byMarket))
	for _, c := range byMarket {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Market, out[j].Market
		if a.Class != b.Class {
			return a.Class < b.Class
		}
		return a.Region < b.Region
	})
	return out, nil
}

// listedOffers returns the listed active offers of the markets: from this
// brokerd's books when it has them (current within about a second), else
// from Redis.
func (s *Service) listedOffers(ctx context.Context, markets []market.MarketKey) ([]market.Offer, error) {
	if s.live != nil {
		var out []market.Offer
		for _, m := range markets {
			offers, err := s.live.Snapshot(hub.Filter{ResourceClass: m.Class, Region: m.Region})
			if err != nil {
				return nil, err
			}
			out = append(out, offers...)
		}
		return out, nil
	}
	var out []market.Offer
	for _, m := range markets {
		cursor := ""
		for {
			page, next, err := s.offers.ListOffers(ctx, catalog.OfferFilter{Markets: []market.MarketKey{m}, Limit: 500, Cursor: cursor})
			if err != nil {
				return nil, err
			}
			out = append(out, page...)
			if next == "" {
				break
			}
			cursor = next
		}
	}
	return out, nil
}

// ---- HTTP ----

type budgetView struct {
	ProgramID         string  `json:"program_id"`
	Name              string  `json:"name"`
	Budget            string  `json:"budget"`
	Spent             string  `json:"spent"`
	Held              string  `json:"held"`
	Left              string  `json:"left"`
	Burned            string  `json:"burned"`
	BurnPerDay        string  `json:"burn_per_day"`
	DaysLeft          *string `json:"days_left"`
	ExhaustsAt        *string `json:"exhausts_at"`
	ValidTo           *string `json:"valid_to"`
	ExhaustsBeforeEnd bool    `json:"exhausts_before_end"`
}

func (h *handlers) budgets(c *fiber.Ctx) error {
	days := 30
	if v := c.Query("days"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return market.Invalid("days must be a whole number of days")
		}
		days = n
	}
	fs, err := h.svc.Budgets(c.UserContext(), caller(c), days)
	if err != nil {
		return err
	}
	out := make([]budgetView, len(fs))
	for i, f := range fs {
		v := budgetView{ProgramID: f.Program.ID, Name: f.Program.Name, Budget: market.FormatAmount(f.Budget.Budget),
			Spent: market.FormatAmount(f.Budget.Spent), Held: market.FormatAmount(f.Budget.Held),
			Left: market.FormatAmount(f.Budget.Left()), Burned: market.FormatAmount(f.Burned),
			BurnPerDay: market.FormatAmount(f.BurnPerDay), ExhaustsBeforeEnd: f.ExhaustsBeforeEnd}
		if f.DaysLeft != nil {
			d := f.DaysLeft.StringFixed(1)
			v.DaysLeft = &d
		}
		if f.ExhaustsAt != nil {
			t := ts(*f.ExhaustsAt)
			v.ExhaustsAt = &t
		}
		if !f.Program.ValidTo.IsZero() {
			t := ts(f.Program.ValidTo)
			v.ValidTo = &t
		}
		out[i] = v
	}
	return c.JSON(fiber.Map{"window_days": days, "programs": out})
}

type capacityView struct {
	ResourceClass string `json:"resource_class"`
	Region        string `json:"region"`
	Offers        int    `json:"offers"`
	UnitsListed   int64  `json:"units_listed"`
	UnitsFree     int64  `json:"units_free"`
	UnitsLeased   int64  `json:"units_leased"`
	Utilisation   string `json:"utilisation"`
	SoldUnitHours int64  `json:"sold_unit_hours"`
	Trades        int64  `json:"trades"`
}

func (h *handlers) capacity(c *fiber.Ctx) error {
	q, err := analyticsQuery(c)
	if err != nil {
		return err
	}
	cs, err := h.svc.Capacity(c.UserContext(), caller(c), q)
	if err != nil {
		return err
	}
	out := make([]capacityView, len(cs))
	for i, m := range cs {
		util := decimal.Zero
		if m.UnitsListed > 0 {
			util = decimal.NewFromInt(m.UnitsListed-m.UnitsFree).DivRound(decimal.NewFromInt(m.UnitsListed), 4)
		}
		out[i] = capacityView{ResourceClass: m.Market.Class, Region: m.Market.Region, Offers: m.Offers,
			UnitsListed: m.UnitsListed, UnitsFree: m.UnitsFree, UnitsLeased: m.UnitsListed - m.UnitsFree,
			Utilisation: util.StringFixed(4), SoldUnitHours: m.SoldUnitHours, Trades: m.Trades}
	}
	return c.JSON(fiber.Map{"markets": out})
}
