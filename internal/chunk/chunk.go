// Package chunk is how raftkit puts a command larger than Size into the
// raft log: as consecutive entries of at most Size bytes (its chunks), each
// with a header in raft.Log.Extensions. It owns the header format, the
// reassembly that hands an FSM each command whole (Assembler), and the
// pacing of a leader's submission by what its log store has taken
// (Stored). The leader's submission itself, which needs raft, is package
// raftkit's.
//
// Why chunks: a follower decodes every entry inside raft's AppendEntries
// requests, and hashicorp/raft's msgpack decoding grows a byte slice
// longer than 256 KiB in 256 KiB steps, copying what it has read at each
// step, so one large entry costs the square of its size; a chunk decodes
// with one allocation.
//
// The rule that reassembles chunks depends only on the log, so every node
// agrees on it: a chunk with index 0 starts a sequence; a chunk continues
// it only if it is the next one of the same sequence and term; anything
// else in between (another command, a configuration entry, an abort
// entry) drops the sequence, and its final chunk then answers
// ErrIncomplete: the command was not applied.
//
// It must never import package raftkit or another of raftkit's internal
// packages.
package chunk

import (
	"encoding/binary"
	"errors"
	"strings"
)

// Size is the largest command raftkit submits as one log entry, and the
// size of every chunk of a larger command but its last: the largest
// []byte that go-msgpack decodes with a single allocation. It is part of
// the log's format (magic names the version).
const Size = 256 << 10

// MaxTotal bounds a chunked command's length (package raftkit's
// MaxCommandSizeLimit).
const MaxTotal = 64<<20 - 4096

// magic opens every chunk header: raftkit's chunk format, version 1.
const magic = "rkc1"

// headerLen is a chunk header's length: magic, flags, sequence id, index,
// count, total length.
const headerLen = len(magic) + 1 + 8 + 4 + 4 + 8

// flagAbort marks an abort entry: it carries no data and drops the
// pending sequence, if any. A new leader submits one when its FSM holds a
// sequence that an earlier leader left unfinished.
const flagAbort = 1

var (
	// ErrIncomplete is the FSM's response to a chunk that does not
	// continue the pending sequence: the command it belongs to was not
	// applied (an entry came between its chunks).
	ErrIncomplete = errors.New("raftkit: a chunked command was interrupted by another log entry and not applied")
	// ErrInProgress refuses a snapshot while the FSM holds part of a
	// chunked command: the snapshot would cover chunks that the user's FSM
	// has not seen. raft reports it formatted with %v, so callers match
	// its text (see IsInProgress).
	ErrInProgress = errors.New("raftkit: snapshot deferred: a chunked command is being applied")
	// ErrBadHeader is returned by ParseHeader for Extensions that open
	// with the magic but are not a valid header.
	ErrBadHeader = errors.New("raftkit: malformed chunk header")
)

// IsInProgress reports whether err is a snapshot refused by ErrInProgress.
// raft passes the FSM's error on formatted with %v, so only its text is
// left to match.
func IsInProgress(err error) bool {
	return err != nil && strings.Contains(err.Error(), ErrInProgress.Error())
}

// Header describes one chunk of a command: chunk Index of Count, the whole
// command being Total bytes long, or an abort entry.
type Header struct {
	Abort bool
	ID    uint64 // the sequence, unique per node
	Index uint32
	Count uint32
	Total uint64
}

// Count is how many chunks a command of size bytes takes.
func Count(size int) int { return (size + Size - 1) / Size }

// Encode returns h as Extensions.
func (h Header) Encode() []byte {
	b := make([]byte, headerLen)
	copy(b, magic)
	p := len(magic)
	if h.Abort {
		b[p] = flagAbort
	}
	p++
	binary.BigEndian.PutUint64(b[p:], h.ID)
	binary.BigEndian.PutUint32(b[p+8:], h.Index)
	binary.BigEndian.PutUint32(b[p+12:], h.Count)
	binary.BigEndian.PutUint64(b[p+16:], h.Total)
	return b
}

// Is reports whether ext is (meant to be) a chunk header: whether it opens
// with the magic. Other Extensions belong to whoever wrote the entry
// through raftkit's Raft() escape hatch and are passed through.
func Is(ext []byte) bool {
	return len(ext) >= len(magic) && string(ext[:len(magic)]) == magic
}

// ParseHeader reads a header that Encode wrote, and rejects anything else:
// a wrong length or flag, an abort header with other fields set, a count
// of 0, an index outside the count, a total over MaxTotal or one that
// count chunks of Size cannot hold exactly (every chunk but the last
// full, the last not empty).
func ParseHeader(ext []byte) (Header, error) {
	var h Header
	if len(ext) != headerLen || !Is(ext) {
		return h, ErrBadHeader
	}
	p := len(magic)
	flags := ext[p]
	p++
	h.ID = binary.BigEndian.Uint64(ext[p:])
	h.Index = binary.BigEndian.Uint32(ext[p+8:])
	h.Count = binary.BigEndian.Uint32(ext[p+12:])
	h.Total = binary.BigEndian.Uint64(ext[p+16:])
	switch {
	case flags == flagAbort:
		if h.ID != 0 || h.Index != 0 || h.Count != 0 || h.Total != 0 {
			return Header{}, ErrBadHeader
		}
		h.Abort = true
		return h, nil
	case flags != 0,
		h.Count == 0,
		h.Index >= h.Count,
		h.Total > MaxTotal,
		h.Total <= uint64(h.Count-1)*Size,
		h.Total > uint64(h.Count)*Size:
		return Header{}, ErrBadHeader
	}
	return h, nil
}

// Len is the length chunk h.Index must have.
func (h Header) Len() int {
	return int(min(uint64(Size), h.Total-uint64(h.Index)*Size))
}
