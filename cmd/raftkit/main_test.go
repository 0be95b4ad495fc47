package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"

	"github.com/raftkit/raftkit"
	"github.com/raftkit/raftkit/admin"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// buildCLI compiles this command into a temporary directory.
func buildCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "raftkit")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

type cliResult struct {
	stdout, stderr string
	code           int
}

func runCLI(t *testing.T, bin string, args ...string) cliResult {
	t.Helper()
	return runCLIEnv(t, nil, bin, args...)
}

// runCLIEnv runs the CLI with env ("NAME=value") added to an environment
// where RAFTKIT_ADMIN and RAFTKIT_HEADER are empty.
func runCLIEnv(t *testing.T, env []string, bin string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(append(os.Environ(), "RAFTKIT_ADMIN=", "RAFTKIT_HEADER="), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return cliResult{stdout.String(), stderr.String(), code}
}

// must runs the CLI and fails the test unless it exits 0.
func must(t *testing.T, bin string, args ...string) string {
	t.Helper()
	r := runCLI(t, bin, args...)
	if r.code != 0 {
		t.Fatalf("raftkit %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func fastRaft(c *raft.Config) {
	c.HeartbeatTimeout = 400 * time.Millisecond
	c.ElectionTimeout = 400 * time.Millisecond
	c.LeaderLeaseTimeout = 200 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
}

// liveCluster is a 3-node TCP cluster with BoltDB files, each node with an
// admin handler (everything enabled) on an httptest server.
type liveCluster struct {
	t      *testing.T
	addrs  []string
	dirs   []string
	nodes  []*raftkit.RaftNode
	fsms   []*fsmexample.Store
	admins []*httptest.Server
}

func newLiveCluster(t *testing.T) *liveCluster {
	t.Helper()
	c := &liveCluster{t: t, nodes: make([]*raftkit.RaftNode, 3), fsms: make([]*fsmexample.Store, 3), admins: make([]*httptest.Server, 3)}
	base := t.TempDir()
	for i := 0; i < 3; i++ {
		c.addrs = append(c.addrs, freeAddr(t))
		c.dirs = append(c.dirs, filepath.Join(base, fmt.Sprintf("node%d", i)))
	}
	t.Cleanup(func() {
		for i := range c.nodes {
			c.stop(i)
		}
	})
	for i := range c.nodes {
		c.start(i)
	}
	return c
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func (c *liveCluster) start(i int) {
	c.t.Helper()
	c.fsms[i] = fsmexample.New()
	n, err := raftkit.NewRaftNode(raftkit.Config{Addr: c.addrs[i], Dir: c.dirs[i], Peers: c.addrs, RaftConfig: fastRaft}, c.fsms[i])
	if err != nil {
		c.t.Fatalf("start node %d: %v", i, err)
	}
	c.nodes[i] = n
	c.admins[i] = httptest.NewServer(admin.Handler(n, admin.Options{AllowMutations: true, AllowBackup: true}))
}

func (c *liveCluster) stop(i int) {
	if c.admins[i] != nil {
		c.admins[i].Close()
		c.admins[i] = nil
	}
	if c.nodes[i] != nil {
		c.nodes[i].Close()
	}
}

func (c *liveCluster) leader() int {
	c.t.Helper()
	idx := -1
	waitFor(c.t, "a leader known to every running node", func() bool {
		idx = -1
		for i, n := range c.nodes {
			if c.admins[i] != nil && n.IsLeader() {
				idx = i
			}
		}
		if idx < 0 {
			return false
		}
		for i, n := range c.nodes {
			if c.admins[i] != nil && n.GetLeaderID() != c.nodes[idx].ID() {
				return false
			}
		}
		return true
	})
	return idx
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *liveCluster) write(from, to int) {
	c.t.Helper()
	for i := from; i < to; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := c.nodes[c.leader()].Apply(ctx, fsmexample.Set(fmt.Sprintf("k%02d", i), []byte("v")))
		cancel()
		if err != nil {
			c.t.Fatalf("write %d: %v", i, err)
		}
	}
}

func (c *liveCluster) waitAllKeys(n int) {
	c.t.Helper()
	waitFor(c.t, fmt.Sprintf("every running node to hold exactly %d keys", n), func() bool {
		for i, f := range c.fsms {
			if c.admins[i] != nil && f.Len() != n {
				return false
			}
		}
		return true
	})
}

func TestCLIOperatesLiveCluster(t *testing.T) {
	bin := buildCLI(t)
	c := newLiveCluster(t)
	c.write(0, 20)
	l := c.leader()
	f := (l + 1) % 3
	adminF, adminL := c.admins[f].URL, c.admins[l].URL

	t.Run("status", func(t *testing.T) {
		var st raftkit.Status
		if err := json.Unmarshal([]byte(must(t, bin, "-admin", adminF, "-json", "status")), &st); err != nil {
			t.Fatal(err)
		}
		if st.ID != c.nodes[f].ID() || st.State != "Follower" || st.LeaderID != c.nodes[l].ID() || len(st.Servers) != 3 {
			t.Fatalf("status -json: %+v", st)
		}
		out := must(t, bin, "-admin", adminF, "status")
		if !strings.Contains(out, "Follower") || !strings.Contains(out, c.nodes[l].ID()) {
			t.Fatalf("status table lacks state or leader:\n%s", out)
		}
		// Flags after the command, in any order.
		st = raftkit.Status{}
		if err := json.Unmarshal([]byte(must(t, bin, "status", "-json", "-admin", adminF, "-timeout", "30s")), &st); err != nil || st.ID != c.nodes[f].ID() {
			t.Fatalf("status -json after the command: %v %+v", err, st)
		}
	})

	t.Run("peers", func(t *testing.T) {
		out := must(t, bin, "-admin", adminF, "peers")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 || !strings.HasPrefix(lines[0], "ID") {
			t.Fatalf("peers table:\n%s", out)
		}
		for _, line := range lines[1:] {
			fields := strings.Fields(line)
			leaderMark := len(fields) == 4 && fields[3] == "*"
			if fields[2] != "Voter" || leaderMark != (fields[0] == c.nodes[l].ID()) {
				t.Fatalf("peers line %q", line)
			}
		}
		var servers []raftkit.ServerInfo
		if err := json.Unmarshal([]byte(must(t, bin, "peers", "-admin", adminF, "-json")), &servers); err != nil || len(servers) != 3 {
			t.Fatalf("peers -json: %v %+v", err, servers)
		}
	})

	t.Run("snapshot", func(t *testing.T) {
		var st raftkit.Status
		if err := json.Unmarshal([]byte(must(t, bin, "snapshot", "-json", "-admin", adminF)), &st); err != nil || st.ID != c.nodes[f].ID() {
			t.Fatalf("snapshot -json: %v %+v", err, st)
		}
		if idx := c.nodes[f].Raft().Stats()["last_snapshot_index"]; idx == "0" {
			t.Fatal("no snapshot on the node after `raftkit snapshot`")
		}
	})

	t.Run("join and remove", func(t *testing.T) {
		addr := freeAddr(t)
		extra, err := raftkit.NewRaftNode(raftkit.Config{Addr: addr, Dir: t.TempDir(), RaftConfig: fastRaft}, fsmexample.New())
		if err != nil {
			t.Fatal(err)
		}
		defer extra.Close()
		// Through a follower, whose own view lags the leader's: the answer
		// must show the change all the same, and say who answered.
		out := must(t, bin, "join", "extra", addr, "-nonvoter", "-admin", adminF)
		if st := c.nodes[l].Status(); len(st.Servers) != 4 || st.Servers[3].Suffrage != "Nonvoter" {
			t.Fatalf("after join: %+v", st.Servers)
		}
		if !strings.Contains(out, "answered by "+c.nodes[f].ID()) || peerRow(out, "extra") == nil || peerRow(out, "extra")[2] != "Nonvoter" {
			t.Fatalf("join's table does not show extra as a non-voter answered by %s:\n%s", c.nodes[f].ID(), out)
		}
		waitFor(t, "the joined node to replicate the keys", func() bool { return extra.Status().AppliedIndex >= c.nodes[l].Status().CommitIndex })
		out = must(t, bin, "remove", "-admin", adminF, "extra")
		if st := c.nodes[l].Status(); len(st.Servers) != 3 {
			t.Fatalf("after remove: %+v", st.Servers)
		}
		if peerRow(out, "extra") != nil || !strings.Contains(out, "answered by "+c.nodes[f].ID()) {
			t.Fatalf("remove's table still lists extra, or does not say who answered:\n%s", out)
		}
	})

	t.Run("join at a mistyped address, then -force", func(t *testing.T) {
		typo := freeAddr(t) // nothing listens there
		r := runCLIEnv(t, nil, bin, "join", "typo", typo, "-admin", adminF)
		if r.code != 1 || !strings.Contains(r.stderr, typo) || !strings.Contains(r.stderr, "the configuration is unchanged") {
			t.Fatalf("join at a mistyped address: exit %d, stderr %s", r.code, r.stderr)
		}
		if st := c.nodes[l].Status(); len(st.Servers) != 3 {
			t.Fatalf("after the refused join: %+v", st.Servers)
		}
		// The operator's override: added at once, a voter nothing answers
		// for (three of four voters still commit), then removed.
		out := must(t, bin, "join", "-force", "ghost", typo, "-admin", adminF)
		if row := peerRow(out, "ghost"); row == nil || row[2] != "Voter" {
			t.Fatalf("join -force's table does not show ghost as a voter:\n%s", out)
		}
		must(t, bin, "remove", "-admin", adminF, "ghost")
		if r := runCLIEnv(t, nil, bin, "join", "-force", "-nonvoter", "x", typo, "-admin", adminF); r.code != 2 {
			t.Fatalf("join -force -nonvoter: exit %d, want 2 (bad usage)", r.code)
		}
	})

	var backup string
	t.Run("backup and restore", func(t *testing.T) {
		backup = filepath.Join(t.TempDir(), "state.backup")
		var bi raftkit.BackupInfo
		if err := json.Unmarshal([]byte(must(t, bin, "backup", backup, "-admin", adminF, "-json")), &bi); err != nil || bi.Index < 20 {
			t.Fatalf("backup -json: %v %+v", err, bi)
		}
		info, err := readInfo(backup)
		if err != nil || info.Index < 20 {
			t.Fatalf("backup file: %+v, %v", info, err)
		}
		c.write(20, 25) // written after the backup: a restore discards them
		c.waitAllKeys(25)
		if r := runCLI(t, bin, "-admin", adminL, "restore", backup); r.code != 2 {
			t.Fatalf("restore without -yes: exit %d, want 2", r.code)
		}
		if r := runCLI(t, bin, "-admin", adminF, "restore", "-yes", backup); r.code != 1 || !strings.Contains(r.stderr, "the leader is "+c.nodes[l].ID()) {
			t.Fatalf("restore on a follower: exit %d, stderr %s", r.code, r.stderr)
		}
		must(t, bin, "restore", backup, "-yes", "-admin", adminL)
		c.waitAllKeys(20)
		if _, ok := c.fsms[f].Get("k19"); !ok {
			t.Fatal("k19 missing after restore")
		}
	})

	t.Run("bad usage", func(t *testing.T) {
		for _, args := range [][]string{{"remove"}, {"join", "only-id"}, {"frobnicate"}, {"recover", "dir", "no-equals-sign"}, {"status", "-no-such-flag"}, {"status", "extra-arg"}, {"-json"}} {
			if r := runCLI(t, bin, append([]string{"-admin", adminF}, args...)...); r.code != 2 || r.stderr == "" {
				t.Fatalf("raftkit %v: exit %d, stderr %q; want exit 2 with a message", args, r.code, r.stderr)
			}
		}
		if r := runCLI(t, bin, "-admin", adminF, "remove", "nobody-at-all"); r.code != 0 {
			t.Fatalf("removing a non-member is a no-op, got exit %d: %s", r.code, r.stderr)
		}
	})

	t.Run("transfer", func(t *testing.T) {
		// Answered by the old leader: its table must already mark the new one.
		out := must(t, bin, "transfer", c.nodes[f].ID(), "-admin", adminL)
		if row := peerRow(out, c.nodes[f].ID()); row == nil || len(row) != 4 || row[3] != "*" || !strings.Contains(out, "transferred to "+c.nodes[f].ID()) {
			t.Fatalf("transfer's table does not mark %s as the leader:\n%s", c.nodes[f].ID(), out)
		}
		waitFor(t, "the target to lead", c.nodes[f].IsLeader)
	})

	t.Run("inspect stopped node", func(t *testing.T) {
		l := c.leader()
		g := (l + 1) % 3
		// Quiet: nothing left to replicate, so what g reports now is what it
		// has on disk. A new leader appends a no-op a moment after it is
		// known; a read barrier commits an entry of its term after that.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.nodes[l].LinearizableRead(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "every node to have applied the leader's whole log", func() bool {
			last := c.nodes[l].Status().LastLogIndex
			for i, n := range c.nodes {
				if c.admins[i] != nil && (n.Status().LastLogIndex != last || n.Status().AppliedIndex != last) {
					return false
				}
			}
			return true
		})
		st := c.nodes[g].Status()
		if r := runCLI(t, bin, "inspect", c.dirs[g]); r.code != 1 || !strings.Contains(r.stderr, "stop the node first") {
			t.Fatalf("inspect on a running node: exit %d, stderr %s", r.code, r.stderr)
		}
		c.stop(g)
		var info raftkit.DirInfo
		if err := json.Unmarshal([]byte(must(t, bin, "inspect", c.dirs[g], "-json")), &info); err != nil {
			t.Fatal(err)
		}
		if info.CurrentTerm != st.Term || info.LastIndex != st.LastLogIndex || !reflect.DeepEqual(info.Servers, st.Servers) {
			t.Fatalf("inspect: term %d last %d servers %+v; node reported term %d last %d servers %+v",
				info.CurrentTerm, info.LastIndex, info.Servers, st.Term, st.LastLogIndex, st.Servers)
		}
		out := must(t, bin, "inspect", c.dirs[g])
		if !strings.Contains(out, "Snapshots:") || !strings.Contains(out, " ok") {
			t.Fatalf("inspect table:\n%s", out)
		}
	})
}

func TestCLIRecoverBringsSurvivorBack(t *testing.T) {
	bin := buildCLI(t)
	c := newLiveCluster(t)
	c.write(0, 30)
	c.waitAllKeys(30)
	for i := range c.nodes {
		c.stop(i)
	}
	id := c.nodes[0].ID()
	r := runCLI(t, bin, "recover", c.dirs[0], id+"="+c.addrs[0])
	if r.code != 2 || !strings.Contains(r.stderr, "WARNING") {
		t.Fatalf("recover without -yes: exit %d, stderr %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(c.dirs[0], raftkit.RecoveryFile)); !os.IsNotExist(err) {
		t.Fatal("recover without -yes wrote the recovery file")
	}
	var wrote struct {
		File    string
		Servers []raftkit.ServerInfo
	}
	if err := json.Unmarshal([]byte(must(t, bin, "recover", c.dirs[0], id+"="+c.addrs[0], "-yes", "-json")), &wrote); err != nil || len(wrote.Servers) != 1 {
		t.Fatalf("recover -json: %v %+v", err, wrote)
	}
	c.start(0)
	waitFor(t, "the survivor to lead", c.nodes[0].IsLeader)
	if n := c.fsms[0].Len(); n != 30 {
		t.Fatalf("survivor has %d keys after recovery, want 30", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.nodes[0].Apply(ctx, fsmexample.Set("after", []byte("x"))); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	var servers []raftkit.ServerInfo
	if err := json.Unmarshal([]byte(must(t, bin, "-admin", c.admins[0].URL, "-json", "peers")), &servers); err != nil || len(servers) != 1 || servers[0].ID != id {
		t.Fatalf("peers after recovery: %+v, %v", servers, err)
	}
}

// peerRow returns the fields of the peers-table row for id, or nil.
func peerRow(out, id string) []string {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			return f
		}
	}
	return nil
}

func TestCLIVersionAndUsage(t *testing.T) {
	bin := buildCLI(t)
	for _, args := range [][]string{{"-version"}, {"status", "-version"}} {
		r := runCLI(t, bin, args...)
		if r.code != 0 || !strings.HasPrefix(r.stdout, "raftkit ") || !strings.Contains(r.stdout, "go1.") ||
			!strings.Contains(r.stdout, fmt.Sprintf("node protocol %d", raftkit.ProtocolVersion)) {
			t.Fatalf("raftkit %v: exit %d, stdout %q", args, r.code, r.stdout)
		}
	}
	r := runCLI(t, bin)
	if r.code != 2 || !strings.Contains(r.stderr, "Exit status: 0 done, 1 failed, 2 bad usage") {
		t.Fatalf("no command: exit %d, stderr %s", r.code, r.stderr)
	}
	// Nothing listens on port 1: the operation fails (1), usage is fine.
	if r := runCLI(t, bin, "status", "-admin", "http://127.0.0.1:1", "-timeout", "5s"); r.code != 1 || !strings.Contains(r.stderr, "connection refused") {
		t.Fatalf("unreachable node: exit %d, stderr %s", r.code, r.stderr)
	}
}

func TestParseInterleaved(t *testing.T) {
	c := &cli{errOut: io.Discard}
	fs := c.flagSet("x")
	fs.BoolVar(&c.yes, "yes", false, "")
	pos, err := parseInterleaved(fs, []string{"a", "-json", "b", "-admin", "http://h", "-yes", "--", "-c", "d"})
	if err != nil || !reflect.DeepEqual(pos, []string{"a", "b", "-c", "d"}) || !c.json || !c.yes || c.admin != "http://h" {
		t.Fatalf("got %q, %v; json=%v yes=%v admin=%q", pos, err, c.json, c.yes, c.admin)
	}
}
