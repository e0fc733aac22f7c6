package bitmap

import "errors"

// Sentinel errors. Functions wrap them with context; test with errors.Is.
var (
	// ErrCorrupt reports a bitmap store that cannot be read back intact.
	// The marks it held are lost, so the caller must treat every region
	// as dirty (a full resync) and say so in a warning; see OpenStore and
	// Quarantine.
	ErrCorrupt = errors.New("bitmap: store is corrupt")
	// ErrLocked reports a bitmap store held by another process.
	ErrLocked = errors.New("bitmap: store is locked by another process")
	// ErrClosed reports use of a closed Store or Bitmap.
	ErrClosed = errors.New("bitmap: closed")
	// ErrInUse reports a second Bitmap for an (array, slot) pair that
	// already has an open one on the same Store.
	ErrInUse = errors.New("bitmap: slot already in use")
	// ErrDegraded reports ClearRegions on a degraded array: nothing is
	// cleared while degraded, so a returning member needs only the dirty
	// regions.
	ErrDegraded = errors.New("bitmap: array is degraded; marks are kept")
	// ErrGeometry reports marks that do not fit the bitmap being opened:
	// they were made with another region size, or lie beyond the end of
	// the array. The marks cannot be interpreted, so the caller must
	// resync the whole array and then Drop the array's marks.
	ErrGeometry = errors.New("bitmap: marks do not match the array geometry")
)
