//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"syscall"
	"time"
)

// The epoll reader: thousands of market streams read by one loop instead of
// a goroutine each. The sockets are plain non-blocking file descriptors
// outside Go's network poller, watched by an epoll set of our own that the
// loop polls without blocking and, when nothing is ready, sleeps
// pollInterval. So a frame brokerd sends wakes nobody: the load client, which
// shares the machine with brokerd, costs little CPU per frame, and brokerd's
// writes do not pay for waking it. A delivery's measured latency can grow
// by up to pollInterval.

const pollInterval = time.Millisecond

// rawConn is one market stream of the epoll reader.
type rawConn struct {
	fd   int
	sub  *subscriber
	pend []byte // the start of a frame not yet whole
	frag []byte // a fragmented message so far
}

type epollReader struct {
	epfd  int
	mu    sync.Mutex
	conns map[int32]*rawConn
	stop  chan struct{}
	done  chan struct{}
}

func newEpollReader() (*epollReader, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	r := &epollReader{epfd: epfd, conns: map[int32]*rawConn{}, stop: make(chan struct{}), done: make(chan struct{})}
	go r.loop()
	return r, nil
}

// add starts reading a stream; leftover is what its handshake read past the
// HTTP response.
func (r *epollReader) add(fd int, sub *subscriber, leftover []byte) error {
	c := &rawConn{fd: fd, sub: sub}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(leftover) > 0 && !c.feed(leftover, time.Now().UnixNano()) {
		_ = syscall.Close(fd) // closed with the handshake: nothing to read
		sub.end(nil)
		return nil
	}
	r.conns[int32(fd)] = c
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(fd)}
	if err := syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		delete(r.conns, int32(fd))
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

func (r *epollReader) loop() {
	defer close(r.done)
	events := make([]syscall.EpollEvent, 512)
	buf := make([]byte, 256<<10)
	for {
		select {
		case <-r.stop:
			return
		default:
		}
		n, err := syscall.EpollWait(r.epfd, events, 0)
		if err != nil && !errors.Is(err, syscall.EINTR) {
			logf("epoll reader: epoll_wait: %v", err)
			return
		}
		if n <= 0 {
			time.Sleep(pollInterval)
			continue
		}
		r.mu.Lock()
		for _, ev := range events[:n] {
			if c := r.conns[ev.Fd]; c != nil {
				r.read(c, buf)
			}
		}
		r.mu.Unlock()
	}
}

// read takes what the socket holds; r.mu is held.
func (r *epollReader) read(c *rawConn, buf []byte) {
	for {
		m, err := syscall.Read(c.fd, buf)
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
			return
		}
		if err != nil || m == 0 {
			if err == nil {
				err = errors.New("connection closed by brokerd without a close frame")
			}
			r.drop(c, err)
			return
		}
		if !c.feed(buf[:m], time.Now().UnixNano()) {
			r.drop(c, nil) // a close frame
			return
		}
		if m < len(buf) {
			return
		}
	}
}

// drop stops reading c and closes it; r.mu is held.
func (r *epollReader) drop(c *rawConn, err error) {
	delete(r.conns, int32(c.fd))
	_ = syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_DEL, c.fd, nil)
	_ = syscall.Close(c.fd)
	c.sub.end(err)
}

// feed parses data read at now: whole messages go to the subscriber, pings
// are answered, an unfinished frame waits in pend. false: a close frame came.
func (c *rawConn) feed(data []byte, now int64) bool {
	if len(c.pend) > 0 {
		c.pend = append(c.pend, data...)
		data = c.pend
	}
	n, open := c.frames(data, now)
	c.pend = append(c.pend[:0], data[n:]...)
	if cap(c.pend) > 64<<10 && len(c.pend) < 4<<10 {
		c.pend = append([]byte(nil), c.pend...) // after a large snapshot
	}
	return open
}

// frames handles the whole frames at the start of b and returns how many
// bytes they took.
func (c *rawConn) frames(b []byte, now int64) (int, bool) {
	off := 0
	for {
		h := b[off:]
		size, hl, ok := frameSize(h)
		if !ok || len(h) < hl+size {
			return off, true
		}
		payload := h[hl : hl+size]
		if h[1]&0x80 != 0 { // masked (a server must not, but read it right)
			key := h[hl-4 : hl]
			for i := range payload {
				payload[i] ^= key[i&3]
			}
		}
		fin, op := h[0]&0x80 != 0, h[0]&0x0f
		switch op {
		case 0x1, 0x2: // text, binary
			if fin {
				c.sub.message(payload, now)
			} else {
				c.frag = append(c.frag[:0], payload...)
			}
		case 0x0: // continuation
			c.frag = append(c.frag, payload...)
			if fin {
				c.sub.message(c.frag, now)
				c.frag = c.frag[:0]
			}
		case 0x8: // close
			return off + hl + size, false
		case 0x9: // ping
			_ = writeFrame(c.fd, 0xA, payload)
		}
		off += hl + size
	}
}

