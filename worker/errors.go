package worker

import "errors"

// Sentinel errors of this package.
var (
	// ErrRegistration: a class or function could not be registered.
	ErrRegistration = errors.New("registration")
	// ErrUnknownClass: no class of that name is registered in this program.
	ErrUnknownClass = errors.New("unknown class")
	// ErrConstructor: the class's constructor failed.
	ErrConstructor = errors.New("constructor failed")
	// ErrSpec: a replica spec is invalid.
	ErrSpec = errors.New("invalid replica spec")
)
