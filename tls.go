package raftkit

import (
	"fmt"
	"path"
	"strings"

	"github.com/raftkit/raftkit/internal/port"
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

// validateTLS checks the TLSConfig fields and loads the files once.
// onError receives later failures to reload them.
func validateTLS(c *TLSConfig, onError func(error)) (*port.TLS, error) {
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
	s, err := port.NewTLS(port.TLSFiles{CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile, PeerNames: c.PeerNames}, onError)
	if err != nil {
		return nil, publicErr(err)
	}
	return s, nil
}
