package main

// Reaching an admin handler that the application guards with its own
// authentication: headers (-header, $RAFTKIT_HEADER) and TLS (-cacert,
// -cert, -key).

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
)

// header is one "Name: value" from -header or $RAFTKIT_HEADER.
type header struct{ name, value string }

// headerFlag is the flag.Value of -header: each use appends one header.
type headerFlag struct {
	list []header
	// err is the first malformed -header, reported by connect: the flag
	// package would print the raw value of an error Set returned, and a
	// header's value is often a secret.
	err error
}

// String is empty: header values are often secrets, and the flag package
// prints String as the default in the help.
func (h *headerFlag) String() string { return "" }

// Set adds one header; a malformed one is kept in h.err, not returned.
func (h *headerFlag) Set(s string) error {
	hd, err := parseHeader(s)
	if err != nil {
		if h.err == nil {
			h.err = fmt.Errorf("%w: -header: %v", errUsage, err)
		}
		return nil
	}
	h.list = append(h.list, hd)
	return nil
}

// parseHeader parses "Name: value" (spaces around the value are dropped).
// It checks what net/http would otherwise refuse only when sending, in a
// message that names the request rather than the bad input. Its errors
// name the header, never its value.
func parseHeader(s string) (header, error) {
	name, value, ok := strings.Cut(s, ":")
	switch {
	case !ok:
		return header{}, fmt.Errorf("header %s is not 'Name: value' (no colon)", redacted(s))
	case name == "":
		return header{}, fmt.Errorf("header \": …\" (%d bytes) has an empty name", len(s))
	case !isToken(name):
		return header{}, fmt.Errorf("header name %q may hold only letters, digits and !#$%%&'*+-.^_`|~", name)
	}
	value = strings.Trim(value, " \t")
	if strings.ContainsFunc(value, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
		return header{}, fmt.Errorf("header %q: the value holds a control character", name)
	}
	return header{http.CanonicalHeaderKey(name), value}, nil
}

// redacted names a header that has no colon without what may be its
// value: its first word, if that could be a name and more follows
// ("Authorization Bearer TOKEN"), else only its length (a token alone).
func redacted(s string) string {
	if name, _, ok := strings.Cut(strings.TrimLeft(s, " \t"), " "); ok && name != "" && isToken(name) {
		return fmt.Sprintf("%q (%d bytes)", name+" …", len(s))
	}
	return fmt.Sprintf("of %d bytes", len(s))
}

// isToken reports whether s is an HTTP token (RFC 9110), the syntax of a
// header name.
func isToken(s string) bool {
	for _, r := range s {
		ok := 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", r)
		if !ok {
			return false
		}
	}
	return s != ""
}

// requestHeader is what every admin request carries: the headers of env
// ($RAFTKIT_HEADER, one per line; blank lines are skipped), then those of
// -header. A -header replaces the environment's header of the same name,
// as -admin replaces $RAFTKIT_ADMIN; several -header of one name all go.
func requestHeader(env string, flags []header) (http.Header, error) {
	h := http.Header{}
	for i, line := range strings.Split(env, "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		hd, err := parseHeader(line)
		if err != nil {
			return nil, fmt.Errorf("%w: $RAFTKIT_HEADER line %d: %v", errUsage, i+1, err)
		}
		h.Add(hd.name, hd.value)
	}
	for _, hd := range flags {
		h.Del(hd.name)
	}
	for _, hd := range flags {
		h.Add(hd.name, hd.value)
	}
	return h, nil
}

// connect prepares the headers and the HTTP client of the admin requests.
// It runs before the command, so that a mistake in them is reported
// before anything is sent.
func (c *cli) connect() error {
	if c.headers.err != nil {
		return c.headers.err
	}
	h, err := requestHeader(c.envHeader, c.headers.list)
	if err != nil {
		return err
	}
	cfg, err := c.tlsConfig()
	if err != nil {
		return err
	}
	c.header, c.client = h, http.DefaultClient
	if cfg != nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = cfg
		c.client = &http.Client{Transport: tr}
	}
	return nil
}

