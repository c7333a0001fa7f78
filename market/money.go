package market

import (
	"regexp"
	"strconv"

	"github.com/shopspring/decimal"
)

// Limits on what the broker accepts. They keep every amount inside the
// Decimal(18,2) / Decimal(18,6) columns of the history and the int64 tick
// counts of the matching engine, with room for units × hours products.
var (
	// MaxPrice is the largest price per unit-hour accepted.
	MaxPrice = decimal.NewFromInt(1_000_000)
	// MaxAmount is the largest money amount (a budget, a voucher) accepted.
	MaxAmount = decimal.NewFromInt(1_000_000_000_000)
)

const (
	// MaxUnits is the largest unit count of one offer or job.
	MaxUnits = 1_000_000
	// MaxHours is the largest duration of one job or offer, in hours (ten years).
	MaxHours = 87_600
	// PriceScale is the number of decimal places a price may carry.
	PriceScale = 4
	// AmountScale is the number of decimal places of a money amount.
	AmountScale = 2
	// TicksPerCNY is the number of int64 price ticks in one CNY.
	TicksPerCNY = 10_000
)

var (
	priceRe  = regexp.MustCompile(`^[0-9]{1,7}(\.[0-9]{1,4})?$`)
	amountRe = regexp.MustCompile(`^[0-9]{1,13}(\.[0-9]{1,2})?$`)
	rateRe   = regexp.MustCompile(`^0?(\.[0-9]{1,4})?$|^1(\.0{1,4})?$`)
)

// ParsePrice parses a price per unit-hour: a plain decimal string with at most
// four decimal places, greater than zero and at most MaxPrice. It returns an
// invalid_argument *Error naming field otherwise.
func ParsePrice(field, s string) (decimal.Decimal, error) {
	// Fast path, without the regular expression and big.Int: every price a
	// provider streams comes through here. The result is the decimal
	// NewFromString makes: the digits as coefficient, minus the number of
	// decimals as exponent.
	if coef, exp, ok := scanPrice(s); ok {
		if coef > 0 && coef <= 1_000_000*pow10[-exp] {
			return decimal.New(coef, exp), nil
		}
	}
	if !priceRe.MatchString(s) {
		return decimal.Decimal{}, Invalid("%s must be a decimal string with at most 4 decimal places, got %q", field, s)
	}
	d, err := decimal.NewFromString(s)
	if err != nil {
		return decimal.Decimal{}, Invalid("%s: %v", field, err)
	}
	if !d.IsPositive() {
		return decimal.Decimal{}, Invalid("%s must be greater than 0", field)
	}
	if d.GreaterThan(MaxPrice) {
		return decimal.Decimal{}, Invalid("%s must be at most %s", field, MaxPrice)
	}
	return d, nil
}

var pow10 = [...]int64{1, 10, 100, 1000, 10000}

// scanPrice reads what priceRe accepts: 1–7 digits, optionally a point and
// 1–4 digits. It returns the digits as one integer and minus the number of
// decimals.
func scanPrice(s string) (coef int64, exp int32, ok bool) {
	i, n := 0, len(s)
	for i < n && i < 8 && s[i] >= '0' && s[i] <= '9' {
		coef = coef*10 + int64(s[i]-'0')
		i++
	}
	if i == 0 || i > 7 {
		return 0, 0, false
	}
	if i == n {
		return coef, 0, true
	}
	if s[i] != '.' {
		return 0, 0, false
	}
	i++
	start := i
	for i < n && s[i] >= '0' && s[i] <= '9' {
		coef = coef*10 + int64(s[i]-'0')
		i++
	}
	if d := i - start; i != n || d < 1 || d > PriceScale {
		return 0, 0, false
	}
	return coef, int32(start - i), true
}

// ParseAmount parses a money amount: a plain decimal string with at most two
// decimal places, greater than zero and at most MaxAmount.
func ParseAmount(field, s string) (decimal.Decimal, error) {
	if !amountRe.MatchString(s) {
		return decimal.Decimal{}, Invalid("%s must be a decimal string with at most 2 decimal places, got %q", field, s)
	}
	d, err := decimal.NewFromString(s)
	if err != nil {
		return decimal.Decimal{}, Invalid("%s: %v", field, err)
	}
	if !d.IsPositive() {
		return decimal.Decimal{}, Invalid("%s must be greater than 0", field)
	}
	if d.GreaterThan(MaxAmount) {
		return decimal.Decimal{}, Invalid("%s must be at most %s", field, MaxAmount)
	}
	return d, nil
}

