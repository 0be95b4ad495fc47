package raftkit

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/peer"
)

// Apply submits cmd to the replicated log and returns the FSM's response
// once the command is committed and applied on the leader. Apply works on
// any node, and its answer is the same whichever node it is called on: a
// follower forwards the command over its own port to the leader, and the
// leader encodes its own callers' results exactly as forwarded ones.
//
// Results: a value of a type listed in Config.ResultTypes is returned as
// itself; any other result as msgpack carries it: nil, bool, string,
// []byte, float64, []any and map[string]any as such, integers as int64
// (uint64 above its range), an empty []byte as nil, structs as
// map[string]any. Return []byte, or register the type, to control it.
//
// FSM errors: if the FSM's response is an error, the command was applied
// and Apply returns it as the error (with a nil result): the error itself
// if it is a value or of a type listed in Config.FSMErrors, else an
// *FSMError with its text that matches (errors.Is, errors.As) the listed
// values and types the FSM's error matched. Classify gives Rejected.
//
// Failures belong to one class each (see Classify):
//
//   - ErrNotApplied: the command is certainly not in the log. Apply has
//     already retried, following the new leader, while leadership moved, a
//     transfer was in progress, no leader was known, the connection to
//     the leader failed before sending, or a membership change came
//     between the chunks of a command over 256 KiB, until its context
//     ended. A context that has already ended submits nothing.
//   - ErrUnknownOutcome: the deadline passed or the context was cancelled
//     after submission, leadership was lost, the connection broke after
//     sending, or the node closed mid-write. The command may or may not
//     have been committed, and may still be applied after Apply returned.
//     raftkit never retries it: make commands idempotent, or check the
//     state before trying again.
//   - ErrInvalidRequest (ErrTooLarge for a command over MaxCommandSize),
//     ErrClosed: fix the call, or use another node.
//
// Apply is bounded by ctx's deadline, or by Config.ApplyTimeout when ctx
// has none. Use ApplyLocal to refuse forwarding.
//
// cmd may be reused once Apply returns, whatever the outcome: raftkit
// copies it before it keeps it anywhere (raft's log, the log cache that
// replication reads, a forwarded batch, a chunk), so every node applies
// exactly the bytes cmd held when Apply was called, even a command whose
// outcome is unknown and that is applied after Apply returned.
func (n *RaftNode) Apply(ctx context.Context, cmd []byte) (any, error) {
	start := n.metrics.now()
	res, path, err := n.apply(ctx, cmd)
	n.metrics.applied(n.id, path, start, err)
	return res, err
}

// ApplyLocal is Apply without forwarding and without retries: on a node
// that is not the leader it returns a *NotLeaderError (matching
// ErrNotApplied) naming the leader, and the command was not applied.
// Outcomes are otherwise as for Apply.
func (n *RaftNode) ApplyLocal(ctx context.Context, cmd []byte) (any, error) {
	start := n.metrics.now()
	res, err := n.applyLocal(ctx, cmd)
	n.metrics.applied(n.id, "local", start, err)
	return res, err
}

// ownedCmd is a command's bytes that raftkit owns: a copy of what a caller
// passed (own), or bytes that raftkit decoded from a request itself. Only
// an ownedCmd enters the write path, so a caller's buffer can never reach
// raft's log, the log cache, a forwarded batch or a chunk, where the
// caller's later writes would change what followers apply.
type ownedCmd []byte

// own copies a caller's command, once, before raftkit keeps it.
func own(cmd []byte) ownedCmd { return ownedCmd(bytes.Clone(cmd)) }

func (n *RaftNode) applyLocal(ctx context.Context, cmd []byte) (any, error) {
	if err := n.checkOpen(); err != nil {
		return nil, err
	}
	if err := n.callMemberErr(ctx); err != nil {
		return nil, notApplied("apply", err)
	}
	if err := n.checkSize(cmd); err != nil {
		return nil, err
	}
	if err := doneErr(ctx, "apply"); err != nil {
		return nil, err
	}
	ctx, cancel := n.bound(ctx)
	defer cancel()
	return n.applyHere(ctx, own(cmd))
}

func (n *RaftNode) apply(ctx context.Context, cmd []byte) (res any, path string, err error) {
	path = "local"
	if err := n.checkOpen(); err != nil {
		return nil, path, err
	}
	if err := n.callMemberErr(ctx); err != nil {
		return nil, path, notApplied("apply", err)
	}
	if err := n.checkSize(cmd); err != nil {
		return nil, path, err
	}
	if err := doneErr(ctx, "apply"); err != nil {
		return nil, path, err
	}
	ctx, cancel := n.bound(ctx)
	defer cancel()
	owned := own(cmd)
	for attempt := 0; ; attempt++ {
		if n.IsLeader() {
			path = "local"
			res, err = n.applyHere(ctx, owned)
		} else {
			path = "forwarded"
			res, err = n.forwardApply(ctx, owned)
		}
		if err == nil || !retryable(err) || !n.backoff(ctx, attempt) {
			return res, path, err
		}
	}
}

