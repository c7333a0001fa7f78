// Package testsvc gives Go tests the project's real Redis and ClickHouse.
//
// Redis returns the URL of a Redis database that no other running test holds,
// flushed before and after the test; ClickHouse returns the URL of a ClickHouse
// database that does not exist yet, dropped after the test. When nothing
// answers on the configured port, the first call in a test process runs
// `scripts/services start redis|clickhouse` (which installs the Debian packages
// when missing and keeps data under ./var). When the service still cannot be
// reached the test fails with t.Fatal: tests that need the real services never
// skip.
//
// Ports come from the same variables as scripts/services: REDIS_PORT (default
// 6379) and CLICKHOUSE_PORT (native protocol, default 9000); the host is always
// 127.0.0.1. Everything here is safe for concurrent use, by parallel tests and
// by test binaries running at the same time (go test ./... runs packages in
// parallel): Redis databases are leased with SET NX in database 0.
package testsvc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/redis/go-redis/v9"
)

const (
	// leaseTTL bounds how long a crashed test process keeps a Redis database;
	// it is longer than the 25-minute timeout scripts/test gives go test.
	leaseTTL      = 30 * time.Minute
	leasePrefix   = "testsvc:lease:"
	counterKey    = "testsvc:nextdb"
	startTimeout  = 10 * time.Minute // includes apt-get install on a fresh machine
	readyTimeout  = 30 * time.Second
	opTimeout     = 30 * time.Second
	defaultDBsCap = 16 // Redis' default "databases" when CONFIG GET is not allowed
)

// RepoRoot returns the repository root: the nearest directory at or above the
// working directory that holds go.mod. It panics when there is none, which only
// happens when tests run outside the module.
func RepoRoot() string {
	root, err := repoRoot()
	if err != nil {
		panic(err)
	}
	return root
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("testsvc: working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testsvc: no go.mod at or above the working directory")
		}
		dir = parent
	}
}

// starter runs `scripts/services start <name>` at most once per process.
type starter struct {
	name string
	once sync.Once
	err  error
}

var (
	redisStarter      = &starter{name: "redis"}
	clickhouseStarter = &starter{name: "clickhouse"}
)

// ensure returns nil once ready answers, starting the service when it does not.
func (s *starter) ensure(ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := ready(ctx)
	cancel()
	if err == nil {
		return nil
	}
	s.once.Do(func() { s.err = s.start() })
	if s.err != nil {
		return s.err
	}
	// The script waits for readiness itself; allow a little slack anyway.
	deadline := time.Now().Add(readyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = ready(ctx)
		cancel()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("%s: still not reachable after scripts/services start %s: %w", s.name, s.name, err)
	}
	return nil
}

func (s *starter) start() error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	script := filepath.Join(root, "scripts", "services")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, "start", s.name)
	cmd.Dir = root
	cmd.WaitDelay = 5 * time.Second // never hang on a descriptor a daemon kept
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s is not running and `%s start %s` failed: %w\n%s",
			s.name, script, s.name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func envPort(name string, def int) (int, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	p, err := strconv.Atoi(v)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("testsvc: %s=%q is not a port", name, v)
	}
	return p, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// Redis returns redis://127.0.0.1:PORT/N for a database N in 1.. that no other
