package port

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path"
	"sync"
	"time"

	"github.com/raftkit/raftkit/internal/sentinel"
)

// TLSFiles are a node's mutual-TLS files and the names that authorise
// its peers (see raftkit.TLSConfig, which package raftkit has checked).
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
	PeerNames                 []string
}

// TLS serves certificates and verifies peers, reloading files that
// changed since the last look.
type TLS struct {
	cfg TLSFiles

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

// NewTLS loads files once; onError receives later failures to reload
// them. A file that does not load is a *sentinel.FieldError naming the
// TLSConfig field.
func NewTLS(files TLSFiles, onError func(error)) (*TLS, error) {
	s := &TLS{cfg: files, onError: onError}
	if err := s.reload(true); err != nil {
		return nil, err
	}
	return s, nil
}

// reload re-reads files whose stamp changed. With strict, any failure is
// returned; otherwise the last good state stays and the error is reported.
func (s *TLS) reload(strict bool) error {
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

func (s *TLS) reloadLocked() error {
	caStamp, err := stamp(s.cfg.CAFile)
	if err != nil {
		return sentinel.Field("TLS.CAFile", s.cfg.CAFile, "cannot be read: %v", err)
	}
	if s.roots == nil || caStamp != s.caSeen {
		pem, err := os.ReadFile(s.cfg.CAFile)
		if err != nil {
			return sentinel.Field("TLS.CAFile", s.cfg.CAFile, "cannot be read: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return sentinel.Field("TLS.CAFile", s.cfg.CAFile, "holds no PEM certificate")
		}
		s.roots, s.caSeen = pool, caStamp
	}
	certStamp, err := stamp(s.cfg.CertFile)
	if err != nil {
		return sentinel.Field("TLS.CertFile", s.cfg.CertFile, "cannot be read: %v", err)
	}
	keyStamp, err := stamp(s.cfg.KeyFile)
	if err != nil {
		return sentinel.Field("TLS.KeyFile", s.cfg.KeyFile, "cannot be read: %v", err)
	}
	if seen := [2]fileStamp{certStamp, keyStamp}; s.cert == nil || seen != s.certSeen {
		cert, err := tls.LoadX509KeyPair(s.cfg.CertFile, s.cfg.KeyFile)
		if err != nil {
			return sentinel.Field("TLS.CertFile", s.cfg.CertFile, "with TLS.KeyFile %q does not load: %v", s.cfg.KeyFile, err)
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return sentinel.Field("TLS.CertFile", s.cfg.CertFile, "does not parse: %v", err)
		}
		if !hasEKU(leaf, x509.ExtKeyUsageServerAuth) || !hasEKU(leaf, x509.ExtKeyUsageClientAuth) {
			return sentinel.Field("TLS.CertFile", s.cfg.CertFile, "must allow both serverAuth and clientAuth extended key usage (a node is TLS server and client)")
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

func (s *TLS) certificate() (*tls.Certificate, error) {
	if err := s.reload(false); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cert, nil
}

// verify authenticates and authorises the peer of a handshake.
func (s *TLS) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: peer sent no certificate", sentinel.ErrNotAuthorized)
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
			return fmt.Errorf("%w: peer certificate %q: %v", sentinel.ErrNotAuthorized, leaf.Subject.CommonName, err)
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
	return fmt.Errorf("%w: peer certificate names %v match none of TLS.PeerNames %v", sentinel.ErrNotAuthorized, names, s.cfg.PeerNames)
}

func (s *TLS) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS12,
		ClientAuth:       tls.RequireAnyClientCert, // verified in VerifyConnection
		GetCertificate:   func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.certificate() },
		VerifyConnection: s.verify,
	}
}

func (s *TLS) clientConfig() *tls.Config {
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
