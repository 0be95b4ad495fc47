package raftkit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

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

// TestCleanRunLogsNoErrorsOrWarnings starts a 3-node TCP cluster, writes
// and reads through every node, and closes them all, followers first or
// leader first: nothing went wrong, so no node may log at Warn or Error.
func TestCleanRunLogsNoErrorsOrWarnings(t *testing.T) {
	t.Run("followers first", func(t *testing.T) { checkCleanRunLogs(t, false) })
	t.Run("leader first", func(t *testing.T) { checkCleanRunLogs(t, true) })
}

func checkCleanRunLogs(t *testing.T, leaderFirst bool) {
	var buf lockedBuffer
	addrs, lns := reservePorts(t, 3)
	base := t.TempDir()
	nodes := make([]*RaftNode, 3)
	for i := range nodes {
		logger := hclog.New(&hclog.LoggerOptions{Name: fmt.Sprintf("n%d", i), Level: hclog.Warn, Output: &buf, JSONFormat: true})
		// Long timeouts: shorter ones lose leader leases (rightly logged
		// as Warn) on a loaded machine running -race.
		n, err := NewRaftNode(Config{Addr: addrs[i], Dir: filepath.Join(base, fmt.Sprint(i)), Peers: addrs, Timing: TimingWAN, Logger: logger, Listener: lns[i]}, fsmexample.New())
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		nodes[i] = n
	}
	ctx := ctxTimeout(t, 30*time.Second)
	leaderAddr, err := nodes[0].WaitForLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		for j := 0; j < 5; j++ {
			if _, err := n.Apply(ctx, fsmexample.Set(fmt.Sprintf("k%d-%d", i, j), []byte("v"))); err != nil {
				t.Fatalf("apply through node %d: %v", i, err)
			}
		}
		if err := n.LinearizableRead(ctx); err != nil {
			t.Fatalf("read on node %d: %v", i, err)
		}
	}
	for _, first := range []bool{true, false} {
		for _, n := range nodes {
			if (n.Addr() == leaderAddr) == (leaderFirst == first) {
				if err := n.Close(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if recs := buf.records(t); len(recs) > 0 {
		for _, r := range recs {
			t.Errorf("%v %v: %v", r["@level"], r["@module"], r)
		}
		t.Fatalf("%d Warn/Error lines in a clean start-use-Close run", len(recs))
	}
}

func TestQuietLoggerDemotesOnlyExpectedCloses(t *testing.T) {
	d := newDepartures()
	srv := raft.Server{ID: "n2", Address: "127.0.0.1:7002"}
	refused := errors.New("dial tcp 127.0.0.1:7002: connect: connection refused")
	cases := []struct {
		name  string
		setup func()
		level hclog.Level
		msg   string
		args  []any
		want  hclog.Level
	}{
		{"peer failure before any notice", nil, hclog.Error, "failed to heartbeat to", []any{"peer", srv.Address, "error", refused}, hclog.Error},
		{"vote failure before any notice", nil, hclog.Error, "failed to make requestVote RPC", []any{"target", srv, "error", refused}, hclog.Error},
		{"own closed connection", nil, hclog.Error, "failed to decode incoming command", []any{"error", fmt.Errorf("read: %w", net.ErrClosed)}, hclog.Debug},
		{"transport shut down", nil, hclog.Error, "failed to decode incoming command", []any{"error", raft.ErrTransportShutdown}, hclog.Debug},
		{"first election", nil, hclog.Warn, "heartbeat timeout reached, starting election", []any{"last-leader-addr", raft.ServerAddress(""), "last-leader-id", raft.ServerID("")}, hclog.Info},
		{"election after losing a leader", nil, hclog.Warn, "heartbeat timeout reached, starting election", []any{"last-leader-addr", raft.ServerAddress("127.0.0.1:7003"), "last-leader-id", raft.ServerID("n3")}, hclog.Warn},
		{"newer term without a transfer", nil, hclog.Error, "peer has newer term, stopping replication", []any{"peer", srv}, hclog.Error},
		{"info stays info", nil, hclog.Info, "entering follower state", nil, hclog.Info},
		{"peer failure after its notice", func() { d.add("n2", "127.0.0.1:7002") }, hclog.Error, "failed to heartbeat to", []any{"peer", srv.Address, "error", refused}, hclog.Debug},
		{"contact failure after its notice", nil, hclog.Warn, "failed to contact", []any{"server-id", srv.ID, "time", time.Second}, hclog.Debug},
		{"another peer's failure", nil, hclog.Error, "failed to appendEntries to", []any{"peer", raft.Server{ID: "n3", Address: "127.0.0.1:7003"}, "error", refused}, hclog.Error},
		{"notice's quiet period over", func() { d.peers["n2"] = departure{addr: "127.0.0.1:7002", until: time.Now().Add(-time.Second)} }, hclog.Error, "failed to appendEntries to", []any{"peer", srv, "error", refused}, hclog.Error},
		{"reset from a peer's host before its notice", nil, hclog.Error, "failed to decode incoming command", []any{"error", resetFrom("127.0.0.2:40000")}, hclog.Error},
		{"reset from a noticed peer's host", func() { d.add("n2", "127.0.0.2:7002") }, hclog.Error, "failed to decode incoming command", []any{"error", resetFrom("127.0.0.2:40000")}, hclog.Debug},
		{"reset from another host", nil, hclog.Error, "failed to decode incoming command", []any{"error", resetFrom("127.0.0.3:40000")}, hclog.Error},
		{"split vote before any leader", nil, hclog.Warn, "Election timeout reached, restarting election", nil, hclog.Info},
		{"split vote after a leader was known", func() { d.seenLeader.Store(true) }, hclog.Warn, "Election timeout reached, restarting election", nil, hclog.Warn},
		{"refused vote: we have a leader", nil, hclog.Warn, "rejecting vote request since we have a leader", []any{"from", srv.Address}, hclog.Info},
		{"refused vote: our log is newer (a lagging candidate, routine)", nil, hclog.Warn, "rejecting vote request since our last index is greater", []any{"candidate", srv.Address}, hclog.Info},
		{"refused pre-vote: our term is newer", nil, hclog.Warn, "rejecting pre-vote request since our last term is greater", []any{"candidate", srv.Address}, hclog.Info},
		{"newer term after a transfer", func() { d.handedOver.Store(true) }, hclog.Error, "peer has newer term, stopping replication", []any{"peer", srv}, hclog.Debug},
	}
	for _, c := range cases {
		if c.setup != nil {
			c.setup()
		}
		if got := d.level(c.level, c.msg, c.args); got != c.want {
			t.Errorf("%s: %q at %s logged at %s, want %s", c.name, c.msg, c.level, got, c.want)
		}
	}
}

// TestPeerLostWithoutNoticeStillLogsErrors: a follower that stops without
// Close (its raft shut down first, then its port, as in a crash) gives
// the leader Warn or Error lines.
func TestPeerLostWithoutNoticeStillLogsErrors(t *testing.T) {
	var buf lockedBuffer
	addrs, lns := reservePorts(t, 3)
	base := t.TempDir()
	nodes := make([]*RaftNode, 3)
	for i := range nodes {
		logger := hclog.New(&hclog.LoggerOptions{Name: fmt.Sprintf("n%d", i), Level: hclog.Warn, Output: &buf, JSONFormat: true})
		n, err := NewRaftNode(Config{Addr: addrs[i], Dir: filepath.Join(base, fmt.Sprint(i)), Peers: addrs, RaftConfig: fastRaft, Logger: logger, Listener: lns[i]}, fsmexample.New())
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		nodes[i] = n
	}
	leaderAddr, err := nodes[0].WaitForLeader(ctxTimeout(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var leaderName string
	var lost *RaftNode
	for i, n := range nodes {
		switch {
		case n.Addr() == leaderAddr:
			leaderName = fmt.Sprintf("n%d.", i)
		case lost == nil:
			lost = n
		}
	}
	if err := lost.Raft().Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	lost.Close()
	waitFor(t, 20*time.Second, "the leader to log a Warn or Error about the lost follower", func() bool {
		for _, r := range buf.records(t) {
			if strings.HasPrefix(fmt.Sprint(r["@module"]), leaderName) {
				return true
			}
		}
		return false
	})
}

// resetFrom is the error a read gets when the peer at addr resets the
// connection.
func resetFrom(addr string) error {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		panic(err)
	}
	return &net.OpError{Op: "read", Net: "tcp", Addr: ta, Err: os.NewSyscallError("read", syscall.ECONNRESET)}
}

// The quiet logging matches raft's own log messages and argument keys:
// each must still be written by the hashicorp/raft this module builds
// with, or the quieting would silently stop working.
func TestQuietLoggingMatchesRaftsWords(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/hashicorp/raft").Output()
	if err != nil {
		t.Fatalf("locate hashicorp/raft's source: %v", err)
	}
	dir := strings.TrimSpace(string(out))
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("hashicorp/raft's source in %q: %v", dir, err)
	}
	var src strings.Builder
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src.Write(b)
	}
	words := append([]string{msgHeartbeatTimeout, msgQuorumLost, msgElectionTimeout, msgRejectVoteLeader,
		msgRejectPreVoteLeader, msgRejectPreVoteTerm, msgRejectPreVoteIndex, msgRejectVoteTerm, msgRejectVoteIndex, msgPeerNewerTerm,
		msgNoKnownPeers, msgPrevLogMissing, msgSendingOlderLogs, "last-index", "previous-index"}, raftPeerKeys...)
	words = append(words, campaignMsgs...) // alone.go
	for _, w := range words {
		if !strings.Contains(src.String(), strconv.Quote(w)) {
			t.Errorf("hashicorp/raft (%s) no longer writes %q: update logging.go's quieting", dir, w)
		}
	}
}

// Values that hclog formats itself reach slog as hclog renders them: the
// text after the message is the same from hclog's own logger and from
// SlogLogger over slog's text handler.
func TestSlogLoggerRendersHclogValuesAsHclogDoes(t *testing.T) {
	args := []any{"fmt", hclog.Fmt("%+v", []string{"a", "b"}), "n", hclog.Fmt("%d ms", 5), "hex", hclog.Hex(255), "oct", hclog.Octal(8),
		"bin", hclog.Binary(5), "quote", hclog.Quote("a\nb"), "num", 7, "s", "plain"}
	var hb, sb bytes.Buffer
	hclog.New(&hclog.LoggerOptions{Output: &hb, DisableTime: true}).Info("m", args...)
	noTime := func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	SlogLogger(slog.New(slog.NewTextHandler(&sb, &slog.HandlerOptions{ReplaceAttr: noTime}))).Info("m", args...)
	_, hclogText, _ := strings.Cut(strings.TrimSpace(hb.String()), "m: ")
	_, slogText, _ := strings.Cut(strings.TrimSpace(sb.String()), "msg=m ")
	if hclogText == "" || hclogText != slogText {
		t.Fatalf("values rendered differently:\nhclog: %s\nslog:  %s", hb.String(), sb.String())
	}
	// A trailing stack trace and a value without a key, as hclog names them.
	var jb lockedBuffer
	SlogLogger(slog.New(slog.NewJSONHandler(&jb, nil))).Error("e", "k", hclog.Fmt("%s-%d", "x", 1), hclog.Stacktrace())
	SlogLogger(slog.New(slog.NewJSONHandler(&jb, nil))).With("w", hclog.Hex(16)).Info("odd", "k", "v", "lonely")
	recs := jb.records(t)
	if len(recs) != 2 || recs[0]["k"] != "x-1" || !strings.Contains(fmt.Sprint(recs[0]["stacktrace"]), t.Name()) {
		t.Fatalf("stack trace record: %v", recs)
	}
	if recs[1]["w"] != "0x10" || recs[1][hclog.MissingKey] != "lonely" {
		t.Fatalf("odd record: %v", recs[1])
	}
}

// A normal join (Config.Join) and a normal wait to be added (a node
// started without Peers or Join, added later with AddVoter) log no WARN or
// ERROR line on any node, as the README says: a new node's log starts
// behind the leader's, and a node waiting to be added has no peers; both
// are expected steps.
func TestCleanJoinLogsNoErrorsOrWarnings(t *testing.T) {
	var buf, waiting lockedBuffer
	addrs, lns := reservePorts(t, 5)
	base := t.TempDir()
	logger := func(name string, w *lockedBuffer, level hclog.Level) hclog.Logger {
		return hclog.New(&hclog.LoggerOptions{Name: name, Level: level, Output: w, JSONFormat: true})
	}
	var nodes []*RaftNode
	for i := 0; i < 3; i++ {
		n, err := NewRaftNode(Config{Addr: addrs[i], Dir: filepath.Join(base, fmt.Sprint(i)), Peers: addrs[:3], Timing: TimingWAN, Logger: logger(fmt.Sprintf("n%d", i), &buf, hclog.Warn), Listener: lns[i]}, fsmexample.New())
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		nodes = append(nodes, n)
	}
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := nodes[0].WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	for j := 0; j < 30; j++ {
		if _, err := nodes[j%3].Apply(ctx, fsmexample.Set(fmt.Sprintf("k%d", j), []byte("v"))); err != nil {
			t.Fatal(err)
		}
	}
	// A node that joins through a member.
	n4, err := NewRaftNode(Config{Addr: addrs[3], Dir: filepath.Join(base, "3"), Join: []string{addrs[1]}, Timing: TimingWAN, Logger: logger("n3", &buf, hclog.Warn), Listener: lns[3]}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	defer n4.Close()
	nodes = append(nodes, n4)
	// A node that waits to be added, long enough to find it has no peers
	// (its every line is kept, to see that wait happen).
	n5, err := NewRaftNode(Config{Addr: addrs[4], Dir: filepath.Join(base, "4"), RaftConfig: fastRaft, Logger: logger("n4", &waiting, hclog.Debug), Listener: lns[4]}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	defer n5.Close()
	waitFor(t, 15*time.Second, "the waiting node to find it has no peers", func() bool {
		for _, r := range waiting.records(t) {
			if r["@message"] == msgNoKnownPeers {
				return true
			}
		}
		return false
	})
	if err := nodes[2].AddVoter(ctx, n5.ID(), n5.Addr()); err != nil {
		t.Fatal(err)
	}
	nodes = append(nodes, n5)
	for i, n := range nodes {
		if _, err := n.Apply(ctx, fsmexample.Set(fmt.Sprintf("after%d", i), []byte("v"))); err != nil {
			t.Fatalf("apply through node %d: %v", i, err)
		}
	}
	for i := len(nodes) - 1; i >= 0; i-- {
		if !nodes[i].IsLeader() {
			if err := nodes[i].Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, n := range nodes {
		n.Close()
	}
	bad := buf.records(t)
	for _, r := range waiting.records(t) {
		if r["@level"] == "warn" || r["@level"] == "error" {
			bad = append(bad, r)
		}
	}
	for _, r := range bad {
		t.Errorf("%v %v: %v", r["@level"], r["@module"], r)
	}
	if len(bad) > 0 {
		t.Fatalf("%d Warn/Error lines in a clean join", len(bad))
	}
}
