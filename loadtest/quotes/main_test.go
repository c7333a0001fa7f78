package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestRun against a stand-in brokerd: every quote is sent with the token
// and the job, no_match answers are counted, the CPU comes from /metrics,
// and the report has its three lines.
func TestRun(t *testing.T) {
	var n, cpuReads atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics":
			fmt.Fprintf(w, "# HELP x\nprocess_cpu_seconds_total %d.5\n", 10+cpuReads.Add(1))
		case "/api/v1/quotes":
			if r.Method != "POST" || r.Header.Get("Authorization") != "Bearer tok" {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			if n.Add(1)%4 == 0 {
				w.WriteHeader(http.StatusUnprocessableEntity)
			}
			fmt.Fprint(w, "{}")
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer srv.Close()
	c, err := parse([]string{"--url", srv.URL, "--token", "tok", "--n", "200", "--warmup", "20", "--parallel", "4", "--rate", "0"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := run(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if n.Load() != 220 || r.quotes != 200 || r.noMatch != 50 || r.cpu != 1 || r.latency[0] <= 0 {
		t.Fatalf("sent %d, result %d quotes %d no_match, cpu %v", n.Load(), r.quotes, r.noMatch, r.cpu)
	}
	var b strings.Builder
	r.print(&b, c)
	if out := b.String(); strings.Count(out, "\n") != 3 || !strings.Contains(out, "5000 µs per quote") || !strings.Contains(out, "p99") {
		t.Fatalf("report:\n%s", out)
	}
}

// TestRunStopsOn429: a rate-limited brokerd ends the run with advice.
func TestRunStopsOn429(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer srv.Close()
	c, err := parse([]string{"--url", srv.URL, "--token", "tok", "--n", "5", "--warmup", "0", "--rate", "0"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run(context.Background(), c); err == nil || !strings.Contains(err.Error(), "BROKER_RATE_LIMIT") {
		t.Fatalf("err %v", err)
	}
}

func TestParseRefuses(t *testing.T) {
	for _, args := range [][]string{
		{"--token", "t", "--n", "0"},
		{"--token", "t", "--parallel", "65"},
		{"--token", "t", "--rate", "-1"},
		{"--token", "t", "--job", "{"},
		{"--token", "t", "--url", "127.0.0.1:8080"},
		{"--accounts", "/nonexistent"},
	} {
		if _, err := parse(args); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
