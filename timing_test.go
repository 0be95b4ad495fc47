package raftkit

import (
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

func TestTimingProfilesSetRaftTimeouts(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name                               string
		cfg                                Config
		heartbeat, election, lease, commit time.Duration
	}{
		{"auto in memory is LAN", Config{InMemory: true, Addr: "a"}, 200 * time.Millisecond, 200 * time.Millisecond, 100 * time.Millisecond, 5 * time.Millisecond},
		{"auto on loopback is Local", Config{Addr: "127.0.0.1:7000", Dir: dir, Peers: []string{"127.0.0.1:7000", "localhost:7001"}}, 300 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond, 5 * time.Millisecond},
		{"auto on a real network is raft's default", Config{Addr: "10.0.0.1:7000", Dir: dir, Peers: []string{"10.0.0.1:7000", "10.0.0.2:7000"}}, time.Second, time.Second, 500 * time.Millisecond, 50 * time.Millisecond},
		{"auto with one remote peer is raft's default", Config{Addr: "127.0.0.1:7000", Dir: dir, Peers: []string{"127.0.0.1:7000", "10.0.0.2:7000"}}, time.Second, time.Second, 500 * time.Millisecond, 50 * time.Millisecond},
		{"LAN on a real network", Config{Addr: "10.0.0.1:7000", Dir: dir, Timing: TimingLAN}, 200 * time.Millisecond, 200 * time.Millisecond, 100 * time.Millisecond, 5 * time.Millisecond},
		{"default in memory", Config{InMemory: true, Addr: "a", Timing: TimingDefault}, time.Second, time.Second, 500 * time.Millisecond, 50 * time.Millisecond},
		{"WAN", Config{Addr: "10.0.0.1:7000", Dir: dir, Timing: TimingWAN}, 3 * time.Second, 3 * time.Second, 1500 * time.Millisecond, 50 * time.Millisecond},
		{"Local", Config{InMemory: true, Addr: "a", Timing: TimingLocal}, 300 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond, 5 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tc.cfg.settle()
			if err != nil {
				t.Fatal(err)
			}
			rc, err := raftConfig(s)
			if err != nil {
				t.Fatal(err)
			}
			if rc.HeartbeatTimeout != tc.heartbeat || rc.ElectionTimeout != tc.election ||
				rc.LeaderLeaseTimeout != tc.lease || rc.CommitTimeout != tc.commit {
				t.Fatalf("got heartbeat %s election %s lease %s commit %s, want %s %s %s %s",
					rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout, rc.CommitTimeout,
					tc.heartbeat, tc.election, tc.lease, tc.commit)
			}
			if rc.MaxAppendEntries != raftMaxAppendEntries || !rc.BatchApplyCh {
				t.Fatalf("batching: MaxAppendEntries %d BatchApplyCh %v, want %d true", rc.MaxAppendEntries, rc.BatchApplyCh, raftMaxAppendEntries)
			}
		})
	}
}

func TestRaftConfigHookOverridesTimingProfile(t *testing.T) {
	s, err := Config{InMemory: true, Addr: "a", Timing: TimingWAN, RaftConfig: func(c *raft.Config) {
		c.HeartbeatTimeout = 2 * time.Second
		c.MaxAppendEntries = 64
	}}.settle()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := raftConfig(s)
	if err != nil {
		t.Fatal(err)
	}
	if rc.HeartbeatTimeout != 2*time.Second || rc.ElectionTimeout != 3*time.Second || rc.MaxAppendEntries != 64 {
		t.Fatalf("hook not applied on top of the profile: heartbeat %s election %s MaxAppendEntries %d",
			rc.HeartbeatTimeout, rc.ElectionTimeout, rc.MaxAppendEntries)
	}
}

func TestRunningNodeUsesItsTimingProfile(t *testing.T) {
	n, err := NewRaftNode(Config{InMemory: true, Addr: "solo", Timing: TimingWAN}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if rc := n.Raft().ReloadableConfig(); rc.HeartbeatTimeout != 3*time.Second || rc.ElectionTimeout != 3*time.Second {
		t.Fatalf("running node has heartbeat %s election %s, want TimingWAN's 3s", rc.HeartbeatTimeout, rc.ElectionTimeout)
	}
}

func TestUnknownTimingAndLogStoreAreConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg   Config
		field string
	}{
		{Config{InMemory: true, Addr: "a", Timing: Timing(42)}, "Timing"},
		{Config{InMemory: true, Addr: "a", Timing: Timing(-1)}, "Timing"},
		{Config{InMemory: true, Addr: "a", LogStore: LogStoreKind(7)}, "LogStore"},
	} {
		err := tc.cfg.Validate()
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field || !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("%+v: got %v, want a *ConfigError for %s", tc.cfg, err, tc.field)
		}
	}
}

func TestTimingNames(t *testing.T) {
	for tm, want := range map[Timing]string{TimingAuto: "TimingAuto", TimingLAN: "TimingLAN", TimingDefault: "TimingDefault", TimingWAN: "TimingWAN", TimingLocal: "TimingLocal", Timing(9): "Timing(9)"} {
		if got := tm.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(tm), got, want)
		}
	}
}

// Config.Timing's documentation and TimingAuto's say the same about what
// TimingAuto picks, and resolveTiming does it: TimingLAN in memory,
// TimingLocal on loopback, TimingDefault elsewhere.
func TestTimingAutoIsDocumentedAsItBehaves(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want Timing
	}{
		{Config{InMemory: true, Addr: "n1"}, TimingLAN},
		{Config{Addr: "127.0.0.1:7000", Dir: t.TempDir(), Peers: []string{"127.0.0.1:7000", "127.0.0.1:7001"}}, TimingLocal},
		{Config{Addr: "10.0.0.1:7000", Dir: t.TempDir(), Peers: []string{"10.0.0.1:7000", "10.0.0.2:7000"}}, TimingDefault},
	} {
		s, err := tc.cfg.settle()
		if err != nil {
			t.Fatal(err)
		}
		if got := resolveTiming(s); got != tc.want {
			t.Errorf("%+v: TimingAuto resolved to %v, want %v", tc.cfg.Peers, got, tc.want)
		}
	}
	for _, doc := range []struct{ file, name string }{{"raftkit.go", "Timing"}, {"timing.go", "TimingAuto"}} {
		text := declDoc(t, doc.file, doc.name)
		for _, want := range []string{"TimingLAN", "in-memory", "TimingLocal", "loopback", "TimingDefault"} {
			if !strings.Contains(text, want) {
				t.Errorf("the doc of %s in %s does not say %q:\n%s", doc.name, doc.file, want, text)
			}
		}
	}
}

// declDoc returns the doc comment of the struct field or constant called
// name in file.
func declDoc(t *testing.T, file, name string) string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	var doc string
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.Field:
			for _, id := range n.Names {
				if id.Name == name && n.Doc != nil {
					doc = n.Doc.Text()
				}
			}
		case *ast.ValueSpec:
			for _, id := range n.Names {
				if id.Name == name && n.Doc != nil {
					doc = n.Doc.Text()
				}
			}
		}
		return true
	})
	if doc == "" {
		t.Fatalf("no doc comment for %s in %s", name, file)
	}
	return doc
}
