package raftkittest

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raftkit/raftkit"
)

// The rolling-upgrade test: a cluster of the previous release's nodes is
// upgraded one node at a time, while clients write through every node.
//
// The previous release is taken from the repository's own history: the
// commit below, extracted with git archive (a checkout that leaves no
// worktree behind), and its internal/kvnode built from this tree's source
// of that program, which uses only the API both releases share. Without
// the repository's history (a shallow clone, an exported tree), the test
// builds this tree with -tags raftkit_protocol1 instead, which speaks
// only protocol 1 on the node port: the wire as the previous release
// speaks it, though not its code otherwise. The log names which it used.
//
// The default run is short; go test -run RollingUpgrade ./raftkittest
// -args -upgrade-phase=10s runs each phase longer.
const previousRelease = "85a4634" // protocol 1: the last commit before hellos on the node port

var upgradePhase = flag.Duration("upgrade-phase", 1500*time.Millisecond, "rolling upgrade: how long clients write between two steps")

// previousNode returns a kvnode binary of the previous release.
func previousNode(t *testing.T) string {
	t.Helper()
	builtNodes.Lock()
	defer builtNodes.Unlock()
	bin := filepath.Join(nodesDir(t), "kvnode-previous")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err == nil {
		err = exec.Command("git", "-C", strings.TrimSpace(string(root)), "cat-file", "-e", previousRelease+"^{commit}").Run()
	}
	if err != nil {
		t.Logf("no git history with %s (%v): building this tree with -tags raftkit_protocol1 as the previous release", previousRelease, err)
		mod, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			t.Fatal(err)
		}
		buildNode(t, strings.TrimSpace(string(mod)), bin, "raftkit_protocol1")
		return bin
	}
	tree := filepath.Join(nodesDir(t), "previous")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	archive := exec.Command("sh", "-c", fmt.Sprintf("git -C %q archive %s | tar -x -C %q", strings.TrimSpace(string(root)), previousRelease, tree))
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("extract %s: %v\n%s", previousRelease, err, out)
	}
	src, err := os.ReadFile(filepath.Join("internal", "kvnode", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(tree, "raftkittest", "internal", "kvnode")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "main.go"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("the previous release is commit %s of this repository", previousRelease)
	buildNode(t, tree, bin)
	return bin
}

// electionWatch counts the leader terms a cluster goes through.
type electionWatch struct {
	mu    sync.Mutex
	terms map[uint64]bool
}

func (w *electionWatch) note(pc *procCluster) {
	for _, p := range pc.procs {
		if !p.running() {
			continue
		}
		if st, err := pc.status(p); err == nil && st.State == "Leader" {
			w.mu.Lock()
			if w.terms == nil {
				w.terms = map[uint64]bool{}
			}
			w.terms[st.Term] = true
			w.mu.Unlock()
		}
	}
}

func (w *electionWatch) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.terms)
}

func TestRollingUpgradeFromPreviousRelease(t *testing.T) {
	oldBin, newBin := previousNode(t), currentNode(t)
	for _, store := range []string{"bolt", "wal"} {
		t.Run(store, func(t *testing.T) { rollingUpgrade(t, oldBin, newBin, store) })
	}
}

func rollingUpgrade(t *testing.T, oldBin, newBin, store string) {
	pc := startProcCluster(t, 3, oldBin, store)
	pc.leader()
	w := pc.writeContinuously(6, 11, func(id, seq int, _ *rand.Rand) *proc {
		return pc.procs[(id+seq)%len(pc.procs)] // through every node in turn
	})
	var elections electionWatch
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for watchCtx.Err() == nil {
			elections.note(pc)
			pause(watchCtx, 20*time.Millisecond)
		}
	}()

	// Replace the nodes one at a time: kill, restart the new build on the
	// same directory, and wait until it has caught up before the next.
	pause(context.Background(), *upgradePhase)
	for i, p := range pc.procs {
		before := elections.count()
		p.kill()
		p.bin = newBin
		p.start(t)
		waitUntil(t, 60*time.Second, p.id+" (new build) to be ready", func() bool {
			st, err := pc.status(p)
			return err == nil && st.Ready
		})
		pause(context.Background(), *upgradePhase)
		if n := elections.count() - before; n > 1 {
			t.Errorf("replacing node %d (%s) took %d leader elections, want at most 1", i, p.id, n)
		}
	}
	w.stop()
	stopWatch()
	<-watchDone

	// The upgraded cluster speaks the new protocol everywhere and uses its
	// features: a command above the chunk size is applied whole.
	leader := pc.leader()
	for _, p := range pc.procs {
		st, err := pc.status(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Protocol != raftkit.ProtocolVersion {
			t.Errorf("%s speaks protocol %d after the upgrade, want %d", p.id, st.Protocol, raftkit.ProtocolVersion)
		}
		for _, peer := range st.Peers {
			if peer.Protocol != raftkit.ProtocolVersion && peer.Refused == "" {
				waitUntil(t, 20*time.Second, p.id+" to see every peer speak the new protocol", func() bool {
					st, err := pc.status(p)
					if err != nil {
						return false
					}
					for _, q := range st.Peers {
						if q.Protocol != raftkit.ProtocolVersion {
							return false
						}
					}
					return true
				})
			}
		}
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 512<<10/16) // 512 KiB: two chunks
	req, _ := http.NewRequest(http.MethodPut, "http://"+leader.http+"/kv/big", bytes.NewReader(big))
	resp, err := pc.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Header.Get(outcomeHeader) != outcomeApplied {
		t.Fatalf("a 512 KiB write after the upgrade: %s", resp.Status)
	}

	// Every acknowledged write, and the large one whole, on every node.
	t.Logf("%s: %d leader terms seen", store, elections.count())
	w.check(t, "the upgrade", func(p *proc, all map[string]string) {
		if all["big"] != string(big) {
			t.Errorf("%s holds %d bytes of the 512 KiB value", p.id, len(all["big"]))
		}
	})
}
