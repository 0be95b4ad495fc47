package raftkit

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/peer"
	"github.com/raftkit/raftkit/internal/port"
)

// divergenceRuns is how many times the reused-buffer tests repeat their
// history on each log store: 1 in the default run;
// go test -run ReusedBuffer -args -divergence-runs=20 repeats them.
var divergenceRuns = flag.Int("divergence-runs", 1, "runs of each reused-buffer history per log store")

// reusedSet writes a set of key to value into buf, reusing its storage, as
// an application that encodes every command into one buffer does.
func reusedSet(buf []byte, key, value string) []byte {
	return append(buf[:0], fsmexample.Set(key, []byte(value))...)
}

// readAll waits until every node's FSM has applied every write
// acknowledged so far: a linearizable read on each.
func (c *testCluster) readAll() {
	c.t.Helper()
	for i, n := range c.nodes {
		if err := n.LinearizableRead(ctxTimeout(c.t, 15*time.Second)); err != nil {
			c.t.Fatalf("read barrier on node %d: %v", i, err)
		}
	}
}

// sameState fails the test unless every node's FSM holds want exactly.
func sameState(t *testing.T, c *testCluster, want map[string][]byte) {
	t.Helper()
	for i, kv := range c.fsms {
		if got := kv.All(); !maps.EqualFunc(got, want, bytes.Equal) {
			missing, wrong := 0, 0
			for k, v := range want {
				if g, ok := got[k]; !ok {
					missing++
				} else if !bytes.Equal(g, v) {
					wrong++
				}
			}
			t.Fatalf("node %d holds %d keys (%d missing, %d with other values, %d extra) against the %d the leader acknowledged",
				i, len(got), missing, wrong, len(got)-(len(want)-missing), len(want))
		}
	}
}

// A follower that was down while the leader applied commands from one
// reused buffer catches up from the leader's log (its cache first): it
// must receive the bytes each command held when Apply was called, not
// what the caller wrote into the buffer afterwards.
func TestReusedBufferFollowerCatchesUpWithTheLeadersBytes(t *testing.T) {
	for _, kind := range logStores {
		t.Run(kind.String(), func(t *testing.T) {
			for run := 0; run < *divergenceRuns; run++ {
				c := newTCPCluster(t, 3, withLogStore(kind))
				l := c.leader()
				down := (l + 1) % 3
				c.stop(down)
				want := map[string][]byte{}
				buf := make([]byte, 0, 64)
				for i := 0; i < 40; i++ {
					key, value := fmt.Sprintf("key-%03d", i), fmt.Sprintf("value-%03d", i)
					buf = reusedSet(buf, key, value)
					if _, err := c.nodes[l].Apply(ctxTimeout(t, 10*time.Second), buf); err != nil {
						t.Fatalf("write %d: %v", i, err)
					}
					want[key] = []byte(value)
					// The caller reuses its buffer at once: a valid command
					// of the same length for another key.
					copy(buf, fsmexample.Set(fmt.Sprintf("bad-%03d", i), []byte(fmt.Sprintf("wrong-%03d", i))))
				}
				c.start(down)
				c.readAll()
				sameState(t, c, want)
				c.closeAll()
			}
		})
	}
}

// Concurrent writers on every node, each reusing one buffer and
// overwriting it as soon as Apply returns: every node ends with exactly
// the acknowledged writes.
func TestReusedBuffersOfConcurrentWritersNeverDiverge(t *testing.T) {
	const writers, writes = 16, 50
	for _, kind := range logStores {
		t.Run(kind.String(), func(t *testing.T) {
			for run := 0; run < *divergenceRuns; run++ {
				c := newTCPCluster(t, 3, withLogStore(kind))
				c.leader()
				var mu sync.Mutex
				want := map[string][]byte{}
				var wg sync.WaitGroup
				errs := make(chan error, writers)
				for w := 0; w < writers; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						node := c.nodes[w%3]
						buf := make([]byte, 0, 64)
						for i := 0; i < writes; i++ {
							key, value := fmt.Sprintf("w%02d-%03d", w, i), fmt.Sprintf("v%02d-%03d", w, i)
							buf = reusedSet(buf, key, value)
							_, err := node.Apply(ctxTimeout(t, 10*time.Second), buf)
							copy(buf, fsmexample.Set(fmt.Sprintf("x%02d-%03d", w, i), []byte(fmt.Sprintf("y%02d-%03d", w, i))))
							if err != nil {
								errs <- fmt.Errorf("writer %d, write %d on %s: %w", w, i, node.ID(), err)
								return
							}
							mu.Lock()
							want[key] = []byte(value)
							mu.Unlock()
						}
					}()
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Fatal(err)
				}
				c.readAll()
				sameState(t, c, want)
				c.closeAll()
			}
		})
	}
}

