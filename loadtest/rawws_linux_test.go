//go:build linux

package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestEpollReader: the epoll reader's own handshake and frame parser read
// what gorilla/websocket sends: small, 16-bit and 64-bit lengths, messages
// fragmented by a small write buffer, frames that arrive with the handshake
// or split across reads; it answers pings and ends on a close frame.
func TestEpollReader(t *testing.T) {
	pong := make(chan string, 1)
	up := websocket.Upgrader{WriteBufferSize: 256}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/stream/market" || r.URL.Query().Get("class") != "gpu" {
			http.Error(w, "wrong path", http.StatusNotFound)
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		ws.SetPongHandler(func(s string) error { pong <- s; return nil })
		go func() { // read, so the pong handler runs
			for {
				if _, _, err := ws.NextReader(); err != nil {
					return
				}
			}
		}()
		send := func(seq int, kind string, pad int) {
			msg := fmt.Sprintf(`{"type":"%s","seq":%d,"pad":"%s"}`, kind, seq, strings.Repeat("x", pad))
			if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				t.Error(err)
			}
		}
		send(1, "snapshot", 70_000) // 64-bit length, fragmented into 256-byte frames
		send(2, "remove", 10)
		send(3, "trade", 300) // 16-bit length
		if err := ws.WriteControl(websocket.PingMessage, []byte("hi"), time.Now().Add(time.Second)); err != nil {
			t.Error(err)
		}
		for i := 4; i < 500; i++ {
			send(i, "remove", i%200)
		}
		select {
		case <-pong:
		case <-time.After(5 * time.Second):
			t.Error("no pong")
		}
		_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
		time.Sleep(200 * time.Millisecond)
	}))
	defer srv.Close()

	r, err := newEpollReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.closeAll()
	totals := &subTotals{}
	s := &subscriber{totals: totals, snap: make(chan struct{})}
	fd, leftover, err := rawDial(context.Background(), srv.URL, "/api/v1/stream/market?class=gpu", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.add(fd, s, leftover); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		over := s.over
		r.mu.Unlock()
		if over {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stream did not end")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := [...]int64{totals.snapshots.Load(), totals.removes.Load(), totals.trades.Load(), totals.seqErrors.Load(), totals.readErrors.Load()}; got != [...]int64{1, 497, 1, 0, 0} {
		t.Fatalf("snapshots, removes, trades, seq errors, read errors = %v", got)
	}

	// A refused handshake is an error that says so.
	if _, _, err := rawDial(context.Background(), srv.URL, "/nope", nil); err == nil || !strings.Contains(err.Error(), "HTTP 404") {
		t.Fatalf("bad path: %v", err)
	}
}

// TestFrameSplitAnywhere: a stream cut at every byte boundary parses the same.
func TestFrameSplitAnywhere(t *testing.T) {
	var stream []byte
	frame := func(op byte, fin bool, p string) {
		b0 := op
		if fin {
			b0 |= 0x80
		}
		switch n := len(p); {
		case n < 126:
			stream = append(stream, b0, byte(n))
		case n < 1<<16:
			stream = append(stream, b0, 126, byte(n>>8), byte(n))
		default:
			stream = append(stream, b0, 127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
		}
		stream = append(stream, p...)
	}
	frame(1, true, `{"type":"snapshot","seq":1}`)
	frame(1, false, `{"type":"remove",`)
	frame(0, false, `"seq":2,`)
	frame(0, true, `"x":"`+strings.Repeat("y", 300)+`"}`)
	frame(1, true, `{"type":"trade","seq":3,"p":"`+strings.Repeat("z", 70_000)+`"}`)
	for cut := 0; cut <= len(stream); cut += 1 + cut/50 {
		totals := &subTotals{}
		c := &rawConn{fd: -1, sub: &subscriber{totals: totals, snap: make(chan struct{})}}
		a, b := append([]byte(nil), stream[:cut]...), append([]byte(nil), stream[cut:]...)
		if !c.feed(a, 0) || !c.feed(b, 0) {
			t.Fatalf("cut %d: closed", cut)
		}
		if got := [...]int64{totals.snapshots.Load(), totals.removes.Load(), totals.trades.Load(), totals.seqErrors.Load()}; got != [...]int64{1, 1, 1, 0} || len(c.pend) != 0 {
			t.Fatalf("cut %d: snapshots, removes, trades, seq errors = %v, %d bytes pending", cut, got, len(c.pend))
		}
	}
}
