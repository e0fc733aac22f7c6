package coord

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/raid/meta"
)

// ErrUnchanged lets an update's function say there is nothing to do: the
// superblock is broadcast again as it is (a node that missed it gets it).
var ErrUnchanged = errors.New("coord: no change")

// Update changes the superblock cluster-wide (md's METADATA_UPDATED):
// under the token lock, fn changes a copy, the event counter goes up, this
// node stores it, and every other live node must acknowledge having stored
// it. what names the change in errors. If fn returns an error the update is
// abandoned with it.
//
// When a node refuses or does not answer, the update fails naming it;
// the nodes that stored it keep the higher event counter (assembly
// prefers it), so the caller should treat the change as uncertain and
// retry or repair.
func (c *Coordinator) Update(ctx context.Context, what string, fn func(*meta.Array) error) (*meta.Array, error) {
	ctx, cancel := c.waitCtx(ctx)
	defer cancel()
	tok, err := c.ls.Lock(ctx, resToken, lockd.EX, 0)
	if err != nil {
		return nil, fmt.Errorf("metadata update (%s): take the token lock: %w", what, err)
	}
	defer c.unlock(tok)
	return c.updateHeld(ctx, tok, what, fn)
}

// updateHeld is Update with the token lock held.
func (c *Coordinator) updateHeld(ctx context.Context, tok *lockd.Lock, what string, fn func(*meta.Array) error) (*meta.Array, error) {
	sb, err := cloneSuperblock(c.cfg.Local.Superblock())
	if err != nil {
		return nil, fmt.Errorf("metadata update (%s): %w", what, err)
	}
	// Unchanged here (this node already has it, e.g. an earlier attempt
	// that some node refused): no new event, but the superblock is still
	// broadcast, so every live node is known to have it when this returns.
	unchanged := false
	if err := fn(sb); err != nil {
		if !errors.Is(err, ErrUnchanged) {
			return nil, fmt.Errorf("metadata update (%s): %w", what, err)
		}
		if sb, err = cloneSuperblock(c.cfg.Local.Superblock()); err != nil {
			return nil, fmt.Errorf("metadata update (%s): %w", what, err)
		}
		unchanged = true
	} else {
		sb.Events++
	}
	body, err := EncodeSuperblock(sb)
	if err != nil {
		return nil, fmt.Errorf("metadata update (%s): %w", what, err)
	}
	if err := checkHeld(tok); err != nil {
		return nil, fmt.Errorf("metadata update (%s): token: %w", what, err)
	}
	if !unchanged {
		if err := c.cfg.Local.ApplySuperblock(sb); err != nil {
			return nil, fmt.Errorf("metadata update (%s), event %d: store here: %w", what, sb.Events, err)
		}
	}
	if _, err := c.cfg.Router.m.Broadcast(ctx, cluster.Message{Type: TypeMetadataUpdated, Array: c.uuid, Body: body}); err != nil {
		return nil, fmt.Errorf("metadata update (%s), event %d: not acknowledged by every live node: %w", what, sb.Events, err)
	}
	c.log.Info("metadata updated", "what", what, "events", sb.Events)
	return sb, nil
}

