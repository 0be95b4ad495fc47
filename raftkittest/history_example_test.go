package raftkittest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/raftkittest"
)

// kvCall is one call of the examples' histories: a write of Value to Key,
// or a read of Key.
type kvCall struct {
	Key, Value string
	Write      bool
}

// kvModel: each key holds the last value written to it ("" before any).
var kvModel = raftkittest.Model[string, kvCall, string]{
	Init:      func() string { return "" },
	Partition: func(in kvCall) string { return in.Key },
	Step: func(state string, in kvCall, out string, _ error) (bool, string) {
		if in.Write {
			return true, in.Value
		}
		return out == state, state
	},
}

// Record every call a test makes, from any node and goroutine, and check
// the answers against a model of the FSM: the check maps each outcome
// class as the contract says (an unknown outcome may take effect later, a
// not-applied one never does).
func ExampleHistory() {
	runAsTest("ExampleHistory", func(t *testing.T) {
		c := raftkittest.NewCluster(t, 3, fsmexample.New, raftkittest.WithLogLevel(hclog.Off))
		c.WaitForLeader()
		h := raftkittest.NewHistory(kvModel)

		var wg sync.WaitGroup
		for client := 0; client < 4; client++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 15; i++ {
					n, key := c.Nodes()[(client+i)%3], fmt.Sprint("k", i%2)
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					if i%3 == 0 {
						v := fmt.Sprintf("%d.%d", client, i)
						h.Write(client, kvCall{key, v, true}, func() (string, error) {
							_, err := n.Apply(ctx, fsmexample.Set(key, []byte(v)))
							return "", err
						})
					} else {
						h.Read(client, kvCall{Key: key}, func() (string, error) {
							if err := n.LinearizableRead(ctx); err != nil {
								return "", err
							}
							v, _ := c.FSM(n).Get(key)
							return string(v), nil
						})
					}
					cancel()
				}
			}()
		}
		wg.Wait()
		fmt.Println("linearizable:", h.Check() == nil)
	})
	// Output: linearizable: true
}

// The same check catches an FSM that answers reads from stale state.
func ExampleHistory_staleFSM() {
	runAsTest("ExampleHistory_staleFSM", func(t *testing.T) {
		c := raftkittest.NewCluster(t, 3, newStaleRegister, raftkittest.WithLogLevel(hclog.Off))
		n := c.WaitForLeader()
		h := raftkittest.NewHistory(kvModel)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for i := 1; i <= 3; i++ {
			v := fmt.Sprint(i)
			h.Write(0, kvCall{"k", v, true}, func() (string, error) {
				_, err := n.Apply(ctx, []byte(v))
				return "", err
			})
			h.Read(0, kvCall{Key: "k"}, func() (string, error) {
				err := n.LinearizableRead(ctx)
				return c.FSM(n).Get(), err
			})
		}
		var bad *raftkittest.NotLinearizableError
		fmt.Println("caught:", errors.As(h.Check(), &bad))
	})
	// Output: caught: true
}

// staleRegister holds one value, but its reads return the value before
// the last write: the kind of bug a read served without a barrier has.
type staleRegister struct {
	mu          sync.Mutex
	value, prev string
}

func newStaleRegister() *staleRegister { return &staleRegister{} }

func (r *staleRegister) Apply(l *raft.Log) any {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.prev, r.value = r.value, string(l.Data)
	return nil
}

func (r *staleRegister) Get() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.prev
}

func (r *staleRegister) Snapshot() (raft.FSMSnapshot, error) { return nil, errors.New("no snapshots") }
func (r *staleRegister) Restore(io.ReadCloser) error         { return errors.New("no snapshots") }
