//go:build !race

package main

import (
	_ "unsafe" // go:linkname

	_ "github.com/nats-io/nats-server/v2/server/pse" // the variable below
)

// nats-server's pse package samples its process's CPU from an init
// function that reads /proc/PID/stat and calls sysinfo every second, for
// ever (time.AfterFunc), in every process that links it: every replica of
// this binary woke once a second for a broker it does not run. It stops
// sampling when the file cannot be read; stopPSE points it at a path that
// does not exist. Only `natserve replica` calls it (the broker's /varz
// CPU needs the sampling). Not in race builds: the write races (benignly,
// a second before the first read) with the sampler's timer goroutine.
//
//go:linkname pseProcStatFile github.com/nats-io/nats-server/v2/server/pse.procStatFile
var pseProcStatFile string

func stopPSE() { pseProcStatFile = "/proc/natserve-replica-does-not-sample" }
