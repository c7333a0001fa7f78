// Package catalog is the Redis adapter for accounts, providers and offers:
// the offer hashes and price index of every market, the per-market change
// stream, and the market-slot step of the checkout (reserve capacity, write
// the lease, append the trade) as one Lua script.
//
// Every key of a market carries the hash tag {m:<class>:<region>}, so each
// atomic step touches one Redis Cluster slot. A Store holds no state of its
// own beyond the client and is safe for concurrent use.
package catalog
