package raftkit

import (
	"github.com/hashicorp/raft"
	"github.com/raftkit/raftkit/internal/store"
)

// MemStorage is the state of an in-memory node (Config.Storage): its log,
// stable store and snapshots. Giving a new node the MemStorage of a closed
// one restarts it with the state it had, as after a process crash. One
// MemStorage must not be used by two running nodes at once.
type MemStorage struct {
	mem store.Memory
}

// NewMemStorage returns empty in-memory storage.
func NewMemStorage() *MemStorage {
	return &MemStorage{mem: store.Memory{Logs: raft.NewInmemStore(), Snaps: &store.MemSnapshots{}}}
}
