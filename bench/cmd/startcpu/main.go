// Command startcpu measures the CPU (user + system, from the child's
// rusage) that a program takes to start and exit, as the node agent starts
// replicas (GOMAXPROCS 1, GODEBUG=updatemaxprocs=0). Issue 22: a replica's
// start-up CPU is mostly the binary's (runtime and package initialisers).
//
//	go build -o /tmp/ns ./cmd/natserve && go run ./bench/cmd/startcpu /tmp/ns -h
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"time"
)

var n = flag.Int("n", 200, "runs")

func main() {
	flag.Parse()
	if flag.NArg() == 0 || *n < 1 {
		fmt.Fprintln(os.Stderr, "usage: startcpu [-n runs] program [args...]")
		os.Exit(2)
	}
	var ms []float64
	for i := 0; i < *n; i++ {
		c := exec.Command(flag.Arg(0), flag.Args()[1:]...)
		c.Env = append(os.Environ(), "GODEBUG=updatemaxprocs=0", "GOMAXPROCS=1")
		_ = c.Run() // -h exits non-zero in some programs: the CPU is what counts
		if c.ProcessState == nil {
			fmt.Fprintln(os.Stderr, "startcpu: could not start", flag.Arg(0))
			os.Exit(1)
		}
		u := c.ProcessState.UserTime() + c.ProcessState.SystemTime()
		ms = append(ms, float64(u)/float64(time.Millisecond))
	}
	sort.Float64s(ms)
	sum := 0.0
	for _, v := range ms {
		sum += v
	}
	fmt.Printf("%s: median %.2f ms, mean %.2f ms of CPU per process (%d runs)\n", flag.Arg(0), ms[len(ms)/2], sum/float64(len(ms)), len(ms))
}
