package client

import (
	"fmt"
	"strings"
)

// FieldError is an invalid field of a deployment spec, a graph or a config
// file, with where it stands. It wraps what is wrong; the sentinel
// (ErrInvalidSpec, ErrInvalidGraph, ErrConfigFile) wraps it:
//
//	var fe *client.FieldError
//	if errors.As(err, &fe) { … fe.File, fe.Line, fe.Path … }
type FieldError struct {
	// File is the config file, "" when the value did not come from one.
	File string
	// Line is the line in File, 0 when not known.
	Line int
	// Name is the deployment or graph the field belongs to, when known.
	Name string
	// Path is the field: "num_replicas", "deployments[0].replicas"; "" for
	// a fault of the whole item.
	Path string
	// Err says what is wrong.
	Err error
}

// Error reads "FILE:LINE: NAME: PATH: what is wrong", leaving out what is
// not known.
func (e *FieldError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	for _, s := range []string{e.Name, e.Path} {
		if s != "" {
			b.WriteString(s)
			b.WriteString(": ")
		}
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns what is wrong.
func (e *FieldError) Unwrap() error { return e.Err }

// at returns a copy of e placed at file:line.
func (e *FieldError) at(file string, line int) *FieldError {
	c := *e
	c.File, c.Line = file, line
	return &c
}
