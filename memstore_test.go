package raftkit

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// withMemoryStore makes TCP nodes keep their state in memory.
func withMemoryStore(c *Config) { c.Dir, c.LogStore = "", LogStoreMemory }

func TestLogStoreMemoryThreeNodeTCPClusterAppliesWrites(t *testing.T) {
	c := newTCPCluster(t, 3, withMemoryStore)
	l := c.leader()
	f := (l + 1) % 3
	ctx := ctxTimeout(t, 15*time.Second)
	for i := 0; i < 20; i++ {
		from := c.nodes[l]
		if i%2 == 1 {
			from = c.nodes[f] // forwarded over the follower's TCP port
		}
		if _, err := from.Apply(ctx, fsmexample.Set(fmt.Sprintf("k%d", i), []byte("v"))); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	c.waitApplied(c.nodes[l].Status().CommitIndex)
	for i, fsm := range c.fsms {
		if fsm.Len() != 20 {
			t.Errorf("node %d holds %d keys, want 20", i, fsm.Len())
		}
		if c.nodes[i].stores.Cache != nil {
			t.Errorf("node %d has an on-disk log's cache", i)
		}
	}
	// A snapshot goes to memory too.
	if err := c.nodes[l].Snapshot(ctx); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	for i, dir := range c.dirs {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("node %d wrote to disk: %s exists (stat: %v)", i, dir, err)
		}
	}
}

func TestLogStoreMemoryConfig(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg   Config
		field string // "" : valid
	}{
		"no Dir":                {Config{Addr: "127.0.0.1:7000", LogStore: LogStoreMemory}, ""},
		"with its MemStorage":   {Config{Addr: "127.0.0.1:7000", LogStore: LogStoreMemory, Storage: NewMemStorage()}, ""},
		"a Dir as well":         {Config{Addr: "127.0.0.1:7000", LogStore: LogStoreMemory, Dir: "data"}, "Dir"},
		"MemStorage on disk":    {Config{Addr: "127.0.0.1:7000", Dir: "data", Storage: NewMemStorage()}, "Storage"},
		"neither Dir nor store": {Config{Addr: "127.0.0.1:7000"}, "Dir"},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := tc.cfg.settle()
			var ce *ConfigError
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.field == "" && (s.Storage == nil || !s.memoryStore()):
				t.Fatalf("settled without a MemStorage: %+v", s.Storage)
			case tc.field != "" && (!errors.As(err, &ce) || ce.Field != tc.field):
				t.Fatalf("got %v, want a *ConfigError for %s", err, tc.field)
			}
		})
	}
	if got := LogStoreMemory.String(); got != "LogStoreMemory" {
		t.Errorf("String() = %q", got)
	}
}

// The documented way back for a LogStoreMemory node that lost its state:
// removed first, it joins again as a new member and catches up.
func TestLogStoreMemoryNodeComesBackByRemoveThenJoin(t *testing.T) {
	c := newTCPCluster(t, 3, withMemoryStore)
	l := c.leader()
	f := (l + 1) % 3
	ctx := ctxTimeout(t, 20*time.Second)
	if _, err := c.nodes[l].Apply(ctx, fsmexample.Set("before", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	c.stop(f) // the process exits: its memory is gone
	if err := c.nodes[l].RemoveServer(ctx, c.nodes[f].ID()); err != nil {
		t.Fatalf("remove: %v", err)
	}
	// Two voters left: under load leadership may move; a Set is safe to
	// repeat, so retry through the other node too.
	others := []*RaftNode{c.nodes[l], c.nodes[(f+1)%3]}
	if others[1] == others[0] {
		others[1] = c.nodes[(f+2)%3]
	}
	for attempt := 0; ; attempt++ {
		_, err := others[attempt%2].Apply(ctx, fsmexample.Set("while-away", []byte("2")))
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("write while the node is away: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cfg := c.config(f)
	cfg.Peers, cfg.Join = nil, []string{others[0].Addr(), others[1].Addr()}
	fsm := fsmexample.New()
	n, err := NewRaftNode(cfg, fsm)
	if err != nil {
		t.Fatalf("restart with Join: %v", err)
	}
	c.nodes[f], c.fsms[f] = n, fsm
	waitFor(t, 15*time.Second, "the rejoined node to be ready with both keys", func() bool {
		_, a := fsm.Get("before")
		_, b := fsm.Get("while-away")
		return n.Ready() == nil && a && b
	})
}

// What happens when a LogStoreMemory node restarts as it was, with its
// Peers: it starts empty, takes its old place as a voter and catches up
// from the leader, as if it had kept its state. raftkit cannot tell this
// from a first start (most formations look the same to the nodes that
// start after the first two agreed), so it neither refuses nor warns; it
// says, at Info, what it cannot know and the safe way back (documented on
// LogStoreMemory).
func TestLogStoreMemoryNodeRestartedEmptyRejoinsAsTheVoterItWas(t *testing.T) {
	c := newTCPCluster(t, 3, withMemoryStore)
	l := c.leader()
	f := (l + 1) % 3
	ctx := ctxTimeout(t, 20*time.Second)
	if _, err := c.nodes[l].Apply(ctx, fsmexample.Set("acknowledged", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	c.stop(f)
	logs := &lockedBuffer{}
	cfg := c.config(f)
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs})
	fsm := fsmexample.New()
	n, err := NewRaftNode(cfg, fsm)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	c.nodes[f], c.fsms[f] = n, fsm
	waitFor(t, 15*time.Second, "the restarted node to catch up", func() bool {
		_, ok := fsm.Get("acknowledged")
		return ok && n.Ready() == nil
	})
	conf := n.Raft().GetConfiguration()
	if err := conf.Error(); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(conf.Configuration().Servers, func(s raft.Server) bool {
		return string(s.ID) == n.ID() && s.Suffrage == raft.Voter
	}) {
		t.Fatalf("the restarted node is not a voter in %+v, want the voter it was", conf.Configuration().Servers)
	}
	logs.mu.Lock()
	got := logs.b.String()
	logs.mu.Unlock()
	if !strings.Contains(got, "forgot its log and vote") || !strings.Contains(got, "RemoveServer, then with Join") {
		t.Fatalf("nothing logged about the lost log and vote; logged:\n%s", got)
	}
}
