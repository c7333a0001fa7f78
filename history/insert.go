package history

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/ext"
	"github.com/shopspring/decimal"

	"computebroker/market"
)

// tradeColumns are the columns of trades and refunds, in insert order.
const tradeColumns = "id, order_id, lease_id, offer_id, provider_id, sme_id, resource_class, region, " +
	"units, hours, unit_price, gross, discount, net, voucher_id, program_id, ts, inserted_at"

var (
	// maxPriceCol and maxAmountCol are the exclusive bounds of the
	// Decimal(18,6) and Decimal(18,2) columns.
	maxPriceCol = decimal.New(1, 12)
	// maxPriceTicks is maxPriceCol in market price ticks.
	maxPriceTicks = maxPriceCol.Shift(market.PriceScale).IntPart()
	maxAmountCol  = decimal.New(1, 16)
	// DateTime holds whole seconds from 1970 up to early 2106.
	minTS = time.Unix(0, 0)
	maxTS = time.Unix(1<<32-1, 0)
)

// InsertTrades stores committed trades and, for those with a discount, their
// voucher redemptions. Trades whose id is already stored, or repeated within
// trades, are skipped; a concurrent insert of the same id collapses in the
// ReplacingMergeTree and reads see one row. A trade delivered again must be
// the same trade (same ts): the lookup searches the batch's time range and
// the table collapses rows on (ts, id). Calling it again with the same
// trades after a failure is safe.
//
// It returns an invalid_argument *market.Error, and stores nothing, when a
// trade has no id or time or an amount does not fit its column, and an
// unavailable *market.Error when ClickHouse fails.
func (s *Store) InsertTrades(ctx context.Context, trades []market.Trade) error {
	_, err := s.insertTrades(ctx, "trades", trades, true)
	return err
}

// InsertRefunds stores refunds (trades with the refunded amounts, from the
// cancellation of an order), deduplicated by id like InsertTrades. It returns
// the same errors.
func (s *Store) InsertRefunds(ctx context.Context, refunds []market.Trade) error {
	_, err := s.insertTrades(ctx, "refunds", refunds, false)
	return err
}

// InsertTicks stores price ticks. A tick repeated with the same offer and
// version collapses in the ReplacingMergeTree; ticks are too many to look
// up before inserting. It returns an invalid_argument *market.Error, storing
// nothing, for a tick without offer id or time or with a price that does not
// fit, and an unavailable *market.Error when ClickHouse fails.
func (s *Store) InsertTicks(ctx context.Context, ticks []market.Tick) error {
	_, err := s.insertTicks(ctx, ticks)
	return err
}

// insertTrades stores the trades not yet in table and returns how many rows
// it wrote. With redemptions, it then stores the voucher redemptions of the
// trades with a discount.
//
// Trades go in before their redemptions, so a redemption is only ever
// stored after its trade: the redemptions of trades that were missing are
// missing too and need no lookup; only those of trades found already stored
// (a retry after a failure between the two inserts) are looked up. A
// concurrent writer may make both insert the same rows; the
// ReplacingMergeTree collapses them.
func (s *Store) insertTrades(ctx context.Context, table string, trades []market.Trade, redemptions bool) (int, error) {
	for i := range trades {
		if err := checkTrade(&trades[i]); err != nil {
			return 0, err
		}
	}
	trades = uniqueTrades(trades)
	if len(trades) == 0 {
		return 0, nil
	}
	fresh, err := s.missing(ctx, table, "id", trades, func(t *market.Trade) string { return t.ID })
	if err != nil {
		return 0, err
	}
	if len(fresh) > 0 {
		if err := s.sendTrades(ctx, table, fresh); err != nil {
			return 0, err
		}
	}
	if redemptions {
		if err := s.redeem(ctx, trades, fresh); err != nil {
			return 0, err
		}
	}
	return len(fresh), nil
}

// redeem stores the voucher redemptions of trades with a discount: those of
// fresh trades, and those of the other trades that are missing.
func (s *Store) redeem(ctx context.Context, trades, fresh []market.Trade) error {
	isFresh := make(map[string]bool, len(fresh))
	for i := range fresh {
		isFresh[fresh[i].ID] = true
	}
	var nTodo, nStored int
	for i := range trades {
		if t := &trades[i]; t.Discount.IsPositive() {
			if isFresh[t.ID] {
				nTodo++
			} else {
				nStored++
			}
		}
	}
	todo, stored := make([]market.Trade, 0, nTodo+nStored), make([]market.Trade, 0, nStored)
	for i := range trades {
		if t := &trades[i]; t.Discount.IsPositive() {
			if isFresh[t.ID] {
				todo = append(todo, *t)
			} else {
				stored = append(stored, *t)
			}
		}
	}
	lost, err := s.missing(ctx, "voucher_redemptions", "trade_id", stored, func(t *market.Trade) string { return t.ID })
	if err != nil {
		return err
	}
	return s.sendRedemptions(ctx, append(todo, lost...))
}