// cloneSuperblock deep-copies a superblock.
func cloneSuperblock(sb meta.Array) (*meta.Array, error) {
	b, err := json.Marshal(&sb)
	if err != nil {
		return nil, err
	}
	var out meta.Array
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// FailMember records member role as failed cluster-wide; only once every
// live node acknowledged may anyone write the array degraded. member is
// the UUID of the device that failed: when the role holds another device
// by the time the update runs (a spare or an added device took it), that
// device is not failed, and nothing changes. A member already failed here
// keeps its event counter; either way the superblock is broadcast again
// (a node that missed it gets it).
func (c *Coordinator) FailMember(ctx context.Context, role int, member meta.UUID, reason string) (*meta.Array, error) {
	return c.Update(ctx, fmt.Sprintf("fail member %d: %s", role, reason), func(sb *meta.Array) error {
		if role < 0 || role >= len(sb.Members) {
			return fmt.Errorf("no member %d (the array has %d)", role, len(sb.Members))
		}
		if m := sb.Members[role]; m.UUID != member || m.State == meta.StateFailed {
			return ErrUnchanged
		}
		sb.Members[role].Fail()
		return nil
	})
}

// AddMember adds the member spec cluster-wide (md's NEWDISK): under the
// token lock, this node and every other live node must be able to open it,
// and only then does fn put it into the superblock (as raid/array's add
// does), which is broadcast like any update. A node that cannot open it
// fails the add, named in the error.
func (c *Coordinator) AddMember(ctx context.Context, spec string, fn func(*meta.Array) error) (*meta.Array, error) {
	what := "add " + spec
	if _, err := DecodeSpec([]byte(spec)); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	ctx, cancel := c.waitCtx(ctx)
	defer cancel()
	tok, err := c.ls.Lock(ctx, resToken, lockd.EX, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: take the token lock: %w", what, err)
	}
	defer c.unlock(tok)
	if err := c.cfg.Local.CanOpen(ctx, spec); err != nil {
		return nil, fmt.Errorf("%s: %s cannot open it: %w", what, c.cfg.Node, err)
	}
	if _, err := c.cfg.Router.m.Broadcast(ctx, cluster.Message{Type: TypeNewDisk, Array: c.uuid, Body: []byte(spec)}); err != nil {
		return nil, fmt.Errorf("%s: not every live node can open it: %w", what, err)
	}
	return c.updateHeld(ctx, tok, what, fn)
}

// handleMetadata stores a superblock another node broadcast.
func (c *Coordinator) handleMetadata(body []byte) ([]byte, error) {
	sb, err := DecodeSuperblock(body)
	if err != nil {
		return nil, err
	}
	if sb.UUID.String() != c.uuid {
		return nil, fmt.Errorf("superblock of array %s sent for array %s", sb.UUID, c.uuid)
	}
	cur := c.cfg.Local.Superblock()
	switch {
	case sb.Events < cur.Events:
		return nil, fmt.Errorf("stale superblock: event %d, this node has %d", sb.Events, cur.Events)
	case sb.Events == cur.Events:
		mine, err := json.Marshal(&cur)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(mine, body) {
			theirs, _ := json.Marshal(sb)
			if !bytes.Equal(mine, theirs) {
				return nil, fmt.Errorf("conflicting superblock with event %d (this node has another one)", sb.Events)
			}
		}
		return nil, nil // already stored (a retry)
	}
	if err := c.cfg.Local.ApplySuperblock(sb); err != nil {
		return nil, fmt.Errorf("store superblock event %d: %w", sb.Events, err)
	}
	return nil, nil
}

// handleNewDisk checks that this node can open a member being added.
func (c *Coordinator) handleNewDisk(ctx context.Context, body []byte) ([]byte, error) {
	spec, err := DecodeSpec(body)
	if err != nil {
		return nil, err
	}
	if err := c.cfg.Local.CanOpen(ctx, spec); err != nil {
		return nil, fmt.Errorf("cannot open %s: %w", spec, err)
	}
	return nil, nil
}

// MemberFailed is how the array reports, in cluster mode, that a member
// failed on this node (synchronously, from the IO that saw the error).
// Writes halt here, and the writes already in flight are not acknowledged
// (WriteGate.HaltAcks), until every live writer has recorded the failure
// (FailMember): nobody's write completes without the member before the
// others know it is gone. If it cannot be recorded now (no quorum, a node
// refused), writes stay halted, the coordinator's loop retries, and the
// error says why.
func (c *Coordinator) MemberFailed(ctx context.Context, role int, cause error) error {
	reason := c.MemberFailing(role, cause)
	f := pendingFailure{reason: reason}
	if sb := c.cfg.Local.Superblock(); role >= 0 && role < len(sb.Members) {
		f.member = sb.Members[role].UUID
	}
	c.mu.Lock()
	if old, ok := c.pendingFail[role]; !ok || old.member != f.member {
		c.pendingFail[role] = f
	}
	c.mu.Unlock()
	return c.recordFailures(ctx)
}

// pendingFailure is a member failure not yet recorded cluster-wide: the
// device that failed (its UUID, so a late recording cannot fail a device
// that took the role since) and why.
type pendingFailure struct {
	member meta.UUID
	reason string
}

// MemberFailing halts this writer's writes and holds the acknowledgement
// of those in flight (WriteGate.HaltAcks) for a member failure that
// MemberFailed is about to record. The array calls it before its engine
// lets any IO see the failure (raid.Config.BeforeFail), so no write that
// went on without the member is acknowledged before every writer knows.
// It returns the reason it gave; MemberFailed calls it too, and a second
// call for the same failure changes nothing.
func (c *Coordinator) MemberFailing(role int, cause error) (reason string) {
	reason = "IO error"
	if cause != nil {
		reason = cause.Error()
	}
	c.cfg.Gate.HaltAcks(haltMember(role), fmt.Errorf("member %d failed (%s); waiting until every writer has recorded it", role, reason))
	return reason
}

// recordFailures records the pending member failures cluster-wide and
// lifts their halts. Two may run at once (the IO path and the loop's
// retry); a failure is forgotten, and its halt lifted, only by the one
// that recorded that very failure.
func (c *Coordinator) recordFailures(ctx context.Context) error {
	c.mu.Lock()
	pending := maps.Clone(c.pendingFail)
	c.mu.Unlock()
	var errs []error
	for role, f := range pending {
		if _, err := c.FailMember(ctx, role, f.member, f.reason); err != nil {
			errs = append(errs, err)
			continue
		}
		c.mu.Lock()
		done := c.pendingFail[role] == f
		if done {
			delete(c.pendingFail, role)
		}
		c.mu.Unlock()
		if done {
			c.cfg.Gate.Resume(haltMember(role))
		}
	}
	return errors.Join(errs...)
}

// failuresPending reports whether member failures wait to be recorded.
func (c *Coordinator) failuresPending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pendingFail) > 0
}
