package main

import (
	"context"
	"fmt"
	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

func main() {
	kv := fsmexample.New() // or your own raft.FSM
	node, err := raftkit.NewRaftNode(raftkit.Config{Addr: "127.0.0.1:7000", Dir: "raft-data", Peers: []string{"127.0.0.1:7000"}}, kv)
	if err != nil {
		panic(err)
	}
	defer node.Close()
	_, err = node.Apply(context.Background(), fsmexample.Set("greeting", []byte("hello"))) // from any node
	v, _ := kv.Get("greeting")
	fmt.Printf("greeting=%s err=%v\n", v, err)
}
