package catalog

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"computebroker/market"
)

// StreamEntry is one entry of a market trade stream as HistorySource reads
// it. Kind is field "k" (StreamKindTrade, StreamKindRefund) and Value is
// field "v", the JSON of a market.Trade. An entry that lacks them (deleted
// from the stream while pending, or malformed) has them empty; the reader
// should acknowledge it as poison.
type StreamEntry struct {
	ID     string
	Stream string
	Kind   string
	Value  []byte
}

// Defaults of HistorySource.
const (
	DefaultReclaimIdle     = 30 * time.Second
	DefaultReclaimInterval = 10 * time.Second
	historyIdleWait        = 100 * time.Millisecond
	DefaultTrimAfter       = time.Hour
	DefaultTrimInterval    = time.Minute
)

// HistorySource reads the market trade streams through a Redis consumer group
// for the history writer: at-least-once, each entry acknowledged by the
// reader once stored. It works on a single Redis and on Redis Cluster: every
// command touches one stream, commands are pipelined, none blocks.
//
// On the first Read it creates the group on each stream (at the start of the
// stream, creating empty streams). It then delivers first this consumer's own
// pending entries, those read and not acknowledged before a crash, and then
// new entries. Every ReclaimInterval it claims entries that other consumers
// (or this one) left unacknowledged for longer than ReclaimIdle, so that
// the trades a dead brokerd held are not stuck. The consumer name should be
// stable across restarts of a process (e.g. the host name) so that its own
// pending entries come back to it.
//
// Entries stay in their streams after XACK; every TrimInterval, Ack trims
// each stream of the entries older than TrimAfter that the group has
// stored: below both its last delivered entry and its oldest pending one.
// So the streams hold about TrimAfter of history plus whatever the writer
// has not stored yet, however long ClickHouse is away.
//
// A HistorySource is used by one goroutine (the writer's): Read and Ack must
// not be called concurrently. Set ReclaimIdle and ReclaimInterval before the
// first Read.
type HistorySource struct {
	rdb      redis.UniversalClient
	group    string
	consumer string
	streams  []*historyStream
	turn     int
	reclaim  time.Time // next reclaim pass

	// ReclaimIdle is how long an entry stays pending before another
	// consumer may claim it (default 30s).
	ReclaimIdle time.Duration
	// ReclaimInterval is how often to look for such entries (default 10s).
	ReclaimInterval time.Duration
	// TrimAfter is how long stored entries stay in the streams (default
	// 1h); TrimInterval how often Ack trims (default 1m). A negative
	// TrimAfter keeps every entry.
	TrimAfter, TrimInterval time.Duration
	trimAt                  time.Time // next trim
	// Trimmed counts the entries trimmed so far.
	Trimmed atomic.Int64
}

type historyStream struct {
	key     string
	ready   bool   // the group exists
	pending string // next id of this consumer's pending entries; "" once drained
	claim   string // XAUTOCLAIM cursor; "0-0" between passes
}

// NewHistorySource returns a source over the trade streams of markets for the
// consumer group and the consumer named.
func NewHistorySource(rdb redis.UniversalClient, markets []market.MarketKey, group, consumer string) *HistorySource {
	s := &HistorySource{
		rdb:             rdb,
		group:           group,
		consumer:        consumer,
		ReclaimIdle:     DefaultReclaimIdle,
		ReclaimInterval: DefaultReclaimInterval,
		TrimAfter:       DefaultTrimAfter,
		TrimInterval:    DefaultTrimInterval,
	}
	seen := map[string]bool{}
	for _, m := range markets {
		k := TradeStreamKey(m)
		if seen[k] {
			continue
		}
		seen[k] = true
		s.streams = append(s.streams, &historyStream{key: k, pending: "0", claim: "0-0"})
	}
	return s
}

