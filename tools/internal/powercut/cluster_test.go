package powercut

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/raftkit/raftkit/tools/internal/powerloss"
)

// cutCluster runs rounds on a three-node cluster: clients write through
// random nodes, and the power fails at a random moment, either on every
// node at once (whole) or on one random node while the others go on
// serving; the nodes restart from what their disks kept. After each round
// the cluster must elect a leader and serve, every node must hold every
// acknowledged write, and all nodes' stores must be identical.
func cutCluster(t *testing.T, store string, rounds int, seed uint64, whole bool) error {
	c := newCluster(t, 3, store, powerloss.Options{Tear: true, Rand: rand.New(rand.NewPCG(seed, 1))})
	rng := rand.New(rand.NewPCG(seed, 0))
	a := &acks{}
	for round := 0; round < rounds; round++ {
		if _, err := c.leader(); err != nil {
			return fmt.Errorf("round %d: %v", round, err)
		}
		w := c.writeContinuously(a, 4, round, seed, func(rng *rand.Rand) *node { return c.nodes[rng.IntN(len(c.nodes))] })
		time.Sleep(time.Duration(200+rng.IntN(1500)) * time.Millisecond)
		victims := c.nodes
		if !whole {
			victims = []*node{c.nodes[rng.IntN(len(c.nodes))]}
		}
		for _, n := range victims {
			n.kill() // all at once, before any disk is cut
		}
		for _, n := range victims {
			if err := n.disk.Cut(); err != nil {
				w.stop()
				return err
			}
		}
		if !whole {
			// The others serve on while the victim is down.
			time.Sleep(time.Duration(100+rng.IntN(500)) * time.Millisecond)
		}
		w.stop()
		var wg sync.WaitGroup
		errs := make([]error, len(victims))
		for i, n := range victims {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = n.start() }()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return fmt.Errorf("round %d: the store did not open after a power cut: %v", round, err)
			}
		}
		if _, err := c.leader(); err != nil {
			return fmt.Errorf("round %d: after the restart: %v", round, err)
		}
		var first map[string]string
		for _, n := range c.nodes {
			all, err := c.dump(n)
			if err != nil {
				return fmt.Errorf("round %d: %v", round, err)
			}
			if lost := a.missing(all); len(lost) > 0 {
				return fmt.Errorf("round %d: %s lacks %d of %d acknowledged writes, e.g. %v", round, n.id, len(lost), a.count(), lost[:min(len(lost), 10)])
			}
			if first == nil {
				first = all
			} else if !maps.Equal(first, all) {
				return fmt.Errorf("round %d: replicas differ: %s holds %d keys, %s %d", round, c.nodes[0].id, len(first), n.id, len(all))
			}
		}
		// The cluster serves after the restart.
		if !c.put(c.nodes[rng.IntN(len(c.nodes))], fmt.Sprintf("after-%d", round), []byte("x")) {
			if l, err := c.leader(); err != nil || !c.put(l, fmt.Sprintf("after-%d", round), []byte("x")) {
				return fmt.Errorf("round %d: the restarted cluster does not take a write", round)
			}
		}
		t.Logf("round %d: all %d acknowledged writes on every node, replicas identical", round, a.count())
	}
	if a.count() < 20 {
		return fmt.Errorf("only %d writes were acknowledged in %d rounds: too little progress to prove anything", a.count(), rounds)
	}
	return nil
}

func TestPowerCutWholeCluster(t *testing.T) {
	for _, store := range []string{"bolt", "wal"} {
		t.Run(store, func(t *testing.T) {
			rounds, seed := cutsFromEnv(t, 3), seedFromEnv(t)
			if err := cutCluster(t, store, rounds, seed, true); err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
		})
	}
}

func TestPowerCutOneNodeOfThreeRepeatedly(t *testing.T) {
	for _, store := range []string{"bolt", "wal"} {
		t.Run(store, func(t *testing.T) {
			rounds, seed := cutsFromEnv(t, 4), seedFromEnv(t)
			if err := cutCluster(t, store, rounds, seed, false); err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
		})
	}
}
