package matching

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"computebroker/market"
	"computebroker/voucher"

	"github.com/shopspring/decimal"
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
// order and, per provider, where that provider's offers are in that order.
// It is safe for concurrent use and never changes.
type Snapshot struct {
	// hot packs, slot by slot, the facts the scan filters on (see
	// hotSlot). hot, first and Market, which a scan reads first, fill the
	// first cache line (the struct is 177 to 192 bytes, the 192-byte size
	// class, so allocated on 64).
	hot []hotSlot
	// first is hot[0].ticks (when hot is not empty): the scan orders the
	// markets by their next price without reading hot until a market
	// runs, and a market that never runs is not read at all.
	first   int64
	Market  market.MarketKey
	mkt     *market.MarketKey // the key its slots share
	slots   []slot
	warm    []warmSlot // what pricing reads of a slot
	Version uint64     // rises by one per published change
	// certs names the certification bits of hot (the book's table when
	// published; behind a pointer so that first fits the first line).
	certs *[]string
	// The offers of the provider numbered n (see provNums) are
	// prov[provHead[n].start:provHead[n].end], in book order; numbers from
	// len(provHead) on have none.
	provHead []provHead
	prov     []provEntry
	// ref is the market's reference price for the voucher guard (see
	// Book.SetReference), nil for none.
	ref *voucher.Reference
}

// warmSlot is what pricing an offer reads of its slot, two to a cache
// line: the provider's account (in its record), the list price in ticks
// (-1: not exact), and the provider's key signature and number, so that
// pricing reads the record only when the signatures meet.
type warmSlot struct {
	acct *market.Account
	list int64
	sig  uint64
	num  int32
}

// provHead locates a provider's list and holds the key of its first entry,
// so that a scan learns where the list starts and what it costs with one
// read.
type provHead struct {
	start, end int32
	first      uint64          // prov[start].key when the list is not empty
	acct       *market.Account // the account in the provider's record, when it is not empty
	sig        uint64          // the record's sig, when it is not empty
}

// provEntry is one offer in its provider's list: key is its price in ticks
// and its index in slots, key = ticks<<30 | index, so that keys rise in book
// order; meta is its hotSlot's; list is its slot's listTicks.
type provEntry struct {
	key, meta uint64
	list      int64
}

const (
	provIndexBits = 30
	// maxBookOffers is the most offers a book holds: the indices of a
	// provEntry key (ticks ≤ maxTicks < 2³⁴ take the rest of the key).
	maxBookOffers = 1 << provIndexBits
)

func (e *provEntry) index() int { return int(e.key & (maxBookOffers - 1)) }

// head returns the head of the list of the provider numbered n, nil when
// the snapshot holds no offer of it.
func (s *Snapshot) head(n int32) *provHead {
	if n < 0 || int(n) >= len(s.provHead) || s.provHead[n].end == s.provHead[n].start {
		return nil
	}
	return &s.provHead[n]
}

// provSlots returns the list of the provider numbered n.
func (s *Snapshot) provSlots(n int32) []provEntry {
	if h := s.head(n); h != nil {
		return s.prov[h.start:h.end]
	}
	return nil
}

// provNums numbers provider ids, the same in every book of the process, so
// that a decision looks a provider up once and not once per market. A
// number is never reused. Lookups read an immutable map; a book numbers
// new providers under the mutex, and Publish makes the numbers visible
// before the snapshot that holds them.
var provNums struct {
	visible atomic.Pointer[map[string]int32]
	mu      sync.Mutex
	all     map[string]int32
	dirty   bool
}

// providerNumber returns pid's number, -1 when no published snapshot holds
// an offer of pid.
func providerNumber(pid string) int32 {
	if m := provNums.visible.Load(); m != nil {
		if n, ok := (*m)[pid]; ok {
			return n
		}
	}
	return -1
}

func numberProvider(pid string) int32 {
	provNums.mu.Lock()
	defer provNums.mu.Unlock()
	n, ok := provNums.all[pid]
	if !ok {
		if provNums.all == nil {
			provNums.all = map[string]int32{}
		}
		n = int32(len(provNums.all))
		provNums.all[pid] = n
		provNums.dirty = true
	}
	return n
}

