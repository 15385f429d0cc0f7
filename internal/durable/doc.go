// Package durable is the requests service of stored (asynchronous)
// requests (service.go), which every controller process runs, and their
// end-to-end tests: real natserve processes, real replicas, kill -9.
package durable
