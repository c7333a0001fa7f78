package broker

import (
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"computebroker/broker/hub"
	"computebroker/market"
)

// The WebSocket gateway of API.md's Streams: GET /api/v1/stream/market
// (this file) and GET /api/v1/stream/provider (stream_provider.go).
//
// Goroutines per connection. A market-stream connection has one: the
// handler goroutine fasthttp gives the hijacked connection, which only
// reads (to see pongs and the close). Its frames are written by the hub's
// few writer loops (see marketConn), and pings come from a timer
// (time.AfterFunc), so that an idle subscriber costs one small stack and
// its buffers. A provider-stream connection has the handler goroutine,
// which reads and executes commands one at a time, and a writer goroutine
// draining its bounded outbound queue (acks, errors, leases). No lock but
// a connection's own write lock is held while writing to a socket.
//
// The upgrade uses fasthttp/websocket's FastHTTPUpgrader directly rather
// than gofiber/contrib/websocket, which copies every header, cookie and
// query parameter into maps that live as long as the connection: memory an
// idle subscriber need not hold.
//
// WebSocket close codes: 1001 when brokerd shuts down, 1008 (policy
// violation) for floods, an overflowing outbound queue or a token that
// stopped working, 1009 (message too big) for frames over the read limit —
// the WebSocket library sends 1009 itself when a frame exceeds the limit,
// which is the precise RFC 6455 code for it.

// StreamConfig tunes the WebSocket gateway; zero fields take the defaults.
type StreamConfig struct {
	// WriteTimeout bounds one frame write, so that a stuck client cannot
	// hold its writer (and hub.Close) for long (default 10 s).
	WriteTimeout time.Duration
	// PingInterval is how often the server pings an idle client (default
	// 25 s); PongWait is how long it waits for any sign of life from the
	// client before dropping it (default 60 s).
	PingInterval, PongWait time.Duration
	// MarketReadLimit bounds a frame a market-stream client sends (it
	// should send none; default 512 bytes).
	MarketReadLimit int64
	// ProviderReadLimit bounds one provider command frame (default 4 KiB).
	ProviderReadLimit int64
	// ProviderRate is the token bucket each provider connection's
	// commands are metered by; past it the connection is closed with 1008
	// (default 200 messages/s, bursts of 1000; BROKER_STREAM_RATE_LIMIT).
	ProviderRate Rate
	// ProviderQueue bounds the frames waiting to be written to one
	// provider connection; a client that does not read its acks is closed
	// with 1008 rather than let the queue grow (default 1024).
	ProviderQueue int
	// MaxProviderConns bounds the provider streams one provider account
	// may hold open on this brokerd (default 16; past it 429).
	MaxProviderConns int
	// MarketSendBuffer is the socket send buffer of a market-stream
	// connection (SO_SNDBUF, default 64 KiB). It bounds what the kernel
	// queues for a client that stopped reading: past it the hub's writer
	// blocks and the hub coalesces, instead of the kernel growing the
	// buffer to megabytes per connection.
	MarketSendBuffer int
	// RecheckInterval is how often an open provider stream checks that
	// its token still works (default 1 s, as token rotation promises).
	RecheckInterval time.Duration
	// Limiter applies the anonymous rate limit to market-stream upgrades;
	// nil: none.
	Limiter *Limiter
	Logger  *slog.Logger
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 25 * time.Second
	}
	if c.PongWait <= 0 {
		c.PongWait = 60 * time.Second
	}
	if c.PongWait <= c.PingInterval {
		c.PongWait = 2 * c.PingInterval
	}
	if c.MarketReadLimit <= 0 {
		c.MarketReadLimit = 512
	}
	if c.ProviderReadLimit <= 0 {
		c.ProviderReadLimit = 4096
	}
	if c.ProviderRate.PerSecond <= 0 || c.ProviderRate.Burst < 1 {
		c.ProviderRate = Rate{PerSecond: 200, Burst: 1000}
	}
	if c.ProviderQueue <= 0 {
		c.ProviderQueue = 1024
	}
	if c.MaxProviderConns <= 0 {
		c.MaxProviderConns = 16
	}
	if c.MarketSendBuffer <= 0 {
		c.MarketSendBuffer = 64 << 10
	}
	if c.RecheckInterval <= 0 {
		c.RecheckInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// StreamConfigFromEnv reads the gateway's settings from the environment:
// BROKER_STREAM_RATE_LIMIT "<per second>:<burst>" per provider connection
// (default 200:1000) and BROKER_STREAM_WRITE_TIMEOUT, a Go duration
// (default 10s).
func StreamConfigFromEnv(getenv func(string) string) (StreamConfig, error) {
	var c StreamConfig
	if v := getenv("BROKER_STREAM_RATE_LIMIT"); v != "" {
		r, ok := ParseRate(v)
		if !ok {
			return c, market.Invalid("BROKER_STREAM_RATE_LIMIT must be <per second>:<burst>, like 200:1000")
		}
		c.ProviderRate = r
	}
	if v := getenv("BROKER_STREAM_WRITE_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second || d > 10*time.Minute {
			return c, market.Invalid("BROKER_STREAM_WRITE_TIMEOUT must be a duration from 1s to 10m, like 10s")
		}
		c.WriteTimeout = d
	}
	return c, nil
}

