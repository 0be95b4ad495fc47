// Command nowal starts a node with LogStoreWAL in a program that does not
// import package walstore, and prints what NewRaftNode says
// (TestLogStoreWALWithoutWalstoreNamesTheImport).
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

func main() {
	n, err := raftkit.NewRaftNode(raftkit.Config{Addr: "127.0.0.1:0", Dir: os.Args[1], LogStore: raftkit.LogStoreWAL}, fsmexample.New())
	if err == nil {
		n.Close()
		fmt.Println("started")
		return
	}
	var ce *raftkit.ConfigError
	fmt.Printf("invalid=%v field=%v\n%v\n", errors.Is(err, raftkit.ErrInvalidConfig), errors.As(err, &ce) && ce.Field == "LogStore", err)
}
