// Command gencerts makes a test CA and node certificates for a raftkit
// cluster with mutual TLS: ca.pem, and for each node DIR/NAME/cert.pem and
// DIR/NAME/key.pem with the DNS name NAME.DOMAIN and both the serverAuth and
// clientAuth usages that raftkit requires of node certificates.
//
//	go run ./examples/gencerts -dir certs -nodes n1,n2,n3 -domain raft.local
//
// For testing and demos. Production clusters should use their own PKI.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	dir := flag.String("dir", "certs", "output directory")
	nodes := flag.String("nodes", "n1,n2,n3", "comma-separated node names")
	domain := flag.String("domain", "raft.local", "DNS domain: each node gets NAME.DOMAIN")
	days := flag.Int("days", 365, "validity in days")
	flag.Parse()
	if err := run(*dir, strings.Split(*nodes, ","), *domain, time.Duration(*days)*24*time.Hour); err != nil {
		log.Fatal(err)
	}
}

func run(dir string, nodes []string, domain string, validity time.Duration) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "raftkit test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := write(filepath.Join(dir, "ca.pem"), "CERTIFICATE", caDER); err != nil {
		return err
	}
	for i, name := range nodes {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		dns := name + "." + domain
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)),
			Subject:      pkix.Name{CommonName: dns},
			DNSNames:     []string{dns},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(validity),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		nodeDir := filepath.Join(dir, name)
		if err := os.MkdirAll(nodeDir, 0o700); err != nil {
			return err
		}
		if err := write(filepath.Join(nodeDir, "cert.pem"), "CERTIFICATE", der); err != nil {
			return err
		}
		if err := write(filepath.Join(nodeDir, "key.pem"), "EC PRIVATE KEY", keyDER); err != nil {
			return err
		}
		fmt.Printf("%s: %s/cert.pem, %s/key.pem (DNS %s)\n", name, nodeDir, nodeDir, dns)
	}
	fmt.Printf("CA: %s\n", filepath.Join(dir, "ca.pem"))
	return nil
}

func write(file, typ string, der []byte) error {
	return os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
