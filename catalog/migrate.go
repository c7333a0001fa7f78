package catalog

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"computebroker/market"
)

// layoutKey records that every offer has its changing fields in its
// market's state hash (StateKey); set once MigrateOfferStates has moved
// them all.
const layoutKey = "catalog:layout"

// layoutStateHash is layoutKey's value once the offers are migrated.
const layoutStateHash = "state-hash"

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

// MigrateOfferStates moves the changing fields of offers stored by an
// older brokerd (all fields in the offer hash) into their markets' state
// hashes, and returns how many it moved. It does nothing once done (a
// marker key says so). Run it before serving; older brokerds must be
// stopped first, as they would keep writing the old layout.
func (s *Store) MigrateOfferStates(ctx context.Context) (int, error) {
	done, err := s.rdb.Get(ctx, layoutKey).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, unavailable("read catalog layout", err)
	}
	if done == layoutStateHash {
		return 0, nil
	}
	moved := 0
	var cursor uint64
	for {
		kv, next, err := s.rdb.HScan(ctx, offerLocKey, cursor, "*", 500).Result()
		if err != nil {
			return moved, unavailable("list offers", err)
		}
		for i := 0; i+1 < len(kv); i += 2 {
			id := kv[i]
			class, region, ok := strings.Cut(kv[i+1], ":")
			if !ok {
				return moved, fmt.Errorf("catalog: bad location %q of offer %s", kv[i+1], id)
			}
			m := market.MarketKey{Class: class, Region: region}
			n, err := migrateScript.Run(ctx, s.rdb, []string{OfferKey(m, id), StateKey(m)}, id).Int()
			if err != nil {
				return moved, unavailable("migrate offer "+id, err)
			}
			moved += n
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	if err := s.rdb.Set(ctx, layoutKey, layoutStateHash, 0).Err(); err != nil {
		return moved, unavailable("record catalog layout", err)
	}
	return moved, nil
}
