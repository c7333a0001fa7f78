package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"computebroker/market"
)

// Change is one entry of a market's change stream: an offer listed or
// changed (Remove false, Offer complete), or withdrawn from the market
// (Remove true, Offer with ID, ProviderID, Version and UpdatedAt only).
type Change struct {
	StreamID string
	Market   market.MarketKey
	Remove   bool
	Offer    market.Offer
}

// lastID is the id of a stream's newest entry, "0-0" when it is empty.
func (s *Store) lastID(ctx context.Context, key string) (string, error) {
	last, err := s.rdb.XRevRangeN(ctx, key, "+", "-", 1).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", unavailable("read stream", err)
	}
	if len(last) == 1 {
		return last[0].ID, nil
	}
	return "0-0", nil
}

// MarketState is a market's listed offers and the change-stream position
// they reflect: following the stream from Position after applying Offers
// misses nothing (changes already reflected come again and carry versions
// no newer than the offers', so applying by version is idempotent).
type MarketState struct {
	Market   market.MarketKey
	Offers   []market.Offer
	Position string
}

// LoadMarket reads a market's listed active offers and the position to
// follow its change stream from.
func (s *Store) LoadMarket(ctx context.Context, m market.MarketKey) (MarketState, error) {
	st := MarketState{Market: m}
	// The position first: anything that changes after it is replayed.
	var err error
	if st.Position, err = s.lastID(ctx, ChangeStreamKey(m)); err != nil {
		return st, err
	}
	offers, _, err := s.ListOffers(ctx, OfferFilter{Markets: []market.MarketKey{m}})
	if err != nil {
		return st, err
	}
	st.Offers = offers
	return st, nil
}

// Follow reads the change streams of the markets from their states'
// positions (an empty position starts after the newest entry) and calls
// apply with each batch of changes, in stream order per market, until ctx
// ends. Every Change it hands over holds the complete offer: it keeps the
// offers of the states, and of the changes since, to complete each "delta"
// line (a batched update carries only the fields that change), and reads an
// offer it does not know, or whose version skips one, from Redis. It blocks
// in Redis for at most block between batches. A failing read is retried
// with backoff; Follow returns only ctx's error.
func (s *Store) Follow(ctx context.Context, states []MarketState, block time.Duration, apply func([]Change)) error {
	keys := make([]string, 0, len(states))
	from := make([]string, 0, len(states))
	byKey := make(map[string]market.MarketKey, len(states))
	known := map[string]*market.Offer{}
	for _, st := range states {
		k := ChangeStreamKey(st.Market)
		keys, from, byKey[k] = append(keys, k), append(from, st.Position), st.Market
		for i := range st.Offers {
			o := st.Offers[i]
			known[o.ID] = &o
		}
	}
	var batch []Change
	return s.follow(ctx, keys, from, block, func(st redis.XStream) {
		batch = batch[:0]
		m := byKey[st.Stream]
		for _, msg := range st.Messages {
			if t, _ := msg.Values["t"].(string); t == "delta" {
				d, _ := msg.Values["d"].(string)
				for _, dl := range decodeDeltas(d) {
					if o, ok := s.completeDelta(ctx, known, m, dl); ok {
						batch = append(batch, Change{StreamID: msg.ID, Market: m, Offer: o})
					}
				}
				continue
			}
			c, ok := decodeChange(m, msg)
			if !ok {
				continue
			}
			if c.Remove {
				delete(known, c.Offer.ID)
			} else if cur := known[c.Offer.ID]; cur == nil || cur.Version <= c.Offer.Version {
				o := c.Offer
				known[o.ID] = &o
			}
			batch = append(batch, c)
		}
		if len(batch) > 0 {
			apply(batch)
		}
	})
}

// completeDelta applies a delta line to the offer Follow knows and returns
// the whole offer; ok is false when there is nothing to hand over (an old
// version, or an offer that is gone).
func (s *Store) completeDelta(ctx context.Context, known map[string]*market.Offer, m market.MarketKey, d Delta) (market.Offer, bool) {
	cur := known[d.ID]
	switch {
	case cur != nil && d.Version <= cur.Version:
		return market.Offer{}, false // already reflected
	case cur != nil && d.Version == cur.Version+1:
		cur.Version, cur.Price, cur.Units, cur.UnitsFree = d.Version, d.Price, d.Units, d.UnitsFree
		cur.PriceAt, cur.UpdatedAt = d.PriceAt, d.UpdatedAt
		return *cur, true
	}
	// Unknown, or a version was skipped: the offer in Redis is at least as
	// new as the delta.
	o, err := s.Offer(ctx, d.ID)
	if err != nil || o.Status != market.OfferActive || o.Version < d.Version || o.Market() != m {
		return market.Offer{}, false
	}
	known[o.ID] = &o
	return o, true
}

