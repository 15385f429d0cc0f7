package wire

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidName is returned (wrapped) for a name that cannot be used as a
// subject token or a KV key.
var ErrInvalidName = errors.New("invalid name")

// MaxNameLen is the longest deployment, class, node or replica name.
const MaxNameLen = 63

// ValidateName checks that s is usable as a deployment, class, node or
// replica name: 1 to 63 characters from [A-Za-z0-9_-], starting with a letter
// or digit. Such a name is a safe NATS subject token (no '.', '*', '>' or
// white space) and a safe KV key. what names the kind of name in the error.
func ValidateName(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: %s must not be empty", ErrInvalidName, what)
	}
	if len(s) > MaxNameLen {
		return fmt.Errorf("%w: %s %.20q… is %d characters long, the limit is %d", ErrInvalidName, what, s, len(s), MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '-' || c == '_') && i > 0:
		default:
			return fmt.Errorf("%w: %s %q: character %q at %d is not allowed (use letters, digits, '-' and '_', starting with a letter or digit)", ErrInvalidName, what, s, c, i)
		}
	}
	return nil
}

// ValidateMethod checks a method name carried in a request: empty (the
// default entry point) or a Go identifier of at most MaxNameLen bytes.
func ValidateMethod(s string) error {
	if len(s) > MaxNameLen {
		return fmt.Errorf("%w: method name is %d characters long, the limit is %d", ErrInvalidName, len(s), MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || (c >= '0' && c <= '9' && i > 0)) {
			return fmt.Errorf("%w: method %q: character %q at %d is not allowed", ErrInvalidName, s, c, i)
		}
	}
	return nil
}

// SanitizeName turns s (a host name, say) into a valid name: characters
// outside [A-Za-z0-9_-] become '-', leading '-' and '_' go, and it is cut to
// MaxNameLen; fallback stands in for an empty result.
func SanitizeName(s, fallback string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '-'
		}
	}
	s = strings.TrimLeft(string(b), "-_")
	if len(s) > MaxNameLen {
		s = s[:MaxNameLen]
	}
	if s == "" {
		return fallback
	}
	return s
}
