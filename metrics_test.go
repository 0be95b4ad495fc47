package raftkit

import (
	"sync"
	"time"
)

// countingSink is a MetricsSink that counts what it is told, per node.
type countingSink struct {
	mu        sync.Mutex
	nodes     map[*RaftNode]bool
	applied   map[string]int
	reads     map[string]int
	leaders   map[string]int
	fsmErrors map[string]int
}

func (s *countingSink) count(m *map[string]int, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if *m == nil {
		*m = map[string]int{}
	}
	(*m)[id]++
}

func (s *countingSink) AddNode(n *RaftNode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nodes == nil {
		s.nodes = map[*RaftNode]bool{}
	}
	s.nodes[n] = true
}

func (s *countingSink) RemoveNode(n *RaftNode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.nodes, n)
}

func (s *countingSink) Applied(id, path string, _ time.Duration, _ error) {
	s.count(&s.applied, id+"/"+path)
}
func (s *countingSink) ReadBarrier(id string, _ time.Duration, _ error) { s.count(&s.reads, id) }
func (s *countingSink) LeaderChanged(id string)                         { s.count(&s.leaders, id) }
func (s *countingSink) FSMError(id string)                              { s.count(&s.fsmErrors, id) }

func (s *countingSink) get(m map[string]int, id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return m[id]
}
