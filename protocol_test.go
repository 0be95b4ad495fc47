package raftkit

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/chunk"
	"github.com/raftkit/raftkit/internal/peer"
	"github.com/raftkit/raftkit/internal/port"
)

// protocol1 makes a node speak as a node of protocol 1 does: bare tags,
// no hello.
func protocol1(peer.Profile) peer.Profile { return peer.Protocol1() }

// requiring makes a node require (and speak) feature f.
func requiring(f string) func(peer.Profile) peer.Profile {
	return func(p peer.Profile) peer.Profile {
		p.Features = append(append([]string(nil), p.Features...), f)
		p.Requires = []string{f}
		return p
	}
}

// A cluster of mixed protocols, as in the middle of a rolling upgrade,
// replicates, forwards and chunks as usual; each node of this version
// knows its peer of protocol 1 as such.
func TestMixedProtocolsReplicate(t *testing.T) {
	c := newTCPClusterHooks(t, 3, func(i int) *nodeHooks {
		if i == 0 {
			return &nodeHooks{profile: protocol1}
		}
		return nil
	}, withMaxCommandSize(2<<20))
	l := c.leader()
	for i, n := range c.nodes {
		if _, err := n.Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set(fmt.Sprintf("via%d", i), []byte("v"))); err != nil {
			t.Fatalf("write via node %d: %v", i, err)
		}
	}
	big := make([]byte, 1<<20)
	if _, err := c.nodes[l].Apply(ctxTimeout(t, 20*time.Second), fsmexample.Set("big", big)); err != nil {
		t.Fatal(err)
	}
	c.readAll()
	for i, kv := range c.fsms {
		if v, ok := kv.Get("big"); !ok || len(v) != len(big) || kv.Len() != 4 {
			t.Fatalf("node %d: %d keys, big %d bytes", i, kv.Len(), len(v))
		}
	}
	for i := 1; i < 3; i++ {
		st := c.nodes[i].Status()
		if st.Protocol != ProtocolVersion {
			t.Fatalf("node %d says it speaks protocol %d", i, st.Protocol)
		}
		found := false
		for _, p := range st.Peers {
			if p.Addr == c.addrs[0] {
				found = p.Protocol == 1
			}
		}
		if !found {
			t.Fatalf("node %d does not know node 0 as protocol 1: %+v", i, st.Peers)
		}
	}
}

// syncBuf is a log sink tests read.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// A node that requires what its cluster does not speak (here a test-only
// feature: a release that demands a change its peers lack) is refused
// with ErrIncompatible, at once rather than after its join timeout; both
// sides log one ERROR naming both protocols; the cluster goes on.
func TestIncompatibleNodeIsRefusedWithTheDocumentedError(t *testing.T) {
	var clusterLog syncBuf
	c := newTCPCluster(t, 3, func(cfg *Config) {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: &clusterLog})
	})
	l := c.leader()
	addrs, lns := reservePorts(t, 1)
	var nodeLog syncBuf
	start := time.Now()
	n, err := newRaftNode(Config{Addr: addrs[0], Listener: lns[0], Dir: t.TempDir(), Join: []string{c.addrs[l]}, JoinTimeout: 30 * time.Second,
		RaftConfig: fastRaft, Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: &nodeLog})},
		fsmexample.New(), &nodeHooks{profile: requiring("test-required")})
	if err == nil {
		n.Close()
		t.Fatal("a node requiring a feature its cluster lacks joined it")
	}
	if !errors.Is(err, ErrIncompatible) || Classify(err) != NotApplied {
		t.Fatalf("join of an incompatible node: %v, want ErrIncompatible", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("the refusal took %s: it must not wait out the join timeout", d)
	}
	for who, log := range map[string]*syncBuf{"the new node": &nodeLog, "the cluster": &clusterLog} {
		text := log.String()
		if !strings.Contains(text, "[ERROR]") || !strings.Contains(text, "incompatible protocol") || !strings.Contains(text, "test-required") {
			t.Errorf("%s logged no ERROR naming the incompatibility:\n%s", who, text)
		}
	}
	// The cluster is unaffected.
	if _, err := c.nodes[(l+1)%3].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("after", []byte("v"))); err != nil {
		t.Fatalf("the cluster after the refusal: %v", err)
	}
	c.readAll()
	if st := c.nodes[l].Status(); len(st.Servers) != 3 {
		t.Fatalf("the refused node entered the configuration: %+v", st.Servers)
	}
}

