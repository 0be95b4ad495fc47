package peer

import (
	"net"
	"net/rpc"
)

// Handler serves the requests a node receives from its peers; package
// raftkit implements it. Each method serves the request on this node or
// refuses it (an Error of KindNotLeader names the leader), and never
// forwards it: a request travels at most one hop. Failures are reported
// inside the responses.
type Handler interface {
	// Apply applies forwarded commands, each with its own verdict.
	Apply(timeout int64, cmds [][]byte) []ApplyResponse
	// ReadIndex returns an index at which a read on any node is
	// linearizable.
	ReadIndex(timeout int64) ReadIndexResponse
	// Membership changes the configuration (join, add, remove, transfer).
	Membership(req *MembershipRequest) MembershipResponse
	// Closing records a peer's clean-close notice.
	Closing(req *ClosingRequest)
	// Bootstrap answers a fresh node's comparison of bootstrap lists.
	Bootstrap(req *BootstrapRequest) BootstrapResponse
	// Features says which of raftkit's log formats this node reads.
	Features() FeaturesResponse
}

// service is what remote nodes call: every request a node serves, each a
// method that net/rpc finds by its name (Service + "." + method).
type service struct{ h Handler }

// Apply is a forwarded write of one command.
func (s *service) Apply(req *ApplyRequest, resp *ApplyResponse) error {
	*resp = s.h.Apply(req.Timeout, [][]byte{req.Command})[0]
	return nil
}

// ApplyBatch is a forwarded batch of writes.
func (s *service) ApplyBatch(req *ApplyBatchRequest, resp *ApplyBatchResponse) error {
	resp.Results = s.h.Apply(req.Timeout, req.Commands)
	return nil
}

// ReadIndex is a follower's linearizable read.
func (s *service) ReadIndex(req *ReadIndexRequest, resp *ReadIndexResponse) error {
	*resp = s.h.ReadIndex(req.Timeout)
	return nil
}

// Membership is a join or a forwarded membership change.
func (s *service) Membership(req *MembershipRequest, resp *MembershipResponse) error {
	*resp = s.h.Membership(req)
	return nil
}

// Closing is a peer's clean-close notice.
func (s *service) Closing(req *ClosingRequest, resp *ClosingResponse) error {
	s.h.Closing(req)
	return nil
}

// Bootstrap is a fresh node's comparison of bootstrap lists.
func (s *service) Bootstrap(req *BootstrapRequest, resp *BootstrapResponse) error {
	*resp = s.h.Bootstrap(req)
	return nil
}

// Features is a leader's question about the log formats this node reads.
func (s *service) Features(req *FeaturesRequest, resp *FeaturesResponse) error {
	*resp = s.h.Features()
	return nil
}

// Server serves a node's requests on the connections handed to it.
type Server struct{ rpc *rpc.Server }

// NewServer returns a server of every request in service, through h.
func NewServer(h Handler) (*Server, error) {
	srv := rpc.NewServer()
	if err := srv.RegisterName(Service, &service{h: h}); err != nil {
		return nil, err
	}
	return &Server{rpc: srv}, nil
}

// Serve serves one request connection, within l, until it closes.
func (s *Server) Serve(conn net.Conn, l Limits) {
	s.rpc.ServeCodec(NewServerCodec(conn, l))
}
