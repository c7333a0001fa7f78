package testsvc

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"
)

func TestRepoRoot(t *testing.T) {
	root := RepoRoot()
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("RepoRoot() = %s: %v", root, err)
	}
	if _, err := os.Stat(filepath.Join(root, "scripts", "services")); err != nil {
		t.Fatalf("RepoRoot() = %s has no scripts/services: %v", root, err)
	}
}

func TestRedis(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var first string
	ok := t.Run("isolated database", func(t *testing.T) {
		first = Redis(t)
		second := Redis(t)
		if first == second {
			t.Fatalf("two calls returned the same database %s", first)
		}
		for _, u := range []string{first, second} {
			opt, err := redis.ParseURL(u)
			if err != nil {
				t.Fatalf("ParseURL(%s): %v", u, err)
			}
			if opt.DB < 1 {
				t.Fatalf("%s: database %d, want 1 or more", u, opt.DB)
			}
			c := redis.NewClient(opt)
			defer c.Close()
			if n, err := c.DBSize(ctx).Result(); err != nil || n != 0 {
				t.Fatalf("%s: DBSIZE = %d, %v; want an empty database", u, n, err)
			}
			if err := c.Set(ctx, "k", u, 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
		c, _ := redis.ParseURL(first)
		rc := redis.NewClient(c)
		defer rc.Close()
		if got, err := rc.Get(ctx, "k").Result(); err != nil || got != first {
			t.Fatalf("GET k in %s = %q, %v; the databases are not separate", first, got, err)
		}
	})
	if !ok {
		return
	}

	// The subtest's cleanup has run: the database is empty and leased no more.
	opt, err := redis.ParseURL(first)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	defer c.Close()
	if n, err := c.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Fatalf("after cleanup DBSIZE of %s = %d, %v; want 0", first, n, err)
	}
	key := leasePrefix + strconv.Itoa(opt.DB)
	opt.DB = 0
	admin := redis.NewClient(opt)
	defer admin.Close()
	if n, err := admin.Exists(ctx, key).Result(); err != nil || n != 0 {
		t.Fatalf("after cleanup %s exists = %d, %v; want released", key, n, err)
	}
}

// TestClickHouse also records what works against the local ClickHouse 18.16
// through clickhouse-go v2: connect without a database, CREATE DATABASE,
// qualified table names, Decimal and DateTime columns, and batch inserts that
// name their columns.
func TestClickHouse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var dsn string
	var conn clickhouse.Conn
	ok := t.Run("fresh database", func(t *testing.T) {
		dsn = ClickHouse(t)
		if other := ClickHouse(t); other == dsn {
			t.Fatalf("two calls returned the same database %s", dsn)
		}
		opts, err := clickhouse.ParseDSN(dsn)
		if err != nil {
			t.Fatalf("ParseDSN(%s): %v", dsn, err)
		}
		db := opts.Auth.Database
		if !strings.HasPrefix(db, "test_") {
			t.Fatalf("%s: database %q, want test_…", dsn, db)
		}
		opts.Auth.Database = "" // the database does not exist yet
		conn, err = clickhouse.Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM system.databases WHERE name = ?", db).Scan(&n); err != nil || n != 0 {
			t.Fatalf("database %s exists before the test (%d, %v)", db, n, err)
		}
		if err := conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+db); err != nil {
			t.Fatal(err)
		}
		if err := conn.Exec(ctx, "CREATE TABLE "+db+`.trades (
			id String, ts DateTime, price Decimal(18,6), amount Decimal(18,2), units UInt32
		) ENGINE = MergeTree ORDER BY (ts, id)`); err != nil {
			t.Fatal(err)
		}
		ts := time.Date(2026, 3, 1, 12, 30, 15, 0, time.UTC)
		batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".trades (id, ts, price, amount, units)")
		if err != nil {
			t.Fatal(err)
		}
		if err := batch.Append("t1", ts, decimal.RequireFromString("21.123456"), decimal.RequireFromString("1234.50"), uint32(8)); err != nil {
			t.Fatal(err)
		}
		if err := batch.Append("t2", ts.Add(time.Hour), decimal.RequireFromString("0.000001"), decimal.RequireFromString("-3.10"), uint32(1)); err != nil {
			t.Fatal(err)
		}
		if err := batch.Send(); err != nil {
			t.Fatal(err)
		}
		var (
			gotTS  time.Time
			price  decimal.Decimal
			amount decimal.Decimal
			sum    decimal.Decimal
		)
		if err := conn.QueryRow(ctx, "SELECT ts, price, amount FROM "+db+".trades WHERE id = ?", "t1").Scan(&gotTS, &price, &amount); err != nil {
			t.Fatal(err)
		}
		if !gotTS.Equal(ts) || price.String() != "21.123456" || amount.StringFixed(2) != "1234.50" {
			t.Fatalf("read back ts=%s price=%s amount=%s", gotTS, price, amount)
		}
		if err := conn.QueryRow(ctx, "SELECT sum(amount) FROM "+db+".trades WHERE ts >= ?", ts).Scan(&sum); err != nil {
			t.Fatal(err)
		}
		if sum.StringFixed(2) != "1231.40" {
			t.Fatalf("sum(amount) = %s, want 1231.40", sum)
		}
	})
	if conn != nil {
		defer conn.Close()
	}
	if !ok {
		return
	}

	// The subtest's cleanup dropped the database.
	opts, _ := clickhouse.ParseDSN(dsn)
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.databases WHERE name = ?", opts.Auth.Database).Scan(&n); err != nil || n != 0 {
		t.Fatalf("database %s still exists after cleanup (%d, %v)", opts.Auth.Database, n, err)
	}
}
