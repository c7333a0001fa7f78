package catalog

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"computebroker/market"
)

// Store keeps accounts and offers in Redis.
type Store struct {
	rdb redis.UniversalClient
	// locs caches offer id → market: an offer never changes market, so the
	// lookup costs one Redis round trip per offer and process, not per update.
	locs sync.Map
	// batchers group-commit offer updates (batch.go); batchRuns counts
	// the batches run, batched the updates they carried.
	batchers           [batchShards]batcher
	batchRuns, batched atomic.Int64
	// shards assigns markets to batchers, in turn as they first appear
	// (marketShard); nextShard is the next turn.
	shards    sync.Map
	nextShard atomic.Uint32
	// stateCaches hold what the last updates left of each offer, to
	// predict the next price change (batch.go, offerState).
	stateCaches [batchShards]stateCache
	// predicted and mispredicted count the price changes that went as
	// predictions and applied, and those whose prediction was stale.
	predicted, mispredicted atomic.Int64
	// checkedOnly turns predictions off (tests compare both paths);
	// entriesOnly sends every market in form "e" (updateBatchScript).
	checkedOnly, entriesOnly bool
	// tokens caches token hash → account id of tokens that worked
	// (accounts.go); tokenCount counts the stores into it.
	tokens     sync.Map
	tokenCount atomic.Int64
}

// New returns a Store over rdb.
func New(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

// Client returns the Redis client the store uses.
func (s *Store) Client() redis.UniversalClient { return s.rdb }

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error { return s.rdb.Ping(ctx).Err() }

func unavailable(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &market.Error{Code: market.CodeUnavailable, Message: "request cancelled or timed out", Err: fmt.Errorf("catalog: %s: %w", op, err)}
	}
	return &market.Error{Code: market.CodeUnavailable, Message: "store unavailable", Err: fmt.Errorf("catalog: %s: %w", op, err)}
}

func ms(t time.Time) int64 { return t.UnixMilli() }

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func fromMS(s string) time.Time {
	n, _ := strconv.ParseInt(s, 10, 64)
	if n == 0 {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}

// scriptError is the message a Lua script raised with redis.error_reply,
// without the "ERR " Redis puts in front of it.
func scriptError(err error) string { return strings.TrimPrefix(err.Error(), "ERR ") }
