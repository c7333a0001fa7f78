package history

import (
	"context"
	"encoding/base64"
	"strconv"
	"strings"
	"time"

	"computebroker/market"
)

// Page sizes of Trades.
const (
	DefaultTradeLimit = 100
	MaxTradeLimit     = 1000
)

// TradeFilter selects trades. From is inclusive and To exclusive; a zero time
// leaves that end open. Empty ResourceClass or Region match all. Limit
// defaults to DefaultTradeLimit and is capped at MaxTradeLimit. Cursor is the
// next value of a previous call with the same filter, or empty for the first
// page.
type TradeFilter struct {
	From, To      time.Time
	ResourceClass string
	Region        string
	Limit         int
	Cursor        string
}

// Trades returns one page of trades ordered by (ts, id), each trade once even
// if it was delivered more than once, and the cursor of the next page, empty
// on the last. TS comes back in UTC, whole seconds.
//
// It returns an invalid_argument *market.Error for a cursor it did not make
// or a negative limit, and an unavailable *market.Error when ClickHouse fails.
func (s *Store) Trades(ctx context.Context, f TradeFilter) (trades []market.Trade, next string, err error) {
	limit := f.Limit
	switch {
	case limit < 0:
		return nil, "", market.Invalid("limit must not be negative")
	case limit == 0:
		limit = DefaultTradeLimit
	case limit > MaxTradeLimit:
		limit = MaxTradeLimit
	}
	cond, args := s.where(AnalyticsFilter{From: f.From, To: f.To, ResourceClass: f.ResourceClass, Region: f.Region}, false)
	where := []string{cond}
	if f.Cursor != "" {
		cts, cid, err := decodeCursor(f.Cursor)
		if err != nil {
			return nil, "", err
		}
		// The plain ts >= bound lets ClickHouse use the primary key; the
		// disjunction does the keyset step.
		where = append(where, "ts >= toDateTime(?)", "(ts > toDateTime(?) OR id > ?)")
		args = append(args, cts, cts, cid)
	}
	q := "SELECT " + tradeColumns + " FROM " + s.table("trades") + " FINAL WHERE " + strings.Join(where, " AND ")
	q += " ORDER BY ts, id LIMIT " + strconv.Itoa(limit+1)

	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, "", unavailable("query trades", err)
	}
	defer rows.Close()
	trades = make([]market.Trade, 0, min(limit+1, 128))
	for rows.Next() {
		var (
			t          market.Trade
			insertedAt time.Time
		)
		if err := rows.Scan(&t.ID, &t.OrderID, &t.LeaseID, &t.OfferID, &t.ProviderID, &t.SMEID,
			&t.ResourceClass, &t.Region, &t.Units, &t.Hours, &t.UnitPrice, &t.Gross, &t.Discount, &t.Net,
			&t.VoucherID, &t.ProgramID, &t.TS, &insertedAt); err != nil {
			return nil, "", unavailable("read trades", err)
		}
		t.TS = t.TS.UTC()
		trades = append(trades, t)
	}
	if err := rows.Err(); err != nil {
		return nil, "", unavailable("read trades", err)
	}
	if len(trades) > limit {
		trades = trades[:limit]
		last := trades[limit-1]
		next = encodeCursor(last.TS.Unix(), last.ID)
	}
	return trades, next, nil
}

// TradeCount returns the number of distinct trades stored.
func (s *Store) TradeCount(ctx context.Context) (uint64, error) {
	return s.count(ctx, "trades")
}

func (s *Store) count(ctx context.Context, table string) (uint64, error) {
	var n uint64
	if err := s.conn.QueryRow(ctx, "SELECT count() FROM "+s.table(table)+" FINAL").Scan(&n); err != nil {
		return 0, unavailable("count "+table, err)
	}
	return n, nil
}

// cursorPrefix versions the cursor format.
const cursorPrefix = "t1:"

// encodeCursor makes the opaque cursor after the trade at (ts, id).
func encodeCursor(ts int64, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + strconv.FormatInt(ts, 10) + ":" + id))
}

// decodeCursor reverses encodeCursor; anything else is invalid_argument.
func decodeCursor(c string) (ts int64, id string, err error) {
	bad := market.Invalid("bad cursor")
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return 0, "", bad
	}
	rest, ok := strings.CutPrefix(string(raw), cursorPrefix)
	if !ok {
		return 0, "", bad
	}
	tsText, id, ok := strings.Cut(rest, ":")
	if !ok || id == "" {
		return 0, "", bad
	}
	ts, err = strconv.ParseInt(tsText, 10, 64)
	if err != nil || ts < 0 || ts > maxTS.Unix() {
		return 0, "", bad
	}
	return ts, id, nil
}

// clampUnix returns t in Unix seconds within the DateTime range.
func clampUnix(t time.Time) int64 {
	return min(max(t.Unix(), 0), maxTS.Unix())
}

// OfferTicks returns the price ticks stored for an offer, oldest version
// first, each version once.
func (s *Store) OfferTicks(ctx context.Context, offerID string) ([]market.Tick, error) {
	rows, err := s.conn.Query(ctx, "SELECT offer_id, provider_id, resource_class, region, price, units_free, version, toUInt32(ts) FROM "+
		s.table("price_ticks")+" FINAL WHERE offer_id = ? ORDER BY version", offerID)
	if err != nil {
		return nil, unavailable("query ticks", err)
	}
	defer rows.Close()
	var out []market.Tick
	for rows.Next() {
		var t market.Tick
		var ts uint32
		if err := rows.Scan(&t.OfferID, &t.ProviderID, &t.ResourceClass, &t.Region, &t.Price, &t.UnitsFree, &t.Version, &ts); err != nil {
			return nil, unavailable("scan ticks", err)
		}
		t.TS = time.Unix(int64(ts), 0).UTC()
		out = append(out, t)
	}
	return out, rows.Err()
}
