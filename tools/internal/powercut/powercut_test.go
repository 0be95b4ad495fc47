package powercut

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/raftkit/raftkit/tools/internal/powerloss"
)

// The scenarios run a bounded number of cuts (CI's run). The long run:
//
//	cd tools && RAFTKIT_POWERCUT_CUTS=100 go test -run TestPowerCut -timeout 3h -v ./internal/powercut
//
// Every run logs its seed; RAFTKIT_POWERCUT_SEED=<seed> replays the same
// choices of moments, values and tears (the timing of processes is not
// reproducible, so a replay repeats the schedule, not every interleaving).

// cutsFromEnv is RAFTKIT_POWERCUT_CUTS, or def.
func cutsFromEnv(t *testing.T, def int) int {
	t.Helper()
	s := os.Getenv("RAFTKIT_POWERCUT_CUTS")
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("RAFTKIT_POWERCUT_CUTS=%q: want a positive number", s)
	}
	return n
}

// seedFromEnv is RAFTKIT_POWERCUT_SEED, or a new seed; it logs the seed.
func seedFromEnv(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("RAFTKIT_POWERCUT_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("RAFTKIT_POWERCUT_SEED=%q: want a number", s)
		}
		seed = n
	}
	t.Logf("seed %d (replay: RAFTKIT_POWERCUT_SEED=%d)", seed, seed)
	return seed
}

// chunkedValue is longer than 256 KiB, so raftkit replicates it as a
// chunked command, and shorter than the 1 MiB command limit.
const chunkedValue = 700 << 10

// writers sends unique writes from several clients through pick's node
// until stop, recording the acknowledged ones.
type writers struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (c *cluster) writeContinuously(a *acks, clients int, round int, seed uint64, pick func(rng *rand.Rand) *node) *writers {
	ctx, cancel := context.WithCancel(context.Background())
	w := &writers{cancel: cancel}
	for id := 0; id < clients; id++ {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(round*100+id)))
			for seq := 0; ctx.Err() == nil; seq++ {
				n := pick(rng)
				if !n.running() {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				size := 1 + rng.IntN(200)
				if rng.IntN(40) == 0 {
					size = chunkedValue
				}
				key := fmt.Sprintf("r%d-c%d-%d", round, id, seq)
				if c.put(n, key, bytes.Repeat([]byte{'v'}, size)) {
					a.add(key, size)
				}
			}
		}()
	}
	return w
}

func (w *writers) stop() { w.cancel(); w.wg.Wait() }

// cutOneNodeRepeatedly runs cuts rounds on a one-node cluster: clients
// write, the power fails at a random moment, the node restarts from what
// its disk kept, and every acknowledged write must be in its store. It
// returns the first round's lost writes or a node that did not come back.
func cutOneNodeRepeatedly(t *testing.T, store string, cuts int, seed uint64, opts powerloss.Options) (lost []string, err error) {
	c := newCluster(t, 1, store, opts)
	n := c.nodes[0]
	rng := rand.New(rand.NewPCG(seed, 0))
	a := &acks{}
	for round := 0; round < cuts; round++ {
		began := time.Now()
		if _, err := c.leader(); err != nil {
			return nil, fmt.Errorf("round %d: %v", round, err)
		}
		w := c.writeContinuously(a, 3, round, seed, func(*rand.Rand) *node { return n })
		time.Sleep(time.Duration(100+rng.IntN(1500)) * time.Millisecond)
		cutErr := n.powerCut()
		w.stop()
		if cutErr != nil {
			return nil, cutErr
		}
		cutAt := time.Now()
		if err := n.start(); err != nil {
			return nil, fmt.Errorf("round %d: the store did not open after a power cut: %v", round, err)
		}
		startedAt := time.Now()
		all, err := c.dump(n)
		if err != nil {
			return nil, fmt.Errorf("round %d: %v", round, err)
		}
		if lost := a.missing(all); len(lost) > 0 {
			return lost, fmt.Errorf("round %d: %d of %d acknowledged writes lost", round, len(lost), a.count())
		}
		t.Logf("round %d: all %d acknowledged writes kept (writes %s, restart %s, check %s)", round, a.count(),
			cutAt.Sub(began).Round(time.Millisecond), startedAt.Sub(cutAt).Round(time.Millisecond), time.Since(startedAt).Round(time.Millisecond))
	}
	if a.count() < 20 {
		return nil, fmt.Errorf("only %d writes were acknowledged in %d rounds: too little progress to prove anything", a.count(), cuts)
	}
	return nil, nil
}

func TestPowerCutOneNode(t *testing.T) {
	for _, store := range []string{"bolt", "wal"} {
		t.Run(store, func(t *testing.T) {
			cuts, seed := cutsFromEnv(t, 10), seedFromEnv(t)
			opts := powerloss.Options{Tear: true, Rand: rand.New(rand.NewPCG(seed, 1))}
			if lost, err := cutOneNodeRepeatedly(t, store, cuts, seed, opts); err != nil {
				t.Fatalf("seed %d: %v (lost: %v)", seed, err, lost[:min(len(lost), 10)])
			}
		})
	}
}

// TestPowerCutOracleCatchesALyingDisk is the negative control: on a disk
// whose fsync does nothing, a cut must cost acknowledged writes, and the
// oracle must say so.
func TestPowerCutOracleCatchesALyingDisk(t *testing.T) {
	seed := seedFromEnv(t)
	lost, err := cutOneNodeRepeatedly(t, "bolt", 1, seed, powerloss.Options{ForgetSyncs: true})
	if len(lost) == 0 {
		t.Fatalf("seed %d: a disk that forgets every fsync lost no acknowledged write (err: %v): the oracle cannot fail", seed, err)
	}
	t.Logf("as expected: %v", err)
}
