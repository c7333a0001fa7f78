package main

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// ringSize is how many recent versions per offer keep their send time; it
// must exceed the versions an offer moves while a tick is in flight.
const ringSize = 512

// sendTimes records when each (offer, version) was sent; providers write,
// subscribers read, without locks.
type sendTimes struct {
	rings [][ringSize]sendSlot
}

type sendSlot struct {
	version, at atomic.Int64
}

func newSendTimes(offers int) *sendTimes {
	return &sendTimes{rings: make([][ringSize]sendSlot, offers)}
}

func (s *sendTimes) put(offer int32, version, at int64) {
	sl := &s.rings[offer][version%ringSize]
	sl.version.Store(0) // readers skip the slot while it changes
	sl.at.Store(at)
	sl.version.Store(version)
}

func (s *sendTimes) get(offer int32, version int64) (int64, bool) {
	sl := &s.rings[offer][version%ringSize]
	if sl.version.Load() != version {
		return 0, false
	}
	at := sl.at.Load()
	return at, sl.version.Load() == version
}

// window is the measurement interval, in Unix nanoseconds; zero end: open.
type window struct {
	start, end atomic.Int64
}

func (w *window) in(t int64) bool {
	s, e := w.start.Load(), w.end.Load()
	return s != 0 && t >= s && (e == 0 || t < e)
}

// providerTotals are the provider streams' counters.
type providerTotals struct {
	sent, accepted, acceptedIn, errors, mismatches, closed atomic.Int64

	mu    sync.Mutex
	codes map[string]int64
}

func (t *providerTotals) code(c string) {
	t.mu.Lock()
	if t.codes == nil {
		t.codes = map[string]int64{}
	}
	t.codes[c]++
	t.mu.Unlock()
}

// providerStream drives one provider's stream: up to window price changes
// in flight, paced at rate per second (0: unpaced), until stop closes;
// then it waits (bounded) for the outstanding acks.
type providerStream struct {
	cfg    config
	fx     *fixture
	p      providerFix
	base   string
	times  *sendTimes
	meas   *window
	totals *providerTotals
	acks   *histogram // send → ack
	rate   float64
}

// batchConn holds a stream's writes once batching is on, until flush: the
// sender puts every message it may send now into one write, as a client
// pipelining its commands would. The handshake and the close go straight
// through.
type batchConn struct {
	net.Conn
	mu  sync.Mutex
	on  bool
	buf []byte
}

func (c *batchConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.on {
		return c.Conn.Write(b)
	}
	c.buf = append(c.buf, b...)
	return len(b), nil
}

// flush writes what is held; off ends batching (for the close).
func (c *batchConn) flush(off bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if off {
		c.on = false
	}
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

func (ps *providerStream) run(ctx context.Context, stop <-chan struct{}) error {
	url := "ws" + ps.base[len("http"):] + "/api/v1/stream/provider"
	var bc *batchConn
	nd := &net.Dialer{Timeout: 10 * time.Second}
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, WriteBufferSize: 4096, ReadBufferSize: 4096,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := nd.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			bc = &batchConn{Conn: c}
			return bc, nil
		}}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	ws, _, err := d.DialContext(dctx, url, http.Header{"Authorization": {"Bearer " + ps.p.token}})
	cancel()
	if err != nil {
		return err
	}
	defer ws.Close()
	bc.mu.Lock()
	bc.on = true
	bc.mu.Unlock()

	slots := make(chan struct{}, ps.cfg.window)
	expected := make([]int64, len(ps.p.offers)) // next version per own offer, predicted
	for i, o := range ps.p.offers {
		expected[i] = ps.fx.offers[o].version
	}
	var pred sync.Mutex // expected is corrected by the reader on a mismatch
	readerDone := make(chan struct{})
	var outstanding atomic.Int64
	go func() {
		defer close(readerDone)
		ps.read(ws, slots, expected, &pred, &outstanding)
	}()

	interval := time.Duration(0)
	if ps.rate > 0 {
		interval = time.Duration(float64(time.Second) / ps.rate)
	}
	// Each stream starts at its own phase of the interval, so that the
	// streams do not send in lockstep bursts.
	next := time.Now()
	if interval > 0 {
		next = next.Add(time.Duration(rand.Int64N(int64(interval))))
	}
	var n int64
	buf := make([]byte, 0, 160)
