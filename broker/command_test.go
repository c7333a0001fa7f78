package broker

import (
	"math/rand"
	"reflect"
	"testing"
)

// TestScanCommandAgreesWithJSON: whatever the fast path accepts,
// encoding/json accepts with the same values; the plain messages clients
// send take the fast path; everything else gets encoding/json's answer.
func TestScanCommandAgreesWithJSON(t *testing.T) {
	plain := []string{
		`{"type":"price","ref":"r1","offer_id":"off_1","price":"21.50"}`,
		`{"type":"units","ref":"r2","offer_id":"off_1","units":12}`,
		` { "ref" : "x" , "type" : "price" , "price" : "9" , "offer_id" : "o" } `,
		`{"type":"units","ref":"","offer_id":"o","units":-0}`,
		"{\"type\":\"price\",\n\t\"ref\":\"a\x7fb\",\"price\":\"1\"}",
	}
	for _, m := range plain {
		var c providerCommand
		if !scanCommand([]byte(m), &c) {
			t.Errorf("fast path refused %s", m)
		}
	}
	other := []string{
		`{"type":"price","ref":"r","price":"1","x":1}`, `{"Type":"price","ref":"r"}`, `{"type":"price","ref":"r","type":"units"}`,
		`{"type":"price","ref":"r\"q"}`, `{"type":"price","ref":"é"}`, `{"type":"units","ref":"r","units":1.5}`,
		`{"type":"units","ref":"r","units":01}`, `{"type":"units","ref":"r","units":"8"}`, `{"type":"price","ref":"r","price":null}`,
		`{"type":"price","ref":"r"} {}`, `{"type":"price"}`, `{"ref":"r"}`, `{"type":"","ref":"r"}`, `{}`, `[1]`, ``, `{"type":"price","ref":"r",}`,
		`{"type":"units","ref":"r","units":1e3}`, `{"type":"units","ref":"r","units":9999999999999999999}`,
	}
	// Random mutations of the plain messages: cut, dropped and doubled bytes.
	rng := rand.New(rand.NewSource(1))
	bytes := []byte(`{}[]",:\ 0123456789-.eE` + "\t\nxé")
	for i := 0; i < 20_000; i++ {
		m := []byte(plain[rng.Intn(len(plain))])
		for n := rng.Intn(3) + 1; n > 0 && len(m) > 0; n-- {
			p := rng.Intn(len(m))
			switch rng.Intn(3) {
			case 0:
				m = append(m[:p:p], m[p+1:]...)
			case 1:
				m = append(m[:p:p], append([]byte{bytes[rng.Intn(len(bytes))]}, m[p:]...)...)
			default:
				m = m[:p]
			}
		}
		other = append(other, string(m))
	}
	for _, m := range append(plain, other...) {
		var fast, slow providerCommand
		if !scanCommand([]byte(m), &fast) {
			continue
		}
		if err := decodeCommandJSON([]byte(m), &slow); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json refuses it: %v", m, err)
		}
		// The values, not where scanCommand keeps them.
		exported := func(c providerCommand) providerCommand {
			return providerCommand{Type: c.Type, Ref: c.Ref, OfferID: c.OfferID, Price: c.Price, Units: c.Units}
		}
		if !reflect.DeepEqual(exported(fast), exported(slow)) {
			t.Fatalf("%q: fast path %+v, encoding/json %+v", m, fast, slow)
		}
	}
	for _, m := range other[:19] {
		var c providerCommand
		if scanCommand([]byte(m), &c) {
			t.Errorf("fast path accepted %s", m)
		}
	}
}
