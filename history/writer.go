package history

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"computebroker/market"
)

// Message kinds. KindTrade and KindRefund are the values of the "k" field of
// the market trade streams (catalog.StreamKindTrade, catalog.StreamKindRefund).
const (
	KindTrade  = "trade"
	KindRefund = "refund"
	KindTick   = "tick"
	// KindTicks is a batch of price ticks in one message (Message.Ticks).
	KindTicks = "ticks"
)

// Message is one entry of a Source: a trade, a refund or a price tick.
// A Source either decodes the value itself (Trade or Tick set) or hands the
// JSON over in Value (a market.Trade for trades and refunds, a market.Tick
// for ticks) for the Writer to decode. ID and Stream identify the entry to
// Ack and are opaque to the Writer.
type Message struct {
	ID     string
	Stream string
	Kind   string
	Value  []byte
	Trade  *market.Trade
	Tick   *market.Tick
	// Ticks is a batch of price ticks (kind KindTicks), decoded by the
	// Source: its encoding is the Source's.
	Ticks []market.Tick
}

// Source is where the Writer reads from: in the broker, the market trade
// streams read through a Redis consumer group.
type Source interface {
	// Read returns up to max messages, quickly (within about 200ms) and
	// possibly none. It may return messages together with an error (some
	// streams failed); the messages are kept. Messages read and not
	// acknowledged must come back from a later Read after a restart.
	Read(ctx context.Context, max int) ([]Message, error)
	// Ack marks messages as stored; they are not delivered again.
	Ack(ctx context.Context, msgs []Message) error
}

// WriterOptions tune a Writer. Zero values take the defaults.
type WriterOptions struct {
	// BatchSize is the most rows one insert carries (default 100000): a
	// message is one row, a KindTicks message one per tick. Reads are sized
	// by the rows per message seen so far, so a batch may overshoot a little.
	BatchSize int
	// FlushInterval is the longest a message waits for its batch to fill
	// (default 1s).
	FlushInterval time.Duration
	// MaxBackoff caps the wait between retries of a failed insert, ack or
	// read (default 5s). The first retry waits 100ms.
	MaxBackoff time.Duration
	// FinalFlushTimeout bounds the flush Run does when its context ends
	// (default 5s).
	FinalFlushTimeout time.Duration
	// Logger receives failures and poison messages (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// WriterStats are a Writer's counters, for metrics.
type WriterStats struct {
	// Written counts trade, refund and tick messages stored and acknowledged,
	// including those whose row was already stored.
	Written int64
	// Duplicates counts trades and refunds skipped because their id was
	// already stored or repeated in the batch.
	Duplicates int64
	// Poison counts messages acknowledged without storing because they did
	// not decode or could not be stored exactly.
	Poison int64
	// Failures counts failed insert, ack and read attempts.
	Failures int64
	// Pending is the number of messages held and not yet acknowledged.
	Pending int64
	// LastFlush is when a batch was last stored and acknowledged.
	LastFlush time.Time
	// LagSeconds is the history lag: the age of the oldest held message
	// (by its trade or tick time, or by when it was read if that is
	// earlier); 0 when nothing is held.
	LagSeconds float64
}

// Writer moves messages from a Source into a Store in batches and
// acknowledges them only after ClickHouse accepted them.
type Writer struct {
	store *Store
	src   Source
	opts  WriterOptions
	log   *slog.Logger

	// The batch, owned by the goroutine in Run.
	batch   []held
	rows    int     // rows held in batch
	perMsg  float64 // rows per message of the last read, ≥ 1
	seen    map[msgKey]bool
	stored  [3]bool // trades, refunds, ticks of the batch are in ClickHouse
	dups    int64   // duplicates found while storing the batch
	oldest  time.Time
	backoff time.Duration

	mu    sync.Mutex
	stats WriterStats
	lagAt time.Time // oldest while the batch is not empty
}

type held struct {
	msg    Message
	poison bool
}

type msgKey struct{ stream, id string }

// defaultBatchSize is large enough that, below 100k rows/s, the flush
// interval alone decides when to insert: one insert a second, one new part
// for ClickHouse to merge. At 10,000 rows a batch, 30k price ticks/s made
// three parts a second, and merging them cost ClickHouse 2-4 times the CPU
// (docs/BENCHMARKS.md).
const (
	defaultBatchSize         = 100000
	defaultFlushInterval     = time.Second
	defaultMaxBackoff        = 5 * time.Second
	defaultFinalFlushTimeout = 5 * time.Second
	minBackoff               = 100 * time.Millisecond
)

// NewWriter returns a Writer from src to store. Call Run to start it.
func NewWriter(store *Store, src Source, opts WriterOptions) *Writer {
	if opts.BatchSize <= 0 {
		opts.BatchSize = defaultBatchSize
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = defaultFlushInterval
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = defaultMaxBackoff
	}
	if opts.FinalFlushTimeout <= 0 {
		opts.FinalFlushTimeout = defaultFinalFlushTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Writer{
		store: store,
		src:   src,
		opts:  opts,
		log:   opts.Logger.With("component", "history.writer"),
		seen:  make(map[msgKey]bool),
	}
}

// Run reads, batches, stores and acknowledges until ctx ends, then flushes
// what it holds within FinalFlushTimeout and returns. A failed insert is
// retried with backoff, without acknowledging and without reading more, for
// as long as it takes. Run returns nil when it stopped with nothing held, and
// an error when the final flush failed; those messages stay unacknowledged in
// the Source and are delivered again. Run must not be called twice at once.
func (w *Writer) Run(ctx context.Context) error {
	for {
		if ctx.Err() != nil {
			return w.shutdown(ctx)
		}
		n := len(w.batch)
		if w.rows >= w.opts.BatchSize || (n > 0 && w.opts.Now().Sub(w.oldest) >= w.opts.FlushInterval) {
			if err := w.flush(ctx); err != nil {
				if ctx.Err() != nil {
					continue
				}
				w.fail("flush", err, n)
				w.sleep(ctx)
			} else {
				w.backoff = 0
			}
			continue
		}
		msgs, err := w.src.Read(ctx, w.want())
		w.add(msgs)
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			w.fail("read", err, n)
			w.sleep(ctx)
		} else {
			w.backoff = 0
		}
	}
}

// shutdown drains what the source still holds (messages committed before
// the stop that were not read yet) and flushes the batch, with a fresh
// context bounded by FinalFlushTimeout.
func (w *Writer) shutdown(ctx context.Context) error {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.opts.FinalFlushTimeout)
	defer cancel()
	w.backoff = 0
	for fctx.Err() == nil {
		if w.rows >= w.opts.BatchSize {
			if err := w.flush(fctx); err != nil {
				break
			}
		}
		msgs, err := w.src.Read(fctx, w.want())
		w.add(msgs)
		if err != nil || len(msgs) == 0 {
			break
		}
	}
	if len(w.batch) == 0 {
		return nil
	}
	for {
		n := len(w.batch)
		err := w.flush(fctx)
		if err == nil {
			return nil
		}
		w.fail("final flush", err, n)
		w.sleep(fctx)
		if fctx.Err() != nil {
			return fmt.Errorf("history: writer stopped with %d messages not stored, left unacknowledged: %w", n, err)
		}
	}
}

