package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// report is what a run measured.
type report struct {
	URLs              []string         `json:"urls"`
	Providers         int              `json:"providers"`
	Offers            int              `json:"offers"`
	Markets           int              `json:"markets"`
	Subscribers       int              `json:"subscribers"`
	SubscribersOK     int64            `json:"subscribers_connected"`
	TargetRate        float64          `json:"target_rate"`
	ConnRate          float64          `json:"conn_rate"`
	Window            int              `json:"window"`
	MeasuredSeconds   float64          `json:"measured_seconds"`
	Sent              int64            `json:"updates_sent"`
	Accepted          int64            `json:"updates_accepted"`
	AcceptedPerSec    float64          `json:"updates_accepted_per_second"`
	Errors            int64            `json:"update_errors"`
	ErrorCodes        map[string]int64 `json:"error_codes,omitempty"`
	StreamsClosed     int64            `json:"provider_streams_closed"`
	VersionMismatches int64            `json:"version_mismatches"`
	AckP50ms          float64          `json:"ack_p50_ms"`
	AckP99ms          float64          `json:"ack_p99_ms"`
	AckMaxms          float64          `json:"ack_max_ms"`
	Deliveries        int64            `json:"deliveries"`
	DeliveriesPerSec  float64          `json:"deliveries_per_second"`
	Unmatched         int64            `json:"deliveries_unmatched"`
	LatencyP50ms      float64          `json:"latency_p50_ms"`
	LatencyP99ms      float64          `json:"latency_p99_ms"`
	LatencyP999ms     float64          `json:"latency_p999_ms"`
	LatencyMaxms      float64          `json:"latency_max_ms"`
	Resyncs           int64            `json:"subscriber_resyncs"`
	SeqErrors         int64            `json:"seq_errors"`
	ReadErrors        int64            `json:"subscriber_read_errors"`
	UncoalescedPerSec float64          `json:"deliveries_without_coalescing_per_second"`
	HubCoalesced      float64          `json:"hub_coalesced"`
	HubFrames         float64          `json:"hub_frames"`
	ServerCPU         float64          `json:"server_cpu_cores"`
	ServerRSSMB       float64          `json:"server_rss_mb"`
	Idle              *idleReport      `json:"idle,omitempty"`
}

type idleReport struct {
	Subscribers       int     `json:"subscribers"`
	Connected         int64   `json:"connected"`
	RSSPerSubKB       float64 `json:"rss_per_subscriber_kb"`
	HeapStackPerSubKB float64 `json:"heap_and_stack_per_subscriber_kb"`
	GoroutinesPerSub  float64 `json:"goroutines_per_subscriber"`
	RSSBeforeMB       float64 `json:"rss_before_mb"`
	RSSAfterMB        float64 `json:"rss_after_mb"`
}

