package raftkit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/port"
)

// Certificates are made here, in the test; no key file is committed.

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

var serial = big.NewInt(100) // only touched from the test goroutine

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, der: der}
}

type certOpts struct {
	dns      []string
	eku      []x509.ExtKeyUsage
	notAfter time.Time
}

// nodeCert is what a raftkit node needs: server and client usage.
func nodeCert(names ...string) certOpts {
	return certOpts{dns: names, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
}

// issue writes cert.pem and key.pem for a new certificate into dir.
func (ca *testCA) issue(t testing.TB, dir string, o certOpts) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial.Add(serial, big.NewInt(1))
	notAfter := o.notAfter
	if notAfter.IsZero() {
		notAfter = time.Now().Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: new(big.Int).Set(serial),
		Subject:      pkix.Name{CommonName: fmt.Sprint(o.dns)},
		DNSNames:     o.dns,
		NotBefore:    time.Now().Add(-2 * time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  o.eku,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
	return certFile, keyFile
}

func writePEM(t testing.TB, file, typ string, ders ...[]byte) {
	t.Helper()
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	// Write and rename so a reloading node never reads half a file.
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
}

// tlsEnv is a CA with its bundle file.
type tlsEnv struct {
	ca     *testCA
	caFile string
	dir    string
}

func newTLSEnv(t testing.TB) *tlsEnv {
	dir := t.TempDir()
	e := &tlsEnv{ca: newTestCA(t, "raftkit test CA"), caFile: filepath.Join(dir, "ca.pem"), dir: dir}
	writePEM(t, e.caFile, "CERTIFICATE", e.ca.der)
	return e
}

func (e *tlsEnv) config(t testing.TB, name string, o certOpts) *TLSConfig {
	cert, key := e.ca.issue(t, filepath.Join(e.dir, name), o)
	return &TLSConfig{CAFile: e.caFile, CertFile: cert, KeyFile: key, PeerNames: []string{"*.raft.test"}}
}

func newTLSCluster(t *testing.T, e *tlsEnv) *testCluster {
	var tcs []*TLSConfig
	for i := 0; i < 3; i++ {
		tcs = append(tcs, e.config(t, fmt.Sprintf("node%d", i), nodeCert(fmt.Sprintf("node%d.raft.test", i))))
	}
	return newTCPCluster(t, 3, func(c *Config) { c.TLS = tcs[nodeIndex(c)] })
}

func TestTLSClusterForwardsJoinsAndReads(t *testing.T) {
	e := newTLSEnv(t)
	c := newTLSCluster(t, e)
	l := c.leader()
	f := (l + 1) % 3
	if _, err := c.nodes[f].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("secure", []byte("yes"))); err != nil {
		t.Fatalf("forwarded write over mTLS: %v", err)
	}
	if err := c.nodes[(l+2)%3].LinearizableRead(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatalf("follower read over mTLS: %v", err)
	}
	if _, ok := c.fsms[(l+2)%3].Get("secure"); !ok {
		t.Fatal("linearizable read missed the write")
	}
	kv := fsmexample.New()
	addrs, lns := reservePorts(t, 1)
	n4, err := NewRaftNode(Config{Addr: addrs[0], Listener: lns[0], Dir: t.TempDir(), Join: []string{c.addrs[f]},
		TLS: e.config(t, "node4", nodeCert("node4.raft.test")), RaftConfig: fastRaft}, kv)
	if err != nil {
		t.Fatalf("join with a valid certificate: %v", err)
	}
	defer n4.Close()
	waitFor(t, 10*time.Second, "the joined node to get the data", func() bool { _, ok := kv.Get("secure"); return ok })
}

func TestTLSRefusesUnauthorisedPeers(t *testing.T) {
	e := newTLSEnv(t)
	c := newTLSCluster(t, e)
	l := c.leader()
	other := &tlsEnv{ca: newTestCA(t, "another CA"), dir: t.TempDir()}
	other.caFile = filepath.Join(other.dir, "ca.pem")
	writePEM(t, other.caFile, "CERTIFICATE", other.ca.der)
	rogues := map[string]*TLSConfig{
		"certificate from another CA": func() *TLSConfig {
			tc := other.config(t, "rogue", nodeCert("rogue.raft.test"))
			tc.CAFile = e.caFile // trusts the cluster, but is not trusted by it
			return tc
		}(),
		"client-only certificate": e.config(t, "client", certOpts{dns: []string{"client.raft.test"}, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}),
		"expired certificate":     e.config(t, "expired", certOpts{dns: []string{"old.raft.test"}, eku: nodeCert().eku, notAfter: time.Now().Add(-time.Hour)}),
		"name outside PeerNames":  e.config(t, "web", nodeCert("www.example.test")),
		"no TLS at all":           nil,
	}
	// Control: the same probes with a valid node certificate get answers,
	// so the refusals below are the handshake's doing.
	valid := e.config(t, "valid", nodeCert("valid.raft.test"))
	st := c.nodes[l].Status()
	var vote raft.RequestVoteResponse
	if err := rogueTransport(t, valid).RequestVote(raft.ServerID(st.LeaderID), raft.ServerAddress(st.LeaderAddr),
		&raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("valid"), Addr: []byte("valid")}, Term: st.Term}, &vote); err != nil {
		t.Fatalf("authorised peer's RequestVote got no answer: %v", err)
	}
	if vote.Granted {
		t.Fatal("leader granted a vote in its own term")
	}
	if err := rogueRPC(valid, c.addrs[(l+1)%3]); err != nil {
		t.Fatalf("authorised peer's request got no answer: %v", err)
	}
	for name, rogue := range rogues {
		t.Run(name, func(t *testing.T) {
			before := c.nodes[l].Status()
			// A spoofed leader-transfer and a vote request with a huge term.
			trans := rogueTransport(t, rogue)
			err := trans.TimeoutNow(raft.ServerID(before.LeaderID), raft.ServerAddress(before.LeaderAddr),
				&raft.TimeoutNowRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("rogue"), Addr: []byte("rogue")}}, &raft.TimeoutNowResponse{})
			if err == nil {
				t.Fatal("TimeoutNow from an unauthorised peer was accepted")
			}
			err = trans.RequestVote(raft.ServerID(before.LeaderID), raft.ServerAddress(before.LeaderAddr),
				&raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("rogue"), Addr: []byte("rogue")}, Term: before.Term + 100, LastLogIndex: 1 << 40, LastLogTerm: before.Term + 100},
				&raft.RequestVoteResponse{})
			if err == nil {
				t.Fatal("RequestVote from an unauthorised peer was accepted")
			}
			// It cannot join (through a follower, which would forward).
			// (A client-only certificate already fails the joiner's own
			// config check; the transport checks above cover the server.)
			cfg := Config{Addr: "127.0.0.1:0", Dir: t.TempDir(), Join: []string{c.addrs[(l+1)%3]}, JoinTimeout: 2 * time.Second, TLS: rogue}
			if n, err := NewRaftNode(cfg, fsmexample.New()); err == nil {
				n.Close()
				t.Fatal("unauthorised node joined the cluster")
			}
			// It cannot forward a write: raftkit's request channel sits
			// behind the same handshake.
			if err := rogueRPC(rogue, c.addrs[(l+1)%3]); err == nil {
				t.Fatal("unauthorised peer completed a request exchange")
			}
			// Had the vote request got through, the node would have taken
			// its term. (An election of the cluster's own, which a loaded
			// machine may cause, moves the term by a few at most.)
			target := c.nodes[l]
			for _, n := range c.nodes {
				if n.Addr() == before.LeaderAddr {
					target = n
				}
			}
			after := target.Status()
			if after.Term >= before.Term+100 {
				t.Fatalf("unauthorised peer's term reached the node: %d -> %d", before.Term, after.Term)
			}
			if len(after.Servers) != 3 {
				t.Fatalf("configuration changed: %+v", after.Servers)
			}
		})
	}
}

