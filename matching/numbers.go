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
// regions its scope takes (termRegions, nil when no grant is scoped to
// regions). ok is false when some name has no number: the request is
// then decided by its strings.
//
// With provsOK set, the providers that the terms' scopes name have numbers
// (see provNums), in provs with the mask of the terms naming each, and
// unscoped has the terms scoped to no provider. provsOK stays false when
// a provider has no number yet (no book holds an offer of it) or there are
// more than maxMasked terms: bounds then looks the providers up.
type numbered struct {
	ok      bool
	provsOK bool
	class   int32
	regions uint64
	// termRegions[i] is the mask of the regions Request.Terms[i]'s scope
	// takes (every bit when it is not scoped to regions).
	termRegions []uint64
	unscoped    uint64
	provs       []termsProv
}

// termsProv is a provider that the terms' scopes name, with the mask of
// the terms (by index in Request.Terms) that name it.
type termsProv struct {
	num   int32
	terms uint64
}

// resolve numbers the request's class, regions and its terms' region
// scopes in the current table, and its terms' provider scopes.
func (r *Request) resolve() {
	r.num = numbered{}
	r.num.provsOK = r.resolveProviders()
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
	var termRegions []uint64
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
			if termRegions == nil {
				termRegions = make([]uint64, len(r.Terms))
				for k := range termRegions {
					termRegions[k] = ^uint64(0)
				}
			}
			termRegions[i] = m
		}
	}
	n := &r.num
	n.ok, n.class, n.regions, n.termRegions = true, c, regions, termRegions
}

// resolveProviders sets r.num's provs and unscoped from the terms'
// provider scopes; it reports whether every provider had a number.
func (r *Request) resolveProviders() bool {
	if !r.Job.UseVouchers || len(r.Terms) > maxMasked {
		return false
	}
	n := &r.num
	for i := range r.Terms {
		scope := r.Terms[i].ProviderScope()
		if len(scope) == 0 {
			n.unscoped |= 1 << i
			continue
		}
	next:
		for _, pid := range scope {
			num := providerNumber(pid)
			if num < 0 {
				n.provs, n.unscoped = nil, 0
				return false
			}
			for k := range n.provs {
				if n.provs[k].num == num {
					n.provs[k].terms |= 1 << i
					continue next
				}
			}
			n.provs = append(n.provs, termsProv{num: num, terms: 1 << i})
		}
	}
	return true
}

// pick returns in snaps the snapshots of cm's markets in the regions of
// mask, and in rb their regions' bits.
func (cm *classMarkets) pick(mask uint64, snaps []*Snapshot, rb []uint64) ([]*Snapshot, []uint64) {
	snaps, rb = snaps[:0], rb[:0]
	for m := mask & cm.mask; m != 0; m &= m - 1 {
		i := cm.byBit[bits.TrailingZeros64(m)]
		snaps, rb = append(snaps, cm.snaps[i].Load()), append(rb, m&-m)
	}
	return snaps, rb
}