// Streams is the WebSocket gateway: the market stream over the Live hub
// and the provider stream over Service.UpdateOffer, with the lease push
// fed by Live.OnTrade. Mount it with ServerConfig.Extra; Close ends every
// connection (with 1001) and is also run by the app's shutdown hook.
// Methods are safe for concurrent use.
type Streams struct {
	svc  *Service
	live *Live
	cfg  StreamConfig
	log  *slog.Logger

	marketUp, providerUp websocket.FastHTTPUpgrader

	conns     connSet          // every open connection, for Close
	providers providerRegistry // provider id -> its open provider streams
	stopTrade func()
	closed    atomic.Bool
	closeOnce sync.Once

	marketOpen, providerOpen                     atomic.Int64
	acks, cmdErrors, leases, policyCloses        atomic.Uint64
	marketAccepted, providerAccepted, leaseDrops atomic.Uint64
}

// NewStreams returns the gateway over svc and live; live may be nil (the
// routes are then mounted but refuse with 503), as for listing routes.
func NewStreams(svc *Service, live *Live, cfg StreamConfig) *Streams {
	cfg = cfg.withDefaults()
	s := &Streams{svc: svc, live: live, cfg: cfg, log: cfg.Logger}
	// Write buffers come from a pool and are held only while a frame is
	// written: an idle connection keeps none.
	s.marketUp = websocket.FastHTTPUpgrader{
		ReadBufferSize: 256, WriteBufferSize: 1024, WriteBufferPool: &sync.Pool{},
		HandshakeTimeout: 10 * time.Second,
		CheckOrigin:      func(*fasthttp.RequestCtx) bool { return true }, // public, read-only
	}
	s.providerUp = websocket.FastHTTPUpgrader{
		ReadBufferSize: 1024, WriteBufferSize: 1024, WriteBufferPool: &sync.Pool{},
		HandshakeTimeout: 10 * time.Second,
		CheckOrigin:      func(*fasthttp.RequestCtx) bool { return true }, // the token, not a cookie, authorises
	}
	s.conns.init()
	s.providers.init()
	if live != nil {
		s.stopTrade = live.OnTrade(s.onTrade)
	}
	return s
}

// Mount registers the two stream routes on app; it has the signature of
// ServerConfig.Extra. The market stream's upgrade request is metered by the
// anonymous (per IP) rate limit, the provider stream's by auth.
func (s *Streams) Mount(app *fiber.App, auth fiber.Handler) {
	anon := (&handlers{svc: s.svc, cfg: ServerConfig{Limiter: s.cfg.Limiter}}).anonymous
	app.Get("/api/v1/stream/market", anon, s.marketStream)
	app.Get("/api/v1/stream/provider", auth, s.providerStream)
	app.Hooks().OnShutdown(func() error {
		s.Close()
		return nil
	})
}

