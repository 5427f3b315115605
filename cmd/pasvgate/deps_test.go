package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoTestDeps fails if the production binary links test code: no
// package it imports, directly or through others, may be under test/.
// Test infrastructure is written for labs (anonymous writes, no TLS,
// helpers that change namespaces) and must not ship.
func TestNoTestDeps(t *testing.T) {
	const module = "github.com/pasvgate/pasvgate/"
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", module+"cmd/pasvgate").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps named %d packages, expected the binary's whole graph:\n%s", len(deps), out)
	}
	for _, p := range deps {
		if strings.HasPrefix(p, module+"test/") {
			t.Errorf("cmd/pasvgate imports %s: the binary must not link test code", p)
		}
	}
}
