package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raftkit/raftkit"
	"github.com/raftkit/raftkit/admin"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// oneNode starts an in-memory node that leads a cluster of its own, with
// one key written so that a snapshot has something to take.
func oneNode(t *testing.T) *raftkit.RaftNode {
	t.Helper()
	n, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Addr: "solo", Peers: []string{"solo"}, RaftConfig: fastRaft}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := n.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Apply(ctx, fsmexample.Set("k", []byte("v"))); err != nil {
		t.Fatal(err)
	}
	return n
}

// bearerGuard is the middleware admin.Handler's doc asks applications for:
// 401 unless the request has exactly one Authorization: Bearer token.
type bearerGuard struct {
	token string
	next  http.Handler
	mu    sync.Mutex
	last  http.Header // of the last request let through
}

func (g *bearerGuard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if got := r.Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+g.token {
		w.Header().Set("WWW-Authenticate", "Bearer")
		http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
		return
	}
	g.mu.Lock()
	g.last = r.Header.Clone()
	g.mu.Unlock()
	g.next.ServeHTTP(w, r)
}

func (g *bearerGuard) lastHeader() http.Header {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.last
}

func statusJSON(t *testing.T, out string) raftkit.Status {
	t.Helper()
	var st raftkit.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -json: %v\n%s", err, out)
	}
	return st
}