// ParseRate parses a subsidy rate: a decimal string in (0, max] with at most
// four decimal places.
func ParseRate(field, s string, max decimal.Decimal) (decimal.Decimal, error) {
	if s == "" || !rateRe.MatchString(s) {
		return decimal.Decimal{}, Invalid("%s must be a decimal string like \"0.30\", got %q", field, s)
	}
	d, err := decimal.NewFromString(s)
	if err != nil {
		return decimal.Decimal{}, Invalid("%s: %v", field, err)
	}
	if !d.IsPositive() || d.GreaterThan(max) {
		return decimal.Decimal{}, Invalid("%s must be greater than 0 and at most %s", field, max)
	}
	return d, nil
}

// Gross is what units of a resource for hours cost at price:
// round_half_up(price × units × hours, 2).
func Gross(price decimal.Decimal, units, hours int64) decimal.Decimal {
	// decimal.Round rounds half away from zero, which is half-up for the
	// non-negative values the broker deals in.
	return price.Mul(decimal.NewFromInt(units)).Mul(decimal.NewFromInt(hours)).Round(AmountScale)
}

// FloorCents rounds d down to whole fen (0.01 CNY).
func FloorCents(d decimal.Decimal) decimal.Decimal { return d.RoundFloor(AmountScale) }

// maxTicks is the largest tick count PriceTicks gives.
const maxTicks = 1 << 62

// PriceTicks converts a price to an exact count of 0.0001 CNY. ok is false
// when the price has more than four decimal places or does not fit an int64.
func PriceTicks(price decimal.Decimal) (ticks int64, ok bool) {
	// Fast path, without big.Int arithmetic: a coefficient of at most 18
	// digits is an exact int64. Every price update goes through here.
	if price.NumDigits() <= 18 {
		v, s := price.CoefficientInt64(), int(price.Exponent())+PriceScale
		switch {
		case v < 0:
			return 0, false
		case v == 0:
			return 0, true
		case s >= 0:
			for ; s > 0; s-- {
				if v > maxTicks/10 {
					return 0, false
				}
				v *= 10
			}
			return v, v <= maxTicks
		case s >= -18:
			p := int64(1)
			for ; s < 0; s++ {
				p *= 10
			}
			if v%p != 0 {
				return 0, false
			}
			return v / p, true
		default:
			return 0, false // a non-zero coefficient of ≤ 18 digits below 10^-18 ticks
		}
	}
	t := price.Shift(PriceScale)
	if !t.Equal(t.Truncate(0)) || !t.IsInteger() {
		return 0, false
	}
	if t.Cmp(decimal.NewFromInt(maxTicks)) > 0 || t.IsNegative() {
		return 0, false
	}
	return t.IntPart(), true
}

// TicksPrice converts a tick count back to a decimal price.
func TicksPrice(ticks int64) decimal.Decimal { return decimal.New(ticks, -PriceScale) }

// FormatAmount formats a money amount with exactly two decimal places ("21.50").
func FormatAmount(d decimal.Decimal) string { return d.StringFixed(AmountScale) }

// FormatPrice formats a price with at least two and at most four decimal
// places ("21.50", "0.2375").
func FormatPrice(d decimal.Decimal) string {
	if t, ok := PriceTicks(d); ok {
		return formatTicks(t, true)
	}
	if d.Equal(d.Round(AmountScale)) {
		return d.StringFixed(AmountScale)
	}
	return d.String()
}

// AppendPrice appends FormatPrice(d) to b.
func AppendPrice(b []byte, d decimal.Decimal) []byte {
	if t, ok := PriceTicks(d); ok {
		return appendTicks(b, t, true)
	}
	return append(b, FormatPrice(d)...)
}

// TicksString formats a tick count as decimal.Decimal.String formats the
// price: no trailing zeros after the point, no point for whole numbers
// ("21.5", "21", "0.2375").
func TicksString(ticks int64) string { return formatTicks(ticks, false) }

// AppendTicks appends TicksString(ticks) to b.
func AppendTicks(b []byte, ticks int64) []byte { return appendTicks(b, ticks, false) }

// formatTicks formats a non-negative tick count; cents keeps at least two
// decimal places (FormatPrice), otherwise trailing zeros go (TicksString).
func formatTicks(ticks int64, cents bool) string {
	var b [24]byte
	return string(appendTicks(b[:0], ticks, cents))
}

func appendTicks(out []byte, ticks int64, cents bool) []byte {
	whole, frac := ticks/TicksPerCNY, ticks%TicksPerCNY
	out = strconv.AppendInt(out, whole, 10)
	digits := PriceScale
	for digits > 0 && frac%10 == 0 && (!cents || digits > AmountScale) {
		frac /= 10
		digits--
	}
	if digits == 0 {
		return out
	}
	out = append(out, '.')
	for p := pow10[digits-1]; p > 0; p /= 10 {
		out = append(out, byte('0'+frac/p%10))
	}
	return out
}
