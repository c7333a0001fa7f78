// Package broker is the application: the use cases of the marketplace
// (accounts, provider approval, offers, programmes and vouchers, quotes and
// the checkout saga, analytics), the fiber HTTP API that exposes them, auth,
// rate limits and metrics.
//
// A Service is safe for concurrent use: it keeps no market state of its own
// beyond short-lived caches; Redis holds the truth, so any number of brokerd
// processes may serve side by side. The stores it needs are declared here as
// small interfaces and satisfied by catalog, ledger and history.
package broker