// One command over the leader's MaxCommandSize in a forwarded batch (a
// follower with a larger limit, as while a new limit is rolled out) fails
// alone, with ErrTooLarge; every other command of the batch is applied,
// once.
func TestForwardedBatchFailsOnlyTheOversizeCommand(t *testing.T) {
	net := NewMemNetwork()
	nodes, fsms := newMemCluster(t, net, 3, func(c *Config) { c.MaxCommandSize = 1 << 10 })
	l := memLeader(t, nodes)
	f := nodes[(l+1)%3]
	var cmds [][]byte
	for i := 0; i < 8; i++ {
		value := []byte(fmt.Sprintf("v%d", i))
		if i == 3 {
			value = make([]byte, 2<<10) // over the leader's 1 KiB
		}
		cmds = append(cmds, fsmexample.Set(fmt.Sprintf("k%d", i), value))
	}
	var resp peer.ApplyBatchResponse
	req := &peer.ApplyBatchRequest{Commands: cmds, Timeout: int64(5 * time.Second)}
	if err := f.rpc.Call(ctxTimeout(t, 10*time.Second), nodes[l].Addr(), peer.MethodApplyBatch, req, &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != len(cmds) {
		t.Fatalf("%d results for %d commands", len(resp.Results), len(cmds))
	}
	for i, r := range resp.Results {
		err := f.fromWire(nodes[l].Addr(), r.Err)
		switch {
		case i == 3 && !errors.Is(err, ErrTooLarge):
			t.Errorf("oversize command: %v, want ErrTooLarge", err)
		case i != 3 && err != nil:
			t.Errorf("command %d: %v, want applied", i, err)
		}
	}
	ctx := ctxTimeout(t, 10*time.Second)
	for _, n := range nodes {
		if err := n.LinearizableRead(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i, kv := range fsms {
		for k := 0; k < 8; k++ {
			_, ok := kv.Get(fmt.Sprintf("k%d", k))
			if ok != (k != 3) {
				t.Errorf("node %d: k%d present=%v", i, k, ok)
			}
		}
	}
	// Applied once: each command is in the leader's log once.
	if got := countCommands(t, nodes[l], cmds); got != 7 {
		t.Errorf("the leader's log holds %d of the batch's commands, want 7 (each once)", got)
	}
}

// countCommands counts the entries in n's log whose data is one of cmds.
func countCommands(t *testing.T, n *RaftNode, cmds [][]byte) int {
	t.Helper()
	first, _ := n.stores.Log.FirstIndex()
	last, _ := n.stores.Log.LastIndex()
	count := 0
	for i := first; i <= last; i++ {
		var e raft.Log
		if err := n.stores.Log.GetLog(i, &e); err != nil {
			continue
		}
		for _, c := range cmds {
			if bytes.Equal(e.Data, c) {
				count++
			}
		}
	}
	return count
}

// The same mix through Apply on a follower, from concurrent callers, so
// that the oversize command travels in batches with others: it alone
// fails.
func TestForwardedBatchThroughApplyFailsOnlyTheOversizeCommand(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3, func(c *Config) {
		c.MaxCommandSize = 4 << 10
		if nodeIndex(c) == 0 {
			c.MaxCommandSize = 1 << 10
		}
	})
	l := memLeader(t, nodes)
	if l != 0 {
		if err := nodes[l].TransferLeadership(ctxTimeout(t, 10*time.Second), nodes[0].ID()); err != nil {
			t.Fatal(err)
		}
	}
	f := nodes[1]
	waitFor(t, 10*time.Second, "mem0 to lead and mem1 to know it", func() bool {
		return nodes[0].IsLeader() && f.GetLeaderAddr() == nodes[0].Addr()
	})
	const callers, rounds = 32, 4
	for round := 0; round < rounds; round++ {
		var wg sync.WaitGroup
		errs := make([]error, callers)
		for i := 0; i < callers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				value := []byte("small")
				if i == callers/2 {
					value = make([]byte, 2<<10)
				}
				_, errs[i] = f.Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set(fmt.Sprintf("r%d-k%d", round, i), value))
			}()
		}
		wg.Wait()
		for i, err := range errs {
			switch {
			case i == callers/2 && !errors.Is(err, ErrTooLarge):
				t.Errorf("round %d: oversize command: %v, want ErrTooLarge", round, err)
			case i != callers/2 && err != nil:
				t.Errorf("round %d: command %d: %v, want applied", round, i, err)
			}
		}
	}
}

// blockedFuture is a raft.ApplyFuture that resolves when release closes.
type blockedFuture struct{ release chan struct{} }

func (f blockedFuture) Error() error  { <-f.release; return nil }
func (f blockedFuture) Response() any { return nil }
func (f blockedFuture) Index() uint64 { return 1 }