// follow reads streams from positions ("" = after the newest entry) and
// hands each stream's new entries to handle, in stream order, until ctx
// ends. On a single Redis it blocks in one XREAD over all the streams at a
// time. On Redis Cluster, which refuses an XREAD over streams in different
// slots, it polls: every pollInterval (at once while there is more) one
// pipeline of non-blocking XREADs, one per stream, which the client sends
// to each stream's node. Failing reads are retried with backoff.
func (s *Store) follow(ctx context.Context, keys, from []string, block time.Duration, handle func(redis.XStream)) error {
	n := len(keys)
	args := make([]string, 0, 2*n)
	args = append(args, keys...)
	for i, pos := range from {
		if pos == "" {
			// Resolve "the newest entry" once: re-sending "$" on every read
			// would lose what is appended between two reads.
			last, err := s.lastID(ctx, keys[i])
			if err != nil {
				return err
			}
			pos = last
		}
		args = append(args, pos)
	}
	_, cluster := s.rdb.(*redis.ClusterClient)
	read := func() ([]redis.XStream, error) {
		res, err := s.rdb.XRead(ctx, &redis.XReadArgs{Streams: args, Count: 1000, Block: block}).Result()
		if errors.Is(err, redis.Nil) {
			return nil, nil
		}
		return res, err
	}
	if cluster {
		read = func() ([]redis.XStream, error) { return s.pollStreams(ctx, args, block) }
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		res, err := read()
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			if backoff < 2*time.Second {
				backoff *= 2
			}
			continue
		}
		backoff = 100 * time.Millisecond
		for _, st := range res {
			if len(st.Messages) == 0 {
				continue
			}
			for i := 0; i < n; i++ {
				if args[i] == st.Stream {
					args[n+i] = st.Messages[len(st.Messages)-1].ID
					break
				}
			}
			handle(st)
		}
	}
	return ctx.Err()
}

// pollInterval is how often follow polls the streams on Redis Cluster when
// nothing is new: the lag it adds to a change is at most this.
const pollInterval = 20 * time.Millisecond

// pollStreams reads, without blocking, what each stream has after its
// position (args as XREAD takes them), in one pipeline. When no stream has
// anything it waits pollInterval (at most block) first, so an idle follower
// costs one pipeline per interval.
func (s *Store) pollStreams(ctx context.Context, args []string, block time.Duration) ([]redis.XStream, error) {
	n := len(args) / 2
	for {
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.XStreamSliceCmd, n)
		for i := 0; i < n; i++ {
			cmds[i] = pipe.XRead(ctx, &redis.XReadArgs{Streams: []string{args[i], args[n+i]}, Count: 1000, Block: -1})
		}
		_, _ = pipe.Exec(ctx)
		var out []redis.XStream
		for _, c := range cmds {
			res, err := c.Result()
			if errors.Is(err, redis.Nil) {
				continue
			}
			if err != nil {
				return out, err
			}
			out = append(out, res...)
		}
		if len(out) > 0 || ctx.Err() != nil {
			return out, ctx.Err()
		}
		wait := min(pollInterval, block)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		if wait == block {
			return nil, nil
		}
	}
}

func decodeChange(m market.MarketKey, msg redis.XMessage) (Change, bool) {
	vals := make(map[string]string, len(msg.Values))
	for k, v := range msg.Values {
		s, _ := v.(string)
		vals[k] = s
	}
	c := Change{StreamID: msg.ID, Market: m}
	switch vals["t"] {
	case "upsert":
		o, err := decodeOffer(vals)
		if err != nil || o.ID == "" {
			return c, false
		}
		c.Offer = o
	case "remove":
		v, _ := strconv.ParseInt(vals["version"], 10, 64)
		c.Remove = true
		c.Offer = market.Offer{ID: vals["id"], ProviderID: vals["provider"], ResourceClass: m.Class, Region: m.Region,
			Version: v, Status: market.OfferDeleted, UpdatedAt: fromMS(vals["updated_at"])}
	default:
		return c, false
	}
	return c, true
}

// String describes a change for logs.
func (c Change) String() string {
	if c.Remove {
		return fmt.Sprintf("remove %s v%d", c.Offer.ID, c.Offer.Version)
	}
	return fmt.Sprintf("upsert %s v%d %s free %d", c.Offer.ID, c.Offer.Version, c.Offer.Price, c.Offer.UnitsFree)
}

// FollowTrades reads the trade streams of the markets from their newest
// entries on and calls apply with each batch of committed trades, until ctx
// ends. Unlike the history's consumer group, every caller sees every trade:
// it feeds live views (the market stream, the provider's lease push).
func (s *Store) FollowTrades(ctx context.Context, markets []market.MarketKey, block time.Duration, apply func([]market.Trade)) error {
	keys := make([]string, len(markets))
	for i, m := range markets {
		keys[i] = TradeStreamKey(m)
	}
	return s.follow(ctx, keys, make([]string, len(markets)), block, func(st redis.XStream) {
		var batch []market.Trade
		for _, msg := range st.Messages {
			if k, _ := msg.Values["k"].(string); k != StreamKindTrade {
				continue
			}
			v, _ := msg.Values["v"].(string)
			var t market.Trade
			if json.Unmarshal([]byte(v), &t) == nil && t.ID != "" {
				batch = append(batch, t)
			}
		}
		if len(batch) > 0 {
			apply(batch)
		}
	})
}
