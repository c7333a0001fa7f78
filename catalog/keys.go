package catalog

import "computebroker/market"

// Key layout. Every key of a market shares the hash tag {m:<class>:<region>}
// so that each atomic step of the checkout touches one Redis Cluster slot.
//
//	{m:C:R}:offer:<id>     hash: what never changes of an offer: id, provider, class,
//	                       region, list_price, max_hours, specs
//	{m:C:R}:state          hash: offer id -> the offer's changing fields, packed
//	                       (stateFields, see state.go)
//	{m:C:R}:index          zset: active offer ids scored by price ticks
//	{m:C:R}:changes        stream: offer changes: "t" upsert + every field of the offer (hash and state),
//	                       "t" delta + "d": a line per updated offer (see Delta), or
//	                       "t" remove, id, provider, version, updated_at
//	{m:C:R}:trades         stream: the market's durable history: trades, refunds and
//	                       price ticks (field "k": kind, "v": JSON market.Trade or
//	                       market.Tick, or a batch of ticks for kind "ticks")
//	{m:C:R}:lease:<id>     hash: a lease
//	{m:C:R}:olease:<order> string: lease id of an order (idempotency of the commit)
//	offers:loc             hash: offer id -> "<class>:<region>"
//	provider:<id>:offers   set: offer ids of a provider

// MarketTag is the hash tag of a market's keys.
func MarketTag(m market.MarketKey) string { return "{m:" + m.Class + ":" + m.Region + "}" }

// OfferKey is the hash holding an offer.
func OfferKey(m market.MarketKey, id string) string { return MarketTag(m) + ":offer:" + id }

// StateKey is the hash holding the changing fields of a market's offers.
func StateKey(m market.MarketKey) string { return MarketTag(m) + ":state" }

// IndexKey is the price index of a market's active offers.
func IndexKey(m market.MarketKey) string { return MarketTag(m) + ":index" }

// ChangeStreamKey is the stream of a market's offer changes.
func ChangeStreamKey(m market.MarketKey) string { return MarketTag(m) + ":changes" }

// TradeStreamKey is the stream of a market's trades and refunds, read by the
// history writer.
func TradeStreamKey(m market.MarketKey) string { return MarketTag(m) + ":trades" }

// LeaseKey is the hash holding a lease.
func LeaseKey(m market.MarketKey, id string) string { return MarketTag(m) + ":lease:" + id }

// OrderLeaseKey maps an order to the lease its commit made.
func OrderLeaseKey(m market.MarketKey, orderID string) string {
	return MarketTag(m) + ":olease:" + orderID
}

// Trade stream entry kinds (field "k"); field "v" holds the JSON value.
const (
	StreamKindTrade  = "trade"  // v: market.Trade
	StreamKindRefund = "refund" // v: market.Trade with the refunded amounts
	StreamKindTick   = "tick"   // v: market.Tick, an accepted price (first listing)
	// StreamKindTicks is a batch of accepted price changes of one market:
	// v is "class\tregion", then a line per tick (see DecodeTicks).
	StreamKindTicks = "ticks"
)
