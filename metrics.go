package raftkit

import "time"

// MetricsSink receives a node's measurements (Config.Metrics). The
// Prometheus one is package admin's Metrics; an application may give its
// own. Every method must be safe for concurrent use and return quickly:
// the node calls them on its write and read paths.
type MetricsSink interface {
	// AddNode and RemoveNode bracket the time n is open, so that the sink
	// may read n's Status when it reports.
	AddNode(n *RaftNode)
	RemoveNode(n *RaftNode)
	// Applied records one Apply or ApplyLocal on node id: path is "local"
	// (on the leader) or "forwarded" (from a follower); err is its error.
	Applied(id, path string, d time.Duration, err error)
	// ReadBarrier records one LinearizableRead on node id.
	ReadBarrier(id string, d time.Duration, err error)
	// LeaderChanged records that node id learned of a new leader.
	LeaderChanged(id string)
	// FSMError records a command applied through node id, as leader,
	// whose FSM response was an error.
	FSMError(id string)
}

// metrics is a node's MetricsSink, or none: its methods do nothing then.
type metrics struct{ sink MetricsSink }

// now is the start of a timed call: the zero time without a sink, so that
// calls do not read the clock for nothing.
func (m metrics) now() time.Time {
	if m.sink == nil {
		return time.Time{}
	}
	return time.Now()
}

func (m metrics) applied(id, path string, start time.Time, err error) {
	if m.sink != nil {
		m.sink.Applied(id, path, time.Since(start), err)
	}
}

func (m metrics) readBarrierDone(id string, start time.Time, err error) {
	if m.sink != nil {
		m.sink.ReadBarrier(id, time.Since(start), err)
	}
}

func (m metrics) fsmError(id string) {
	if m.sink != nil {
		m.sink.FSMError(id)
	}
}
