//go:build !raftkit_protocol1

package peer

// Protocol is the protocol this build speaks.
const Protocol = 2

// Features is what this build speaks.
var Features = []string{FeatureHello, FeatureChunks, FeatureClusterDigest}
