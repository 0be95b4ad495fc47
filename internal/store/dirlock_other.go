//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package store

// dirLock is a no-op where raftkit has no file lock: only the check of
// wal-meta.db's own lock at open stands between two nodes on one Dir.
type dirLock struct{}

func lockDir(string) (*dirLock, error) { return &dirLock{}, nil }

func (l *dirLock) release() error { return nil }
