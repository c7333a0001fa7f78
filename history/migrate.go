package history

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2"
)

// migration is one step of the schema. Every statement must be idempotent
// (CREATE … IF NOT EXISTS and the like): two processes that start at once
// may both run a step before either has recorded it, and ClickHouse has no
// transactions or locks to prevent that. {db} stands for the quoted
// database name.
type migration struct {
	version uint32
	name    string
	stmts   []string
}

// migrations is the schema, oldest first. Append; never edit a released step.
var migrations = []migration{
	{1, "trades", []string{`
CREATE TABLE IF NOT EXISTS {db}.trades (
	id String,
	order_id String,
	lease_id String,
	offer_id String,
	provider_id String,
	sme_id String,
	resource_class String,
	region String,
	units Int64,
	hours Int64,
	unit_price Decimal(18, 6),
	gross Decimal(18, 2),
	discount Decimal(18, 2),
	net Decimal(18, 2),
	voucher_id String,
	program_id String,
	ts DateTime,
	inserted_at DateTime
) ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (ts, id)`}},
	{2, "refunds", []string{`
CREATE TABLE IF NOT EXISTS {db}.refunds (
	id String,
	order_id String,
	lease_id String,
	offer_id String,
	provider_id String,
	sme_id String,
	resource_class String,
	region String,
	units Int64,
	hours Int64,
	unit_price Decimal(18, 6),
	gross Decimal(18, 2),
	discount Decimal(18, 2),
	net Decimal(18, 2),
	voucher_id String,
	program_id String,
	ts DateTime,
	inserted_at DateTime
) ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (ts, id)`}},
	{3, "price_ticks", []string{`
CREATE TABLE IF NOT EXISTS {db}.price_ticks (
	offer_id String,
	provider_id String,
	resource_class String,
	region String,
	price Decimal(18, 6),
	units_free Int64,
	version Int64,
	ts DateTime,
	inserted_at DateTime
) ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (resource_class, region, ts, offer_id, version)`}},
	// voucher_redemptions is filled by InsertTrades in the same call as the
	// trades, not by a materialized view: the writer can then make both
	// tables idempotent on their own (a view fires on every re-delivered
	// insert and cannot be retried alone). trade_id is the key; an order
	// split over several offers has several trades and redemptions.
	{4, "voucher_redemptions", []string{`
CREATE TABLE IF NOT EXISTS {db}.voucher_redemptions (
	trade_id String,
	order_id String,
	voucher_id String,
	program_id String,
	sme_id String,
	amount Decimal(18, 2),
	ts DateTime,
	inserted_at DateTime
) ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (program_id, ts, trade_id)`}},
}

// ClickHouse error codes that an idempotent DDL statement racing with another
// process may return although the object now exists.
const (
	codeTableAlreadyExists    = 57
	codeDatabaseAlreadyExists = 82
)

// migrate creates the database and applies the migrations not yet recorded
// in schema_migrations.
func (s *Store) migrate(ctx context.Context) error {
	if err := s.ddl(ctx, "CREATE DATABASE IF NOT EXISTS `"+s.db+"`"); err != nil {
		return err
	}
	if err := s.ddl(ctx, `CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
	version UInt32,
	name String,
	applied_at DateTime
) ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version`); err != nil {
		return err
	}
	applied, err := s.appliedVersions(ctx)
	if err != nil {
		return err
	}
	for _, m := range migrations {
		if applied[m.version] {
			continue
		}
		for _, stmt := range m.stmts {
			if err := s.ddl(ctx, stmt); err != nil {
				return fmt.Errorf("history: migration %d %s: %w", m.version, m.name, err)
			}
		}
		// INSERT … SELECT, not VALUES: an Exec of INSERT … VALUES never
		// returns against ClickHouse 18.16 over clickhouse-go's native
		// protocol (the server waits for data blocks).
		err := s.conn.Exec(ctx, "INSERT INTO "+s.table("schema_migrations")+" (version, name, applied_at) SELECT ?, ?, toDateTime(?)",
			m.version, m.name, s.now().Unix())
		if err != nil {
			return unavailable(fmt.Sprintf("record migration %d", m.version), err)
		}
	}
	return nil
}

// SchemaVersion returns the highest migration recorded in the database.
func (s *Store) SchemaVersion(ctx context.Context) (uint32, error) {
	applied, err := s.appliedVersions(ctx)
	if err != nil {
		return 0, err
	}
	var v uint32
	for k := range applied {
		v = max(v, k)
	}
	return v, nil
}

func (s *Store) appliedVersions(ctx context.Context) (map[uint32]bool, error) {
	rows, err := s.conn.Query(ctx, "SELECT DISTINCT version FROM "+s.table("schema_migrations"))
	if err != nil {
		return nil, unavailable("read schema_migrations", err)
	}
	defer rows.Close()
	applied := map[uint32]bool{}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			return nil, unavailable("read schema_migrations", err)
		}
		applied[v] = true
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable("read schema_migrations", err)
	}
	return applied, nil
}

// ddl runs one idempotent DDL statement, treating "already exists" from a
// concurrent creator as success.
func (s *Store) ddl(ctx context.Context, stmt string) error {
	stmt = strings.ReplaceAll(stmt, "{db}", "`"+s.db+"`")
	err := s.conn.Exec(ctx, stmt)
	var ex *clickhouse.Exception
	if errors.As(err, &ex) && (ex.Code == codeTableAlreadyExists || ex.Code == codeDatabaseAlreadyExists) {
		return nil
	}
	if err != nil {
		return unavailable("schema", err)
	}
	return nil
}
