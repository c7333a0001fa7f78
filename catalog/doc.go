// Package catalog is the Redis adapter for accounts, providers and offers:
// the offer hashes, offer states and price index of every market, the
// per-market change stream, the group-committed offer updates, and the
// market-slot step of the checkout (reserve capacity, write the lease,
// append the trade) as one Lua script.
//
// Every key of a market carries the hash tag {m:<class>:<region>}, so each
// atomic step touches one Redis Cluster slot. Beyond the client, a Store
// keeps only what it can lose: offers' markets, the offer states its
// predictions start from, and the updates waiting for a batch. It is safe
// for concurrent use.
package catalog
