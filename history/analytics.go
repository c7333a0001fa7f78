package history

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"computebroker/market"
)

// AnalyticsFilter selects the trades (or price ticks) an analytics query
// looks at: From inclusive, To exclusive, a zero time leaves that end open;
// empty ResourceClass or Region match all.
//
// Trades whose lease was refunded (the order was cancelled before it
// started) are left out of every trade aggregate: they did not happen.
type AnalyticsFilter struct {
	From, To      time.Time
	ResourceClass string
	Region        string
}

// where returns the WHERE clause (without the keyword) and its arguments for
// the trades or price_ticks tables; refunded excludes refunded leases.
func (s *Store) where(f AnalyticsFilter, refunded bool) (string, []any) {
	var (
		where []string
		args  []any
	)
	if !f.From.IsZero() {
		where = append(where, "ts >= toDateTime(?)")
		args = append(args, clampUnix(f.From))
	}
	if !f.To.IsZero() {
		where = append(where, "ts < toDateTime(?)")
		args = append(args, clampUnix(f.To))
	}
	if f.ResourceClass != "" {
		where = append(where, "resource_class = ?")
		args = append(args, f.ResourceClass)
	}
	if f.Region != "" {
		where = append(where, "region = ?")
		args = append(args, f.Region)
	}
	if refunded {
		where = append(where, "lease_id NOT IN (SELECT lease_id FROM "+s.table("refunds")+" FINAL)")
	}
	if len(where) == 0 {
		return "1", nil
	}
	return strings.Join(where, " AND "), args
}

// IntervalSeconds maps the interval names of the API to bucket widths.
var IntervalSeconds = map[string]int64{"1m": 60, "1h": 3600, "1d": 86400}

// bucketExpr is the UTC start of ts's bucket in Unix seconds. Integer
// arithmetic instead of toStartOfHour/Day keeps buckets in UTC whatever the
// server's time zone.
func bucketExpr(interval string) (string, error) {
	n, ok := IntervalSeconds[interval]
	if !ok {
		return "", market.Invalid("interval must be 1m, 1h or 1d")
	}
	w := strconv.FormatInt(n, 10)
	return "intDiv(toUInt32(ts), " + w + ") * " + w, nil
}

// PricePoint is one bucket of the price index.
type PricePoint struct {
	Bucket time.Time
	// VWAP is Σ(unit_price × units × hours) / Σ(units × hours), rounded
	// half away from zero to 4 places.
	VWAP decimal.Decimal
	// Units is Σ(units × hours): GPU-hours or vCPU-hours.
	Units  int64
	Trades uint64
}

// PriceIndex returns the volume-weighted average price per bucket, oldest
// first; empty buckets are absent. interval is 1m, 1h or 1d.
func (s *Store) PriceIndex(ctx context.Context, f AnalyticsFilter, interval string) ([]PricePoint, error) {
	b, err := bucketExpr(interval)
	if err != nil {
		return nil, err
	}
	w, args := s.where(f, true)
	q := "SELECT toUInt32(" + b + ") AS bucket, sum(unit_price * units * hours), sum(units * hours), count() FROM " +
		s.table("trades") + " FINAL WHERE " + w + " GROUP BY bucket ORDER BY bucket"
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, unavailable("query price index", err)
	}
	defer rows.Close()
	var out []PricePoint
	for rows.Next() {
		var (
			bucket uint32
			value  decimal.Decimal
			p      PricePoint
		)
		if err := rows.Scan(&bucket, &value, &p.Units, &p.Trades); err != nil {
			return nil, unavailable("read price index", err)
		}
		p.Bucket = time.Unix(int64(bucket), 0).UTC()
		if p.Units != 0 {
			p.VWAP = value.DivRound(decimal.NewFromInt(p.Units), 4)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable("read price index", err)
	}
	return out, nil
}

