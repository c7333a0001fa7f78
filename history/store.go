package history

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"computebroker/market"
)

// DefaultDatabase is the database Open uses when the URL names none.
const DefaultDatabase = "market"

// defaultPort is ClickHouse's native protocol port.
const defaultPort = "9000"

var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// Store is the ClickHouse history: trades, refunds, price ticks and voucher
// redemptions. It is safe for concurrent use.
type Store struct {
	conn driver.Conn
	db   string
	now  func() time.Time
}

// Open connects to the ClickHouse named by rawURL over the native protocol,
// creates the database if needed and brings the schema up to date.
//
// rawURL has the form clickhouse://[user[:password]@]host[:port][/database][?options],
// where options are those of clickhouse-go's DSN (dial_timeout, compress,
// secure, …). The port defaults to 9000, the database to "market".
// It returns an invalid_argument *market.Error for a malformed URL and an
// unavailable *market.Error when the server cannot be reached or migrated.
func Open(ctx context.Context, rawURL string) (*Store, error) {
	opts, db, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return nil, unavailable("connect", err)
	}
	s := &Store{conn: conn, db: db, now: time.Now}
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		return nil, unavailable("ping", err)
	}
	if err := s.migrate(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// parseURL turns rawURL into clickhouse-go options for a connection to the
// server's default database, and the name of the history database. The
// history database may not exist yet, so the connection does not select it;
// every statement names its tables in full instead.
func parseURL(rawURL string) (*clickhouse.Options, string, error) {
	if !strings.HasPrefix(rawURL, "clickhouse://") && !strings.HasPrefix(rawURL, "tcp://") {
		return nil, "", market.Invalid("history: URL must start with clickhouse://, got %q", redact(rawURL))
	}
	opts, err := clickhouse.ParseDSN(rawURL)
	if err != nil {
		return nil, "", &market.Error{Code: market.CodeInvalidArgument, Message: "history: bad ClickHouse URL", Err: err}
	}
	db := opts.Auth.Database
	if db == "" {
		db = DefaultDatabase
	}
	if !identRe.MatchString(db) {
		return nil, "", market.Invalid("history: bad database name %q", db)
	}
	opts.Auth.Database = ""
	// HTTP does not work with ClickHouse 18.16; the native protocol works
	// with every version.
	opts.Protocol = clickhouse.Native
	for i, a := range opts.Addr {
		if _, _, err := net.SplitHostPort(a); err != nil {
			opts.Addr[i] = net.JoinHostPort(strings.Trim(a, "[]"), defaultPort)
		}
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 5 * time.Second
	}
	if opts.MaxOpenConns == 0 {
		opts.MaxOpenConns = 16
	}
	return opts, db, nil
}

// redact drops the user information of a URL for error messages.
func redact(rawURL string) string {
	if i := strings.Index(rawURL, "@"); i >= 0 {
		if j := strings.Index(rawURL, "://"); j >= 0 && j < i {
			return rawURL[:j+3] + "…@" + rawURL[i+1:]
		}
	}
	return rawURL
}

// Database returns the name of the history database.
func (s *Store) Database() string { return s.db }

// Close closes the connections. The Store must not be used afterwards.
func (s *Store) Close() error { return s.conn.Close() }

// Ping checks that ClickHouse answers. It returns an unavailable
// *market.Error when it does not.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.conn.Ping(ctx); err != nil {
		return unavailable("ping", err)
	}
	return nil
}

// table returns the quoted, database-qualified name of a table.
func (s *Store) table(name string) string { return "`" + s.db + "`.`" + name + "`" }

// unavailable wraps an error of ClickHouse as an unavailable *market.Error;
// context errors pass through unchanged so callers can tell them apart.
func unavailable(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("history: %s: %w", op, err)
	}
	return &market.Error{Code: market.CodeUnavailable, Message: "history: " + op + " failed", Err: err}
}
