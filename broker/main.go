package broker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"computebroker/catalog"
	"computebroker/history"
	"computebroker/ledger"
	"computebroker/market"
)

// MainConfig is brokerd's configuration.
type MainConfig struct {
	Listen        string // BROKER_LISTEN
	RedisURL      string // REDIS_URL
	ClickHouseURL string // CLICKHOUSE_URL
	AdminToken    string // BROKER_ADMIN_TOKEN; generated into VarDir/admin.token when empty
	VarDir        string // BROKER_VAR_DIR, default ./var
	AccountRate   Rate   // BROKER_RATE_LIMIT "100:500"
	AnonymousRate Rate   // BROKER_ANON_RATE_LIMIT "50:200"
	// ReferenceRefresh is how often the subsidy guard's reference prices
	// are reloaded from the history (BROKER_REFERENCE_REFRESH, default 1m).
	ReferenceRefresh time.Duration
	// HistoryKeep is how long stored history entries stay in the Redis
	// trade streams (BROKER_HISTORY_KEEP, default 1h; "forever" keeps
	// them; zero means the default). Entries not yet in ClickHouse are
	// always kept.
	HistoryKeep time.Duration
	// Consumer names this process in the history consumer group; it should
	// survive restarts (default: host name + listen port).
	Consumer string // BROKER_CONSUMER
	Logger   *slog.Logger
	Frontend fs.FS
	// ShutdownTimeout bounds the drain of in-flight requests.
	ShutdownTimeout time.Duration
}

// ConfigFromEnv reads MainConfig from environment variables.
func ConfigFromEnv(getenv func(string) string) (MainConfig, error) {
	get := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	c := MainConfig{
		Listen:          get("BROKER_LISTEN", "127.0.0.1:8080"),
		RedisURL:        get("REDIS_URL", "redis://127.0.0.1:6379/0"),
		ClickHouseURL:   get("CLICKHOUSE_URL", "clickhouse://127.0.0.1:9000/market"),
		AdminToken:      getenv("BROKER_ADMIN_TOKEN"),
		VarDir:          get("BROKER_VAR_DIR", "var"),
		Consumer:        getenv("BROKER_CONSUMER"),
		ShutdownTimeout: 20 * time.Second,
	}
	c.ReferenceRefresh = time.Minute
	if v := getenv("BROKER_REFERENCE_REFRESH"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 100*time.Millisecond || d > 24*time.Hour {
			return c, fmt.Errorf("BROKER_REFERENCE_REFRESH must be a duration from 100ms to 24h, like 1m")
		}
		c.ReferenceRefresh = d
	}
	c.HistoryKeep = catalog.DefaultTrimAfter
	if v := getenv("BROKER_HISTORY_KEEP"); v == "forever" {
		c.HistoryKeep = -1
	} else if v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Minute {
			return c, fmt.Errorf("BROKER_HISTORY_KEEP must be a duration of at least 1m, like 1h, or forever")
		}
		c.HistoryKeep = d
	}
	var ok bool
	if c.AccountRate, ok = ParseRate(get("BROKER_RATE_LIMIT", "100:500")); !ok {
		return c, fmt.Errorf("BROKER_RATE_LIMIT must be <per second>:<burst>, like 100:500")
	}
	if c.AnonymousRate, ok = ParseRate(get("BROKER_ANON_RATE_LIMIT", "50:200")); !ok {
		return c, fmt.Errorf("BROKER_ANON_RATE_LIMIT must be <per second>:<burst>, like 50:200")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return c, fmt.Errorf("BROKER_LISTEN %q: %v", c.Listen, err)
	}
	return c, nil
}

// OpenRedis connects to a Redis URL, or to a Redis Cluster when given a
// comma-separated list of host:port.
func OpenRedis(raw string) (redis.UniversalClient, error) {
	if strings.Contains(raw, ",") {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(raw, ",")}), nil
	}
	opt, err := redis.ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	opt.PoolSize = 64
	return redis.NewClient(opt), nil
}

// Main is a running brokerd: its clients, service, HTTP app and writer.
type Main struct {
	Config  MainConfig
	Service *Service
	Live    *Live
	rdb     redis.UniversalClient
	hist    *history.Store
	writer  *history.Writer
	log     *slog.Logger
	ready   chan struct{}
	addr    string
	mu      sync.Mutex
}

// NewMain returns an unstarted Main.
func NewMain(cfg MainConfig) *Main {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 20 * time.Second
	}
	if cfg.ReferenceRefresh <= 0 {
		cfg.ReferenceRefresh = time.Minute
	}
	return &Main{Config: cfg, log: cfg.Logger, ready: make(chan struct{})}
}

