package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/gofiber/fiber/v2"

	"computebroker/broker/hub"
	"computebroker/market"
)

// providerStream authenticates (auth ran before it), checks the role and
// the per-provider connection bound, then upgrades.
func (s *Streams) providerStream(c *fiber.Ctx) error {
	who := caller(c)
	if err := requireRole(who, market.RoleProvider); err != nil {
		return err
	}
	if !websocket.FastHTTPIsWebSocketUpgrade(c.Context()) {
		return market.Invalid("this is a WebSocket endpoint: send a GET with Connection: Upgrade and Upgrade: websocket")
	}
	if s.closed.Load() {
		return market.Errorf(market.CodeUnavailable, "the provider stream is not available (shutting down)")
	}
	token := bearer(c)
	if token == "" {
		token = c.Query("token")
	}
	if s.providers.count(who.ID) >= s.cfg.MaxProviderConns {
		c.Set(fiber.HeaderRetryAfter, "1")
		return market.Errorf(market.CodeRateLimited, "at most %d provider streams per account on one server", s.cfg.MaxProviderConns)
	}
	err := s.providerUp.Upgrade(c.Context(), func(ws *websocket.Conn) { s.serveProvider(ws, who, token) })
	if err != nil {
		return market.Invalid("WebSocket handshake: %v", err)
	}
	return nil
}

// providerConn is one provider-stream connection.
type providerConn struct {
	s      *Streams
	ws     *websocket.Conn
	token  string
	caller atomic.Pointer[market.Account]
	out    chan []byte   // frames for the writer; bounded
	done   chan struct{} // closed when the connection ends
	ctx    context.Context
	cancel context.CancelFunc

	endOnce   sync.Once
	abortOnce sync.Once

	mu      sync.Mutex // guards recheck, which the timer's own callback re-arms
	recheck *time.Timer
}

// providerCommand is a client frame; every field is checked by type.
type providerCommand struct {
	Type    string  `json:"type"`
	Ref     *string `json:"ref"`
	OfferID string  `json:"offer_id"`
	Price   *string `json:"price"`
	Units   *int64  `json:"units"`
}

type providerError struct {
	Type    string      `json:"type"`
	Ref     string      `json:"ref"`
	Code    market.Code `json:"code"`
	Message string      `json:"message"`
}

type providerLease struct {
	Type  string    `json:"type"`
	Lease leaseView `json:"lease"`
}

// serveProvider runs on the hijacked connection's goroutine: it reads and
// executes commands one at a time, in order, until the client goes or
// abuses the connection.
func (s *Streams) serveProvider(ws *websocket.Conn, who market.Account, token string) {
	pc := &providerConn{s: s, ws: ws, token: token, out: make(chan []byte, s.cfg.ProviderQueue), done: make(chan struct{})}
	pc.caller.Store(&who)
	pc.ctx, pc.cancel = context.WithCancel(context.Background())
	id := s.conns.add(pc)
	defer s.conns.remove(id)
	if s.closed.Load() {
		pc.goAway(time.Now().Add(time.Second))
		return
	}
	// The bound was checked before the upgrade; a race past it is closed.
	if !s.providers.add(who.ID, pc, s.cfg.MaxProviderConns) {
		pc.abort(websocket.ClosePolicyViolation, "too many provider streams for this account")
		_ = ws.Close()
		return
	}
	defer s.providers.remove(who.ID, pc)
	s.providerAccepted.Add(1)
	s.providerOpen.Add(1)
	defer s.providerOpen.Add(-1)

	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		pc.writeLoop()
	}()
	pc.mu.Lock()
	pc.recheck = time.AfterFunc(s.cfg.RecheckInterval, pc.checkToken)
	pc.mu.Unlock()

	ws.SetReadLimit(s.cfg.ProviderReadLimit)
	alive := func() error { return ws.SetReadDeadline(time.Now().Add(s.cfg.PongWait)) }
	_ = alive()
	ws.SetPongHandler(func(string) error { return alive() })
	bucket := tokenBucket{rate: s.cfg.ProviderRate.PerSecond, burst: s.cfg.ProviderRate.Burst}

	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				// The library has sent 1009 (message too big).
				s.policyCloses.Add(1)
				drain(ws.UnderlyingConn(), time.Second)
			}
			break
		}
		_ = alive()
		if !bucket.take(time.Now()) {
			pc.abort(websocket.ClosePolicyViolation, "rate limit exceeded: "+strconv.FormatFloat(bucket.rate, 'f', -1, 64)+" messages/s")
			break
		}
		if !pc.send(pc.execute(msg)) {
			pc.abort(websocket.ClosePolicyViolation, "outbound queue full: read the replies")
			break
		}
	}
	pc.end()
	pc.mu.Lock()
	pc.recheck.Stop()
	pc.mu.Unlock()
	_ = ws.Close()
	<-writerDone
}