// rogueStream dials the raft port as an outsider would: TLS with the given
// credentials (or plain), then raft's tag.
type rogueStream struct {
	tls  *tls.Config // nil: plain TCP
	done chan struct{}
}

func (r *rogueStream) Accept() (net.Conn, error) { <-r.done; return nil, net.ErrClosed }
func (r *rogueStream) Close() error              { close(r.done); return nil }
func (r *rogueStream) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
func (r *rogueStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	conn, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	if r.tls != nil {
		conn = tls.Client(conn, r.tls)
	}
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte{port.TagRaft}); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func rogueTransport(t *testing.T, tc *TLSConfig) *raft.NetworkTransport {
	var conf *tls.Config
	if tc != nil {
		// The rogue's own files may fail the node's checks (expired,
		// client-only): load them without those checks.
		pair, err := tls.LoadX509KeyPair(tc.CertFile, tc.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		conf = &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{pair}}
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: &rogueStream{tls: conf, done: make(chan struct{})}, MaxPool: 1, Timeout: 2 * time.Second, Logger: hclog.NewNullLogger()})
	t.Cleanup(func() { trans.Close(); trans.CloseStreams() })
	return trans
}

// rogueRPC opens a raftkit request connection and sends a frame; it
// returns nil only if the node answered.
func rogueRPC(tc *TLSConfig, addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if tc != nil {
		pair, err := tls.LoadX509KeyPair(tc.CertFile, tc.KeyFile)
		if err != nil {
			return err
		}
		tconn := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{pair}})
		if err := tconn.Handshake(); err != nil {
			return err
		}
		conn = tconn
	}
	// A request (header and body frames) that the server must answer:
	// the method is unknown.
	if _, err := conn.Write([]byte{port.TagRPC, 0, 0, 0, 1, 0x80, 0, 0, 0, 1, 0x80}); err != nil {
		return err
	}
	buf := make([]byte, 1)
	_, err = conn.Read(buf)
	return err
}

