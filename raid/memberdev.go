package raid

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/raid/meta"
)

// MemberOptions say how OpenMemberDevice opens a member device.
type MemberOptions struct {
	// Direct opens files and block devices with O_DIRECT.
	Direct bool
	// ReadOnly opens files and block devices read-only. Remote exports
	// are opened as the server offers them.
	ReadOnly bool
	// CreateSize, if positive, creates a member file that does not exist
	// with this size (sparse). It does not apply to remote members.
	CreateSize int64
	// Remote configures members given as NBD URIs (reconnect backoff, how
	// long a member may stay unreachable before it fails); the zero value
	// takes remote's defaults.
	Remote remote.Config
}

// IsRemote reports whether a member path is an NBD URI (nbd://…,
// nbd+unix://…) rather than a file or block device.
func IsRemote(path string) bool { return remote.IsURI(path) }

// MemberPath returns the form of a member path that the superblock
// records: the canonical URI for NBD URIs, the absolute path otherwise.
func MemberPath(path string) (string, error) {
	if IsRemote(path) {
		u, err := remote.ParseURI(path)
		if err != nil {
			return "", err
		}
		return u.String(), nil
	}
	return filepath.Abs(path)
}

// OpenMemberDevice opens the member at path: an NBD URI with remote.Open
// (bounded by opts.Remote.DialTimeout; an unreachable server gives an error
// wrapping remote.ErrUnreachable), anything else with blockdev.OpenFile.
func OpenMemberDevice(path string, opts MemberOptions) (blockdev.Device, error) {
	if IsRemote(path) {
		return remote.Open(context.Background(), path, opts.Remote)
	}
	f, err := blockdev.OpenFile(path, blockdev.FileOptions{
		Direct: opts.Direct, ReadOnly: opts.ReadOnly, Create: opts.CreateSize > 0, CreateSize: opts.CreateSize,
	})
	if err != nil {
		return nil, err
	}
	return f, nil
}

// verifyMember returns a remote.Config.Verify that checks, after every
// reconnect, that the export still carries the header of role in a: a
// remote member that comes back as another disk fails instead of being
// written to.
func verifyMember(a *meta.Array, role int) func(blockdev.Device) error {
	snap := *a
	snap.Members = append([]meta.Member(nil), a.Members...)
	return func(dev blockdev.Device) error {
		if err := checkMember(&snap, role, dev); err != nil {
			return fmt.Errorf("member %d (%s): %w", role, snap.Members[role].Path, err)
		}
		return nil
	}
}
