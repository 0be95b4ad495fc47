// Command leader-election shows raftkit as a leader-election library: run
// three copies, and only the leader does "the leader's work": it appends a
// tick to a shared file. Stop that one (Ctrl-C, kill -9, or kill -STOP) and
// another takes over.
//
//	leader-election -id n1 -addr 127.0.0.1:7101 -dir data/n1 -out ticks -peers n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103
//	leader-election -id n2 -addr 127.0.0.1:7102 -dir data/n2 -out ticks -peers (same list)
//	leader-election -id n3 -addr 127.0.0.1:7103 -dir data/n3 -out ticks -peers (same list)
//	leader-election -read ticks
//
// Each tick is guarded twice. Before it writes, the leader checks its
// lease (Lease.Valid): a leader that was paused, or cut off from the
// others, finds its lease expired and skips the tick. And each tick carries
// the leader's term as a fencing token: the consumer (-read) refuses a
// tick whose token is lower than one it has already accepted, which
// covers what no check can: a pause between the check and the write.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/raftkit/raftkit"
)

func main() {
	id := flag.String("id", "", "node ID")
	addr := flag.String("addr", "127.0.0.1:7101", "raft address (host:port)")
	dir := flag.String("dir", "", "data directory (required)")
	peers := flag.String("peers", "", "comma-separated initial cluster: id=host:port,...")
	every := flag.Duration("every", time.Second, "how often the leader does its work")
	finish := flag.Duration("finish", 0, "how long the leader's last unit of work takes once it is asked to stop")
	out := flag.String("out", "", "file the leader appends its ticks to (shared by all nodes)")
	serve := flag.String("serve", "", "the address this node serves clients on while it leads, published to all nodes")
	read := flag.String("read", "", "read a tick file as its consumer would, and exit")
	flag.Parse()
	if *read != "" {
		if err := consume(*read, os.Stdout); err != nil {
			log.Fatalf("leader-election: %v", err)
		}
		return
	}
	if *dir == "" || *peers == "" {
		log.Fatal("leader-election: -dir and -peers are required")
	}
	ticks := io.Discard
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			log.Fatalf("leader-election: %v", err)
		}
		defer f.Close()
		ticks = f
	}
	// Leader election needs no state of its own: ElectionFSM keeps only
	// what the leaders publish. Dir keeps raft's terms and votes.
	node, err := raftkit.NewRaftNode(raftkit.Config{ID: *id, Addr: *addr, Dir: *dir, Peers: strings.Split(*peers, ",")}, raftkit.ElectionFSM())
	if err != nil {
		log.Fatalf("leader-election: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Printf("%s: started, waiting for leadership\n", node.ID())
	go func() {
		// Every node learns where the leader serves clients.
		var last string
		for l := range node.WatchLeadership(ctx) {
			if l.Published != "" && l.Published != last && l.PublishedTerm == l.Term {
				last = l.Published
				fmt.Printf("%s: the leader of term %d serves at %s\n", node.ID(), l.PublishedTerm, l.Published)
			}
		}
	}()
	err = node.RunWhileLeader(ctx, func(ctx context.Context) {
		lease := raftkit.LeaseFromContext(ctx)
		fmt.Printf("%s: became leader in term %d, starting the leader's work\n", node.ID(), lease.Term())
		if *serve != "" {
			if err := node.Publish(ctx, *serve); err != nil {
				fmt.Printf("%s: could not publish %s: %v\n", node.ID(), *serve, err)
			}
		}
		// work appends one tick, if the lease still holds.
		n := 0
		work := func(what string) {
			if !lease.Valid() {
				fmt.Printf("%s: lease not valid, skipped a tick\n", node.ID())
				return
			}
			n++
			// One write with O_APPEND: ticks never interleave.
			fmt.Fprintf(ticks, "%d %s %d%s\n", lease.Term(), node.ID(), n, what)
			fmt.Printf("%s: doing the leader's work (#%d, token %d%s)\n", node.ID(), n, lease.Term(), what)
		}
		tick := time.NewTicker(*every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				cause := context.Cause(ctx)
				if !errors.Is(cause, raftkit.ErrLeadershipLost) {
					// A planned stop (Ctrl-C, SIGTERM, a handover):
					// leadership stays here until this function returns
					// (up to Config.LeaderJobGrace), so the last unit
					// may be finished, still under the lease.
					time.Sleep(*finish)
					work(" last")
				}
				fmt.Printf("%s: stopped the leader's work: %v\n", node.ID(), cause)
				return
			case <-tick.C:
				work("")
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

// Tick is one line of the tick file: the leader's token (its term), who
// wrote it and its number in that leadership.
type Tick struct {
	Token uint64
	Node  string
	N     int
	Last  bool // the last unit of a planned stop
}

// Fence is the consumer's side of fencing: it accepts a token only if no
// larger one was accepted before. Any resource a leader acts on (a
// database row, an object store, another service) can keep one.
type Fence struct{ highest uint64 }

// Admit reports whether a side effect with token may take effect, and
// remembers the largest token it admitted.
func (f *Fence) Admit(token uint64) bool {
	if token < f.highest {
		return false
	}
	f.highest = token
	return true
}

// readTicks parses a tick file in the order its lines were written.
func readTicks(r io.Reader) ([]Tick, error) {
	var ticks []Tick
	s := bufio.NewScanner(r)
	for s.Scan() {
		var t Tick
		var last string
		if k, err := fmt.Sscanf(s.Text(), "%d %s %d %s", &t.Token, &t.Node, &t.N, &last); k < 3 {
			return nil, fmt.Errorf("tick %q: %v", s.Text(), err)
		}
		t.Last = last == "last"
		ticks = append(ticks, t)
	}
	return ticks, s.Err()
}

// consume reads a tick file as a fenced consumer: it prints the ticks it
// accepts and those it refuses.
func consume(path string, w io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	ticks, err := readTicks(f)
	if err != nil {
		return err
	}
	var fence Fence
	for _, t := range ticks {
		verdict := "accepted"
		if !fence.Admit(t.Token) {
			verdict = "REFUSED (stale token)"
		}
		fmt.Fprintf(w, "%s #%d token %d: %s\n", t.Node, t.N, t.Token, verdict)
	}
	return nil
}