// Close refuses new streams and closes every open one with 1001 (going
// away). It waits at most about a second for the close frames.
func (s *Streams) Close() {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		if s.stopTrade != nil {
			s.stopTrade()
		}
		deadline := time.Now().Add(time.Second)
		var wg sync.WaitGroup
		for i := range s.conns.shards {
			wg.Add(1)
			go func(sh *connShard) {
				defer wg.Done()
				for _, c := range sh.list() {
					c.goAway(deadline)
				}
			}(&s.conns.shards[i])
		}
		wg.Wait()
	})
}

// RegisterMetrics puts the hub's and the gateway's counters on m.
func (s *Streams) RegisterMetrics(m *Metrics) {
	gauge := func(name, help string, f func() float64) {
		m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	counter := func(name, help string, f func() float64) {
		m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
	}
	if s.live != nil {
		h := s.live.Hub()
		gauge("broker_hub_subscribers", "Market-stream subscribers registered in the hub.", func() float64 { return float64(h.Stats().Subscribers) })
		counter("broker_hub_published_total", "Market updates published to the hub.", func() float64 { return float64(h.Stats().Published) })
		counter("broker_hub_enqueued_total", "Update deliveries taken into subscriber queues.", func() float64 { return float64(h.Stats().Enqueued) })
		counter("broker_hub_frames_sent_total", "Frames written to market-stream subscribers, snapshots included.", func() float64 { return float64(h.Stats().FramesSent) })
		counter("broker_hub_writes_total", "Writes to market-stream sockets (each carries one or more frames).", func() float64 { return float64(h.Stats().Writes) })
		counter("broker_hub_snapshots_total", "Snapshot frames written to market-stream subscribers.", func() float64 { return float64(h.Stats().Snapshots) })
		counter("broker_hub_coalesced_total", "Pending updates replaced by a newer state (slow subscribers).", func() float64 { return float64(h.Stats().Coalesced) })
		counter("broker_hub_resyncs_total", "Subscribers that fell too far behind and got a fresh snapshot.", func() float64 { return float64(h.Stats().Resyncs) })
		counter("broker_hub_dropped_total", "Subscribers dropped on a write or snapshot error.", func() float64 { return float64(h.Stats().Dropped) })
	}
	gauge("broker_stream_market_connections", "Open market-stream WebSocket connections.", func() float64 { return float64(s.marketOpen.Load()) })
	gauge("broker_stream_provider_connections", "Open provider-stream WebSocket connections.", func() float64 { return float64(s.providerOpen.Load()) })
	counter("broker_stream_market_accepted_total", "Market-stream connections accepted.", func() float64 { return float64(s.marketAccepted.Load()) })
	counter("broker_stream_provider_accepted_total", "Provider-stream connections accepted.", func() float64 { return float64(s.providerAccepted.Load()) })
	counter("broker_stream_provider_acks_total", "Provider-stream commands acknowledged.", func() float64 { return float64(s.acks.Load()) })
	counter("broker_stream_provider_errors_total", "Provider-stream commands answered with an error.", func() float64 { return float64(s.cmdErrors.Load()) })
	counter("broker_stream_leases_pushed_total", "Lease messages queued to provider streams.", func() float64 { return float64(s.leases.Load()) })
	counter("broker_stream_leases_dropped_total", "Lease messages not queued: the provider stream's queue was full (it was closed; the lease is in GET /api/v1/leases).", func() float64 { return float64(s.leaseDrops.Load()) })
	counter("broker_stream_policy_closes_total", "Stream connections closed for abuse (1008/1009).", func() float64 { return float64(s.policyCloses.Load()) })
}

// ---- the market stream ----

// marketStream validates the filter, then upgrades. Errors before the
// upgrade are ordinary JSON errors.
func (s *Streams) marketStream(c *fiber.Ctx) error {
	f := hub.Filter{ResourceClass: c.Query("resource_class"), Region: c.Query("region")}
	if f.ResourceClass != "" {
		if _, ok := s.svc.cfg.Catalog.Class(f.ResourceClass); !ok {
			return market.Invalid("unknown resource_class %q", f.ResourceClass)
		}
	}
	if f.Region != "" {
		if _, ok := s.svc.cfg.Catalog.Region(f.Region); !ok {
			return market.Invalid("unknown region %q", f.Region)
		}
	}
	if !websocket.FastHTTPIsWebSocketUpgrade(c.Context()) {
		return market.Invalid("this is a WebSocket endpoint: send a GET with Connection: Upgrade and Upgrade: websocket")
	}
	if s.live == nil || s.closed.Load() {
		return market.Errorf(market.CodeUnavailable, "the market stream is not available (shutting down)")
	}
	if tc, ok := c.Context().Conn().(interface{ SetWriteBuffer(int) error }); ok {
		_ = tc.SetWriteBuffer(s.cfg.MarketSendBuffer)
	}
	if err := s.marketUp.Upgrade(c.Context(), func(ws *websocket.Conn) { s.serveMarket(ws, f) }); err != nil {
		return market.Invalid("WebSocket handshake: %v", err)
	}
	return nil
}

// marketConn is one market-stream connection: the hub's Conn.
//
// Frames go straight to the TCP connection under the WebSocket, with a
// header built here (a server's frames are not masked): the hub writes all
// the frames a subscriber has pending in one write(2), from one of its few
// writer loops, without blocking (TryWrite); a batch the socket does not
// take at once is finished by a goroutine of the hub (Write). Control
// frames (pings, pongs, the close) are written here too, never in the
// middle of a half-written batch. Every write is serialised by wsem.
type marketConn struct {
	ws      *websocket.Conn
	raw     net.Conn        // the TCP connection under ws
	rc      syscall.RawConn // raw's, for non-blocking writes; nil: raw has none
	timeout time.Duration
	sub     atomic.Pointer[hub.Subscription]
	stopped atomic.Bool
	every   time.Duration

	// wsem (a semaphore, so that goAway can give up waiting) guards the
	// writes and the fields below.
	wsem     chan struct{}
	partial  bool      // a batch is half written: nothing else may go out until the rest is
	closing  bool      // the close frame went out: no more data frames
	deadline time.Time // the write deadline last set on raw

	mu   sync.Mutex // guards ping, which the timer's own callback re-arms
	ping *time.Timer
}

// newMarketConn wraps ws; frames are written to the connection under it.
func newMarketConn(ws *websocket.Conn, timeout, every time.Duration) *marketConn {
	raw := rawConn(ws)
	mc := &marketConn{ws: ws, raw: raw, timeout: timeout, every: every, wsem: make(chan struct{}, 1)}
	if sc, ok := raw.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			mc.rc = rc
		}
	}
	return mc
}