// A caller whose context ended before its batch resolved still has every
// future of the batch read: a later chunked command whose final chunk
// failed (a leadership transfer refused it, say) notes the cut, so that
// the abort loop drops the partial command and snapshots go on, rather
// than every FSM holding it until the next write.
func TestGivenUpBatchStillNotesACutChunkedCommand(t *testing.T) {
	n := &RaftNode{id: "n", fsm: newTrackedFSM(fsmexample.New())}
	first := blockedFuture{release: make(chan struct{})}
	w := &applyWait{
		done:    make(chan struct{}),
		futures: []raft.ApplyFuture{first, chunkedFuture{ApplyFuture: fakeFuture{err: raft.ErrLeadershipTransferInProgress}, n: n}},
		out:     make([]leaderResult, 2),
	}
	go n.resolve(w)
	w.mu.Lock()
	w.gaveUp = true // the caller's context ended
	w.mu.Unlock()
	close(first.release)
	<-w.done
	if !n.chunkCut.Load() {
		t.Fatal("the failed final chunk of a given-up batch was never noted as a cut")
	}
	select {
	case <-n.fsm.chunks.Started():
	default:
		t.Fatal("the abort loop was not woken for the cut")
	}
}

// closeWhileForwarding starts a forwarded write from n to addr, where
// nothing answers, and checks that Close ends the sender's dial at once
// rather than at the write's 30 s deadline.
func closeWhileForwarding(t *testing.T, n *RaftNode, addr string) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := n.fwd.Submit(ctxTimeout(t, 30*time.Second), addr, own([]byte("x")))
		done <- transportErr("apply", addr, err)
	}()
	waitFor(t, 10*time.Second, "the write to be on its way", func() bool { return n.fwd.Sending(addr) })
	start := time.Now()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %s while a sender dialled an unreachable leader", d)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) || errors.Is(err, ErrUnknownOutcome) {
			t.Errorf("the write cut short by Close before it was sent: %v, want ErrClosed (not applied)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the forwarded write did not end with Close")
	}
}

func TestCloseCancelsADialToAnUnreachableLeaderInMemory(t *testing.T) {
	net := NewMemNetwork()
	// A listener that never accepts: dials to it wait.
	if _, err := net.listen("silent"); err != nil {
		t.Fatal(err)
	}
	nodes, _ := newMemCluster(t, net, 1)
	memLeader(t, nodes)
	closeWhileForwarding(t, nodes[0], "silent")
}

// strangerForwarder is a forwarding side whose connections leave from
// 127.0.0.2, a host that is no member of the cluster on 127.0.0.1: the
// leader counts it a stranger and caps its request messages at 64 KiB, as
// it does for a member whose traffic comes from another address than
// the one the configuration names.
func strangerForwarder(t *testing.T) *peer.Batcher {
	t.Helper()
	pool := peer.NewPool(func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			_, err = conn.Write([]byte{port.TagRPC})
		}
		return conn, err
	})
	b := peer.NewBatcher(pool)
	t.Cleanup(func() { pool.Close(); b.Stop() })
	return b
}

// Small commands from a forwarder the leader counts a stranger, larger
// together than the stranger's 64 KiB message cap, are sent in batches
// cut to the cap: every command is applied, none reported unknown.
func TestStrangersBatchesAreCutToItsMessageCap(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	b := strangerForwarder(t)
	for round := 0; round < 3; round++ {
		var wg sync.WaitGroup
		errs := make([]error, 16)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := b.Submit(ctxTimeout(t, 10*time.Second), c.addrs[l], fsmexample.Set(fmt.Sprintf("r%d-k%02d", round, i), make([]byte, 8<<10)))
				if err == nil && resp.Err != nil {
					err = c.nodes[l].fromWire(c.addrs[l], resp.Err)
				}
				errs[i] = transportErr("apply", c.addrs[l], err)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, command %d of a stranger's 8 KiB commands: %v, want applied", round, i, err)
			}
		}
	}
	c.readAll()
	for i, kv := range c.fsms {
		if kv.Len() != 48 {
			t.Errorf("node %d holds %d keys, want 48", i, kv.Len())
		}
	}
	// One command over the cap cannot be cut: it is not applied, and the
	// error says why.
	_, err := b.Submit(ctxTimeout(t, 10*time.Second), c.addrs[l], fsmexample.Set("big", make([]byte, 100<<10)))
	err = transportErr("apply", c.addrs[l], err)
	if !errors.Is(err, ErrNotApplied) || errors.Is(err, ErrUnknownOutcome) || !strings.Contains(err.Error(), "stranger") {
		t.Fatalf("a stranger's 100 KiB command: %v, want not applied, naming the stranger's cap", err)
	}
	// The connection survived the refusal.
	resp, err := b.Submit(ctxTimeout(t, 10*time.Second), c.addrs[l], fsmexample.Set("after", []byte("v")))
	if err != nil || resp.Err != nil {
		t.Fatalf("a small command after the refusal: %v %+v", err, resp)
	}
}
