package raftkittest

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"

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
