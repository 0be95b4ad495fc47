package store

import (
	"os"
	"path/filepath"
)

// mkdirDurable creates dir and any missing parents, and fsyncs the
// directory above each one it created, so that a power cut cannot take
// back a data directory that raftkit has already written to.
func mkdirDurable(dir string) error {
	var created []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || filepath.Dir(d) == d {
			break
		}
		created = append(created, d)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, d := range created {
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

// SyncDir fsyncs the directory dir, so that names created, renamed or
// removed in it survive a power cut.
func SyncDir(dir string) error { return syncDir(dir) }
