package raftkit

import (
	"errors"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// errInjected stands for a step of NewRaftNode that fails.
var errInjected = errors.New("injected construction failure")

// partLog records a node's parts as they are built and stopped, and fails
// the constructor right after the part named failAfter.
type partLog struct {
	failAfter string
	added     []string
	stopped   []string
}

func (p *partLog) hooks() *lifecycleHooks {
	return &lifecycleHooks{
		added: func(part string) error {
			p.added = append(p.added, part)
			if part == p.failAfter {
				return errInjected
			}
			return nil
		},
		stopped: func(part string) { p.stopped = append(p.stopped, part) },
	}
}

// checkUnwound fails t unless every part built was stopped exactly once,
// last built first.
func (p *partLog) checkUnwound(t *testing.T) {
	t.Helper()
	want := slices.Clone(p.added)
	slices.Reverse(want)
	if !slices.Equal(p.stopped, want) {
		t.Fatalf("built %v, stopped %v: want each part stopped once, in reverse order", p.added, p.stopped)
	}
}

// fullNodeConfig is a node with every part: a TCP port, a bolt directory,
// a Peers list whose agreement runs in the background (the other peer is
// unreachable) and metrics.
func fullNodeConfig(t *testing.T, dir string, ln net.Listener) Config {
	self := ln.Addr().String()
	return Config{
		Addr:       self,
		Listener:   ln,
		Dir:        dir,
		Peers:      []string{self, unusedAddr(t)},
		Metrics:    &countingSink{},
		RaftConfig: fastRaft,
		Logger:     testLogger(t),
	}
}

func TestCloseStopsEveryPartOnceInReverseOrder(t *testing.T) {
	_, lns := reservePorts(t, 1)
	p := &partLog{}
	n, err := newRaftNode(fullNodeConfig(t, t.TempDir(), lns[0]), fsmexample.New(), &nodeHooks{lifecycle: p.hooks()})
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range []string{"stores", "transport", "raft", "request server", "metrics", "membership", "calls"} {
		if !slices.Contains(p.added, part) {
			t.Fatalf("parts %v lack %q", p.added, part)
		}
	}
	if len(p.stopped) != 0 {
		t.Fatalf("a running node stopped parts %v", p.stopped)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	p.checkUnwound(t)
	stopped := len(p.stopped)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if len(p.stopped) != stopped {
		t.Fatalf("a second Close stopped %v again", p.stopped[stopped:])
	}
}

func TestFailedConstructorUnwindsEveryStep(t *testing.T) {
	// Learn the parts of a node that starts.
	_, lns := reservePorts(t, 1)
	all := &partLog{}
	n, err := newRaftNode(fullNodeConfig(t, t.TempDir(), lns[0]), fsmexample.New(), &nodeHooks{lifecycle: all.hooks()})
	if err != nil {
		t.Fatal(err)
	}
	n.Close()

	for k, part := range all.added {
		t.Run(part, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			dir := filepath.Join(t.TempDir(), "data")
			addrs, lns := reservePorts(t, 1)
			p := &partLog{failAfter: part}
			n, err := newRaftNode(fullNodeConfig(t, dir, lns[0]), fsmexample.New(), &nodeHooks{lifecycle: p.hooks()})
			if !errors.Is(err, errInjected) {
				if n != nil {
					n.Close()
				}
				t.Fatalf("failing after part %d (%s) gave %v, want the injected failure", k, part, err)
			}
			if n != nil {
				t.Fatal("a failed NewRaftNode returned a node")
			}
			if !slices.Equal(p.added, all.added[:k+1]) {
				t.Fatalf("built %v before failing, want %v", p.added, all.added[:k+1])
			}
			p.checkUnwound(t)
			if !slices.Contains(p.added, "transport") {
				lns[0].Close() // the node never took it
			}
			// The port and the directory's lock are free again.
			again, err := NewRaftNode(Config{Addr: addrs[0], Dir: dir, RaftConfig: fastRaft}, fsmexample.New())
			if err != nil {
				t.Fatalf("reopening after the failure: %v", err)
			}
			if err := again.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestFailedJoinUnwindsTheWholeNode(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	_, lns := reservePorts(t, 1)
	p := &partLog{}
	_, err := newRaftNode(Config{
		Addr:        lns[0].Addr().String(),
		Listener:    lns[0],
		Dir:         t.TempDir(),
		Join:        []string{unusedAddr(t)},
		JoinTimeout: 300 * time.Millisecond,
		Metrics:     &countingSink{},
		RaftConfig:  fastRaft,
		Logger:      testLogger(t),
	}, fsmexample.New(), &nodeHooks{lifecycle: p.hooks()})
	if !errors.Is(err, ErrNoLeader) {
		t.Fatalf("join of an unreachable member gave %v, want ErrNoLeader", err)
	}
	if p.added[len(p.added)-1] != "calls" {
		t.Fatalf("join failed before the node was built: parts %v", p.added)
	}
	p.checkUnwound(t)
}

func TestFailedInMemoryConstructorUnwindsEveryStep(t *testing.T) {
	network := NewMemNetwork()
	config := func(storage *MemStorage) Config {
		return Config{
			InMemory: true,
			Addr:     "n1",
			Network:  network,
			Storage:  storage,
			Peers:    []string{"n1", "n2"}, // n2 never starts: the agreement keeps running
			Metrics:  &countingSink{},
			Logger:   testLogger(t),
		}
	}
	all := &partLog{}
	n, err := newRaftNode(config(NewMemStorage()), fsmexample.New(), &nodeHooks{lifecycle: all.hooks()})
	if err != nil {
		t.Fatal(err)
	}
	n.Close()

	for k, part := range all.added {
		t.Run(part, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			storage := NewMemStorage()
			p := &partLog{failAfter: part}
			if _, err := newRaftNode(config(storage), fsmexample.New(), &nodeHooks{lifecycle: p.hooks()}); !errors.Is(err, errInjected) {
				t.Fatalf("failing after part %d (%s) gave %v, want the injected failure", k, part, err)
			}
			p.checkUnwound(t)
			// The node's name on the network and its storage are free again.
			again, err := NewRaftNode(Config{InMemory: true, Addr: "n1", Network: network, Storage: storage}, fsmexample.New())
			if err != nil {
				t.Fatalf("reopening after the failure: %v", err)
			}
			if err := again.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
