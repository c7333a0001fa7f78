package hostprobe

import (
	"fmt"
	"math/rand"
	"testing"
)

var sink uint64

// BenchmarkChain: one dependent xorshift chain, three shifts and three
// xors a step; the ns/op is one step.
func BenchmarkChain(b *testing.B) {
	x := uint64(88172645463325252)
	for i := 0; i < b.N; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	sink += x
}

// BenchmarkChains4: four independent chains stepped together; the ns/op
// is one step of all four.
func BenchmarkChains4(b *testing.B) {
	x, y, z, w := uint64(1), uint64(2), uint64(3), uint64(4)
	for i := 0; i < b.N; i++ {
		x ^= x << 13
		y ^= y << 13
		z ^= z << 13
		w ^= w << 13
		x ^= x >> 7
		y ^= y >> 7
		z ^= z >> 7
		w ^= w >> 7
		x ^= x << 17
		y ^= y << 17
		z ^= z << 17
		w ^= w << 17
	}
	sink += x + y + z + w
}

// BenchmarkChase: a pointer chase, one load a step, each on its own cache
// line in random order over a buffer of the given size; the ns/op is one
// load.
func BenchmarkChase(b *testing.B) {
	for _, kb := range []int{16, 256, 8 << 10, 256 << 10} {
		b.Run(fmt.Sprintf("%dKB", kb), func(b *testing.B) {
			next := cycle(kb << 10)
			b.ResetTimer()
			p := int32(0)
			for i := 0; i < b.N; i++ {
				p = next[p]
			}
			sink += uint64(p)
		})
	}
}

// cycle returns a buffer of size bytes holding one random cycle through
// its cache lines: next[16k] is the index of the line after line k.
func cycle(size int) []int32 {
	const perLine = 64 / 4
	n := size / 64
	order := rand.New(rand.NewSource(1)).Perm(n)
	next := make([]int32, n*perLine)
	for i, line := range order {
		next[line*perLine] = int32(order[(i+1)%n] * perLine)
	}
	return next
}

// TestCycle: the chase visits every line once before it repeats.
func TestCycle(t *testing.T) {
	next := cycle(64 << 10)
	seen := map[int32]bool{}
	p := int32(0)
	for range 1024 {
		if seen[p] {
			t.Fatalf("line %d visited twice", p/16)
		}
		seen[p] = true
		p = next[p]
	}
	if p != 0 || len(seen) != 1024 {
		t.Fatalf("cycle of %d lines ends at %d", len(seen), p)
	}
}