// concurrently running test holds, empty at the start; t.Cleanup flushes it
// and gives it back. Database 0 is never handed out (brokerd's default and
// where the leases live). Fails the test when Redis cannot be reached.
func Redis(t testing.TB) string {
	t.Helper()
	port, err := envPort("REDIS_PORT", 6379)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	ping := func(ctx context.Context) error {
		c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 2 * time.Second, MaxRetries: -1})
		defer c.Close()
		return c.Ping(ctx).Err()
	}
	if err := redisStarter.ensure(ping); err != nil {
		t.Fatalf("testsvc: Redis on %s is required: %v", addr, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	admin := redis.NewClient(&redis.Options{Addr: addr})
	defer admin.Close()
	db, token, err := leaseDB(ctx, admin)
	if err != nil {
		t.Fatalf("testsvc: Redis on %s: %v", addr, err)
	}
	flush := func(ctx context.Context) error {
		c := redis.NewClient(&redis.Options{Addr: addr, DB: db})
		defer c.Close()
		return c.FlushDB(ctx).Err()
	}
	if err := flush(ctx); err != nil {
		t.Fatalf("testsvc: Redis on %s: FLUSHDB %d: %v", addr, db, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := flush(ctx); err != nil {
			t.Errorf("testsvc: Redis on %s: FLUSHDB %d after the test: %v", addr, db, err)
			return // keep the lease: let it expire rather than hand out a dirty db
		}
		admin := redis.NewClient(&redis.Options{Addr: addr})
		defer admin.Close()
		if err := releaseScript.Run(ctx, admin, []string{leasePrefix + strconv.Itoa(db)}, token).Err(); err != nil {
			t.Errorf("testsvc: Redis on %s: release database %d: %v", addr, db, err)
		}
	})
	return fmt.Sprintf("redis://%s/%d", addr, db)
}

// releaseScript deletes a lease only while it is still ours.
var releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0`)

// leaseDB picks a database in 1..databases-1, starting from a shared counter so
// that concurrent processes spread out, and leases it with SET NX.
func leaseDB(ctx context.Context, admin *redis.Client) (db int, token string, err error) {
	n := defaultDBsCap
	if cfg, err := admin.ConfigGet(ctx, "databases").Result(); err == nil {
		if v, err := strconv.Atoi(cfg["databases"]); err == nil {
			n = v
		}
	}
	if n < 2 {
		return 0, "", fmt.Errorf("server has %d databases; tests need at least 2", n)
	}
	next, err := admin.Incr(ctx, counterKey).Result()
	if err != nil {
		return 0, "", fmt.Errorf("INCR %s: %w", counterKey, err)
	}
	token = fmt.Sprintf("%d-%s", os.Getpid(), randomHex(8))
	usable := int64(n - 1)
	for i := int64(0); i < usable; i++ {
		db = int((next-1+i)%usable) + 1
		ok, err := admin.SetNX(ctx, leasePrefix+strconv.Itoa(db), token, leaseTTL).Result()
		if err != nil {
			return 0, "", fmt.Errorf("lease database %d: %w", db, err)
		}
		if ok {
			return db, token, nil
		}
	}
	return 0, "", fmt.Errorf("all %d test databases are leased by running tests (keys %s*)", usable, leasePrefix)
}

// ClickHouse returns clickhouse://127.0.0.1:PORT/test_<random hex>, naming a
// database that does not exist yet: the code under test creates it.
// t.Cleanup drops it. Fails the test when ClickHouse cannot be reached.
//
// The local server is ClickHouse 18.16: connect with the native protocol and
// without a database (the server rejects a connection whose database does not
// exist), CREATE DATABASE, then qualify table names.
func ClickHouse(t testing.TB) string {
	t.Helper()
	port, err := envPort("CLICKHOUSE_PORT", 9000)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	open := func() (clickhouse.Conn, error) {
		return clickhouse.Open(&clickhouse.Options{
			Addr:        []string{addr},
			Protocol:    clickhouse.Native,
			DialTimeout: 2 * time.Second,
			ReadTimeout: opTimeout,
		})
	}
	ping := func(ctx context.Context) error {
		conn, err := open()
		if err != nil {
			return err
		}
		defer conn.Close()
		return conn.Ping(ctx)
	}
	if err := clickhouseStarter.ensure(ping); err != nil {
		t.Fatalf("testsvc: ClickHouse on %s is required: %v", addr, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	conn, err := open()
	if err != nil {
		t.Fatalf("testsvc: ClickHouse on %s: %v", addr, err)
	}
	defer conn.Close()
	var name string
	for {
		name = "test_" + randomHex(8)
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM system.databases WHERE name = ?", name).Scan(&n); err != nil {
			t.Fatalf("testsvc: ClickHouse on %s: %v", addr, err)
		}
		if n == 0 {
			break
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		conn, err := open()
		if err == nil {
			defer conn.Close()
			err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name)
		}
		if err != nil {
			t.Errorf("testsvc: ClickHouse on %s: drop database %s: %v", addr, name, err)
		}
	})
	return fmt.Sprintf("clickhouse://%s/%s", addr, name)
}
