package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// largeSizes are the command sizes of the large scenario.
var largeSizes = []int{64 << 10, 1 << 20, 4 << 20, 16 << 20}

// largeBytes is about how many bytes the large scenario writes per size,
// in at least largeMinWrites commands.
const (
	largeBytes     = 32 << 20
	largeMinWrites = 3
)

// largeRun writes commands of each of largeSizes one after another on the
// leader of a cluster of kind v and reports MB/s, next to the disk's own
// speed for a write and fsync of a file of the same size in the same
// directory. Every node of the cluster writes each command to that disk,
// and in this process the three nodes share it. It also reports the Go
// heap per node after the writes: what the nodes keep of large entries.
//
// raftkit's columns run with MaxCommandSize at its limit, so that every
// size is measured: the default (1 MiB) refuses the larger ones.
func largeRun(o options, v clusterSpec, dir string, t *table) error {
	if v.kind == "raftkit" {
		v.maxCommand = raftkit.MaxCommandSizeLimit
		if !v.same {
			t.note(fmt.Sprintf("large: raftkit's columns run with Config.MaxCommandSize = %d (MaxCommandSizeLimit), so that every size is measured; the default, %d, refuses the larger ones", raftkit.MaxCommandSizeLimit, raftkit.DefaultMaxCommandSize))
		}
	}
	debug.FreeOSMemory()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	c, err := newCluster(v, dir)
	if err != nil {
		return err
	}
	defer c.closeAll()
	if _, err := startAll(c, command(0, 0, o.size), 30*time.Second); err != nil {
		return err
	}
	l, err := leaderOf(c, 10*time.Second)
	if err != nil {
		return err
	}
	sizes := o.largeSizes
	if sizes == nil {
		sizes = largeSizes
	}
	for _, size := range sizes {
		name := sizeName(size)
		disk, err := diskSpeed(dir, size, largeWrites(o, size))
		if err != nil {
			return err
		}
		t.addNum("large", name+": disk write+fsync MB/s", v.name, disk, higherBetter)
		// The FSM keeps one value per size: it stays small.
		cmd := fsmexample.Set(name, make([]byte, size-len(name)-8))
		var lat []time.Duration
		start := time.Now()
		var bytes int
		for i := 0; i < largeWrites(o, size); i++ {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			t0 := time.Now()
			err := c.applyLeader(ctx, l, cmd)
			cancel()
			if errors.Is(err, raftkit.ErrTooLarge) {
				t.note(fmt.Sprintf("%s large %s: skipped, over raftkit's MaxCommandSize (%v)", v.name, name, err))
				break
			}
			if err != nil {
				// Under load a large write can cost the leader its lease:
				// say so and go on with the next size and leader.
				t.note(fmt.Sprintf("%s large %s: write %d failed: %v", v.name, name, i, err))
				if l, err = leaderOf(c, 10*time.Second); err != nil {
					return err
				}
				break
			}
			lat = append(lat, time.Since(t0))
			bytes += len(cmd)
		}
		if len(lat) == 0 {
			continue
		}
		t.addNum("large", name+": MB/s", v.name, float64(bytes)/time.Since(start).Seconds()/1e6, higherBetter)
		t.addDur("large", name+": p50", v.name, median(lat), lowerBetter)
	}
	debug.FreeOSMemory()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	t.addNum("large", "Go heap per node after (MiB)", v.name, (float64(after.HeapInuse)-float64(before.HeapInuse))/3/(1<<20), lowerBetterNum)
	if o.memProfile != "" {
		return writeHeapProfile(fmt.Sprintf("%s.large.%s.%s", o.memProfile, v.kind+map[bool]string{true: "-same"}[v.same], filepath.Base(dir)))
	}
	return nil
}

func largeWrites(o options, size int) int {
	total := o.largeBytes
	if total == 0 {
		total = largeBytes
	}
	return max(largeMinWrites, total/size)
}

func sizeName(size int) string {
	if size >= 1<<20 {
		return fmt.Sprintf("%d MiB", size>>20)
	}
	return fmt.Sprintf("%d KiB", size>>10)
}

// diskSpeed writes and fsyncs n files of size bytes in dir, one after
// another, and returns MB/s.
func diskSpeed(dir string, size, n int) (float64, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	buf := make([]byte, size)
	name := filepath.Join(dir, "disk-speed")
	defer os.Remove(name)
	start := time.Now()
	for i := 0; i < n; i++ {
		f, err := os.Create(name)
		if err != nil {
			return 0, err
		}
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return 0, err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return 0, err
		}
		if err := f.Close(); err != nil {
			return 0, err
		}
	}
	return float64(size*n) / time.Since(start).Seconds() / 1e6, nil
}
