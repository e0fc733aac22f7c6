#!/usr/bin/env bash
# make bench, rebuild part: how fast one member is rebuilt compared with the
# sequential write speed of a member file of the same kind, and what a
# rebuild at the default throttle costs foreground IO. Everything runs on
# tmpfs-backed files.
#
# 1. Member write speed: fio, sequential 1M writes at qd1 into a new sparse
#    file (best of 3), like the file add-device gets.
# 2. Rebuild: for each geometry, an array served with --speed-max=0 is
#    filled, a member is failed and a new sparse file added in its place,
#    three times; the rebuild rate is the best finished job's own rate from
#    `ddraid status --json` (array bytes per second), turned into member
#    bytes per second (raid35: / (members - 1); mirror: as is).
# 3. Foreground: fio against a healthy array, then the same case again
#    while a rebuild runs at the default throttle (--speed-min=1M,
#    --speed-max=200M); also shows how fast the rebuild moved meanwhile
#    (sampled from 1 s after fio started to 1 s before it ends).
#
# Usage: bench/rebuild.sh [seconds-per-fio-case]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${1:-${BENCH_RUNTIME:-8}}
[ "$RUNTIME" -ge 3 ] || { echo "rebuild.sh: at least 3 seconds per case" >&2; exit 2; }
BIN=${DDRAID:-bin/ddraid}
SIZE=${REBUILD_MEMBER_SIZE:-1G}     # member size for the rebuild rate
FG_SIZE=${REBUILD_FG_MEMBER_SIZE:-512M} # member size for the foreground cases
W=$(mktemp -d /dev/shm/ddraid-rebuild.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT

wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }
mib() { python3 -c "import sys; print('%.0f' % (float(sys.argv[1]) / 1048576))" "$1"; }

# status FIELD... of array NAME in state dir DIR: prints the fields asked
# for, from `ddraid status --json`: job_kind, job_done, queued,
# last_kind, last_rate, last_done.
status() {
	local dir=$1 name=$2; shift 2
	"$BIN" status "$name" --state-dir="$dir" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)[0]
j, l = s.get("job") or {}, s.get("last_job") or {}
v = {"job_kind": j.get("kind", "-"), "job_done": j.get("done", 0), "queued": s.get("queued", 0),
     "last_kind": l.get("kind", "-"), "last_rate": l.get("rate", 0), "last_done": l.get("done", 0)}
print(" ".join(str(v[f]) for f in sys.argv[1:]))' "$@"
}

# wait_rebuild DIR NAME: until no job runs or waits and the last one was a
# recovery.
wait_rebuild() {
	for _ in $(seq 6000); do
		read -r job queued last < <(status "$1" "$2" job_kind queued last_kind)
		[ "$job" = - ] && [ "$queued" = 0 ] && [ "$last" = recover ] && return 0
		sleep 0.1
	done
	echo "rebuild of $2 did not finish" >&2
	exit 1
}

# serve NAME DIR LEVEL MSIZE "SERVE FLAGS" MEMBERS...: create and serve an
# array on a unix socket DIR.sock.
serve() {
	local name=$1 dir=$2 level=$3 msize=$4 flags=$5; shift 5
	"$BIN" create "$name" --state-dir="$dir" --level="$level" --size="$msize" "$@" >/dev/null
	# shellcheck disable=SC2086 # flags are words
	"$BIN" serve "$name" --state-dir="$dir" --listen="unix:$dir.sock" $flags >/dev/null 2>"$dir.log" & PIDS+=($!)
	wait_sock "$dir.sock"
}