func (mc *marketConn) lock()   { mc.wsem <- struct{}{} }
func (mc *marketConn) unlock() { <-mc.wsem }

// lockBy takes the write lock unless that takes past deadline.
func (mc *marketConn) lockBy(deadline time.Time) bool {
	select {
	case mc.wsem <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case mc.wsem <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

// AppendHeader appends the header of a final, unmasked text frame of n
// bytes (RFC 6455 section 5.2).
func (mc *marketConn) AppendHeader(dst []byte, n int) []byte {
	return appendFrameHeader(dst, websocket.TextMessage, n)
}

func appendFrameHeader(b []byte, opcode, n int) []byte {
	first := byte(0x80 | opcode) // FIN
	switch {
	case n < 126:
		return append(b, first, byte(n))
	case n < 1<<16:
		return append(b, first, 126, byte(n>>8), byte(n))
	default:
		u := uint64(n)
		return append(b, first, 127, byte(u>>56), byte(u>>48), byte(u>>40), byte(u>>32), byte(u>>24), byte(u>>16), byte(u>>8), byte(u))
	}
}

// armDeadline makes sure the write deadline is at least half the write
// timeout away. Setting it costs a timer update, so it is not set anew
// for every write: a write may get between WriteTimeout/2 and WriteTimeout.
// The caller holds the write lock.
func (mc *marketConn) armDeadline() {
	now := time.Now()
	if mc.deadline.Sub(now) < mc.timeout/2 {
		mc.deadline = now.Add(mc.timeout)
		_ = mc.raw.SetWriteDeadline(mc.deadline)
	}
}

// TryWrite writes what the socket takes of b now, without waiting: one
// write(2) on the non-blocking socket. It runs on a hub writer loop.
func (mc *marketConn) TryWrite(b []byte) (int, error) {
	mc.lock()
	defer mc.unlock()
	if mc.partial || mc.closing {
		return 0, net.ErrClosed
	}
	if mc.rc == nil { // not a socket: a blocking write
		mc.armDeadline()
		n, err := mc.raw.Write(b)
		return n, mc.failed(err)
	}
	mc.armDeadline() // the raw write below is refused past it too
	n := 0
	var werr error
	err := mc.rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			k, e := syscall.Write(int(fd), b[n:])
			if k > 0 {
				n += k
			}
			if e == syscall.EINTR {
				continue
			}
			if e != nil && e != syscall.EAGAIN {
				werr = e
			}
			if e != nil || k <= 0 {
				break
			}
		}
		return true // never wait for the socket: the hub finishes the batch elsewhere
	})
	if err == nil {
		err = werr
	}
	if err == nil && n < len(b) {
		mc.partial = true
	}
	return n, mc.failed(err)
}

