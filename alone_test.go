package raftkit

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// aloneWindow is how long the tests below watch a node left alone.
const aloneWindow = 10 * time.Second

// logAlone starts three nodes, stops two without notice, and returns the
// lines the third logs (Info and above) during aloneWindow without a
// leader. quiet configures the survivor's campaign reports.
func logAlone(t *testing.T, quiet func(*campaign)) []map[string]any {
	t.Helper()
	var buf lockedBuffer
	addrs, lns := reservePorts(t, 3)
	base := t.TempDir()
	nodes := make([]*RaftNode, 3)
	for i := range nodes {
		var logger hclog.Logger = hclog.NewNullLogger()
		hooks := &nodeHooks{}
		if i == 0 {
			logger = hclog.New(&hclog.LoggerOptions{Name: "alone", Level: hclog.Info, Output: &buf, JSONFormat: true})
			hooks.campaign = quiet
		}
		n, err := newRaftNode(Config{Addr: addrs[i], Dir: filepath.Join(base, fmt.Sprint(i)), Peers: addrs, RaftConfig: fastRaft, Logger: logger, Listener: lns[i]}, fsmexample.New(), hooks)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		nodes[i] = n
	}
	if _, err := nodes[0].WaitForLeader(ctxTimeout(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes[1:] {
		n.Raft().Shutdown().Error() // no notice: as a crash would
		n.Close()
	}
	waitFor(t, 20*time.Second, "the survivor to lose its leader", func() bool { return nodes[0].GetLeaderAddr() == "" })
	from := len(buf.records(t))
	time.Sleep(aloneWindow) // the window measured
	return buf.records(t)[from:]
}

// A node alone logs the first of raft's election lines, then says in plain
// words that it has no leader, at the report rate, instead of repeating
// them: with reports every 2 s, at most 10 s / 2 s + 1 reports and a dozen
// other lines in 10 s. With the production rates (first report after 10 s,
// then one a minute) ten minutes alone log about 10 reports and the same
// dozen lines.
func TestNodeAloneLogsABoundedNumberOfLines(t *testing.T) {
	lines := logAlone(t, func(c *campaign) { c.first, c.every = time.Second, 2*time.Second })
	reports := 0
	for _, l := range lines {
		msg := fmt.Sprint(l["@message"])
		if strings.HasPrefix(msg, "no leader for ") {
			reports++
			if !strings.Contains(msg, "connection refused") {
				t.Errorf("the report does not say why the peers did not answer: %s", msg)
			}
		}
	}
	for _, l := range lines {
		t.Logf("%s %s", l["@level"], l["@message"])
	}
	if reports < 3 || reports > 6 {
		t.Errorf("%d reports in %s at one per 2 s", reports, aloneWindow)
	}
	if len(lines)-reports > 12 {
		t.Errorf("%d lines besides the reports in %s alone", len(lines)-reports, aloneWindow)
	}
}

// The negative control: without holding back, raft's lines repeat every
// election timeout, and the bound above fails.
func TestNodeAloneRepeatsRaftsLinesWithoutTheCampaignFilter(t *testing.T) {
	lines := logAlone(t, func(c *campaign) { c.off = true })
	if len(lines) <= 18 {
		t.Fatalf("only %d lines in %s alone without the filter", len(lines), aloneWindow)
	}
}