// execute runs one command and returns the reply frame.
func (pc *providerConn) execute(msg []byte) []byte {
	var cmd providerCommand
	if err := decodeCommand(msg, &cmd); err != nil {
		return pc.errorFrame(refOf(msg), err)
	}
	ref := *cmd.Ref
	var patch OfferPatch
	switch cmd.Type {
	case "price":
		if cmd.Price == nil || cmd.Units != nil {
			return pc.errorFrame(ref, market.Invalid("a price message has offer_id and price, and no units"))
		}
		patch.Price = cmd.Price
	case "units":
		if cmd.Units == nil || cmd.Price != nil {
			return pc.errorFrame(ref, market.Invalid("a units message has offer_id and units, and no price"))
		}
		patch.Units = cmd.Units
	default:
		return pc.errorFrame(ref, market.Invalid("unknown message type %q: want price or units", cmd.Type))
	}
	if cmd.OfferID == "" {
		return pc.errorFrame(ref, market.Invalid("offer_id is required"))
	}
	ctx, cancel := context.WithTimeout(pc.ctx, pc.s.cfg.CommandTimeout)
	o, err := pc.s.svc.UpdateOffer(ctx, *pc.caller.Load(), cmd.OfferID, patch)
	cancel()
	if err != nil {
		return pc.errorFrame(ref, err)
	}
	pc.s.acks.Add(1)
	b := make([]byte, 0, 40+len(ref))
	b = append(b, `{"type":"ack","ref":`...)
	b = hub.AppendJSONString(b, ref)
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, o.Version, 10)
	return append(b, '}')
}