// Write writes all of b, blocking until the write deadline: the rest of a
// batch TryWrite did not finish, or a snapshot. It runs on a goroutine of
// the hub's for this subscription.
func (mc *marketConn) Write(b []byte) error {
	mc.lock()
	defer mc.unlock()
	if mc.closing {
		return net.ErrClosed
	}
	mc.armDeadline()
	_, err := mc.raw.Write(b)
	mc.partial = false
	return mc.failed(err)
}

// failed closes the socket on a write error, which ends the read loop, and
// through it the connection.
func (mc *marketConn) failed(err error) error {
	if err != nil {
		_ = mc.raw.Close()
	}
	return err
}

// control writes a control frame (opcode, payload) unless a batch is half
// written or the close frame went out. It waits for the write lock until
// deadline at most.
func (mc *marketConn) control(opcode int, payload []byte, deadline time.Time) error {
	if !mc.lockBy(deadline) {
		return nil // a stalled write holds the socket; its own deadline decides
	}
	defer mc.unlock()
	if mc.partial || mc.closing {
		return nil
	}
	var buf [2 + 125]byte
	b := append(appendFrameHeader(buf[:0], opcode, len(payload)), payload...)
	mc.deadline = deadline
	_ = mc.raw.SetWriteDeadline(deadline)
	_, err := mc.raw.Write(b)
	if opcode == websocket.CloseMessage {
		mc.closing = true
	}
	return mc.failed(err)
}

// pinged runs on the ping timer: it pings the client and re-arms, and
// closes the socket when the subscription ended on its own (a backstop:
// the hub's write errors and the snapshot function close it themselves).
func (mc *marketConn) pinged() {
	if mc.stopped.Load() {
		return
	}
	if sub := mc.sub.Load(); sub != nil {
		select {
		case <-sub.Done():
			_ = mc.raw.Close()
			return
		default:
		}
	}
	if err := mc.control(websocket.PingMessage, nil, time.Now().Add(mc.timeout)); err != nil {
		return
	}
	mc.mu.Lock()
	mc.ping.Reset(mc.every)
	mc.mu.Unlock()
}

