#!/usr/bin/env bash
# make bench-cluster (also part of make bench): cluster mode, issue 7's
# performance goals, measured on one machine with three agents on loopback
# addresses (127.0.0.41-43), mutual TLS and an encrypted gossip key, as in
# the drills (tests/drill_cluster_test.go, docs/drills.md):
#
#   n0  hosts members d0 d1        serves the array (writer)
#   n1  hosts no disk              serves the array (writer; the victim)
#   n2  hosts members d2 d3 d4     serves nothing
#
# One raid35 array over the five members (created on n0, --assume-clean,
# 4 MiB bitmap regions: the create default), files on tmpfs.
#
# 1. Failover, once per gossip tuning in BENCH_CLUSTER_TUNINGS (default
#    "flags fast-local default"):
#    - flags: --gossip-probe-interval=200ms --gossip-probe-timeout=100ms
#      --gossip-suspicion-mult=2
#    - fast-local: the hidden --gossip-tuning=fast-local (serf's test
#      settings, the drills' choice)
#    - default: the shipped 1s / 500ms / 4.
#    n0, the survivor, runs two writers (bench/clusterprobe write), each
#    4 KiB at queue depth 1, one every 2 ms, timestamping completions: one
#    in its own range [0, 256M), one in n1's range (a block in every
#    region in turn, so it meets the takeover's resync windows). n1 writes
#    BENCH_CLUSTER_DIRTY (1G) over [1G, 2G), then one block in every region
#    of it, so its slot's marks cover the whole range whatever the served
#    arrays' clear delay (the agent's --serve-clear-delay, default 5 s), and goes on
#    writing; then n1's agent gets kill -9. Measured:
#    (a) per survivor writer, the longest gap between two completions
#        after the kill: how long its IO stalled (goal <= 5 s, no failed
#        write);
#    (b) from the kill to the end of n0's takeover of n1's slot (n0's
#        GET /v1/arrays every 10 ms: the takeover shows, then ends with
#        more regions resynced), the bytes resynced (must cover the dirty
#        set) and the rate, from the takeover showing to its end (fencing
#        and reading the marks included). No goal: reported.
# 2. Two writers: with --serve-member-delay=BENCH_CLUSTER_DELAY (default
#    10ms) on both writers every member request of the served array takes
#    at least that long, so a writer with BENCH_CLUSTER_QD (8) writes of
#    64 KiB in flight is bound by latency, not by the two shared cores. One
#    writer writes 2 x BENCH_CLUSTER_HALF (128M) through n0 alone; then n0
#    and n1 each write their own half (BENCH_CLUSTER_HALF) at the same
#    moment through their own front ends. Aggregate = bytes / (last end -
#    first start). BENCH_REPEAT rounds (default 3), the order alternating;
#    medians. Goal: two writers >= 1.6 x one.
#
# Prints a table (case, value, goal, PASS/MISS). Needs python3, go and
# truncate, and bin/ddraid (make build).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DDRAID:-bin/ddraid}
PROBE=bin/clusterprobe
TUNINGS=${BENCH_CLUSTER_TUNINGS-flags fast-local default} # empty: no failover case
DIRTY=${BENCH_CLUSTER_DIRTY:-1G}
DELAY=${BENCH_CLUSTER_DELAY:-10ms}
QD=${BENCH_CLUSTER_QD:-8}
HALF=${BENCH_CLUSTER_HALF:-128M}
REPEAT=${BENCH_REPEAT:-3}
MEMBER=${BENCH_CLUSTER_MEMBER:-768M} # x4 data members: a 3 GiB array
IPS=(127.0.0.41 127.0.0.42 127.0.0.43)

for t in python3 go truncate; do
	command -v "$t" >/dev/null 2>&1 || { echo "cluster.sh: $t is missing (install it; make test-deps has the rest)" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "cluster.sh: $BIN is missing: run make build first" >&2; exit 2; }
CGO_ENABLED=0 nice -n 10 go build -o "$PROBE" ./bench/clusterprobe

