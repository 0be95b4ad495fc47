package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReadmeQuickStartIsThisProgram keeps the README's quick start a copy
// of main.go, which go build and go vet keep compiling.
func TestReadmeQuickStartIsThisProgram(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	prog, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Quick start\n")
	if !ok {
		t.Fatal(`README.md has no "## Quick start" section`)
	}
	_, block, ok := strings.Cut(section, "```go\n")
	block, _, closed := strings.Cut(block, "```\n")
	if !ok || !closed {
		t.Fatal("the quick start section has no ```go block")
	}
	if block != string(prog) {
		t.Fatalf("the README's quick start differs from examples/quickstart/main.go:\n--- README\n%s\n--- main.go\n%s", block, prog)
	}
	if n := strings.Count(block, "\n"); n > 20 {
		t.Fatalf("the quick start is %d lines; keep it within 20", n)
	}
}

// TestQuickStartRuns builds the program and runs it in an empty directory.
func TestQuickStartRuns(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "quickstart")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != "greeting=hello err=<nil>\n" {
		t.Fatalf("quickstart: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "raft-data", "raft.db")); err != nil {
		t.Fatalf("no BoltDB log where the program said: %v", err)
	}
}
