// Package ledger is the Redis adapter for money: voucher programmes and their
// budgets, vouchers, holds, company annual-cap counters, idempotency keys and
// orders, and the SME-slot and programme-slot steps of the checkout saga.
//
// Keys of one SME share the hash tag {sme:<id>} and keys of one programme's
// budget the tag {prog:<id>}, so every atomic step (one Lua script) touches
// one Redis Cluster slot. Money counters are integer fen (0.01 CNY) so Lua
// compares and adds them exactly. A Store is safe for concurrent use.
package ledger
