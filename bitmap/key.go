package bitmap

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Key prefixes and the format record. The layout is described in doc.go.
const (
	formatKey   = "f"
	formatValue = "ddraid-bitmap/1"

	dirtyPrefix    = "d/"
	geometryPrefix = "g/"

	// dirtySuffixLen is the length of "/" slot(4) "/" region(8) after the
	// array name in a dirty key.
	dirtySuffixLen = 1 + 4 + 1 + 8

	// MaxArrayNameLen is the longest array name the store accepts.
	MaxArrayNameLen = 255
	// MaxSlot is the highest node slot the store accepts (slots are
	// stored as 32-bit big-endian numbers).
	MaxSlot = 1<<32 - 1
)

// checkArray reports whether name can be used as an array name in keys: 1
// to MaxArrayNameLen bytes, without '/' or NUL.
func checkArray(name string) error {
	if name == "" || len(name) > MaxArrayNameLen || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("bitmap: invalid array name %q: need 1-%d bytes without '/' or NUL", name, MaxArrayNameLen)
	}
	return nil
}

// checkSlot reports whether slot is a valid node slot.
func checkSlot(slot int) error {
	if slot < 0 || uint64(slot) > MaxSlot {
		return fmt.Errorf("bitmap: invalid slot %d: need 0-%d", slot, uint64(MaxSlot))
	}
	return nil
}

// arrayPrefix is "d/<array>/": every dirty key of the array starts with it.
func arrayPrefix(array string) []byte {
	return append([]byte(dirtyPrefix+array), '/')
}

// slotPrefix is "d/<array>/<slot>/": every dirty key of one slot starts
// with it.
func slotPrefix(array string, slot int) []byte {
	p := arrayPrefix(array)
	p = binary.BigEndian.AppendUint32(p, uint32(slot))
	return append(p, '/')
}

// appendDirtyKey appends the dirty key of (array, slot, region) to dst.
func appendDirtyKey(dst []byte, array string, slot int, region uint64) []byte {
	dst = append(dst, dirtyPrefix...)
	dst = append(dst, array...)
	dst = append(dst, '/')
	dst = binary.BigEndian.AppendUint32(dst, uint32(slot))
	dst = append(dst, '/')
	return binary.BigEndian.AppendUint64(dst, region)
}

func geometryKey(array string) []byte { return []byte(geometryPrefix + array) }

// keyKind says what a decoded key is.
type keyKind int

const (
	kindFormat keyKind = iota + 1
	kindDirty
	kindGeometry
)

// decodedKey is a key taken apart by decodeKey. Array aliases the key only
// through a string copy; decodedKey never retains the input slice.
type decodedKey struct {
	Kind   keyKind
	Array  string
	Slot   int
	Region uint64
}

// decodeKey takes a store key apart. Any key that does not follow the
// format in doc.go is an error wrapping ErrCorrupt. It never panics.
func decodeKey(k []byte) (decodedKey, error) {
	switch {
	case string(k) == formatKey:
		return decodedKey{Kind: kindFormat}, nil
	case len(k) > len(dirtyPrefix) && string(k[:len(dirtyPrefix)]) == dirtyPrefix:
		rest := k[len(dirtyPrefix):]
		if len(rest) < 1+dirtySuffixLen {
			return decodedKey{}, fmt.Errorf("dirty key %q is too short: %w", k, ErrCorrupt)
		}
		name := rest[:len(rest)-dirtySuffixLen]
		suf := rest[len(rest)-dirtySuffixLen:]
		if suf[0] != '/' || suf[5] != '/' {
			return decodedKey{}, fmt.Errorf("dirty key %q lacks its separators: %w", k, ErrCorrupt)
		}
		if err := checkArray(string(name)); err != nil {
			return decodedKey{}, fmt.Errorf("dirty key %q: %w: %v", k, ErrCorrupt, err)
		}
		return decodedKey{
			Kind:   kindDirty,
			Array:  string(name),
			Slot:   int(binary.BigEndian.Uint32(suf[1:5])),
			Region: binary.BigEndian.Uint64(suf[6:]),
		}, nil
	case len(k) > len(geometryPrefix) && string(k[:len(geometryPrefix)]) == geometryPrefix:
		name := k[len(geometryPrefix):]
		if err := checkArray(string(name)); err != nil {
			return decodedKey{}, fmt.Errorf("geometry key %q: %w: %v", k, ErrCorrupt, err)
		}
		return decodedKey{Kind: kindGeometry, Array: string(name)}, nil
	}
	return decodedKey{}, fmt.Errorf("unknown key %q: %w", k, ErrCorrupt)
}

// checkValue checks the value stored under a decoded key.
func checkValue(d decodedKey, v []byte) error {
	switch d.Kind {
	case kindFormat:
		if string(v) != formatValue {
			return fmt.Errorf("format record %q, want %q: %w", v, formatValue, ErrCorrupt)
		}
	case kindDirty:
		if len(v) != 0 {
			return fmt.Errorf("dirty mark of %s slot %d region %d has a %d-byte value: %w", d.Array, d.Slot, d.Region, len(v), ErrCorrupt)
		}
	case kindGeometry:
		if len(v) != 8 {
			return fmt.Errorf("geometry record of %s has %d bytes, want 8: %w", d.Array, len(v), ErrCorrupt)
		}
		if rs := binary.BigEndian.Uint64(v); !validRegionSize(int64(rs)) {
			return fmt.Errorf("geometry record of %s has region size %d: %w", d.Array, rs, ErrCorrupt)
		}
	}
	return nil
}

// validRegionSize reports whether rs is a power of two of at least
// MinRegionSize bytes and at most MaxRegionSize.
func validRegionSize(rs int64) bool {
	return rs >= MinRegionSize && rs <= MaxRegionSize && rs&(rs-1) == 0
}