// applyHere applies cmd on this node, which should be the leader, within
// ctx, which bound has limited.
func (n *RaftNode) applyHere(ctx context.Context, cmd ownedCmd) (any, error) {
	var out [1]leaderResult
	n.leaderApply(ctx, []ownedCmd{cmd}, out[:])
	return n.localResult(out[0])
}

func (n *RaftNode) checkSize(cmd []byte) error {
	if len(cmd) > n.cfg.MaxCommandSize {
		return wrapErr(ErrTooLarge, "apply", fmt.Errorf("%d bytes, limit Config.MaxCommandSize = %d", len(cmd), n.cfg.MaxCommandSize))
	}
	return nil
}

// backoff waits before retry number attempt+1, briefly: leadership
// usually settles within an election timeout, and the next attempt asks
// raft afresh who leads. It reports false if ctx ended first or the node
// closed.
func (n *RaftNode) backoff(ctx context.Context, attempt int) bool {
	t := time.NewTimer(min(2*time.Millisecond<<min(attempt, 6), 100*time.Millisecond))
	defer t.Stop()
	select {
	case <-t.C:
		return n.checkOpen() == nil
	case <-ctx.Done():
		return false
	case <-n.closed:
		return false
	}
}

// leaderResult is one command's outcome on the leader: err (raftkit's or
// raft's failure, classified), or the FSM's response res, which is an
// error if fsm.
type leaderResult struct {
	res any
	fsm bool
	err error
}

// leaderApply is the leader's one write path, for its own callers and for
// forwarded commands alike: it submits cmds to raft back to back (so that
// they share the leader's group commit), waits for them within ctx, and
// puts each command's outcome in out. FSM errors are counted here.
func (n *RaftNode) leaderApply(ctx context.Context, cmds []ownedCmd, out []leaderResult) {
	err := n.checkOpen()
	if err == nil && n.raft.State() != raft.Leader {
		err = n.notLeader()
	}
	if err == nil {
		err = doneErr(ctx, "apply")
	}
	dl, _ := ctx.Deadline() // bound gave it one
	timeout := time.Until(dl)
	if err == nil && timeout <= 0 {
		err = doneErr(ctx, "apply")
	}
	if err != nil {
		for i := range out {
			out[i] = leaderResult{err: err}
		}
		return
	}
	// w keeps its own results, so that out stays on the caller's stack
	// for one command.
	w := &applyWait{done: make(chan struct{})}
	if len(cmds) == 1 {
		w.one[0] = n.submit(cmds[0], timeout)
		w.futures, w.out = w.one[:], w.oneOut[:]
	} else if n.batchApplyCh {
		w.futures, w.out = make([]raft.ApplyFuture, len(cmds)), make([]leaderResult, len(cmds))
		for i, c := range cmds {
			w.futures[i] = n.submit(c, timeout)
		}
	} else {
		// Without raft's BatchApplyCh, raft.Apply waits until the leader
		// loop takes the command, one per loop turn (a disk write); sent
		// one after another, a batch would take as many turns as it has
		// commands. Sent together, they share one turn, as concurrent
		// local callers do. They came from concurrent callers, so their
		// order among themselves is free.
		w.futures, w.out = make([]raft.ApplyFuture, len(cmds)), make([]leaderResult, len(cmds))
		var wg sync.WaitGroup
		for i, c := range cmds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.futures[i] = n.submit(c, timeout)
			}()
		}
		wg.Wait()
	}
	// raft resolves the futures in log order; a goroutine per call waits
	// for them so that ctx can cut the wait short (one waiter for all
	// calls made callers wait on each other's wake-ups). Close lets such
	// waits end before it shuts raft down (see futureWaits).
	n.futureWaits.add()
	go func() {
		defer n.futureWaits.done()
		n.resolve(w)
	}()
	select {
	case <-w.done:
	case <-ctx.Done():
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gaveUp = true
	copy(out, w.out[:w.resolved])
	for i := w.resolved; i < len(out); i++ {
		out[i] = leaderResult{err: unknownOutcome("apply", ctx.Err())}
	}
}

// applyWait is one leaderApply call's futures, waited for by a goroutine
// of its own while the caller watches its context.
type applyWait struct {
	futures []raft.ApplyFuture
	one     [1]raft.ApplyFuture // futures' storage for one command
	out     []leaderResult
	oneOut  [1]leaderResult // out's storage for one command
	done    chan struct{}   // closed when all futures resolved

	mu       sync.Mutex
	resolved int  // out[:resolved] hold the futures' outcomes
	gaveUp   bool // the caller's context ended; out is the caller's
}

