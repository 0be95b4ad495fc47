// Package testhook carries the few entry points of package raftkit that
// its test harness (raftkittest) and benchmark (cmd/raftkit-bench) need
// and that raftkit does not export.
// Package raftkit fills them in when it is initialised.
package testhook

// Crash stops a *raftkit.RaftNode as a killed process would: raft stops at
// once, with no leadership handover, then the node releases everything
// else as Close does. Its log, term, vote and snapshots stay in its
// storage. It returns Close's error.
var Crash func(node any) error
