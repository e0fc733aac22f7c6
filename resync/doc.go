// Package resync runs the background jobs that keep a redundant array
// consistent: resync of dirty regions after an unclean stop, recovery
// (rebuild) of a member, and check/repair (scrub).
//
// A Job is a list of byte ranges and what to do with each; Run walks them
// in chunks through a raid.Syncer, which locks each chunk against writes
// while it works, so the array keeps serving IO. Run throttles itself like
// md: it never exceeds Throttle.Max, and above Throttle.Min it backs off
// while foreground IO is active. The throttle is a pure function of the
// progress so far (Delay) with an injectable clock, so it is tested exactly.
//
// Progress (position, rate, ETA, mismatches) is published after every
// chunk for status and metrics.
package resync
