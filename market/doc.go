// Package market is the vocabulary of the compute broker: accounts, resource
// classes, offers, jobs, orders, leases, trades, voucher programmes and
// vouchers, the money helpers every room uses, and the one error type with
// codes that the HTTP layer maps to statuses.
//
// It does no I/O and holds no goroutines; every value here is plain data and
// safe to share once built. Money is shopspring/decimal throughout, never a
// float.
package market
