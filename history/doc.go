// Package history is the ClickHouse adapter of the compute broker: the schema
// and its migrations, the writer that moves committed trades, refunds and
// price ticks from the market streams into ClickHouse, and the analytics
// queries the regulator reads.
//
// # Tables
//
// trades, refunds, price_ticks and voucher_redemptions live in one database
// (default "market"). Money is Decimal(18,6) for prices and Decimal(18,2) for
// amounts, read and written as shopspring/decimal, never a float. Times are
// DateTime (whole seconds, UTC). The tables are ReplacingMergeTree: a row
// delivered twice collapses on its key, and every query reads with FINAL, so
// what a reader sees is exactly once even before ClickHouse merges.
//
// The SQL keeps to what ClickHouse 18.16 (the test server) and the current LTS
// (production) both run: "ENGINE = X() ORDER BY …" syntax, explicit column
// lists on INSERT, no DateTime64, TTL, toStartOfInterval, window functions
// or LowCardinality, and the native protocol only.
//
// # Goroutines and concurrency
//
// A *Store wraps a pool of native connections; all its methods are safe for
// concurrent use, and it starts no goroutines of its own. Open runs the
// migrations; two processes may Open the same database at once.
//
// A *Writer is driven by exactly one goroutine, the one that calls Run; Run
// owns the batch and the Source it reads. Stats may be called from any
// goroutine at any time. Messages are acknowledged to the Source only after
// ClickHouse accepted them, so delivery is at least once; trade ids make the
// visible result exactly once.
package history
