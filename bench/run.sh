#!/usr/bin/env bash
# make bench: ddraid against nbdkit (file plugin) and qemu-nbd, measured with
# fio --ioengine=nbd in the same run, on tmpfs-backed files. Prints one row
# per case with the ratio ours/nbdkit (each server's median of BENCH_REPEAT
# interleaved runs). Usage: bench/run.sh [seconds-per-case]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${1:-${BENCH_RUNTIME:-8}}
BIN=${DDRAID:-bin/ddraid}
W=$(mktemp -d /dev/shm/ddraid-bench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT

SIZE=1G
wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }

# Peers on one plain tmpfs file each.
truncate -s $SIZE "$W/nbdkit.img" "$W/nbdkit-delay.img" "$W/qemu.img"
nbdkit -f -U "$W/nbdkit.sock" -e bench file file="$W/nbdkit.img" & PIDS+=($!)
nbdkit -f -U "$W/nbdkit-delay.sock" -e bench --filter=delay file file="$W/nbdkit-delay.img" rdelay=1ms wdelay=1ms & PIDS+=($!)
qemu-nbd -t -f raw -k "$W/qemu.sock" -x bench -e 8 --aio=threads "$W/qemu.img" & PIDS+=($!)

# ddraid: a 1-member linear array and a 5-member raid35, on tmpfs files.
serve() { # name level sock extra... members...
	local name=$1 level=$2 sock=$3; shift 3
	local extra=() members=()
	for a in "$@"; do case $a in --*) extra+=("$a");; *) members+=("$a");; esac; done
	"$BIN" create bench --state-dir="$W/$name" --level="$level" --size=$SIZE "${members[@]}" >/dev/null
	"$BIN" serve bench --state-dir="$W/$name" --listen="unix:$sock" "${extra[@]}" >/dev/null 2>"$W/$name.log" & PIDS+=($!)
}
serve linear linear "$W/linear.sock" "$W/linear-m0"
serve linear-delay linear "$W/linear-delay.sock" --member-delay=1ms "$W/linear-delay-m0"
serve raid35 raid35 "$W/raid35.sock" "$W"/raid35-m{0,1,2,3,4}
serve raid35-delay raid35 "$W/raid35-delay.sock" --member-delay=1ms "$W"/raid35-delay-m{0,1,2,3,4}
for s in nbdkit nbdkit-delay qemu linear linear-delay raid35 raid35-delay; do wait_sock "$W/$s.sock"; done

# fio_case SOCK RW BS DEPTH JOBS -> prints IOPS and MiB/s
fio_case() {
	local sock=$1 rw=$2 bs=$3 depth=$4 jobs=$5
	fio --name=b --ioengine=nbd --uri="nbd+unix:///bench?socket=$sock" --rw="$rw" --bs="$bs" \
		--iodepth="$depth" --numjobs="$jobs" --size=512M --time_based --runtime="$RUNTIME" \
		--group_reporting --output-format=json 2>/dev/null | sed -n "/^{/,\$p" |
	python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; r=j["read"]; w=j["write"]; print("%.0f %.1f" % (r["iops"]+w["iops"], (r["bw_bytes"]+w["bw_bytes"])/1048576))'
}

# Fill the images so reads hit data.
for s in nbdkit qemu linear raid35; do
	fio --name=fill --ioengine=nbd --uri="nbd+unix:///bench?socket=$W/$s.sock" --rw=write --bs=1M --iodepth=8 --size=512M >/dev/null 2>&1
done

# The last two columns are issue 3's goals: linear >= 1.0 x nbdkit on every
# row, raid35 >= 0.8 x nbdkit on the sequential rows ("-": no goal).
printf '%-34s %14s %14s %14s %14s %8s %8s %6s %6s\n' case nbdkit qemu-nbd "ddraid linear" "ddraid raid35" linear/k raid35/k "lin>=1" "r35>=.8"
# Each row runs every server BENCH_REPEAT times (default 3), the servers
# taking turns in an order that alternates between rounds, and reports each
# server's median: on a shared machine the load changes from one case to the
# next, and taking turns spreads that over all servers.
REPEAT=${BENCH_REPEAT:-3}
# BENCH_ONLY, a bash regular expression, keeps only the rows whose label
# matches it.
row() { # label unit rw bs depth jobs [delay]
	local label=$1 unit=$2 rw=$3 bs=$4 depth=$5 jobs=$6 delay=${7:-}
	[[ -z "${BENCH_ONLY:-}" || "$label" =~ $BENCH_ONLY ]] || return 0
	local col=1; [ "$unit" = MiB/s ] && col=2
	local socks
	if [ -n "$delay" ]; then
		socks=("$W/nbdkit-delay.sock" "" "$W/linear-delay.sock" "$W/raid35-delay.sock")
	else
		socks=("$W/nbdkit.sock" "$W/qemu.sock" "$W/linear.sock" "$W/raid35.sock")
	fi
	local vals=("" "" "" "") order i rep v
	for rep in $(seq "$REPEAT"); do
		if [ $((rep % 2)) = 1 ]; then order="0 1 2 3"; else order="3 2 1 0"; fi
		for i in $order; do
			[ -z "${socks[$i]}" ] && continue
			v=$(fio_case "${socks[$i]}" "$rw" "$bs" "$depth" "$jobs" | cut -d' ' -f$col)
			vals[$i]="${vals[$i]} $v"
		done
	done
	python3 - "$label" "$unit" "${vals[@]}" <<'PY'
import statistics, sys
label, unit = sys.argv[1:3]
med = [statistics.median(float(x) for x in v.split()) if v.strip() else None for v in sys.argv[3:7]]
k, q, l, r = med
f = lambda v: "-" if v is None else ("%.0f %s" % (v, "IOPS" if unit == "IOPS" else "MiB/s"))
ratio = lambda v: "%.2f" % (v / k) if k else "-"
verdict = lambda v, goal: "-" if goal is None or v is None or not k else ("PASS" if v / k >= goal else "MISS")
print("%-34s %14s %14s %14s %14s %8s %8s %6s %6s" % (label, f(k), f(q), f(l), f(r), ratio(l), ratio(r),
    verdict(l, 1.0), verdict(r, 0.8 if label.startswith("1M seq") else None)))
PY
}
row "4k randread qd64 1 conn" IOPS randread 4k 64 1
row "4k randread qd64 2 conn" IOPS randread 4k 64 2
row "4k randwrite qd64 1 conn" IOPS randwrite 4k 64 1
row "4k randwrite qd64 2 conn" IOPS randwrite 4k 64 2
row "1M seq read qd8" MiB/s read 1M 8 1
row "1M seq write qd8" MiB/s write 1M 8 1
row "4k randread qd64 2 conn, 1ms delay" IOPS randread 4k 64 2 delay
row "4k randwrite qd64 2 conn, 1ms delay" IOPS randwrite 4k 64 2 delay
