package powercut

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/tools/internal/freeport"
	"github.com/raftkit/raftkit/tools/internal/powerloss"
)

// runAndClose starts a one-node cluster on dir until it leads, then
// closes it.
func runAndClose(t *testing.T, dir, addr string) {
	t.Helper()
	n, err := raftkit.NewRaftNode(raftkit.Config{
		ID: "n0", Addr: addr, Dir: dir, Peers: []string{"n0=" + addr},
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: os.Stderr}),
	}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := n.WaitForLeader(ctx); err != nil {
		n.Close()
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestRecoveryFileSurvivesAPowerCut: once WriteRecovery returns, the
// recovery file is on disk; once a start has applied it, its rename is,
// so a power cut neither loses the recovery nor makes it apply twice.
func TestRecoveryFileSurvivesAPowerCut(t *testing.T) {
	requireFuse(t)
	disk, err := powerloss.Mount(t.TempDir(), powerloss.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { disk.Close() })
	addrs, err := freeport.Addrs(1)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(disk.Dir(), "n0")
	runAndClose(t, dir, addrs[0])
	if err := raftkit.WriteRecovery(dir, []raftkit.ServerInfo{{ID: "n0", Addr: addrs[0], Voter: true}}); err != nil {
		t.Fatal(err)
	}
	if err := disk.Cut(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, raftkit.RecoveryFile))
	if err != nil || len(data) == 0 {
		t.Fatalf("after WriteRecovery returned and the power failed, %s holds %d bytes (%v)", raftkit.RecoveryFile, len(data), err)
	}

	runAndClose(t, dir, addrs[0]) // applies the recovery
	if err := disk.Cut(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, raftkit.RecoveryFile)); !os.IsNotExist(err) {
		t.Fatalf("after the recovery was applied and the power failed, %s is back (stat: %v): it would apply again", raftkit.RecoveryFile, err)
	}
}
