package main

import (
	"strings"
	"testing"
	"time"
)

// TestRun: a small run delivers every frame sent to every subscriber of
// its group, times them, and prints the three lines of the report.
func TestRun(t *testing.T) {
	c := config{subscribers: 40, group: 10, rate: 200, loops: 2, size: 64, noDelay: true,
		duration: 500 * time.Millisecond, warmup: 100 * time.Millisecond}
	if err := c.check(); err != nil {
		t.Fatal(err)
	}
	r, err := run(c)
	if err != nil {
		t.Fatal(err)
	}
	if r.frames == 0 || r.received != r.frames {
		t.Fatalf("sent %d frames, received %d", r.frames, r.received)
	}
	if r.writes == 0 || r.writes > r.frames {
		t.Fatalf("%d writes for %d frames", r.writes, r.frames)
	}
	if len(r.latency) == 0 || len(r.latency) > int(r.frames) || r.latency[0] <= 0 {
		t.Fatalf("%d latencies for %d frames, first %d ns", len(r.latency), r.frames, r.latency[0])
	}
	var b strings.Builder
	r.print(&b, c)
	if out := b.String(); strings.Count(out, "\n") != 3 || !strings.Contains(out, "frames per write") ||
		!strings.Contains(out, "p99") || !strings.Contains(out, "µs per frame") {
		t.Fatalf("report:\n%s", out)
	}
}

func TestCheck(t *testing.T) {
	good := config{subscribers: 10, group: 5, rate: 1, loops: 1, size: 8, duration: 2 * time.Second, warmup: time.Second}
	if err := good.check(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []func(*config){
		func(c *config) { c.group = 11 },
		func(c *config) { c.size = 7 },
		func(c *config) { c.loops = 0 },
		func(c *config) { c.warmup = 2 * time.Second },
		func(c *config) { c.rate = 0 },
	} {
		c := good
		bad(&c)
		if c.check() == nil {
			t.Fatalf("%+v accepted", c)
		}
	}
}