// decodeCommand reads one JSON object strictly, as the REST API reads
// bodies: unknown fields, trailing data and wrong types are invalid, and
// type and ref are required.
func decodeCommand(msg []byte, cmd *providerCommand) error {
	if len(bytes.TrimSpace(msg)) == 0 {
		return market.Invalid("a message must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(msg))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cmd); err != nil {
		return market.Invalid("%s", describeJSONError(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return market.Invalid("a message must hold exactly one JSON object")
	}
	if cmd.Ref == nil {
		return market.Invalid("ref is required")
	}
	if cmd.Type == "" {
		return market.Invalid("type is required: price or units")
	}
	return nil
}

// refOf recovers the ref of a message that did not decode, when it has
// one, so that the error still answers it.
func refOf(msg []byte) string {
	var r struct {
		Ref string `json:"ref"`
	}
	_ = json.Unmarshal(msg, &r)
	return r.Ref
}

func (pc *providerConn) errorFrame(ref string, err error) []byte {
	pc.s.cmdErrors.Add(1)
	e := providerError{Type: "error", Ref: ref, Code: market.ErrorCode(err), Message: "internal error"}
	var me *market.Error
	if errors.As(err, &me) {
		e.Message = me.Message
	} else {
		pc.s.log.Error("provider stream command failed", "provider", pc.caller.Load().ID, "err", err)
	}
	b, _ := json.Marshal(e)
	return b
}

// send queues a frame for the writer without blocking; false means the
// queue is full (or the connection has ended).
func (pc *providerConn) send(b []byte) bool {
	select {
	case <-pc.done:
		return false
	default:
	}
	select {
	case pc.out <- b:
		return true
	default:
		return false
	}
}

// writeLoop is the connection's one writer: queued frames and pings.
func (pc *providerConn) writeLoop() {
	ping := time.NewTicker(pc.s.cfg.PingInterval)
	defer ping.Stop()
	ws, timeout := pc.ws, pc.s.cfg.WriteTimeout
	for {
		select {
		case b := <-pc.out:
			_ = ws.SetWriteDeadline(time.Now().Add(timeout))
			if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
				_ = ws.Close() // ends the read loop
				return
			}
		case <-ping.C:
			if err := ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(timeout)); err != nil {
				_ = ws.Close()
				return
			}
		case <-pc.done:
			return
		}
	}
}

// end stops the writer and the command context.
func (pc *providerConn) end() {
	pc.endOnce.Do(func() {
		close(pc.done)
		pc.cancel()
	})
}

// abort closes the connection for abuse: a close frame with code and
// reason, then, so that the peer gets it, the socket is drained briefly
// before it is closed. It runs on the read loop's goroutine.
func (pc *providerConn) abort(code int, reason string) {
	pc.abortOnce.Do(func() {
		pc.s.policyCloses.Add(1)
		pc.end()
		_ = pc.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
		drain(pc.ws.UnderlyingConn(), time.Second)
	})
}

// abortAsync is abort from a goroutine that must not block (the trade
// listener, the token check): the close frame is sent and the socket
// closed, which ends the read loop.
func (pc *providerConn) abortAsync(code int, reason string) {
	go pc.abortOnce.Do(func() {
		pc.s.policyCloses.Add(1)
		pc.end()
		_ = pc.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
		time.Sleep(100 * time.Millisecond) // let the close frame leave before the socket goes
		_ = pc.ws.Close()
	})
}

func (pc *providerConn) goAway(deadline time.Time) {
	pc.abortOnce.Do(func() {
		pc.end()
		_ = pc.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutting down"), deadline)
		_ = pc.ws.Close()
	})
}

// checkToken runs on a timer: a stream stops when its token stops working
// (rotated or revoked), and follows the provider's standing.
func (pc *providerConn) checkToken() {
	select {
	case <-pc.done:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(pc.ctx, 5*time.Second)
	a, err := pc.s.svc.Authenticate(ctx, pc.token)
	cancel()
	switch {
	case market.IsCode(err, market.CodeUnauthenticated):
		pc.abortAsync(websocket.ClosePolicyViolation, "token no longer valid")
		return
	case err == nil && a.Role != market.RoleProvider:
		pc.abortAsync(websocket.ClosePolicyViolation, "not a provider account")
		return
	case err == nil:
		pc.caller.Store(&a)
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	select {
	case <-pc.done:
	default:
		pc.recheck.Reset(pc.s.cfg.RecheckInterval)
	}
}

// onTrade pushes a lease message to every stream of the trade's provider.
// It runs on Live's trade follower and never blocks: a connection whose
// queue is full is closed (the lease stays in GET /api/v1/leases).
func (s *Streams) onTrade(t market.Trade) {
	conns := s.providers.get(t.ProviderID)
	if len(conns) == 0 {
		return
	}
	l := market.Lease{ID: t.LeaseID, OrderID: t.OrderID, OfferID: t.OfferID, ProviderID: t.ProviderID, SMEID: t.SMEID,
		ResourceClass: t.ResourceClass, Region: t.Region, Units: t.Units, Hours: t.Hours, UnitPrice: t.UnitPrice,
		Status: market.LeaseReserved, CreatedAt: t.TS}
	b, err := json.Marshal(providerLease{Type: "lease", Lease: viewLease(l)})
	if err != nil {
		return
	}
	for _, pc := range conns {
		if pc.send(b) {
			s.leases.Add(1)
		} else {
			s.leaseDrops.Add(1)
			pc.abortAsync(websocket.ClosePolicyViolation, "outbound queue full: read the replies")
		}
	}
}

// tokenBucket meters one connection's commands; it is used by the read
// loop only.
type tokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func (b *tokenBucket) take(now time.Time) bool {
	if b.last.IsZero() {
		b.tokens = b.burst
	} else if d := now.Sub(b.last).Seconds(); d > 0 {
		b.tokens = min(b.burst, b.tokens+d*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// ---- provider registry ----

const providerShards = 16

type providerShard struct {
	mu    sync.Mutex
	conns map[string][]*providerConn
}

// providerRegistry maps provider ids to their open streams, sharded by id.
type providerRegistry struct {
	shards [providerShards]providerShard
}

func (r *providerRegistry) init() {
	for i := range r.shards {
		r.shards[i].conns = map[string][]*providerConn{}
	}
}

func (r *providerRegistry) shard(id string) *providerShard {
	var h uint32 = 2166136261
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return &r.shards[h%providerShards]
}

// count returns how many streams provider id has open.
func (r *providerRegistry) count(id string) int {
	sh := r.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return len(sh.conns[id])
}

// add registers pc for provider id unless it has max streams open.
func (r *providerRegistry) add(id string, pc *providerConn, max int) bool {
	sh := r.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if len(sh.conns[id]) >= max {
		return false
	}
	sh.conns[id] = append(sh.conns[id], pc)
	return true
}

func (r *providerRegistry) remove(id string, pc *providerConn) {
	sh := r.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	list := sh.conns[id]
	for i, c := range list {
		if c == pc {
			list[i] = list[len(list)-1]
			list[len(list)-1] = nil
			list = list[:len(list)-1]
			break
		}
	}
	if len(list) == 0 {
		delete(sh.conns, id)
	} else {
		sh.conns[id] = list
	}
}

// get returns a copy of the provider's streams.
func (r *providerRegistry) get(id string) []*providerConn {
	sh := r.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return append([]*providerConn(nil), sh.conns[id]...)
}
