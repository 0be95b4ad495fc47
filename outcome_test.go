package raftkit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/chunk"
	"github.com/raftkit/raftkit/internal/peer"
)

// An application's own FSM, with its own result and error types, as a
// new user would write one.

var errOutOfStock = errors.New("shop: out of stock")

type validationError struct {
	Field  string
	Reason string
}

func (e *validationError) Error() string { return "shop: " + e.Field + ": " + e.Reason }

type receipt struct {
	Order uint64
	Items []string
	Total float64
}

// outcomeFSM answers each command with the response its first byte names,
// and counts the commands it applied.
type outcomeFSM struct{ applied atomic.Int64 }

var outcomeResponses = map[string]any{
	"int":          42,
	"uint64":       uint64(1) << 40,
	"bigUint64":    uint64(1) << 63,
	"string":       "hello",
	"bytes":        []byte("raw"),
	"emptyBytes":   []byte{},
	"struct":       struct{ A, B int }{1, 2},
	"receipt":      receipt{Order: 7, Items: []string{"tea"}, Total: 2.5},
	"receiptPtr":   &receipt{Order: 8},
	"nil":          nil,
	"sentinel":     errOutOfStock,
	"wrapped":      fmt.Errorf("order 7: %w", errOutOfStock),
	"typed":        &validationError{Field: "qty", Reason: "must be positive"},
	"wrappedTyped": fmt.Errorf("order 8: %w", &validationError{Field: "sku", Reason: "unknown"}),
	"unregistered": errors.New("shop: something else"),
	"map":          map[string]int{"a": 1},
}

