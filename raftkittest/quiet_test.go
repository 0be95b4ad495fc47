package raftkittest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// logTB is a testing.TB that keeps what the cluster logs.
type logTB struct {
	testing.TB
	mu    sync.Mutex
	lines []string
}

func (l *logTB) Log(args ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprint(args...))
	l.mu.Unlock()
}

func (l *logTB) logged() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// A cluster that works and then closes cleanly logs no ERROR and no WARN:
// a passing test must not look failed under -v.
func TestCleanCloseLogsNoErrorOrWarning(t *testing.T) {
	for run := 0; run < 3; run++ {
		tb := &logTB{TB: t}
		c := NewCluster(tb, 3, fsmexample.New, WithLogLevel(hclog.Warn), WithState(kvState))
		leader := c.WaitForLeader()
		for i := 0; i < 20; i++ {
			mustSet(t, leader, fmt.Sprintf("k%d", i), "v")
		}
		mustSet(t, c.Followers()[0], "via-follower", "v")
		c.AssertConsistent()
		c.Close()
		for _, line := range tb.logged() {
			if strings.Contains(line, "[ERROR]") || strings.Contains(line, "[WARN]") {
				t.Errorf("run %d: a clean close logged: %s", run, line)
			}
		}
	}
}

// A partition the test made is not an error of the system under test:
// raft's complaints about links the MemNetwork cut go to Debug, so that a
// WithLogLevel(hclog.Warn) run shows what is left.
func TestFaultsTheTestMadeAreNotLoggedAsErrors(t *testing.T) {
	tb := &logTB{TB: t}
	c := NewCluster(tb, 3, fsmexample.New, WithLogLevel(hclog.Warn), WithState(kvState))
	leader := c.WaitForLeader()
	follower := c.Followers()[0]
	c.Isolate(follower)
	for i := 0; i < 10; i++ {
		mustSet(t, leader, fmt.Sprintf("k%d", i), "v")
	}
	// Long enough for raft's heartbeats to the cut follower to fail many
	// times over (each failure was an ERROR line).
	waitUntil(t, 10*time.Second, "the isolated follower to start an election", func() bool {
		return follower.Raft().State() != raft.Follower
	})
	c.Heal()
	c.AssertConsistent()
	c.Close()
	for _, line := range tb.logged() {
		if strings.Contains(line, "MemNetwork") && (strings.Contains(line, "[ERROR]") || strings.Contains(line, "[WARN]")) {
			t.Errorf("a fault the test made was logged above Debug: %s", line)
		}
	}
}
