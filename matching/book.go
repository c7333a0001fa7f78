package matching

import (
	"maps"
	"slices"
	"strings"
	"sync/atomic"

	"computebroker/market"
)

// maxTicks is market.MaxPrice in ticks: the dearest price a book holds, so
// that price × units × hours in ticks stays inside 128 bits and the gross in
// cents inside an int64 for every job within market.MaxUnits and
// market.MaxHours.
var maxTicks = int64(market.MaxPrice.IntPart()) * market.TicksPerCNY

// compareSlots is the book order: price ticks, then price time, then offer
// id — the ranking's tie order, so a scan meets equal-net offers in rank
// order.
func compareSlots(a, b slot) int { return compareSlotPtrs(&a, &b) }

func compareSlotPtrs(a, b *slot) int {
	if a.ticks != b.ticks {
		if a.ticks < b.ticks {
			return -1
		}
		return 1
	}
	if c := a.it.Offer.PriceAt.Compare(b.it.Offer.PriceAt); c != 0 {
		return c
	}
	return strings.Compare(a.it.Offer.ID, b.it.Offer.ID)
}

// Snapshot is an immutable view of one market's book: its offers in price
// order and, per provider, that provider's offers in the same order. It is
// safe for concurrent use and never changes.
type Snapshot struct {
	Market  market.MarketKey
	mkt     *market.MarketKey // the key its slots share
	Version uint64            // rises by one per published change
	slots   []slot
	byProv  map[string][]slot
}

// Len returns the number of offers in the snapshot.
func (s *Snapshot) Len() int {
	if s == nil {
		return 0
	}
	return len(s.slots)
}

// Candidates returns copies of the snapshot's offers with their providers,
// cheapest first (ties: earlier price time, then offer id).
func (s *Snapshot) Candidates() []Candidate {
	if s == nil {
		return nil
	}
	out := make([]Candidate, len(s.slots))
	for i, sl := range s.slots {
		out[i] = sl.it.Candidate
	}
	return out
}

// Book is one market's active offers and the status of their providers,
// kept in price-tick order. It has a single writer: Upsert, Remove,
// SetProvider and Publish must be called from one goroutine (the Engine
// runs one per market). Snapshot may be called from any goroutine; it
// returns the last published view.
type Book struct {
	key     market.MarketKey
	byID    map[string]slot
	sorted  []slot                     // working copy, book order
	provs   map[string]*market.Account // latest known provider accounts
	byProv  map[string][]slot          // working per-provider lists, book order
	dirtyP  map[string]bool            // providers whose list changed since Publish
	dirty   bool
	version uint64
	snap    atomic.Pointer[Snapshot]
}

// NewBook returns an empty book for key with an empty published snapshot.
func NewBook(key market.MarketKey) *Book {
	b := &Book{
		key: key, byID: map[string]slot{}, provs: map[string]*market.Account{},
		byProv: map[string][]slot{}, dirtyP: map[string]bool{},
	}
	b.snap.Store(&Snapshot{Market: key, mkt: &b.key, byProv: map[string][]slot{}})
	return b
}

// Market returns the book's market.
func (b *Book) Market() market.MarketKey { return b.key }

// Upsert adds or replaces offer, sold by provider. An offer that is not
// active is removed instead. An older version (Version lower than the one
// held) is ignored. The book keeps the provider account it first sees;
// later changes to a provider come through SetProvider, so a stale copy in
// an offer event cannot undo a suspension.
//
// It returns an invalid_argument *market.Error when the offer is not of this
// market, is not sold by provider, or its price has no exact tick count or
// is above market.MaxPrice.
func (b *Book) Upsert(offer market.Offer, provider market.Account) error {
	if offer.Market() != b.key {
		return market.Invalid("matching: offer %s is in market %s, not %s", offer.ID, offer.Market(), b.key)
	}
	if offer.ProviderID != provider.ID {
		return market.Invalid("matching: offer %s is sold by %q, not %q", offer.ID, offer.ProviderID, provider.ID)
	}
	ticks, ok := market.PriceTicks(offer.Price)
	if !ok || ticks > maxTicks {
		return market.Invalid("matching: offer %s price %s is not a price of at most %s with 4 decimal places", offer.ID, offer.Price, market.MaxPrice)
	}
	old, had := b.byID[offer.ID]
	if had && offer.Version < old.it.Offer.Version {
		return nil
	}
	if offer.Status != market.OfferActive {
		b.Remove(offer.ID)
		return nil
	}
	p := b.provs[provider.ID]
	if p == nil {
		p = &provider
		b.provs[provider.ID] = p
	}
	if had {
		b.removeSlot(old)
	}
	// Share the book's strings: equal content, one copy, cheap compares.
	offer.ResourceClass, offer.Region = b.key.Class, b.key.Region
	b.addSlot(newSlot(&item{Candidate: Candidate{Offer: offer, Provider: *p}}, p, &b.key))
	b.dirty = true
	return nil
}

