#!/usr/bin/env bash
# make bench, member part: the Raid 3.5 speed claims with simulated disks.
#
# Every disk, the array members and the single-disk baseline alike, is the
# same slow-disk model: nbdkit's file plugin on a tmpfs file behind the
# noparallel filter (serialize=requests: one request at a time, like one
# spindle), the delay filter (a fixed cost per request) and the rate filter
# (bandwidth). A raid35 array over M of them (given as nbd+unix:// member
# URIs) is served by `ddraid serve` on a unix socket and driven with
# fio --ioengine=nbd; the baseline is fio straight against one such disk.
#
# Rows: 1M sequential write and read, 4k random read and write, all at
# iodepth BENCH_DEPTH (default 32), for M = 3, 5, 9, for each layout of
# BENCH_LAYOUTS (default "rotating:16 dedicated rotating:256"; rotating:C
# is rotating parity that moves on every C blocks, 16 being the create
# default). Where parity sits only matters to reads, so only the first
# layout runs every row; the others run the read rows (a rotating layout
# after the first only the sequential read). Each array is filled before it is measured. Each case runs
# BENCH_REPEAT times (default 3) after a ramp that drains the rate
# filter's burst bucket, taking turns with the same case on the one-disk
# baseline (which stays up for the whole run), so that load from other work
# on the machine falls on both; the table shows both medians and their
# ratio next to the goal of issue 5:
#   sequential write >= 0.9 x (M-1) one disk
#   sequential read  >= 0.9 x (M-1) dedicated parity, >= 0.9 x M rotating
#   4k random read and write >= 1.0 x one disk
#
# Environment: BENCH_RUNTIME (seconds per run, default 10), BENCH_REPEAT,
# BENCH_MEMBERS (default "3 5 9"), BENCH_LAYOUTS, BENCH_DEPTH,
# BENCH_DISK_RATE (bits per second, nbdkit syntax, default 160M = 20 MiB/s),
# BENCH_DISK_DELAY (per request, default 2ms), BENCH_DISK_BURST,
# BENCH_DISK_SIZE (default 128M), BENCH_RESULTS (a TSV file for bench/plot-members.sh; default
# none), DDRAID (binary).
#
# The model: every request waits BENCH_DISK_DELAY, one at a time, and the
# rate filter holds the bandwidth; a 4k request costs about 2.2 ms (about
# 450 IOPS), a 1M one about 50 ms (20 MiB/s). The rate filter's bucket is
# kept small (BENCH_DISK_BURST, default 0.2 s of the rate; nbdkit's default
# is 2 s): with the default bucket, 64K requests ran at about 29 MiB/s,
# credit saved during the per-request delays. The script prints the
# model's write speed by request size so this can be checked. The slow
# disks keep the whole run IO-bound: nine members move at most about
# 180 MiB/s.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${BENCH_RUNTIME:-10}
REPEAT=${BENCH_REPEAT:-3}
COUNTS=${BENCH_MEMBERS:-3 5 9}
DEPTH=${BENCH_DEPTH:-32}
LAYOUTS=${BENCH_LAYOUTS:-rotating:16 dedicated rotating:256}
RATE=${BENCH_DISK_RATE:-160M}
DELAY=${BENCH_DISK_DELAY:-2ms}
DISK_SIZE=${BENCH_DISK_SIZE:-128M}
BURST=${BENCH_DISK_BURST:-0.2}
RESULTS=${BENCH_RESULTS:-}
RAMP=2
BIN=${DDRAID:-bin/ddraid}
for t in nbdkit fio python3; do
	command -v "$t" >/dev/null || { echo "members.sh: $t is not installed" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "members.sh: no $BIN (run make build)" >&2; exit 2; }

