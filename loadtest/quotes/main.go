// Command quotes measures what a quote costs a brokerd: it sends one SME's
// quote requests, one at a time or a few in parallel, and prints the
// quotes per second, the latency quantiles, and the CPU brokerd spent per
// quote (from process_cpu_seconds_total on its /metrics, so run it
// against a brokerd that does nothing else: no provider simulator).
//
//	go run ./loadtest/quotes --url http://127.0.0.1:8080 --accounts var/demo-accounts.json --n 3000
//
// The SME is the first of --accounts (scripts/demo writes that file) or
// --token's. The job is --job's JSON, by default 8 H100s for a day with
// vouchers. brokerd limits each token to BROKER_RATE_LIMIT (100/s, bursts
// of 500, by default); --rate keeps under it, or start brokerd with a
// higher limit to measure it flat out (--rate 0). It stops by itself.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type config struct {
	url      string
	token    string
	job      string
	n        int
	warmup   int
	parallel int
	rate     float64
}

const defaultJob = `{"resource_class":"gpu.h100-80g","units":8,"hours":24,"use_vouchers":true}`

func parse(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("quotes", flag.ContinueOnError)
	fs.StringVar(&c.url, "url", "http://127.0.0.1:8080", "brokerd base URL")
	fs.StringVar(&c.token, "token", "", "an SME's token (else the first SME of --accounts)")
	accounts := fs.String("accounts", "var/demo-accounts.json", "scripts/demo's accounts file, read when --token is empty")
	fs.StringVar(&c.job, "job", defaultJob, "the job to quote, as the API's JSON")
	fs.IntVar(&c.n, "n", 2000, "quotes to measure (at most 1,000,000)")
	fs.IntVar(&c.warmup, "warmup", 100, "quotes sent before measuring")
	fs.IntVar(&c.parallel, "parallel", 1, "quotes in flight (1 to 64)")
	fs.Float64Var(&c.rate, "rate", 90, "quotes per second at most, over all in flight (0: no pacing)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.url = strings.TrimRight(c.url, "/")
	if c.token == "" {
		b, err := os.ReadFile(*accounts)
		if err != nil {
			return c, fmt.Errorf("no --token and %w", err)
		}
		var f struct {
			SMEs []struct {
				Token string `json:"token"`
			} `json:"smes"`
		}
		if err := json.Unmarshal(b, &f); err != nil || len(f.SMEs) == 0 || f.SMEs[0].Token == "" {
			return c, fmt.Errorf("%s holds no SME token", *accounts)
		}
		c.token = f.SMEs[0].Token
	}
	if !json.Valid([]byte(c.job)) {
		return c, errors.New("--job is not JSON")
	}
	switch {
	case !strings.HasPrefix(c.url, "http://") && !strings.HasPrefix(c.url, "https://"):
		return c, fmt.Errorf("--url %q: want http://host:port", c.url)
	case c.n < 1 || c.n > 1_000_000:
		return c, errors.New("--n must be in [1, 1000000]")
	case c.warmup < 0 || c.warmup > 100_000:
		return c, errors.New("--warmup must be in [0, 100000]")
	case c.parallel < 1 || c.parallel > 64:
		return c, errors.New("--parallel must be in [1, 64]")
	case c.rate < 0:
		return c, errors.New("--rate must not be negative")
	}
	return c, nil
}

type result struct {
	quotes, noMatch int
	elapsed         time.Duration
	latency         []time.Duration // sorted
	cpu             float64         // brokerd CPU seconds over the measured quotes; < 0 when unknown
}

// run sends c.warmup quotes, then c.n measured ones.
func run(ctx context.Context, c config) (*result, error) {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: c.parallel}}
	quote := func() (int, error) {
		req, _ := http.NewRequestWithContext(ctx, "POST", c.url+"/api/v1/quotes", strings.NewReader(c.job))
		req.Header.Set("Authorization", "Bearer "+c.token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK, http.StatusUnprocessableEntity: // a quote, or no_match
			return resp.StatusCode, nil
		case http.StatusTooManyRequests:
			return 0, errors.New("brokerd answered 429: lower --rate, or raise its BROKER_RATE_LIMIT")
		default:
			return 0, fmt.Errorf("brokerd answered %d: %s", resp.StatusCode, bytes.TrimSpace(body))
		}
	}
	var pace <-chan time.Time
	if c.rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / c.rate))
		defer t.Stop()
		pace = t.C
	}
	send := func(n int, lat []time.Duration) (noMatch int, err error) {
		var next atomic.Int64
		var nm atomic.Int64
		var mu sync.Mutex
		var first error
		var wg sync.WaitGroup
		for w := 0; w < c.parallel; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					if pace != nil {
						select {
						case <-pace:
						case <-ctx.Done():
							return
						}
					}
					t := time.Now()
					code, err := quote()
					if err != nil {
						mu.Lock()
						if first == nil {
							first = err
						}
						mu.Unlock()
						next.Store(int64(n))
						return
					}
					if lat != nil {
						lat[i] = time.Since(t)
					}
					if code == http.StatusUnprocessableEntity {
						nm.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if first == nil {
			first = ctx.Err()
		}
		return int(nm.Load()), first
	}
	if _, err := send(c.warmup, nil); err != nil {
		return nil, err
	}
	cpu0, cerr := cpuSeconds(ctx, c.url)
	r := &result{quotes: c.n, latency: make([]time.Duration, c.n), cpu: -1}
	start := time.Now()
	nm, err := send(c.n, r.latency)
	r.elapsed = time.Since(start)
	if err != nil {
		return nil, err
	}
	r.noMatch = nm
	if cpu1, err := cpuSeconds(ctx, c.url); cerr == nil && err == nil {
		r.cpu = cpu1 - cpu0
	}
	slices.Sort(r.latency)
	return r, nil
}

// cpuSeconds reads process_cpu_seconds_total from a brokerd's /metrics.
func cpuSeconds(ctx context.Context, base string) (float64, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "process_cpu_seconds_total "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, errors.New("no process_cpu_seconds_total in /metrics")
}

func (r *result) print(w io.Writer, c config) {
	q := func(p float64) float64 {
		return float64(r.latency[min(len(r.latency)-1, int(p*float64(len(r.latency))))].Microseconds())
	}
	fmt.Fprintf(w, "%d quotes (%d no_match) in %s, %d in flight: %.0f quotes/s\n", r.quotes, r.noMatch,
		r.elapsed.Round(time.Millisecond), c.parallel, float64(r.quotes)/r.elapsed.Seconds())
	fmt.Fprintf(w, "latency µs: p50 %.0f, p90 %.0f, p99 %.0f, max %.0f\n", q(0.50), q(0.90), q(0.99),
		float64(r.latency[len(r.latency)-1].Microseconds()))
	if r.cpu >= 0 {
		fmt.Fprintf(w, "brokerd CPU: %.0f µs per quote (process_cpu_seconds_total, 10 ms steps)\n", r.cpu*1e6/float64(r.quotes))
	} else {
		fmt.Fprintln(w, "brokerd CPU: unknown (no process_cpu_seconds_total)")
	}
}

func main() {
	c, err := parse(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "quotes:", err)
		os.Exit(2)
	}
	budget := 10 * time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	r, err := run(ctx, c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "quotes:", err)
		os.Exit(1)
	}
	r.print(os.Stdout, c)
}