W=$(mktemp -d /dev/shm/ddraid-cluster.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "cluster.sh: $*" >&2; exit 1; }
now_ns() { date +%s%N; }
bytes() { python3 -c "import sys; s=sys.argv[1]; m={'k':1<<10,'K':1<<10,'M':1<<20,'G':1<<30}; print(int(s[:-1])*m[s[-1]] if s[-1] in m else int(s))" "$1"; }
free_port() { # IP: a port free for TCP and UDP on IP
	python3 - "$1" <<'PY'
import socket, sys
while True:
    t = socket.socket(); t.bind((sys.argv[1], 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind((sys.argv[1], p))
    except OSError:
        t.close(); continue
    print(p); t.close(); u.close(); break
PY
}
# wait_for SECONDS WHAT CMD...: run CMD every 0.1 s until it succeeds.
wait_for() {
	local secs=$1 what=$2; shift 2
	local end=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what"
		sleep 0.1
	done
}
# json FILE EXPR: a field of the last JSON line of FILE, python expression on j.
json() { python3 -c "import json,sys; j=json.loads([l for l in open(sys.argv[1]) if l.startswith('{')][-1]); print($2)" "$1"; }

# start_cluster DIR "AGENT FLAGS" "WRITER FLAGS": the three agents and the
# array; returns once both writers serve it. Sets AGENT_PID[], CTL[], SOCK[].
start_cluster() {
	local dir=$1 agent_flags=$2 writer_flags=$3
	mkdir -p "$dir/pki"
	"$BIN" tls init-ca --dir="$dir/pki" >/dev/null
	for i in 0 1 2; do "$BIN" tls issue --dir="$dir/pki" --name="n$i" --ip="${IPS[$i]}" >/dev/null; done
	"$BIN" cluster keygen >"$dir/gossip.key"
	chmod 600 "$dir/gossip.key"
	local gossip=() members=()
	AGENT_PID=() CTL=() SOCK=()
	for i in 0 1 2; do
		local ip=${IPS[$i]} mem gp rp
		mem=$(free_port "$ip") gp=$(free_port "$ip") rp=$(free_port "$ip")
		gossip+=("$ip:$gp")
		local args=(agent --state-dir="$dir/n$i" --listen-member="$ip:$mem" --nodes=n0,n1,n2 --node-name="n$i"
			--bind="$ip:$gp" --rpc="$ip:$rp" --encrypt-key-file="$dir/gossip.key"
			--tls-cert="$dir/pki/n$i.crt" --tls-key="$dir/pki/n$i.key" --tls-ca="$dir/pki/ca.crt")
		# shellcheck disable=SC2206 # flags are words
		args+=($agent_flags)
		[ "$i" = 0 ] || args+=(--join="${gossip[0]}")
		local disks=()
		case $i in 0) disks=(d0 d1) ;; 2) disks=(d2 d3 d4) ;; esac
		for d in "${disks[@]}"; do
			truncate -s "$MEMBER" "$dir/$d"
			args+=(--host-disk="$dir/$d")
			members+=("$ip:$mem:$dir/$d")
		done
		SOCK+=("")
		if [ "$i" != 2 ]; then
			SOCK[i]=$dir/n$i.nbd
			# shellcheck disable=SC2206
			args+=(--serve="data=unix:$dir/n$i.nbd" $writer_flags)
		fi
		CTL+=("$dir/n$i/agent/agent.sock")
		"$BIN" "${args[@]}" >"$dir/n$i.log" 2>&1 & PIDS+=($!) AGENT_PID+=($!)
		wait_for 30 "agent n$i" grep -q '^agent control socket' "$dir/n$i.log"
	done
	# members in role order: d0 d1 (n0), d2 d3 d4 (n2)
	wait_for 60 "the cluster to form" sh -c "'$BIN' cluster status --control='${CTL[0]}' | grep -q 'voters alive: 3 of 3'"
	"$BIN" create data --state-dir="$dir/n0" --level=raid35 --assume-clean \
		--member-tls-cert="$dir/pki/n0.crt" --member-tls-key="$dir/pki/n0.key" --member-tls-ca="$dir/pki/ca.crt" \
		"${members[@]}" >"$dir/create.log" 2>&1 || { cat "$dir/create.log" >&2; die "create failed"; }
	for i in 0 1; do
		wait_for 120 "n$i to serve the array" sh -c "'$BIN' cluster arrays --control='${CTL[$i]}' | grep -q '^array data: serving'"
	done
}

