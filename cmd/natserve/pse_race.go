//go:build race

package main

// stopPSE does nothing in a race build (see pse.go).
func stopPSE() {}
