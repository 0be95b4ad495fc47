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

// SkipCatchUp makes a *raftkit.RaftNode claim readiness without catching
// up: it is ready whenever it is a member with a known leader, however far
// behind. Only the tests that show readiness oracles failing use it.
var SkipCatchUp func(node any)

// AppliedThrough reports whether a *raftkit.RaftNode's FSM has applied
// every entry it is given up to index (entries that never reach the FSM,
// such as a leader's no-op, need not be): the test of "caught up" that
// readiness itself uses.
var AppliedThrough func(node any, index uint64) bool
