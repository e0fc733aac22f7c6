package meta

import (
	"fmt"
	"time"
)

// LockWait is how long commands wait for another ddraid process to release
// the state directory.
const LockWait = 10 * time.Second

// View opens the store in stateDir for the duration of fn.
func View(stateDir string, fn func(*Store) error) error {
	s, err := Open(stateDir, LockWait)
	if err != nil {
		return err
	}
	err = fn(s)
	if cerr := s.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close metadata: %w", cerr)
	}
	return err
}

// Update applies fn to the named array's superblock, bumps its event counter
// and stores it durably. fn may return an error to abandon the change.
func Update(stateDir, name string, fn func(*Array) error) (*Array, error) {
	var out *Array
	err := View(stateDir, func(s *Store) error {
		a, err := s.Get(name)
		if err != nil {
			return err
		}
		if err := fn(a); err != nil {
			return err
		}
		a.Events++
		if err := s.Put(a); err != nil {
			return err
		}
		out = a
		return nil
	})
	return out, err
}
