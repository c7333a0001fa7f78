// Package hostprobe measures what the machine under a benchmark gives it:
// how fast one core runs plain arithmetic, one dependent chain and four
// independent ones, and how long a load takes from caches and memory of
// several sizes. It has no code but its benchmarks:
//
//	go test -run '^$' -bench . -cpu 1 -count 5 ./internal/hostprobe/
//
// Read the figures side by side. A core to itself runs the four chains
// for little more than the cost of one (on the reference machine,
// docs/BENCHMARKS.md, 2.44–2.49 ns a step against 1.92–2.06); a core whose
// other hardware thread is busy with someone else's work keeps the one
// chain's speed but runs the four up to 1.6 times as slowly (up to 3.95
// ns), and so does any code that keeps the core's ports busy, as the
// matching engine does. On a shared
// virtual machine this changes from second to second: the matching
// benchmarks report an in-cache control beside each run for the same
// reason (see docs/BENCHMARKS.md). The loads tell where the machine's
// caches end: a pointer chase over a buffer that fits in cache costs a few
// nanoseconds a step, one over a buffer in memory a hundred or more.
package hostprobe
