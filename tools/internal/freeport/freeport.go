// Package freeport finds free loopback ports for raftkit's developer
// tools.
package freeport

import "net"

// Addrs returns n loopback addresses whose ports were free a moment ago:
// all n are bound at once, then released, so they differ. Another
// process may take one in between; the tools start their nodes at once.
func Addrs(n int) ([]string, error) {
	var out []string
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	return out, nil
}