// publishNumbers makes every number given visible and returns how many
// there are.
func publishNumbers() int {
	provNums.mu.Lock()
	defer provNums.mu.Unlock()
	if provNums.dirty {
		m := maps.Clone(provNums.all)
		provNums.visible.Store(&m)
		provNums.dirty = false
	}
	return len(provNums.all)
}

// certBits returns the bits of s.hot that stand for the certifications in
// want; ok is false when one of them is not in the snapshot's table (then no
// bit says who holds it).
func (s *Snapshot) certBits(want []string) (bits uint64, ok bool) {
	var table []string
	if s.certs != nil {
		table = *s.certs
	}
	for _, c := range want {
		i := slices.Index(table, c)
		if i < 0 {
			return 0, false
		}
		bits |= hotCert0 << i
	}
	return bits, true
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
		out[i] = sl.candidate()
	}
	return out
}

// Book is one market's active offers and the status of their providers,
// kept in price-tick order. It has a single writer: Upsert, Remove,
// SetProvider and Publish must be called from one goroutine (the Engine
// runs one per market). Snapshot may be called from any goroutine; it
// returns the last published view.
type Book struct {
	key   market.MarketKey
	certs []string // certification table: bit i of provider.certs is certs[i]
	// published is certs as the snapshots hold it, nil after it grew.
	published *[]string
	byID      map[string]slot
	sorted    []slot               // working copy, book order
	provs     map[string]*provider // latest known provider accounts
	dirty     bool
	version   uint64
	snap      *atomic.Pointer[Snapshot] // the published snapshot
	ref       *voucher.Reference        // the market's reference price, nil for none
}

// SetReference sets the market's reference price for the voucher guard,
// published with the next snapshot; zero or negative clears it.
func (b *Book) SetReference(ref decimal.Decimal) {
	if !ref.IsPositive() {
		if b.ref != nil {
			b.ref, b.dirty = nil, true
		}
		return
	}
	if b.ref != nil && b.ref.Decimal().Equal(ref) {
		return
	}
	r := voucher.NewReference(ref)
	b.ref, b.dirty = &r, true
}

// NewBook returns an empty book for key with an empty published snapshot.
func NewBook(key market.MarketKey) *Book { return newBook(key, new(atomic.Pointer[Snapshot])) }

// newBook is NewBook publishing through snap.
func newBook(key market.MarketKey, snap *atomic.Pointer[Snapshot]) *Book {
	b := &Book{snap: snap,
		key: key, byID: map[string]slot{}, provs: map[string]*provider{},
	}
	b.snap.Store(&Snapshot{Market: key, mkt: &b.key})
	return b
}

// provider returns the book's record of the account a.
func (b *Book) provider(a market.Account) *provider {
	p := &provider{acct: a, num: numberProvider(a.ID), sig: voucher.KeysSig(a.RelatedPartyKeys)}
	for _, c := range a.Certifications {
		i := slices.Index(b.certs, c)
		if i < 0 && len(b.certs) < maxCerts {
			i = len(b.certs)
			b.certs = append(b.certs, c)
			b.published = nil
		}
		if i >= 0 {
			p.certs |= 1 << i
		}
	}
	return p
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
// is above market.MaxPrice, or when a new offer would take the book past
// maxBookOffers.
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
	if !had && len(b.byID) >= maxBookOffers-1 {
		return market.Invalid("matching: market %s holds %d offers, the most a book holds", b.key, len(b.byID))
	}
	if offer.Status != market.OfferActive {
		b.Remove(offer.ID)
		return nil
	}
	p := b.provs[provider.ID]
	if p == nil {
		p = b.provider(provider)
		b.provs[provider.ID] = p
	}
	// Share the book's strings: equal content, one copy, cheap compares.
	offer.ResourceClass, offer.Region = b.key.Class, b.key.Region
	sl := newSlot(&item{Offer: offer}, p, &b.key)
	if had {
		b.sorted = moveSlot(b.sorted, old, sl)
	} else {
		b.sorted = insertSlot(b.sorted, sl)
	}
	b.byID[offer.ID] = sl
	b.dirty = true
	return nil
}

// Remove drops the offer with id; it reports whether the book held it.
func (b *Book) Remove(offerID string) bool {
	sl, ok := b.byID[offerID]
	if !ok {
		return false
	}
	b.sorted = deleteSlot(b.sorted, sl)
	delete(b.byID, offerID)
	b.dirty = true
	return true
}

