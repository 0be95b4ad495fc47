package raftkit

import "github.com/raftkit/raftkit/internal/testhook"

func init() {
	testhook.Crash = func(node any) error { return node.(*RaftNode).crash() }
}

// crash stops n as a killed process would: raft shuts down first, so a
// leader hands nothing over and stops sending heartbeats at once; then
// Close releases the rest, in its usual order (with raft already down it
// skips the handover). This is the one supported way to crash a node:
// shutting Raft() down from outside is not, since the node must own its
// raft's shutdown. raftkittest reaches it through internal/testhook.
func (n *RaftNode) crash() error {
	_ = n.raft.Shutdown().Error() // idempotent; Close reports raft's shutdown error
	return n.Close()
}