func run(ctx context.Context, cfg config) (*report, error) {
	rep := &report{URLs: cfg.urls, Providers: cfg.providers, Offers: cfg.providers * cfg.offers, Subscribers: cfg.subscribers,
		TargetRate: cfg.rate, ConnRate: cfg.connRate, Window: cfg.window}
	t0 := time.Now()
	fx, err := seed(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("seeding: %w", err)
	}
	rep.Markets = len(fx.markets)
	logf("seeded %d providers and %d offers over %d markets in %s", len(fx.providers), len(fx.offers), len(fx.markets), time.Since(t0).Round(time.Millisecond))

	times := newSendTimes(len(fx.offers))
	meas := &window{}
	hist := &histogram{}
	subs := &subTotals{}
	var conns []*websocket.Conn
	var connsMu sync.Mutex
	var reader *epollReader
	if cfg.reader == "epoll" {
		if reader, err = newEpollReader(); err != nil {
			return nil, err
		}
	}
	defer func() { // every stream is closed whatever happens
		connsMu.Lock()
		defer connsMu.Unlock()
		closeAll(conns)
		if reader != nil {
			reader.closeAll()
		}
	}()
	connect := func(n, offset int, active bool, query func(i int) string) (int64, error) {
		before := subs.connected.Load()
		cs, snaps := connectSubscribers(ctx, cfg, reader, n, offset, active, query, fx, times, meas, hist, subs)
		connsMu.Lock()
		conns = append(conns, cs...)
		connsMu.Unlock()
		// Wait (bounded) for every first snapshot.
		deadline := time.After(60 * time.Second)
		for _, s := range snaps {
			select {
			case <-s:
			case <-deadline:
				return subs.connected.Load() - before, fmt.Errorf("snapshots still missing after 60 s")
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		return subs.connected.Load() - before, nil
	}

	// Idle subscribers, and the server's memory for them.
	if cfg.idle > 0 {
		m0, err := scrape(ctx, cfg.urls[0])
		if err != nil {
			return rep, err
		}
		ok, err := connect(cfg.idle, 0, false, func(int) string { return fx.idleMarket.query() })
		if err != nil {
			return rep, fmt.Errorf("idle subscribers: %w", err)
		}
		time.Sleep(3 * time.Second) // let the server settle (GC, stacks)
		m1, err := scrape(ctx, cfg.urls[0])
		if err != nil {
			return rep, err
		}
		n := float64(ok)
		rep.Idle = &idleReport{Subscribers: cfg.idle, Connected: ok,
			RSSBeforeMB: m0["process_resident_memory_bytes"] / 1e6, RSSAfterMB: m1["process_resident_memory_bytes"] / 1e6}
		if n > 0 {
			rep.Idle.RSSPerSubKB = (m1["process_resident_memory_bytes"] - m0["process_resident_memory_bytes"]) / n / 1024
			rep.Idle.HeapStackPerSubKB = (m1["go_memstats_heap_inuse_bytes"] + m1["go_memstats_stack_inuse_bytes"] -
				m0["go_memstats_heap_inuse_bytes"] - m0["go_memstats_stack_inuse_bytes"]) / n / 1024
			rep.Idle.GoroutinesPerSub = (m1["go_goroutines"] - m0["go_goroutines"]) / n
		}
		logf("%d idle subscribers: server RSS %.1f → %.1f MB: %.1f KB each (heap+stack %.1f KB, %.2f goroutines)", ok,
			rep.Idle.RSSBeforeMB, rep.Idle.RSSAfterMB, rep.Idle.RSSPerSubKB, rep.Idle.HeapStackPerSubKB, rep.Idle.GoroutinesPerSub)
	}

	// Active subscribers.
	subsPerMarket := make([]int, len(fx.markets))
	query := func(i int) string {
		switch cfg.filter {
		case "all":
			return ""
		case "class":
			return "?resource_class=" + fx.markets[i%len(fx.markets)].class
		}
		return fx.markets[i%len(fx.markets)].query()
	}
	for i := 0; i < cfg.subscribers; i++ {
		switch cfg.filter {
		case "market":
			subsPerMarket[i%len(fx.markets)]++
		case "class":
			c := fx.markets[i%len(fx.markets)].class
			for m, k := range fx.markets {
				if k.class == c {
					subsPerMarket[m]++
				}
			}
		default:
			for m := range subsPerMarket {
				subsPerMarket[m]++
			}
		}
	}
	if cfg.subscribers > 0 {
		t := time.Now()
		ok, err := connect(cfg.subscribers, cfg.idle, true, query)
		rep.SubscribersOK = ok
		if err != nil {
			return rep, fmt.Errorf("subscribers: %w", err)
		}
		logf("%d subscribers connected and have their snapshot in %s", ok, time.Since(t).Round(time.Millisecond))
	}

	// Providers: warm up, measure, stop, drain.
	perConn := cfg.connRate
	if cfg.rate > 0 {
		perConn = cfg.rate / float64(cfg.providers)
		if cfg.connRate > 0 && perConn > cfg.connRate {
			logf("warning: --rate %.0f over %d providers is %.0f/s per stream, above --conn-rate %.0f: capped", cfg.rate, cfg.providers, perConn, cfg.connRate)
			perConn = cfg.connRate
		}
	}
	ptot := &providerTotals{}
	ackHist := &histogram{}
	stop := make(chan struct{})
	var pwg sync.WaitGroup
	perr := make(chan error, len(fx.providers))
	for i, p := range fx.providers {
		ps := &providerStream{cfg: cfg, fx: fx, p: p, base: cfg.urls[i%len(cfg.urls)], times: times, meas: meas, totals: ptot, acks: ackHist, rate: perConn}
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			if err := ps.run(ctx, stop); err != nil {
				perr <- err
			}
		}()
	}
	if _, err := scrape(ctx, cfg.urls[0]); err != nil {
		close(stop)
		pwg.Wait()
		return rep, err
	}
	sleep(ctx, cfg.warmup)
	start := time.Now()
	meas.start.Store(start.UnixNano())
	accepted0 := ptot.accepted.Load()
	mStart, _ := scrape(ctx, cfg.urls[0])
	logf("measuring for %s…", cfg.duration)
	progress := time.NewTicker(5 * time.Second)
	end := time.After(cfg.duration)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-end:
			break loop
		case <-progress.C:
			el := time.Since(start).Seconds()
			logf("  %.0f s: %.0f updates/s accepted, %.0f deliveries/s", el, float64(ptot.accepted.Load()-accepted0)/el, float64(subs.sum(func(s *subscriber) int64 { return s.deliveriesIn.Load() }))/el)
		}
	}
	progress.Stop()
	stopAt := time.Now()
	meas.end.Store(stopAt.UnixNano())
	mEnd, _ := scrape(ctx, cfg.urls[0])
	close(stop)
	pwg.Wait()
	sleep(ctx, time.Second) // deliveries of the last updates
	select {
	case err = <-perr:
		logf("a provider stream failed: %v", err)
	default:
	}

	el := stopAt.Sub(start).Seconds()
	rep.MeasuredSeconds = el
	rep.Sent, rep.Accepted = ptot.sent.Load(), ptot.acceptedIn.Load()
	rep.AcceptedPerSec = float64(rep.Accepted) / el
	rep.Errors, rep.StreamsClosed, rep.VersionMismatches = ptot.errors.Load(), ptot.closed.Load(), ptot.mismatches.Load()
	rep.ErrorCodes = ptot.codes
	rep.Deliveries = subs.sum(func(s *subscriber) int64 { return s.deliveriesIn.Load() })
	rep.DeliveriesPerSec = float64(rep.Deliveries) / el
	rep.Unmatched = subs.sum(func(s *subscriber) int64 { return s.unmatched.Load() })
	rep.Resyncs, rep.SeqErrors, rep.ReadErrors = subs.resyncs.Load(), subs.seqErrors.Load(), subs.readErrors.Load()
	acks := ackHist.merged()
	rep.AckP50ms, rep.AckP99ms, rep.AckMaxms = quantile(acks, 0.5), quantile(acks, 0.99), quantile(acks, 1)
	counts := hist.merged()
	rep.LatencyP50ms, rep.LatencyP99ms, rep.LatencyP999ms, rep.LatencyMaxms = quantile(counts, 0.5), quantile(counts, 0.99), quantile(counts, 0.999), quantile(counts, 1)
	// Without coalescing every accepted update of a market would reach
	// each of its subscribers (assuming updates spread evenly, as sent).
	if len(fx.markets) > 0 {
		var subsTotal int
		for _, n := range subsPerMarket {
			subsTotal += n
		}
		rep.UncoalescedPerSec = rep.AcceptedPerSec * float64(subsTotal) / float64(len(fx.markets))
	}
	if mStart != nil && mEnd != nil {
		rep.HubCoalesced = mEnd["broker_hub_coalesced_total"] - mStart["broker_hub_coalesced_total"]
		rep.HubFrames = mEnd["broker_hub_frames_sent_total"] - mStart["broker_hub_frames_sent_total"]
		rep.ServerCPU = (mEnd["process_cpu_seconds_total"] - mStart["process_cpu_seconds_total"]) / el
		rep.ServerRSSMB = mEnd["process_resident_memory_bytes"] / 1e6
	}
	return rep, nil
}

