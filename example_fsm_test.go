package raftkit_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit"
	"github.com/raftkit/raftkit/snapshot"
)

// counters is an application's own replicated state machine: named
// counters. A command is "NAME DELTA" as text; Apply answers with the
// counter's new value. Raft calls Apply, Snapshot and Restore; the
// application reads with Get.
type counters struct {
	mu       sync.Mutex
	values   map[string]int64
	restored bool // Restore was called: the state came from a snapshot
}

func newCounters() *counters { return &counters{values: map[string]int64{}} }

// add is the command that adds delta to counter name.
func add(name string, delta int64) []byte { return []byte(name + " " + strconv.FormatInt(delta, 10)) }

func (c *counters) Apply(l *raft.Log) any {
	name, delta, ok := strings.Cut(string(l.Data), " ")
	d, err := strconv.ParseInt(delta, 10, 64)
	if !ok || err != nil {
		return fmt.Errorf("bad command %q", l.Data) // the caller's Apply returns it
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.values[name] += d
	return c.values[name]
}

// Snapshot copies the state under the lock; raft writes it out later,
// while Apply goes on.
func (c *counters) Snapshot() (raft.FSMSnapshot, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	data, err := json.Marshal(c.values)
	if err != nil {
		return nil, err
	}
	return snapshot.Bytes(data), nil
}

// Restore replaces the whole state with a snapshot's.
func (c *counters) Restore(r io.ReadCloser) error {
	defer r.Close()
	values := map[string]int64{}
	if err := json.NewDecoder(r).Decode(&values); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.values, c.restored = values, true
	return nil
}

func (c *counters) Get(name string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.values[name]
}

// Restored reports whether the state came from a snapshot.
func (c *counters) Restored() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.restored
}

// Your own FSM (counters above: commands, Snapshot, Restore) on a 3-node
// in-memory cluster: writes through a follower, a linearizable read on
// another, and a fourth node that joins after a snapshot and receives the
// state through Restore.
func Example() {
	network := raftkit.NewMemNetwork()
	names := []string{"a", "b", "c"}
	// Keep no log behind snapshots, so that a new member must be sent one.
	noTrailingLogs := func(c *raft.Config) { c.TrailingLogs = 0 }
	var nodes []*raftkit.RaftNode
	var fsms []*counters
	for _, name := range names {
		fsm := newCounters()
		n, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Network: network, Addr: name, Peers: names, RaftConfig: noTrailingLogs}, fsm)
		if err != nil {
			fmt.Println(err)
			return
		}
		defer n.Close()
		nodes, fsms = append(nodes, n), append(fsms, fsm)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader, err := nodes[0].WaitForLeader(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	var followers []int
	for i, n := range nodes {
		if n.Addr() != leader {
			followers = append(followers, i)
		}
	}

	for _, delta := range []int64{1, 2, 3} {
		total, err := nodes[followers[0]].Apply(ctx, add("visits", delta))
		fmt.Println("visits after adding", delta, "=", total, err)
	}
	_, err = nodes[followers[0]].Apply(ctx, []byte("nonsense"))
	fmt.Println("the FSM's own error:", err)

	if err := nodes[followers[1]].LinearizableRead(ctx); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("read on another follower:", fsms[followers[1]].Get("visits"))

	for _, n := range nodes {
		if n.Addr() == leader {
			if err := n.Snapshot(ctx); err != nil {
				fmt.Println(err)
				return
			}
		}
	}
	fourth := newCounters()
	d, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Network: network, Addr: "d", Join: names, RaftConfig: noTrailingLogs}, fourth)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer d.Close()
	if err := d.LinearizableRead(ctx); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("fourth node:", fourth.Get("visits"), "restored from a snapshot:", fourth.Restored())
	// Output:
	// visits after adding 1 = 1 <nil>
	// visits after adding 2 = 3 <nil>
	// visits after adding 3 = 6 <nil>
	// the FSM's own error: bad command "nonsense"
	// read on another follower: 6
	// fourth node: 6 restored from a snapshot: true
}
