package raftkit

import (
	"time"

	"golang.org/x/sys/unix"
)

var leaseClockBase = time.Now()

// leaseClock returns CLOCK_BOOTTIME in nanoseconds: monotonic, and unlike
// CLOCK_MONOTONIC (Go's time.Since) it also counts time the machine was
// suspended, during which the rest of the cluster may have moved on. A
// kernel without it (before 2.6.39) fails every call alike, and gets the
// monotonic clock.
func leaseClock() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return int64(time.Since(leaseClockBase))
	}
	return ts.Nano()
}
