package catalog

import (
	"strconv"
	"strings"
	"testing"
)

// TestStatePacking: an offer state survives packing and unpacking, in the
// field order the scripts use, and malformed stored states are refused.
func TestStatePacking(t *testing.T) {
	st := offerState{version: 7, status: "active", provider: "prv_1", listed: true, units: 16, free: 12,
		price: "21.5", priceAt: "1790000000000", updatedAt: "1790000001000", score: "215000"}
	packed := st.pack()
	if want := "7\tactive\t1\t21.5\t1790000000000\t16\t12\t1790000001000\t215000\tprv_1"; packed != want {
		t.Fatalf("packed %q, want %q", packed, want)
	}
	got, ok := stateOf(packed)
	st.packed = packed
	if !ok || got != st {
		t.Fatalf("unpacked %+v, %v; want %+v", got, ok, st)
	}
	vals := map[string]string{"id": "o1", "provider": "prv_1", "list_price": "20"}
	if !mergeState(vals, packed) || vals["version"] != "7" || vals["free"] != "12" || vals["score"] != "215000" || vals["list_price"] != "20" {
		t.Fatalf("merged %v", vals)
	}
	for _, bad := range []string{"", "7\tactive", packed + "\textra", "x\tactive\t1\t21.5\t1\t16\t12\t1\tm\tp", "7\tactive\t1\t21.5\t1\t16\t12\t\tm\tp"} {
		if _, ok := stateOf(bad); ok {
			t.Errorf("stateOf(%q) accepted", bad)
		}
	}
}

// TestReprice: the predicted state of a price change is exactly the packed
// state of the changed fields, and its parts are the ones it packs.
func TestReprice(t *testing.T) {
	for _, listed := range []bool{true, false} {
		st := offerState{version: 8, status: "active", provider: "prv_1", listed: listed, units: 16, free: 12,
			price: "21.5", priceAt: "1790000000000", updatedAt: "1790000001000", score: "215000"}
		st.packed = st.pack()
		next := st
		next.version++
		buf := next.reprice([]byte("left over from before"), 190250, "1790000002000")
		want := st
		want.version, want.price, want.priceAt, want.updatedAt, want.score = 9, "19.025", "1790000002000", "1790000002000", "190250"
		want.packed = want.pack()
		if next.packed != want.packed || string(buf) != want.packed {
			t.Fatalf("repriced %q, want %q", next.packed, want.packed)
		}
		got, ok := stateOf(next.packed)
		if !ok || got != next || next != want {
			t.Fatalf("repriced state %+v; unpacked %+v, %v; want %+v", next, got, ok, want)
		}
	}
}

// pack returns st's stored form, in stateFields' order: the tests' oracle
// for what the scripts and offerState.reprice store.
func (st *offerState) pack() string {
	listed := "0"
	if st.listed {
		listed = "1"
	}
	return strings.Join([]string{
		strconv.FormatInt(st.version, 10), st.status, listed, st.price, st.priceAt,
		strconv.FormatInt(st.units, 10), strconv.FormatInt(st.free, 10), st.updatedAt, st.score, st.provider,
	}, "\t")
}
