// Command loadtest is a bounded load client for brokerd's streams. It talks
// to the public API only: it seeds its own accounts and offers over REST,
// drives provider streams with pipelined price updates, holds market-stream
// subscribers that time every tick from the provider's send to its
// delivery, and measures the server's memory per idle subscriber from
// /metrics. Every phase has a deadline; it stops by itself.
//
//	go run ./loadtest --url http://127.0.0.1:8080 --admin-token-file var/admin.token \
//	    --providers 300 --offers 4 --subscribers 5000 --idle 5000 --rate 1000 --duration 20s
//
// Latency: a tick carries the offer's version, not a send time. Provider
// and subscribers run in this one process, and each offer is changed by
// one provider stream only, whose commands the server applies in order,
// so the provider predicts the version each price change will get and
// records its send time under (offer, version); a subscriber that
// receives (offer, version) looks the send time up. A coalesced tick is
// timed from the send of the version it carries.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const maxDuration = 5 * time.Minute

type config struct {
	urls        []string
	adminToken  string
	duration    time.Duration
	warmup      time.Duration
	providers   int
	offers      int
	rate        float64
	connRate    float64
	window      int
	subscribers int
	idle        int
	filter      string
	sourceIPs   int
	seed        uint64
	jsonOut     bool
	workers     int
	reader      string
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A hard cap on the whole run: seeding and connecting are bounded too.
	ctx, cancel := context.WithTimeout(ctx, cfg.duration+cfg.warmup+10*time.Minute)
	defer cancel()
	raiseFileLimit()

	rep, err := run(ctx, cfg)
	if rep != nil {
		if cfg.jsonOut {
			b, _ := json.MarshalIndent(rep, "", "  ")
			fmt.Println(string(b))
		} else {
			rep.print(os.Stdout)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	urls := fs.String("url", "http://127.0.0.1:8080", "brokerd base URLs, comma-separated (streams are spread over them; memory is read from the first)")
	token := fs.String("admin-token", os.Getenv("BROKER_ADMIN_TOKEN"), "operator token")
	tokenFile := fs.String("admin-token-file", "var/admin.token", "file holding the operator token, when --admin-token is empty")
	fs.DurationVar(&c.duration, "duration", 20*time.Second, "how long price updates are measured (at most 5m)")
	fs.DurationVar(&c.warmup, "warmup", 2*time.Second, "updates flow this long before measuring")
	fs.IntVar(&c.providers, "providers", 64, "provider accounts, one provider stream each")
	fs.IntVar(&c.offers, "offers", 4, "offers per provider, spread over the markets")
	fs.Float64Var(&c.rate, "rate", 0, "target price updates per second over all providers (0: as fast as acknowledged, within --conn-rate)")
	fs.Float64Var(&c.connRate, "conn-rate", 190, "cap per provider stream, updates/s (brokerd closes a stream past BROKER_STREAM_RATE_LIMIT, 200/s by default); 0: no cap")
	fs.IntVar(&c.window, "window", 64, "price updates in flight per provider stream")
	fs.IntVar(&c.subscribers, "subscribers", 1000, "market-stream subscribers that measure delivery")
	fs.IntVar(&c.idle, "idle", 1000, "idle market-stream subscribers (on a market without updates) for the memory measure")
	fs.StringVar(&c.filter, "filter", "market", "what an active subscriber follows: market (one class and region), class, or all")
	fs.IntVar(&c.sourceIPs, "source-ips", 128, "loopback source addresses (127.0.0.2…) to spread subscribers over, so the per-IP anonymous rate limit meters each as a client of its own; 0: the default address")
	fs.Uint64Var(&c.seed, "seed", 1, "seed for prices")
	fs.BoolVar(&c.jsonOut, "json", false, "print the report as JSON")
	fs.IntVar(&c.workers, "seed-workers", 16, "concurrent REST calls while seeding")
	fs.StringVar(&c.reader, "reader", "go", "how the market streams are read: go (a goroutine per stream, gorilla/websocket) or epoll (one loop over non-blocking sockets, Linux; less client CPU, the same delivery latency in our runs)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	for _, u := range strings.Split(*urls, ",") {
		u = strings.TrimRight(strings.TrimSpace(u), "/")
		if u == "" {
			continue
		}
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return c, fmt.Errorf("--url %q: want http://host:port", u)
		}
		c.urls = append(c.urls, u)
	}
	if len(c.urls) == 0 {
		return c, errors.New("--url is required")
	}
	c.adminToken = strings.TrimSpace(*token)
	if c.adminToken == "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return c, fmt.Errorf("no --admin-token and cannot read %s: %w", *tokenFile, err)
		}
		c.adminToken = strings.TrimSpace(string(b))
	}
	switch {
	case c.duration <= 0 || c.duration > maxDuration:
		return c, fmt.Errorf("--duration must be in (0, %s]", maxDuration)
	case c.warmup < 0 || c.warmup > time.Minute:
		return c, errors.New("--warmup must be in [0, 1m]")
	case c.providers < 1 || c.providers > 10_000:
		return c, errors.New("--providers must be in [1, 10000]")
	case c.offers < 1 || c.offers > 100:
		return c, errors.New("--offers must be in [1, 100]")
	case c.rate < 0 || c.connRate < 0:
		return c, errors.New("--rate and --conn-rate must not be negative")
	case c.window < 1 || c.window > 1000:
		return c, errors.New("--window must be in [1, 1000]")
	case c.subscribers < 0 || c.subscribers > 50_000 || c.idle < 0 || c.idle > 50_000:
		return c, errors.New("--subscribers and --idle must be in [0, 50000]")
	case c.filter != "market" && c.filter != "class" && c.filter != "all":
		return c, errors.New("--filter must be market, class or all")
	case c.reader != "epoll" && c.reader != "go":
		return c, errors.New("--reader must be epoll or go")
	case c.sourceIPs < 0 || c.sourceIPs > 250:
		return c, errors.New("--source-ips must be in [0, 250]")
	}
	return c, nil
}

// raiseFileLimit lifts the soft limit on open files to the hard one: each
// stream is a socket.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// sourceAddr returns the local address for connection i: one of n
// loopback addresses when the server is on loopback, else nil.
func sourceAddr(base string, i, n int) net.Addr {
	if n == 0 {
		return nil
	}
	u, err := url.Parse(base)
	if err != nil {
		return nil
	}
	ip := net.ParseIP(u.Hostname())
	if ip == nil || !ip.IsLoopback() || ip.To4() == nil {
		return nil
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%n))}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}
