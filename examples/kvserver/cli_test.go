package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCLIChangesKVServerCluster operates a kvserver cluster of real
// processes with the raftkit CLI, through a follower: join a fourth node,
// remove it, and transfer leadership. Each command's table must already
// show the change, although the answering node is not the leader.
func TestCLIChangesKVServerCluster(t *testing.T) {
	dir := t.TempDir()
	kv, cli := filepath.Join(dir, "kvserver"), filepath.Join(dir, "raftkit")
	for bin, pkg := range map[string]string{kv: ".", cli: "../../cmd/raftkit"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	ports := freePorts(t, 8)
	var peers []string
	for i := 0; i < 3; i++ {
		peers = append(peers, fmt.Sprintf("n%d=%s", i+1, ports[2*i]))
	}
	start := func(i int, extra ...string) {
		t.Helper()
		args := append([]string{"-id", fmt.Sprintf("n%d", i+1), "-addr", ports[2*i], "-http", ports[2*i+1],
			"-dir", filepath.Join(dir, fmt.Sprint(i)), "-admin-mutations"}, extra...)
		cmd := exec.Command(kv, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	for i := 0; i < 3; i++ {
		start(i, "-peers", strings.Join(peers, ","))
	}
	raftkit := func(args ...string) (string, error) {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(cli, args...)
		cmd.Env = []string{"RAFTKIT_ADMIN="}
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if err != nil {
			err = fmt.Errorf("raftkit %v: %v: %s", args, err, stderr.String())
		}
		return stdout.String(), err
	}
	admin := func(i int) string { return "http://" + ports[2*i+1] + "/raft" }
	// Wait until node 0 knows a leader; pick a follower to talk to.
	var leaderID string
	var follower int
	waitFor(t, 30*time.Second, "a leader", func() bool {
		out, err := raftkit("peers", "-admin", admin(0))
		if err != nil {
			return false
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 4 && f[3] == "*" {
				leaderID = f[0]
				return true
			}
		}
		return false
	})
	for i := 0; i < 3; i++ {
		if fmt.Sprintf("n%d", i+1) != leaderID {
			follower = i
			break
		}
	}
	row := func(out, id string) []string {
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
				return f
			}
		}
		return nil
	}

	// A fourth node, empty, waiting to be added.
	start(3)
	out, err := raftkit("join", "n4", ports[6], "-admin", admin(follower))
	if err != nil {
		t.Fatal(err)
	}
	if r := row(out, "n4"); r == nil || r[2] != "Voter" || !strings.Contains(out, fmt.Sprintf("answered by n%d", follower+1)) {
		t.Fatalf("join's table lacks n4 as a voter or the answering node:\n%s", out)
	}
	out, err = raftkit("remove", "n4", "-admin", admin(follower))
	if err != nil {
		t.Fatal(err)
	}
	if row(out, "n4") != nil || len(strings.Split(strings.TrimSpace(out), "\n")) != 5 {
		t.Fatalf("remove's table still lists n4 (or is not 3 servers):\n%s", out)
	}
	target := fmt.Sprintf("n%d", follower+1)
	out, err = raftkit("transfer", target, "-admin", admin(follower))
	if err != nil {
		t.Fatal(err)
	}
	if r := row(out, target); r == nil || len(r) != 4 || r[3] != "*" {
		t.Fatalf("transfer's table does not mark %s as the leader:\n%s", target, out)
	}
	if r := row(out, leaderID); r == nil || len(r) != 3 {
		t.Fatalf("transfer's table still marks the old leader %s:\n%s", leaderID, out)
	}
}
