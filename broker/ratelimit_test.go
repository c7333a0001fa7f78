package broker_test

import (
	"strconv"
	"testing"

	"computebroker/internal/testsvc"
)

// TestRateLimits: past the bucket, calls get 429 rate_limited with
// Retry-After; the per-token bucket is the token's own.
func TestRateLimits(t *testing.T) {
	e := &env{t: t, client: newEnvClient(), redis: testsvc.Redis(t), ch: testsvc.ClickHouse(t),
		env: map[string]string{"BROKER_ANON_RATE_LIMIT": "1:10", "BROKER_RATE_LIMIT": "1:20"}}
	e.urls = append(e.urls, startInProcess(t, e))

	limited := 0
	for i := 0; i < 25; i++ {
		r := e.call("GET", "/api/v1/offers", "", nil)
		if r.Status == 429 {
			limited++
			if r.errCode() != "rate_limited" {
				t.Fatalf("429 body: %s", r.Raw)
			}
			if s, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || s < 1 {
				t.Fatalf("Retry-After %q", r.Header.Get("Retry-After"))
			}
		} else if r.Status != 200 {
			t.Fatalf("status %d: %s", r.Status, r.Raw)
		}
	}
	// A burst of 10 at 1/s: about 15 of 25 are refused.
	if limited < 10 || limited > 16 {
		t.Fatalf("%d of 25 anonymous calls limited, want about 15", limited)
	}
	// The operator's token has its own bucket of 20.
	for i := 0; i < 15; i++ {
		if r := e.call("GET", "/api/v1/providers", adminToken, nil); r.Status != 200 {
			t.Fatalf("call %d with a fresh token bucket: %d %s", i, r.Status, r.Raw)
		}
	}
}
