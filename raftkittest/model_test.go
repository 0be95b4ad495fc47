package raftkittest

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The linearizability model: a key-value register per key, so porcupine
// checks each key on its own. Values are unique per write, so a read
// names the one write it saw.

type kvOp byte

const (
	opPut kvOp = iota
	opGet
)

type kvInput struct {
	Op    kvOp
	Key   string
	Value string // for puts
}

type kvOutput struct {
	Value string // for gets: "" when the key is absent
}

var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(kvInput).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in := input.(kvInput)
		if in.Op == opPut {
			return true, in.Value
		}
		return output.(kvOutput).Value == state.(string), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(kvInput)
		if in.Op == opPut {
			return fmt.Sprintf("put(%s, %s)", in.Key, in.Value)
		}
		return fmt.Sprintf("get(%s) -> %q", in.Key, output.(kvOutput).Value)
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%q", state) },
}

// kvHistory is a history of calls to fsmexample's store, checked against
// registerModel: what the chaos test records.
type kvHistory = History[string, kvInput, kvOutput]

// registerModel is kvModel as a raftkittest Model: a register per key.
var registerModel = Model[string, kvInput, kvOutput]{
	Init:      func() string { return "" },
	Partition: func(in kvInput) string { return in.Key },
	Step: func(state string, in kvInput, out kvOutput, _ error) (bool, string) {
		if in.Op == opPut {
			return true, in.Value
		}
		return out.Value == state, state
	},
	Seen: func(write, in kvInput, out kvOutput) bool {
		return in.Op == opGet && in.Key == write.Key && out.Value == write.Value
	},
	Describe: func(in kvInput, out kvOutput, _ error) string {
		return kvModel.DescribeOperation(in, out)
	},
}

// recorder collects a concurrent history. Times are nanoseconds since the
// recorder started.
type recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	// pending are writes whose outcome is unknown: they may take effect at
	// any time after their call, so they return at the end of the history.
	pending []porcupine.Operation
}

func newRecorder() *recorder { return &recorder{start: time.Now()} }

func (r *recorder) now() int64 { return int64(time.Since(r.start)) }

// done records an operation that completed with a known result.
func (r *recorder) done(client int, in kvInput, out kvOutput, call int64) {
	ret := r.now()
	r.mu.Lock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret})
	r.mu.Unlock()
}

// unknown records a write that may or may not have taken effect.
func (r *recorder) unknown(client int, in kvInput, call int64) {
	r.mu.Lock()
	r.pending = append(r.pending, porcupine.Operation{ClientId: client, Input: in, Output: kvOutput{}, Call: call})
	r.mu.Unlock()
}

// history returns every operation, unknown writes returning after all
// others. Unknown writes whose value no read returned are left out: such a
// write can always be linearized last (it returns at the end), where it
// changes nothing any operation saw, so leaving it out does not change the
// verdict, and it spares the checker a search over where it might fit.
func (r *recorder) history() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	end := r.now()
	seen := map[[2]string]bool{}
	for _, op := range r.ops {
		end = max(end, op.Return+1)
		if in := op.Input.(kvInput); in.Op == opGet {
			seen[[2]string{in.Key, op.Output.(kvOutput).Value}] = true
		}
	}
	out := append([]porcupine.Operation(nil), r.ops...)
	for _, op := range r.pending {
		in := op.Input.(kvInput)
		if !seen[[2]string{in.Key, in.Value}] {
			continue
		}
		op.Return = end
		out = append(out, op)
	}
	return out
}

func (r *recorder) counts() (known, unknown int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ops), len(r.pending)
}

// saveVisualization writes porcupine's page of a recorder's failed history
// and returns its path.
func saveVisualization(t *testing.T, seed uint64, info porcupine.LinearizationInfo) string {
	dir := *chaosVizDir
	if dir == "" {
		dir = os.TempDir()
	}
	path := filepath.Join(dir, fmt.Sprintf("raftkit-chaos-seed%d-%s.html", seed, time.Now().Format("150405")))
	if err := porcupine.VisualizePath(kvModel, info, path); err != nil {
		t.Logf("could not save the visualization: %v", err)
		return "(not saved)"
	}
	t.Logf("porcupine visualization of seed %d: %s", seed, path)
	return path
}
