// Package voucher holds the pure subsidy rules of the compute broker: whether a
// computing-power voucher applies to an (SME, provider, offer) triple, the
// programme rate, the discount arithmetic with its caps, the choice of one
// voucher per order (the one that expires first) and the subsidy-capture price
// guard.
//
// It does no I/O, reads no clock (the caller passes now) and holds no state;
// every function is deterministic and safe for concurrent use. Money is exact
// decimal throughout; Rules.Prepare compiles an SME's grants into integer
// units (Prepared) for the matching engine's hot path, and Prepared.Choose
// gives exactly what Rules.Choose gives (a Prepared is reusable but not safe
// for concurrent use).
package voucher
