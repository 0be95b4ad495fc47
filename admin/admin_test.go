package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/prom"
)

// adminCall sends method path (with an optional JSON body) to srv and
// decodes the JSON answer into out (if not nil). It returns the status.
func adminCall(t *testing.T, srv *httptest.Server, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctxTimeout(t, 20*time.Second), method, srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: HTTP %d, body %q is not the expected JSON: %v", method, path, resp.StatusCode, data, err)
		}
	}
	return resp.StatusCode
}

// adminServers serves AdminHandler for every node of c.
func adminServers(t *testing.T, c *testCluster, opts Options) []*httptest.Server {
	t.Helper()
	var srvs []*httptest.Server
	for _, n := range c.nodes {
		srv := httptest.NewServer(Handler(n, opts))
		t.Cleanup(srv.Close)
		srvs = append(srvs, srv)
	}
	return srvs
}

func TestAdminRoutesOnThreeNodeTCPCluster(t *testing.T) {
	m := prom.NewMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	c := newMetricsCluster(t, m)
	srvs := adminServers(t, c, Options{AllowMutations: true, AllowBackup: true, Metrics: prom.Handler(reg)})
	l := c.leader()
	f := (l + 1) % 3
	if _, err := c.nodes[l].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("k", []byte("v"))); err != nil {
		t.Fatal(err)
	}
	c.waitApplied(c.nodes[l].Status().CommitIndex)
	waitFor(t, 15*time.Second, "every node to know the leader and be ready", func() bool {
		for _, n := range c.nodes {
			if n.GetLeaderID() != c.nodes[l].ID() || n.Ready() != nil {
				return false
			}
		}
		return true
	})

	t.Run("status", func(t *testing.T) {
		var st raftkit.Status
		if code := adminCall(t, srvs[f], "GET", "/status", nil, &st); code != 200 {
			t.Fatalf("HTTP %d", code)
		}
		if st.ID != c.nodes[f].ID() || st.State != "Follower" || st.LeaderID != c.nodes[l].ID() || st.Term == 0 || st.AppliedIndex == 0 || st.LastContact.IsZero() {
			t.Fatalf("follower status %+v", st)
		}
		if len(st.Servers) != 3 {
			t.Fatalf("servers %+v", st.Servers)
		}
		for _, s := range st.Servers {
			if s.Suffrage != "Voter" || !s.Voter {
				t.Fatalf("server %+v: want suffrage Voter", s)
			}
		}
	})

	t.Run("health", func(t *testing.T) {
		for i, srv := range srvs {
			var h Health
			if code := adminCall(t, srv, "GET", "/health", nil, &h); code != 200 || !h.Healthy || h.LeaderID != c.nodes[l].ID() {
				t.Fatalf("node %d health: HTTP %d %+v", i, code, h)
			}
		}
	})

	t.Run("metrics", func(t *testing.T) {
		resp, err := srvs[l].Client().Get(srvs[l].URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got := parseMetrics(t, string(body))
		if k := fmt.Sprintf(`raftkit_is_leader{node_id="%s"}`, c.nodes[l].ID()); resp.StatusCode != 200 || got[k] != 1 {
			t.Fatalf("HTTP %d, %s = %v", resp.StatusCode, k, got[k])
		}
	})

	t.Run("snapshot", func(t *testing.T) {
		if code := adminCall(t, srvs[f], "POST", "/snapshot", nil, &raftkit.Status{}); code != 200 {
			t.Fatalf("HTTP %d", code)
		}
		if idx := c.nodes[f].Raft().Stats()["last_snapshot_index"]; idx == "0" {
			t.Fatal("no snapshot after POST snapshot")
		}
	})

	t.Run("backup", func(t *testing.T) {
		resp, err := srvs[f].Client().Get(srvs[f].URL + "/backup")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		info, err := raftkit.ReadBackupInfo(resp.Body)
		if resp.StatusCode != 200 || err != nil || info.NodeID != c.nodes[f].ID() {
			t.Fatalf("HTTP %d, %+v, %v", resp.StatusCode, info, err)
		}
	})

	t.Run("join and remove", func(t *testing.T) {
		addrs, lns := reservePorts(t, 1)
		addr := addrs[0]
		extra, err := raftkit.NewRaftNode(raftkit.Config{Addr: addr, Listener: lns[0], Dir: filepath.Join(t.TempDir(), "extra"), RaftConfig: fastRaft, Logger: testLogger(t)}, fsmexample.New())
		if err != nil {
			t.Fatal(err)
		}
		defer extra.Close()
		// Sent to a follower: it forwards to the leader.
		if code := adminCall(t, srvs[f], "POST", "/join", Request{ID: "extra", Addr: addr, Nonvoter: true}, &raftkit.Status{}); code != 200 {
			t.Fatalf("join: HTTP %d", code)
		}
		var st raftkit.Status
		adminCall(t, srvs[l], "GET", "/status", nil, &st)
		if len(st.Servers) != 4 || st.Servers[3].ID != "extra" || st.Servers[3].Suffrage != "Nonvoter" {
			t.Fatalf("after join: %+v", st.Servers)
		}
		if code := adminCall(t, srvs[f], "POST", "/remove-server", Request{ID: "extra"}, &raftkit.Status{}); code != 200 {
			t.Fatalf("remove: HTTP %d", code)
		}
		adminCall(t, srvs[l], "GET", "/status", nil, &st)
		if len(st.Servers) != 3 {
			t.Fatalf("after remove: %+v", st.Servers)
		}
	})

	t.Run("join of a voter where nothing answers", func(t *testing.T) {
		// The admin route goes through AddVoter's checks: a mistyped
		// address is refused, and the cluster keeps its three voters.
		addrs, lns := reservePorts(t, 1)
		typo := addrs[0]
		lns[0].Close() // nothing listens there
		var e Error
		if code := adminCall(t, srvs[f], "POST", "/join", Request{ID: "typo", Addr: typo}, &e); code != 503 || e.Code != "not_applied" || !strings.Contains(e.Error, typo) {
			t.Fatalf("join at a mistyped address: HTTP %d %+v, want 503 not_applied naming %s", code, e, typo)
		}
		var st raftkit.Status
		adminCall(t, srvs[l], "GET", "/status", nil, &st)
		if len(st.Servers) != 3 {
			t.Fatalf("after the refused join: %+v", st.Servers)
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		var e Error
		if code := adminCall(t, srvs[f], "POST", "/remove-server", nil, &e); code != 400 || e.Error == "" {
			t.Fatalf("remove without id: HTTP %d %+v", code, e)
		}
		if code := adminCall(t, srvs[f], "POST", "/join", Request{ID: "x"}, &e); code != 400 {
			t.Fatalf("join without addr: HTTP %d %+v", code, e)
		}
		if code := adminCall(t, srvs[f], "POST", "/transfer-leadership", Request{ID: "nobody"}, &e); code != 400 {
			t.Fatalf("transfer to a non-member: HTTP %d %+v", code, e)
		}
		if code := adminCall(t, srvs[f], "GET", "/snapshot", nil, nil); code != 405 {
			t.Fatalf("GET snapshot: HTTP %d, want 405", code)
		}
		resp, err := srvs[f].Client().Post(srvs[f].URL+"/join", "application/json", strings.NewReader("{nope"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Fatalf("garbage JSON: HTTP %d", resp.StatusCode)
		}
		var nl Error
		if code := adminCall(t, srvs[f], "POST", "/restore", nil, &nl); code != 503 || nl.LeaderID != c.nodes[l].ID() || nl.Code != "not_applied" {
			t.Fatalf("restore on a follower: HTTP %d %+v, want 503 not_applied naming the leader", code, nl)
		}
	})

	t.Run("transfer leadership", func(t *testing.T) {
		target := c.nodes[f].ID()
		if code := adminCall(t, srvs[f], "POST", "/transfer-leadership", Request{ID: target}, &raftkit.Status{}); code != 200 {
			t.Fatalf("HTTP %d", code)
		}
		waitFor(t, 15*time.Second, "the target to lead", c.nodes[f].IsLeader)
	})
}

func TestAdminMutationsAreOffByDefault(t *testing.T) {
	node := newMemNode(t, "adm1")
	srv := httptest.NewServer(Handler(node, Options{}))
	t.Cleanup(srv.Close)
	for _, path := range []string{"/snapshot", "/transfer-leadership", "/remove-server", "/join", "/restore"} {
		var e Error
		if code := adminCall(t, srv, "POST", path, Request{ID: "x", Addr: "y"}, &e); code != 403 || e.Error == "" {
			t.Fatalf("POST %s: HTTP %d %+v, want 403", path, code, e)
		}
	}
	if code := adminCall(t, srv, "GET", "/backup", nil, &Error{}); code != 403 {
		t.Fatalf("GET backup: HTTP %d, want 403", code)
	}
	if code := adminCall(t, srv, "GET", "/metrics", nil, &Error{}); code != 404 {
		t.Fatalf("GET metrics without a gatherer: HTTP %d, want 404", code)
	}
	if st := node.Status(); len(st.Servers) != 1 {
		t.Fatalf("refused requests changed the cluster: %+v", st.Servers)
	}
}

func TestHealthFlipsOnIsolatedNode(t *testing.T) {
	net := raftkit.NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	f := (l + 1) % 3
	srv := httptest.NewServer(Handler(nodes[f], Options{}))
	t.Cleanup(srv.Close)
	health := func() (int, Health) {
		var h Health
		code := adminCall(t, srv, "GET", "/health", nil, &h)
		return code, h
	}
	waitFor(t, 15*time.Second, "the follower to be healthy", func() bool { code, _ := health(); return code == 200 })

	net.Isolate(nodes[f].Addr())
	waitFor(t, 15*time.Second, "the isolated follower's health to fail", func() bool {
		code, h := health()
		return code == 503 && !h.Healthy && h.Reason != ""
	})
	net.Heal()
	waitFor(t, 30*time.Second, "the healed follower to be healthy again", func() bool { code, _ := health(); return code == 200 })

	// The leader, isolated, steps down and fails too.
	l = memLeader(t, nodes)
	lsrv := httptest.NewServer(Handler(nodes[l], Options{}))
	t.Cleanup(lsrv.Close)
	net.Isolate(nodes[l].Addr())
	waitFor(t, 15*time.Second, "the isolated leader's health to fail", func() bool {
		return adminCall(t, lsrv, "GET", "/health", nil, &Health{}) == 503
	})
}

func TestHealthReasons(t *testing.T) {
	cases := []struct {
		name  string
		ready error
		st    raftkit.Status
		ok    bool
	}{
		{"in step", nil, raftkit.Status{CommitIndex: 10, AppliedIndex: 10}, true},
		{"not ready", raftkit.ErrNotReady, raftkit.Status{CommitIndex: 10, AppliedIndex: 10}, false},
		{"lagging", nil, raftkit.Status{CommitIndex: 5000, AppliedIndex: 10}, false},
		{"lag at the limit", nil, raftkit.Status{CommitIndex: 1010, AppliedIndex: 10}, true},
	}
	for _, tc := range cases {
		if reason := checkHealth(tc.ready, tc.st, DefaultMaxApplyLag); (reason == "") != tc.ok {
			t.Errorf("%s: reason %q, want healthy=%v", tc.name, reason, tc.ok)
		}
	}
}

// WriteError answers each class with its status, and a removed node with
// 410 and no Retry-After: it will not serve again by itself.
func TestWriteErrorMapsEveryClass(t *testing.T) {
	for _, tc := range []struct {
		err        error
		code       int
		errCode    string
		retryAfter bool
	}{
		{raftkit.ErrNoLeader, 503, "not_applied", true},
		{raftkit.ErrNotReady, 503, "not_applied", true},
		{fmt.Errorf("raftkit: apply: %w", raftkit.ErrRemoved), 410, CodeRemoved, false},
		{raftkit.ErrUnknownOutcome, 504, "unknown_outcome", false},
		{raftkit.ErrTooLarge, 400, "invalid", false},
		{raftkit.ErrNotAuthorized, 403, "not_authorized", false},
		{raftkit.ErrClosed, 503, "closed", true},
		{&raftkit.FSMError{Message: "out of stock"}, 422, "rejected", false},
	} {
		rec := httptest.NewRecorder()
		WriteError(rec, tc.err)
		var body Error
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatal(err)
		}
		if rec.Code != tc.code || body.Code != tc.errCode || (rec.Header().Get("Retry-After") != "") != tc.retryAfter {
			t.Errorf("%v: %d %q Retry-After %q; want %d %q retry=%v", tc.err, rec.Code, body.Code, rec.Header().Get("Retry-After"), tc.code, tc.errCode, tc.retryAfter)
		}
	}
}
