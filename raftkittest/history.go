package raftkittest

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/raftkit/raftkit"
)

// Model describes an FSM for the linearizability check: its state as a
// value of type S, and what one call does to it. In is what a call asks
// (a command or a read), Out what it answered.
type Model[S, In, Out any] struct {
	// Init returns the state before any call.
	Init func() S

	// Step applies in to state. It reports whether out (and fsmErr, the
	// FSM's own error for a command it rejected, nil otherwise) is an
	// answer the FSM could have given in that state, and returns the state
	// after the call. The state after must depend on state and in only:
	// for a write whose outcome is unknown, Step is asked for it with the
	// zero Out, and its verdict is ignored. Step must not change state in
	// place (copy maps and slices it changes).
	Step func(state S, in In, out Out, fsmErr error) (ok bool, next S)

	// Partition, if set, names the independent part of the state a call
	// touches (a key, an account): calls of different parts are checked
	// apart, which is much faster for long histories.
	Partition func(in In) string

	// Seen, if set, reports whether a read's answer (in, out) shows the
	// effect of write. A write whose outcome is unknown and that no read
	// saw is then left out of the check: it can always be linearized
	// last, where it changes nothing any call saw, so leaving it out does
	// not change the verdict, and it spares the checker a search over
	// where it might fit. Seen must answer true for every read the write
	// could have influenced (for a register: the read of its key that
	// returned its value). Without Seen every unknown write is kept.
	Seen func(write, in In, out Out) bool

	// Equal, if set, compares two states; by default they are compared
	// with reflect.DeepEqual.
	Equal func(a, b S) bool

	// Describe, if set, renders a call for the visualisation written when
	// the check fails.
	Describe func(in In, out Out, fsmErr error) string
}

// History records the calls a test makes to a cluster, from any node and
// any goroutine, with when each started and ended and how it ended, and
// checks that the answers are linearizable: that some order of the calls,
// each taking effect at one instant between its start and its end,
// explains every answer under the Model.
//
// Each call's outcome class (raftkit.Classify) decides what it means for
// the history, as the outcome contract says:
//
//   - applied, or rejected by the FSM: the call took effect once, between
//     its start and its end, with the answer it gave;
//   - unknown outcome: a write may take effect at any time after it
//     started, even after the test's last call, or never;
//   - not applied, invalid, not authorized, closed: the call had no effect
//     and is left out;
//   - a read that failed, whatever its class, changed nothing and is left
//     out.
//
// Getting that mapping wrong is the usual way a hand-written check passes
// a broken system, or fails a correct one under faults.
type History[S, In, Out any] struct {
	// VisualizationDir is where Check writes porcupine's page for a
	// history that is not linearizable; empty means os.TempDir().
	VisualizationDir string

	model Model[S, In, Out]
	start time.Time

	mu      sync.Mutex
	ops     []porcupine.Operation
	pending []porcupine.Operation // unknown outcomes: they return at the end
}

// call is what the history records of one call for porcupine.
type call[In, Out any] struct {
	in      In
	out     Out
	fsmErr  error
	unknown bool
	read    bool
}

// NewHistory returns an empty history to be checked against model.
func NewHistory[S, In, Out any](model Model[S, In, Out]) *History[S, In, Out] {
	return &History[S, In, Out]{model: model, start: time.Now()}
}

func (h *History[S, In, Out]) now() int64 { return int64(time.Since(h.start)) }

// Write makes a call that may change the state (usually an Apply of a
// command that encodes in), records it with client as the caller's
// number (one per goroutine, for the visualisation), and returns what fn
// returned.
func (h *History[S, In, Out]) Write(client int, in In, fn func() (Out, error)) (Out, error) {
	return h.record(client, in, fn, false)
}

// Read makes a call that does not change the state (usually a
// LinearizableRead followed by a read of the node's FSM), records it, and
// returns what fn returned.
func (h *History[S, In, Out]) Read(client int, in In, fn func() (Out, error)) (Out, error) {
	return h.record(client, in, fn, true)
}

func (h *History[S, In, Out]) record(client int, in In, fn func() (Out, error), read bool) (Out, error) {
	start := h.now()
	out, err := fn()
	end := h.now()
	c := call[In, Out]{in: in, out: out, read: read}
	switch class := raftkit.Classify(err); {
	case err == nil:
	case read:
		return out, err
	case class == raftkit.Rejected:
		c.fsmErr = err
	case class == raftkit.Unknown:
		var zero Out
		c.out, c.unknown = zero, true
	default:
		return out, err
	}
	op := porcupine.Operation{ClientId: client, Input: c, Call: start, Return: end}
	h.mu.Lock()
	if c.unknown {
		h.pending = append(h.pending, op)
	} else {
		h.ops = append(h.ops, op)
	}
	h.mu.Unlock()
	return out, err
}

// Counts returns how many calls the history holds with a known answer and
// with an unknown outcome.
func (h *History[S, In, Out]) Counts() (known, unknown int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ops), len(h.pending)
}