func TestTLSCertificatesRotateWithoutRestart(t *testing.T) {
	e := newTLSEnv(t)
	tc := e.config(t, "solo", nodeCert("solo.raft.test"))
	n, err := NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: t.TempDir(), TLS: tc}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	client := e.config(t, "client", nodeCert("client.raft.test"))
	served := func(caFile string, cl *TLSConfig) (*x509.Certificate, error) {
		pair, err := tls.LoadX509KeyPair(cl.CertFile, cl.KeyFile)
		if err != nil {
			return nil, err
		}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", n.Addr(), &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{pair}})
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		// The server verifies the client after the handshake in TLS 1.3;
		// a refused client sees an error on its first read.
		conn.Write([]byte{0xff}) // unknown tag: the server closes cleanly
		if _, err := conn.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) && err.Error() != "EOF" {
			return nil, err
		}
		return conn.ConnectionState().PeerCertificates[0], nil
	}
	first, err := served(e.caFile, client)
	if err != nil {
		t.Fatal(err)
	}
	// Rotate the node's certificate in place.
	e.ca.issue(t, filepath.Join(e.dir, "solo"), nodeCert("solo.raft.test"))
	second, err := served(e.caFile, client)
	if err != nil {
		t.Fatal(err)
	}
	if first.SerialNumber.Cmp(second.SerialNumber) == 0 {
		t.Fatal("node still serves the old certificate after rotation")
	}
	// Rotate the CA: a peer with a certificate from a new CA is refused
	// until the bundle lists the new CA, then accepted.
	newCA := newTestCA(t, "next CA")
	nextEnv := &tlsEnv{ca: newCA, caFile: e.caFile, dir: t.TempDir()}
	nextClient := nextEnv.config(t, "next", nodeCert("next.raft.test"))
	if _, err := served(e.caFile, nextClient); err == nil {
		t.Fatal("certificate from an untrusted CA accepted")
	}
	writePEM(t, e.caFile, "CERTIFICATE", e.ca.der, newCA.der)
	if _, err := served(e.caFile, nextClient); err != nil {
		t.Fatalf("certificate from the newly trusted CA refused: %v", err)
	}
}

