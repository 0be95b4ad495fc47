package peer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// The node protocol: what raftkit nodes say to each other on a node's port,
// versioned as a whole. A connection of this version opens with a hello,
// one frame each way after the tag byte TagHello: each end says its
// protocol version and the features it speaks (and, the dialer, what the
// connection is for), and each then uses only what both speak.
//
// Protocol 1 is the release before hellos (commit 85a4634): its
// connections open with a bare tag ('R' or 'C' for raft, 'K' for
// requests), and it closes a connection that opens with TagHello. A node
// of protocol 2 answers those tags as a node of protocol 1 would, and
// speaks to a node it finds closing its hello as protocol 1 expects.
// MinProtocol is the oldest protocol this build talks to; a peer of an
// older one is refused (see Incompatible). Protocol, the one it speaks,
// is in version.go.
const MinProtocol = 1

// Features, by the names that hellos carry.
const (
	// FeatureChunks: reassembles commands split into chunks (chunk format
	// "rkc1", internal/chunk). A leader chunks a command only while every
	// other member speaks it.
	FeatureChunks = "chunks"
	// FeatureClusterDigest: raft connections carry the digest of the
	// cluster's bootstrap list, and are refused from another cluster.
	FeatureClusterDigest = "cluster-digest"
	// FeatureHello: connections open with a hello (protocol 2 on).
	FeatureHello = "hello"
)

// Protocol1Features is what a node of protocol 1 speaks, unsaid.
var Protocol1Features = []string{FeatureChunks, FeatureClusterDigest}

// Purposes of a connection, as its hello says.
const (
	PurposeRaft = "raft" // hashicorp/raft's NetworkTransport
	PurposeRPC  = "rpc"  // raftkit's requests (net/rpc, service.go)
	PurposeAsk  = "ask"  // only the hello: the dialer learns what the node speaks
)

// Hello is the first frame each end of a connection sends.
type Hello struct {
	// Protocol is the sender's protocol version.
	Protocol int
	// Features are what the sender speaks.
	Features []string
	// Requires are the features without which the sender will not talk.
	Requires []string `codec:",omitempty"`
	// Version is the sender's raftkit module version, for people.
	Version string `codec:",omitempty"`
	// From is the dialer's advertised address.
	From string `codec:",omitempty"`
	// Purpose is what the dialer's connection is for (PurposeRaft, ...).
	Purpose string `codec:",omitempty"`
	// Cluster is the digest of the dialer's cluster's bootstrap list, on
	// a raft connection, once the dialer knows it.
	Cluster []byte `codec:",omitempty"`
	// Refused, in an answer, says why the answering node will not talk to
	// the dialer; the connection then closes.
	Refused string `codec:",omitempty"`
}

// Profile is what a node says of itself in its hellos.
type Profile struct {
	Protocol int
	Features []string
	Requires []string
	Version  string
}

// Speaks reports whether the profile speaks feature f.
func (p Profile) Speaks(f string) bool { return slices.Contains(p.Features, f) }

// Protocol1 is the profile of a node of protocol 1, which says nothing of
// itself.
func Protocol1() Profile {
	return Profile{Protocol: 1, Features: Protocol1Features, Version: "protocol 1 (no hello)"}
}

// Of is the profile a hello describes.
func Of(h *Hello) Profile {
	return Profile{Protocol: h.Protocol, Features: h.Features, Requires: h.Requires, Version: h.Version}
}

// Incompatible returns why a node of profile self cannot talk to a peer
// of profile other, or "": other is older than self's MinProtocol, lacks
// a feature self requires (ours: self refuses), or requires one self
// lacks (not ours: the peer does).
func Incompatible(self, other Profile) (reason string, ours bool) {
	var missing []string
	for _, f := range self.Requires {
		if !other.Speaks(f) {
			missing = append(missing, f)
		}
	}
	var lacking []string
	for _, f := range other.Requires {
		if !self.Speaks(f) {
			lacking = append(lacking, f)
		}
	}
	switch {
	case other.Protocol < MinProtocol:
		return fmt.Sprintf("the peer speaks raftkit protocol %d, older than %d, the oldest this node (protocol %d) talks to", other.Protocol, MinProtocol, self.Protocol), true
	case len(missing) > 0:
		return fmt.Sprintf("this node (protocol %d, %s) requires %s, which the peer (protocol %d, %s) does not speak",
			self.Protocol, self.Version, strings.Join(missing, ", "), other.Protocol, other.Version), true
	case len(lacking) > 0:
		return fmt.Sprintf("the peer (protocol %d, %s) requires %s, which this node (protocol %d, %s) does not speak",
			other.Protocol, other.Version, strings.Join(lacking, ", "), self.Protocol, self.Version), false
	}
	return "", false
}

// maxHello bounds a hello frame: a few hundred bytes in practice.
const maxHello = 4 << 10

// ErrBadHello is returned for a hello frame that cannot be read.
var ErrBadHello = errors.New("raftkit wire: malformed hello")

// WriteHello writes h as one length-prefixed msgpack frame.
func WriteHello(w io.Writer, h *Hello) error {
	var b []byte
	if err := codec.NewEncoderBytes(&b, Handle()).Encode(h); err != nil {
		return fmt.Errorf("raftkit wire: encode hello: %w", err)
	}
	frame := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	_, err := w.Write(append(frame, b...))
	return err
}

// ReadHello reads a frame that WriteHello wrote.
func ReadHello(r io.Reader) (*Hello, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > maxHello {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadHello, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	var h Hello
	if err := codec.NewDecoder(bytes.NewReader(b), Handle()).Decode(&h); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadHello, err)
	}
	return &h, nil
}
