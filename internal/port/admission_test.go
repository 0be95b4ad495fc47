package port

import (
	"net"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/raftkit/raftkit/internal/peer"
)

func TestMemberHostNamesCountAsTheirAddresses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMux(ln, ln.Addr().String(), nil, nil, hclog.NewNullLogger(), []string{"localhost:7000", "10.1.2.3:7000"}, true, 32<<20, peer.Profile{Protocol: peer.Protocol, Features: peer.Features})
	defer m.Close()
	for _, host := range []string{"127.0.0.1", "10.1.2.3", "localhost"} {
		if !m.IsMember(host) {
			t.Errorf("%s is not a member", host)
		}
	}
	if m.IsMember("127.0.0.2") {
		t.Error("127.0.0.2 counts as a member")
	}
	m.setMembers([]string{"127.0.0.9:7000"})
	if !m.IsMember("127.0.0.9") || !m.IsMember("127.0.0.1") {
		t.Error("configuration members do not add to the Config's")
	}
}