// Candle is one OHLC bucket of unit prices.
type Candle struct {
	Bucket                 time.Time
	Open, High, Low, Close decimal.Decimal
	// Units is Σ(units × hours).
	Units int64
}

// OHLC returns price candles per bucket, oldest first: open and close are
// the unit prices of the first and last trade of the bucket by (ts, id).
func (s *Store) OHLC(ctx context.Context, f AnalyticsFilter, interval string) ([]Candle, error) {
	b, err := bucketExpr(interval)
	if err != nil {
		return nil, err
	}
	w, args := s.where(f, true)
	q := "SELECT toUInt32(" + b + ") AS bucket, argMin(unit_price, (ts, id)), max(unit_price), min(unit_price), " +
		"argMax(unit_price, (ts, id)), sum(units * hours) FROM " + s.table("trades") + " FINAL WHERE " + w +
		" GROUP BY bucket ORDER BY bucket"
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, unavailable("query ohlc", err)
	}
	defer rows.Close()
	var out []Candle
	for rows.Next() {
		var (
			bucket uint32
			c      Candle
		)
		if err := rows.Scan(&bucket, &c.Open, &c.High, &c.Low, &c.Close, &c.Units); err != nil {
			return nil, unavailable("read ohlc", err)
		}
		c.Bucket = time.Unix(int64(bucket), 0).UTC()
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable("read ohlc", err)
	}
	return out, nil
}

// concentrationMeasures maps the API's by values to the summed expression.
var concentrationMeasures = map[string]string{
	"gpu_hours": "toDecimal128(sum(units * hours), 0)",
	"revenue":   "sum(gross)",
	"subsidy":   "sum(discount)",
}

// Share is one provider's part of the measured total.
type Share struct {
	ProviderID string
	Value      decimal.Decimal
	// Share is Value / total, a fraction rounded to 4 places.
	Share decimal.Decimal
}

// Concentration is the market concentration over providers.
type Concentration struct {
	// HHI is Σ (100 × share)² over providers with unrounded shares, on
	// 0–10000, rounded to 2 places.
	HHI decimal.Decimal
	// CR4 is the top four providers' part of the total, a fraction rounded
	// to 4 places.
	CR4    decimal.Decimal
	Shares []Share // largest first, then by provider id
}

// Concentration measures providers' shares by gpu_hours (Σ units × hours,
// whatever the class's unit), revenue (Σ gross) or subsidy (Σ discount).
// Providers with a zero value are left out.
func (s *Store) Concentration(ctx context.Context, f AnalyticsFilter, by string) (Concentration, error) {
	m, ok := concentrationMeasures[by]
	if !ok {
		return Concentration{}, market.Invalid("by must be gpu_hours, revenue or subsidy")
	}
	w, args := s.where(f, true)
	q := "SELECT provider_id, " + m + " AS v FROM " + s.table("trades") + " FINAL WHERE " + w +
		" GROUP BY provider_id"
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return Concentration{}, unavailable("query concentration", err)
	}
	defer rows.Close()
	var values []Share
	for rows.Next() {
		var sh Share
		if err := rows.Scan(&sh.ProviderID, &sh.Value); err != nil {
			return Concentration{}, unavailable("read concentration", err)
		}
		values = append(values, sh)
	}
	if err := rows.Err(); err != nil {
		return Concentration{}, unavailable("read concentration", err)
	}
	return ComputeConcentration(values), nil
}

