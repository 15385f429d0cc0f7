// Package fault is natserve's fault and bad-input suite: under an
// open-loop load (constant arrival rate over HTTP and through handles) it
// kills replicas, controllers and node agents, hangs and stops replicas,
// overloads a deployment and sends bad HTTP, and records for each scenario
// the success ratio, the error codes, latency, time to recovery and
// duplicate executions, against the numbers of the reliability matrix.
//
//	go test ./internal/fault -run TestFaultSuite -v                      # CI: short outages
//	NATSERVE_FAULT_FULL=1 go test ./internal/fault -run TestFaultSuite -v  # full-length (30 s controller outage)
package fault
