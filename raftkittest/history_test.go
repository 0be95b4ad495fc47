package raftkittest_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/raftkit/raftkit"
	"github.com/raftkit/raftkit/raftkittest"
)

var (
	errUnknownOutcome = fmt.Errorf("apply: %w", raftkit.ErrUnknownOutcome)
	errNotApplied     = fmt.Errorf("apply: %w", raftkit.ErrNotApplied)
)

func write(h *raftkittest.History[string, kvCall, string], v string, err error) {
	h.Write(0, kvCall{"k", v, true}, func() (string, error) { return "", err })
}

func read(h *raftkittest.History[string, kvCall, string], client int, v string, err error) {
	h.Read(client, kvCall{Key: "k"}, func() (string, error) { return v, err })
}

// Each outcome class means for the history what the contract says it
// means for the caller.
func TestHistoryMapsOutcomeClasses(t *testing.T) {
	for _, tc := range []struct {
		name         string
		record       func(h *raftkittest.History[string, kvCall, string])
		linearizable bool
	}{
		{"applied write then read", func(h *raftkittest.History[string, kvCall, string]) {
			write(h, "a", nil)
			read(h, 0, "a", nil)
		}, true},
		{"read of a value never written", func(h *raftkittest.History[string, kvCall, string]) {
			write(h, "a", nil)
			read(h, 0, "b", nil)
		}, false},
		// An unknown outcome may take effect after the call returned.
		{"unknown write seen later", func(h *raftkittest.History[string, kvCall, string]) {
			write(h, "a", errUnknownOutcome)
			read(h, 0, "", nil)
			read(h, 1, "a", nil)
		}, true},
		// ... or never.
		{"unknown write never seen", func(h *raftkittest.History[string, kvCall, string]) {
			write(h, "a", errUnknownOutcome)
			read(h, 0, "", nil)
		}, true},
		// ... but not before it was called.
		{"unknown write seen before its call", func(h *raftkittest.History[string, kvCall, string]) {
			read(h, 0, "a", nil)
			write(h, "a", errUnknownOutcome)
		}, false},
		// A not-applied write had no effect: reading its value is a bug.
		{"not-applied write seen", func(h *raftkittest.History[string, kvCall, string]) {
			write(h, "a", errNotApplied)
			read(h, 0, "a", nil)
		}, false},
		// A failed read saw nothing, whatever it returned.
		{"failed read", func(h *raftkittest.History[string, kvCall, string]) {
			write(h, "a", nil)
			read(h, 0, "garbage", errUnknownOutcome)
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := raftkittest.NewHistory(kvModel)
			tc.record(h)
			err := h.Check()
			var bad *raftkittest.NotLinearizableError
			if got := err == nil; got != tc.linearizable || (err != nil && !errors.As(err, &bad)) {
				t.Fatalf("Check: %v, want linearizable=%v", err, tc.linearizable)
			}
		})
	}
}

// A command the FSM rejected was applied: the model sees its error.
func TestHistoryPassesFSMErrorsToTheModel(t *testing.T) {
	var seen error
	model := raftkittest.Model[int, int, int]{
		Init: func() int { return 0 },
		Step: func(s, in, out int, fsmErr error) (bool, int) {
			if fsmErr != nil {
				seen = fsmErr
				return s+in < 0, s // rejected: would go below zero
			}
			return true, s + in
		},
	}
	h := raftkittest.NewHistory(model)
	h.Write(0, -5, func() (int, error) { return 0, &raftkit.FSMError{Message: "insufficient funds"} })
	if err := h.Check(); err != nil || seen == nil || seen.Error() != "insufficient funds" {
		t.Fatalf("Check: %v; the model saw %v", err, seen)
	}
	if known, unknown := h.Counts(); known != 1 || unknown != 0 {
		t.Fatalf("Counts %d, %d; want 1, 0", known, unknown)
	}
}
