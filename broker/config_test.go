package broker_test

import (
	"testing"
	"time"

	"computebroker/broker"
)

// TestConfigFromEnv: the settings parsed from the environment, and bad
// values refused with the variable's name.
func TestConfigFromEnv(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	c, err := broker.ConfigFromEnv(env())
	if err != nil || c.HistoryKeep != time.Hour || c.ReferenceRefresh != time.Minute || c.Listen != "127.0.0.1:8080" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	if c, err := broker.ConfigFromEnv(env("BROKER_HISTORY_KEEP", "forever")); err != nil || c.HistoryKeep >= 0 {
		t.Fatalf("forever: %v %v", c.HistoryKeep, err)
	}
	if c, err := broker.ConfigFromEnv(env("BROKER_HISTORY_KEEP", "90m")); err != nil || c.HistoryKeep != 90*time.Minute {
		t.Fatalf("90m: %v %v", c.HistoryKeep, err)
	}
	for _, bad := range [][]string{
		{"BROKER_HISTORY_KEEP", "10s"}, {"BROKER_HISTORY_KEEP", "soon"}, {"BROKER_REFERENCE_REFRESH", "1ms"},
		{"BROKER_RATE_LIMIT", "fast"}, {"BROKER_ANON_RATE_LIMIT", "1"}, {"BROKER_LISTEN", "nowhere"},
	} {
		if _, err := broker.ConfigFromEnv(env(bad...)); err == nil {
			t.Errorf("%s=%q accepted", bad[0], bad[1])
		}
	}
}