func (b *Book) addSlot(sl slot) {
	pid := sl.it.Offer.ProviderID
	b.byID[sl.it.Offer.ID] = sl
	b.sorted = insertSlot(b.sorted, sl)
	b.byProv[pid] = insertSlot(b.byProv[pid], sl)
	b.dirtyP[pid] = true
}

// Remove drops the offer with id; it reports whether the book held it.
func (b *Book) Remove(offerID string) bool {
	sl, ok := b.byID[offerID]
	if !ok {
		return false
	}
	b.removeSlot(sl)
	delete(b.byID, offerID)
	b.dirty = true
	return true
}

func (b *Book) removeSlot(sl slot) {
	b.sorted = deleteSlot(b.sorted, sl)
	pid := sl.it.Offer.ProviderID
	b.byProv[pid] = deleteSlot(b.byProv[pid], sl)
	if len(b.byProv[pid]) == 0 {
		delete(b.byProv, pid)
	}
	b.dirtyP[pid] = true
}

// SetProvider records a provider's account (status, certifications, …) and
// applies it to every offer of the provider in the book.
func (b *Book) SetProvider(p market.Account) {
	acct := &p
	b.provs[p.ID] = acct
	list := b.byProv[p.ID]
	if len(list) == 0 {
		return
	}
	for _, sl := range slices.Clone(list) {
		b.removeSlot(sl)
		b.addSlot(newSlot(&item{Candidate: Candidate{Offer: sl.it.Offer, Provider: p}}, acct, &b.key))
	}
	b.dirty = true
}

// Offer returns the book's current (possibly unpublished) offer with id.
func (b *Book) Offer(id string) (Candidate, bool) {
	sl, ok := b.byID[id]
	if !ok {
		return Candidate{}, false
	}
	return sl.it.Candidate, true
}

// Publish makes the changes since the last Publish visible to readers and
// returns the new snapshot (the current one when nothing changed). It costs
// a copy of the book's order and of the changed providers' lists.
func (b *Book) Publish() *Snapshot {
	if !b.dirty {
		return b.snap.Load()
	}
	prev := b.snap.Load()
	b.version++
	s := &Snapshot{Market: b.key, mkt: &b.key, Version: b.version, slots: slices.Clone(b.sorted), byProv: maps.Clone(prev.byProv)}
	for pid := range b.dirtyP {
		if l := b.byProv[pid]; len(l) > 0 {
			s.byProv[pid] = slices.Clone(l)
		} else {
			delete(s.byProv, pid)
		}
	}
	clear(b.dirtyP)
	b.dirty = false
	b.snap.Store(s)
	return s
}

// Snapshot returns the last published snapshot; safe for concurrent use.
func (b *Book) Snapshot() *Snapshot { return b.snap.Load() }

func insertSlot(s []slot, sl slot) []slot {
	i, _ := slices.BinarySearchFunc(s, sl, compareSlots)
	return slices.Insert(s, i, sl)
}

func deleteSlot(s []slot, sl slot) []slot {
	i, found := slices.BinarySearchFunc(s, sl, compareSlots)
	if found && s[i].it == sl.it {
		return slices.Delete(s, i, i+1)
	}
	// Not at its key (should not happen): fall back to identity.
	if j := slices.IndexFunc(s, func(x slot) bool { return x.it == sl.it }); j >= 0 {
		return slices.Delete(s, j, j+1)
	}
	return s
}