send:
	for {
		select {
		case slots <- struct{}{}:
		default:
			// Every slot is taken: send what is held, then wait for one.
			if err := bc.flush(false); err != nil {
				ps.totals.closed.Add(1)
				break send
			}
			select {
			case <-stop:
				break send
			case <-ctx.Done():
				break send
			case <-readerDone:
				break send
			case slots <- struct{}{}:
			}
		}
		select {
		case <-stop:
			break send
		case <-ctx.Done():
			break send
		default:
		}
		if interval > 0 {
			now := time.Now()
			if next.After(now) {
				if err := bc.flush(false); err != nil {
					ps.totals.closed.Add(1)
					break send
				}
				select {
				case <-stop:
					break send
				case <-time.After(next.Sub(now)):
				}
			} else if now.Sub(next) > time.Second {
				next = now // no burst to catch up a long stall
			}
			next = next.Add(interval)
		}
		i := int(n % int64(len(ps.p.offers)))
		offer := ps.p.offers[i]
		pred.Lock()
		expected[i]++
		v := expected[i]
		pred.Unlock()
		buf = append(buf[:0], `{"type":"price","ref":"`...)
		buf = strconv.AppendInt(buf, int64(i), 10)
		buf = append(buf, '.')
		buf = strconv.AppendInt(buf, v, 10)
		buf = append(buf, `","offer_id":"`...)
		buf = append(buf, ps.fx.offers[offer].id...)
		buf = append(buf, `","price":"`...)
		buf = append(buf, priceOf(int(offer), v)...)
		buf = append(buf, `"}`...)
		ps.times.put(offer, v, time.Now().UnixNano())
		outstanding.Add(1)
		_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := ws.WriteMessage(websocket.TextMessage, buf); err != nil {
			ps.totals.closed.Add(1)
			break
		}
		ps.totals.sent.Add(1)
		n++
	}
	_ = bc.flush(true)
	// Wait for the acks still in flight, at most 5 s.
	deadline := time.Now().Add(5 * time.Second)
	for outstanding.Load() > 0 && time.Now().Before(deadline) {
		select {
		case <-readerDone:
			deadline = time.Now()
		case <-time.After(5 * time.Millisecond):
		}
	}
	_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "done"), time.Now().Add(time.Second))
	_ = ws.SetReadDeadline(time.Now().Add(time.Second))
	<-readerDone
	return nil
}

var (
	ackPrefix   = []byte(`{"type":"ack","ref":"`)
	errorPrefix = []byte(`{"type":"error"`)
	versionKey  = []byte(`"version":`)
	codeKey     = []byte(`"code":"`)
	refKey      = []byte(`"ref":"`)
)

// read takes the replies: each frees a window slot.
func (ps *providerStream) read(ws *websocket.Conn, slots chan struct{}, expected []int64, pred *sync.Mutex, outstanding *atomic.Int64) {
	for {
		_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, b, err := ws.ReadMessage()
		if err != nil {
			if !websocket.IsCloseError(err, websocket.CloseNormalClosure) && outstanding.Load() > 0 {
				ps.totals.closed.Add(1)
				ps.totals.code("connection: " + err.Error())
			}
			return
		}
		switch {
		case bytes.HasPrefix(b, ackPrefix):
			outstanding.Add(-1)
			<-slots
			ps.totals.accepted.Add(1)
			if ps.meas.in(time.Now().UnixNano()) {
				ps.totals.acceptedIn.Add(1)
			}
			// ref is "<own offer index>.<predicted version>".
			ref := b[len(ackPrefix):]
			dot := bytes.IndexByte(ref, '.')
			q := bytes.IndexByte(ref, '"')
			vi := bytes.Index(b, versionKey)
			if dot < 0 || q < dot || vi < 0 {
				continue
			}
			i, _ := strconv.Atoi(string(ref[:dot]))
			want, _ := strconv.ParseInt(string(ref[dot+1:q]), 10, 64)
			got, _ := strconv.ParseInt(string(bytes.TrimRight(b[vi+len(versionKey):], "}")), 10, 64)
			if got != want && i >= 0 && i < len(expected) {
				ps.totals.mismatches.Add(1)
			}
			if i >= 0 && i < len(ps.p.offers) {
				if at, ok := ps.times.get(ps.p.offers[i], want); ok && ps.meas.in(at) {
					ps.acks.add(uint32(i), time.Duration(time.Now().UnixNano()-at))
				}
			}
		case bytes.HasPrefix(b, errorPrefix):
			outstanding.Add(-1)
			<-slots
			ps.totals.errors.Add(1)
			code := "?"
			if ci := bytes.Index(b, codeKey); ci >= 0 {
				rest := b[ci+len(codeKey):]
				if q := bytes.IndexByte(rest, '"'); q >= 0 {
					code = string(rest[:q])
				}
			}
			ps.totals.code(code)
			// The rejected change took no version: later sends of that
			// offer get one less than predicted.
			if ri := bytes.Index(b, refKey); ri >= 0 {
				rest := b[ri+len(refKey):]
				if dot := bytes.IndexByte(rest, '.'); dot > 0 {
					if i, err := strconv.Atoi(string(rest[:dot])); err == nil && i >= 0 && i < len(expected) {
						pred.Lock()
						expected[i]--
						pred.Unlock()
					}
				}
			}
		}
	}
}
