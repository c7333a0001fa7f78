package hub

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/shopspring/decimal"

	"computebroker/market"
)

// Kind is what an Update reports.
type Kind uint8

// The kinds of update a market stream carries.
const (
	// KindTick is a new price or free capacity of an offer.
	KindTick Kind = iota + 1
	// KindRemove is an offer that left the market (deleted, or its provider
	// suspended).
	KindRemove
	// KindTrade is a committed sale in the market.
	KindTrade
)

func (k Kind) String() string {
	switch k {
	case KindTick:
		return "tick"
	case KindRemove:
		return "remove"
	case KindTrade:
		return "trade"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Update is one change of a market, as Publish takes it.
type Update struct {
	Kind   Kind
	Market market.MarketKey
	// OfferID and Version identify the offer state of a tick or a remove.
	// Version is the offer's version after the change; it orders the
	// updates of one offer and lets a new subscriber skip updates its
	// snapshot already reflects. Zero means unknown.
	OfferID string
	Version int64
	// Price is the offer's price (tick) or the unit price (trade).
	Price decimal.Decimal
	// UnitsFree is the offer's free capacity (tick).
	UnitsFree int64
	// Units and Hours are the quantity sold (trade).
	Units int64
	Hours int64
	// TS is when the change happened; zero means the hub's clock at Publish.
	TS time.Time
}

// TickUpdate is the update for an accepted price or capacity change.
func TickUpdate(t market.Tick) Update {
	return Update{
		Kind:      KindTick,
		Market:    market.MarketKey{Class: t.ResourceClass, Region: t.Region},
		OfferID:   t.OfferID,
		Version:   t.Version,
		Price:     t.Price,
		UnitsFree: t.UnitsFree,
		TS:        t.TS,
	}
}

// OfferUpdate is the update that brings a subscriber to o's current state:
// a tick while o is active, a remove once it is deleted.
func OfferUpdate(o market.Offer) Update {
	if o.Status == market.OfferDeleted {
		return RemoveUpdate(o.Market(), o.ID, o.Version)
	}
	return Update{
		Kind:      KindTick,
		Market:    o.Market(),
		OfferID:   o.ID,
		Version:   o.Version,
		Price:     o.Price,
		UnitsFree: o.UnitsFree,
		TS:        o.UpdatedAt,
	}
}

// RemoveUpdate is the update for an offer that left market m at version.
func RemoveUpdate(m market.MarketKey, offerID string, version int64) Update {
	return Update{Kind: KindRemove, Market: m, OfferID: offerID, Version: version}
}

// TradeUpdate is the update for a committed trade.
func TradeUpdate(t market.Trade) Update {
	return Update{
		Kind:   KindTrade,
		Market: market.MarketKey{Class: t.ResourceClass, Region: t.Region},
		Price:  t.UnitPrice,
		Units:  t.Units,
		Hours:  t.Hours,
		TS:     t.TS,
	}
}

// frame is an update encoded once and shared, read-only, by every
// subscriber it is delivered to. A subscriber's writer sends
// prefix[kind] + its own seq + body.
type frame struct {
	kind    Kind
	offerID string
	version int64
	body    []byte // `,"offer_id":…}`: everything after the seq number
	// room for body: a tick's fits, so a frame is one allocation
	room [frameRoom]byte
}

// frameRoom is a frame's room for its body: a tick with an id of up to 40
// bytes and a seven-digit price takes about 130.
const frameRoom = 160

var prefix = [...]string{
	KindTick:   `{"type":"tick","seq":`,
	KindRemove: `{"type":"remove","seq":`,
	KindTrade:  `{"type":"trade","seq":`,
}

const snapshotPrefix = `{"type":"snapshot","seq":`

// validate returns the invalid_argument error encode would for u.
func validate(u Update) error {
	if u.Market.Class == "" || u.Market.Region == "" {
		return market.Invalid("hub: %s update without a market", u.Kind)
	}
	switch u.Kind {
	case KindTick, KindRemove:
		if u.OfferID == "" {
			return market.Invalid("hub: %s without an offer id", u.Kind)
		}
	case KindTrade:
	default:
		return market.Invalid("hub: unknown update kind %d", u.Kind)
	}
	return nil
}

// encode encodes everything of u's message but the seq; u has passed
// validate.
func encode(u Update, now func() time.Time) *frame {
	ts := u.TS
	if ts.IsZero() && u.Kind != KindRemove {
		ts = now()
	}
	f := &frame{kind: u.Kind, offerID: u.OfferID, version: u.Version}
	b := f.room[:0]
	switch u.Kind {
	case KindTick:
		b = append(b, `,"offer_id":`...)
		b = AppendJSONString(b, u.OfferID)
		b = append(b, `,"price":"`...)
		b = market.AppendPrice(b, u.Price)
		b = append(b, `","units_free":`...)
		b = strconv.AppendInt(b, u.UnitsFree, 10)
		b = append(b, `,"ts":`...)
		b = appendTime(b, ts)
		b = append(b, `,"version":`...)
		b = strconv.AppendInt(b, u.Version, 10)
	case KindRemove:
		b = append(b, `,"offer_id":`...)
		b = AppendJSONString(b, u.OfferID)
		b = append(b, `,"version":`...)
		b = strconv.AppendInt(b, u.Version, 10)
	case KindTrade:
		f.offerID = ""
		b = append(b, `,"resource_class":`...)
		b = AppendJSONString(b, u.Market.Class)
		b = append(b, `,"region":`...)
		b = AppendJSONString(b, u.Market.Region)
		b = append(b, `,"price":"`...)
		b = market.AppendPrice(b, u.Price)
		b = append(b, `","units":`...)
		b = strconv.AppendInt(b, u.Units, 10)
		b = append(b, `,"hours":`...)
		b = strconv.AppendInt(b, u.Hours, 10)
		b = append(b, `,"ts":`...)
		b = appendTime(b, ts)
	}
	f.body = append(b, '}')
	return f
}

// OfferEncoder appends the JSON object of one offer of a snapshot to dst.
type OfferEncoder func(dst []byte, o market.Offer) []byte

// AppendOffer is the default OfferEncoder:
// {"id","provider_id","resource_class","region","units","units_free","price",
// "max_hours","version","status","updated_at"} and "specs" when there are
// any, prices as market.FormatPrice, times RFC 3339 UTC.
func AppendOffer(b []byte, o market.Offer) []byte {
	b = append(b, `{"id":`...)
	b = AppendJSONString(b, o.ID)
	b = append(b, `,"provider_id":`...)
	b = AppendJSONString(b, o.ProviderID)
	b = append(b, `,"resource_class":`...)
	b = AppendJSONString(b, o.ResourceClass)
	b = append(b, `,"region":`...)
	b = AppendJSONString(b, o.Region)
	b = append(b, `,"units":`...)
	b = strconv.AppendInt(b, o.Units, 10)
	b = append(b, `,"units_free":`...)
	b = strconv.AppendInt(b, o.UnitsFree, 10)
	b = append(b, `,"price":"`...)
	b = append(b, market.FormatPrice(o.Price)...)
	b = append(b, `","max_hours":`...)
	b = strconv.AppendInt(b, o.MaxHours, 10)
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, o.Version, 10)
	status := o.Status
	if status == "" {
		status = market.OfferActive
	}
	b = append(b, `,"status":`...)
	b = AppendJSONString(b, string(status))
	b = append(b, `,"updated_at":`...)
	b = appendTime(b, o.UpdatedAt)
	if len(o.Specs) > 0 {
		if specs, err := json.Marshal(o.Specs); err == nil {
			b = append(b, `,"specs":`...)
			b = append(b, specs...)
		}
	}
	return append(b, '}')
}

// appendString appends s as a JSON string. Plain ASCII, which ids, classes
// and regions are, takes the fast path; anything else goes through
// encoding/json.
func AppendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendTime appends t as a quoted RFC 3339 UTC time, as encoding/json
// writes a time.Time.
func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}
