package sysmon

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestSetsAndWith(t *testing.T) {
	for _, c := range []struct {
		in   string
		sets bool
		with string
	}{
		{"", false, Setting},
		{"updatemaxprocs=0", false, "updatemaxprocs=0," + Setting},
		{"schedtrace=0", true, "schedtrace=0"},
		{"http2debug=1,schedtrace=1000", true, "http2debug=1,schedtrace=1000"},
		{"scheddetail=1", false, "scheddetail=1," + Setting}, // a different setting
		{"xschedtrace=1", false, "xschedtrace=1," + Setting},
		{"schedtrace", false, "schedtrace," + Setting}, // no value: the runtime ignores it
	} {
		if got := Sets(c.in); got != c.sets {
			t.Errorf("Sets(%q) = %v, want %v", c.in, got, c.sets)
		}
		if got := With(c.in); got != c.with {
			t.Errorf("With(%q) = %q, want %q", c.in, got, c.with)
		}
	}
}

// helperEnv makes the test binary a program that reports its pid and
// GODEBUG, then calls Reexec.
const helperEnv = "SYSMON_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		fmt.Printf("pid=%d GODEBUG=%q user=%q\n", os.Getpid(), os.Getenv("GODEBUG"), UserGODEBUG())
		if err := Reexec(); err != nil {
			fmt.Println("reexec failed:", err)
			os.Exit(1)
		}
		os.Exit(0) // GODEBUG already set schedtrace: no exec
	}
	os.Exit(m.Run())
}

// TestReexec runs a real process: it re-executes itself once, keeping its
// pid, its arguments and the user's GODEBUG, and never twice.
func TestReexec(t *testing.T) {
	for _, c := range []struct {
		godebug string // "-": unset
		lines   []string
	}{
		{"-", []string{`GODEBUG="" user=""`, `GODEBUG="` + Setting + `" user=""`}},
		{"http2debug=1", []string{`GODEBUG="http2debug=1" user="http2debug=1"`, `GODEBUG="http2debug=1,` + Setting + `" user="http2debug=1"`}},
		{"schedtrace=0", []string{`GODEBUG="schedtrace=0" user="schedtrace=0"`}}, // the user's choice: no exec
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "GODEBUG=") && !strings.HasPrefix(kv, userEnv+"=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, helperEnv+"=1")
		if c.godebug != "-" {
			cmd.Env = append(cmd.Env, "GODEBUG="+c.godebug)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("GODEBUG %s: %v\n%s", c.godebug, err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != len(c.lines) {
			t.Fatalf("GODEBUG %s: %d lines, want %d:\n%s", c.godebug, len(lines), len(c.lines), out)
		}
		pid := fmt.Sprintf("pid=%d ", cmd.Process.Pid)
		for i, want := range c.lines {
			if lines[i] != pid+want {
				t.Errorf("GODEBUG %s: line %d is %q, want %q", c.godebug, i+1, lines[i], pid+want)
			}
		}
	}
}
