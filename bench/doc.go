// Package bench holds natserve's benchmarks: go test -bench micro
// benchmarks of the hot path, each beside its baseline and reporting the
// ratio, and (in ./harness) the end-to-end harness against nginx, a bare
// fasthttp server and raw NATS. See README.md for the numbers.
package bench
