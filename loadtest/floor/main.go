// Command floor measures what the kernel alone costs for the market
// stream's delivery load: a writer that sends small frames to thousands of
// loopback TCP sockets and a reader on the other ends, in one process,
// with nothing of the broker in between (no Redis, no ClickHouse, no JSON,
// no WebSocket handshake; the frames are prepared once). Its writer loops
// have the hub's shape: a subscriber with something pending is put in a
// loop's ready list, and the loop writes everything it has in one write.
// Each frame carries its send time; the readers time its arrival.
//
//	go run ./loadtest/floor --subscribers 5000 --group 161 --rate 620 --loops 1 --duration 15s
//
// sends 620 updates/s, each to one group of 161 subscribers (the load
// client's standard shape: about 100,000 frames/s), and prints the frames
// and writes per second, the delivery latency's quantiles after the
// warm-up (3 s), and the CPU the process spent (user and system) per
// frame. What the broker adds on top of this is its own work; what this
// costs, no broker on the same machine can avoid. It listens on 127.0.0.1
// only and stops by itself.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type subscriber struct {
	mu      sync.Mutex
	conn    *net.TCPConn
	pending []byte
	queued  bool
	loop    *loop
}

type loop struct {
	mu       sync.Mutex
	ready    []*subscriber
	sleeping bool
	wake     chan struct{}
	cycle    time.Duration
	writes   atomic.Int64
}

func (l *loop) push(s *subscriber) {
	l.mu.Lock()
	l.ready = append(l.ready, s)
	wake := l.sleeping
	l.sleeping = false
	l.mu.Unlock()
	if wake {
		l.wake <- struct{}{}
	}
}

// run writes, for each ready subscriber in turn, all it has pending, and
// lets other goroutines run every 32 subscribers, as the hub's loops do.
func (l *loop) run(stop <-chan struct{}) {
	var out []byte
	for {
		l.mu.Lock()
		for len(l.ready) == 0 {
			l.sleeping = true
			l.mu.Unlock()
			select {
			case <-l.wake:
			case <-stop:
				return
			}
			l.mu.Lock()
		}
		work := l.ready
		l.ready = nil
		l.mu.Unlock()
		began := time.Now()
		for i, s := range work {
			s.mu.Lock()
			out = append(out[:0], s.pending...)
			s.pending = s.pending[:0]
			s.queued = false
			s.mu.Unlock()
			if _, err := s.conn.Write(out); err != nil {
				return
			}
			l.writes.Add(1)
			if i%32 == 31 {
				runtime.Gosched()
			}
		}
		if d := l.cycle - time.Since(began); d > 0 {
			time.Sleep(d)
		}
	}
}

// reader reads frames of size bytes and records each one's latency once
// the warm-up is over.
func reader(c net.Conn, size int, warm int64, got *atomic.Int64, out chan<- []int64) {
	buf := make([]byte, 64<<10)
	var lat []int64
	have := 0
	for {
		n, err := c.Read(buf[have:])
		have += n
		off := 0
		for have-off >= size {
			sent := int64(binary.LittleEndian.Uint64(buf[off:]))
			if now := time.Now().UnixNano(); now > warm {
				lat = append(lat, now-sent)
			}
			got.Add(1)
			off += size
		}
		have = copy(buf, buf[off:have])
		if err != nil {
			out <- lat
			return
		}
	}
}

func cpuSeconds() (user, sys float64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()).Seconds(), time.Duration(ru.Stime.Nano()).Seconds()
}

func main() {
	subs := flag.Int("subscribers", 5000, "TCP connections written to")
	group := flag.Int("group", 161, "subscribers each update goes to (consecutive groups in turn)")
	rate := flag.Int("rate", 620, "updates per second")
	loops := flag.Int("loops", 1, "writer loops")
	size := flag.Int("size", 200, "bytes per frame (at least 8)")
	cycle := flag.Duration("cycle", 0, "shortest pass of a writer loop over its ready list (0: write as soon as ready)")
	noDelay := flag.Bool("nodelay", true, "TCP_NODELAY on the writing ends")
	duration := flag.Duration("duration", 15*time.Second, "how long updates are sent")
	warmup := flag.Duration("warmup", 3*time.Second, "how long at the start frames are not timed")
	flag.Parse()
	c := config{*subs, *group, *rate, *loops, *size, *cycle, *noDelay, *duration, *warmup}
	if err := c.check(); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(2)
	}
	r, err := run(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
	r.print(os.Stdout, c)
}

type config struct {
	subscribers, group, rate, loops, size int
	cycle                                 time.Duration
	noDelay                               bool
	duration, warmup                      time.Duration
}

