package hub

import (
	"encoding/json"
	"slices"
)

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
