package store

import (
	"errors"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// failingStable fails every write after the first ok ones.
type failingStable struct {
	raft.StableStore
	ok int
}

var errInjected = errors.New("injected: power cut")

func (f *failingStable) Set(k, v []byte) error {
	if f.ok == 0 {
		return errInjected
	}
	f.ok--
	return f.StableStore.Set(k, v)
}

func (f *failingStable) SetUint64(k []byte, v uint64) error {
	if f.ok == 0 {
		return errInjected
	}
	f.ok--
	return f.StableStore.SetUint64(k, v)
}

// TestResetPoisonedTermIsSafeWhenInterrupted stops the reset after each of
// its writes: every state left behind must either still be poisoned (so
// that the next attempt repairs it) or have NoVote recorded in the reset
// term, never a sane term beside the old vote's candidate.
func TestResetPoisonedTermIsSafeWhenInterrupted(t *testing.T) {
	// The order of the writes is the same code for both stores; raft-wal
	// is linked only where walstore is imported, which this package's
	// tests must not do (see wal_test.go).
	kinds := []Kind{Bolt}
	if WALLinked() {
		kinds = append(kinds, WAL)
	}
	for _, kind := range kinds {
		for ok := 0; ok < 3; ok++ {
			dir := t.TempDir()
			s, err := Open(Options{Dir: dir, Kind: kind, SnapshotRetain: 1, Logger: hclog.NewNullLogger()})
			if err != nil {
				t.Fatal(err)
			}
			poison := uint64(MaxSaneTerm) + 7
			if err := errors.Join(s.Stable.SetUint64(KeyCurrentTerm, poison), s.Stable.SetUint64(KeyLastVoteTerm, poison),
				s.Stable.Set(KeyLastVoteCand, []byte("stranger")), s.Close()); err != nil {
				t.Fatal(err)
			}
			d, err := OpenStopped(dir, true)
			if err != nil {
				t.Fatal(err)
			}
			d.Stable = &failingStable{StableStore: d.Stable, ok: ok}
			if _, err := d.ResetPoisonedTerm(); !errors.Is(err, errInjected) {
				t.Fatalf("kind %d, %d writes: the reset returned %v, want the injected failure", kind, ok, err)
			}
			d.Close()
			d, err = OpenStopped(dir, true)
			if err != nil {
				t.Fatal(err)
			}
			v, err := d.Vote()
			if err != nil {
				t.Fatal(err)
			}
			poisoned := v.CurrentTerm > MaxSaneTerm || v.LastVoteTerm > MaxSaneTerm
			if !poisoned && v.LastVoteCand != NoVote {
				t.Fatalf("kind %d, interrupted after %d writes: term %d is sane but the vote is for %q in term %d",
					kind, ok, v.CurrentTerm, v.LastVoteCand, v.LastVoteTerm)
			}
			if r, err := d.ResetPoisonedTerm(); err != nil || r == nil {
				t.Fatalf("kind %d: the retry after %d writes returned %+v, %v; want a reset", kind, ok, r, err)
			}
			d.Close()
		}
	}
}
