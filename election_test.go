package raftkit

import (
	"bytes"
	"context"
	"errors"

	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// newElectionCluster starts three in-memory nodes that run ElectionFSM.
func newElectionCluster(t *testing.T) []*RaftNode {
	t.Helper()
	net := NewMemNetwork()
	addrs := []string{"el0", "el1", "el2"}
	var nodes []*RaftNode
	for _, a := range addrs {
		n, err := NewRaftNode(Config{InMemory: true, Network: net, Storage: NewMemStorage(), Addr: a, Peers: addrs,
			RaftConfig: fastRaft, Logger: testLogger(t)}, ElectionFSM())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		nodes = append(nodes, n)
	}
	return nodes
}

func TestElectionFSMPublishesTheLeadersValueToEveryNode(t *testing.T) {
	nodes := newElectionCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.RunWhileLeader(ctx, func(ctx context.Context) {
				if err := n.Publish(ctx, "http://"+n.ID()); err != nil && ctx.Err() == nil {
					t.Errorf("publish on %s: %v", n.ID(), err)
				}
				<-ctx.Done()
			})
		}()
	}
	// seenEverywhere waits until every node's watch shows the leader's
	// value in the leader's term, and returns the leader.
	seenEverywhere := func() *RaftNode {
		t.Helper()
		l := nodes[memLeader(t, nodes)]
		want := "http://" + l.ID()
		for _, n := range nodes {
			wctx, wcancel := context.WithTimeout(context.Background(), 15*time.Second)
			var last Leadership
			for v := range n.WatchLeadership(wctx) {
				last = v
				if v.Published == want && v.PublishedTerm == l.raft.CurrentTerm() {
					break
				}
			}
			wcancel()
			if last.Published != want {
				t.Fatalf("%s's watch ended at %+v, want %q published", n.ID(), last, want)
			}
			if v, term := n.Published(); v != want || term != last.PublishedTerm {
				t.Fatalf("%s: Published() = %q, %d; its watch says %q, %d", n.ID(), v, term, want, last.PublishedTerm)
			}
		}
		return l
	}
	first := seenEverywhere()
	if err := first.TransferLeadership(ctxTimeout(t, 10*time.Second), ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "a new leader", func() bool { return !first.IsLeader() && memLeader(t, nodes) >= 0 })
	if second := seenEverywhere(); second == first {
		t.Fatal("leadership did not move")
	}
}

func TestPublishNeedsAnElectionNode(t *testing.T) {
	n := newMemNode(t, "stateful")
	if err := n.Publish(context.Background(), "x"); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("Publish on a node with its own FSM: %v, want ErrInvalidRequest", err)
	}
	if v, term := n.Published(); v != "" || term != 0 {
		t.Fatalf("Published() = %q, %d on a node with its own FSM", v, term)
	}
}

type bufferSink struct{ bytes.Buffer }

func (*bufferSink) ID() string    { return "test" }
func (*bufferSink) Cancel() error { return nil }
func (*bufferSink) Close() error  { return nil }

func TestElectionFSMSnapshotRestoresTheValueAndTerm(t *testing.T) {
	f := ElectionFSM().(*electionFSM)
	f.Apply(&raft.Log{Term: 7, Data: []byte("10.0.0.1:8080")})
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink bufferSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := ElectionFSM().(*electionFSM)
	if err := g.Restore(readCloser{&sink.Buffer}); err != nil {
		t.Fatal(err)
	}
	if v, term := g.published(); v != "10.0.0.1:8080" || term != 7 {
		t.Fatalf("restored %q in term %d", v, term)
	}
	if err := g.Restore(readCloser{bytes.NewReader([]byte{1, 2})}); err == nil {
		t.Fatal("a 2-byte snapshot restored")
	}
}

type readCloser struct {
	r interface{ Read([]byte) (int, error) }
}

func (r readCloser) Read(b []byte) (int, error) { return r.r.Read(b) }
func (readCloser) Close() error                 { return nil }