// Read returns up to max entries across the streams: reclaimed ones, then
// this consumer's pending ones, then new ones. It does not block: when there
// is nothing to read it waits about 100ms and returns none. It may return
// entries together with an error when some streams failed; the entries are
// valid and must be processed and acknowledged like any other.
func (s *HistorySource) Read(ctx context.Context, max int) ([]StreamEntry, error) {
	if max <= 0 || len(s.streams) == 0 {
		return nil, nil
	}
	var out []StreamEntry
	var errs []error
	if err := s.ensureGroups(ctx); err != nil {
		errs = append(errs, err) // read the streams that have their group
	}
	if !time.Now().Before(s.reclaim) {
		claimed, err := s.reclaimIdle(ctx, max)
		out = append(out, claimed...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	// More rounds while budget is left and either a stream's own pending
	// entries ran out in this round (its new entries should not be a Read
	// and a wait away) or max was too small to give every stream a share.
	// Each such round drains a stream or rotates the shares, so len(streams)
	// rounds cover every stream.
	for round := 0; round <= len(s.streams) && len(out) < max; round++ {
		left := max - len(out)
		read, drained, err := s.readGroup(ctx, left)
		out = append(out, read...)
		if err != nil {
			errs = append(errs, err)
			break
		}
		if !drained && left >= len(s.streams) {
			break
		}
	}
	if len(out) == 0 && len(errs) == 0 {
		t := time.NewTimer(historyIdleWait)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
	return out, errors.Join(errs...)
}

// ensureGroups creates the consumer group on the streams that lack it.
func (s *HistorySource) ensureGroups(ctx context.Context) error {
	var todo []*historyStream
	for _, st := range s.streams {
		if !st.ready {
			todo = append(todo, st)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StatusCmd, len(todo))
	for i, st := range todo {
		cmds[i] = pipe.XGroupCreateMkStream(ctx, st.key, s.group, "0")
	}
	_, _ = pipe.Exec(ctx)
	var errs []error
	for i, c := range cmds {
		if err := c.Err(); err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			errs = append(errs, fmt.Errorf("catalog: create group %s on %s: %w", s.group, todo[i].key, err))
			continue
		}
		todo[i].ready = true
	}
	return errors.Join(errs...)
}

// readGroup reads up to max entries, shared out over the streams. drained
// reports that some stream's own pending entries ran out in this call.
func (s *HistorySource) readGroup(ctx context.Context, max int) (_ []StreamEntry, drained bool, _ error) {
	counts := s.shares(max)
	pipe := s.rdb.Pipeline()
	type call struct {
		st  *historyStream
		cmd *redis.XStreamSliceCmd
	}
	calls := make([]call, 0, len(s.streams))
	for i, st := range s.streams {
		if counts[i] == 0 || !st.ready {
			continue
		}
		id := ">"
		if st.pending != "" {
			id = st.pending
		}
		cmd := pipe.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group:    s.group,
			Consumer: s.consumer,
			Streams:  []string{st.key, id},
			Count:    int64(counts[i]),
			Block:    -1, // never block: a blocked command would hold the pipeline
		})
		calls = append(calls, call{st, cmd})
	}
	if len(calls) == 0 {
		return nil, false, nil
	}
	_, _ = pipe.Exec(ctx)
	var (
		out  []StreamEntry
		errs []error
	)
	for _, c := range calls {
		res, err := c.cmd.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			s.failed(c.st, err)
			errs = append(errs, fmt.Errorf("catalog: read %s: %w", c.st.key, err))
			continue
		}
		var msgs []redis.XMessage
		for _, xs := range res {
			msgs = append(msgs, xs.Messages...)
		}
		if c.st.pending != "" {
			if len(msgs) == 0 {
				c.st.pending = "" // own backlog drained; read new entries from now on
				drained = true
			} else {
				c.st.pending = msgs[len(msgs)-1].ID
			}
		}
		out = appendEntries(out, c.st.key, msgs)
	}
	return out, drained, errors.Join(errs...)
}

// reclaimIdle claims up to max entries pending longer than ReclaimIdle with
// any consumer of the group. A pass walks each stream's pending list with
// XAUTOCLAIM's cursor; the next pass starts ReclaimInterval after one ends.
func (s *HistorySource) reclaimIdle(ctx context.Context, max int) ([]StreamEntry, error) {
	counts := s.shares(max)
	pipe := s.rdb.Pipeline()
	type call struct {
		st  *historyStream
		cmd *redis.XAutoClaimCmd
	}
	calls := make([]call, 0, len(s.streams))
	for i, st := range s.streams {
		if counts[i] == 0 || !st.ready {
			continue
		}
		calls = append(calls, call{st, pipe.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream:   st.key,
			Group:    s.group,
			Consumer: s.consumer,
			MinIdle:  s.ReclaimIdle,
			Start:    st.claim,
			Count:    int64(counts[i]),
		})})
	}
	if len(calls) == 0 {
		return nil, nil
	}
	_, _ = pipe.Exec(ctx)
	var (
		out  []StreamEntry
		errs []error
	)
	for _, c := range calls {
		msgs, next, err := c.cmd.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			s.failed(c.st, err)
			errs = append(errs, fmt.Errorf("catalog: reclaim %s: %w", c.st.key, err))
			continue
		}
		c.st.claim = next
		if next == "" {
			c.st.claim = "0-0"
		}
		out = appendEntries(out, c.st.key, msgs)
	}
	done := true
	for _, st := range s.streams {
		if st.claim != "0-0" {
			done = false
		}
	}
	if done {
		s.reclaim = time.Now().Add(s.ReclaimInterval)
	}
	return out, errors.Join(errs...)
}

// failed resets a stream whose group vanished (the stream was deleted), so
// that the next Read creates it again.
func (s *HistorySource) failed(st *historyStream, err error) {
	if strings.HasPrefix(err.Error(), "NOGROUP") {
		st.ready = false
		st.pending = "0"
		st.claim = "0-0"
	}
}

// shares splits max over the streams, rotating which streams get the
// remainder (or, when max is below the stream count, which get one).
func (s *HistorySource) shares(max int) []int {
	n := len(s.streams)
	counts := make([]int, n)
	base, rest := max/n, max%n
	s.turn = (s.turn + 1) % n
	for i := range counts {
		counts[i] = base
	}
	for j := 0; j < rest; j++ {
		counts[(s.turn+j)%n]++
	}
	return counts
}

