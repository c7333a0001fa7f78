package ledger

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"computebroker/market"
)

// Store keeps the money side of the market in Redis.
type Store struct {
	rdb  redis.UniversalClient
	defs defs
}

// New returns a Store over rdb.
func New(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

func smeTag(id string) string              { return "{sme:" + id + "}" }
func progTag(id string) string             { return "{prog:" + id + "}" }
func programKey(id string) string          { return "program:" + id }
func budgetKey(pid string) string          { return progTag(pid) + ":budget" }
func budgetHoldKey(pid, oid string) string { return progTag(pid) + ":hold:" + oid }
func voucherKey(sme, vid string) string    { return smeTag(sme) + ":voucher:" + vid }
func vouchersKey(sme string) string        { return smeTag(sme) + ":vouchers" }
func capKey(sme, pid string, year int) string {
	return fmt.Sprintf("%s:cap:%s:%d", smeTag(sme), pid, year)
}
func holdKey(sme, oid string) string  { return smeTag(sme) + ":hold:" + oid }
func idemKey(sme, key string) string  { return smeTag(sme) + ":idem:" + key }
func orderKey(sme, oid string) string { return smeTag(sme) + ":order:" + oid }
func ordersKey(sme string) string     { return smeTag(sme) + ":orders" }
func orderOwnerKey(oid string) string { return "order:" + oid }

const (
	programsKey     = "programs"
	allVouchersKey  = "vouchers:all"
	pendingHoldsKey = "holds:pending"
)

// capZone is the calendar in which company annual caps reset.
var capZone = time.FixedZone("CST", 8*3600)

// CapYear is the cap year that t falls in (China Standard Time).
func CapYear(t time.Time) int { return t.In(capZone).Year() }

// fen converts an amount to an integer count of 0.01 CNY.
func fen(d decimal.Decimal) int64 { return d.Shift(market.AmountScale).IntPart() }

func fromFen(n int64) decimal.Decimal { return decimal.New(n, -market.AmountScale) }

func unavailable(op string, err error) error {
	return &market.Error{Code: market.CodeUnavailable, Message: "store unavailable", Err: fmt.Errorf("ledger: %s: %w", op, err)}
}

func isNil(err error) bool { return errors.Is(err, redis.Nil) }

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error { return s.rdb.Ping(ctx).Err() }

// scriptError is the message a Lua script raised with redis.error_reply,
// without the "ERR " Redis puts in front of it.
func scriptError(err error) string { return strings.TrimPrefix(err.Error(), "ERR ") }

// doer is a Redis client or pipeline.
type doer interface {
	Do(ctx context.Context, args ...any) *redis.Cmd
}

// zaddMS adds member to a sorted set scored by a time in milliseconds, sent
// as an integer: no float type in the money rooms.
func zaddMS(ctx context.Context, c doer, key string, ms int64, member string) *redis.Cmd {
	return c.Do(ctx, "ZADD", key, ms, member)
}
