package catalog

import "strconv"

// An offer lives in two places of its market's slot: its hash
// (OfferKey) holds what never changes (id, provider, class, region,
// list_price, max_hours, specs), and one field of the market's state hash
// (StateKey), named by the offer id, holds everything that does, packed in
// one tab-separated value (stateFields). A price change then costs Redis
// one field of one hash, and a batch of them one HMGET and one HSET per
// market instead of two commands per offer: on Redis 7.0 each command a
// script runs, and each value crossing between Lua and Redis, costs far
// more than the work it asks for (docs/BENCHMARKS.md, "one state hash per
// market"). Every script that changes an offer reads the state, changes
// it and writes it back whole.

// stateFields are the fields of a packed offer state, in order.
// score is the offer's score in its market's price index (IndexKey): the
// price in ticks.
var stateFields = [...]string{"version", "status", "listed", "price", "price_at", "units", "free", "updated_at", "score", "provider"}

// stateLua is the prelude of every script that reads or changes an offer
// state: sparse unpacks one, spack packs it, sget reads and unpacks the
// state of offer id from state hash sk (nil when there is none), and
// offer returns the offer as field-value pairs: its hash and its state.
const stateLua = `
local SF = {'version', 'status', 'listed', 'price', 'price_at', 'units', 'free', 'updated_at', 'score', 'provider'}
local function sparse(s)
  local o = {}
  o.version, o.status, o.listed, o.price, o.price_at, o.units, o.free, o.updated_at, o.score, o.provider =
    string.match(s, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$')
  if not o.provider then error('malformed offer state') end
  return o
end
local function spack(o)
  return o.version .. '\t' .. o.status .. '\t' .. o.listed .. '\t' .. o.price .. '\t' .. o.price_at .. '\t' ..
    o.units .. '\t' .. o.free .. '\t' .. o.updated_at .. '\t' .. o.score .. '\t' .. o.provider
end
local function sget(sk, id)
  local s = redis.call('HGET', sk, id)
  if not s then return nil end
  return sparse(s)
end
local function offer(k, o)
  local h = redis.call('HGETALL', k)
  for i = 1, 9 do
    h[#h + 1] = SF[i]
    h[#h + 1] = o[SF[i]]
  end
  return h
end
`

// mergeState adds a stored offer state's fields to an offer hash's fields.
func mergeState(vals map[string]string, s string) bool {
	var f [len(stateFields)]string
	if !splitFields(s, f[:]) {
		return false
	}
	for i, name := range stateFields {
		vals[name] = f[i]
	}
	return true
}

// stateOf reads a stored offer state as an offerState.
func stateOf(s string) (offerState, bool) {
	var f [len(stateFields)]string
	if !splitFields(s, f[:]) {
		return offerState{}, false
	}
	st := offerState{
		status: f[1], listed: f[2] == "1", price: f[3], priceAt: f[4],
		updatedAt: f[7], score: f[8], provider: f[9], packed: s,
	}
	var e1, e2, e3 error
	st.version, e1 = strconv.ParseInt(f[0], 10, 64)
	st.units, e2 = strconv.ParseInt(f[5], 10, 64)
	st.free, e3 = strconv.ParseInt(f[6], 10, 64)
	if e1 != nil || e2 != nil || e3 != nil || st.score == "" || st.updatedAt == "" || st.provider == "" {
		return offerState{}, false
	}
	return st, true
}
