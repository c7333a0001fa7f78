package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/bits"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// subTotals are the subscribers' rare counters, and the subscribers,
// which count their deliveries themselves (5,000 readers adding to one
// counter would contend for its cache line).
type subTotals struct {
	connected, failed, snapshots, resyncs  atomic.Int64
	removes, trades, readErrors, seqErrors atomic.Int64

	mu   sync.Mutex
	subs []*subscriber
}

func (t *subTotals) add(s *subscriber) {
	t.mu.Lock()
	t.subs = append(t.subs, s)
	t.mu.Unlock()
}

// sum adds f over the subscribers.
func (t *subTotals) sum(f func(*subscriber) int64) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var n int64
	for _, s := range t.subs {
		n += f(s)
	}
	return n
}

// dialSubscriber opens a market stream from local (nil: any address).
func dialSubscriber(ctx context.Context, base, query string, local net.Addr) (*websocket.Conn, error) {
	nd := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: local}
	d := websocket.Dialer{HandshakeTimeout: 15 * time.Second, ReadBufferSize: 2048, WriteBufferSize: 256, NetDialContext: nd.DialContext}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	ws, resp, err := d.DialContext(ctx, "ws"+base[len("http"):]+"/api/v1/stream/market"+query, nil)
	if err != nil && resp != nil {
		return nil, errors.New(err.Error() + " (HTTP " + strconv.Itoa(resp.StatusCode) + ")")
	}
	return ws, err
}

var (
	tickPrefix     = []byte(`{"type":"tick",`)
	snapshotPrefix = []byte(`{"type":"snapshot",`)
	removePrefix   = []byte(`{"type":"remove",`)
	tradePrefix    = []byte(`{"type":"trade",`)
	seqKey         = []byte(`"seq":`)
	offerKey       = []byte(`"offer_id":"`)
)

// subscriber reads one market stream until its connection is closed. An
// active one times every tick; an idle one only answers pings. Its messages
// come from its own goroutine (run, over gorilla/websocket) or from the
// shared epoll reader (rawws_linux.go).
type subscriber struct {
	ws     *websocket.Conn
	active bool
	fx     *fixture
	times  *sendTimes
	meas   *window
	hist   *histogram
	totals *subTotals
	snap   chan struct{} // closed at the first snapshot
	shard  uint32        // histogram shard

	seq       int64 // the last message's seq
	snapshots int64 // snapshots received
	over      bool  // the stream has ended

	deliveries, deliveriesIn, unmatched atomic.Int64
}

func (s *subscriber) run() {
	var buf []byte
	for {
		_, r, err := s.ws.NextReader()
		if err != nil {
			s.end(err)
			return
		}
		buf, err = readAll(r, buf[:0])
		if err != nil {
			s.end(err)
			return
		}
		s.message(buf, time.Now().UnixNano())
		if cap(buf) > 8192 {
			buf = nil // a large snapshot: do not keep its buffer
		}
	}
}

// message handles one message read at now (ns). It keeps nothing of b.
func (s *subscriber) message(b []byte, now int64) {
	if n := seqOf(b); n != s.seq+1 {
		s.totals.seqErrors.Add(1) // seq must rise by one per message
		s.seq = n
	} else {
		s.seq = n
	}
	switch {
	case bytes.HasPrefix(b, tickPrefix):
		if s.active {
			s.tick(b, now)
		}
	case bytes.HasPrefix(b, snapshotPrefix):
		s.totals.snapshots.Add(1)
		if s.snapshots++; s.snapshots == 1 {
			close(s.snap)
		} else {
			s.totals.resyncs.Add(1)
		}
	case bytes.HasPrefix(b, removePrefix):
		s.totals.removes.Add(1)
	case bytes.HasPrefix(b, tradePrefix):
		s.totals.trades.Add(1)
	}
}

// end records the end of the stream: err is what ended it (nil or a
// normal close: not a read error).
func (s *subscriber) end(err error) {
	if s.over {
		return
	}
	s.over = true
	if s.snapshots == 0 {
		close(s.snap)
	}
	if err != nil && !errors.Is(err, net.ErrClosed) && !websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway) {
		s.totals.readErrors.Add(1)
	}
}

func (s *subscriber) tick(b []byte, now int64) {
	s.deliveries.Add(1)
	oi := bytes.Index(b, offerKey)
	vi := bytes.LastIndex(b, versionKey)
	if oi < 0 || vi < 0 {
		s.unmatched.Add(1)
		return
	}
	id := b[oi+len(offerKey):]
	id = id[:max(0, bytes.IndexByte(id, '"'))]
	idx, ok := s.fx.offerIndex[string(id)]
	if !ok {
		s.unmatched.Add(1)
		return
	}
	v, _ := strconv.ParseInt(string(bytes.TrimRight(b[vi+len(versionKey):], "}")), 10, 64)
	at, ok := s.times.get(idx, v)
	if !ok {
		s.unmatched.Add(1)
		return
	}
	if s.meas.in(at) {
		s.deliveriesIn.Add(1)
		s.hist.add(s.shard, time.Duration(now-at))
	}
}

func seqOf(b []byte) int64 {
	i := bytes.Index(b, seqKey)
	if i < 0 {
		return 0
	}
	var n int64
	for _, c := range b[i+len(seqKey):] {
		if c < '0' || c > '9' {
			break
		}
		n = 10*n + int64(c-'0')
	}
	return n
}

func readAll(r io.Reader, b []byte) ([]byte, error) {
	if cap(b) == 0 {
		b = make([]byte, 0, 512)
	}
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// histogram counts latencies in log-linear buckets (16 per power of two,
// so a quantile is within 6%), sharded to keep 5,000 readers from
// contending on one cache line.
type histogram struct {
	shards [16]struct {
		counts [histBuckets]atomic.Int64
		_      [64]byte
	}
}

const histBuckets = 16 + 48*16

func bucketOf(us uint64) int {
	if us < 16 {
		return int(us)
	}
	e := bits.Len64(us) - 5
	b := 16 + e*16 + int((us>>uint(e))&15)
	return min(b, histBuckets-1)
}

// bucketLow is the smallest latency, in µs, of bucket b.
func bucketLow(b int) uint64 {
	if b < 16 {
		return uint64(b)
	}
	e, m := (b-16)/16, (b-16)%16
	return uint64(16+m) << uint(e)
}

func (h *histogram) add(shard uint32, d time.Duration) {
	us := d.Microseconds()
	if us < 0 {
		us = 0
	}
	sh := &h.shards[shard%16]
	sh.counts[bucketOf(uint64(us))].Add(1)
}

// merged returns the total counts per bucket.
func (h *histogram) merged() []int64 {
	out := make([]int64, histBuckets)
	for i := range h.shards {
		for b := range out {
			out[b] += h.shards[i].counts[b].Load()
		}
	}
	return out
}

// quantile returns the upper edge, in ms, of the bucket holding quantile
// q of counts; the maximum for q = 1.
func quantile(counts []int64, q float64) float64 {
	var total int64
	for _, c := range counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	rank := int64(q*float64(total) + 0.5)
	rank = max(1, min(rank, total))
	var seen int64
	for b, c := range counts {
		seen += c
		if seen >= rank {
			return float64(bucketLow(b+1)) / 1000
		}
	}
	return 0
}