stop_last() { kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'; }

fill() { # SOCK NAME: write the whole array once
	fio --name=fill --ioengine=nbd --uri="nbd+unix:///$2?socket=$1" --rw=write --bs=1M --iodepth=8 >/dev/null 2>&1
}

# fio_case SOCK NAME RW BS DEPTH JOBS -> MiB/s
fio_case() {
	local sock=$1 name=$2 rw=$3 bs=$4 depth=$5 jobs=$6
	fio --name=b --ioengine=nbd --uri="nbd+unix:///$name?socket=$sock" --rw="$rw" --bs="$bs" \
		--iodepth="$depth" --numjobs="$jobs" --size=512M --time_based --runtime="$RUNTIME" \
		--group_reporting --output-format=json 2>/dev/null | sed -n "/^{/,\$p" |
	python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; r=j["read"]; w=j["write"]; print("%.1f" % ((r["bw_bytes"]+w["bw_bytes"])/1048576))'
}

# 1. The member's own sequential write speed.
member_bw=0
for i in 1 2 3; do
	rm -f "$W/seq.img"
	truncate -s "$SIZE" "$W/seq.img"
	bw=$(fio --name=seq --filename="$W/seq.img" --rw=write --bs=1M --size="$SIZE" --ioengine=psync \
		--iodepth=1 --fallocate=none --output-format=json 2>/dev/null | sed -n "/^{/,\$p" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"])')
	member_bw=$(python3 -c "print(max(float('$member_bw'), float('$bw')))")
done
rm -f "$W/seq.img"

# 2. Rebuild rate, unthrottled.
echo "rebuild of one member, serve --speed-max=0, $SIZE tmpfs members; member sequential write (fio 1M qd1, best of 3): $(mib "$member_bw") MiB/s"
printf '%-12s %16s %18s %20s %8s\n' geometry "array rebuilt" "rebuild (array)" "rebuild (member)" ratio
rebuild_row() { # LABEL LEVEL N: fill once, then the best of 3 rebuilds
	local label=$1 level=$2 n=$3 dir="$W/$2-$3"
	local members=() best=0 best_done=0 rate done
	for i in $(seq 0 $((n - 1))); do members+=("$dir-m$i"); done
	serve r "$dir" "$level" "$SIZE" "--speed-max=0" "${members[@]}"
	fill "$dir.sock" r
	for i in 1 2 3; do
		"$BIN" fail-device r 1 --state-dir="$dir" >/dev/null
		truncate -s "$SIZE" "$dir-new$i"
		"$BIN" add-device r "$dir-new$i" --state-dir="$dir" >/dev/null
		rm -f "$dir-m1" "$dir-new$((i - 1))" # the failed file; freed once the array lets go
		wait_rebuild "$dir" r
		read -r rate done < <(status "$dir" r last_rate last_done)
		if python3 -c "import sys; sys.exit(0 if float('$rate') > float('$best') else 1)"; then best=$rate best_done=$done; fi
	done
	python3 - "$label" "$level" "$n" "$best" "$best_done" "$member_bw" <<'PY'
import sys
label, level, n, rate, done, member = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
per_member = rate / (n - 1) if level == "raid35" else rate
print("%-12s %12.0f MiB %12.0f MiB/s %14.0f MiB/s %8.2f" % (label, done / 1048576, rate / 1048576, per_member / 1048576, per_member / member))
PY
	stop_last
	rm -f "$dir"-m* "$dir"-new*
}
rebuild_row "raid35 x3" raid35 3
rebuild_row "raid35 x5" raid35 5
rebuild_row "mirror x2" mirror 2

# 3. Foreground fio with and without a rebuild at the default throttle.
echo
echo "foreground fio during a rebuild, raid35 x5, default throttle (--speed-min=1M --speed-max=200M), $FG_SIZE tmpfs members, ${RUNTIME}s per case"
printf '%-26s %14s %16s %8s %20s\n' case "no rebuild" "during rebuild" ratio "rebuild meanwhile"
fg="$W/fg"
serve r "$fg" raid35 "$FG_SIZE" "" "$fg"-m{0,1,2,3,4}
fill "$fg.sock" r
k=0
fg_row() { # LABEL RW BS DEPTH JOBS
	local label=$1 rw=$2 bs=$3 depth=$4 jobs=$5
	local base during d0 d1 t0 t1 job fpid
	base=$(fio_case "$fg.sock" r "$rw" "$bs" "$depth" "$jobs")
	k=$((k + 1))
	"$BIN" fail-device r 1 --state-dir="$fg" >/dev/null
	truncate -s "$FG_SIZE" "$fg-new$k"
	"$BIN" add-device r "$fg-new$k" --state-dir="$fg" >/dev/null
	fio_case "$fg.sock" r "$rw" "$bs" "$depth" "$jobs" >"$W/fio.out" & fpid=$!
	# The rebuild's progress is sampled while fio runs: 1 s in (before, it
	# ran at full speed) and 1 s before the end (after, it catches up).
	sleep 1
	t0=$(date +%s.%N)
	read -r d0 < <(status "$fg" r job_done)
	sleep $((RUNTIME - 2))
	t1=$(date +%s.%N)
	read -r job d1 < <(status "$fg" r job_kind job_done)
	wait "$fpid"
	during=$(cat "$W/fio.out")
	python3 - "$label" "$base" "$during" "$d0" "$d1" "$job" "$t0" "$t1" <<'PY'
import sys
label, base, during, d0, d1, job = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
secs = float(sys.argv[8]) - float(sys.argv[7])
meanwhile = "%.1f MiB/s array" % ((d1 - d0) / secs / 1048576) if job == "recover" else "(rebuild ended)"
print("%-26s %8.0f MiB/s %10.0f MiB/s %8.2f %20s" % (label, base, during, during / base if base > 0 else 0, meanwhile))
PY
	wait_rebuild "$fg" r
	rm -f "$fg-m1" "$fg-new$((k - 1))"
}
fg_row "1M seq write qd8" write 1M 8 1
fg_row "1M seq read qd8" read 1M 8 1
fg_row "4k randread qd64 2 conn" randread 4k 64 2
fg_row "4k randwrite qd64 2 conn" randwrite 4k 64 2