func (f *outcomeFSM) Apply(l *raft.Log) any {
	f.applied.Add(1)
	return outcomeResponses[string(l.Data)]
}
func (f *outcomeFSM) Snapshot() (raft.FSMSnapshot, error) { return noSnapshot{}, nil }
func (f *outcomeFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

type noSnapshot struct{}

func (noSnapshot) Persist(s raft.SnapshotSink) error { return s.Close() }
func (noSnapshot) Release()                          {}

// outcomeCluster starts three TCP nodes with outcomeFSM, registering the
// application's error and result types.
func outcomeCluster(t *testing.T) ([]*RaftNode, []*outcomeFSM) {
	t.Helper()
	addrs, lns := reservePorts(t, 3)
	base := t.TempDir()
	var nodes []*RaftNode
	var fsms []*outcomeFSM
	for i, a := range addrs {
		fsm := &outcomeFSM{}
		n, err := NewRaftNode(Config{
			Addr: a, Dir: filepath.Join(base, fmt.Sprint(i)), Peers: addrs, RaftConfig: fastRaft, Logger: testLogger(t),
			FSMErrors:   []error{errOutOfStock, (*validationError)(nil)},
			ResultTypes: []any{receipt{}, (*receipt)(nil)},
			Listener:    lns[i],
		}, fsm)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		nodes, fsms = append(nodes, n), append(fsms, fsm)
	}
	return nodes, fsms
}

func TestApplyAnswersAlikeOnLeaderAndFollower(t *testing.T) {
	nodes, _ := outcomeCluster(t)
	l := memLeader(t, nodes)
	f := (l + 1) % 3
	waitFor(t, 10*time.Second, "follower to know the leader", func() bool { return nodes[f].GetLeaderAddr() != "" })
	ctx := ctxTimeout(t, 20*time.Second)

	for name := range outcomeResponses {
		t.Run(name, func(t *testing.T) {
			lres, lerr := nodes[l].Apply(ctx, []byte(name))
			fres, ferr := nodes[f].Apply(ctx, []byte(name))
			if !reflect.DeepEqual(lres, fres) || reflect.TypeOf(lres) != reflect.TypeOf(fres) {
				t.Fatalf("results differ: leader %T %#v, follower %T %#v", lres, lres, fres, fres)
			}
			if reflect.TypeOf(lerr) != reflect.TypeOf(ferr) || !reflect.DeepEqual(lerr, ferr) {
				t.Fatalf("errors differ: leader %T %#v, follower %T %#v", lerr, lerr, ferr, ferr)
			}
			if lerr != nil && lerr.Error() != ferr.Error() {
				t.Fatalf("error texts differ: %q vs %q", lerr, ferr)
			}
			want := outcomeResponses[name]
			if werr, isErr := want.(error); isErr {
				if Classify(lerr) != Rejected || lerr.Error() != werr.Error() || lres != nil {
					t.Fatalf("FSM error: got %v, %v (class %v), want %q rejected", lres, lerr, Classify(lerr), werr)
				}
				return
			}
			if lerr != nil {
				t.Fatalf("Apply: %v", lerr)
			}
		})
	}

	// What each registered kind of error and result looks like.
	check := func(name string, ok func(res any, err error) bool) {
		t.Helper()
		for _, n := range []*RaftNode{nodes[l], nodes[f]} {
			res, err := n.Apply(ctx, []byte(name))
			if !ok(res, err) {
				t.Errorf("%s on %s: %T %#v, %T %v", name, n.ID(), res, res, err, err)
			}
		}
	}
	check("int", func(res any, err error) bool { return res == int64(42) })
	check("uint64", func(res any, err error) bool { return res == int64(1)<<40 })
	check("bigUint64", func(res any, err error) bool { return res == uint64(1)<<63 })
	check("emptyBytes", func(res any, err error) bool { return res == nil })
	check("struct", func(res any, err error) bool {
		return reflect.DeepEqual(res, map[string]any{"A": int64(1), "B": int64(2)})
	})
	check("receipt", func(res any, err error) bool {
		return reflect.DeepEqual(res, receipt{Order: 7, Items: []string{"tea"}, Total: 2.5})
	})
	check("receiptPtr", func(res any, err error) bool { r, ok := res.(*receipt); return ok && r.Order == 8 })
	check("sentinel", func(res any, err error) bool { return err == errOutOfStock })
	check("wrapped", func(res any, err error) bool {
		var fe *FSMError
		return errors.Is(err, errOutOfStock) && errors.As(err, &fe) && err.Error() == "order 7: shop: out of stock"
	})
	check("typed", func(res any, err error) bool {
		var ve *validationError
		return errors.As(err, &ve) && *ve == validationError{Field: "qty", Reason: "must be positive"} && err == error(ve)
	})
	check("wrappedTyped", func(res any, err error) bool {
		var ve *validationError
		return errors.As(err, &ve) && ve.Field == "sku" && !errors.Is(err, errOutOfStock)
	})
	check("unregistered", func(res any, err error) bool {
		var fe *FSMError
		return errors.As(err, &fe) && len(fe.Unwrap()) == 0 && fe.Message == "shop: something else"
	})

	for _, n := range []*RaftNode{nodes[l], nodes[f]} {
		if r, err := ApplyAs[receipt](ctx, n, []byte("receipt")); err != nil || r.Order != 7 {
			t.Errorf("ApplyAs[receipt] on %s: %+v, %v", n.ID(), r, err)
		}
		if s, err := ApplyAs[string](ctx, n, []byte("int")); Classify(err) != Rejected || s != "" {
			t.Errorf("ApplyAs[string] of an int on %s: %q, %v; want a rejection", n.ID(), s, err)
		}
	}
}

func TestApplyFailuresAreClassedAlikeOnLeaderAndFollower(t *testing.T) {
	nodes, fsms := outcomeCluster(t)
	l := memLeader(t, nodes)
	f := (l + 1) % 3
	waitFor(t, 10*time.Second, "follower to know the leader", func() bool { return nodes[f].GetLeaderAddr() != "" })
	if _, err := nodes[l].Apply(ctxTimeout(t, 10*time.Second), []byte("nil")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every FSM to apply the first write", func() bool {
		for _, fsm := range fsms {
			if fsm.applied.Load() != 1 {
				return false
			}
		}
		return true
	})

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	cases := []struct {
		name  string
		ctx   context.Context
		cmd   []byte
		class Outcome
		is    []error
	}{
		{"cancelled context", cancelled, []byte("int"), NotApplied, []error{ErrNotApplied, context.Canceled}},
		{"expired context", expired, []byte("int"), NotApplied, []error{ErrNotApplied, context.DeadlineExceeded}},
		{"oversized command", context.Background(), make([]byte, DefaultMaxCommandSize+1), Invalid, []error{ErrTooLarge, ErrInvalidRequest}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, n := range []*RaftNode{nodes[l], nodes[f]} {
				res, err := n.Apply(tc.ctx, tc.cmd)
				if res != nil || Classify(err) != tc.class {
					t.Fatalf("on %s: %v, %v (class %v), want class %v", n.ID(), res, err, Classify(err), tc.class)
				}
				for _, target := range tc.is {
					if !errors.Is(err, target) {
						t.Fatalf("on %s: %v does not match %v", n.ID(), err, target)
					}
				}
				if strings.Count(err.Error(), "raftkit:") != 1 {
					t.Fatalf("on %s: %q repeats its prefix", n.ID(), err)
				}
			}
		})
	}
	// Nothing above reached the log: a write after them is the second
	// command every FSM applies.
	if _, err := nodes[l].Apply(ctxTimeout(t, 10*time.Second), []byte("nil")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every FSM to apply the second write", func() bool {
		for _, fsm := range fsms {
			if fsm.applied.Load() < 2 {
				return false
			}
		}
		return true
	})
	for i, fsm := range fsms {
		if got := fsm.applied.Load(); got != 2 {
			t.Fatalf("node %d applied %d commands, want 2: a refused write was submitted", i, got)
		}
	}

	// ApplyLocal on a follower refuses, naming the leader.
	_, err := nodes[f].ApplyLocal(ctxTimeout(t, 5*time.Second), []byte("int"))
	var nle *NotLeaderError
	if Classify(err) != NotApplied || !errors.As(err, &nle) || nle.LeaderAddr != nodes[l].Addr() || !errors.Is(err, raft.ErrNotLeader) {
		t.Fatalf("ApplyLocal on a follower: %v, want a *NotLeaderError naming %s", err, nodes[l].Addr())
	}

	// Closed nodes, follower first.
	for _, n := range []*RaftNode{nodes[f], nodes[l]} {
		n.Close()
		_, err := n.Apply(ctxTimeout(t, 5*time.Second), []byte("int"))
		if Classify(err) != Closed || !errors.Is(err, ErrClosed) {
			t.Fatalf("Apply on closed %s: %v, want ErrClosed", n.ID(), err)
		}
	}
}