// frameSize reads a frame header: the payload length and the header length.
func frameSize(h []byte) (size, hl int, ok bool) {
	if len(h) < 2 {
		return 0, 0, false
	}
	size, hl = int(h[1]&0x7f), 2
	switch size {
	case 126:
		if len(h) < 4 {
			return 0, 0, false
		}
		size, hl = int(binary.BigEndian.Uint16(h[2:])), 4
	case 127:
		if len(h) < 10 {
			return 0, 0, false
		}
		size, hl = int(binary.BigEndian.Uint64(h[2:])), 10
	}
	if h[1]&0x80 != 0 {
		hl += 4
	}
	return size, hl, true
}

// writeFrame sends one masked client frame (a pong or a close); they are
// tiny and rare, so a full socket buffer only loses them.
func writeFrame(fd int, op byte, payload []byte) error {
	if len(payload) > 125 {
		return errors.New("control frame too long")
	}
	f := make([]byte, 6+len(payload))
	f[0], f[1] = 0x80|op, 0x80|byte(len(payload))
	_, _ = rand.Read(f[2:6])
	for i, b := range payload {
		f[6+i] = b ^ f[2+i&3]
	}
	_, err := syscall.Write(fd, f)
	return err
}

// closeAll ends the loop, then says goodbye on every stream and closes it.
func (r *epollReader) closeAll() {
	close(r.stop)
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	bye := binary.BigEndian.AppendUint16(nil, 1000)
	for _, c := range r.conns {
		_ = writeFrame(c.fd, 0x8, bye)
		_ = syscall.Close(c.fd)
		c.sub.end(nil)
	}
	clear(r.conns)
	_ = syscall.Close(r.epfd)
}

// rawDial opens a WebSocket to base+path from local (nil: any address) on a
// socket of its own, outside Go's poller. It returns the non-blocking socket
// and the bytes read past the handshake's response.
func rawDial(ctx context.Context, base, path string, local net.Addr) (fd int, leftover []byte, err error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "http" {
		return -1, nil, fmt.Errorf("the epoll reader needs an http:// URL, got %q", base)
	}
	addr, err := net.ResolveTCPAddr("tcp4", u.Host)
	if err != nil {
		return -1, nil, err
	}
	fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, nil, fmt.Errorf("socket: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = syscall.Close(fd)
		}
	}()
	if la, _ := local.(*net.TCPAddr); la != nil {
		sa := &syscall.SockaddrInet4{}
		copy(sa.Addr[:], la.IP.To4())
		if err := syscall.Bind(fd, sa); err != nil {
			return -1, nil, fmt.Errorf("bind %s: %w", la, err)
		}
	}
	// The handshake blocks, bounded by the context's deadline or 15 s.
	wait := 15 * time.Second
	if dl, has := ctx.Deadline(); has {
		wait = min(wait, time.Until(dl))
	}
	tv := syscall.NsecToTimeval(max(wait, time.Millisecond).Nanoseconds())
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
	sa := &syscall.SockaddrInet4{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To4())
	if err := syscall.Connect(fd, sa); err != nil {
		return -1, nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)

	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	for b := []byte(req); len(b) > 0; {
		n, err := syscall.Write(fd, b)
		if err != nil {
			return -1, nil, fmt.Errorf("send handshake: %w", err)
		}
		b = b[n:]
	}
	var resp []byte
	buf := make([]byte, 4096)
	end := -1
	for end < 0 {
		n, err := syscall.Read(fd, buf)
		if err != nil || n == 0 {
			return -1, nil, fmt.Errorf("read handshake response: %v", err)
		}
		resp = append(resp, buf[:n]...)
		end = bytes.Index(resp, []byte("\r\n\r\n"))
		if end < 0 && len(resp) > 16<<10 {
			return -1, nil, errors.New("handshake response too long")
		}
	}
	head := string(resp[:end])
	status, _, _ := bytes.Cut([]byte(head), []byte("\r\n"))
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 101")) {
		code := string(status)
		if f := bytes.Fields(status); len(f) > 1 {
			code = string(f[1])
		}
		return -1, nil, fmt.Errorf("websocket: bad handshake (HTTP %s)", code)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if want := base64.StdEncoding.EncodeToString(sum[:]); !headerHas(head, "Sec-WebSocket-Accept", want) {
		return -1, nil, errors.New("websocket: handshake without the right Sec-WebSocket-Accept")
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		return -1, nil, fmt.Errorf("set non-blocking: %w", err)
	}
	ok = true
	return fd, resp[end+4:], nil
}

// headerHas says whether the response head has header name with value.
func headerHas(head, name, value string) bool {
	for _, line := range bytes.Split([]byte(head), []byte("\r\n"))[1:] {
		k, v, found := bytes.Cut(line, []byte(":"))
		if found && bytes.EqualFold(bytes.TrimSpace(k), []byte(name)) && string(bytes.TrimSpace(v)) == value {
			return true
		}
	}
	return false
}

func closeFD(fd int) error { return syscall.Close(fd) }
