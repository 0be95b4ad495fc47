package port

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// A raft node adopts any higher term it is shown and never goes back: one
// request with term 2^64-1 makes every later election overflow the term,
// and the cluster never elects a leader again. termGuard sits between
// raft's NetworkTransport and raft and refuses, before raft sees them,
// requests whose terms no real member could send:
//
//   - any term of 2^63 or more (a cluster gains one term per election, so
//     it never gets there by itself);
//   - a term more than maxTermAhead above the node's own current term;
//   - a log term (an entry's, PrevLogTerm, LastLogTerm) above the request's
//     own term, which raft's invariants rule out.
//
// The second rule means an attacker on a cluster without TLS can push the
// term up by at most maxTermAhead per accepted request, so reaching 2^63
// takes 2^31 of them, each costing the cluster an election with an fsync;
// a legitimate node that ever falls so far behind (it cannot: even with
// pre-vote off, a partitioned node gains about five terms a second) still
// learns the higher term from the answers to its own requests, which the
// guard does not inspect. Refused requests are answered with an error and
// logged at most once per termLogEvery.
const (
	maxTermAbsolute = 1 << 63
	maxTermAhead    = 1 << 32
	termLogEvery    = 10 * time.Second
)

// keyCurrentTerm is hashicorp/raft's stable-store key of the current term
// (raft.go).
var keyCurrentTerm = []byte("CurrentTerm")

// errTermRefused is the answer to a refused request.
var errTermRefused = errors.New("raftkit: request refused: term out of range")

// termGuard is a raft.Transport that filters what raft's NetworkTransport
// hands to raft. It knows the node's current term from the stable store
// (see guardStable).
type termGuard struct {
	*raft.NetworkTransport
	out    chan raft.RPC
	term   atomic.Uint64
	logger hclog.Logger

	logMu      sync.Mutex
	lastLog    time.Time
	suppressed int
}

// GuardTerms wraps trans, and stable so that the guard follows the node's
// current term; raft must be given both wrappers. The guard's goroutine
// ends when the mux closes.
func (m *Mux) GuardTerms(trans *raft.NetworkTransport, stable raft.StableStore, logger hclog.Logger) (raft.Transport, raft.StableStore) {
	return guardTerms(trans, stable, m.done, &m.wg, logger)
}

// guardTerms wraps trans, and stable so that the guard follows the node's
// current term; raft must be given both wrappers. The filtering goroutine
// ends when done is closed and is counted in wg.
func guardTerms(trans *raft.NetworkTransport, stable raft.StableStore, done <-chan struct{}, wg *sync.WaitGroup, logger hclog.Logger) (*termGuard, raft.StableStore) {
	g := &termGuard{NetworkTransport: trans, out: make(chan raft.RPC), logger: logger}
	gs := guardStable{StableStore: stable, g: g}
	// A read error is raft.NewRaft's to report; the guard then starts at 0.
	_, _ = gs.GetUint64(keyCurrentTerm)
	in := trans.Consumer()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case rpc := <-in:
				if err := g.check(rpc.Command); err != nil {
					g.refuse(rpc, err)
					continue
				}
				select {
				case g.out <- rpc:
				case <-done:
					return
				}
			case <-done:
				return
			}
		}
	}()
	return g, gs
}

// Consumer returns the requests that passed the checks.
func (g *termGuard) Consumer() <-chan raft.RPC { return g.out }

// SetHeartbeatHandler filters heartbeats, which bypass Consumer.
func (g *termGuard) SetHeartbeatHandler(cb func(raft.RPC)) {
	if cb == nil {
		g.NetworkTransport.SetHeartbeatHandler(nil)
		return
	}
	g.NetworkTransport.SetHeartbeatHandler(func(rpc raft.RPC) {
		if err := g.check(rpc.Command); err != nil {
			g.refuse(rpc, err)
			return
		}
		cb(rpc)
	})
}

// check returns why a request must be refused, or nil.
func (g *termGuard) check(cmd any) error {
	var term uint64
	var logTerms []uint64
	switch c := cmd.(type) {
	case *raft.AppendEntriesRequest:
		term = c.Term
		logTerms = append(logTerms, c.PrevLogTerm)
		for _, e := range c.Entries {
			if e != nil {
				logTerms = append(logTerms, e.Term)
			}
		}
	case *raft.RequestVoteRequest:
		term, logTerms = c.Term, []uint64{c.LastLogTerm}
	case *raft.RequestPreVoteRequest:
		term, logTerms = c.Term, []uint64{c.LastLogTerm}
	case *raft.InstallSnapshotRequest:
		term, logTerms = c.Term, []uint64{c.LastLogTerm}
	default:
		// TimeoutNow carries no term: the election it starts uses this
		// node's own.
		return nil
	}
	if term >= maxTermAbsolute {
		return fmt.Errorf("%w: term %d is 2^63 or more", errTermRefused, term)
	}
	if cur := g.term.Load(); term > cur && term-cur > maxTermAhead {
		return fmt.Errorf("%w: term %d is more than 2^32 above this node's term %d", errTermRefused, term, cur)
	}
	for _, t := range logTerms {
		if t > term {
			return fmt.Errorf("%w: log term %d is above the request's term %d", errTermRefused, t, term)
		}
	}
	return nil
}

func (g *termGuard) refuse(rpc raft.RPC, err error) {
	rpc.Respond(nil, err)
	g.logMu.Lock()
	defer g.logMu.Unlock()
	if now := time.Now(); now.Sub(g.lastLog) >= termLogEvery {
		from := ""
		if h, ok := rpc.Command.(raft.WithRPCHeader); ok {
			from = string(h.GetRPCHeader().Addr)
		}
		g.logger.Warn("refused a raft request with an impossible term", "type", fmt.Sprintf("%T", rpc.Command), "claimed_addr", from, "error", err, "refused_since_last_log", g.suppressed)
		g.lastLog, g.suppressed = now, 0
		return
	}
	g.suppressed++
}

// guardStable is the stable store as raft sees it: it tells g each term
// raft reads or stores as its current term.
type guardStable struct {
	raft.StableStore
	g *termGuard
}

func (s guardStable) SetUint64(key []byte, v uint64) error {
	err := s.StableStore.SetUint64(key, v)
	if err == nil && bytes.Equal(key, keyCurrentTerm) {
		s.g.term.Store(v)
	}
	return err
}

func (s guardStable) GetUint64(key []byte) (uint64, error) {
	v, err := s.StableStore.GetUint64(key)
	if err == nil && bytes.Equal(key, keyCurrentTerm) {
		s.g.term.Store(v)
	}
	return v, err
}
