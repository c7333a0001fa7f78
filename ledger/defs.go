package ledger

import (
	"encoding/json"
	"slices"
	"sync"

	"computebroker/market"
)

// defs caches decoded programme and voucher definitions by the JSON they
// are stored as. Both are written once (SETNX, HSETNX) and never changed,
// and a decoded value depends on its bytes alone, so a hit is exact
// whatever happens to the keys; a quote then decodes no JSON it has seen
// before (each took about 5 µs, a fifth of reading an SME's funds). It
// starts over past maxDefs entries of a kind.
type defs struct {
	mu       sync.RWMutex
	programs map[string]market.Program
	vouchers map[string]market.Voucher
}

const maxDefs = 4096

// program decodes a programme; ok is false when raw is not one.
func (d *defs) program(raw string) (p market.Program, ok bool) {
	d.mu.RLock()
	p, ok = d.programs[raw]
	d.mu.RUnlock()
	if !ok {
		if json.Unmarshal([]byte(raw), &p) != nil {
			return market.Program{}, false
		}
		d.mu.Lock()
		if d.programs == nil || len(d.programs) >= maxDefs {
			d.programs = make(map[string]market.Program)
		}
		d.programs[raw] = p
		d.mu.Unlock()
	}
	// The caller gets lists of its own: the cached ones stay as decoded.
	p.ResourceClasses, p.Regions, p.Providers = slices.Clone(p.ResourceClasses), slices.Clone(p.Regions), slices.Clone(p.Providers)
	return p, true
}

// voucher decodes a voucher's definition; ok is false when raw is not one.
func (d *defs) voucher(raw string) (v market.Voucher, ok bool) {
	d.mu.RLock()
	v, ok = d.vouchers[raw]
	d.mu.RUnlock()
	if ok {
		return v, true
	}
	if json.Unmarshal([]byte(raw), &v) != nil {
		return market.Voucher{}, false
	}
	d.mu.Lock()
	if d.vouchers == nil || len(d.vouchers) >= maxDefs {
		d.vouchers = make(map[string]market.Voucher)
	}
	d.vouchers[raw] = v
	d.mu.Unlock()
	return v, true
}
