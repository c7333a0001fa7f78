package matching

import (
	"slices"
	"testing"
)

// TestBookOrderEachEvent applies random event sequences to books one event at a time
// and checks after each that the book's working order is exactly its
// offers, sorted, and that a provider's change reports exactly that
// provider's offers, carrying the new account.
func TestBookOrderEachEvent(t *testing.T) {
	for seed := int64(1); seed <= 20; seed++ {
		w := newWorld(seed)
		for n, ev := range w.events(1500) {
			var changed []slot
			switch ev.Kind {
			case EventUpsert:
				if err := w.books[ev.Offer.Market()].Upsert(ev.Offer, ev.Provider); err != nil {
					t.Fatalf("seed %d event %d: %v", seed, n, err)
				}
			case EventRemove:
				w.books[ev.Market].Remove(ev.OfferID)
			case EventProvider:
				for _, b := range w.books {
					want := 0
					for _, sl := range b.sorted {
						if sl.it.Offer.ProviderID == ev.Provider.ID {
							want++
						}
					}
					changed = b.SetProvider(ev.Provider, changed[:0])
					if len(changed) != want {
						t.Fatalf("seed %d event %d: SetProvider reported %d offers, the book holds %d of %s", seed, n, len(changed), want, ev.Provider.ID)
					}
					for _, sl := range changed {
						if sl.it.Offer.ProviderID != ev.Provider.ID || sl.prov.acct.Status != ev.Provider.Status {
							t.Fatalf("seed %d event %d: SetProvider reported offer %s of %s, status %s", seed, n, sl.it.Offer.ID, sl.it.Offer.ProviderID, sl.prov.acct.Status)
						}
						if b.byID[sl.it.Offer.ID].it != sl.it {
							t.Fatalf("seed %d event %d: offer %s: byID holds another slot than the one reported", seed, n, sl.it.Offer.ID)
						}
					}
				}
			}
			for k, b := range w.books {
				if !slices.IsSortedFunc(b.sorted, compareSlots) {
					t.Fatalf("seed %d event %d: market %s is out of order", seed, n, k)
				}
				if len(b.sorted) != len(b.byID) {
					t.Fatalf("seed %d event %d: market %s orders %d offers, holds %d", seed, n, k, len(b.sorted), len(b.byID))
				}
				for i, sl := range b.sorted {
					if i > 0 && compareSlots(b.sorted[i-1], sl) == 0 {
						t.Fatalf("seed %d event %d: market %s orders offer %s twice", seed, n, k, sl.it.Offer.ID)
					}
					if b.byID[sl.it.Offer.ID].it != sl.it {
						t.Fatalf("seed %d event %d: market %s: offer %s in the order is not the one held", seed, n, k, sl.it.Offer.ID)
					}
				}
			}
		}
	}
}
