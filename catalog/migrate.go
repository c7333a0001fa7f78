package catalog

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"computebroker/market"
)

// layoutKey records how the offers are stored; MigrateOfferStates sets it
// once it has brought every offer to the current layout.
const layoutKey = "catalog:layout"

// The layouts layoutKey names, oldest first (none: every field of an offer
// in its hash, the index scored 0 with "ticks|id" members).
const (
	// layoutStateHash: the changing fields in the market's state hash
	// (StateKey), the index as before.
	layoutStateHash = "state-hash"
	// layoutScoreIndex: the index scores offer ids by price in ticks, and
	// the state keeps that score where it kept the index member.
	layoutScoreIndex = "score-index"
)

// migrateScript moves one offer's changing fields from its hash (the
// layout before the state hash) into its market's state hash. Idempotent.
// KEYS: offer, state. ARGV: id.
var migrateScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'version', 'status', 'listed', 'price', 'price_at', 'units', 'free', 'updated_at', 'member', 'provider')
if not v[1] then return 0 end
for i = 1, 10 do
  if not v[i] then return redis.error_reply('offer ' .. ARGV[1] .. ' lacks a field') end
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  redis.call('HSET', KEYS[2], ARGV[1], table.concat(v, '\t'))
end
redis.call('HDEL', KEYS[1], 'version', 'status', 'listed', 'price', 'price_at', 'units', 'free', 'updated_at', 'member')
return 1
`)

// indexMigrateScript brings one market to layoutScoreIndex: each state's
// index member ("0…0ticks|id") becomes the score (ticks), and the index is
// rebuilt from the states, with the listed active offers scored by price.
// Idempotent. KEYS: state, index. It returns how many states it changed.
var indexMigrateScript = redis.NewScript(stateLua + `
local h = redis.call('HGETALL', KEYS[1])
local n, add = 0, {}
for i = 1, #h, 2 do
  local id, o = h[i], sparse(h[i + 1])
  local t = string.match(o.score, '^0*(%d+)|')
  if t then
    o.score = t
    redis.call('HSET', KEYS[1], id, spack(o))
    n = n + 1
  end
  if o.status == 'active' and o.listed == '1' then
    add[#add + 1] = o.score
    add[#add + 1] = id
  end
end
redis.call('DEL', KEYS[2])
for i = 1, #add, 1000 do
  redis.call('ZADD', KEYS[2], unpack(add, i, math.min(i + 999, #add)))
end
return n
`)

// MigrateOfferStates brings offers stored by older brokerds to the current
// layout: it moves the changing fields of offers that keep them all in the
// offer hash into their markets' state hashes (layoutStateHash), then
// rebuilds each market's index scored by price (layoutScoreIndex). It
// returns how many changes it made (moving an offer's fields and re-scoring
// its state count one each), and does nothing once done (a marker key says
// so). Run it before serving; older brokerds must be stopped
// first, as they would keep writing an old layout.
func (s *Store) MigrateOfferStates(ctx context.Context) (int, error) {
	done, err := s.rdb.Get(ctx, layoutKey).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, unavailable("read catalog layout", err)
	}
	moved := 0
	switch done {
	case layoutScoreIndex:
		return 0, nil
	case layoutStateHash:
	case "":
		if moved, err = s.migrateStates(ctx); err != nil {
			return moved, err
		}
		if err := s.rdb.Set(ctx, layoutKey, layoutStateHash, 0).Err(); err != nil {
			return moved, unavailable("record catalog layout", err)
		}
	default:
		// A newer brokerd's layout: this one would misread it.
		return 0, fmt.Errorf("catalog: the offers are stored in layout %q, which this brokerd does not know (newer than %q?)", done, layoutScoreIndex)
	}
	markets := map[market.MarketKey]bool{}
	if err := s.scanLocations(ctx, func(_ string, m market.MarketKey) error {
		markets[m] = true
		return nil
	}); err != nil {
		return moved, err
	}
	for m := range markets {
		n, err := indexMigrateScript.Run(ctx, s.rdb, []string{StateKey(m), IndexKey(m)}).Int()
		if err != nil {
			return moved, unavailable("migrate the index of "+m.String(), err)
		}
		moved += n
	}
	if err := s.rdb.Set(ctx, layoutKey, layoutScoreIndex, 0).Err(); err != nil {
		return moved, unavailable("record catalog layout", err)
	}
	return moved, nil
}

// migrateStates moves every offer's changing fields into its market's
// state hash (layoutStateHash) and returns how many it moved.
func (s *Store) migrateStates(ctx context.Context) (int, error) {
	moved := 0
	err := s.scanLocations(ctx, func(id string, m market.MarketKey) error {
		n, err := migrateScript.Run(ctx, s.rdb, []string{OfferKey(m, id), StateKey(m)}, id).Int()
		if err != nil {
			return unavailable("migrate offer "+id, err)
		}
		moved += n
		return nil
	})
	return moved, err
}

// scanLocations calls fn with every offer id and its market.
func (s *Store) scanLocations(ctx context.Context, fn func(id string, m market.MarketKey) error) error {
	var cursor uint64
	for {
		kv, next, err := s.rdb.HScan(ctx, offerLocKey, cursor, "*", 500).Result()
		if err != nil {
			return unavailable("list offers", err)
		}
		for i := 0; i+1 < len(kv); i += 2 {
			class, region, ok := strings.Cut(kv[i+1], ":")
			if !ok {
				return fmt.Errorf("catalog: bad location %q of offer %s", kv[i+1], kv[i])
			}
			if err := fn(kv[i], market.MarketKey{Class: class, Region: region}); err != nil {
				return err
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}