func TestTLSConfigErrorsNameTheField(t *testing.T) {
	e := newTLSEnv(t)
	good := e.config(t, "n", nodeCert("n.raft.test"))
	clientOnly := e.config(t, "c", certOpts{dns: []string{"c.raft.test"}, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	cases := map[string]struct {
		tc    TLSConfig
		field string
	}{
		"no CA":             {TLSConfig{CertFile: good.CertFile, KeyFile: good.KeyFile, PeerNames: good.PeerNames}, "TLS.CAFile"},
		"missing CA file":   {TLSConfig{CAFile: "/nonexistent/ca.pem", CertFile: good.CertFile, KeyFile: good.KeyFile, PeerNames: good.PeerNames}, "TLS.CAFile"},
		"CA is not PEM":     {TLSConfig{CAFile: good.KeyFile + ".notpem", CertFile: good.CertFile, KeyFile: good.KeyFile, PeerNames: good.PeerNames}, "TLS.CAFile"},
		"no peer names":     {TLSConfig{CAFile: good.CAFile, CertFile: good.CertFile, KeyFile: good.KeyFile}, "TLS.PeerNames"},
		"bad pattern":       {TLSConfig{CAFile: good.CAFile, CertFile: good.CertFile, KeyFile: good.KeyFile, PeerNames: []string{"[x"}}, "TLS.PeerNames[0]"},
		"key mismatch":      {TLSConfig{CAFile: good.CAFile, CertFile: good.CertFile, KeyFile: clientOnly.KeyFile, PeerNames: good.PeerNames}, "TLS.CertFile"},
		"client-only usage": {*clientOnly, "TLS.CertFile"},
	}
	os.WriteFile(good.KeyFile+".notpem", []byte("not pem"), 0o600)
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := Config{Addr: "127.0.0.1:0", Dir: t.TempDir(), TLS: &tc.tc}.Validate()
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field {
				t.Fatalf("got %v, want a ConfigError for %s", err, tc.field)
			}
		})
	}
}

func TestJoinSecretGuardsMembership(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3, func(c *Config) { c.JoinSecret = "s3cret" })
	memLeader(t, nodes)
	_, err := NewRaftNode(Config{InMemory: true, Network: net, Addr: "intruder", Join: []string{"mem1"}, JoinSecret: "guess", RaftConfig: fastRaft}, fsmexample.New())
	if !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("join with a wrong secret: %v, want ErrNotAuthorized", err)
	}
	n, err := NewRaftNode(Config{InMemory: true, Network: net, Addr: "friend", Join: []string{"mem1"}, JoinSecret: "s3cret", RaftConfig: fastRaft}, fsmexample.New())
	if err != nil {
		t.Fatalf("join with the right secret: %v", err)
	}
	n.Close()
}

func TestConnectionFloodDoesNotStopCommits(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	target := c.addrs[l]
	// The flood comes from another loopback address than the cluster's.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: time.Second}
	var flood []net.Conn
	defer func() {
		for _, f := range flood {
			f.Close()
		}
	}()
	for i := 0; i < 300; i++ {
		conn, err := d.Dial("tcp", target)
		if err != nil {
			continue
		}
		flood = append(flood, conn)
		if i%2 == 1 {
			conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) // garbage
		}
	}
	if len(flood) < 100 {
		t.Fatalf("could open only %d flood connections", len(flood))
	}
	for i := 0; i < 20; i++ {
		if _, err := c.nodes[(l+1)%3].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(fmt.Sprint(i), []byte("v"))); err != nil {
			t.Fatalf("write %d during the flood: %v", i, err)
		}
	}
	pending := c.nodes[l].mux.Pending("127.0.0.2")
	if pending > port.MaxPendingPerHost {
		t.Fatalf("%d handshakes pending from one host, cap %d", pending, port.MaxPendingPerHost)
	}
}
