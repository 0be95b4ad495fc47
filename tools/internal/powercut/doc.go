// Package powercut holds raftkit's power-loss scenarios: real node
// processes (raftkittest/internal/kvnode, built from the library's tree)
// whose data directories sit on powerloss mounts, cut at random moments,
// restarted, and checked for every acknowledged write. It has only
// tests; see powercut_test.go for how to run the long version.
package powercut
