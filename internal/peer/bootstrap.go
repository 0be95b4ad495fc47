package peer

// MethodBootstrap compares bootstrap lists between nodes (see
// BootstrapRequest).
const MethodBootstrap = Service + ".Bootstrap"

// BootstrapRequest is sent by a node without raft state that was given a
// Peers list, to each node of that list, before it bootstraps: it tells
// the peer its own list and asks for the peer's. A leader sends one to a
// server it is about to promote to voter, to learn who answers at its
// address and how far its log has come (BootstrapResponse's ID, Servers
// and LastIndex).
type BootstrapRequest struct {
	ID   string
	Addr string
	// Peers is the sender's list, canonical: "id=addr" entries, sorted.
	Peers []string
}

// BootstrapResponse is a node's side of the comparison.
type BootstrapResponse struct {
	ID   string
	Addr string
	// Peers is the responder's own Peers list, canonical.
	Peers []string
	// Cluster is the canonical list the responder's cluster was
	// bootstrapped with, once the responder has one (it bootstrapped, or
	// agreed with a node that had); empty while it is undecided, and for a
	// node with state from before raftkit recorded it.
	Cluster []string
	// HasState says the responder has raft state (a log or a snapshot).
	HasState bool
	// Servers is the responder's latest configuration, "id=addr" entries.
	Servers []string
	// Refused says the responder refused to bootstrap because its list
	// disagrees with its peers'.
	Refused bool
	// Support is how many nodes (the responder included) hold the
	// responder's list, as far as it last saw.
	Support int
	// LastIndex is the responder's last log index (a snapshot's, if
	// later). A leader asks a new voter for it before it promotes it (see
	// raftkit's AddVoter); nodes of releases before the field send none (0).
	LastIndex uint64 `codec:",omitempty"`
}