// sendTrades inserts trades into table as one block.
func (s *Store) sendTrades(ctx context.Context, table string, trades []market.Trade) error {
	n := len(trades)
	var (
		id, orderID, leaseID, offerID, providerID, smeID = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		class, region, voucherID, programID              = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		units, hours                                     = make([]int64, n), make([]int64, n)
		price, gross, discount, net                      = make([]decimal.Decimal, n), make([]decimal.Decimal, n), make([]decimal.Decimal, n), make([]decimal.Decimal, n)
		ts, insertedAt                                   = make([]time.Time, n), make([]time.Time, n)
	)
	now := s.now().UTC().Truncate(time.Second)
	for i := range trades {
		t := &trades[i]
		id[i], orderID[i], leaseID[i], offerID[i], providerID[i], smeID[i] = t.ID, t.OrderID, t.LeaseID, t.OfferID, t.ProviderID, t.SMEID
		class[i], region[i], voucherID[i], programID[i] = t.ResourceClass, t.Region, t.VoucherID, t.ProgramID
		units[i], hours[i] = t.Units, t.Hours
		price[i], gross[i], discount[i], net[i] = t.UnitPrice, t.Gross, t.Discount, t.Net
		ts[i], insertedAt[i] = t.TS, now
	}
	return s.sendColumns(ctx, table, tradeColumns, id, orderID, leaseID, offerID, providerID, smeID,
		class, region, units, hours, price, gross, discount, net, voucherID, programID, ts, insertedAt)
}

// sendRedemptions inserts the voucher redemptions of trades.
func (s *Store) sendRedemptions(ctx context.Context, trades []market.Trade) error {
	if len(trades) == 0 {
		return nil
	}
	fresh := trades
	n := len(fresh)
	tradeID, orderID, voucherID, programID, smeID := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	amount, ts, insertedAt := make([]decimal.Decimal, n), make([]time.Time, n), make([]time.Time, n)
	now := s.now().UTC().Truncate(time.Second)
	for i, t := range fresh {
		tradeID[i], orderID[i], voucherID[i], programID[i], smeID[i] = t.ID, t.OrderID, t.VoucherID, t.ProgramID, t.SMEID
		amount[i], ts[i], insertedAt[i] = t.Discount, t.TS, now
	}
	return s.sendColumns(ctx, "voucher_redemptions",
		"trade_id, order_id, voucher_id, program_id, sme_id, amount, ts, inserted_at",
		tradeID, orderID, voucherID, programID, smeID, amount, ts, insertedAt)
}

// insertTicks stores ticks, deduplicated within the call by (offer, version).
func (s *Store) insertTicks(ctx context.Context, ticks []market.Tick) (int, error) {
	type key struct {
		offer   string
		version int64
	}
	for i := range ticks {
		if err := checkTick(&ticks[i]); err != nil {
			return 0, err
		}
	}
	// The columns are filled straight from ticks, skipping repeats.
	m := len(ticks)
	seen := make(map[key]struct{}, m)
	offerID, providerID, class, region := make([]string, 0, m), make([]string, 0, m), make([]string, 0, m), make([]string, 0, m)
	price, unitsFree, version := make([]decimal.Decimal, 0, m), make([]int64, 0, m), make([]int64, 0, m)
	ts := make([]time.Time, 0, m)
	for i := range ticks {
		t := &ticks[i]
		k := key{t.OfferID, t.Version}
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		offerID, providerID = append(offerID, t.OfferID), append(providerID, t.ProviderID)
		class, region = append(class, t.ResourceClass), append(region, t.Region)
		price, unitsFree, version, ts = append(price, t.Price), append(unitsFree, t.UnitsFree), append(version, t.Version), append(ts, t.TS)
	}
	n := len(offerID)
	if n == 0 {
		return 0, nil
	}
	insertedAt := make([]time.Time, n)
	now := s.now().UTC().Truncate(time.Second)
	for i := range insertedAt {
		insertedAt[i] = now
	}
	err := s.sendColumns(ctx, "price_ticks",
		"offer_id, provider_id, resource_class, region, price, units_free, version, ts, inserted_at",
		offerID, providerID, class, region, price, unitsFree, version, ts, insertedAt)
	if err != nil {
		return 0, err
	}
	return n, nil
}

// sendColumns inserts one block given column by column.
func (s *Store) sendColumns(ctx context.Context, table, columns string, cols ...any) (err error) {
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.table(table)+" ("+columns+")")
	if err != nil {
		return unavailable("insert into "+table, err)
	}
	defer func() {
		if err != nil {
			_ = b.Abort()
		}
	}()
	for i, c := range cols {
		if err := b.Column(i).Append(c); err != nil {
			return unavailable("insert into "+table, err)
		}
	}
	if err := b.Send(); err != nil {
		return unavailable("insert into "+table, err)
	}
	return nil
}