W=$(mktemp -d /dev/shm/ddraid-members.XXXXXX)
PIDS=()
stop_all() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	PIDS=()
}
ONE_PID=
cleanup() {
	[ -n "$ONE_PID" ] && PIDS+=("$ONE_PID")
	stop_all
	rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_sock() {
	for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done
	echo "members.sh: no socket $1 (see the logs in $W)" >&2
	exit 1
}

# disk NAME: a slow disk on $W/NAME.sock, export "disk".
disk() {
	truncate -s "$DISK_SIZE" "$W/$1.img"
	nbdkit -f -U "$W/$1.sock" -e disk ${BENCH_NBDKIT_FLAGS:-} \
		--filter=noparallel --filter=delay --filter=rate \
		file file="$W/$1.img" serialize=requests rdelay="$DELAY" wdelay="$DELAY" rate="$RATE" burstiness="$BURST" \
		2>"$W/$1.log" &
	PIDS+=($!)
}

# fio_case URI RW BS -> "IOPS MiB/s", the fio run's sums over reads and
# writes (the ramp excluded).
fio_case() {
	fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$DEPTH" \
		--time_based --ramp_time="$RAMP" --runtime="$RUNTIME" --output-format=json 2>/dev/null |
		sed -n '/^{/,$p' |
		python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; r=j["read"]; w=j["write"]; print("%.1f %.2f" % (r["iops"]+w["iops"], (r["bw_bytes"]+w["bw_bytes"])/1048576))'
}

# measure URI RW BS UNIT -> "ARRAY ONE": the medians, in UNIT (IOPS or
# MiB/s), of REPEAT runs against URI and as many against the one-disk
# baseline, the two taking turns in an order that alternates.
measure() {
	local col=1 a=() o=() i one="nbd+unix:///disk?socket=$W/one.sock"
	[ "$4" = MiB/s ] && col=2
	for i in $(seq "$REPEAT"); do
		if [ $((i % 2)) = 1 ]; then
			a+=("$(fio_case "$1" "$2" "$3" | cut -d' ' -f"$col")")
			o+=("$(fio_case "$one" "$2" "$3" | cut -d' ' -f"$col")")
		else
			o+=("$(fio_case "$one" "$2" "$3" | cut -d' ' -f"$col")")
			a+=("$(fio_case "$1" "$2" "$3" | cut -d' ' -f"$col")")
		fi
	done
	python3 -c 'import statistics,sys; n=len(sys.argv)//2; m=lambda v: statistics.median(float(x) for x in v); print("%.1f %.1f" % (m(sys.argv[1:n+1]), m(sys.argv[n+1:])))' "${a[@]}" "${o[@]}"
}

# The cases: label, fio rw, block size, unit, goal kind.
CASES=(
	"1M seq write|write|1M|MiB/s|seqw"
	"1M seq read|read|1M|MiB/s|seqr"
	"4k randread|randread|4k|IOPS|rand"
	"4k randwrite|randwrite|4k|IOPS|rand"
)

echo "slow disk: nbdkit file on tmpfs, filters noparallel (serialize=requests) + delay (${DELAY} per request) + rate (${RATE} bit/s, burstiness ${BURST}s); fio --ioengine=nbd, iodepth $DEPTH, ${RUNTIME}s after a ${RAMP}s ramp, median of $REPEAT"

# The one-disk baseline stays up for the whole run. First the model's
# write speed by request size (one run each), to show where the rate
# filter holds.
disk one
ONE_PID=${PIDS[-1]}
PIDS=()
wait_sock "$W/one.sock"
bysize=
for bs in 64k 128k 256k 1M; do
	bysize="$bysize $bs $(fio_case "nbd+unix:///disk?socket=$W/one.sock" write "$bs" | cut -d' ' -f2) MiB/s,"
done
echo "one disk, sequential write by request size:${bysize%,}"
echo

[ -n "$RESULTS" ] && printf 'members\tparity\tcase\tunit\tarray\tone_disk\tratio\tgoal\n' >"$RESULTS"
printf '%-14s %3s %-12s %14s %14s %7s %7s %5s\n' case M parity array "one disk" ratio goal ""

# verdict LABEL M LAYOUT ARRAY ONE UNIT KIND: prints the row (and the TSV
# line).
verdict() {
	python3 - "$@" "$RESULTS" <<'PY'
import sys
label, m, parity, value, one, unit, kind, results = sys.argv[1:9]
m, value, one = int(m), float(value), float(one)
goal = {"seqw": 0.9 * (m - 1), "rand": 1.0}.get(kind)
if kind == "seqr":
    goal = 0.9 * (m if parity.startswith("rotating") else m - 1)
ratio = value / one if one else 0.0
print("%-14s %3d %-12s %8.1f %-5s %8.1f %-5s %7.2f %7.2f %5s" % (
    label, m, parity, value, unit, one, unit, ratio, goal, "PASS" if ratio >= goal else "MISS"))
if results:
    with open(results, "a") as f:
        f.write("%d\t%s\t%s\t%s\t%.1f\t%.1f\t%.3f\t%.2f\n" % (m, parity, label, unit, value, one, ratio, goal))
PY
}

n=0
for m in $COUNTS; do
	first=1
	for layout in $LAYOUTS; do
		parity=${layout%%:*} chunk=
		[ "$parity" = rotating ] && chunk=${layout#rotating}; chunk=${chunk#:}
		n=$((n + 1))
		name="a$n"
		members=()
		for i in $(seq 0 $((m - 1))); do
			disk "$name-m$i"
			members+=("nbd+unix:///disk?socket=$W/$name-m$i.sock")
		done
		for i in $(seq 0 $((m - 1))); do wait_sock "$W/$name-m$i.sock"; done
		# The members are new, all-zero disks, whose parity is already
		# right: --assume-clean skips an initial sync that would compete
		# with the measurement.
		"$BIN" create bench --state-dir="$W/$name" --level=raid35 --parity="$parity" ${chunk:+--parity-chunk=$chunk} \
			--assume-clean "${members[@]}" >"$W/$name.create.log" 2>&1 ||
			{ cat "$W/$name.create.log" >&2; exit 1; }
		"$BIN" serve bench --state-dir="$W/$name" --listen="unix:$W/$name.sock" ${BENCH_SERVE_FLAGS:-} >"$W/$name.log" 2>&1 &
		PIDS+=($!)
		wait_sock "$W/$name.sock"
		uri="nbd+unix:///bench?socket=$W/$name.sock"
		# Fill the array, so that every read reaches the members.
		fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth="$DEPTH" >/dev/null 2>&1
		for c in "${CASES[@]}"; do
			IFS='|' read -r label rw bs unit kind <<<"$c"
			if [ -z "$first" ]; then
				[ "$rw" = read ] || { [ "$rw" = randread ] && [ -z "$chunk" ]; } || continue
			fi
			read -r v one < <(measure "$uri" "$rw" "$bs" "$unit")
			verdict "$label" "$m" "$layout" "$v" "$one" "$unit" "$kind"
		done
		stop_all
		first=
	done
done