// connectSubscribers opens n market streams, 64 dials at a time, spread
// over the URLs and the loopback source addresses, and starts their
// readers (reader's loop, or a goroutine each when reader is nil). It
// returns the goroutine-read connections and, per subscriber, a channel
// closed at its first snapshot.
func connectSubscribers(ctx context.Context, cfg config, reader *epollReader, n, offset int, active bool, query func(int) string,
	fx *fixture, times *sendTimes, meas *window, hist *histogram, totals *subTotals) ([]*websocket.Conn, []chan struct{}) {
	var mu sync.Mutex
	var conns []*websocket.Conn
	var snaps []chan struct{}
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				base := cfg.urls[i%len(cfg.urls)]
				s := &subscriber{active: active, fx: fx, times: times, meas: meas, hist: hist, totals: totals, snap: make(chan struct{}),
					shard: uint32(offset + i)}
				local := sourceAddr(base, offset+i, cfg.sourceIPs)
				var err error
				if reader != nil {
					var fd int
					var leftover []byte
					if fd, leftover, err = rawDial(ctx, base, "/api/v1/stream/market"+query(i), local); err == nil {
						mu.Lock()
						snaps = append(snaps, s.snap)
						totals.add(s)
						mu.Unlock()
						if err = reader.add(fd, s, leftover); err != nil {
							_ = closeFD(fd)
							s.end(nil)
						}
					}
				} else if s.ws, err = dialSubscriber(ctx, base, query(i), local); err == nil {
					mu.Lock()
					conns = append(conns, s.ws)
					snaps = append(snaps, s.snap)
					totals.add(s)
					mu.Unlock()
					go s.run()
				}
				if err != nil {
					if totals.failed.Add(1) <= 3 {
						logf("subscriber %d: %v", i, err)
					}
					continue
				}
				totals.connected.Add(1)
			}
		}()
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return conns, snaps
}