func TestCLIHeaderAuth(t *testing.T) {
	bin := buildCLI(t)
	node := oneNode(t)
	guard := &bearerGuard{token: "s3cret", next: admin.Handler(node, admin.Options{AllowMutations: true, AllowBackup: true})}
	srv := httptest.NewServer(guard)
	t.Cleanup(srv.Close)
	const auth = "Authorization: Bearer s3cret"
	snapshots := func() string { return node.Raft().Stats()["last_snapshot_index"] }

	t.Run("refused without the token", func(t *testing.T) {
		for _, args := range [][]string{{"status"}, {"status", "-header", "Authorization: Bearer wrong"}, {"snapshot"}} {
			r := runCLI(t, bin, append(args, "-admin", srv.URL)...)
			if r.code != 1 || !strings.Contains(r.stderr, "HTTP 401: missing or wrong bearer token") || !strings.Contains(r.stderr, "refused in front of the admin handler") {
				t.Fatalf("raftkit %v: exit %d, stderr %s; want exit 1 naming the 401", args, r.code, r.stderr)
			}
		}
		if r := runCLIEnv(t, []string{"RAFTKIT_HEADER=Authorization: Bearer wrong"}, bin, "status", "-admin", srv.URL); r.code != 1 || !strings.Contains(r.stderr, "HTTP 401") {
			t.Fatalf("wrong token in RAFTKIT_HEADER: exit %d, stderr %s", r.code, r.stderr)
		}
		if s := snapshots(); s != "0" {
			t.Fatalf("a refused snapshot request took a snapshot (last_snapshot_index %s)", s)
		}
	})

	t.Run("-header", func(t *testing.T) {
		if st := statusJSON(t, must(t, bin, "status", "-json", "-admin", srv.URL, "-header", auth)); st.ID != node.ID() || st.State != "Leader" {
			t.Fatalf("status -json: %+v", st)
		}
		if out := must(t, bin, "-header", auth, "-admin", srv.URL, "status"); !strings.Contains(out, "Leader") {
			t.Fatalf("status table:\n%s", out)
		}
	})

	t.Run("RAFTKIT_HEADER", func(t *testing.T) {
		// Several headers, CRLF and blank lines as an editor may leave them.
		env := "RAFTKIT_HEADER=X-Tenant: ops\r\n\n" + auth + "\n"
		r := runCLIEnv(t, []string{env}, bin, "status", "-json", "-admin", srv.URL)
		if r.code != 0 {
			t.Fatalf("status with RAFTKIT_HEADER: exit %d, stderr %s", r.code, r.stderr)
		}
		if st := statusJSON(t, r.stdout); st.ID != node.ID() {
			t.Fatalf("status -json: %+v", st)
		}
		if got := guard.lastHeader().Values("X-Tenant"); !reflect.DeepEqual(got, []string{"ops"}) {
			t.Fatalf("X-Tenant received: %q, want [ops]", got)
		}
	})

	t.Run("-header replaces RAFTKIT_HEADER", func(t *testing.T) {
		// The guard refuses two Authorization headers: the stale one must not go.
		r := runCLIEnv(t, []string{"RAFTKIT_HEADER=Authorization: Bearer stale\nX-Tenant: ops"}, bin, "status", "-admin", srv.URL, "-header", auth)
		if r.code != 0 {
			t.Fatalf("exit %d, stderr %s", r.code, r.stderr)
		}
		if got := guard.lastHeader().Values("X-Tenant"); !reflect.DeepEqual(got, []string{"ops"}) {
			t.Fatalf("X-Tenant received: %q, want [ops] (only Authorization is replaced)", got)
		}
	})

	t.Run("snapshot", func(t *testing.T) {
		if out := must(t, bin, "snapshot", "-admin", srv.URL, "-header", auth); !strings.Contains(out, "snapshot taken on "+node.ID()) {
			t.Fatalf("snapshot said %q", out)
		}
		if s := snapshots(); s == "0" {
			t.Fatal("no snapshot on the node after `raftkit snapshot`")
		}
	})

	// backup and restore make their requests apart from the other commands.
	t.Run("backup and restore", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "state.backup")
		env := []string{"RAFTKIT_HEADER=" + auth}
		if r := runCLI(t, bin, "backup", file, "-admin", srv.URL); r.code != 1 || !strings.Contains(r.stderr, "HTTP 401") {
			t.Fatalf("backup without the token: exit %d, stderr %s", r.code, r.stderr)
		}
		if r := runCLIEnv(t, env, bin, "backup", file, "-admin", srv.URL); r.code != 0 {
			t.Fatalf("backup: exit %d, stderr %s", r.code, r.stderr)
		}
		if info, err := readInfo(file); err != nil || info.NodeID != node.ID() {
			t.Fatalf("backup file: %+v, %v", info, err)
		}
		if r := runCLI(t, bin, "restore", "-yes", file, "-admin", srv.URL); r.code != 1 || !strings.Contains(r.stderr, "HTTP 401") {
			t.Fatalf("restore without the token: exit %d, stderr %s", r.code, r.stderr)
		}
		if r := runCLIEnv(t, env, bin, "restore", "-yes", file, "-admin", srv.URL); r.code != 0 || !strings.Contains(r.stdout, "restored "+file) {
			t.Fatalf("restore: exit %d, stdout %s, stderr %s", r.code, r.stdout, r.stderr)
		}
	})
}

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func serial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate for name signed by ca, for usage, and
// its PEM key.
func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage, ips ...net.IP) (certPEM, keyPEM []byte) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCLIMutualTLS(t *testing.T) {
	bin := buildCLI(t)
	node := oneNode(t)
	dir := t.TempDir()
	ca, other := newTestCA(t, "raftkit test CA"), newTestCA(t, "some other CA")
	srvCert, srvKey := ca.issue(t, "admin server", x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))
	pair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := ca.issue(t, "operator", x509.ExtKeyUsageClientAuth)
	strangerCert, strangerKey := other.issue(t, "stranger", x509.ExtKeyUsageClientAuth)
	caFile := writeFile(t, dir, "ca.pem", ca.pem)
	certFile, keyFile := writeFile(t, dir, "operator.pem", cert), writeFile(t, dir, "operator-key.pem", key)
	strangerFile, strangerKeyFile := writeFile(t, dir, "stranger.pem", strangerCert), writeFile(t, dir, "stranger-key.pem", strangerKey)

	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(ca.cert)
	var mu sync.Mutex
	var clients []string // common names of the verified client certificates
	h := admin.Handler(node, admin.Options{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		clients = append(clients, r.TLS.VerifiedChains[0][0].Subject.CommonName)
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs, Certificates: []tls.Certificate{pair}}
	// Refused handshakes are what some cases are about: not worth a log line.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)

	t.Run("client certificate", func(t *testing.T) {
		if st := statusJSON(t, must(t, bin, "status", "-json", "-admin", srv.URL, "-cacert", caFile, "-cert", certFile, "-key", keyFile)); st.ID != node.ID() {
			t.Fatalf("status -json: %+v", st)
		}
		mu.Lock()
		defer mu.Unlock()
		if !reflect.DeepEqual(clients, []string{"operator"}) {
			t.Fatalf("the server verified client certificates %q, want [operator]", clients)
		}
	})

	refused := []struct {
		name string
		args []string
		want []string
	}{
		{"no client certificate", []string{"-cacert", caFile}, []string{"tls: certificate required", "wants a client certificate: -cert and -key"}},
		{"client certificate of another CA", []string{"-cacert", caFile, "-cert", strangerFile, "-key", strangerKeyFile}, []string{"tls: certificate required", "did not accept -cert " + strangerFile}},
		{"server unverified without -cacert", []string{"-cert", certFile, "-key", keyFile}, []string{"certificate signed by unknown authority", "with -cacert"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, bin, append([]string{"status", "-admin", srv.URL, "-timeout", "30s"}, tc.args...)...)
			if r.code != 1 {
				t.Fatalf("exit %d, want 1; stderr %s", r.code, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Fatalf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if len(clients) != 1 {
		t.Fatalf("requests reached the handler without a trusted client certificate: %q", clients)
	}
}

// Mistakes in headers and TLS flags are reported before any request is
// sent: bad usage exits 2, unreadable files exit 1, each naming the value.
func TestCLIConnectFlagErrors(t *testing.T) {
	bin := buildCLI(t)
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "not to be reached", http.StatusTeapot)
	}))
	t.Cleanup(srv.Close)
	// An https URL, so that the TLS files are read; nothing listens for TLS
	// there, and nothing is sent anyway.
	httpsURL := "https://" + srv.Listener.Addr().String()
	dir := t.TempDir()
	notPEM := writeFile(t, dir, "not.pem", []byte("hello"))
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct {
		env  string
		args []string
		code int
		want []string
	}{
		{"", []string{"-admin", srv.URL, "-header", "Authorization Bearer s3cr3t-token"}, 2, []string{`"Authorization …" (33 bytes)`, "no colon"}},
		{"", []string{"-admin", srv.URL, "-header", ": s3cr3t-token"}, 2, []string{`": …"`, "empty name"}},
		{"", []string{"-admin", srv.URL, "-header", "Bad Name: s3cr3t-token"}, 2, []string{`"Bad Name"`}},
		{"", []string{"-admin", srv.URL, "-header", "X-Ok: s3cr3t-token\x01"}, 2, []string{`"X-Ok"`, "control character"}},
		{"X-Ok: 1\nno-colon-s3cr3t-token", []string{"-admin", srv.URL}, 2, []string{"RAFTKIT_HEADER line 2", "of 21 bytes"}},
		{"", []string{"-admin", httpsURL, "-cert", "c.pem"}, 2, []string{"-cert c.pem needs -key"}},
		{"", []string{"-admin", httpsURL, "-key", "k.pem"}, 2, []string{"-key k.pem needs -cert"}},
		{"", []string{"-admin", srv.URL, "-cacert", notPEM}, 2, []string{"need an https:// admin URL"}},
		{"", []string{"-admin", httpsURL, "-cacert", missing}, 1, []string{"-cacert", missing}},
		{"", []string{"-admin", httpsURL, "-cacert", notPEM}, 1, []string{"-cacert " + notPEM, "no PEM certificate"}},
		{"", []string{"-admin", httpsURL, "-cert", notPEM, "-key", missing}, 1, []string{"-key", missing}},
		{"", []string{"-admin", httpsURL, "-cert", notPEM, "-key", notPEM}, 1, []string{"-cert " + notPEM}},
	} {
		r := runCLIEnv(t, []string{"RAFTKIT_HEADER=" + tc.env}, bin, append([]string{"status"}, tc.args...)...)
		if r.code != tc.code {
			t.Fatalf("RAFTKIT_HEADER=%q raftkit status %q: exit %d, want %d; stderr %s", tc.env, tc.args, r.code, tc.code, r.stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(r.stderr, w) {
				t.Fatalf("RAFTKIT_HEADER=%q raftkit status %q: stderr lacks %q:\n%s", tc.env, tc.args, w, r.stderr)
			}
		}
		if strings.Contains(r.stderr+r.stdout, "s3cr3t") {
			t.Fatalf("RAFTKIT_HEADER=%q raftkit status %q printed a header's value:\n%s", tc.env, tc.args, r.stderr)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("%d request(s) sent despite the errors", n)
	}
	// Offline commands never reach the admin handler: its flags are not
	// theirs to check.
	if r := runCLIEnv(t, []string{"RAFTKIT_HEADER=no-colon"}, bin, "inspect", missing, "-cert", "c.pem"); r.code != 1 || strings.Contains(r.stderr, "usage") {
		t.Fatalf("inspect with a bad RAFTKIT_HEADER and -cert alone: exit %d, stderr %s", r.code, r.stderr)
	}
}

func TestRequestHeader(t *testing.T) {
	c := &cli{errOut: io.Discard}
	fs := c.flagSet("x")
	if _, err := parseInterleaved(fs, []string{"-header", "authorization:  Bearer flag ", "-header", "X-Extra: 1", "status", "-header", "x-extra:2", "-header", "Host: admin.internal"}); err != nil {
		t.Fatal(err)
	}
	h, err := requestHeader("X-Tenant: ops\r\n\nAuthorization: Bearer env\nX-Empty:\n", c.headers.list)
	if err != nil {
		t.Fatal(err)
	}
	want := http.Header{"X-Tenant": {"ops"}, "Authorization": {"Bearer flag"}, "X-Extra": {"1", "2"}, "X-Empty": {""}, "Host": {"admin.internal"}}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("got %q\nwant %q", h, want)
	}
	c.admin, c.header = "http://127.0.0.1:1/raft/", h
	req, err := c.newRequest(context.Background(), "GET", "status", nil)
	if err != nil {
		t.Fatal(err)
	}
	if req.URL.String() != "http://127.0.0.1:1/raft/status" || req.Host != "admin.internal" || req.Header.Get("Authorization") != "Bearer flag" {
		t.Fatalf("request: %s host %q header %q", req.URL, req.Host, req.Header)
	}
	// Errors name the header, never its value.
	for bad, name := range map[string]string{"no colon": `"no …"`, ": v": `": …"`, "Sp ace: v": `"Sp ace"`, "X-Ok: a\rb": `"X-Ok"`} {
		var hf headerFlag
		if err := hf.Set(bad); err != nil || hf.err == nil || !strings.Contains(hf.err.Error(), name) || !errors.Is(hf.err, errUsage) {
			t.Errorf("-header %q: Set %v, then %v; want usage error naming it as %s", bad, err, hf.err, name)
		}
	}
}
