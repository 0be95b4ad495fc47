//go:build !linux

package raftkit

import "time"

var leaseClockBase = time.Now()

// leaseClock returns the monotonic time since the package started, in
// nanoseconds.
func leaseClock() int64 { return int64(time.Since(leaseClockBase)) }
