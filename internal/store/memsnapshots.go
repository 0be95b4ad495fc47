package store

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
)

// MemSnapshots is an in-memory node's snapshot store (raftkit.MemStorage). It keeps the newest
// snapshot, like raft.InMemSnapshots, but behaves like the file store
// across a crash: raft's in-memory store makes a snapshot its latest as
// soon as it is created, so a node stopped while a snapshot was being
// written restarted from a partial one, and a slow local snapshot that
// finished after a newer snapshot from the leader replaced it, so that a
// restart began from the older snapshot whose log had been compacted away
// (raft then panics with "log not found"). Here a snapshot exists only
// once its sink is closed, and never replaces a newer one.
type MemSnapshots struct {
	mu     sync.Mutex
	latest *memSnapshot
	seq    uint64
}

type memSnapshot struct {
	meta raft.SnapshotMeta
	data []byte
}

func (s *MemSnapshots) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	if version != 1 {
		return nil, fmt.Errorf("raftkit: in-memory snapshots: unsupported snapshot version %d", version)
	}
	s.mu.Lock()
	s.seq++
	id := fmt.Sprintf("%d-%d-%d", term, index, s.seq)
	s.mu.Unlock()
	return &memSnapshotSink{store: s, snap: &memSnapshot{meta: raft.SnapshotMeta{
		Version: version, ID: id, Index: index, Term: term,
		Configuration: configuration, ConfigurationIndex: configurationIndex,
	}}}, nil
}

func (s *MemSnapshots) List() ([]*raft.SnapshotMeta, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.latest == nil {
		return nil, nil
	}
	meta := s.latest.meta
	return []*raft.SnapshotMeta{&meta}, nil
}

func (s *MemSnapshots) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.latest == nil || s.latest.meta.ID != id {
		return nil, nil, fmt.Errorf("raftkit: in-memory snapshot %s not found", id)
	}
	meta := s.latest.meta
	return &meta, io.NopCloser(bytes.NewReader(s.latest.data)), nil
}

// commit makes snap the latest unless a newer one is there already.
func (s *MemSnapshots) commit(snap *memSnapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.latest; l != nil && (l.meta.Term > snap.meta.Term || (l.meta.Term == snap.meta.Term && l.meta.Index > snap.meta.Index)) {
		return
	}
	s.latest = snap
}

type memSnapshotSink struct {
	store *MemSnapshots
	snap  *memSnapshot
	buf   bytes.Buffer
	done  bool
}

func (k *memSnapshotSink) ID() string                  { return k.snap.meta.ID }
func (k *memSnapshotSink) Write(p []byte) (int, error) { return k.buf.Write(p) }

func (k *memSnapshotSink) Close() error {
	if k.done {
		return nil
	}
	k.done = true
	k.snap.data = k.buf.Bytes()
	k.snap.meta.Size = int64(len(k.snap.data))
	k.store.commit(k.snap)
	return nil
}

func (k *memSnapshotSink) Cancel() error {
	k.done = true
	return nil
}
