package main

// raft-wal is linked in by this file, apart from main.go: the
// rolling-upgrade test builds main.go alone in the previous release's tree,
// which has raft-wal built in and no package walstore.
import _ "github.com/raftkit/raftkit/walstore" // -store wal
