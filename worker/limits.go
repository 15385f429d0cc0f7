package worker

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
)

// Node limits: how many replica processes a node runs and how fast it
// starts them, so that no spec (or bug) starts a process storm.
const (
	// DefaultSpawnRate is the replica starts per second a node agent allows.
	DefaultSpawnRate = 100
	// spawnBurst is how many starts may go at once before the rate applies.
	spawnBurst = 10
	// ReplicaMemoryEstimate is the memory one replica process is assumed to
	// take when the cap is derived from the node's memory.
	ReplicaMemoryEstimate = 20 << 20
	// fallbackMaxReplicas is the cap when the memory cannot be read.
	fallbackMaxReplicas = 1000
)

// DefaultMaxReplicas is the replica cap a node's memory holds: the smaller
// of MemTotal (/proc/meminfo) and the cgroup's memory.max, divided by
// ReplicaMemoryEstimate; at least 1, and 1000 where neither can be read.
func DefaultMaxReplicas() int {
	mem := memTotal()
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if v, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64); err == nil && v > 0 && (mem == 0 || v < mem) {
			mem = v
		}
	}
	if mem <= 0 {
		return fallbackMaxReplicas
	}
	return int(max(1, mem/ReplicaMemoryEstimate))
}

// memTotal returns MemTotal from /proc/meminfo in bytes, or 0.
func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest) // "24576000 kB"
		if len(f) == 2 && f[1] == "kB" {
			if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil && kb > 0 {
				return kb << 10
			}
		}
		return 0
	}
	return 0
}