// resolve waits for w's futures in turn and records their outcomes,
// unless w's caller gave up first. It reads every future's outcome even
// then: a chunked command's future notes a cut sequence when its final
// chunk fails (chunkedFuture.Error), and a cut that no one noted would
// leave every FSM holding the partial command, deferring snapshots until
// the next write.
func (n *RaftNode) resolve(w *applyWait) {
	defer close(w.done)
	for i, f := range w.futures {
		var r leaderResult
		if err := f.Error(); err != nil {
			r.err = classifyRaft("apply", err, n.notLeader)
		} else {
			r.res = f.Response()
			if _, r.fsm = r.res.(error); r.fsm {
				n.metrics.fsmError(n.id)
			}
		}
		w.mu.Lock()
		if !w.gaveUp {
			w.out[i] = r
			w.resolved = i + 1
		}
		w.mu.Unlock()
	}
}

// localResult turns a leader's outcome into Apply's answer, as a
// forwarded caller receives it.
func (n *RaftNode) localResult(r leaderResult) (any, error) {
	switch {
	case r.err != nil:
		return nil, r.err
	case r.fsm:
		return nil, n.cfg.codecs.fsmError(r.res.(error))
	}
	res, err := n.cfg.codecs.normalise(r.res)
	if err != nil {
		return nil, unencodable(err)
	}
	return res, nil
}

// wireResult turns a leader's outcome into a forwarded caller's answer.
func (n *RaftNode) wireResult(r leaderResult) peer.ApplyResponse {
	var resp peer.ApplyResponse
	switch {
	case r.err != nil:
		resp.Err = toWire(r.err)
	case r.fsm:
		resp.Err = n.cfg.codecs.encodeFSMError(r.res.(error))
	default:
		res, err := n.cfg.codecs.normalise(r.res)
		if err == nil {
			err = n.cfg.codecs.encodeResult(res, &resp)
		}
		if err != nil {
			resp = peer.ApplyResponse{Err: &peer.Error{Kind: peer.KindFSM, Message: unencodable(err).Error()}}
		}
	}
	return resp
}

// unencodable is Apply's error for an applied command whose result cannot
// be carried to a caller: an FSM error, since the command is in the log.
func unencodable(err error) error {
	return &FSMError{Message: "raftkit: the command was applied, but its result cannot be returned: " + err.Error()}
}

// serveApply is the leader's side of forwarded writes (Apply and
// ApplyBatch requests): the same path as its own callers'. Each command
// gets its own verdict: one over this node's MaxCommandSize fails alone
// (ErrTooLarge), and the others are applied.
func (n *RaftNode) serveApply(timeout int64, cmds [][]byte) []peer.ApplyResponse {
	resps := make([]peer.ApplyResponse, len(cmds))
	if len(cmds) > peer.MaxBatchCommands {
		e := toWire(invalidRequest("batch of %d commands exceeds %d", len(cmds), peer.MaxBatchCommands))
		for i := range resps {
			resps[i].Err = e
		}
		return resps
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(timeout))
	defer cancel()
	out := make([]leaderResult, len(cmds))
	valid := make([]ownedCmd, 0, len(cmds))
	at := make([]int, 0, len(cmds)) // valid[j] is cmds[at[j]]
	for i, c := range cmds {
		if err := n.checkSize(c); err != nil {
			out[i].err = err
			continue
		}
		// Decoded from the request into buffers of its own: raftkit's.
		valid, at = append(valid, ownedCmd(c)), append(at, i)
	}
	if len(valid) == len(cmds) {
		n.leaderApply(ctx, valid, out)
	} else if len(valid) > 0 {
		part := make([]leaderResult, len(valid))
		n.leaderApply(ctx, valid, part)
		for j, r := range part {
			out[at[j]] = r
		}
	}
	for i := range out {
		resps[i] = n.wireResult(out[i])
	}
	return resps
}

// ApplyAs is Apply for commands whose FSM result is a T (register T in
// Config.ResultTypes unless it is one of the types that msgpack carries
// as themselves, such as bool, string, []byte, int64 or float64). A nil
// result gives T's zero value. A result of another type is an error of
// class Rejected: the command was applied, but its result is not a T.
func ApplyAs[T any](ctx context.Context, n *RaftNode, cmd []byte) (T, error) {
	var zero T
	res, err := n.Apply(ctx, cmd)
	if err != nil || res == nil {
		return zero, err
	}
	v, ok := res.(T)
	if !ok {
		return zero, &FSMError{Message: fmt.Sprintf("raftkit: the command was applied, but its result is a %T, not a %T", res, zero)}
	}
	return v, nil
}