# stop_cluster: kill -9 every agent still running (the next case starts afresh).
stop_cluster() {
	for p in "${AGENT_PID[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

ROWS=()
row() { ROWS+=("$(printf '%-44s %16s %12s  %s' "$1" "$2" "$3" "$4")"); }
passmiss() { python3 -c "import sys; print('PASS' if $1 else 'MISS')"; }

# failover TUNING: case 1 with that failure detection.
failover() {
	local tuning=$1 dir="$W/failover-$1" flags
	case $tuning in
	flags) flags="--gossip-probe-interval=200ms --gossip-probe-timeout=100ms --gossip-suspicion-mult=2" ;;
	fast-local) flags="--gossip-tuning=fast-local" ;;
	default) flags="" ;;
	*) die "unknown tuning $tuning (flags, fast-local, default)" ;;
	esac
	mkdir -p "$dir"
	start_cluster "$dir" "$flags" ""
	local dirty off
	dirty=$(bytes "$DIRTY") off=$((1 << 30))
	# n0's takeover watch, then the survivor's writes, then the victim's fill.
	"$PROBE" watch -control="${CTL[0]}" -timeout=10m >"$dir/watch.out" 2>&1 & PIDS+=($!)
	local watch=$!
	wait_for 30 "the watch" grep -q '^ready' "$dir/watch.out"
	"$PROBE" write -sock="${SOCK[0]}" -off=0 -len=256M -interval=2ms -out="$dir/times-own" >"$dir/own.out" 2>&1 & PIDS+=($!)
	local own=$!
	"$PROBE" write -sock="${SOCK[0]}" -off="$off" -len="$dirty" -stride=4M -interval=2ms -out="$dir/times-dead" >"$dir/dead.out" 2>&1 & PIDS+=($!)
	local dead=$!
	"$PROBE" fill -sock="${SOCK[1]}" -off="$off" -len="$dirty" -bs=1M -qd=8 >"$dir/fill.out" 2>&1 & PIDS+=($!)
	local filler=$!
	wait_for 600 "n1's fill of $DIRTY" sh -c "grep -q '^marked' '$dir/fill.out' || ! kill -0 $filler"
	grep -q '^marked' "$dir/fill.out" || { cat "$dir/fill.out" >&2; die "n1's fill failed"; }
	sleep 0.5 # n1 and n0 both writing when the kill lands
	local killed
	killed=$(now_ns)
	kill -9 "${AGENT_PID[1]}"
	wait "${AGENT_PID[1]}" 2>/dev/null || true
	wait "$watch" || { cat "$dir/watch.out" >&2; die "no takeover seen on n0"; }
	wait "$filler" 2>/dev/null || true
	sleep 2 # survivor writes after the takeover too
	local stopped
	stopped=$(now_ns)
	kill -TERM "$own" "$dead" 2>/dev/null || true # one that gave up has exited; its figures say so
	wait "$own" || { cat "$dir/own.out" >&2; die "the survivor's writer failed"; }
	wait "$dead" || { cat "$dir/dead.out" >&2; die "the survivor's writer into n1's range failed"; }
	stop_cluster
	python3 - "$dir" "$killed" "$stopped" "$tuning" "$dirty" <<'PY' >"$dir/result"
import json, sys
d, killed, stopped, tuning, dirty = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
def last(p):
    return json.loads([l for l in open(p) if l.startswith("{")][-1])
def stall(name):
    """The longest gap between two completions ending after the kill (a
    stall that never ended counts up to the stop), the longest before it,
    and the writer's errors."""
    w = last("%s/%s.out" % (d, name))
    times = [int(x) for x in open("%s/times-%s" % (d, name))]
    before = [b - a for a, b in zip(times, times[1:]) if b < killed]
    after = [b - a for a, b in zip(times, times[1:]) if b >= killed]
    after.append(stopped - (times[-1] if times else killed))
    return {"gap_s": max(after) / 1e9, "gap_before_s": max(before, default=0) / 1e9,
            "writes": w["writes"], "errors": w["errors"], "first_error": w["first_error"]}
fill, wat = last(d + "/fill.out"), last(d + "/watch.out")
print(json.dumps({"tuning": tuning, "own": stall("own"), "dead": stall("dead"),
    "fill_mib_s": fill["mib_s"], "fill_s": fill["fill_s"], "dirty": dirty,
    "detect_s": (wat["takeover_seen_ns"] - killed) / 1e9, "done_s": (wat["done_ns"] - killed) / 1e9,
    "resync_s": (wat["done_ns"] - wat["takeover_seen_ns"]) / 1e9, "regions": wat["regions"], "bytes": wat["bytes"],
    "rate_mib_s": wat["bytes"] / 1048576 / max((wat["done_ns"] - wat["takeover_seen_ns"]) / 1e9, 1e-3)}))
