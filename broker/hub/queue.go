package hub

// entry is a pending frame and its place in the subscriber's order of
// arrival. Replacing a frame by a newer state of the same offer keeps the
// place.
type entry struct {
	f     *frame
	stamp uint64
}

// indexAt is the queue length from which offer lookups go through a map;
// shorter queues, those of subscribers that keep up, are scanned.
const indexAt = 32

// keepRing is the largest ring kept by a drained queue; a larger one, left
// by a burst, is released so that idle subscribers stay small.
const keepRing = 64

// offerQueue is a FIFO of the latest pending state per offer (ticks and
// removes). Positions are absolute (head and tail only grow until the queue
// drains); the slot of position p is ring[p&mask].
type offerQueue struct {
	ring       []entry
	head, tail uint64
	index      map[string]uint64 // offer id -> position; nil while short
}

func (q *offerQueue) len() int { return int(q.tail - q.head) }

func (q *offerQueue) slot(p uint64) *entry { return &q.ring[p&uint64(len(q.ring)-1)] }

// find returns the slot holding offer id.
func (q *offerQueue) find(id string) (*entry, bool) {
	if q.index != nil {
		p, ok := q.index[id]
		if !ok {
			return nil, false
		}
		return q.slot(p), true
	}
	for p := q.head; p < q.tail; p++ {
		if e := q.slot(p); e.f.offerID == id {
			return e, true
		}
	}
	return nil, false
}

// push appends e, growing the ring by doubling.
func (q *offerQueue) push(e entry) {
	n := q.len()
	if n == len(q.ring) {
		size := 2 * len(q.ring)
		if size == 0 {
			size = 4
		}
		ring := make([]entry, size)
		mask := uint64(size - 1)
		for p := q.head; p < q.tail; p++ {
			ring[p&mask] = *q.slot(p)
		}
		q.ring = ring
	}
	*q.slot(q.tail) = e
	if q.index != nil {
		q.index[e.f.offerID] = q.tail
	} else if n+1 >= indexAt {
		q.index = make(map[string]uint64, 2*indexAt)
		for p := q.head; p <= q.tail; p++ {
			q.index[q.slot(p).f.offerID] = p
		}
	}
	q.tail++
}

// front returns the oldest entry; the queue must not be empty.
func (q *offerQueue) front() entry { return *q.slot(q.head) }

// pop removes the oldest entry; the queue must not be empty.
func (q *offerQueue) pop() entry {
	s := q.slot(q.head)
	e := *s
	*s = entry{}
	q.head++
	if q.index != nil {
		delete(q.index, e.f.offerID)
	}
	if q.head == q.tail {
		q.drained()
	}
	return e
}

func (q *offerQueue) drained() {
	q.head, q.tail = 0, 0
	q.index = nil
	if len(q.ring) > keepRing {
		q.ring = nil
	}
}

// reset drops every entry and returns how many there were.
func (q *offerQueue) reset() int {
	n := q.len()
	for p := q.head; p < q.tail; p++ {
		*q.slot(p) = entry{}
	}
	q.drained()
	return n
}

// filter keeps, in order, the entries for which keep is true and returns
// how many it dropped.
func (q *offerQueue) filter(keep func(*frame) bool) int {
	w := q.head
	for p := q.head; p < q.tail; p++ {
		if e := *q.slot(p); keep(e.f) {
			*q.slot(w) = e
			w++
		}
	}
	dropped := int(q.tail - w)
	for p := w; p < q.tail; p++ {
		*q.slot(p) = entry{}
	}
	q.tail = w
	if q.head == q.tail {
		q.drained()
	} else if q.index != nil {
		clear(q.index)
		for p := q.head; p < q.tail; p++ {
			q.index[q.slot(p).f.offerID] = p
		}
	}
	return dropped
}

// tradeRing keeps the latest pending trades, dropping the oldest when full.
type tradeRing struct {
	buf  []entry // allocated on the first trade, then kept
	head int
	n    int
}

// push appends e and reports whether the oldest trade was dropped for it.
func (r *tradeRing) push(e entry, size int) (dropped bool) {
	if r.buf == nil {
		r.buf = make([]entry, size)
	}
	if r.n == len(r.buf) {
		r.buf[r.head] = entry{}
		r.head = (r.head + 1) % len(r.buf)
		r.n--
		dropped = true
	}
	r.buf[(r.head+r.n)%len(r.buf)] = e
	r.n++
	return dropped
}

func (r *tradeRing) front() entry { return r.buf[r.head] }

func (r *tradeRing) pop() entry {
	e := r.buf[r.head]
	r.buf[r.head] = entry{}
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return e
}
