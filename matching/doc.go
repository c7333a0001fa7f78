// Package matching is the pure matching engine of the compute broker: it
// decides which offer an SME's job buys, cheapest net of vouchers first.
//
// Matching is filter, then rank, in the shape of Nomad's scheduler: small
// one-method feasibility checkers, assembled in one constructor (newChain),
// each rejection counted under its reason so the API can explain "why no
// match"; the eligible offers are then ranked by the net the SME pays after
// the voucher that applies to that (SME, provider, offer) — exact integer
// cents and price ticks, no scores. Ties: lower unit price, earlier price
// time, offer id.
//
// Rank is the reference: it checks every candidate and prices it with the
// decimal voucher rules. Decide is the fast path over Book snapshots: the
// checker chain compiled per job and market into a few comparisons on a
// packed copy of the book (held to the chain by TestFilterEqualsChain),
// integer pricing (voucher.Prepared), a scan cheapest first across the
// job's markets that stops at a proven lower bound, the rejection reasons
// taken by the chain only when asked for, and no allocation once its
// Scratch is warm. A request's builder calls Request.Compile once: the
// grants' terms, the max price in ticks and the SME's key signature are
// then read as integers at every decision of it, and its class, regions
// and the grants' region scopes as numbers that every engine of the
// process gives the same names (mktNums), so that the engine finds the
// job's markets and the grants that pay in each without reading a string.
// The property tests hold
// Decide to Rank's answer on thousands of random books and jobs, raw and
// compiled, and DecideSplit to a brute-force enumeration.
//
// Concurrency: a Book has one writer. An Engine runs one goroutine per
// market that owns the market's Book, drains a bounded queue of events
// (Apply blocks when it is full) and publishes an immutable Snapshot per
// batch through an atomic pointer; Match, Decide, MatchSplit and Snapshot
// read snapshots without locks and are safe for concurrent use. Resting jobs
// sit in a registry guarded by a mutex that is never held while matching;
// each job's state moves once by compare-and-swap, so a fill is reported
// once even when several markets see it. Config.OnFill is called from a
// market goroutine (or from Rest) and must not block.
//
// The package does no I/O and reads no clock: callers pass now, and the
// Engine's resting jobs use Config.Now.
package matching
