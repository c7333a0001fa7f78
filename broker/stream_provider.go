package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/gofiber/fiber/v2"

	"computebroker/broker/hub"
	"computebroker/catalog"
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
	raw    net.Conn // the TCP connection under ws (see rawConn)
	token  string
	caller atomic.Pointer[market.Account]
	done   chan struct{} // closed when the connection ends

	// replies holds the frames owed to the client in the order of its
	// messages: a command's reply is placed when the command is read and
	// filled when its commit answers; leases are placed filled. The writer
	// sends the filled prefix, many frames per write.
	rmu     sync.Mutex
	replies []*reply
	wake    chan struct{} // to the writer: a reply was filled (cap 1)
	space   chan struct{} // to the reader: replies were sent (cap 1)
	ctx     context.Context
	cancel  context.CancelFunc

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
	// scanCommand's storage for what Ref, Price and Units point to.
	ref, price string
	units      int64
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

// reply is one frame owed to the client; frame is set once ready.
type reply struct {
	frame []byte
	ready bool
	// A command's reply is also where it is decoded and where its result
	// arrives (Complete): one allocation per command.
	pc  *providerConn
	cmd providerCommand
	ref string
	ack [64]byte // room for the ack frame
}

// Complete answers the command with the result of its update.
func (r *reply) Complete(res catalog.UpdateResult) {
	pc := r.pc
	if res.Err != nil {
		pc.fill(r, pc.errorFrame(r.ref, res.Err))
		return
	}
	pc.s.acks.Add(1)
	b := append(r.ack[:0], `{"type":"ack","ref":`...)
	b = hub.AppendJSONString(b, r.ref)
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, res.Version, 10)
	pc.fill(r, append(b, '}'))
}

// serveProvider runs on the hijacked connection's goroutine: it reads
// commands in order, checks each and hands it to the group commit without
// waiting for it, until the client goes or abuses the connection. Replies
// go out in the order of the commands (see replies).
func (s *Streams) serveProvider(ws *websocket.Conn, who market.Account, token string) {
	pc := &providerConn{s: s, ws: ws, raw: rawConn(ws), token: token, done: make(chan struct{}),
		wake: make(chan struct{}, 1), space: make(chan struct{}, 1)}
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

	var msg []byte
	for {
		var err error
		msg, err = readMessage(ws, msg[:0])
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
		r, ok := pc.place()
		if !ok {
			if pc.ended() {
				break
			}
			pc.abort(websocket.ClosePolicyViolation, "outbound queue full: read the replies")
			break
		}
		pc.execute(msg, r)
	}
	pc.end()
	pc.mu.Lock()
	pc.recheck.Stop()
	pc.mu.Unlock()
	_ = ws.Close()
	<-writerDone
}

// execute checks one command and submits it; r gets its reply, at once for
// a bad command, or when the commit answers.
func (pc *providerConn) execute(msg []byte, r *reply) {
	cmd := &r.cmd
	if err := decodeCommand(msg, cmd); err != nil {
		pc.fill(r, pc.errorFrame(refOf(msg), err))
		return
	}
	ref := *cmd.Ref
	r.pc, r.ref = pc, ref
	var patch OfferPatch
	switch cmd.Type {
	case "price":
		if cmd.Price == nil || cmd.Units != nil {
			pc.fill(r, pc.errorFrame(ref, market.Invalid("a price message has offer_id and price, and no units")))
			return
		}
		patch.Price = cmd.Price
	case "units":
		if cmd.Units == nil || cmd.Price != nil {
			pc.fill(r, pc.errorFrame(ref, market.Invalid("a units message has offer_id and units, and no price")))
			return
		}
		patch.Units = cmd.Units
	default:
		pc.fill(r, pc.errorFrame(ref, market.Invalid("unknown message type %q: want price or units", cmd.Type)))
		return
	}
	if cmd.OfferID == "" {
		pc.fill(r, pc.errorFrame(ref, market.Invalid("offer_id is required")))
		return
	}
	err := pc.s.svc.SubmitOfferUpdate(*pc.caller.Load(), cmd.OfferID, patch, r)
	if err != nil {
		pc.fill(r, pc.errorFrame(ref, err))
	}
}