// SetProvider records a provider's account (status, certifications, …) and
// applies it to every offer of the provider in the book. It appends those
// offers, as they are now, to changed and returns it. It scans the whole
// book: a provider's change is rare next to price changes, which then need
// no per-provider lists.
func (b *Book) SetProvider(p market.Account, changed []slot) []slot {
	rec := b.provider(p)
	b.provs[p.ID] = rec
	for i := range b.sorted {
		old := &b.sorted[i]
		if old.prov.acct.ID != p.ID {
			continue
		}
		// The provider is not part of the book's order: the slot stays put.
		sl := newSlot(old.it, rec, &b.key) // the offer is as it was: its item is shared
		*old = sl
		b.byID[sl.it.Offer.ID] = sl
		changed = append(changed, sl)
		b.dirty = true
	}
	return changed
}

// Offer returns the book's current (possibly unpublished) offer with id.
func (b *Book) Offer(id string) (Candidate, bool) {
	sl, ok := b.byID[id]
	if !ok {
		return Candidate{}, false
	}
	return sl.candidate(), true
}

// Publish makes the changes since the last Publish visible to readers and
// returns the new snapshot (the current one when nothing changed). It costs
// a copy of the book's order, its packed form and its per-provider lists: a
// few passes over the book.
func (b *Book) Publish() *Snapshot {
	if !b.dirty {
		return b.snap.Load()
	}
	b.version++
	n := len(b.sorted)
	s := &Snapshot{Market: b.key, mkt: &b.key, Version: b.version, slots: slices.Clone(b.sorted),
		hot: make([]hotSlot, n), warm: make([]warmSlot, n)}
	if b.published == nil {
		c := b.certs[:len(b.certs):len(b.certs)]
		b.published = &c
	}
	s.certs, s.ref = b.published, b.ref
	heads := make([]provHead, publishNumbers())
	for i := range s.slots {
		sl := &s.slots[i]
		s.hot[i] = packHot(sl)
		s.warm[i] = warmSlot{acct: &sl.prov.acct, list: sl.listTicks, sig: sl.prov.sig, num: sl.prov.num}
		heads[sl.prov.num].end++
	}
	var at int32
	for i := range heads {
		h := &heads[i]
		h.start, h.end, at = at, at, at+h.end
	}
	s.provHead, s.prov = heads, make([]provEntry, n)
	for i := range s.slots {
		h := &heads[s.slots[i].prov.num]
		e := provEntry{key: uint64(s.hot[i].ticks)<<provIndexBits | uint64(i), meta: s.hot[i].meta, list: s.slots[i].listTicks}
		if h.end == h.start {
			h.first, h.acct, h.sig = e.key, &s.slots[i].prov.acct, s.slots[i].prov.sig
		}
		s.prov[h.end] = e
		h.end++
	}
	if n > 0 {
		s.first = s.hot[0].ticks
	}
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

// moveSlot replaces old, which s holds, by sl, keeping s in book order: one
// shift of the slots between the two places instead of a delete and an
// insert that each shift the tail.
func moveSlot(s []slot, old, sl slot) []slot {
	i := indexSlot(s, old)
	if i < 0 {
		return insertSlot(s, sl) // not held (should not happen)
	}
	j, _ := slices.BinarySearchFunc(s, sl, compareSlots)
	switch {
	case j > i+1:
		j-- // sl goes where s[j-1] ends up once old is gone
		copy(s[i:j], s[i+1:j+1])
	case j < i:
		copy(s[j+1:i+1], s[j:i])
	default:
		j = i
	}
	s[j] = sl
	return s
}

// indexSlot returns where s holds sl, or -1.
func indexSlot(s []slot, sl slot) int {
	i, found := slices.BinarySearchFunc(s, sl, compareSlots)
	if found && s[i].it == sl.it {
		return i
	}
	// Not at its key (should not happen): fall back to identity.
	return slices.IndexFunc(s, func(x slot) bool { return x.it == sl.it })
}

func deleteSlot(s []slot, sl slot) []slot {
	if i := indexSlot(s, sl); i >= 0 {
		return slices.Delete(s, i, i+1)
	}
	return s
}
