package raftkit

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/peer"
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