// missing returns the items whose key is not yet stored in table.keyCol.
// The keys travel as an external table (one round trip, no query text to
// parse), and the items' time range narrows the lookup to the partitions
// and granules that may hold them.
func (s *Store) missing(ctx context.Context, table, keyCol string, items []market.Trade, key func(*market.Trade) string) ([]market.Trade, error) {
	if len(items) == 0 {
		return nil, nil
	}
	keys, err := ext.NewTable("batch_keys", ext.Column("k", "String"))
	if err != nil {
		return nil, unavailable("look up stored ids", err)
	}
	lo, hi := items[0].TS, items[0].TS
	for i := range items {
		if err := keys.Append(key(&items[i])); err != nil {
			return nil, unavailable("look up stored ids", err)
		}
		if items[i].TS.Before(lo) {
			lo = items[i].TS
		}
		if items[i].TS.After(hi) {
			hi = items[i].TS
		}
	}
	q := fmt.Sprintf("SELECT %s FROM %s WHERE ts >= toDateTime(?) AND ts <= toDateTime(?) AND %s IN (SELECT k FROM batch_keys)",
		keyCol, s.table(table), keyCol)
	found := make(map[string]bool)
	if err := s.collectIDs(clickhouse.Context(ctx, clickhouse.WithExternalTable(keys)), q, found, lo.Unix(), hi.Unix()); err != nil {
		return nil, err
	}
	if len(found) == 0 {
		return items, nil
	}
	out := make([]market.Trade, 0, len(items))
	for i := range items {
		if !found[key(&items[i])] {
			out = append(out, items[i])
		}
	}
	return out, nil
}

func (s *Store) collectIDs(ctx context.Context, q string, into map[string]bool, args ...any) error {
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return unavailable("look up stored ids", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return unavailable("look up stored ids", err)
		}
		into[id] = true
	}
	if err := rows.Err(); err != nil {
		return unavailable("look up stored ids", err)
	}
	return nil
}

// uniqueTrades drops later repeats of an id, keeping the order. It returns
// trades itself when no id repeats.
func uniqueTrades(trades []market.Trade) []market.Trade {
	seen := make(map[string]struct{}, len(trades))
	for i := range trades {
		if _, dup := seen[trades[i].ID]; dup {
			out := make([]market.Trade, i, len(trades)-1)
			copy(out, trades[:i])
			for _, t := range trades[i+1:] {
				if _, dup := seen[t.ID]; !dup {
					seen[t.ID] = struct{}{}
					out = append(out, t)
				}
			}
			return out
		}
		seen[trades[i].ID] = struct{}{}
	}
	return trades
}

// checkTrade rejects a trade that cannot be stored exactly.
func checkTrade(t *market.Trade) error {
	if t.ID == "" {
		return market.Invalid("history: trade without id")
	}
	if err := checkTS(t.TS); err != nil {
		return market.Invalid("history: trade %s: %s", t.ID, err.Message)
	}
	if !fits(t.UnitPrice, 6, maxPriceCol) {
		return market.Invalid("history: trade %s: unit_price %s does not fit Decimal(18,6)", t.ID, t.UnitPrice)
	}
	for _, a := range []struct {
		name string
		d    decimal.Decimal
	}{{"gross", t.Gross}, {"discount", t.Discount}, {"net", t.Net}} {
		if !fits(a.d, 2, maxAmountCol) {
			return market.Invalid("history: trade %s: %s %s does not fit Decimal(18,2)", t.ID, a.name, a.d)
		}
	}
	return nil
}

// checkTick rejects a tick that cannot be stored exactly.
func checkTick(t *market.Tick) error {
	if t.OfferID == "" {
		return market.Invalid("history: tick without offer id")
	}
	if err := checkTS(t.TS); err != nil {
		return market.Invalid("history: tick of %s: %s", t.OfferID, err.Message)
	}
	// A price PriceTicks takes (≤ 4 places, below 2^62 ticks) fits at once;
	// only others go through the big.Int comparison.
	if ticks, ok := market.PriceTicks(t.Price); ok && ticks < maxPriceTicks {
		return nil
	}
	if !fits(t.Price, 6, maxPriceCol) {
		return market.Invalid("history: tick of %s: price %s does not fit Decimal(18,6)", t.OfferID, t.Price)
	}
	return nil
}

func checkTS(ts time.Time) *market.Error {
	if ts.IsZero() || ts.Before(minTS) || ts.After(maxTS) {
		return market.Invalid("time %s outside the DateTime range", ts.Format(time.RFC3339))
	}
	return nil
}

// fits reports whether d has at most scale decimal places and |d| < limit,
// so that a Decimal column stores it without rounding or overflow.
func fits(d decimal.Decimal, scale int32, limit decimal.Decimal) bool {
	return d.Equal(d.Truncate(scale)) && d.Abs().LessThan(limit)
}
