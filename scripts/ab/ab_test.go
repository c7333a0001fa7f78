// Package ab holds scripts/ab-matching's harness (testdata) and its test.
package ab

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// TestABMatchingRuns runs scripts/ab-matching briefly against HEAD: the
// harness still builds against the engine and its benchmark world, and
// prints a ratio.
func TestABMatchingRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two engines and their benchmark worlds")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, ".git")); err != nil {
		t.Skip("not a git checkout")
	}
	cmd := exec.Command("bash", filepath.Join(root, "scripts/ab-matching"), "--rounds", "1", "--decisions", "20000", "HEAD")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !regexp.MustCompile(`(?m)^ab-matching: x-vs-old [0-9.]+–[0-9.]+ over 1 rounds$`).Match(out) {
		t.Fatalf("no ratio in:\n%s", out)
	}
	t.Logf("%s", out)
}
