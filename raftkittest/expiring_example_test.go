package raftkittest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/raftkittest"
	"github.com/raftkit/raftkit/snapshot"
)

// leases is an FSM whose entries expire. Its clock is the log's: each
// command's raft.Log.AppendedAt, which the leader stamps once and raftkit
// hands every node in one form (wall clock, UTC). time.Now would differ
// between nodes, and again when a node replays its log after a restart,
// so the replicas would disagree on what has expired.
type leases struct {
	mu      sync.Mutex
	now     time.Time            // the AppendedAt of the last command applied
	expires map[string]time.Time // lease name -> end
}

func newLeases() *leases { return &leases{expires: map[string]time.Time{}} }

// grant is the command "name ttl-in-ms": hold name for ttl from the
// command's own time.
func grant(name string, ttl time.Duration) []byte {
	return []byte(name + " " + strconv.FormatInt(ttl.Milliseconds(), 10))
}

func (f *leases) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = l.AppendedAt
	for name, end := range f.expires {
		if !end.After(f.now) {
			delete(f.expires, name) // expired as of this command's time
		}
	}
	name, ms, ok := strings.Cut(string(l.Data), " ")
	ttl, err := strconv.ParseInt(ms, 10, 64)
	if !ok || err != nil {
		return fmt.Errorf("leases: bad command %q", l.Data)
	}
	f.expires[name] = f.now.Add(time.Duration(ttl) * time.Millisecond)
	return nil
}

// state is what AssertConsistent compares: the times themselves.
type leaseState struct {
	Now     time.Time
	Expires map[string]time.Time
}

func (f *leases) state() leaseState {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := leaseState{Now: f.now, Expires: map[string]time.Time{}}
	for k, v := range f.expires {
		st.Expires[k] = v
	}
	return st
}

func (f *leases) Snapshot() (raft.FSMSnapshot, error) {
	b, err := json.Marshal(f.state())
	if err != nil {
		return nil, err
	}
	return snapshot.Bytes(b), nil
}

func (f *leases) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var st leaseState
	if err := json.NewDecoder(rc).Decode(&st); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now, f.expires = st.Now, st.Expires
	return nil
}

// An FSM that keeps times, taken from the log: every node holds the same
// ones, compared as values (reflect.DeepEqual) by AssertConsistent.
func ExampleWithState_expiringLeases() {
	runAsTest("ExampleWithState_expiringLeases", func(t *testing.T) {
		c := raftkittest.NewCluster(t, 3, newLeases,
			raftkittest.WithLogLevel(hclog.Off),
			raftkittest.WithState(func(f *leases) any { return f.state() }))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		leader := c.WaitForLeader()
		for _, cmd := range [][]byte{grant("a", time.Hour), grant("b", 0), grant("c", time.Hour)} {
			if _, err := leader.Apply(ctx, cmd); err != nil {
				t.Fatal(err)
			}
		}
		c.AssertConsistent()
		st := c.FSM(c.Followers()[0]).state()
		fmt.Println(len(st.Expires), "leases held on a follower") // b, granted for 0 ms, expired by the next command's time
	})
	// Output: 2 leases held on a follower
}
