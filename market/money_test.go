package market

import (
	"math/big"
	"math/rand"
	"strconv"
	"testing"

	"github.com/shopspring/decimal"
)

func TestParsePrice(t *testing.T) {
	for _, c := range []struct {
		in   string
		ok   bool
		want string
	}{
		{"21.50", true, "21.5"}, {"0.0001", true, "0.0001"}, {"1000000", true, "1000000"}, {"7", true, "7"},
		{"0", false, ""}, {"0.0000", false, ""}, {"-1", false, ""}, {"21.12345", false, ""}, {"abc", false, ""},
		{"1e3", false, ""}, {"", false, ""}, {" 1.00", false, ""}, {"1000000.0001", false, ""}, {"99999999", false, ""},
		{".5", false, ""}, {"+1", false, ""}, {"0x10", false, ""}, {"NaN", false, ""},
	} {
		d, err := ParsePrice("price", c.in)
		if (err == nil) != c.ok {
			t.Errorf("ParsePrice(%q) error %v, want ok=%v", c.in, err, c.ok)
			continue
		}
		if err != nil {
			if ErrorCode(err) != CodeInvalidArgument {
				t.Errorf("ParsePrice(%q) code %s", c.in, ErrorCode(err))
			}
			continue
		}
		if d.String() != c.want {
			t.Errorf("ParsePrice(%q) = %s, want %s", c.in, d, c.want)
		}
	}
}

func TestParseAmountAndRate(t *testing.T) {
	for in, ok := range map[string]bool{"1000.00": true, "0.01": true, "1000000000000": true, "0": false, "1.001": false, "-5": false, "1000000000000.01": false} {
		if _, err := ParseAmount("amount", in); (err == nil) != ok {
			t.Errorf("ParseAmount(%q) = %v, want ok=%v", in, err, ok)
		}
	}
	for in, ok := range map[string]bool{"0.30": true, "0.6": true, "0.60": true, "0.3333": true, "0.61": false, "0": false, "1": false, "0.12345": false, "abc": false} {
		if _, err := ParseRate("rate", in, MaxRate); (err == nil) != ok {
			t.Errorf("ParseRate(%q) = %v, want ok=%v", in, err, ok)
		}
	}
}

func TestGrossRoundsHalfUp(t *testing.T) {
	d := decimal.RequireFromString
	for _, c := range []struct {
		price        string
		units, hours int64
		want         string
	}{
		{"21.50", 8, 10, "1720.00"},
		{"21.9999", 4, 10, "880.00"}, // 879.996
		{"0.0005", 1, 1, "0.00"},     // 0.0005 rounds to 0.00
		{"0.005", 1, 1, "0.01"},      // half rounds up
		{"0.0149", 1, 1, "0.01"},
		{"0.2375", 3, 1, "0.71"}, // 0.7125
		{"1000000", 1000, 1000, "1000000000000.00"},
	} {
		if got := Gross(d(c.price), c.units, c.hours); got.StringFixed(2) != c.want {
			t.Errorf("Gross(%s, %d, %d) = %s, want %s", c.price, c.units, c.hours, got.StringFixed(2), c.want)
		}
	}
	if got := FloorCents(d("293.304")); got.String() != "293.3" {
		t.Errorf("FloorCents = %s", got)
	}
	if got := FloorCents(d("0.019")); got.String() != "0.01" {
		t.Errorf("FloorCents = %s", got)
	}
}

func TestPriceTicksExact(t *testing.T) {
	d := decimal.RequireFromString
	if n, ok := PriceTicks(d("21.5")); !ok || n != 215000 {
		t.Fatalf("PriceTicks(21.5) = %d %v", n, ok)
	}
	if n, ok := PriceTicks(d("0.0001")); !ok || n != 1 {
		t.Fatalf("PriceTicks(0.0001) = %d %v", n, ok)
	}
	if _, ok := PriceTicks(d("0.00001")); ok {
		t.Fatal("PriceTicks accepted 5 decimal places")
	}
	if _, ok := PriceTicks(d("-1")); ok {
		t.Fatal("PriceTicks accepted a negative price")
	}
	if _, ok := PriceTicks(d("1e20")); ok {
		t.Fatal("PriceTicks accepted an overflow")
	}
	for _, s := range []string{"21.50", "0.2375", "1000000"} {
		n, _ := PriceTicks(d(s))
		if !TicksPrice(n).Equal(d(s)) {
			t.Errorf("round trip of %s gave %s", s, TicksPrice(n))
		}
	}
	if FormatPrice(d("21.5")) != "21.50" || FormatPrice(d("0.2375")) != "0.2375" || FormatAmount(d("7")) != "7.00" {
		t.Error("format")
	}
}

// priceTicksRef is PriceTicks without the int64 fast path: the definition.
func priceTicksRef(price decimal.Decimal) (int64, bool) {
	t := price.Shift(PriceScale)
	if !t.Equal(t.Truncate(0)) || t.Cmp(decimal.NewFromInt(maxTicks)) > 0 || t.IsNegative() {
		return 0, false
	}
	return t.IntPart(), true
}

// TestPriceTicksFastPath: the int64 fast path agrees with the decimal
// definition on random coefficients and exponents, edges included.
func TestPriceTicksFastPath(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	check := func(d decimal.Decimal) {
		t.Helper()
		n, ok := PriceTicks(d)
		wn, wok := priceTicksRef(d)
		if n != wn || ok != wok {
			t.Fatalf("PriceTicks(%s) = %d %v, want %d %v", d, n, ok, wn, wok)
		}
	}
	for _, s := range []string{"0", "-0", "0.0001", "0.00001", "21.5", "21.50000", "-1", "461168601842738.7904", "461168601842738.7903", "461168601842738.7905",
		"461168601842738.79041", "1e14", "1e15", "999999999999999999", "9999999999999999999", "1e-30", "0e-30", "100000000000000000000e-20"} {
		check(decimal.RequireFromString(s))
	}
	for i := 0; i < 200_000; i++ {
		digits := 1 + rng.Intn(22)
		v := rng.Int63n(1 << 62)
		for len(strconv.FormatInt(v, 10)) > digits {
			v /= 10
		}
		coef := new(big.Int).SetInt64(v)
		if digits > 18 { // some coefficients past int64
			coef.Mul(coef, big.NewInt(int64(rng.Intn(1000)+1)))
		}
		if rng.Intn(10) == 0 {
			coef.Neg(coef)
		}
		check(decimal.NewFromBigInt(coef, int32(rng.Intn(46)-25)))
	}
}
