// Package sysmon keeps the Go runtime's system monitor out of its deep
// sleep in natserve's hot processes (natserve up, the broker, the ingress
// and, a bounded number per node, replicas).
//
// When every P of a Go process is idle, sysmon (the runtime's monitor
// thread) sleeps until woken, and the next system call any goroutine makes
// wakes it (entersyscall → notewakeup); it then polls every 20 µs until the
// process is idle again, and sleeps again. A server idle between requests
// pays that on every request: a futex wake-up of another thread (an
// inter-processor interrupt, a VM exit on a virtual machine) and a run of
// 20 µs polls on another CPU. Measured on 2 cores (issue 18, one request at
// a time): natserve up 207 → 130 µs of CPU per request, the whole path's
// p50 320 → 224 µs.
//
// GODEBUG=schedtrace=N keeps sysmon out of that sleep (it backs off to a
// 10 ms period when there is nothing to do: ~2 ms of CPU a second in an idle
// process on that machine) and prints the scheduler's state every N ms.
// Setting uses N's maximum, 2147483647 ms (~24.8 days), counted from the
// machine's boot (the runtime's monotonic clock): no line until then, so on
// a machine up longer than that a process prints one line at start
// ("SCHED …ms: gomaxprocs=…") and then one every ~24.8 days. The runtime
// reads schedtrace only at start: a process re-executes itself (Reexec),
// or its parent sets it (With).
//
// A GODEBUG that sets schedtrace itself, to any value (schedtrace=0: the
// runtime's default), is left as it is.
package sysmon

import (
	"os"
	"strings"
	"syscall"
)

// Setting is the GODEBUG setting that keeps sysmon awake.
const Setting = "schedtrace=2147483647"

// userEnv holds, in a process Reexec started, the GODEBUG it was first
// given ("" for none): what its children inherit (UserGODEBUG).
const userEnv = "NATSERVE_USER_GODEBUG"

// Sets reports whether godebug sets schedtrace.
func Sets(godebug string) bool {
	for _, f := range strings.Split(godebug, ",") {
		if k, _, ok := strings.Cut(f, "="); ok && strings.TrimSpace(k) == "schedtrace" {
			return true
		}
	}
	return false
}

// With returns godebug with Setting added, unless it sets schedtrace.
func With(godebug string) string {
	switch {
	case Sets(godebug):
		return godebug
	case godebug == "":
		return Setting
	}
	return godebug + "," + Setting
}

// UserGODEBUG returns the GODEBUG the process was started with, without
// Reexec's addition.
func UserGODEBUG() string {
	if v, ok := os.LookupEnv(userEnv); ok {
		return v
	}
	return os.Getenv("GODEBUG")
}

// Reexec replaces the process with the same program, arguments and
// environment plus Setting in GODEBUG (same pid: signals, supervisors and
// containers see no difference). It returns nil at once, doing nothing,
// when GODEBUG already sets schedtrace (the user's choice, or the process
// is the re-executed one); otherwise it returns only if the exec failed,
// and the caller goes on as it is.
func Reexec() error {
	godebug := os.Getenv("GODEBUG")
	if Sets(godebug) {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	env := make([]string, 0, len(os.Environ())+2)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") && !strings.HasPrefix(kv, userEnv+"=") {
			env = append(env, kv)
		}
	}
	env = append(env, "GODEBUG="+With(godebug), userEnv+"="+godebug)
	return syscall.Exec(exe, os.Args, env)
}