// Ready is closed once the server listens.
func (m *Main) Ready() <-chan struct{} { return m.ready }

// Addr is the address the server listens on, once Ready.
func (m *Main) Addr() string { m.mu.Lock(); defer m.mu.Unlock(); return m.addr }

// Run connects the stores, serves until ctx ends, then drains in-flight
// requests, flushes pending history and closes the clients.
func (m *Main) Run(ctx context.Context) error {
	cfg := m.Config
	rdb, err := OpenRedis(cfg.RedisURL)
	if err != nil {
		return err
	}
	m.rdb = rdb
	defer rdb.Close()
	if err := retry(ctx, 30*time.Second, func() error { return rdb.Ping(ctx).Err() }); err != nil {
		return fmt.Errorf("redis %s: %w", redactURL(cfg.RedisURL), err)
	}
	var hist *history.Store
	err = retry(ctx, 60*time.Second, func() error {
		var err error
		hist, err = history.Open(ctx, cfg.ClickHouseURL)
		return err
	})
	if err != nil {
		return fmt.Errorf("clickhouse %s: %w", redactURL(cfg.ClickHouseURL), err)
	}
	m.hist = hist
	defer hist.Close()

	cat := market.DefaultCatalog()
	offers := catalog.New(rdb)
	if n, err := offers.MigrateOfferStates(ctx); err != nil {
		return fmt.Errorf("migrate offers: %w", err)
	} else if n > 0 {
		m.log.Info("offers brought to the current layout", "changes", n)
	}
	led := ledger.New(rdb)
	metrics := NewMetrics(nil)
	svc := NewService(Config{Catalog: cat, Logger: m.log}, offers, led, hist, metrics)
	m.Service = svc

	// The books and the hub: loaded before serving, then following Redis.
	liveCtx, stopLive := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLive()
	live := NewLive(offers, cat.Markets(), m.log)
	defer live.Close()
	if err := live.Start(liveCtx); err != nil {
		return fmt.Errorf("load markets: %w", err)
	}
	svc.UseLive(live)
	m.Live = live
	if err := svc.RunResting(liveCtx); err != nil {
		return fmt.Errorf("load resting orders: %w", err)
	}

	token, err := m.adminToken()
	if err != nil {
		return err
	}
	if err := svc.EnsureAdmin(ctx, token); err != nil {
		return fmt.Errorf("bootstrap admin: %w", err)
	}

	consumer := cfg.Consumer
	if consumer == "" {
		host, _ := os.Hostname()
		consumer = host + "-" + cfg.Listen
	}
	src := catalog.NewHistorySource(rdb, cat.Markets(), "history", consumer)
	if m.Config.HistoryKeep != 0 {
		src.TrimAfter = m.Config.HistoryKeep
	}
	metrics.RegisterCounter("broker_offer_updates_predicted_total", "Price changes applied as brokerd predicted them (the offer was as brokerd last saw it).", func() float64 { n, _ := offers.Predictions(); return float64(n) })
	metrics.RegisterCounter("broker_offer_updates_mispredicted_total", "Price changes whose offer had changed since brokerd last saw it; the script checked them in full.", func() float64 { _, n := offers.Predictions(); return float64(n) })
	metrics.RegisterCounter("broker_offer_update_batches_total", "Batches of offer updates sent to Redis, each one script call (updates_batched_total / this = the mean batch).", func() float64 { n, _ := offers.Batches(); return float64(n) })
	metrics.RegisterCounter("broker_offer_updates_batched_total", "Offer updates (price and units changes) that went to Redis in batches.", func() float64 { _, n := offers.Batches(); return float64(n) })
	metrics.RegisterCounter("broker_history_trimmed_total", "History entries trimmed from the Redis trade streams after they were stored.", func() float64 { return float64(src.Trimmed.Load()) })
	m.writer = history.NewWriter(hist, streamSource{src}, history.WriterOptions{Logger: m.log})
	metrics.RegisterGauge("broker_history_lag_seconds", "Age of the oldest trade not yet stored in ClickHouse.", func() float64 { return m.writer.Stats().LagSeconds })
	metrics.RegisterGauge("broker_history_pending", "Trades read from Redis and not yet stored in ClickHouse.", func() float64 { return float64(m.writer.Stats().Pending) })

	// The WebSocket gateway (market and provider streams) and its metrics.
	streamCfg, err := StreamConfigFromEnv(os.Getenv)
	if err != nil {
		return err
	}
	streamCfg.Limiter, streamCfg.Logger = NewLimiter(rdb, cfg.AccountRate, cfg.AnonymousRate), m.log
	streams := NewStreams(svc, live, streamCfg)
	defer streams.Close()
	streams.RegisterMetrics(metrics)

	app := NewApp(svc, ServerConfig{
		Ready: func(ctx context.Context) error {
			if err := rdb.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("redis: %w", err)
			}
			if err := hist.Ping(ctx); err != nil {
				return fmt.Errorf("clickhouse: %w", err)
			}
			return nil
		},
		Limiter:  NewLimiter(rdb, cfg.AccountRate, cfg.AnonymousRate),
		Frontend: cfg.Frontend,
		OpenAPI:  OpenAPI,
		Logger:   m.log,
		Extra:    streams.Mount,
	})

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	m.mu.Lock()
	m.addr = ln.Addr().String()
	m.mu.Unlock()

	writerCtx, stopWriter := context.WithCancel(context.WithoutCancel(ctx))
	writerDone := make(chan error, 1)
	go func() { writerDone <- m.writer.Run(writerCtx) }()

	go svc.RunReconciler(writerCtx, 10*time.Second, 2*time.Minute)
	go svc.RunReferences(writerCtx, cfg.ReferenceRefresh)

	serveErr := make(chan error, 1)
	go func() { serveErr <- app.Listener(ln) }()
	m.log.Info("brokerd serving", "addr", m.addr, "redis", redactURL(cfg.RedisURL), "clickhouse", redactURL(cfg.ClickHouseURL))
	close(m.ready)

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		stopWriter()
		<-writerDone
		return err
	}
	m.log.Info("brokerd shutting down: draining requests")
	if err := app.ShutdownWithTimeout(cfg.ShutdownTimeout); err != nil {
		m.log.Warn("shutdown", "err", err)
	}
	m.log.Info("flushing history")
	stopWriter()
	if err := <-writerDone; err != nil && !errors.Is(err, context.Canceled) {
		m.log.Warn("history writer", "err", err)
	}
	st := m.writer.Stats()
	m.log.Info("brokerd stopped", "history_written", st.Written, "history_pending", st.Pending)
	return nil
}