func (mc *marketConn) goAway(deadline time.Time) {
	_ = mc.control(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutting down"), deadline)
	// ws.Close does nothing on a hijacked connection: the read loop ends
	// when the client answers the close, or at the deadline.
	_ = mc.raw.SetReadDeadline(deadline)
}

// serveMarket runs on the hijacked connection's goroutine: it subscribes,
// then reads (discarding) until the client goes, then unsubscribes.
func (s *Streams) serveMarket(ws *websocket.Conn, f hub.Filter) {
	mc := newMarketConn(ws, s.cfg.WriteTimeout, s.cfg.PingInterval)
	id := s.conns.add(mc)
	defer s.conns.remove(id)
	if s.closed.Load() { // Close ran between the check and the upgrade
		mc.goAway(time.Now().Add(time.Second))
		return
	}
	s.marketAccepted.Add(1)
	s.marketOpen.Add(1)
	defer s.marketOpen.Add(-1)

	snapshot := func() ([]market.Offer, error) {
		offers, err := s.live.Snapshot(f)
		if err != nil {
			_ = mc.raw.Close()
		}
		return offers, err
	}
	h := s.live.Hub()
	sub, err := h.Subscribe(mc, f, snapshot)
	if err != nil {
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseTryAgainLater, "market stream unavailable"), time.Now().Add(time.Second))
		_ = ws.Close()
		return
	}
	mc.sub.Store(sub)

	ws.SetReadLimit(s.cfg.MarketReadLimit)
	alive := func() error { return ws.SetReadDeadline(time.Now().Add(s.cfg.PongWait)) }
	_ = alive()
	ws.SetPongHandler(func(string) error { return alive() })
	// The library would answer pings and the close with writes of its own,
	// which could land in the middle of a half-written batch.
	ws.SetPingHandler(func(data string) error {
		return mc.control(websocket.PongMessage, []byte(data), time.Now().Add(mc.timeout))
	})
	ws.SetCloseHandler(func(code int, _ string) error {
		msg := []byte{}
		if code != websocket.CloseNoStatusReceived {
			msg = websocket.FormatCloseMessage(code, "")
		}
		_ = mc.control(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		return nil
	})
	mc.mu.Lock()
	mc.ping = time.AfterFunc(s.cfg.PingInterval, mc.pinged)
	mc.mu.Unlock()

	for {
		_, r, err := ws.NextReader()
		if err != nil {
			break
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			break
		}
		_ = alive()
	}
	mc.stopped.Store(true)
	mc.mu.Lock()
	mc.ping.Stop()
	mc.mu.Unlock()
	h.Unsubscribe(sub)
	_ = ws.Close()
	<-sub.Done() // no hub write is in flight when the handler returns the conn
}

// ---- connection registry ----

// streamConn is an open stream connection as Close sees it.
type streamConn interface {
	goAway(deadline time.Time)
}

const connShards = 32

type connShard struct {
	mu sync.Mutex
	m  map[uint64]streamConn
	_  [40]byte
}

func (sh *connShard) list() []streamConn {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	out := make([]streamConn, 0, len(sh.m))
	for _, c := range sh.m {
		out = append(out, c)
	}
	return out
}

// connSet holds every open stream connection, sharded so that connecting
// and disconnecting do not contend.
type connSet struct {
	next   atomic.Uint64
	shards [connShards]connShard
}

func (cs *connSet) init() {
	for i := range cs.shards {
		cs.shards[i].m = map[uint64]streamConn{}
	}
}

func (cs *connSet) add(c streamConn) uint64 {
	id := cs.next.Add(1)
	sh := &cs.shards[id%connShards]
	sh.mu.Lock()
	sh.m[id] = c
	sh.mu.Unlock()
	return id
}

func (cs *connSet) remove(id uint64) {
	sh := &cs.shards[id%connShards]
	sh.mu.Lock()
	delete(sh.m, id)
	sh.mu.Unlock()
}

// drain reads and drops what the peer still sends, until it closes or the
// deadline passes, so that closing the socket right after a close frame
// does not reset the connection (and lose the close frame) while the peer
// is still writing.
func drain(c net.Conn, d time.Duration) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, _ = io.Copy(io.Discard, c)
}
