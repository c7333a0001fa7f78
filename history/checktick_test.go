package history

import (
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"computebroker/market"
)

// TestCheckTickPrice: the ticks fast path accepts and refuses what the
// Decimal(18,6) bound does.
func TestCheckTickPrice(t *testing.T) {
	ts := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		price string
		ok    bool
	}{
		{"21.5", true}, {"0.0001", true}, {"0.000001", true}, {"0.0000001", false},
		{"999999999999.9999", true}, {"999999999999.999999", true}, {"1000000000000", false}, {"-1", true}, // the column holds negative prices too; prices are checked positive on the way in
	} {
		tk := market.Tick{OfferID: "o", Price: decimal.RequireFromString(c.price), TS: ts}
		err := checkTick(&tk)
		if (err == nil) != c.ok {
			t.Errorf("checkTick(price %s) = %v, want ok %v", c.price, err, c.ok)
		}
		if slow := fits(tk.Price, 6, maxPriceCol); slow != c.ok {
			t.Errorf("fits(%s) = %v, want %v", c.price, slow, c.ok)
		}
	}
}
