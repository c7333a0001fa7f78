package matching

import (
	"maps"
	"math/bits"
	"sync"
	"sync/atomic"

	"computebroker/market"
)

// mktNums numbers the resource classes and regions of every engine in the
// process, the same in all of them, so that a compiled request names its
// markets by number (see Request.Compile): a decision then finds the job's
// markets, and the grants whose region scope takes each, without reading a
// string. A number is never reused. Lookups read an immutable table;
// NewEngine replaces it when it brings a name the table lacks.
var mktNums struct {
	visible atomic.Pointer[mktTable]
	mu      sync.Mutex
}

// mktTable is one version of the numbering. A region's number is its bit
// in a region mask; regions from the 64th on get none, and a request that
// names one is decided by its strings.
type mktTable struct {
	classes map[string]int32
	regions map[string]int32
}

// numberMarkets gives every class and region of keys a number and returns
// the table that holds them all.
func numberMarkets(keys []market.MarketKey) *mktTable {
	mktNums.mu.Lock()
	defer mktNums.mu.Unlock()
	t := mktNums.visible.Load()
	var next *mktTable
	for _, k := range keys {
		if t != nil && t.has(k) || next != nil && next.has(k) {
			continue
		}
		if next == nil {
			next = &mktTable{classes: map[string]int32{}, regions: map[string]int32{}}
			if t != nil {
				next.classes, next.regions = maps.Clone(t.classes), maps.Clone(t.regions)
			}
		}
		if _, ok := next.classes[k.Class]; !ok {
			next.classes[k.Class] = int32(len(next.classes))
		}
		if _, ok := next.regions[k.Region]; !ok {
			next.regions[k.Region] = int32(len(next.regions))
		}
	}
	if next == nil {
		return t
	}
	mktNums.visible.Store(next)
	return next
}

func (t *mktTable) has(k market.MarketKey) bool {
	_, c := t.classes[k.Class]
	_, r := t.regions[k.Region]
	return c && r
}

// regionBit returns region's bit, false when it has none.
func (t *mktTable) regionBit(region string) (uint64, bool) {
	n, ok := t.regions[region]
	if !ok || n >= 64 {
		return 0, false
	}
	return 1 << n, true
}

// regionBits returns the mask of regions, false when one of them has no
// bit. Any region (none listed) is every bit.
func (t *mktTable) regionBits(regions []string) (uint64, bool) {
	if len(regions) == 0 {
		return ^uint64(0), true
	}
	var m uint64
	for _, r := range regions {
		b, ok := t.regionBit(r)
		if !ok {
			return 0, false
		}
		m |= b
	}
	return m, true
}

// numbered is what Compile resolved of a request by number: its class,
// the mask of its job's regions and, per grant's terms, the mask of the
// regions its scope takes (nil: no grant is scoped to regions). ok is
// false when some name has no number: the request is then decided by its
// strings.
type numbered struct {
	ok      bool
	class   int32
	regions uint64
	terms   []uint64
}

// resolve numbers the request's class, regions and its terms' region
// scopes in the current table.
func (r *Request) resolve() {
	r.num = numbered{}
	t := mktNums.visible.Load()
	if t == nil {
		return
	}
	class := r.Job.ResourceClass
	if class == "" {
		class = r.Class.ID
	}
	c, ok := t.classes[class]
	if !ok {
		return
	}
	regions, ok := t.regionBits(r.Job.Regions)
	if !ok {
		return
	}
	var terms []uint64
	if r.Job.UseVouchers {
		for i := range r.Terms {
			scope := r.Terms[i].RegionScope()
			if len(scope) == 0 {
				continue
			}
			m, ok := t.regionBits(scope)
			if !ok {
				return
			}
			if terms == nil {
				terms = make([]uint64, len(r.Terms))
				for k := range terms {
					terms[k] = ^uint64(0)
				}
			}
			terms[i] = m
		}
	}
	r.num = numbered{ok: true, class: c, regions: regions, terms: terms}
}

// pick appends to snaps the snapshots of cm's markets in the regions of
// mask, and to bits their regions' bits.
func (cm *classMarkets) pick(mask uint64, snaps []*Snapshot, rb []uint64) ([]*Snapshot, []uint64) {
	snaps, rb = snaps[:0], rb[:0]
	for m := mask & cm.mask; m != 0; m &= m - 1 {
		i := cm.byBit[bits.TrailingZeros64(m)]
		snaps, rb = append(snaps, cm.snaps[i].Load()), append(rb, m&-m)
	}
	return snaps, rb
}
