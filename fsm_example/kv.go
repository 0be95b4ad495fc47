// Package fsmexample is raftkit's reference state machine: a replicated
// key-value store with set, delete, compare-and-set and get commands.
//
// It shows what a raft.FSM for raftkit needs: commands encoded as bytes
// (Set, Delete, CompareAndSet, Get build them), an Apply that never panics
// on a bad command but returns an error the caller sees, reads that are safe
// while raft applies and restores, and a versioned snapshot format. It also
// implements raft.BatchingFSM.
//
// Responses of Apply (as returned by raftkit's RaftNode.Apply):
//
//	Set            nil
//	Delete         bool: whether the key existed
//	CompareAndSet  bool: whether the value was swapped
//	Get            []byte: the value, nil when the key is absent
//	bad command    error
package fsmexample

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/snapshot"
)

// Command opcodes: the first byte of every command.
const (
	opSet    byte = 1
	opDelete byte = 2
	opCAS    byte = 3
	opGet    byte = 4
)

// snapshotVersion is the first byte of every snapshot this package writes.
const snapshotVersion byte = 1

// MaxKeyLen and MaxValueLen bound what one command may carry, so a damaged
// or hostile command cannot make Apply allocate without limit.
const (
	MaxKeyLen   = 64 << 10
	MaxValueLen = 16 << 20
)

// ErrBadCommand is matched by the error Apply returns for a command these
// helpers did not build (unknown opcode, truncated, too large).
var ErrBadCommand = errors.New("fsmexample: bad command")

// Errors lists the errors that Store's Apply returns, for
// raftkit.Config.FSMErrors: with it, errors.Is(err, ErrBadCommand) holds
// for Apply's error on every node.
var Errors = []error{ErrBadCommand}

// Set returns a command that sets key to value.
func Set(key string, value []byte) []byte {
	return encode(opSet, key, value, nil, false)
}

// Delete returns a command that removes key.
func Delete(key string) []byte {
	return encode(opDelete, key, nil, nil, false)
}

// CompareAndSet returns a command that sets key to value only if its
// current value equals old; with old == nil, only if key is absent.
func CompareAndSet(key string, old, value []byte) []byte {
	return encode(opCAS, key, value, old, old != nil)
}

// Get returns a command that reads key through the log: its response is
// the value at the command's place in the log (a linearizable read that
// costs a write).
func Get(key string) []byte {
	return encode(opGet, key, nil, nil, false)
}

// encode lays out: op, key, value, and for CAS a presence flag and old.
func encode(op byte, key string, value, old []byte, hasOld bool) []byte {
	b := make([]byte, 0, 1+3*binary.MaxVarintLen32+len(key)+len(value)+len(old)+1)
	b = append(b, op)
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	switch op {
	case opSet:
		b = binary.AppendUvarint(b, uint64(len(value)))
		b = append(b, value...)
	case opCAS:
		b = binary.AppendUvarint(b, uint64(len(value)))
		b = append(b, value...)
		if hasOld {
			b = append(b, 1)
			b = binary.AppendUvarint(b, uint64(len(old)))
			b = append(b, old...)
		} else {
			b = append(b, 0)
		}
	}
	return b
}

type command struct {
	op     byte
	key    string
	value  []byte
	old    []byte
	hasOld bool
}

// decode parses a command; the slices it returns are copies.
func decode(b []byte) (command, error) {
	var c command
	if len(b) == 0 {
		return c, fmt.Errorf("%w: empty", ErrBadCommand)
	}
	c.op = b[0]
	r := b[1:]
	field := func(name string, limit int) ([]byte, error) {
		n, k := binary.Uvarint(r)
		if k <= 0 || n > uint64(limit) || n > uint64(len(r)-k) {
			return nil, fmt.Errorf("%w: %s length is missing, too large or past the end", ErrBadCommand, name)
		}
		v := append([]byte(nil), r[k:k+int(n)]...)
		r = r[k+int(n):]
		return v, nil
	}
	switch c.op {
	case opSet, opDelete, opCAS, opGet:
	default:
		return c, fmt.Errorf("%w: unknown opcode %d", ErrBadCommand, c.op)
	}
	key, err := field("key", MaxKeyLen)
	if err != nil {
		return c, err
	}
	c.key = string(key)
	if c.op == opSet || c.op == opCAS {
		if c.value, err = field("value", MaxValueLen); err != nil {
			return c, err
		}
	}
	if c.op == opCAS {
		if len(r) == 0 {
			return c, fmt.Errorf("%w: compare-and-set lacks its old-value flag", ErrBadCommand)
		}
		c.hasOld, r = r[0] == 1, r[1:]
		if c.hasOld {
			if c.old, err = field("old value", MaxValueLen); err != nil {
				return c, err
			}
		}
	}
	if len(r) != 0 {
		return c, fmt.Errorf("%w: %d trailing bytes", ErrBadCommand, len(r))
	}
	return c, nil
}

// Store is the key-value FSM. Its read methods are safe to call while raft
// applies commands and restores snapshots. The zero value is not usable;
// call New.
type Store struct {
	mu   sync.RWMutex
	data map[string][]byte
}

// New returns an empty store.
func New() *Store { return &Store{data: map[string][]byte{}} }