// readMessage reads the next data message into buf (reused between
// messages).
func readMessage(ws *websocket.Conn, buf []byte) ([]byte, error) {
	_, rd, err := ws.NextReader()
	if err != nil {
		return buf, err
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// decodeCommand reads one JSON object strictly, as the REST API reads
// bodies: unknown fields, trailing data and wrong types are invalid, and
// type and ref are required.
func decodeCommand(msg []byte, cmd *providerCommand) error {
	if scanCommand(msg, cmd) {
		return nil
	}
	*cmd = providerCommand{}
	return decodeCommandJSON(msg, cmd)
}

// scanCommand is decodeCommand's fast path for the plain messages clients
// send (a profile put encoding/json at 17% of brokerd under price ingest):
// one flat object of known keys, each once, with strings free of escapes,
// control and non-ASCII bytes, units a plain integer, type and ref present.
// It reports false, leaving cmd in any state, for anything else, which
// then goes through encoding/json: what it accepts, encoding/json accepts
// with the same values.
//
// It makes one string of the message and takes the values as parts of it,
// and keeps Ref, Price and Units in cmd itself: decoding costs that one
// allocation (cmd lives in the command's reply).
func scanCommand(msg []byte, cmd *providerCommand) bool {
	i := 0
	var whole string // msg as a string, made when the first value is read
	ws := func() {
		for i < len(msg) && (msg[i] == ' ' || msg[i] == '\t' || msg[i] == '\n' || msg[i] == '\r') {
			i++
		}
	}
	str := func() (string, bool) {
		if i >= len(msg) || msg[i] != '"' {
			return "", false
		}
		start := i + 1
		for j := start; j < len(msg); j++ {
			switch c := msg[j]; {
			case c == '"':
				i = j + 1
				if whole == "" {
					whole = string(msg)
				}
				return whole[start:j], true
			case c == '\\' || c < 0x20 || c >= 0x80:
				return "", false
			}
		}
		return "", false
	}
	ws()
	if i >= len(msg) || msg[i] != '{' {
		return false
	}
	i++
	var seen [5]bool
	for first := true; ; first = false {
		ws()
		if i < len(msg) && msg[i] == '}' && first {
			return false // an empty object: encoding/json explains what is missing
		}
		key, ok := str()
		if !ok {
			return false
		}
		ws()
		if i >= len(msg) || msg[i] != ':' {
			return false
		}
		i++
		ws()
		var k int
		switch key {
		case "type":
			k = 0
		case "ref":
			k = 1
		case "offer_id":
			k = 2
		case "price":
			k = 3
		case "units":
			k = 4
		default:
			return false
		}
		if seen[k] {
			return false
		}
		seen[k] = true
		if k == 4 {
			start := i
			if i < len(msg) && msg[i] == '-' {
				i++
			}
			digits := i
			for i < len(msg) && msg[i] >= '0' && msg[i] <= '9' {
				i++
			}
			n := i - digits
			if n == 0 || n > 18 || n > 1 && msg[digits] == '0' {
				return false
			}
			u, err := strconv.ParseInt(string(msg[start:i]), 10, 64)
			if err != nil {
				return false
			}
			cmd.units = u
			cmd.Units = &cmd.units
		} else {
			v, ok := str()
			if !ok {
				return false
			}
			switch k {
			case 0:
				switch v { // the usual types without holding the message
				case "price":
					v = "price"
				case "units":
					v = "units"
				}
				cmd.Type = v
			case 1:
				cmd.ref = v
				cmd.Ref = &cmd.ref
			case 2:
				cmd.OfferID = v
			case 3:
				cmd.price = v
				cmd.Price = &cmd.price
			}
		}
		ws()
		if i >= len(msg) {
			return false
		}
		if msg[i] == ',' {
			i++
			continue
		}
		if msg[i] != '}' {
			return false
		}
		i++
		ws()
		return i == len(msg) && seen[0] && seen[1] && cmd.Type != ""
	}
}

// decodeCommandJSON is decodeCommand through encoding/json.
func decodeCommandJSON(msg []byte, cmd *providerCommand) error {
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

// place reserves the next reply for a command. When the client has
// ProviderQueue replies outstanding it waits, up to WriteTimeout, for the
// writer to send some; false means they were not sent in that time (the
// client does not read) or the connection ended.
func (pc *providerConn) place() (*reply, bool) {
	var timer *time.Timer
	for {
		pc.rmu.Lock()
		if len(pc.replies) < pc.s.cfg.ProviderQueue {
			r := &reply{}
			pc.replies = append(pc.replies, r)
			pc.rmu.Unlock()
			if timer != nil {
				timer.Stop()
			}
			return r, true
		}
		pc.rmu.Unlock()
		if timer == nil {
			timer = time.NewTimer(pc.s.cfg.WriteTimeout)
		}
		select {
		case <-pc.space:
		case <-pc.done:
			timer.Stop()
			return nil, false
		case <-timer.C:
			return nil, false
		}
	}
}

// fill sets a placed reply's frame and wakes the writer.
func (pc *providerConn) fill(r *reply, frame []byte) {
	pc.rmu.Lock()
	r.frame, r.ready = frame, true
	pc.rmu.Unlock()
	select {
	case pc.wake <- struct{}{}:
	default:
	}
}

// send queues a ready frame (a lease) without blocking; false means the
// client already has twice ProviderQueue replies outstanding (or the
// connection has ended).
func (pc *providerConn) send(b []byte) bool {
	if pc.ended() {
		return false
	}
	pc.rmu.Lock()
	if len(pc.replies) >= 2*pc.s.cfg.ProviderQueue {
		pc.rmu.Unlock()
		return false
	}
	pc.replies = append(pc.replies, &reply{frame: b, ready: true})
	pc.rmu.Unlock()
	select {
	case pc.wake <- struct{}{}:
	default:
	}
	return true
}

func (pc *providerConn) ended() bool {
	select {
	case <-pc.done:
		return true
	default:
		return false
	}
}

// writeLoop is the connection's writer: the ready replies, in order, as
// many WebSocket frames in one write as are ready; and pings.
//
// It writes the frames itself on the underlying connection rather than
// through the WebSocket library, which writes each message with its own
// system call. That is safe beside the library's own writes (pings here,
// close frames, pongs from the read loop): each side writes whole frames
// with one Write, and a net.Conn serialises Writes.
func (pc *providerConn) writeLoop() {
	ping := time.NewTicker(pc.s.cfg.PingInterval)
	defer ping.Stop()
	ws, timeout := pc.ws, pc.s.cfg.WriteTimeout
	conn := pc.raw
	var buf []byte
	for {
		select {
		case <-pc.wake:
		case <-ping.C:
			if err := ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(timeout)); err != nil {
				_ = conn.Close() // ends the read loop
				return
			}
			continue
		case <-pc.done:
			return
		}
		for {
			buf = buf[:0]
			pc.rmu.Lock()
			n := 0
			for n < len(pc.replies) && pc.replies[n].ready && len(buf) < 64<<10 {
				buf = append(appendFrameHeader(buf, websocket.TextMessage, len(pc.replies[n].frame)), pc.replies[n].frame...)
				n++
			}
			rest := copy(pc.replies, pc.replies[n:])
			clear(pc.replies[rest:])
			pc.replies = pc.replies[:rest]
			pc.rmu.Unlock()
			if n == 0 {
				break
			}
			select {
			case pc.space <- struct{}{}:
			default:
			}
			_ = conn.SetWriteDeadline(time.Now().Add(timeout))
			if _, err := conn.Write(buf); err != nil {
				_ = conn.Close() // ends the read loop
				return
			}
		}
		if cap(buf) > 256<<10 {
			buf = nil
		}
	}
}

// rawConn is the TCP connection under ws. Under fasthttp's hijacked
// connection, whose Close does nothing (fasthttp closes it when the
// handler returns): closing the real one is what ends a blocked read.
func rawConn(ws *websocket.Conn) net.Conn {
	raw := ws.UnderlyingConn()
	if u, ok := raw.(interface{ UnsafeConn() net.Conn }); ok {
		raw = u.UnsafeConn()
	}
	return raw
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
		_ = pc.raw.Close()
	})
}

func (pc *providerConn) goAway(deadline time.Time) {
	pc.abortOnce.Do(func() {
		pc.end()
		_ = pc.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutting down"), deadline)
		// The read loop ends when the client answers the close, or at the
		// deadline: closing at once could reset the connection over
		// commands still unread and lose the close frame.
		_ = pc.raw.SetReadDeadline(deadline)
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
