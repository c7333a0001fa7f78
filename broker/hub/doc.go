// Package hub fans market updates out to many stream subscribers: the
// market stream of API.md (GET /api/v1/stream/market), without the
// transport. A gateway accepts the WebSocket, wraps it in a Conn and calls
// Subscribe with the client's Filter and a SnapshotFunc over the matching
// book; the market's change-stream follower calls Publish for every tick,
// remove and trade.
//
// # Frames
//
// A subscriber's first frame is {"type":"snapshot","seq":1,"offers":[…]};
// then come {"type":"tick","seq","offer_id","price","units_free","ts","version"},
// {"type":"remove","seq","offer_id","version"} and
// {"type":"trade","seq","resource_class","region","price","units","hours","ts"}.
// Prices are market.FormatPrice strings, times RFC 3339 UTC. seq rises by
// one per frame on each subscription. Publish encodes an update once,
// without seq; each writer splices its own seq in front of the shared
// bytes, so the encoding cost does not grow with the subscriber count and
// a delivery allocates nothing.
//
// # Snapshot and updates
//
// Subscribe registers the subscriber before its writer takes the snapshot.
// Updates published until the writer starts taking it are reflected in it
// (see SnapshotFunc) and skipped; updates that arrive while it is taken are
// kept, and those whose offer version the snapshot already holds are
// dropped, so none is lost and none goes back in time.
//
// # Slow subscribers
//
// Publish never waits for a subscriber. Each one keeps at most one pending
// state per offer (a newer version replaces an older one in place; a
// remove wins over a tick) and the latest Options.TradeRing trades. A
// subscriber with more than Options.MaxPending offers pending has them
// dropped and gets a fresh snapshot (with the next seq) instead, so its
// memory is bounded whatever it reads; when it reads again it gets the
// latest state of every offer. Stats counts what was coalesced.
//
// # Goroutines and locks
//
// A few writer loops (Options.Writers, one per CPU by default) write every
// subscriber's frames; a subscription has no goroutine of its own. Publish
// runs on the caller's goroutine: it takes a per-market lock (publishes of
// one market are serialised), read-locks the registry shards of the
// matching filters and, per subscriber, that subscriber's mutex for a few
// map or slice operations, and puts a subscriber that got something to
// write in its loop's ready list. The loop takes everything the subscriber
// has pending (up to MaxBatch frames), frames it with Conn.AppendHeader
// and hands it to Conn.TryWrite, which must not block: one system call
// for all the frames a subscriber missed since its last write, however
// many. Under load the loops fall behind a little, so each write carries
// more frames and the cost per delivery falls. What the connection does
// not take at once is written by a goroutine of the subscription's
// (Conn.Write, blocking), and the subscriber coalesces meanwhile, so a
// slow reader never holds up its loop. Snapshots are taken and written by
// such a goroutine too. No lock of the hub is held while writing.
// Subscribers are registered per Filter in sharded groups, so subscribing
// and unsubscribing lock one shard and never stop publishes to other
// shards.
//
// Hub's methods and Subscription's methods are safe for concurrent use. A
// Conn need not be: the hub never calls its methods concurrently. Publish
// is safe from many goroutines, but an offer's updates must be published
// in version order for subscribers to see them so; one publisher per
// market, as the change-stream follower is, does that.
package hub