// A member of a cluster restarted with a requirement its peers lack
// cannot serve: its calls fail at once with ErrIncompatible (never hang
// until their deadline), Ready says why, and the others go on.
func TestMemberThatRefusesItsClusterSaysSo(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	f := (l + 1) % 3
	c.stop(f)
	n, err := newRaftNode(c.config(f), fsmexample.New(), &nodeHooks{profile: requiring("test-required")})
	if err != nil {
		t.Fatal(err)
	}
	c.nodes[f] = n
	waitFor(t, 15*time.Second, "the node to find its peers incompatible", func() bool {
		return errors.Is(n.Ready(), ErrIncompatible)
	})
	start := time.Now()
	_, err = n.Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("k", []byte("v")))
	if !errors.Is(err, ErrIncompatible) || time.Since(start) > time.Second {
		t.Fatalf("Apply on it: %v after %s, want ErrIncompatible at once", err, time.Since(start))
	}
	if st := n.Status(); !strings.Contains(st.MembershipError, "incompatible protocol") || st.Ready {
		t.Fatalf("its status: ready %v, membership error %q", st.Ready, st.MembershipError)
	}
	if _, err := c.nodes[l].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("others", []byte("v"))); err != nil {
		t.Fatalf("the others: %v", err)
	}
}

// ModuleVersion says what a program runs, also when a replace directive
// points it at a local copy of raftkit (Status().Version said "unknown").
func TestModuleVersionNamesReplacedCopies(t *testing.T) {
	dep := func(version string, replace *debug.Module) *debug.Module {
		return &debug.Module{Path: modulePath, Version: version, Replace: replace}
	}
	for _, tc := range []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want string
	}{
		{"no build information", nil, false, "unknown"},
		{"raftkit's own module", &debug.BuildInfo{Main: debug.Module{Path: modulePath, Version: "(devel)"}}, true, "(devel)"},
		{"a release", &debug.BuildInfo{Main: debug.Module{Path: "example.com/app"}, Deps: []*debug.Module{dep("v0.10.0", nil)}}, true, "v0.10.0"},
		{"replaced by another version", &debug.BuildInfo{Deps: []*debug.Module{dep("v0.10.0", &debug.Module{Path: "example.com/fork", Version: "v0.10.1"})}}, true, "v0.10.1"},
		{"replaced by a directory", &debug.BuildInfo{Deps: []*debug.Module{dep("v0.0.0-00010101000000-000000000000", &debug.Module{Path: "../raftkit"})}}, true, "(devel) replaced by ../raftkit"},
		{"not a dependency", &debug.BuildInfo{Main: debug.Module{Path: "example.com/app"}}, true, "unknown"},
	} {
		if got := versionIn(tc.bi, tc.ok); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// spoofHello says h to the node at addr as any process on a member's host
// can (a raw TCP client on loopback), and returns the answer: nil if the
// node closed the connection unanswered.
func spoofHello(t *testing.T, addr string, h *peer.Hello) *peer.Hello {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte{port.TagHello}); err != nil {
		t.Fatal(err)
	}
	if err := peer.WriteHello(conn, h); err != nil {
		t.Fatal(err)
	}
	answer, err := peer.ReadHello(conn)
	if err != nil {
		return nil
	}
	return answer
}

// commandEntries returns how many command entries n's log holds after
// index from, and how many of them are chunks.
func commandEntries(t *testing.T, n *RaftNode, from uint64) (commands, chunks int) {
	t.Helper()
	for i := from + 1; i <= n.raft.LastIndex(); i++ {
		var e raft.Log
		if err := n.stores.Log.GetLog(i, &e); err != nil {
			t.Fatal(err)
		}
		if e.Type != raft.LogCommand {
			continue
		}
		commands++
		if chunk.Is(e.Extensions) {
			chunks++
		}
	}
	return commands, chunks
}

// Hellos that claim the followers are of protocol 0, sent to the leader by
// another process on the members' host, are refused on their own
// connections and change nothing else: the leader does not refuse its
// followers, stays ready, and writes succeed through it and through them.
func TestSpoofedHellosCannotMakeALeaderRefuseItsMembers(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	leader := c.nodes[l]
	waitFor(t, 15*time.Second, "the leader to be ready", func() bool { return leader.Ready() == nil })
	for i, a := range c.addrs {
		if i == l {
			continue
		}
		answer := spoofHello(t, c.addrs[l], &peer.Hello{Protocol: 0, From: a, Purpose: peer.PurposeRPC})
		if answer == nil || answer.Refused == "" {
			t.Fatalf("a hello of protocol 0 was answered %+v, want a refusal", answer)
		}
	}
	if err := leader.Ready(); err != nil {
		t.Errorf("after spoofed hellos, the leader is not ready: %v", err)
	}
	for i, n := range c.nodes {
		if _, err := n.Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set(fmt.Sprintf("after-spoof-%d", i), []byte("v"))); err != nil {
			t.Errorf("after spoofed hellos, a write via node %d: %v", i, err)
		}
	}
	for _, p := range leader.Status().Peers {
		if p.Refused != "" {
			t.Errorf("after spoofed hellos, the leader records %s as refused: %s", p.Addr, p.Refused)
		}
	}
}

