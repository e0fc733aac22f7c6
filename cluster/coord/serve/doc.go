// Package serve assembles an array in cluster mode: a coord.Coordinator
// joins the array's writers, and raid/array opens the array with the
// writer identity, the write gate and the member-failure hook the
// coordinator provides. It is what `ddraid agent` runs for each array it
// serves (the wiring of cluster/coord and raid/array in one place, not in
// cmd/).
package serve
