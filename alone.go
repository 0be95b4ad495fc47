package raftkit

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// A node that cannot reach a majority of voters campaigns forever: every
// election timeout raft logs a new election, a failed pre-vote, and an
// Error per unreachable peer (with default timeouts, several lines a
// second, for as long as it lasts). campaign keeps the first of each of
// those lines and holds back the repeats (logged at Debug), and says the
// situation in plain words instead: once when it has had no leader for
// campaignFirstReport, then once every campaignReportEvery. When a leader
// is known again the next loss is reported afresh. An ordinary failover
// ends well before the first report and logs as before.

// campaignFirstReport is how long a node has no leader before it says so;
// campaignReportEvery is how often it says so again.
const (
	campaignFirstReport = 10 * time.Second
	campaignReportEvery = time.Minute
)

// raft's words for a campaign (see TestQuietLoggingMatchesRaftsWords).
const (
	msgEnterCandidate = "entering candidate state"
	msgPreVoteFailed  = "pre-vote campaign failed, waiting for election timeout"
	msgVoteRPCFailed  = "failed to make requestVote RPC"
)

// campaignMsgs are the lines a campaign repeats.
var campaignMsgs = []string{msgHeartbeatTimeout, msgQuorumLost, msgElectionTimeout, msgEnterCandidate, msgPreVoteFailed, msgVoteRPCFailed}

// campaign is the state of a node's current campaign; the zero value is
// a node that knows a leader, reporting every campaignReportEvery.
type campaign struct {
	first, every time.Duration // 0: campaignFirstReport, campaignReportEvery
	off          bool          // hold nothing back (tests' negative control)

	mu       sync.Mutex
	since    time.Time         // the campaign's first line; zero when a leader is known
	next     time.Time         // when the next summary is due
	elected  int               // elections started in this campaign
	held     int               // lines held back since the campaign started
	logged   map[string]bool   // lines logged once in this campaign, by message and peer
	failures map[string]string // why each peer did not answer, in plain words
}

// leaderKnown ends the campaign.
func (c *campaign) leaderKnown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.since, c.next = time.Time{}, time.Time{}
	c.logged, c.failures = nil, nil
	c.elected, c.held = 0, 0
}

// level returns the level of a raft line during a campaign, and a summary
// to log after it, if one is due.
func (c *campaign) level(level hclog.Level, msg string, args []any) (hclog.Level, string) {
	if c.off || !slices.Contains(campaignMsgs, msg) || level < hclog.Info {
		return level, ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if c.since.IsZero() {
		first := c.first
		if first == 0 {
			first = campaignFirstReport
		}
		c.since, c.next = now, now.Add(first)
		c.logged, c.failures = map[string]bool{}, map[string]string{}
	}
	peer := ""
	for i := 1; i < len(args); i += 2 {
		switch args[i-1] {
		case "target":
			peer = peerName(args[i])
		case "error":
			if err, ok := args[i].(error); ok && peer != "" {
				c.failures[peer] = plainWords(err)
			}
		}
	}
	if msg == msgEnterCandidate {
		c.elected++
	}
	summary := ""
	if now.After(c.next) {
		summary = c.summary(now)
	}
	key := msg + "\x00" + peer
	if c.logged[key] {
		c.held++
		return hclog.Debug, summary
	}
	c.logged[key] = true
	return level, summary
}

// summary says why no leader is elected; c.mu is held.
func (c *campaign) summary(now time.Time) string {
	every := c.every
	if every == 0 {
		every = campaignReportEvery
	}
	c.next = now.Add(every)
	var why []string
	for p, f := range c.failures {
		why = append(why, p+": "+f)
	}
	sort.Strings(why)
	s := fmt.Sprintf("no leader for %s: no election has succeeded", now.Sub(c.since).Round(time.Second))
	if len(why) > 0 {
		s += "; voters that did not answer: " + strings.Join(why, "; ")
	}
	s += fmt.Sprintf("; %d elections so far, %d repeated lines logged at Debug; this node keeps trying and says so again in %s", c.elected, c.held, every)
	c.held = 0
	return s
}

// peerName is how a raft argument names a peer.
func peerName(v any) string {
	switch p := v.(type) {
	case raft.Server:
		if string(p.ID) == string(p.Address) {
			return string(p.ID)
		}
		return fmt.Sprintf("%s at %s", p.ID, p.Address)
	default:
		return fmt.Sprint(v)
	}
}

// plainWords says why a peer did not answer, without the layers of
// wrapping around the cause.
func plainWords(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused (not running, or not listening there)"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection reset (the peer closed it)"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to the peer's host"
	case isTimeout(err):
		return "no answer in time (the peer is paused, overloaded or cut off)"
	}
	return err.Error()
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout() || strings.Contains(err.Error(), "i/o timeout")
}
