package raftkit

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path"
	"strings"
	"sync"
	"time"
)

// TLSConfig turns on mutual TLS for everything on the node's port: raft's
// traffic and raftkit's own requests (forwarded writes, reads, joins). Every
// connection, in both directions, then uses TLS 1.2 or later with a
// certificate that is verified against CAFile and authorised by PeerNames;
// plain connections are refused.
//
// The files are read again whenever they change on disk, checked at each
// handshake, so certificates and CAs can be rotated without a restart. A
// file that fails to load keeps the last good version in use and the error
// is logged.
type TLSConfig struct {
	// CAFile is a PEM bundle of the certificate authorities that sign node
	// certificates. Several CAs may be listed during a rotation.
	CAFile string

	// CertFile and KeyFile hold this node's PEM certificate (chain) and key.
	// The certificate is used as both TLS server and TLS client, so it must
	// allow both the serverAuth and the clientAuth extended key usage.
	CertFile string
	KeyFile  string

	// PeerNames authorises peers: a peer's certificate is accepted only if
	// one of its DNS or URI subject alternative names matches one of these
	// patterns (path.Match syntax, e.g. "*.raft.example.internal"). A valid
	// certificate from the CA is not enough, so client-only or other
	// services' certificates from the same CA cannot reach raft. "*" accepts
	// any node certificate of the CA: use it only with a CA dedicated to
	// raft nodes. Required.
	PeerNames []string
}

// tlsState serves certificates and verifies peers, reloading files that
// changed since the last look.
type tlsState struct {
	cfg TLSConfig

	mu       sync.Mutex
	cert     *tls.Certificate
	certSeen [2]fileStamp
	roots    *x509.CertPool
	caSeen   fileStamp
	onError  func(error)
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func stamp(file string) (fileStamp, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.ModTime(), fi.Size()}, nil
}

// validateTLS checks the TLSConfig fields and loads the files once.
// onError receives later failures to reload them.
func validateTLS(c *TLSConfig, onError func(error)) (*tlsState, error) {
	for _, f := range []struct{ name, value string }{{"TLS.CAFile", c.CAFile}, {"TLS.CertFile", c.CertFile}, {"TLS.KeyFile", c.KeyFile}} {
		if strings.TrimSpace(f.value) == "" {
			return nil, configErr(f.name, f.value, "required when TLS is set")
		}
	}
	if len(c.PeerNames) == 0 {
		return nil, configErr("TLS.PeerNames", "", "required: name patterns that peers' certificates must carry (\"*\" only with a CA dedicated to raft nodes)")
	}
	for i, p := range c.PeerNames {
		if _, err := path.Match(p, ""); err != nil || p == "" {
			return nil, configErr(fmt.Sprintf("TLS.PeerNames[%d]", i), p, "is not a valid pattern")
		}
	}
	s := &tlsState{cfg: *c, onError: onError}
	if err := s.reload(true); err != nil {
		return nil, err
	}
	return s, nil
}

// reload re-reads files whose stamp changed. With strict, any failure is
// returned; otherwise the last good state stays and the error is reported.
func (s *tlsState) reload(strict bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.reloadLocked()
	if err != nil && !strict {
		s.onError(err)
		if s.cert != nil && s.roots != nil {
			return nil
		}
	}
	return err
}

func (s *tlsState) reloadLocked() error {
	caStamp, err := stamp(s.cfg.CAFile)
	if err != nil {
		return configErr("TLS.CAFile", s.cfg.CAFile, "cannot be read: %v", err)
	}
	if s.roots == nil || caStamp != s.caSeen {
		pem, err := os.ReadFile(s.cfg.CAFile)
		if err != nil {
			return configErr("TLS.CAFile", s.cfg.CAFile, "cannot be read: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return configErr("TLS.CAFile", s.cfg.CAFile, "holds no PEM certificate")
		}
		s.roots, s.caSeen = pool, caStamp
	}
	certStamp, err := stamp(s.cfg.CertFile)
	if err != nil {
		return configErr("TLS.CertFile", s.cfg.CertFile, "cannot be read: %v", err)
	}
	keyStamp, err := stamp(s.cfg.KeyFile)
	if err != nil {
		return configErr("TLS.KeyFile", s.cfg.KeyFile, "cannot be read: %v", err)
	}
	if seen := [2]fileStamp{certStamp, keyStamp}; s.cert == nil || seen != s.certSeen {
		cert, err := tls.LoadX509KeyPair(s.cfg.CertFile, s.cfg.KeyFile)
		if err != nil {
			return configErr("TLS.CertFile", s.cfg.CertFile, "with TLS.KeyFile %q does not load: %v", s.cfg.KeyFile, err)
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return configErr("TLS.CertFile", s.cfg.CertFile, "does not parse: %v", err)
		}
		if !hasEKU(leaf, x509.ExtKeyUsageServerAuth) || !hasEKU(leaf, x509.ExtKeyUsageClientAuth) {
			return configErr("TLS.CertFile", s.cfg.CertFile, "must allow both serverAuth and clientAuth extended key usage (a node is TLS server and client)")
		}
		cert.Leaf = leaf
		s.cert, s.certSeen = &cert, seen
	}
	return nil
}

func hasEKU(c *x509.Certificate, want x509.ExtKeyUsage) bool {
	for _, u := range c.ExtKeyUsage {
		if u == want || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

func (s *tlsState) certificate() (*tls.Certificate, error) {
	if err := s.reload(false); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cert, nil
}

// verify authenticates and authorises the peer of a handshake.
func (s *tlsState) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: peer sent no certificate", ErrNotAuthorized)
	}
	if err := s.reload(false); err != nil {
		return err
	}
	s.mu.Lock()
	roots := s.roots
	s.mu.Unlock()
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	// A node certificate must be valid as both server and client.
	for _, eku := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
			return fmt.Errorf("%w: peer certificate %q: %v", ErrNotAuthorized, leaf.Subject.CommonName, err)
		}
	}
	names := append([]string(nil), leaf.DNSNames...)
	for _, u := range leaf.URIs {
		names = append(names, u.String())
	}
	for _, pattern := range s.cfg.PeerNames {
		for _, name := range names {
			if ok, _ := path.Match(pattern, name); ok {
				return nil
			}
		}
	}
	return fmt.Errorf("%w: peer certificate names %v match none of TLS.PeerNames %v", ErrNotAuthorized, names, s.cfg.PeerNames)
}

func (s *tlsState) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS12,
		ClientAuth:       tls.RequireAnyClientCert, // verified in VerifyConnection
		GetCertificate:   func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.certificate() },
		VerifyConnection: s.verify,
	}
}

func (s *tlsState) clientConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Go's own verification would check the server's name against the
		// dialled address and could not reload the CA; VerifyConnection
		// does the full verification (chain, usages, PeerNames) instead.
		InsecureSkipVerify:   true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return s.certificate() },
		VerifyConnection:     s.verify,
	}
}