func appendEntries(out []StreamEntry, stream string, msgs []redis.XMessage) []StreamEntry {
	for _, m := range msgs {
		e := StreamEntry{ID: m.ID, Stream: stream}
		if k, ok := m.Values["k"].(string); ok {
			e.Kind = k
		}
		if v, ok := m.Values["v"].(string); ok {
			e.Value = []byte(v)
		}
		out = append(out, e)
	}
	return out
}

// Ack acknowledges entries in the group (XACK, pipelined per stream). The
// entries stay in their streams.
func (s *HistorySource) Ack(ctx context.Context, entries []StreamEntry) error {
	if len(entries) == 0 {
		return nil
	}
	ids := map[string][]string{}
	var order []string
	for _, e := range entries {
		if _, ok := ids[e.Stream]; !ok {
			order = append(order, e.Stream)
		}
		ids[e.Stream] = append(ids[e.Stream], e.ID)
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(order))
	for i, st := range order {
		cmds[i] = pipe.XAck(ctx, st, s.group, ids[st]...)
	}
	_, _ = pipe.Exec(ctx)
	var errs []error
	for i, c := range cmds {
		if err := c.Err(); err != nil {
			errs = append(errs, fmt.Errorf("catalog: ack %d entries of %s: %w", len(ids[order[i]]), order[i], err))
		}
	}
	if len(errs) == 0 && s.TrimAfter >= 0 && time.Now().After(s.trimAt) {
		// A failed trim is not a failed ack: it is tried again next time.
		s.trimAt = time.Now().Add(s.TrimInterval)
		_, _ = s.Trim(ctx, time.Now().Add(-s.TrimAfter))
	}
	return errors.Join(errs...)
}

// Trim removes from each stream the entries older than before that the
// group has stored (below its last delivered entry and its oldest pending
// one) and returns how many it removed. A stream whose group does not
// exist yet is left alone.
func (s *HistorySource) Trim(ctx context.Context, before time.Time) (int64, error) {
	pipe := s.rdb.Pipeline()
	groups := make([]*redis.XInfoGroupsCmd, len(s.streams))
	pending := make([]*redis.XPendingCmd, len(s.streams))
	for i, st := range s.streams {
		groups[i] = pipe.XInfoGroups(ctx, st.key)
		pending[i] = pipe.XPending(ctx, st.key, s.group)
	}
	_, _ = pipe.Exec(ctx)
	cutoff := streamID{ms: uint64(max(0, before.UnixMilli()))}
	var errs []error
	pipe = s.rdb.Pipeline()
	var trims []*redis.IntCmd
	for i, st := range s.streams {
		gs, err := groups[i].Result()
		if err != nil {
			if !strings.Contains(err.Error(), "no such key") {
				errs = append(errs, fmt.Errorf("catalog: trim %s: %w", st.key, err))
			}
			continue
		}
		var last string
		for _, g := range gs {
			if g.Name == s.group {
				last = g.LastDeliveredID
			}
		}
		if last == "" {
			continue // no group: nothing is known to be stored
		}
		// Entries below the first still pending, and up to the last
		// delivered, are stored.
		bound, ok := parseStreamID(last)
		if !ok {
			continue
		}
		bound.seq++ // MINID keeps entries at or above it
		if p, err := pending[i].Result(); err == nil && p.Count > 0 {
			if low, ok := parseStreamID(p.Lower); ok && low.less(bound) {
				bound = low
			}
		} else if err != nil && !errors.Is(err, redis.Nil) {
			errs = append(errs, fmt.Errorf("catalog: trim %s: %w", st.key, err))
			continue
		}
		if cutoff.less(bound) {
			bound = cutoff
		}
		trims = append(trims, pipe.XTrimMinID(ctx, st.key, bound.String()))
	}
	if len(trims) == 0 {
		return 0, errors.Join(errs...)
	}
	_, _ = pipe.Exec(ctx)
	var n int64
	for _, c := range trims {
		if err := c.Err(); err != nil {
			errs = append(errs, fmt.Errorf("catalog: trim: %w", err))
			continue
		}
		n += c.Val()
	}
	s.Trimmed.Add(n)
	return n, errors.Join(errs...)
}

// streamID is a Redis stream entry id, <ms>-<seq>.
type streamID struct{ ms, seq uint64 }

func parseStreamID(id string) (streamID, bool) {
	a, b, ok := strings.Cut(id, "-")
	if !ok {
		return streamID{}, false
	}
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	return streamID{ms, seq}, err1 == nil && err2 == nil
}

func (a streamID) less(b streamID) bool { return a.ms < b.ms || a.ms == b.ms && a.seq < b.seq }

func (a streamID) String() string {
	return strconv.FormatUint(a.ms, 10) + "-" + strconv.FormatUint(a.seq, 10)
}
