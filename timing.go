package raftkit

import (
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
)

// Timing selects raft's failure-detection timeouts for the kind of network
// a cluster runs on. Shorter timeouts replace a crashed leader sooner but
// mistake a slow leader (a stalled disk, a long pause, a congested link) for
// a dead one sooner too, and each such mistake costs an election during
// which writes wait. The zero value, TimingAuto, picks a profile from the
// node's addresses.
//
// A profile sets raft.Config's HeartbeatTimeout, ElectionTimeout,
// LeaderLeaseTimeout and CommitTimeout; Config.RaftConfig can still change
// any of them afterwards.
type Timing int

const (
	// TimingAuto uses TimingLAN for in-memory nodes, TimingLocal for nodes
	// whose own address and whose Peers and Join addresses are all loopback
	// (a single-machine cluster), and TimingDefault otherwise: on a real
	// network raftkit keeps hashicorp/raft's own, well-tried timeouts unless
	// told otherwise.
	TimingAuto Timing = iota

	// TimingLAN is for nodes on one fast local network (or one machine):
	// 200 ms heartbeat and election timeouts, a 100 ms leader lease and a
	// 5 ms commit timeout. A crashed leader is replaced in about half a
	// second. Pick it for a LAN whose round trips stay well under 10 ms
	// and whose nodes are not starved of CPU or disk for 100 ms at a time.
	TimingLAN

	// TimingDefault is hashicorp/raft's DefaultConfig: 1 s heartbeat and
	// election timeouts, a 500 ms leader lease and a 50 ms commit timeout.
	// A crashed leader is replaced in about 2 s. It is what a hand-wired
	// raft cluster gets.
	TimingDefault

	// TimingWAN is for nodes spread over data centres or on links with
	// round trips up to a few hundred milliseconds: 3 s heartbeat and
	// election timeouts, a 1.5 s leader lease and a 50 ms commit timeout.
	// A crashed leader is replaced in several seconds (three times
	// TimingDefault's timeouts), and a slow link rarely causes an election.
	TimingWAN

	// TimingLocal is for nodes that share one machine (all loopback): 300
	// ms heartbeat and election timeouts, a 300 ms leader lease and a 5 ms
	// commit timeout. The nodes compete for the same CPUs and disk, so a
	// busy machine slows all of them at once; TimingLAN's 100 ms lease then
	// costs elections that this profile rides out, while a crashed leader
	// is still replaced in under a second. Measured with raftkit-hostile
	// -stress on a saturated 2-core machine, writes of 1 KiB to 1 MiB: no
	// election in 90 s of load (TimingLAN: 6 in 110 s), a killed leader
	// replaced in 0.91 s median (TimingLAN 0.47 s, TimingDefault 1.8 s).
	TimingLocal
)

// timingValues are the raft timeouts of one profile.
type timingValues struct {
	heartbeat, election, lease, commit time.Duration
}

// values returns profile t's timeouts; t must not be TimingAuto.
func (t Timing) values() timingValues {
	switch t {
	case TimingLAN:
		return timingValues{200 * time.Millisecond, 200 * time.Millisecond, 100 * time.Millisecond, 5 * time.Millisecond}
	case TimingWAN:
		return timingValues{3000 * time.Millisecond, 3000 * time.Millisecond, 1500 * time.Millisecond, 50 * time.Millisecond}
	case TimingLocal:
		return timingValues{300 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond, 5 * time.Millisecond}
	}
	return timingValues{1000 * time.Millisecond, 1000 * time.Millisecond, 500 * time.Millisecond, 50 * time.Millisecond}
}

// String returns the profile's name as written in Go, e.g. "TimingLAN".
func (t Timing) String() string {
	switch t {
	case TimingAuto:
		return "TimingAuto"
	case TimingLAN:
		return "TimingLAN"
	case TimingDefault:
		return "TimingDefault"
	case TimingWAN:
		return "TimingWAN"
	case TimingLocal:
		return "TimingLocal"
	}
	return "Timing(" + strconv.Itoa(int(t)) + ")"
}

// resolveTiming turns TimingAuto into the profile it stands for.
func resolveTiming(s *settled) Timing {
	if s.Timing != TimingAuto {
		return s.Timing
	}
	if s.InMemory {
		return TimingLAN
	}
	addrs := []string{s.advertise}
	for _, p := range s.peers {
		addrs = append(addrs, p.Addr)
	}
	addrs = append(addrs, s.Join...)
	for _, a := range addrs {
		host, _, err := net.SplitHostPort(a)
		if err != nil || !isLoopbackHost(host) {
			return TimingDefault
		}
	}
	return TimingLocal
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// applyTiming writes profile t's timeouts into rc.
func applyTiming(rc *raft.Config, t Timing) {
	v := t.values()
	rc.HeartbeatTimeout = v.heartbeat
	rc.ElectionTimeout = v.election
	rc.LeaderLeaseTimeout = v.lease
	rc.CommitTimeout = v.commit
}
