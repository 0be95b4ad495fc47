// Command cluster demonstrates raftkit: three nodes on 127.0.0.1 over real
// TCP with BoltDB files on disk elect a leader, replicate writes, survive
// the leader stopping, and bring the stopped node back up to date.
//
//	go run ./examples/cluster [-dir DIR] [-keys N] [-v]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

func main() {
	dir := flag.String("dir", "", "data directory (default: a temporary one, removed at exit)")
	keys := flag.Int("keys", 10, "keys to write in each phase")
	verbose := flag.Bool("v", false, "show raft's own log lines")
	flag.Parse()
	if err := run(*dir, *keys, *verbose); err != nil {
		log.Fatal(err)
	}
}

type member struct {
	addr string
	dir  string
	node *raftkit.RaftNode
	kv   *fsmexample.Store
}

func run(dir string, keys int, verbose bool) error {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "raftkit-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	var logger hclog.Logger
	if verbose {
		logger = hclog.New(&hclog.LoggerOptions{Name: "demo", Level: hclog.Info})
	}
	addrs, err := freeAddrs(3)
	if err != nil {
		return err
	}
	members := make([]*member, 3)
	start := func(i int) error {
		m := members[i]
		m.kv = fsmexample.New()
		m.node, err = raftkit.NewRaftNode(raftkit.Config{
			Addr:   m.addr,
			Dir:    m.dir,
			Peers:  addrs,
			Logger: logger,
		}, m.kv)
		return err
	}
	fmt.Printf("Starting 3 nodes, data under %s\n", dir)
	for i, a := range addrs {
		members[i] = &member{addr: a, dir: filepath.Join(dir, fmt.Sprintf("node%d", i+1))}
		if err := start(i); err != nil {
			return err
		}
		fmt.Printf("  node%d  %s  %s\n", i+1, a, members[i].dir)
	}
	defer func() {
		for _, m := range members {
			m.node.Close()
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader, err := waitLeader(ctx, members, -1)
	if err != nil {
		return err
	}
	fmt.Printf("\nLeader elected: node%d (%s)\n", leader+1, members[leader].addr)

	fmt.Printf("\nWriting %d keys through the leader...\n", keys)
	acked := map[string]string{}
	if err := write(ctx, members[leader].node, "first", keys, acked); err != nil {
		return err
	}
	if err := waitCaughtUp(ctx, members, members[leader].node.Status().CommitIndex, -1); err != nil {
		return err
	}
	for i, m := range members {
		fmt.Printf("  node%d has %d keys\n", i+1, m.kv.Len())
	}

	old := leader
	fmt.Printf("\nStopping the leader, node%d. Close hands leadership to another node first.\n", old+1)
	stopped := time.Now()
	if err := members[old].node.Close(); err != nil {
		return err
	}
	leader, err = waitLeader(ctx, members, old)
	if err != nil {
		return err
	}
	fmt.Printf("New leader: node%d (%s), %s after the stop\n", leader+1, members[leader].addr, time.Since(stopped).Round(time.Millisecond))

	fmt.Printf("\nWriting %d more keys through the new leader while node%d is down...\n", keys, old+1)
	if err := write(ctx, members[leader].node, "second", keys, acked); err != nil {
		return err
	}
	if err := waitCaughtUp(ctx, members, members[leader].node.Status().CommitIndex, old); err != nil {
		return err
	}
	for i, m := range members {
		if i == old {
			continue
		}
		if missing := missingKeys(m.kv, acked); missing > 0 {
			return fmt.Errorf("node%d lost %d acknowledged keys", i+1, missing)
		}
	}
	fmt.Printf("  every acknowledged key (%d) is on both running nodes\n", len(acked))

	fmt.Printf("\nRestarting node%d from %s...\n", old+1, members[old].dir)
	if err := start(old); err != nil {
		return err
	}
	if err := waitCaughtUp(ctx, members, members[leader].node.Status().CommitIndex, -1); err != nil {
		return err
	}
	if missing := missingKeys(members[old].kv, acked); missing > 0 {
		return fmt.Errorf("restarted node%d misses %d acknowledged keys", old+1, missing)
	}
	st := members[old].node.Status()
	fmt.Printf("  node%d caught up: applied index %d, %d keys, follows node%d\n",
		old+1, st.AppliedIndex, members[old].kv.Len(), leader+1)
	fmt.Println("\nDone: no acknowledged write was lost.")
	return nil
}

func write(ctx context.Context, node *raftkit.RaftNode, prefix string, n int, acked map[string]string) error {
	for i := 0; i < n; i++ {
		k, v := fmt.Sprintf("%s-%02d", prefix, i), fmt.Sprintf("value %d", i)
		if _, err := node.Apply(ctx, fsmexample.Set(k, []byte(v))); err != nil {
			return fmt.Errorf("write %s: %w", k, err)
		}
		acked[k] = v
	}
	return nil
}

func missingKeys(kv *fsmexample.Store, acked map[string]string) int {
	missing := 0
	for k, v := range acked {
		if got, ok := kv.Get(k); !ok || string(got) != v {
			missing++
		}
	}
	return missing
}

// waitLeader waits until a node other than skip leads, and returns it.
func waitLeader(ctx context.Context, members []*member, skip int) (int, error) {
	for {
		for i, m := range members {
			if i != skip && m.node.IsLeader() {
				return i, nil
			}
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("no leader: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitCaughtUp waits until every node but skip has applied index.
func waitCaughtUp(ctx context.Context, members []*member, index uint64, skip int) error {
	for {
		behind := false
		for i, m := range members {
			if i != skip && m.node.Status().AppliedIndex < index {
				behind = true
			}
		}
		if !behind {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nodes did not catch up to index %d: %w", index, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func freeAddrs(n int) ([]string, error) {
	var out []string
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		out = append(out, ln.Addr().String())
	}
	return out, nil
}
