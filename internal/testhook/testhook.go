// Package testhook carries the few entry points of package raftkit that
// its test harness (raftkittest) and benchmark (tools/cmd/raftkit-bench)
// need and that raftkit does not export. Package raftkit fills them in
// when it is initialised. It must never import anything of raftkit's.
package testhook

// Crash stops a *raftkit.RaftNode as a killed process would: raft stops at
// once, with no leadership handover, then the node releases everything
// else as Close does. Its log, term, vote and snapshots stay in its
// storage. It returns Close's error.
var Crash func(node any) error

// AnnounceClose tells a *raftkit.RaftNode's peers that it is about to
// stop, as Close does first, so that they log their failures to reach it
// at Debug: raftkittest's Close announces every node, then crashes them
// all at once, quickly and quietly.
var AnnounceClose func(node any)
