package market

import (
	"errors"
	"fmt"
)

// Code classifies an error for callers; the HTTP layer maps each code to one
// status in exactly one place.
type Code string

// The error codes of the public API.
const (
	CodeInvalidArgument Code = "invalid_argument"
	CodeUnauthenticated Code = "unauthenticated"
	CodeForbidden       Code = "forbidden"
	CodeNotFound        Code = "not_found"
	CodeConflict        Code = "conflict"
	CodeNoMatch         Code = "no_match"
	CodeRateLimited     Code = "rate_limited"
	CodeUnavailable     Code = "unavailable"
	CodeInternal        Code = "internal"
)

// Error is the one error type of the broker. Message is safe to show to the
// caller; Err, when set, is the underlying cause and is not shown.
type Error struct {
	Code    Code
	Message string
	// Reasons counts, for no_match, the offers rejected per reason
	// ("over_max_price": 4, …), so a buyer knows what to change.
	Reasons map[string]int
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with the code and a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Invalid is shorthand for an invalid_argument error.
func Invalid(format string, args ...any) *Error {
	return Errorf(CodeInvalidArgument, format, args...)
}

// ErrorCode returns the code of the first *Error in err's chain, CodeInternal
// for any other non-nil error, and "" for nil.
func ErrorCode(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// IsCode reports whether err carries code.
func IsCode(err error, code Code) bool { return ErrorCode(err) == code }
