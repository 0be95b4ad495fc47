package raftkit

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// lockedBuffer is a bytes.Buffer safe for the concurrent writes of a node.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// records decodes the JSON lines written so far.
func (l *lockedBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("line %q is not JSON: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

func TestSlogLoggerReceivesStructuredNodeLines(t *testing.T) {
	var buf lockedBuffer
	logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	node, err := NewRaftNode(Config{InMemory: true, Addr: "slog1", Peers: []string{"slog1"}, RaftConfig: fastRaft, Logger: SlogLogger(logger)}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.WaitForLeader(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := node.Close(); err != nil {
		t.Fatal(err)
	}
	var started, fromRaft bool
	for _, rec := range buf.records(t) {
		if rec["level"] == "DEBUG" {
			t.Fatalf("debug record passed an Info handler: %v", rec)
		}
		if rec["msg"] == "node started" && rec["logger"] == "raftkit" && rec["id"] == "slog1" && rec["level"] == "INFO" {
			started = true
		}
		if rec["logger"] == "raft" {
			fromRaft = true
		}
	}
	if !started || !fromRaft {
		t.Fatalf("want raftkit's \"node started\" with id and raft's own lines; got started=%v raft=%v in %v", started, fromRaft, buf.records(t))
	}
}

func TestSlogLoggerLevelsNamesAndArgs(t *testing.T) {
	var buf lockedBuffer
	l := SlogLogger(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: LevelTrace})))
	l.Named("a").Named("b").With("k", 1).Trace("t", "x", "y")
	l.SetLevel(hclog.Warn)
	if l.IsInfo() || !l.IsWarn() {
		t.Fatalf("after SetLevel(Warn): IsInfo=%v IsWarn=%v", l.IsInfo(), l.IsWarn())
	}
	l.Info("dropped")
	l.Error("kept", "err", "boom")
	l.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}).Print("[ERR] from std")
	recs := buf.records(t)
	if len(recs) != 3 {
		t.Fatalf("got %d records, want 3: %v", len(recs), recs)
	}
	if recs[0]["msg"] != "t" || recs[0]["level"] != "DEBUG-4" || recs[0]["logger"] != "a.b" || recs[0]["k"] != float64(1) || recs[0]["x"] != "y" {
		t.Fatalf("trace record %v", recs[0])
	}
	if recs[1]["msg"] != "kept" || recs[1]["level"] != "ERROR" || recs[1]["err"] != "boom" {
		t.Fatalf("error record %v", recs[1])
	}
	if recs[2]["msg"] != "from std" || recs[2]["level"] != "ERROR" {
		t.Fatalf("standard logger record %v", recs[2])
	}
	if SlogLogger(nil).IsError() {
		t.Fatal("SlogLogger(nil) is not silent")
	}
}
