package market

import (
	"regexp"

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
	if d.Equal(d.Round(AmountScale)) {
		return d.StringFixed(AmountScale)
	}
	return d.String()
}
