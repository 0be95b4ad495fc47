package raftkit

import "testing"

func TestReadinessReasons(t *testing.T) {
	member := []ServerInfo{{ID: "a"}}
	cases := []struct {
		name string
		st   Status
		ok   bool
	}{
		{"follower", Status{ID: "a", State: "Follower", LeaderID: "b", Servers: member}, true},
		{"leader", Status{ID: "a", State: "Leader", LeaderID: "a", Servers: member}, true},
		{"no leader", Status{ID: "a", State: "Follower", Servers: member}, false},
		{"candidate", Status{ID: "a", State: "Candidate", LeaderID: "b", Servers: member}, false},
		{"not a member", Status{ID: "a", State: "Follower", LeaderID: "b", Servers: []ServerInfo{{ID: "b"}}}, false},
		{"joining", Status{ID: "a", State: "Follower", LeaderID: "b", Servers: member, Joining: true}, false},
		{"shut down", Status{ID: "a", State: "Shutdown", LeaderID: "b", Servers: member}, false},
	}
	for _, tc := range cases {
		err := readiness(tc.st)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ready=%v", tc.name, err, tc.ok)
		}
		if err != nil && Classify(err) != NotApplied {
			t.Errorf("%s: %v has class %v, want NotApplied", tc.name, err, Classify(err))
		}
	}
}