// adminToken returns BROKER_ADMIN_TOKEN, or the token kept in
// VarDir/admin.token, generating and logging it once when there is none.
func (m *Main) adminToken() (string, error) {
	if m.Config.AdminToken != "" {
		return m.Config.AdminToken, nil
	}
	path := filepath.Join(m.Config.VarDir, "admin.token")
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	if err := os.MkdirAll(m.Config.VarDir, 0o700); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	token := NewToken()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		// Another brokerd wrote it first.
		time.Sleep(100 * time.Millisecond)
		b, err := os.ReadFile(path)
		return strings.TrimSpace(string(b)), err
	}
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(token + "\n"); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	m.log.Info("generated the operator token; keep it safe", "file", path, "token", token)
	return token, nil
}

func retry(ctx context.Context, total time.Duration, f func() error) error {
	deadline := time.Now().Add(total)
	wait := 100 * time.Millisecond
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		if wait < 2*time.Second {
			wait *= 2
		}
	}
}

func redactURL(u string) string {
	if i := strings.Index(u, "@"); i >= 0 {
		if j := strings.Index(u, "://"); j >= 0 && j < i {
			return u[:j+3] + "…" + u[i:]
		}
	}
	return u
}

// streamSource adapts the catalog's trade stream reader to the history
// writer's Source: catalog may not import history, nor history go-redis.
type streamSource struct{ src *catalog.HistorySource }

func (s streamSource) Read(ctx context.Context, max int) ([]history.Message, error) {
	es, err := s.src.Read(ctx, max)
	if err != nil {
		return nil, err
	}
	out := make([]history.Message, len(es))
	for i, e := range es {
		out[i] = history.Message{ID: e.ID, Stream: e.Stream, Kind: e.Kind, Value: e.Value}
		if e.Kind == catalog.StreamKindTicks {
			// A malformed batch stays without ticks: the writer takes it
			// for poison.
			out[i].Ticks, _ = catalog.DecodeTicks(e.Value)
		}
	}
	return out, nil
}

func (s streamSource) Ack(ctx context.Context, msgs []history.Message) error {
	es := make([]catalog.StreamEntry, len(msgs))
	for i, m := range msgs {
		es[i] = catalog.StreamEntry{ID: m.ID, Stream: m.Stream, Kind: m.Kind}
	}
	return s.src.Ack(ctx, es)
}
