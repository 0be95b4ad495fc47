package chunk

import (
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// Assembler reassembles chunked commands in log order, as an FSM wrapper
// sees them. Take, Drop and Pending run on raft's FSM goroutine only;
// PendingTerm and Started may be read from anywhere.
type Assembler struct {
	pending *sequence
	// pendingTerm is pending's term, 0 when none is pending: for the
	// leader's check for a sequence an earlier leader abandoned.
	pendingTerm atomic.Uint64
	// started receives a value (without blocking) whenever a sequence
	// starts: the leader then checks whether it must abort one.
	started chan struct{}
}

// sequence is the command being assembled.
type sequence struct {
	id    uint64
	term  uint64
	next  uint32 // the index of the chunk that continues it
	count uint32
	buf   []byte // the chunks so far; cap is the command's length
}

// NewAssembler returns an Assembler with no command pending.
func NewAssembler() *Assembler { return &Assembler{started: make(chan struct{}, 1)} }

// HasChunks reports whether logs hold a chunk entry.
func HasChunks(logs []*raft.Log) bool {
	for _, l := range logs {
		if l.Type == raft.LogCommand && Is(l.Extensions) {
			return true
		}
	}
	return false
}

// Pending reports whether part of a command is held.
func (a *Assembler) Pending() bool { return a.pending != nil }

// PendingTerm is the term of the command being assembled, 0 if none is.
func (a *Assembler) PendingTerm() uint64 { return a.pendingTerm.Load() }

// Started receives a value whenever a sequence starts.
func (a *Assembler) Started() <-chan struct{} { return a.started }

// Poke wakes whoever waits on Started, as a started sequence would.
func (a *Assembler) Poke() { Poke(a.started) }

// Take takes one chunk entry. It returns the whole command as one entry
// at the final chunk's index and term once l completes it; otherwise nil
// and l's response: nil for an abort entry or a chunk taken into a
// sequence, ErrIncomplete for a chunk that continues none.
func (a *Assembler) Take(l *raft.Log) (*raft.Log, any) {
	h, err := ParseHeader(l.Extensions)
	if err == nil && h.Abort && len(l.Data) == 0 {
		a.Drop()
		return nil, nil
	}
	if err != nil || h.Abort || len(l.Data) != h.Len() {
		a.Drop()
		return nil, ErrIncomplete
	}
	p := a.pending
	if h.Index == 0 {
		a.Drop()
		p = &sequence{id: h.ID, term: l.Term, count: h.Count, buf: make([]byte, 0, h.Total)}
		a.pending = p
		a.pendingTerm.Store(l.Term)
		Poke(a.started)
	} else if p == nil || p.id != h.ID || p.term != l.Term || p.next != h.Index ||
		p.count != h.Count || uint64(cap(p.buf)) != h.Total {
		a.Drop()
		return nil, ErrIncomplete
	}
	p.buf = append(p.buf, l.Data...)
	p.next++
	if p.next < p.count {
		return nil, nil
	}
	a.Drop()
	return &raft.Log{Index: l.Index, Term: l.Term, Type: raft.LogCommand, Data: p.buf, AppendedAt: l.AppendedAt}, nil
}

// Drop forgets the pending sequence.
func (a *Assembler) Drop() {
	if a.pending != nil {
		a.pending = nil
		a.pendingTerm.Store(0)
	}
}

// Poke sends on ch, a channel of capacity 1, unless a value waits there.
func Poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