// want is how many messages to read next: about the rows left to fill the
// batch, at least one.
func (w *Writer) want() int {
	left := float64(w.opts.BatchSize - w.rows)
	return max(1, int(left/max(1, w.perMsg)))
}

// rowsOf is how many rows a message stores.
func rowsOf(m *Message) int { return max(1, len(m.Ticks)) }

// add decodes msgs into the batch. Messages already held (the same entry
// delivered twice, e.g. reclaimed) are dropped; they are acknowledged with
// the first copy.
func (w *Writer) add(msgs []Message) {
	if len(msgs) == 0 {
		return
	}
	now := w.opts.Now()
	if len(w.batch) == 0 {
		w.oldest = now
	}
	lag := now
	rows := 0
	for _, m := range msgs {
		if m.ID != "" {
			k := msgKey{m.Stream, m.ID}
			if w.seen[k] {
				continue
			}
			w.seen[k] = true
		}
		h := held{msg: m}
		if err := decode(&h.msg); err != nil {
			h.poison = true
			w.log.Warn("history: poison message, acknowledging without storing",
				"stream", m.Stream, "id", m.ID, "kind", m.Kind, "err", err)
		}
		if ts := eventTime(&h.msg); !ts.IsZero() && ts.Before(lag) {
			lag = ts
		}
		w.batch = append(w.batch, h)
		rows += rowsOf(&h.msg)
	}
	w.rows += rows
	w.perMsg = float64(rows) / float64(len(msgs))
	w.mu.Lock()
	if w.stats.Pending == 0 || lag.Before(w.lagAt) {
		w.lagAt = lag
	}
	w.stats.Pending = int64(len(w.batch))
	w.mu.Unlock()
}

