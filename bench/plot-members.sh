#!/usr/bin/env bash
# Plot the results of bench/members.sh (its BENCH_RESULTS file) as a PNG:
# left, 1M sequential throughput against the member count with the
# (M-1) x one-disk and M x one-disk lines; right, 4k random IOPS as a ratio
# to one disk (each row against its own baseline median) with the one-disk
# and M/(M-1) lines. Needs gnuplot (Debian package gnuplot-nox; installed with
# apt-get when missing and running as root).
# Usage: bench/plot-members.sh RESULTS.tsv OUT.png
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 RESULTS.tsv OUT.png" >&2; exit 2; }
in=$1 out=$2
if ! command -v gnuplot >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		apt-get install -y --no-install-recommends gnuplot-nox >/dev/null
	else
		echo "plot-members.sh: gnuplot is not installed (apt-get install gnuplot-nox)" >&2
		exit 2
	fi
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# One data file per series, "members value" lines; the limit lines use the
# one-disk medians of the sequential write and read rows.
python3 - "$in" "$T" <<'PY'
import csv, sys, collections
src, out = sys.argv[1:3]
series = collections.defaultdict(list)
one = {}
for r in csv.DictReader(open(src), delimiter="\t"):
    m, layout, case = int(r["members"]), r["parity"], r["case"]
    series[(case, layout)].append((m, float(r["array"]), float(r["one_disk"])))
    if case.startswith("1M seq"):
        one.setdefault(m, []).append(float(r["one_disk"]))
def write(name, rows):
    with open("%s/%s" % (out, name), "w") as f:
        for m, v in sorted(rows):
            f.write("%d %.2f\n" % (m, v))
for (case, layout), rows in series.items():
    key = case.replace(" ", "_") + "--" + layout.replace(":", "-")
    write(key, [(m, v) for m, v, _ in rows])
    write(key + ".ratio", [(m, v / o) for m, v, o in rows])
disk = {m: sum(v) / len(v) for m, v in one.items()}
write("limit-m1", [(m, (m - 1) * d) for m, d in disk.items()])
write("limit-m", [(m, m * d) for m, d in disk.items()])
PY

# label FILE: the series name of a data file ("1M seq read, rotating-256").
label() { local n; n=$(basename "$1" .ratio); n=${n//_/ }; echo "${n/--/, }"; }
plots=() rplots=() pt=4
for f in "$T"/1M_seq_*--*; do
	case $f in *.ratio) continue;; esac
	plots+=("'$f' using 1:2 with linespoints lw 1 pt $pt ps 1.6 title '$(label "$f")'")
	pt=$((pt + 2))
done
pt=4
for f in "$T"/4k_rand*--*.ratio; do
	rplots+=("'$f' using 1:2 with linespoints lw 1 pt $pt ps 1.6 title '$(label "$f")'")
	pt=$((pt + 2))
done

join() { local IFS=,; echo "$*"; }
gnuplot <<EOF
set terminal pngcairo size 1200,500 font "sans,10"
set output '$out'
set multiplot layout 1,2 title "ddraid raid35 over simulated slow disks (nbdkit noparallel + delay + rate), fio 1M / 4k at iodepth 32"
set grid
set key top left
set xrange [2:10]
set xtics (3, 5, 9)
set xlabel "members M"
set ylabel "MiB/s"
set yrange [0:*]
set title "1M sequential throughput (one disk: the baseline's median)"
plot '$T/limit-m1' using 1:2 with lines lw 6 lc rgb "#c0c0c0" title "(M-1) x one disk", \
     '$T/limit-m' using 1:2 with lines lw 6 lc rgb "#f0c8a0" title "M x one disk", \
     $(join "${plots[@]}")
set title "4k random IOPS, ratio to one disk"
set ylabel "array / one disk"
set yrange [0:2.2]
set key bottom right
plot 1 with lines lw 6 lc rgb "#c0c0c0" title "one disk", \
     x/(x-1) with lines lw 6 lc rgb "#f0c8a0" title "M/(M-1): reads with every member at work", \
     $(join "${rplots[@]}")
unset multiplot
EOF
echo "wrote $out"