func (c config) check() error {
	if c.subscribers < 1 || c.group < 1 || c.group > c.subscribers || c.rate < 1 || c.loops < 1 || c.size < 8 ||
		c.warmup < 0 || c.duration <= c.warmup {
		return fmt.Errorf("need subscribers ≥ group ≥ 1, rate ≥ 1, loops ≥ 1, size ≥ 8, duration > warmup ≥ 0")
	}
	return nil
}

// result is what one run measured.
type result struct {
	frames, received, writes int64
	elapsed, wall            time.Duration
	latency                  []int64 // ns, sorted
	user, sys                float64 // CPU seconds over wall
}

func (r result) quantile(p float64) float64 {
	return float64(r.latency[int(p*float64(len(r.latency)-1))]) / 1e6
}

func (r result) print(w io.Writer, c config) {
	fmt.Fprintf(w, "loops %d, nodelay %v, cycle %v: %.0f frames/s sent, %d received, %.0f writes/s, %.2f frames per write\n",
		c.loops, c.noDelay, c.cycle, float64(r.frames)/r.elapsed.Seconds(), r.received, float64(r.writes)/r.elapsed.Seconds(),
		float64(r.frames)/float64(r.writes))
	fmt.Fprintf(w, "latency ms: p50 %.1f, p99 %.1f, p99.9 %.1f, max %.1f (%d frames timed)\n",
		r.quantile(0.5), r.quantile(0.99), r.quantile(0.999), r.quantile(1), len(r.latency))
	cpu := r.user + r.sys
	fmt.Fprintf(w, "cpu: %.2f cores (user %.1f s, system %.1f s over %.1f s), %.1f µs per frame\n",
		cpu/r.wall.Seconds(), r.user, r.sys, r.wall.Seconds(), cpu/float64(r.frames)*1e6)
}

func run(c config) (result, error) {
	nsubs, group, rate, nloops, size := c.subscribers, c.group, c.rate, c.loops, c.size
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result{}, err
	}
	defer ln.Close()
	stop := make(chan struct{})
	loops := make([]*loop, nloops)
	for i := range loops {
		loops[i] = &loop{wake: make(chan struct{}, 1), cycle: c.cycle}
		go loops[i].run(stop)
	}
	var got atomic.Int64
	lats := make(chan []int64, nsubs)
	subscribers := make([]*subscriber, nsubs)
	readers := make([]net.Conn, nsubs)
	for i := range subscribers {
		rc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return result{}, fmt.Errorf("connect subscriber %d: %w", i, err)
		}
		readers[i] = rc
		s, err := ln.Accept()
		if err != nil {
			return result{}, err
		}
		tc := s.(*net.TCPConn)
		subscribers[i] = &subscriber{conn: tc, loop: loops[i%nloops]}
		if err := tc.SetNoDelay(c.noDelay); err != nil {
			return result{}, err
		}
	}
	start := time.Now()
	warm := start.Add(c.warmup).UnixNano()
	for _, rc := range readers {
		go reader(rc, size, warm, &got, lats)
	}
	u0, s0 := cpuSeconds()
	frame := make([]byte, size)
	groups := nsubs / group
	every := time.Second / time.Duration(rate)
	next := time.Now()
	var frames int64
	for k := 0; time.Since(start) < c.duration; k++ {
		next = next.Add(every)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		binary.LittleEndian.PutUint64(frame, uint64(time.Now().UnixNano()))
		g := k % groups
		for _, s := range subscribers[g*group : (g+1)*group] {
			s.mu.Lock()
			s.pending = append(s.pending, frame...)
			frames++
			wasQueued := s.queued
			s.queued = true
			s.mu.Unlock()
			if !wasQueued {
				s.loop.push(s)
			}
		}
	}
	elapsed := time.Since(start)
	// Let the last frames arrive: all of them, or whatever came in 5 s.
	for deadline := time.Now().Add(5 * time.Second); got.Load() < frames && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	wall := time.Since(start)
	u1, s1 := cpuSeconds()
	close(stop)
	for _, s := range subscribers {
		s.conn.Close()
	}
	var all []int64
	for range readers {
		all = append(all, <-lats...)
	}
	for _, rc := range readers {
		rc.Close()
	}
	var writes int64
	for _, l := range loops {
		writes += l.writes.Load()
	}
	if len(all) == 0 || writes == 0 {
		return result{}, fmt.Errorf("no frame arrived after the warm-up (%d frames sent, %d received)", frames, got.Load())
	}
	slices.Sort(all)
	return result{frames: frames, received: got.Load(), writes: writes, elapsed: elapsed, wall: wall,
		latency: all, user: u1 - u0, sys: s1 - s0}, nil
}
