package cli

import (
	"os"
	"testing"
)

// The rules shipped in dist/ are exactly what the command prints, so the
// packaged file cannot drift from the device's USB ids.
func TestShippedUdevRulesMatch(t *testing.T) {
	b, err := os.ReadFile("../../../dist/udev/" + UdevRulesFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != UdevRules() {
		t.Fatalf("dist/udev/%s differs from 'opencustody udev-rules'; regenerate it with: go run ./cmd/opencustody udev-rules > dist/udev/%s", UdevRulesFile, UdevRulesFile)
	}
}
