// Package durable holds the end-to-end tests of stored (asynchronous)
// requests: real natserve processes, real replicas, kill -9.
package durable