// Every failure the leader can report keeps its class through the peer.
func TestLeaderFailuresKeepTheirClassThroughForwarding(t *testing.T) {
	n := newMemNode(t, "solo")
	notLeader := func() error { return &NotLeaderError{LeaderID: "n2", LeaderAddr: "a2"} }
	cases := []struct {
		err   error
		class Outcome
		retry bool
	}{
		{classifyRaft("apply", raft.ErrNotLeader, notLeader), NotApplied, true},
		{classifyRaft("apply", raft.ErrLeadershipTransferInProgress, notLeader), NotApplied, true},
		{classifyRaft("apply", raft.ErrEnqueueTimeout, notLeader), NotApplied, false},
		{classifyRaft("apply", chunkedFuture{ApplyFuture: fakeFuture{res: chunk.ErrIncomplete}}.Error(), notLeader), NotApplied, true},
		{classifyRaft("apply", raft.ErrLeadershipLost, notLeader), Unknown, false},
		{classifyRaft("apply", raft.ErrRaftShutdown, notLeader), Unknown, false},
		{classifyRaft("apply", context.DeadlineExceeded, notLeader), Unknown, false},
		{doneErr(canceledCtx(), "apply"), NotApplied, false},
		{ErrClosed, NotApplied, true}, // a closing leader: the next one will take it
		{wrapErr(ErrNoLeader, "", nil), NotApplied, true},
		{invalidRequest("bad"), Invalid, false},
		{wrapErr(ErrNotAuthorized, "join", errors.New("wrong secret")), NotAuthorized, false},
		{&ConfigError{Field: "Peers"}, Invalid, false},
	}
	for _, tc := range cases {
		got := n.fromWire("a1", toWire(tc.err))
		if Classify(got) != tc.class || retryable(got) != tc.retry {
			t.Errorf("%v (class %v) arrives as %v: class %v, retryable %v; want %v, %v",
				tc.err, Classify(tc.err), got, Classify(got), retryable(got), tc.class, tc.retry)
		}
		if tc.err != ErrClosed && Classify(tc.err) != tc.class {
			t.Errorf("%v: class %v on the leader, %v through the wire", tc.err, Classify(tc.err), tc.class)
		}
		if strings.Count(got.Error(), "raftkit:") > 1 || strings.Count(tc.err.Error(), "raftkit:") > 1 {
			t.Errorf("%q / %q repeat their prefix", tc.err, got)
		}
	}
	var nle *NotLeaderError
	if got := n.fromWire("a1", toWire(notLeader())); !errors.As(got, &nle) || nle.LeaderAddr != "a2" {
		t.Errorf("not-leader arrives as %v, without the leader", got)
	}
	if got := n.fromWire("a1", &peer.Error{Kind: "from-the-future", Message: "x"}); Classify(got) != Unknown {
		t.Errorf("an unknown kind of answer is %v, want an unknown outcome", Classify(got))
	}
}

func canceledCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func TestCodecsRefuseBadRegistrations(t *testing.T) {
	for _, c := range []Config{
		{FSMErrors: []error{nil}},
		{FSMErrors: []error{errOutOfStock, errOutOfStock}},
		{FSMErrors: []error{(*validationError)(nil), (*validationError)(nil)}},
		{ResultTypes: []any{nil}},
		{ResultTypes: []any{receipt{}, receipt{}}},
		{ResultTypes: []any{func() {}}},
	} {
		c.InMemory, c.Addr = true, "x"
		err := c.Validate()
		var ce *ConfigError
		if !errors.As(err, &ce) || !(strings.HasPrefix(ce.Field, "FSMErrors[") || strings.HasPrefix(ce.Field, "ResultTypes[")) {
			t.Errorf("%+v: %v, want a ConfigError naming the entry", c, err)
		}
	}
}

// The shortcut for common result types gives what msgpack would.
func TestNormaliseMatchesTheWire(t *testing.T) {
	c, err := newCodecs(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{nil, true, "s", int64(-3), 1.5, []byte("b"), []byte{}, 7, int32(-7), uint64(5), uint64(1) << 63, uint32(9), uint(3)} {
		fast, err := c.normalise(v)
		if err != nil {
			t.Fatal(err)
		}
		// What a follower decodes from the leader's encoding.
		var resp peer.ApplyResponse
		if err := c.encodeResult(v, &resp); err != nil {
			t.Fatal(err)
		}
		var b []byte
		if err := codec.NewEncoderBytes(&b, peer.Handle()).Encode(&resp); err != nil {
			t.Fatal(err)
		}
		var back peer.ApplyResponse
		if err := codec.NewDecoderBytes(b, peer.Handle()).Decode(&back); err != nil {
			t.Fatal(err)
		}
		slow, err := c.decodeResult(&back)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(fast, slow) || reflect.TypeOf(fast) != reflect.TypeOf(slow) {
			t.Errorf("%T %#v: shortcut gives %T %#v, the wire %T %#v", v, v, fast, fast, slow, slow)
		}
	}
}

// Writers on every node see only successes and unknown outcomes while
// leadership moves and the leader dies: "not applied" is retried within
// each write's budget.
func TestWritesRideThroughTransfersAndALeaderKill(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	memLeader(t, nodes)

	type tally struct{ ok, unknown atomic.Int64 }
	var counts tally
	errs := make(chan error, 100)
	stop := make([]chan struct{}, len(nodes))
	done := make(chan struct{}, 2*len(nodes))
	for i, n := range nodes {
		stop[i] = make(chan struct{})
		for w := 0; w < 2; w++ {
			go func() {
				defer func() { done <- struct{}{} }()
				for k := 0; ; k++ {
					select {
					case <-stop[i]:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
					_, err := n.Apply(ctx, fsmexample.Set(fmt.Sprintf("n%d-w%d-%d", i, w, k), []byte("v")))
					cancel()
					switch Classify(err) {
					case Applied:
						counts.ok.Add(1)
					case Unknown:
						counts.unknown.Add(1)
					default:
						select {
						case errs <- fmt.Errorf("write on %s: %v (class %v)", n.ID(), err, Classify(err)):
						default:
						}
					}
				}
			}()
		}
	}
	waitWrites := func(min int64) {
		t.Helper()
		waitFor(t, 20*time.Second, "writes to go on", func() bool { return counts.ok.Load() >= min })
	}
	waitWrites(50)
	for i := 0; i < 5; i++ {
		l := memLeader(t, nodes)
		if err := nodes[(l+1)%3].TransferLeadership(ctxTimeout(t, 10*time.Second), ""); err != nil {
			t.Fatalf("transfer %d: %v", i, err)
		}
		waitFor(t, 10*time.Second, "a new leader", func() bool {
			for j, n := range nodes {
				if j != l && n.IsLeader() {
					return true
				}
			}
			return false
		})
		waitWrites(counts.ok.Load() + 20)
	}
	// Kill the leader: its own writers stop first (a node cut off from
	// everyone cannot succeed), then it is cut off.
	l := memLeader(t, nodes)
	close(stop[l])
	<-done
	<-done
	net.Isolate(nodes[l].Addr())
	waitFor(t, 15*time.Second, "a new leader among the survivors", func() bool {
		for j, n := range nodes {
			if j != l && n.IsLeader() {
				return true
			}
		}
		return false
	})
	waitWrites(counts.ok.Load() + 50)
	for i := range nodes {
		if i != l {
			close(stop[i])
		}
	}
	for i := 0; i < 4; i++ {
		<-done
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d writes applied, %d unknown outcomes", counts.ok.Load(), counts.unknown.Load())
}

// Forwarded FSM errors are counted once, by the leader's one write path,
// whether they travel alone or in batches.
func TestFSMErrorsAreCountedOnceWhateverThePath(t *testing.T) {
	m := &countingSink{}
	c := newTCPCluster(t, 3, func(cfg *Config) { cfg.Metrics = m })
	l := c.leader()
	f := c.nodes[(l+1)%3]
	waitFor(t, 10*time.Second, "follower to know the leader", func() bool { return f.GetLeaderAddr() != "" })
	const bad = 64
	var wg sync.WaitGroup
	for i := 0; i < bad; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := f.Apply(ctxTimeout(t, 10*time.Second), []byte{0xff}); Classify(err) != Rejected {
				t.Errorf("bad command: %v, want the FSM's rejection", err)
			}
		}()
	}
	wg.Wait()
	if _, err := c.nodes[l].Apply(ctxTimeout(t, 10*time.Second), []byte{0xff}); Classify(err) != Rejected {
		t.Fatalf("bad command on the leader: %v", err)
	}
	if got := m.get(m.fsmErrors, c.nodes[l].ID()); got != bad+1 {
		t.Fatalf("FSM errors counted on the leader: %d, want %d", got, bad+1)
	}
	for i, n := range c.nodes {
		if got := m.get(m.fsmErrors, n.ID()); i != l && got != 0 {
			t.Fatalf("FSM errors counted on follower %d: %d, want 0", i, got)
		}
	}
}

// Transferring leadership to the node that leads does nothing: its
// RunWhileLeader function keeps running, from the leader or a follower.
func TestTransferLeadershipToTheLeaderIsANoOp(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	var starts, stops atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go nodes[l].RunWhileLeader(ctx, func(fctx context.Context) {
		starts.Add(1)
		<-fctx.Done()
		stops.Add(1)
	})
	waitFor(t, 10*time.Second, "fn to start", func() bool { return starts.Load() == 1 })
	term := nodes[l].Status().Term
	for _, caller := range []*RaftNode{nodes[l], nodes[(l+1)%3]} {
		waitFor(t, 10*time.Second, "caller to know the leader", func() bool { return caller.GetLeaderAddr() != "" })
		if err := caller.TransferLeadership(ctxTimeout(t, 10*time.Second), nodes[l].ID()); err != nil {
			t.Fatalf("transfer to the leader from %s: %v", caller.ID(), err)
		}
	}
	if !nodes[l].IsLeader() || nodes[l].Status().Term != term || starts.Load() != 1 || stops.Load() != 0 {
		t.Fatalf("after a transfer to itself: leader %v, term %d (was %d), fn started %d and stopped %d times",
			nodes[l].IsLeader(), nodes[l].Status().Term, term, starts.Load(), stops.Load())
	}
}

// A node that is not the leader answers a forwarded membership request
// with the leader's name instead of forwarding it again.
func TestMembershipRequestsTravelOneHop(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	f := nodes[(l+1)%3]
	waitFor(t, 10*time.Second, "follower to know the leader", func() bool { return f.GetLeaderAddr() != "" })
	req := &peer.MembershipRequest{Op: peer.OpAddNonvoter, ID: "x", Addr: "x", Timeout: int64(5 * time.Second)}
	resp := peerHandler{n: f}.Membership(req)
	err := f.fromWire("test", resp.Err)
	var nle *NotLeaderError
	if !errors.As(err, &nle) || nle.LeaderAddr != nodes[l].Addr() {
		t.Fatalf("follower answered %v, want a *NotLeaderError naming %s", err, nodes[l].Addr())
	}
	if _, ok := nodes[l].server("x"); ok {
		t.Fatal("the follower forwarded the request")
	}
	// Through the public call, the follower's one hop reaches the leader.
	if err := f.AddNonvoter(ctxTimeout(t, 10*time.Second), "x", "x"); err != nil {
		t.Fatal(err)
	}
}
