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
// before (each took about 5 µs, a quarter of reading an SME's funds).
type defs struct {
	programs decoded[market.Program]
	vouchers decoded[market.Voucher]
}

// program decodes a programme; ok is false when raw is not one. The
// caller gets lists of its own: the cached ones stay as decoded.
func (d *defs) program(raw string) (market.Program, bool) {
	p, ok := d.programs.get(raw)
	p.ResourceClasses, p.Regions, p.Providers = slices.Clone(p.ResourceClasses), slices.Clone(p.Regions), slices.Clone(p.Providers)
	return p, ok
}

// voucher decodes a voucher's definition; ok is false when raw is not one.
func (d *defs) voucher(raw string) (market.Voucher, bool) { return d.vouchers.get(raw) }

// decoded maps JSON texts to their decoded values; it starts over past
// maxDefs entries.
type decoded[T any] struct {
	mu sync.RWMutex
	m  map[string]T
}

const maxDefs = 4096

func (c *decoded[T]) get(raw string) (v T, ok bool) {
	c.mu.RLock()
	v, ok = c.m[raw]
	c.mu.RUnlock()
	if ok {
		return v, true
	}
	if json.Unmarshal([]byte(raw), &v) != nil {
		var zero T
		return zero, false
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxDefs {
		c.m = make(map[string]T)
	}
	c.m[raw] = v
	c.mu.Unlock()
	return v, true
}
