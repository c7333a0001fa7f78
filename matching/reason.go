package matching

// Reason is why an offer was rejected for a job. The zero Reason means the
// offer passed.
type Reason uint8

// Rejection reasons, in the order the checkers run.
const (
	ReasonNone Reason = iota
	ReasonInvalidPrice
	ReasonProviderNotApproved
	ReasonProviderSuspended
	ReasonOfferInactive
	ReasonWrongClass
	ReasonWrongRegion
	ReasonTooFewUnits
	ReasonTooFewHours
	ReasonOverMaxPrice
	ReasonMissingCertifications
	numReasons
)

var reasonNames = [numReasons]string{
	ReasonNone:                  "",
	ReasonInvalidPrice:          "invalid_price",
	ReasonProviderNotApproved:   "provider_not_approved",
	ReasonProviderSuspended:     "provider_suspended",
	ReasonOfferInactive:         "offer_inactive",
	ReasonWrongClass:            "wrong_class",
	ReasonWrongRegion:           "wrong_region",
	ReasonTooFewUnits:           "too_few_units",
	ReasonTooFewHours:           "too_few_hours",
	ReasonOverMaxPrice:          "over_max_price",
	ReasonMissingCertifications: "missing_certifications",
}

// String returns the snake_case name used in the API's no_match reasons.
func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// reasonCounts counts rejections without allocating.
type reasonCounts [numReasons]int

func (c *reasonCounts) toMap() map[string]int {
	m := make(map[string]int)
	for r := Reason(1); r < numReasons; r++ {
		if c[r] > 0 {
			m[r.String()] = c[r]
		}
	}
	return m
}