// ComputeConcentration computes shares, HHI and CR4 from the providers'
// values (ProviderID and Value set), exactly in decimal.
func ComputeConcentration(values []Share) Concentration {
	out := Concentration{HHI: decimal.Zero.Round(2), CR4: decimal.Zero.Round(4), Shares: []Share{}}
	total, squares := decimal.Zero, decimal.Zero
	for _, v := range values {
		if v.Value.Sign() <= 0 {
			continue
		}
		total = total.Add(v.Value)
		squares = squares.Add(v.Value.Mul(v.Value))
		out.Shares = append(out.Shares, v)
	}
	if total.Sign() == 0 {
		return out
	}
	sort.Slice(out.Shares, func(i, j int) bool {
		a, b := out.Shares[i], out.Shares[j]
		if c := a.Value.Cmp(b.Value); c != 0 {
			return c > 0
		}
		return a.ProviderID < b.ProviderID
	})
	top := decimal.Zero
	for i := range out.Shares {
		out.Shares[i].Share = out.Shares[i].Value.DivRound(total, 4)
		if i < 4 {
			top = top.Add(out.Shares[i].Value)
		}
	}
	out.HHI = squares.Mul(decimal.NewFromInt(10000)).DivRound(total.Mul(total), 2)
	out.CR4 = top.DivRound(total, 4)
	return out
}

// SubsidyGroup sums the subsidised trades (discount > 0) of one group.
type SubsidyGroup struct {
	Key      string
	Gross    decimal.Decimal
	Discount decimal.Decimal
	// Orders counts distinct orders; Recipients distinct SMEs.
	Orders, Recipients uint64
}

// subsidyKeys maps the group_by values History groups itself to columns.
var subsidyKeys = map[string]string{
	"region":   "region",
	"provider": "provider_id",
	"program":  "program_id",
	"sme":      "sme_id",
}

// Subsidies sums the subsidised trades (discount > 0) by region (the
// market's), provider, program or sme, largest discount first, then by key.
func (s *Store) Subsidies(ctx context.Context, f AnalyticsFilter, groupBy string) ([]SubsidyGroup, error) {
	col, ok := subsidyKeys[groupBy]
	if !ok {
		return nil, market.Invalid("group_by must be region, size, provider or program")
	}
	w, args := s.where(f, true)
	q := "SELECT " + col + " AS k, sum(gross), sum(discount), uniqExact(order_id), uniqExact(sme_id) FROM " +
		s.table("trades") + " FINAL WHERE " + w + " AND discount > 0 GROUP BY k"
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, unavailable("query subsidies", err)
	}
	defer rows.Close()
	out := []SubsidyGroup{}
	for rows.Next() {
		var g SubsidyGroup
		if err := rows.Scan(&g.Key, &g.Gross, &g.Discount, &g.Orders, &g.Recipients); err != nil {
			return nil, unavailable("read subsidies", err)
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable("read subsidies", err)
	}
	SortSubsidyGroups(out)
	return out, nil
}

// SortSubsidyGroups orders groups by discount, largest first, then by key.
func SortSubsidyGroups(gs []SubsidyGroup) {
	sort.Slice(gs, func(i, j int) bool {
		if c := gs[i].Discount.Cmp(gs[j].Discount); c != 0 {
			return c > 0
		}
		return gs[i].Key < gs[j].Key
	})
}

// Gini returns the Gini coefficient of non-negative amounts, 0 (equal) to
// (n−1)/n (one holds all), rounded to 4 places; 0 for none or a zero sum.
// It is Σᵢ (2i − n − 1)·x₍ᵢ₎ / (n · Σ x) over the amounts sorted ascending.
func Gini(amounts []decimal.Decimal) decimal.Decimal {
	xs := append([]decimal.Decimal(nil), amounts...)
	sort.Slice(xs, func(i, j int) bool { return xs[i].LessThan(xs[j]) })
	n := int64(len(xs))
	total, weighted := decimal.Zero, decimal.Zero
	for i, x := range xs {
		total = total.Add(x)
		weighted = weighted.Add(x.Mul(decimal.NewFromInt(2*int64(i+1) - n - 1)))
	}
	if n == 0 || total.Sign() == 0 {
		return decimal.Zero.Round(4)
	}
	return weighted.DivRound(total.Mul(decimal.NewFromInt(n)), 4)
}

// PriceHike is a price tick above its offer's list price (the price of the
// offer's first tick).
type PriceHike struct {
	OfferID, ProviderID, ResourceClass, Region string
	Price, ListPrice                           decimal.Decimal
	Version                                    int64
	TS                                         time.Time
}

