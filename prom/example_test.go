package prom_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/prom"
)

// The application picks the registry; InstallGlobal routes raft's own
// go-metrics (which only has a process-wide sink) into the same Metrics.
func ExampleMetrics() {
	m := prom.NewMetrics()
	uninstall, err := m.InstallGlobal()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer uninstall()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)

	node, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Addr: "node1", Peers: []string{"node1"}, Metrics: m}, fsmexample.New())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := node.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if _, err := node.Apply(ctx, fsmexample.Set("k", []byte("v"))); err != nil {
		fmt.Println(err)
		return
	}

	// prom.Handler(reg) is what admin.Options.Metrics or the application's
	// own mux serves.
	rec := httptest.NewRecorder()
	prom.Handler(reg).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "raftkit_is_leader") || strings.HasPrefix(line, "raftkit_apply_duration_seconds_count") || strings.HasPrefix(line, "raft_apply ") {
			fmt.Println(line)
		}
	}
	// Output:
	// raft_apply 1
	// raftkit_apply_duration_seconds_count{node_id="node1",outcome="ok",path="local"} 1
	// raftkit_is_leader{node_id="node1"} 1
}