// tlsConfig returns the TLS settings of -cacert, -cert and -key, or nil
// when none is given (Go's defaults: the system roots, no client
// certificate).
func (c *cli) tlsConfig() (*tls.Config, error) {
	if c.cacert == "" && c.cert == "" && c.key == "" {
		return nil, nil
	}
	switch {
	case c.cert != "" && c.key == "":
		return nil, fmt.Errorf("%w: -cert %s needs -key (the certificate's private key)", errUsage, c.cert)
	case c.key != "" && c.cert == "":
		return nil, fmt.Errorf("%w: -key %s needs -cert (the client certificate)", errUsage, c.key)
	}
	// Over plain HTTP the files would be ignored, and the operator would
	// believe the connection verified.
	if u, err := url.Parse(c.admin); err == nil && u.Scheme == "http" {
		return nil, fmt.Errorf("%w: -cacert, -cert and -key need an https:// admin URL, not -admin %s", errUsage, c.admin)
	}
	cfg := &tls.Config{}
	if c.cacert != "" {
		pool, err := readCAs(c.cacert)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if c.cert != "" {
		pair, err := readKeyPair(c.cert, c.key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// readCAs reads the PEM CA bundle of -cacert.
func readCAs(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("-cacert: %w", err) // the error names the file
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("-cacert %s: no PEM certificate could be read from it", path)
	}
	return pool, nil
}

// readKeyPair reads the client certificate of -cert and its key, -key.
// Reading the files here, not with tls.LoadX509KeyPair, lets a parse
// error say which files it is about.
func readKeyPair(certPath, keyPath string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("-cert: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("-key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("-cert %s, -key %s: %w", certPath, keyPath, err)
	}
	return pair, nil
}

// newRequest makes a request to route of the admin handler with the
// headers of -header and $RAFTKIT_HEADER. They are set on the request,
// not added by a transport, so that net/http drops Authorization and
// cookies when a redirect leads to another host.
func (c *cli) newRequest(ctx context.Context, method, route string, body io.Reader) (*http.Request, error) {
	u := strings.TrimRight(c.admin, "/") + "/" + route
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("%w: -admin %q: %v", errUsage, c.admin, err)
	}
	for name, values := range c.header {
		req.Header[name] = append([]string(nil), values...)
	}
	// net/http sends req.Host and ignores a Host in the header map; a
	// proxy that routes by name needs the one asked for.
	if host := req.Header.Get("Host"); host != "" {
		req.Host = host
	}
	return req, nil
}

// clientCertAlerts are the TLS alerts by which a server refuses the
// client's certificate: none sent, not valid, expired, not trusted.
// crypto/tls reports an alert from the peer as a *net.OpError "remote
// error" around an unexported type, so its text is all there is to go by.
var clientCertAlerts = []string{
	"tls: certificate required",
	"tls: bad certificate",
	"tls: expired certificate",
	"tls: unknown certificate authority",
}

// tlsHint adds to a TLS failure which flag addresses it: the message of
// crypto/tls names the symptom only.
func (c *cli) tlsHint(err error) error {
	var unknown x509.UnknownAuthorityError
	var op *net.OpError
	switch {
	case errors.As(err, &unknown):
		return fmt.Errorf("%w (give the CA that signed the admin server's certificate with -cacert)", err)
	case errors.As(err, &op) && op.Op == "remote error" && slices.Contains(clientCertAlerts, op.Err.Error()):
		if c.cert == "" {
			return fmt.Errorf("%w (the admin server wants a client certificate: -cert and -key)", err)
		}
		// Go's client also sends none when -cert's issuer is not among the
		// CAs the server says it accepts.
		return fmt.Errorf("%w (the admin server did not accept -cert %s: it wants a current one issued by a CA it trusts)", err, c.cert)
	}
	return err
}