// PriceHikes returns the ticks in f whose price exceeds their offer's list
// price by more than basisPoints (1000 for 10%), oldest first.
func (s *Store) PriceHikes(ctx context.Context, f AnalyticsFilter, basisPoints int64) ([]PriceHike, error) {
	w, args := s.where(f, false)
	// price × 10000 > list × (10000 + bp): Decimal times integer stays exact.
	q := "SELECT offer_id, provider_id, resource_class, region, price, list_price, version, toUInt32(ts) FROM (" +
		"SELECT offer_id, provider_id, resource_class, region, price, version, ts FROM " + s.table("price_ticks") +
		" FINAL WHERE " + w + ") ANY INNER JOIN (SELECT offer_id, argMin(price, version) AS list_price FROM " +
		s.table("price_ticks") + " FINAL GROUP BY offer_id) USING offer_id " +
		"WHERE price * 10000 > list_price * " + strconv.FormatInt(10000+basisPoints, 10) + " ORDER BY ts, offer_id, version"
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, unavailable("query price hikes", err)
	}
	defer rows.Close()
	var out []PriceHike
	for rows.Next() {
		var (
			h  PriceHike
			ts uint32
		)
		if err := rows.Scan(&h.OfferID, &h.ProviderID, &h.ResourceClass, &h.Region, &h.Price, &h.ListPrice, &h.Version, &ts); err != nil {
			return nil, unavailable("read price hikes", err)
		}
		h.TS = time.Unix(int64(ts), 0).UTC()
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable("read price hikes", err)
	}
	return out, nil
}

// VoucherPair is the subsidised trading between one SME and one provider.
type VoucherPair struct {
	SMEID, ProviderID string
	Trades            uint64
	Discount          decimal.Decimal
	LastTS            time.Time
}

// VoucherPairs returns the (SME, provider) pairs that traded with a voucher
// applied (discount > 0), by SME then provider.
func (s *Store) VoucherPairs(ctx context.Context, f AnalyticsFilter) ([]VoucherPair, error) {
	return s.pairs(ctx, f, " AND discount > 0")
}

// TradePairs returns every (SME, provider) pair that traded, with or
// without a voucher, by SME then provider; Discount sums the pair's
// discounts.
func (s *Store) TradePairs(ctx context.Context, f AnalyticsFilter) ([]VoucherPair, error) {
	return s.pairs(ctx, f, "")
}

func (s *Store) pairs(ctx context.Context, f AnalyticsFilter, and string) ([]VoucherPair, error) {
	w, args := s.where(f, true)
	q := "SELECT sme_id, provider_id, count(), sum(discount), toUInt32(max(ts)) FROM " + s.table("trades") +
		" FINAL WHERE " + w + and + " GROUP BY sme_id, provider_id ORDER BY sme_id, provider_id"
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, unavailable("query trade pairs", err)
	}
	defer rows.Close()
	var out []VoucherPair
	for rows.Next() {
		var (
			p  VoucherPair
			ts uint32
		)
		if err := rows.Scan(&p.SMEID, &p.ProviderID, &p.Trades, &p.Discount, &ts); err != nil {
			return nil, unavailable("read trade pairs", err)
		}
		p.LastTS = time.Unix(int64(ts), 0).UTC()
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable("read trade pairs", err)
	}
	return out, nil
}

// OrderDiscount is the discount of one subsidised order.
type OrderDiscount struct {
	SMEID, ProgramID, OrderID string
	Discount                  decimal.Decimal
	TS                        time.Time
}