func closeAll(conns []*websocket.Conn) {
	var wg sync.WaitGroup
	ch := make(chan *websocket.Conn)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range ch {
				_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(100*time.Millisecond))
				_ = c.Close()
			}
		}()
	}
	for _, c := range conns {
		ch <- c
	}
	close(ch)
	wg.Wait()
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// scrape reads the unlabelled series of a brokerd's /metrics.
func scrape(ctx context.Context, base string) (map[string]float64, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/metrics", nil)
	resp, err := (&http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || strings.ContainsRune(line, '{') {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = f
		}
	}
	if _, ok := out["process_resident_memory_bytes"]; !ok {
		return out, fmt.Errorf("metrics of %s lack process_resident_memory_bytes (the process collector is not registered)", base)
	}
	return out, nil
}

func (r *report) print(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("")
	p("load test against %s", strings.Join(r.URLs, ", "))
	p("  %d providers (one stream each, window %d, ≤ %.0f/s per stream), %d offers over %d markets, target %s",
		r.Providers, r.Window, r.ConnRate, r.Offers, r.Markets, rateText(r.TargetRate))
	p("  %d subscribers connected of %d", r.SubscribersOK, r.Subscribers)
	p("")
	p("price updates (measured %.1f s)", r.MeasuredSeconds)
	p("  accepted      %10.0f /s   (%d acks; %d sent in all)", r.AcceptedPerSec, r.Accepted, r.Sent)
	p("  errors        %10d      %s", r.Errors, codesText(r.ErrorCodes))
	p("  ack latency   p50 %.2f ms   p99 %.2f ms   max %.2f ms   (send → ack)", r.AckP50ms, r.AckP99ms, r.AckMaxms)
	if r.StreamsClosed > 0 || r.VersionMismatches > 0 {
		p("  streams closed %d, version mismatches %d", r.StreamsClosed, r.VersionMismatches)
	}
	p("tick deliveries")
	p("  delivered     %10.0f /s   (%d ticks of updates sent in the window; %.0f/s if nothing were coalesced)", r.DeliveriesPerSec, r.Deliveries, r.UncoalescedPerSec)
	p("  latency       p50 %.2f ms   p99 %.2f ms   p99.9 %.2f ms   max %.2f ms   (send → delivery)", r.LatencyP50ms, r.LatencyP99ms, r.LatencyP999ms, r.LatencyMaxms)
	p("  hub           %.0f frames, %.0f coalesced; %d resync snapshots, %d seq errors, %d read errors, %d unmatched",
		r.HubFrames, r.HubCoalesced, r.Resyncs, r.SeqErrors, r.ReadErrors, r.Unmatched)
	p("server (first URL)")
	p("  cpu           %10.2f cores   rss %.0f MB", r.ServerCPU, r.ServerRSSMB)
	if r.Idle != nil {
		p("  idle subscribers: %d connected; RSS %.1f → %.1f MB = %.1f KB per subscriber (Go heap+stacks %.1f KB, %.2f goroutines)",
			r.Idle.Connected, r.Idle.RSSBeforeMB, r.Idle.RSSAfterMB, r.Idle.RSSPerSubKB, r.Idle.HeapStackPerSubKB, r.Idle.GoroutinesPerSub)
	}
}

func rateText(r float64) string {
	if r == 0 {
		return "as fast as acknowledged"
	}
	return fmt.Sprintf("%.0f updates/s", r)
}

func codesText(m map[string]int64) string {
	if len(m) == 0 {
		return ""
	}
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var parts []string
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%s×%d", k, m[k]))
	}
	return "(" + strings.Join(parts, ", ") + ")"
}
