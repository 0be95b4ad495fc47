package main

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// stressResult is what one stress run measured.
type stressResult struct {
	timing            string
	writesOK, failed  int64
	unplannedChanges  uint64          // term increases while no node was killed
	failovers         []time.Duration // until a survivor reports that it leads
	firstWrites       []time.Duration // until a write through a survivor succeeds
	medianFailover    time.Duration
	medianFirstWrite  time.Duration
	largestValueBytes int
}

// stress saturates the machine (one busy-looping process per CPU, and a
// goroutine here that allocates and drops 4 MiB buffers), writes values of
// 1 KiB up to the largest kvserver accepts through every node for steady,
// counting elections, then kills the leader with SIGKILL failovers times,
// timing until a write succeeds again, and restarts it.
func stress(o options, timing string, steady time.Duration, failovers int, out io.Writer) (stressResult, error) {
	r := stressResult{timing: timing}
	kvserver, _, err := buildTools(o.dir)
	if err != nil {
		return r, err
	}
	if o.kvserver != "" {
		kvserver = o.kvserver
	}
	extra := []string{"-timing", timing, "-max-command-size", fmt.Sprint(o.maxCommand)}
	c, err := startCluster(kvserver, "", filepath.Join(o.dir, "stress-"+timing), extra)
	if err != nil {
		return r, err
	}
	defer c.stop()
	c.maxValue = o.maxCommand - len(fsmexample.Set("s-0-000", nil))
	r.largestValueBytes = c.maxValue

	stopLoad := make(chan struct{})
	var load sync.WaitGroup
	for i := 0; i < runtime.NumCPU(); i++ {
		spin := exec.Command("sh", "-c", "while :; do :; done")
		if err := spin.Start(); err != nil {
			return r, err
		}
		defer func() { spin.Process.Kill(); spin.Wait() }()
	}
	load.Add(1)
	go func() {
		defer load.Done()
		var keep [][]byte
		for i := 0; ; i++ {
			select {
			case <-stopLoad:
				return
			default:
			}
			b := make([]byte, 4<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = byte(i)
			}
			keep = append(keep, b)
			if len(keep) > 8 {
				keep = keep[1:]
			}
		}
	}()

	// Writers: values from 1 KiB to the largest, log-uniformly, each
	// through a node picked at random.
	var down atomic.Int32 // index+1 of the killed node, 0 if none
	var ok, failed atomic.Int64
	for w := 0; w < 4; w++ {
		load.Add(1)
		go func() {
			defer load.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 13))
			for i := 0; ; i++ {
				select {
				case <-stopLoad:
					return
				default:
				}
				n := rng.IntN(len(c.nodes))
				if int(down.Load()) == n+1 {
					continue
				}
				size := int(math.Exp(math.Log(1024) + rng.Float64()*(math.Log(float64(c.maxValue))-math.Log(1024))))
				if err := c.put(c.nodes[n], fmt.Sprintf("s-%d-%03d", w, i%1000), make([]byte, size)); err != nil {
					failed.Add(1)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	defer func() { close(stopLoad); load.Wait() }()

	startTerm, _ := c.maxTerm()
	time.Sleep(steady)
	endTerm, _ := c.maxTerm()
	r.unplannedChanges = endTerm - startTerm
	fmt.Fprintf(out, "stress %s: %s of writes, %d ok, %d failed, %d elections without a fault\n", timing, steady, ok.Load(), failed.Load(), r.unplannedChanges)

	for i := 0; i < failovers; i++ {
		l, err := c.waitLeader(30 * time.Second)
		if err != nil {
			return r, err
		}
		victim := c.nodes[l]
		down.Store(int32(l + 1))
		killed := time.Now()
		c.kill(victim)
		// Failover ends when a survivor reports that it leads; the first
		// small write through a survivor that succeeds comes after.
		elected := false
		for !elected {
			for j, n := range c.nodes {
				if st, err := c.status(n); j != l && err == nil && st.State == "Leader" {
					elected = true
				}
			}
			if time.Since(killed) > 30*time.Second {
				return r, fmt.Errorf("no leader 30 s after killing the leader")
			}
			if !elected {
				time.Sleep(5 * time.Millisecond)
			}
		}
		r.failovers = append(r.failovers, time.Since(killed))
		survivor := c.nodes[(l+1)%len(c.nodes)]
		for c.put(survivor, "failover", []byte("x")) != nil {
			if time.Since(killed) > 30*time.Second {
				return r, fmt.Errorf("no write accepted 30 s after killing the leader")
			}
			time.Sleep(5 * time.Millisecond)
		}
		r.firstWrites = append(r.firstWrites, time.Since(killed))
		if err := c.start(victim); err != nil {
			return r, err
		}
		down.Store(0)
		// The next crash comes once the restarted node has caught up, so
		// that each failover has one crash to recover from.
		var target uint64
		for _, n := range c.nodes {
			if st, err := c.status(n); err == nil {
				target = max(target, st.CommitIndex)
			}
		}
		for {
			if st, err := c.status(victim); err == nil && st.AppliedIndex >= target {
				break
			}
			if time.Since(killed) > 2*time.Minute {
				return r, fmt.Errorf("restarted node did not catch up with index %d in 2 minutes", target)
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(time.Second)
	}
	r.writesOK, r.failed = ok.Load(), failed.Load()
	r.medianFailover, r.medianFirstWrite = medianOf(r.failovers), medianOf(r.firstWrites)
	fmt.Fprintf(out, "stress %s: new leader after %v, median %s; first write after %v, median %s\n", timing,
		rounded(r.failovers), r.medianFailover.Round(time.Millisecond), rounded(r.firstWrites), r.medianFirstWrite.Round(time.Millisecond))
	return r, nil
}

func medianOf(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func rounded(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
