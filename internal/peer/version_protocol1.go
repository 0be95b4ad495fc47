//go:build raftkit_protocol1

package peer

// With the build tag raftkit_protocol1, this build speaks only what the
// previous release (protocol 1) speaks on the node port: no hello. The
// rolling-upgrade test builds it as the previous release where the
// repository's history is not at hand.

// Protocol is the protocol this build speaks.
const Protocol = 1

// Features is what this build speaks.
var Features = Protocol1Features
