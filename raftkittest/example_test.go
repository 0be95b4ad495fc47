package raftkittest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/raftkittest"
)

// In a test, pass the test's own t: the cluster closes itself with
// t.Cleanup and logs through t.Log. Examples have no t, so these use a
// stand-in and close the cluster themselves.
func ExampleNewCluster() {
	t := &testing.T{} // in a test: the test's t
	c := raftkittest.NewCluster(t, 3, fsmexample.New, raftkittest.WithLogLevel(hclog.Off))
	defer c.Close() // in a test: done by t.Cleanup

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	leader := c.WaitForLeader()
	if _, err := leader.Apply(ctx, fsmexample.Set("greeting", []byte("hello"))); err != nil {
		fmt.Println(err)
		return
	}
	// A follower serves a linearizable read from its own FSM after a
	// read barrier.
	follower := c.Followers()[0]
	if err := follower.LinearizableRead(ctx); err != nil {
		fmt.Println(err)
		return
	}
	v, _ := c.FSM(follower).Get("greeting")
	fmt.Printf("%s\n", v)
	// Output: hello
}

// A crashed leader loses nothing it acknowledged: the others elect a new
// leader, and the old one restarts from its storage and catches up.
func ExampleCluster_Crash() {
	t := &testing.T{} // in a test: the test's t
	c := raftkittest.NewCluster(t, 3, fsmexample.New,
		raftkittest.WithLogLevel(hclog.Off),
		// fsmexample's snapshots list keys in map order, so compare maps.
		raftkittest.WithState(func(s *fsmexample.Store) any { return s.All() }))
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old := c.WaitForLeader()
	if _, err := old.Apply(ctx, fsmexample.Set("a", []byte("1"))); err != nil {
		fmt.Println(err)
		return
	}
	c.Crash(old)
	next := c.WaitForLeader()
	if _, err := next.Apply(ctx, fsmexample.Set("b", []byte("2"))); err != nil {
		fmt.Println(err)
		return
	}
	back := c.Restart(old)
	c.AssertConsistent() // waits for back to catch up, then compares
	fmt.Println("new leader differs:", next.ID() != old.ID())
	fmt.Println("keys on the restarted node:", c.FSM(back).Len())
	// Output:
	// new leader differs: true
	// keys on the restarted node: 2
}

// A leader cut off with a minority cannot acknowledge writes; the
// majority elects a leader of its own and goes on.
func ExampleCluster_Partition() {
	t := &testing.T{} // in a test: the test's t
	c := raftkittest.NewCluster(t, 5, fsmexample.New, raftkittest.WithLogLevel(hclog.Off))
	defer c.Close()

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
	// Output:
	// minority write acknowledged: false
	// majority write error: <nil>
}
