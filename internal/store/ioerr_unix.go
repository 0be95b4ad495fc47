//go:build unix

package store

import (
	"errors"
	"syscall"
)

// isIOError reports whether err is the disk's (full, failing, read-only,
// over quota) rather than a sign of damaged files.
func isIOError(err error) bool {
	for _, e := range []syscall.Errno{syscall.ENOSPC, syscall.EIO, syscall.EROFS, syscall.EDQUOT} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
