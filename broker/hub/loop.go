package hub

import (
	"runtime"
	"sync"
)

// loop is one of the hub's writer loops. Each subscription belongs to one
// loop; Publish puts a subscriber that got something to write in its
// loop's ready list, and the loop writes, for each one in turn, everything
// it has pending in one non-blocking TryWrite. A few loops instead of a
// goroutine per subscriber: a delivery wakes no goroutine of its own, a
// subscriber that is behind gets all it missed in one system call, an idle
// subscriber has no stack, and the goroutines of the ingest path do not
// queue behind thousands of runnable writers.
type loop struct {
	mu       sync.Mutex
	ready    []*Subscription
	spare    []*Subscription
	sleeping bool
	quit     bool
	wake     chan struct{}
	exited   chan struct{}

	// Owned by the loop goroutine: the batch being written.
	ents []entry
	buf  []byte
}

func newLoop() *loop {
	l := &loop{wake: make(chan struct{}, 1), exited: make(chan struct{})}
	go l.run()
	return l
}

// push adds s to the ready list; s.mu is held (lock order: s.mu, l.mu).
func (l *loop) push(s *Subscription) {
	l.mu.Lock()
	l.ready = append(l.ready, s)
	wake := l.sleeping
	l.sleeping = false
	l.mu.Unlock()
	if wake {
		l.wake <- struct{}{}
	}
}

// yieldEvery is how many subscribers a loop serves before it lets other
// goroutines run (a few hundred µs of writes).
const yieldEvery = 32

func (l *loop) run() {
	defer close(l.exited)
	for {
		l.mu.Lock()
		for len(l.ready) == 0 && !l.quit {
			l.sleeping = true
			l.mu.Unlock()
			<-l.wake
			l.mu.Lock()
		}
		if l.quit {
			l.mu.Unlock()
			return
		}
		work := l.ready
		l.ready = l.spare[:0]
		l.mu.Unlock()
		for i, s := range work {
			s.serve(l)
			work[i] = nil
			if i%yieldEvery == yieldEvery-1 {
				runtime.Gosched()
			}
		}
		l.mu.Lock()
		l.spare = work[:0]
		l.mu.Unlock()
	}
}

// stop ends the loop; the subscriptions still in its ready list have ended.
func (l *loop) stop() {
	l.mu.Lock()
	l.quit = true
	wake := l.sleeping
	l.sleeping = false
	l.mu.Unlock()
	if wake {
		l.wake <- struct{}{}
	}
	<-l.exited
}