// Hellos that claim the followers lack chunks, sent to the leader by
// another process on the members' host, do not turn chunking off: a
// large command still enters the log in chunks.
func TestSpoofedHellosCannotTurnChunkingOff(t *testing.T) {
	c := newTCPCluster(t, 3, withMaxCommandSize(2<<20))
	l := c.leader()
	leader := c.nodes[l]
	noChunks := []string{peer.FeatureHello, peer.FeatureClusterDigest}
	for i, a := range c.addrs {
		if i == l {
			continue
		}
		// The leader knows its follower first from its own dial; the
		// spoof then tries to say otherwise.
		waitFor(t, 15*time.Second, "the leader to know its follower", func() bool {
			st, ok := leader.mux.Peer(a)
			return ok && st.Profile.Speaks(peer.FeatureChunks)
		})
		answer := spoofHello(t, c.addrs[l], &peer.Hello{Protocol: peer.Protocol, Features: noChunks, Version: "spoof", From: a, Purpose: peer.PurposeRPC})
		if answer == nil || answer.Refused != "" {
			t.Fatalf("a compatible hello was answered %+v", answer)
		}
	}
	const size = 1 << 20
	cmd, value := casCommand("spoofed", size, 7)
	before := leader.raft.LastIndex()
	if res, err := leader.Apply(ctxTimeout(t, 20*time.Second), cmd); err != nil || res != true {
		t.Fatalf("Apply = %v, %v; want true", res, err)
	}
	if _, chunks := commandEntries(t, leader, before); chunks < chunk.Count(size) {
		t.Fatalf("after spoofed hellos, a command of %d bytes entered the log in %d chunks, want %d", size, chunks, chunk.Count(size))
	}
	for i, fsm := range c.fsms {
		waitFor(t, 10*time.Second, fmt.Sprintf("node %d to apply the command", i), func() bool {
			v, ok := fsm.Get("spoofed")
			return ok && bytes.Equal(v, value)
		})
	}
}

// beforeChunks makes a node speak as a release from before chunked
// commands would, to the extent a test can: no hello (a hello is closed
// unanswered), and "no" to a FeaturesRequest (such a release does not
// know the request; either way, not a positive answer).
func beforeChunks(peer.Profile) peer.Profile {
	return peer.Profile{Protocol: 1, Features: []string{peer.FeatureClusterDigest}, Version: "before chunks"}
}

// A peer that says no hello is asked whether it reads chunks before it is
// sent any. One that does not confirm it fails large commands as not
// applied, naming it, through the leader and through a follower, with
// nothing in the log; small commands go on. One that confirms it (a node
// of protocol 1) gets chunks.
func TestPeerWithoutHelloIsAskedBeforeChunks(t *testing.T) {
	for _, tc := range []struct {
		name    string
		profile func(peer.Profile) peer.Profile
		reads   bool
	}{
		{"before chunks", beforeChunks, false},
		{"protocol 1", protocol1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTCPClusterHooks(t, 3, func(i int) *nodeHooks {
				if i == 0 {
					return &nodeHooks{profile: tc.profile}
				}
				return nil
			}, withMaxCommandSize(2<<20))
			l := c.leader()
			if l == 0 {
				if err := c.nodes[0].TransferLeadership(ctxTimeout(t, 10*time.Second), c.nodes[1].ID()); err != nil {
					t.Fatal(err)
				}
				waitFor(t, 10*time.Second, "node 1 to lead", func() bool { return c.nodes[1].IsLeader() })
				l = 1
			}
			leader := c.nodes[l]
			follower := 3 - l // the node that is neither 0 nor the leader
			const size = 1 << 20
			for _, via := range []int{l, follower} {
				key := fmt.Sprintf("big-via-%d", via)
				cmd, value := casCommand(key, size, byte(via))
				before := leader.raft.LastIndex()
				res, err := c.nodes[via].Apply(ctxTimeout(t, 20*time.Second), cmd)
				commands, chunks := commandEntries(t, leader, before)
				if !tc.reads {
					if err == nil || !errors.Is(err, ErrNotApplied) || Classify(err) != NotApplied || !strings.Contains(err.Error(), c.addrs[0]) {
						t.Fatalf("a large command via node %d with a peer from before chunks: %v, %v; want not applied, naming %s", via, res, err, c.addrs[0])
					}
					if chunks != 0 || commands != 0 {
						t.Fatalf("the refused command left %d entries, %d chunks, in the leader's log", commands, chunks)
					}
					continue
				}
				if err != nil || res != true {
					t.Fatalf("a large command via node %d = %v, %v; want true", via, res, err)
				}
				if chunks < chunk.Count(size) {
					t.Fatalf("with a peer that confirmed it reads chunks, %d chunks for a command of %d bytes", chunks, size)
				}
				for i, fsm := range c.fsms {
					waitFor(t, 10*time.Second, fmt.Sprintf("node %d to apply %s", i, key), func() bool {
						v, ok := fsm.Get(key)
						return ok && bytes.Equal(v, value)
					})
				}
			}
			if _, err := c.nodes[follower].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("small", []byte("v"))); err != nil {
				t.Fatalf("a small command: %v", err)
			}
		})
	}
}