// decode fills m.Trade or m.Tick from m.Value and checks that the value can
// be stored exactly. An error makes the message poison.
func decode(m *Message) error {
	switch m.Kind {
	case KindTrade, KindRefund:
		if m.Trade == nil {
			var t market.Trade
			if err := json.Unmarshal(m.Value, &t); err != nil {
				return fmt.Errorf("decode %s: %w", m.Kind, err)
			}
			m.Trade = &t
		}
		return checkTrade(m.Trade)
	case KindTicks:
		if len(m.Ticks) == 0 {
			return fmt.Errorf("ticks message without ticks")
		}
		for i := range m.Ticks {
			if err := checkTick(&m.Ticks[i]); err != nil {
				return err
			}
		}
		return nil
	case KindTick:
		if m.Tick == nil {
			var t market.Tick
			if err := json.Unmarshal(m.Value, &t); err != nil {
				return fmt.Errorf("decode tick: %w", err)
			}
			m.Tick = &t
		}
		return checkTick(m.Tick)
	default:
		return fmt.Errorf("unknown kind %q", m.Kind)
	}
}

func eventTime(m *Message) time.Time {
	switch {
	case m.Trade != nil:
		return m.Trade.TS
	case m.Tick != nil:
		return m.Tick.TS
	case len(m.Ticks) > 0:
		return m.Ticks[0].TS
	}
	return time.Time{}
}

// flush stores the batch, table by table, skipping tables already stored by
// an earlier attempt, then acknowledges every message of the batch.
func (w *Writer) flush(ctx context.Context) error {
	var (
		trades, refunds []market.Trade
		ticks           []market.Tick
		poison          int64
	)
	if w.rows > 0 {
		// Sized once: at 100k rows a batch, growing it by appends was a
		// tenth of the history writer's CPU.
		ticks = make([]market.Tick, 0, w.rows)
	}
	for i := range w.batch {
		h := &w.batch[i]
		switch {
		case h.poison:
			poison++
		case h.msg.Kind == KindTrade:
			trades = append(trades, *h.msg.Trade)
		case h.msg.Kind == KindRefund:
			refunds = append(refunds, *h.msg.Trade)
		case h.msg.Kind == KindTick:
			ticks = append(ticks, *h.msg.Tick)
		case h.msg.Kind == KindTicks:
			ticks = append(ticks, h.msg.Ticks...)
		}
	}
	if !w.stored[0] && len(trades) > 0 {
		n, err := w.store.insertTrades(ctx, "trades", trades, true)
		if err != nil {
			return fmt.Errorf("insert %d trades: %w", len(trades), err)
		}
		w.dups += int64(len(trades) - n)
	}
	w.stored[0] = true
	if !w.stored[1] && len(refunds) > 0 {
		n, err := w.store.insertTrades(ctx, "refunds", refunds, false)
		if err != nil {
			return fmt.Errorf("insert %d refunds: %w", len(refunds), err)
		}
		w.dups += int64(len(refunds) - n)
	}
	w.stored[1] = true
	if !w.stored[2] && len(ticks) > 0 {
		if _, err := w.store.insertTicks(ctx, ticks); err != nil {
			return fmt.Errorf("insert %d ticks: %w", len(ticks), err)
		}
	}
	w.stored[2] = true

	msgs := make([]Message, len(w.batch))
	for i := range w.batch {
		msgs[i] = w.batch[i].msg
	}
	if err := w.src.Ack(ctx, msgs); err != nil {
		return fmt.Errorf("ack %d messages (stored): %w", len(msgs), err)
	}

	w.mu.Lock()
	w.stats.Written += int64(len(msgs)) - poison
	w.stats.Poison += poison
	w.stats.Duplicates += w.dups
	w.stats.Pending = 0
	w.stats.LastFlush = w.opts.Now()
	w.mu.Unlock()

	clear(w.batch) // drop references to the decoded values
	w.batch = w.batch[:0]
	w.rows = 0
	clear(w.seen)
	w.stored = [3]bool{}
	w.dups = 0
	return nil
}

// fail logs a failed attempt and counts it.
func (w *Writer) fail(op string, err error, held int) {
	w.mu.Lock()
	w.stats.Failures++
	w.mu.Unlock()
	level := slog.LevelWarn
	if market.IsCode(err, market.CodeInvalidArgument) {
		level = slog.LevelError
	}
	w.log.Log(context.Background(), level, "history: "+op+" failed, will retry",
		"held", held, "backoff", w.nextBackoff(), "err", err)
}

// nextBackoff returns the wait before the next retry: 100ms, doubling up to
// MaxBackoff.
func (w *Writer) nextBackoff() time.Duration {
	switch {
	case w.backoff == 0:
		return minBackoff
	case w.backoff*2 > w.opts.MaxBackoff:
		return w.opts.MaxBackoff
	}
	return w.backoff * 2
}

// sleep waits the next backoff or until ctx ends.
func (w *Writer) sleep(ctx context.Context) {
	w.backoff = w.nextBackoff()
	t := time.NewTimer(w.backoff)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Stats returns the counters. It is safe to call from any goroutine.
func (w *Writer) Stats() WriterStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.stats
	if s.Pending > 0 {
		s.LagSeconds = max(w.opts.Now().Sub(w.lagAt).Seconds(), 0)
	}
	return s
}