// OrderDiscounts returns the subsidised orders (discount > 0) with their
// total discount, by SME, programme, then time.
func (s *Store) OrderDiscounts(ctx context.Context, f AnalyticsFilter) ([]OrderDiscount, error) {
	w, args := s.where(f, true)
	q := "SELECT sme_id, program_id, order_id, sum(discount), toUInt32(max(ts)) AS t FROM " + s.table("trades") +
		" FINAL WHERE " + w + " AND discount > 0 AND program_id != '' GROUP BY sme_id, program_id, order_id" +
		" ORDER BY sme_id, program_id, t, order_id"
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, unavailable("query order discounts", err)
	}
	defer rows.Close()
	var out []OrderDiscount
	for rows.Next() {
		var (
			o  OrderDiscount
			ts uint32
		)
		if err := rows.Scan(&o.SMEID, &o.ProgramID, &o.OrderID, &o.Discount, &ts); err != nil {
			return nil, unavailable("read order discounts", err)
		}
		o.TS = time.Unix(int64(ts), 0).UTC()
		out = append(out, o)
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable("read order discounts", err)
	}
	return out, nil
}

// ReferencePrices returns each market's unsubsidised VWAP since since: the
// price weighted by units × hours over the trades no voucher paid for (and
// not refunded), to 4 places. Markets without such trades are absent. It is
// the reference of the subsidy-capture guard.
func (s *Store) ReferencePrices(ctx context.Context, since time.Time) (map[market.MarketKey]decimal.Decimal, error) {
	w, args := s.where(AnalyticsFilter{From: since}, true)
	q := "SELECT resource_class, region, sum(unit_price * units * hours), sum(units * hours) FROM " +
		s.table("trades") + " FINAL WHERE " + w + " AND discount = 0 GROUP BY resource_class, region"
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, unavailable("query reference prices", err)
	}
	defer rows.Close()
	out := map[market.MarketKey]decimal.Decimal{}
	for rows.Next() {
		var (
			m     market.MarketKey
			value decimal.Decimal
			qty   int64
		)
		if err := rows.Scan(&m.Class, &m.Region, &value, &qty); err != nil {
			return nil, unavailable("read reference prices", err)
		}
		if qty > 0 {
			out[m] = value.DivRound(decimal.NewFromInt(qty), market.PriceScale)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable("read reference prices", err)
	}
	return out, nil
}

// ProgramDiscounts returns the discount paid under each programme by the
// trades the filter selects, refunded trades left out.
func (s *Store) ProgramDiscounts(ctx context.Context, f AnalyticsFilter) (map[string]decimal.Decimal, error) {
	w, args := s.where(f, true)
	q := "SELECT program_id, sum(discount) FROM " + s.table("trades") +
		" FINAL WHERE " + w + " AND discount > 0 AND program_id != '' GROUP BY program_id"
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, unavailable("query programme discounts", err)
	}
	defer rows.Close()
	out := map[string]decimal.Decimal{}
	for rows.Next() {
		var (
			id string
			d  decimal.Decimal
		)
		if err := rows.Scan(&id, &d); err != nil {
			return nil, unavailable("read programme discounts", err)
		}
		out[id] = d
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable("read programme discounts", err)
	}
	return out, nil
}

// MarketVolume is what one market sold: unit-hours and trades.
type MarketVolume struct {
	ResourceClass, Region string
	UnitHours, Trades     int64
}

// MarketVolumes returns the volume sold per market by the trades the filter
// selects, refunded trades left out, ordered by class and region.
func (s *Store) MarketVolumes(ctx context.Context, f AnalyticsFilter) ([]MarketVolume, error) {
	w, args := s.where(f, true)
	q := "SELECT resource_class, region, sum(units * hours), toInt64(count()) FROM " + s.table("trades") +
		" FINAL WHERE " + w + " GROUP BY resource_class, region ORDER BY resource_class, region"
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, unavailable("query market volumes", err)
	}
	defer rows.Close()
	var out []MarketVolume
	for rows.Next() {
		var v MarketVolume
		if err := rows.Scan(&v.ResourceClass, &v.Region, &v.UnitHours, &v.Trades); err != nil {
			return nil, unavailable("read market volumes", err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable("read market volumes", err)
	}
	return out, nil
}
