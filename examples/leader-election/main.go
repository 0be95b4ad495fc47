// Command leader-election shows raftkit as a leader-election library: run
// three copies, and exactly one of them does "the leader's work" at a time.
// Stop that one (Ctrl-C, or kill -9) and another takes over.
//
//	leader-election -id n1 -addr 127.0.0.1:7101 -dir data/n1 -peers n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103
//	leader-election -id n2 -addr 127.0.0.1:7102 -dir data/n2 -peers (same list)
//	leader-election -id n3 -addr 127.0.0.1:7103 -dir data/n3 -peers (same list)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

func main() {
	id := flag.String("id", "", "node ID")
	addr := flag.String("addr", "127.0.0.1:7101", "raft address (host:port)")
	dir := flag.String("dir", "", "data directory (required)")
	peers := flag.String("peers", "", "comma-separated initial cluster: id=host:port,...")
	every := flag.Duration("every", time.Second, "how often the leader does its work")
	flag.Parse()
	if *dir == "" || *peers == "" {
		log.Fatal("leader-election: -dir and -peers are required")
	}
	// Leader election needs no state of its own; any FSM will do.
	node, err := raftkit.NewRaftNode(raftkit.Config{ID: *id, Addr: *addr, Dir: *dir, Peers: strings.Split(*peers, ",")}, fsmexample.New())
	if err != nil {
		log.Fatalf("leader-election: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Printf("%s: started, waiting for leadership\n", node.ID())
	err = node.RunWhileLeader(ctx, func(ctx context.Context) {
		fmt.Printf("%s: became leader, starting the leader's work\n", node.ID())
		tick := time.NewTicker(*every)
		defer tick.Stop()
		for n := 1; ; n++ {
			select {
			case <-ctx.Done():
				fmt.Printf("%s: no longer leader, stopped the leader's work\n", node.ID())
				return
			case <-tick.C:
				fmt.Printf("%s: doing the leader's work (#%d)\n", node.ID(), n)
			}
		}
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Printf("leader-election: %v", err)
	}
	if err := node.Close(); err != nil {
		log.Fatalf("leader-election: %v", err)
	}
	fmt.Printf("%s: stopped\n", node.ID())
}
