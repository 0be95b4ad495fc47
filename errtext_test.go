package raftkit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/chunk"
	"github.com/raftkit/raftkit/internal/peer"
)

// repeated returns the first ": "-separated segment that err's text holds
// twice (or a second "raftkit:" prefix), or "".
func repeated(err error) string {
	text := err.Error()
	if strings.Count(text, "raftkit: ") > 1 {
		return "raftkit: "
	}
	seen := map[string]bool{}
	for _, seg := range strings.Split(strings.TrimPrefix(text, "raftkit: "), ": ") {
		if seen[seg] {
			return seg
		}
		seen[seg] = true
	}
	return ""
}

// checkTexts fails t for every error whose text repeats a segment.
func checkTexts(t *testing.T, errs map[string]error) {
	t.Helper()
	for name, err := range errs {
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		if seg := repeated(err); seg != "" {
			t.Errorf("%s: %q repeats %q", name, err, seg)
		}
	}
}

// Every way raftkit builds or passes on an error says each thing once:
// no doubled "raftkit:" prefix, no segment twice ("linearizable read:
// linearizable read: ..."), whatever the path: wrapped again on a retry,
// classified from raft, sent over the wire and read back on a follower.
func TestErrorTextsSayEachThingOnce(t *testing.T) {
	errs := map[string]error{}
	ctxErr := fmt.Errorf("waiting to apply index 78 (applied 0): %w", context.DeadlineExceeded)
	read := notApplied("linearizable read", ctxErr)
	errs["read retried"] = notApplied("linearizable read", read)
	errs["read annotated"] = annotate("backup", notApplied("linearizable read", read))
	errs["not applied twice"] = notApplied("apply", notApplied("apply", ErrNoLeader))
	errs["unknown twice"] = unknownOutcome("apply", unknownOutcome("apply", context.DeadlineExceeded))
	errs["too large"] = wrapErr(ErrTooLarge, "apply", errors.New("2058 bytes, limit Config.MaxCommandSize = 1024"))
	errs["invalid"] = invalidRequest("batch of %d commands exceeds %d", 600, peer.MaxBatchCommands)
	errs["done"] = doneErr(func() context.Context { c, cancel := context.WithCancel(context.Background()); cancel(); return c }(), "apply")
	errs["not ready"] = readiness(Status{ID: "a", State: "Follower", LeaderID: "b", Servers: []ServerInfo{{ID: "a"}}, CatchingUp: true, CatchUpIndex: 78})
	notLeader := func() error { return &NotLeaderError{LeaderID: "b", LeaderAddr: "10.0.0.2:7000"} }
	for _, rerr := range []error{raft.ErrNotLeader, raft.ErrLeadershipTransferInProgress, raft.ErrEnqueueTimeout, chunk.ErrIncomplete, raft.ErrRaftShutdown, raft.ErrLeadershipLost} {
		errs["raft "+rerr.Error()] = classifyRaft("apply", rerr, notLeader)
		errs["raft annotated "+rerr.Error()] = annotate("leave", classifyRaft("transfer leadership", rerr, notLeader))
	}
	for name, perr := range map[string]error{
		"unreachable":             &peer.CallError{Peer: "10.0.0.2:7000", Err: errors.New("connection refused")},
		"broken":                  &peer.CallError{Peer: "10.0.0.2:7000", Sent: true, Err: errors.New("EOF")},
		"refused":                 &peer.RefusedError{Peer: "10.0.0.2:7000", Msg: "raftkit wire: message exceeds size limit: 70000 bytes, limit 65536"},
		"cancelled":               &peer.CanceledError{Peer: "10.0.0.2:7000", Err: context.Canceled},
		"cancelled after sending": &peer.CanceledError{Peer: "10.0.0.2:7000", Sent: true, Err: context.Canceled},
	} {
		errs["transport "+name] = transportErr("apply", "10.0.0.2:7000", perr)
	}
	// Every class over the wire and back, as a follower reports the
	// leader's answer.
	n := &RaftNode{}
	for name, err := range map[string]error{
		"not applied": notApplied("apply", read), "unknown": unknownOutcome("apply", context.DeadlineExceeded),
		"no leader": wrapErr(ErrNoLeader, "apply", nil), "transfer": wrapErr(ErrTransferInProgress, "apply", nil),
		"too large": errs["too large"], "invalid": errs["invalid"], "denied": wrapErr(ErrNotAuthorized, "membership request add-voter n4", errors.New("wrong or missing join secret")),
		"interrupted": notApplied("apply", chunk.ErrIncomplete), "closed": ErrClosed,
	} {
		errs["wire "+name] = n.fromWire("10.0.0.1:7000", toWire(err))
		errs["wire annotated "+name] = annotate("leave", n.fromWire("10.0.0.1:7000", toWire(err)))
	}
	checkTexts(t, errs)
}

// The same on real paths: a read on a follower cut off from its leader,
// calls on a closed node, a forwarded write whose leader is gone.
func TestErrorTextsOfRealFailuresSayEachThingOnce(t *testing.T) {
	network := NewMemNetwork()
	nodes, _ := newMemCluster(t, network, 3)
	l := memLeader(t, nodes)
	f := nodes[(l+1)%3]
	waitFor(t, 10*time.Second, "the follower to know the leader", func() bool { return f.GetLeaderAddr() != "" })
	errs := map[string]error{}
	network.Isolate(f.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	errs["isolated read"] = f.LinearizableRead(ctx)
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), 500*time.Millisecond)
	_, errs["isolated apply"] = f.Apply(ctx, fsmexample.Set("k", []byte("v")))
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), 500*time.Millisecond)
	errs["isolated backup"] = f.Backup(ctx, &strings.Builder{})
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), 500*time.Millisecond)
	errs["isolated add voter"] = f.AddVoter(ctx, "x", "x")
	cancel()
	network.Heal()
	errs["invalid add"] = f.AddVoter(ctxTimeout(t, 5*time.Second), "", "")
	_, errs["too large"] = f.Apply(ctxTimeout(t, 5*time.Second), make([]byte, DefaultMaxCommandSize+1))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_, errs["closed apply"] = f.Apply(ctxTimeout(t, 5*time.Second), []byte("x"))
	errs["closed read"] = f.LinearizableRead(ctxTimeout(t, 5*time.Second))
	checkTexts(t, errs)
}

// Port 0 with Peers is refused with the fix: a listener of one's own,
// passed as Config.Listener.
func TestPortZeroWithPeersPointsToConfigListener(t *testing.T) {
	_, err := NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: t.TempDir(), Peers: []string{"127.0.0.1:7001"}}, fsmexample.New())
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "Addr" || !strings.Contains(err.Error(), "Config.Listener") {
		t.Fatalf("port 0 with Peers: %v, want a ConfigError for Addr that points to Config.Listener", err)
	}
}