PY
	local r=$dir/result
	echo "failover ($tuning): $(cat "$r")"
	local gap errs
	gap=$(json "$r" "'%.3f' % j['own']['gap_s']") errs=$(json "$r" "j['own']['errors']")
	row "survivor IO stall at kill -9 ($tuning)" "$gap s" "<= 5 s" "$(passmiss "$gap <= 5 and $errs == 0")"
	gap=$(json "$r" "'%.3f' % j['dead']['gap_s']") errs=$(json "$r" "j['dead']['errors']")
	row "  same, writes into n1's dirty range" "$gap s" "<= 5 s" "$(passmiss "$gap <= 5 and $errs == 0")"
	row "  longest gap before the kill (own, n1's)" "$(json "$r" "'%.3f/%.3f s' % (j['own']['gap_before_s'], j['dead']['gap_before_s'])")" "-" "report"
	row "  takeover seen after kill ($tuning)" "$(json "$r" "'%.3f s' % j['detect_s']")" "-" "report"
	row "  kill to takeover resync done ($tuning)" "$(json "$r" "'%.2f s' % j['done_s']")" "-" "report"
	row "  resynced ($tuning)" "$(json "$r" "'%.0f MiB' % (j['bytes'] / 1048576)")" ">= $DIRTY" \
		"$(passmiss "$(json "$r" "j['bytes']") >= $dirty")"
	row "  resync rate ($tuning)" "$(json "$r" "'%.0f MiB/s' % j['rate_mib_s']")" "-" "report"
}

# throughput: case 2.
throughput() {
	local dir="$W/writers" half_b
	mkdir -p "$dir"
	half_b=$(bytes "$HALF")
	start_cluster "$dir" "--gossip-tuning=fast-local" "--serve-member-delay=$DELAY"
	local one=() two=() round
	# warm-up: one pass over both halves marks the regions once
	"$PROBE" bulk -sock="${SOCK[0]}" -off=0 -len=$((2 * half_b)) -qd="$QD" >/dev/null
	run_one() {
		"$PROBE" bulk -sock="${SOCK[0]}" -off=0 -len=$((2 * half_b)) -qd="$QD" >"$dir/one.out" ||
			die "one writer failed"
		json "$dir/one.out" "j['bytes'] / ((j['end_ns'] - j['start_ns']) / 1e9) / 1048576"
	}
	run_two() {
		local at p0 p1
		at=$(($(now_ns) + 1500000000)) # both connected, then they start together
		"$PROBE" bulk -sock="${SOCK[0]}" -off=0 -len="$half_b" -qd="$QD" -start-at="$at" >"$dir/two0.out" & p0=$!
		"$PROBE" bulk -sock="${SOCK[1]}" -off="$half_b" -len="$half_b" -qd="$QD" -start-at="$at" >"$dir/two1.out" & p1=$!
		wait "$p0" || die "writer n0 failed"
		wait "$p1" || die "writer n1 failed"
		python3 - "$dir/two0.out" "$dir/two1.out" <<'PY'
import json, sys
a, b = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:3])
span = (max(a["end_ns"], b["end_ns"]) - min(a["start_ns"], b["start_ns"])) / 1e9
print((a["bytes"] + b["bytes"]) / span / 1048576)
PY
	}
	for round in $(seq "$REPEAT"); do
		if [ $((round % 2)) = 1 ]; then
			one+=("$(run_one)") two+=("$(run_two)")
		else
			two+=("$(run_two)") one+=("$(run_one)")
		fi
		echo "two writers, round $round: one ${one[-1]} MiB/s, two ${two[-1]} MiB/s"
	done
	stop_cluster
	local m1 m2 ratio
	m1=$(printf '%s\n' "${one[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
	m2=$(printf '%s\n' "${two[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
	ratio=$(python3 -c "print('%.2f' % ($m2 / $m1))")
	# the model's bound: QD writes of 64 KiB per member latency
	local bound
	bound=$(python3 -c "import re,sys; v,u=re.fullmatch(r'([0-9.]+)(us|ms|s)', sys.argv[1]).groups(); \
print('%.0f' % ($QD * 64 / 1024 / (float(v) * {'us': 1e-6, 'ms': 1e-3, 's': 1}[u])))" "$DELAY")
	row "one writer, qd$QD 64k, member delay $DELAY" "$(printf '%.1f MiB/s' "$m1")" "<= $bound MiB/s" "bound"
	row "two writers, disjoint halves, aggregate" "$(printf '%.1f MiB/s' "$m2")" "-" "report"
	row "two writers / one writer" "${ratio}x" ">= 1.6x" "$(passmiss "$ratio >= 1.6")"
}

echo "ddraid cluster bench: 3 agents on ${IPS[*]}, raid35 x5 ($MEMBER tmpfs members, 4 MiB regions), load $(cut -d' ' -f1-3 /proc/loadavg)"
for t in $TUNINGS; do failover "$t"; done
throughput
echo
printf '%-44s %16s %12s  %s\n' case value goal result
printf '%s\n' "${ROWS[@]}"