// NotLinearizableError is Check's answer for a history that no order of
// the calls explains. Visualization is the path of an HTML page that
// shows the longest order porcupine found and where it broke.
type NotLinearizableError struct {
	Calls         int
	Visualization string
}

func (e *NotLinearizableError) Error() string {
	where := "no visualisation could be written"
	if e.Visualization != "" {
		where = "see " + e.Visualization
	}
	return fmt.Sprintf("raftkittest: the history of %d calls is not linearizable (%s)", e.Calls, where)
}

// historyCheckTimeout bounds the search; a history it cannot decide in that time
// is reported as an error, never as a pass.
const historyCheckTimeout = 2 * time.Minute

// Check checks the history recorded so far. It returns nil if it is
// linearizable, a *NotLinearizableError if it is not, and an error if the
// search could not decide within two minutes.
func (h *History[S, In, Out]) Check() error {
	ops := h.operations()

	model := h.porcupineModel()
	result, info := porcupine.CheckOperationsVerbose(model, ops, historyCheckTimeout)
	switch result {
	case porcupine.Ok:
		return nil
	case porcupine.Illegal:
		dir := h.VisualizationDir
		if dir == "" {
			dir = os.TempDir()
		}
		path := filepath.Join(dir, fmt.Sprintf("raftkittest-history-%d.html", time.Now().UnixNano()))
		if err := porcupine.VisualizePath(model, info, path); err != nil {
			path = ""
		}
		return &NotLinearizableError{Calls: len(ops), Visualization: path}
	default:
		return fmt.Errorf("raftkittest: the linearizability check of %d calls did not finish within %s; record fewer calls, or set Model.Partition", len(ops), historyCheckTimeout)
	}
}

// operations is the history as porcupine checks it: unknown outcomes
// return after every other call, and, with Model.Seen, those no read saw
// are left out.
func (h *History[S, In, Out]) operations() []porcupine.Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	ops := append([]porcupine.Operation(nil), h.ops...)
	end := h.now()
	for _, op := range ops {
		end = max(end, op.Return+1)
	}
	for _, op := range h.pending {
		if h.model.Seen != nil && !h.seen(op.Input.(call[In, Out]).in) {
			continue
		}
		op.Return = end
		ops = append(ops, op)
	}
	return ops
}

// seen reports whether a completed read saw write (Model.Seen).
func (h *History[S, In, Out]) seen(write In) bool {
	for _, op := range h.ops {
		if c := op.Input.(call[In, Out]); c.read && h.model.Seen(write, c.in, c.out) {
			return true
		}
	}
	return false
}

// Checked returns how many calls Check would check: those with a known
// answer, and the unknown writes it keeps (see Model.Seen).
func (h *History[S, In, Out]) Checked() int { return len(h.operations()) }

// AssertLinearizable fails tb unless the history recorded so far is
// linearizable; the failure names the visualisation's file.
func (h *History[S, In, Out]) AssertLinearizable(tb testing.TB) {
	tb.Helper()
	if err := h.Check(); err != nil {
		tb.Fatal(err)
	}
}

func (h *History[S, In, Out]) porcupineModel() porcupine.Model {
	m := h.model
	pm := porcupine.Model{
		Init: func() any { return m.Init() },
		Step: func(state, input, _ any) (bool, any) {
			c := input.(call[In, Out])
			ok, next := m.Step(state.(S), c.in, c.out, c.fsmErr)
			return ok || c.unknown, next
		},
		DescribeOperation: func(input, _ any) string {
			c := input.(call[In, Out])
			if m.Describe != nil {
				if c.unknown {
					return m.Describe(c.in, c.out, nil) + " (outcome unknown)"
				}
				return m.Describe(c.in, c.out, c.fsmErr)
			}
			s := fmt.Sprintf("%+v -> %+v", c.in, c.out)
			switch {
			case c.unknown:
				s = fmt.Sprintf("%+v (outcome unknown)", c.in)
			case c.fsmErr != nil:
				s += " rejected: " + c.fsmErr.Error()
			}
			return s
		},
		DescribeState: func(state any) string { return strings.TrimSpace(fmt.Sprintf("%+v", state)) },
		Equal:         func(a, b any) bool { return reflect.DeepEqual(a, b) },
	}
	if m.Equal != nil {
		pm.Equal = func(a, b any) bool { return m.Equal(a.(S), b.(S)) }
	}
	if m.Partition != nil {
		pm.Partition = func(history []porcupine.Operation) [][]porcupine.Operation {
			parts := map[string]int{}
			var out [][]porcupine.Operation
			for _, op := range history {
				k := m.Partition(op.Input.(call[In, Out]).in)
				i, ok := parts[k]
				if !ok {
					i = len(out)
					parts[k] = i
					out = append(out, nil)
				}
				out[i] = append(out[i], op)
			}
			return out
		}
	}
	return pm
}
