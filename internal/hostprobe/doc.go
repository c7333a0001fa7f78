// Package hostprobe measures what the machine under a benchmark gives it:
// how fast one core runs plain arithmetic, one dependent chain and four
// independent ones, and how long a load takes from caches and memory of
// several sizes. It has no code but its benchmarks:
//
//	go test -run '^$' -bench . -cpu 1 -count 5 ./internal/hostprobe/
//
// Read the figures side by side. A core to itself runs the four chains at
// about the cost of one (a modern core has the ports); a core whose other
// hardware thread is busy with someone else's work keeps the one chain's
// speed but runs the four nearly twice as slowly, and so does any code that
// keeps the core's ports busy, as the matching engine does. On a shared
// virtual machine this changes from second to second: the matching
// benchmarks report an in-cache control beside each run for the same
// reason (see docs/BENCHMARKS.md). The loads tell where the machine's
// caches end: a pointer chase over a buffer that fits in cache costs a few
// nanoseconds a step, one over a buffer in memory a hundred or more.
package hostprobe
