package ledger

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"computebroker/market"
)

// TestDefsDecodeOnceExactly: a cached definition is the decoded one, a
// caller's changes to its lists do not reach the cache, bad JSON is
// refused, and the cache starts over at its bound.
func TestDefsDecodeOnceExactly(t *testing.T) {
	var d defs
	p := market.Program{ID: "p", Name: "n", Rate: decimal.RequireFromString("0.35"), Regions: []string{"cn-east"},
		Providers: []string{}, ValidFrom: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	raw, _ := json.Marshal(p)
	var want market.Program
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // a miss, then a hit
		got, ok := d.program(string(raw))
		if !ok || !reflect.DeepEqual(got, want) {
			t.Fatalf("round %d: %+v %v, want %+v", i, got, ok, want)
		}
		got.Regions[0] = "changed"
	}
	if got, _ := d.program(string(raw)); got.Regions[0] != "cn-east" || got.Providers == nil || got.ResourceClasses != nil {
		t.Fatalf("the cache's lists changed: %+v", got)
	}
	v := market.Voucher{ID: "v", ProgramID: "p", Amount: decimal.RequireFromString("12.50"), ExpiresAt: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
	rawV, _ := json.Marshal(v)
	for i := 0; i < 2; i++ {
		if got, ok := d.voucher(string(rawV)); !ok || got.ID != "v" || !got.Amount.Equal(v.Amount) || !got.ExpiresAt.Equal(v.ExpiresAt) {
			t.Fatalf("round %d: voucher %+v %v", i, got, ok)
		}
	}
	if _, ok := d.program("{not json"); ok {
		t.Fatal("bad programme JSON decoded")
	}
	if _, ok := d.voucher(""); ok {
		t.Fatal("an empty voucher decoded")
	}
	for i := 0; i < maxDefs+10; i++ {
		d.voucher(fmt.Sprintf(`{"id":"v%d"}`, i))
	}
	if n := len(d.vouchers.m); n > maxDefs {
		t.Fatalf("%d vouchers cached, bound %d", n, maxDefs)
	}
}
