package raftkittest

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The model must reject what a broken store would do, or the chaos test
// proves nothing.
func TestKVModelRejectsStaleAndLostReads(t *testing.T) {
	put := func(key, v string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: kvInput{Op: opPut, Key: key, Value: v}, Output: kvOutput{}, Call: call, Return: ret}
	}
	get := func(key, v string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: 1, Input: kvInput{Op: opGet, Key: key}, Output: kvOutput{Value: v}, Call: call, Return: ret}
	}
	cases := []struct {
		name    string
		history []porcupine.Operation
		want    porcupine.CheckResult
	}{
		{"read after write", []porcupine.Operation{put("a", "1", 0, 10), get("a", "1", 20, 30)}, porcupine.Ok},
		{"concurrent read may miss", []porcupine.Operation{put("a", "1", 0, 10), get("a", "", 5, 30)}, porcupine.Ok},
		{"acknowledged write lost", []porcupine.Operation{put("a", "1", 0, 10), get("a", "", 20, 30)}, porcupine.Illegal},
		{"stale read", []porcupine.Operation{put("a", "1", 0, 10), put("a", "2", 20, 30), get("a", "1", 40, 50)}, porcupine.Illegal},
		{"keys are separate", []porcupine.Operation{put("a", "1", 0, 10), get("b", "", 20, 30)}, porcupine.Ok},
		{"unknown write may land late", []porcupine.Operation{put("a", "1", 0, 100), get("a", "", 20, 30), get("a", "1", 40, 50)}, porcupine.Ok},
		{"read cannot go back", []porcupine.Operation{put("a", "1", 0, 100), get("a", "1", 20, 30), get("a", "", 40, 50)}, porcupine.Illegal},
		{"read of a value never written", []porcupine.Operation{put("a", "1", 0, 10), get("a", "2", 20, 30)}, porcupine.Illegal},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := porcupine.CheckOperationsTimeout(kvModel, tc.history, 10*time.Second); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestRecorderPutsUnknownWritesAtTheEnd(t *testing.T) {
	r := newRecorder()
	call := r.now()
	r.unknown(0, kvInput{Op: opPut, Key: "a", Value: "1"}, call)
	r.unknown(0, kvInput{Op: opPut, Key: "a", Value: "never read"}, call)
	r.done(1, kvInput{Op: opGet, Key: "a"}, kvOutput{Value: "1"}, r.now())
	h := r.history()
	if len(h) != 2 {
		t.Fatalf("history has %d operations, want 2 (the unknown write nobody read is left out)", len(h))
	}
	var unknown, read porcupine.Operation
	for _, op := range h {
		if op.Input.(kvInput).Op == opPut {
			unknown = op
		} else {
			read = op
		}
	}
	if unknown.Return <= read.Return || unknown.Call != call {
		t.Fatalf("unknown write spans [%d, %d], read returned at %d: want the write open past every return", unknown.Call, unknown.Return, read.Return)
	}
}
