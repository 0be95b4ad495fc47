package raftkit

// The root package's tests run nodes on both log stores, so they link
// raft-wal in as an application would. Package walstore imports only
// internal/store, never this package, so this in-package test file can
// import it.
import _ "github.com/raftkit/raftkit/walstore"