var (
	_ raft.FSM         = (*Store)(nil)
	_ raft.BatchingFSM = (*Store)(nil)
)

// Apply applies one committed command. It returns the response documented
// in the package comment, or an error matching ErrBadCommand.
func (s *Store) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	c, err := decode(l.Data)
	if err != nil {
		return fmt.Errorf("at log index %d: %w", l.Index, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applyLocked(c)
}

// ApplyBatch applies several committed commands under one lock.
func (s *Store) ApplyBatch(logs []*raft.Log) []any {
	cmds := make([]command, len(logs))
	out := make([]any, len(logs))
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		c, err := decode(l.Data)
		if err != nil {
			out[i] = fmt.Errorf("at log index %d: %w", l.Index, err)
			continue
		}
		cmds[i] = c
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, c := range cmds {
		if c.op != 0 {
			out[i] = s.applyLocked(c)
		}
	}
	return out
}

func (s *Store) applyLocked(c command) any {
	switch c.op {
	case opSet:
		s.data[c.key] = c.value
		return nil
	case opDelete:
		_, ok := s.data[c.key]
		delete(s.data, c.key)
		return ok
	case opCAS:
		cur, ok := s.data[c.key]
		if ok != c.hasOld || (ok && string(cur) != string(c.old)) {
			return false
		}
		s.data[c.key] = c.value
		return true
	case opGet:
		if v, ok := s.data[c.key]; ok {
			return append([]byte(nil), v...)
		}
		return []byte(nil)
	}
	return fmt.Errorf("%w: unknown opcode %d", ErrBadCommand, c.op)
}

// Get returns key's value in this node's local state (a stale read unless
// preceded by a read barrier such as raftkit's LinearizableRead).
func (s *Store) Get(key string) ([]byte, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.data[key]
	if !ok {
		return nil, false
	}
	return append([]byte(nil), v...), true
}

// Len returns the number of keys.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.data)
}

// All returns a copy of the whole state.
func (s *Store) All() map[string][]byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string][]byte, len(s.data))
	for k, v := range s.data {
		out[k] = append([]byte(nil), v...)
	}
	return out
}

// Snapshot captures the state. Values are never modified in place, so a
// shallow copy of the map is a consistent, cheap point-in-time view, which
// raft persists later while commands go on.
func (s *Store) Snapshot() (raft.FSMSnapshot, error) {
	s.mu.RLock()
	data := maps.Clone(s.data)
	s.mu.RUnlock()
	return snapshot.Func(func(w io.Writer) error {
		if err := writeSnapshot(w, data); err != nil {
			return fmt.Errorf("fsmexample: write snapshot: %w", err)
		}
		return nil
	}), nil
}

// Restore replaces the state with a snapshot written by writeSnapshot. On error
// the previous state is kept.
func (s *Store) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := readSnapshot(bufio.NewReader(rc))
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.data = data
	s.mu.Unlock()
	return nil
}

// writeSnapshot writes: version byte, uvarint count, then (key, value)
// pairs, each a uvarint length and bytes.
func writeSnapshot(sink io.Writer, data map[string][]byte) error {
	w := bufio.NewWriter(sink)
	if err := w.WriteByte(snapshotVersion); err != nil {
		return err
	}
	var buf [binary.MaxVarintLen64]byte
	put := func(b []byte) error {
		if _, err := w.Write(buf[:binary.PutUvarint(buf[:], uint64(len(b)))]); err != nil {
			return err
		}
		_, err := w.Write(b)
		return err
	}
	if _, err := w.Write(buf[:binary.PutUvarint(buf[:], uint64(len(data)))]); err != nil {
		return err
	}
	for k, v := range data {
		if err := put([]byte(k)); err != nil {
			return err
		}
		if err := put(v); err != nil {
			return err
		}
	}
	return w.Flush()
}

func readSnapshot(r *bufio.Reader) (map[string][]byte, error) {
	v, err := r.ReadByte()
	if err != nil {
		return nil, fmt.Errorf("fsmexample: read snapshot version: %w", err)
	}
	if v != snapshotVersion {
		return nil, fmt.Errorf("fsmexample: snapshot version %d is not supported (want %d)", v, snapshotVersion)
	}
	count, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, fmt.Errorf("fsmexample: read snapshot entry count: %w", err)
	}
	read := func(limit int) ([]byte, error) {
		n, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, err
		}
		if n > uint64(limit) {
			return nil, fmt.Errorf("length %d exceeds the limit %d", n, limit)
		}
		b := make([]byte, n)
		_, err = io.ReadFull(r, b)
		return b, err
	}
	data := make(map[string][]byte, min(count, 1<<16))
	for i := uint64(0); i < count; i++ {
		k, err := read(MaxKeyLen)
		if err != nil {
			return nil, fmt.Errorf("fsmexample: read snapshot key %d of %d: %w", i+1, count, err)
		}
		v, err := read(MaxValueLen)
		if err != nil {
			return nil, fmt.Errorf("fsmexample: read snapshot value %d of %d: %w", i+1, count, err)
		}
		data[string(k)] = v
	}
	if _, err := r.ReadByte(); err != io.EOF {
		return nil, fmt.Errorf("fsmexample: snapshot has data after its %d entries", count)
	}
	return data, nil
}
