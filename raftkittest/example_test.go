package raftkittest_test

import (
	"context"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/raftkittest"
)

// runAsTest runs fn as a test of its own, with a real *testing.T, so that
// these examples read exactly like the tests an application writes: in
// your own test, the body of fn is your test function's body. A failure
// prints "--- FAIL" lines, which fail the example's output check.
func runAsTest(name string, fn func(t *testing.T)) {
	// -v would print "=== RUN" lines into the example's output.
	if v := flag.Lookup("test.v"); v != nil {
		old := v.Value.String()
		_ = v.Value.Set("false")
		defer v.Value.Set(old)
	}
	testing.RunTests(func(pat, str string) (bool, error) { return true, nil }, []testing.InternalTest{{Name: name, F: fn}})
}

// Pass the test's own t: the cluster closes itself with t.Cleanup, logs
// through t.Log, and fails the test when a wait runs out.
func ExampleNewCluster() {
	runAsTest("ExampleNewCluster", func(t *testing.T) {
		c := raftkittest.NewCluster(t, 3, fsmexample.New, raftkittest.WithLogLevel(hclog.Off))

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		leader := c.WaitForLeader()
		if _, err := leader.Apply(ctx, fsmexample.Set("greeting", []byte("hello"))); err != nil {
			t.Fatal(err)
		}
		// A follower serves a linearizable read from its own FSM after a
		// read barrier.
		follower := c.Followers()[0]
		if err := follower.LinearizableRead(ctx); err != nil {
			t.Fatal(err)
		}
		v, _ := c.FSM(follower).Get("greeting")
		fmt.Printf("%s\n", v)
	})
	// Output: hello
}

// A crashed leader loses nothing it acknowledged: the others elect a new
// leader, and the old one restarts from its storage and catches up.
func ExampleCluster_Crash() {
	runAsTest("ExampleCluster_Crash", func(t *testing.T) {
		c := raftkittest.NewCluster(t, 3, fsmexample.New,
			raftkittest.WithLogLevel(hclog.Off),
			// fsmexample's snapshots list keys in map order, so compare maps.
			raftkittest.WithState(func(s *fsmexample.Store) any { return s.All() }))

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		old := c.WaitForLeader()
		if _, err := old.Apply(ctx, fsmexample.Set("a", []byte("1"))); err != nil {
			t.Fatal(err)
		}
		c.Crash(old)
		next := c.WaitForLeader()
		if _, err := next.Apply(ctx, fsmexample.Set("b", []byte("2"))); err != nil {
			t.Fatal(err)
		}
		back := c.Restart(old)
		c.AssertConsistent() // waits for back to catch up, then compares
		fmt.Println("new leader differs:", next.ID() != old.ID())
		fmt.Println("keys on the restarted node:", c.FSM(back).Len())
	})
	// Output:
	// new leader differs: true
	// keys on the restarted node: 2
}

// A leader cut off with a minority cannot acknowledge writes; the
// majority elects a leader of its own and goes on.
func ExampleCluster_Partition() {
	runAsTest("ExampleCluster_Partition", func(t *testing.T) {
		c := raftkittest.NewCluster(t, 5, fsmexample.New, raftkittest.WithLogLevel(hclog.Off))

		old := c.WaitForLeader()
		followers := c.Followers()
		c.Partition(append(followers[:1:1], old), followers[1:])

		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := old.Apply(ctx, fsmexample.Set("k", []byte("lost")))
		cancel()
		fmt.Println("minority write acknowledged:", err == nil)

		next := c.WaitForLeader()
		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = next.Apply(ctx, fsmexample.Set("k", []byte("kept")))
		fmt.Println("majority write error:", err)

		c.Heal()
		c.AssertConsistent()
	})
	// Output:
	// minority write acknowledged: false
	// majority write error: <nil>
}
