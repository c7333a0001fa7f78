package market

import (
	"fmt"
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

// TestPriceFastPathsAgree: the hand-written price scanner and tick
// formatters give exactly what the regular expression, decimal.NewFromString
// and the decimal formatting give.
func TestPriceFastPathsAgree(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	inputs := []string{"0", "1", "21.5", "21.50", "21.5000", "0.0001", "0.00001", "1000000", "1000000.0001", "9999999",
		"10000000", "01.5", "1.", ".5", "1.2.3", "-1", "+1", "1e3", " 1", "1 ", "", "0.0000", "00000000", "1234567.1234"}
	for i := 0; i < 20000; i++ {
		w := fmt.Sprint(rng.Int63n(10_000_000))
		switch rng.Intn(3) {
		case 0:
			inputs = append(inputs, w)
		default:
			f := fmt.Sprint(rng.Int63n(100_000))
			inputs = append(inputs, w+"."+f[:1+rng.Intn(len(f))])
		}
	}
	for _, in := range inputs {
		got, gerr := ParsePrice("price", in)
		// The slow path alone: what ParsePrice did before the fast path.
		var want decimal.Decimal
		var werr error
		if !priceRe.MatchString(in) {
			werr = fmt.Errorf("bad")
		} else if d, err := decimal.NewFromString(in); err != nil || !d.IsPositive() || d.GreaterThan(MaxPrice) {
			werr = fmt.Errorf("bad")
		} else {
			want = d
		}
		if (gerr == nil) != (werr == nil) {
			t.Fatalf("ParsePrice(%q) = %v, %v; the slow path says %v", in, got, gerr, werr)
		}
		if gerr != nil {
			continue
		}
		if got.Exponent() != want.Exponent() || got.CoefficientInt64() != want.CoefficientInt64() {
			t.Fatalf("ParsePrice(%q) = %s (exp %d), NewFromString gives %s (exp %d)", in, got, got.Exponent(), want, want.Exponent())
		}
		ticks, ok := PriceTicks(got)
		if !ok {
			t.Fatalf("PriceTicks(%s) failed", got)
		}
		if s := TicksString(ticks); s != got.String() {
			t.Fatalf("TicksString(%d) = %q, decimal says %q", ticks, s, got.String())
		}
		slow := got.String()
		if got.Equal(got.Round(AmountScale)) {
			slow = got.StringFixed(AmountScale)
		}
		if s := FormatPrice(got); s != slow {
			t.Fatalf("FormatPrice(%s) = %q, want %q", got, s, slow)
		}
	}
}
