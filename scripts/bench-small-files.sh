#!/usr/bin/env bash
# Many small files: time `lode put DIR` of a generated tree against three
# local mirrors, and, as the peer on the same disk in the same run, the
# floor that durability alone sets: the same files written by `cp -r` and
# flushed with `sync -f`.
#
#   scripts/bench-small-files.sh             2,000 files, 200 B-4 KiB, in 20 dirs
#   FILES=500 DIRS=5 scripts/bench-small-files.sh
#   STRACE=1 scripts/bench-small-files.sh    also `strace -c -f` mirror 1
#   BENCH_TMP=/dev/shm scripts/bench-small-files.sh   mirrors on tmpfs (fsync free)
#
# Everything lives in a temp dir (kept with KEEP=1) and every process the
# script starts is stopped on exit. LODE_BIN picks the binary (default: a
# release build in ${CARGO_TARGET_DIR:-target}); MIRROR_BIN, if set, runs
# the mirrors from another binary (to tell client and mirror changes apart).
set -euo pipefail
cd "$(dirname "$0")/.."
files=${FILES:-2000}
dirs=${DIRS:-20}
seed=${SEED:-1}
if [ -z "${LODE_BIN:-}" ]; then
    cargo build --release --quiet
    LODE_BIN=${CARGO_TARGET_DIR:-target}/release/lode
fi
lode=$(realpath "$LODE_BIN")
mirror_bin=$(realpath "${MIRROR_BIN:-$LODE_BIN}")

work=$(mktemp -d "${BENCH_TMP:-/tmp}/lode-bench-small.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT

# The tree: $files files of 200 B-4 KiB of seeded random bytes in $dirs dirs.
python3 - "$work/tree" "$files" "$dirs" "$seed" <<'EOF'
import os, random, sys
root, files, dirs, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
for d in range(dirs):
    os.makedirs(f"{root}/d{d:02}")
for i in range(files):
    with open(f"{root}/d{i % dirs:02}/f{i:05}", "wb") as f:
        f.write(rng.randbytes(rng.randint(200, 4096)))
EOF
bytes=$(find "$work/tree" -type f -printf '%s\n' | awk '{s += $1} END {print s}')

export LODE_HOME="$work/home"
for i in 1 2 3; do
    "$mirror_bin" mirror serve --data "$work/mirror$i" --listen 127.0.0.1:0 \
        >"$work/mirror$i.log" 2>&1 &
    pids+=($!)
done
for i in 1 2 3; do
    for _ in $(seq 100); do grep -q "listening on" "$work/mirror$i.log" && break; sleep 0.1; done
    grep -q "listening on" "$work/mirror$i.log" || { cat "$work/mirror$i.log" >&2; exit 1; }
done
"$lode" init >/dev/null
for i in 1 2 3; do
    "$lode" mirrors add "$(grep -m1 "mirror listening on" "$work/mirror$i.log" | awk '{print $NF}')" >/dev/null
done

if [ -n "${STRACE:-}" ]; then
    strace -c -f -o "$work/strace-mirror1.txt" -p "${pids[0]}" &
    tracer=$!
    sleep 0.5
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "tree: $files files in $dirs dirs, $bytes bytes"
# User and system CPU seconds the mirrors have used so far, summed.
mirror_cpu() {
    for p in "${pids[@]}"; do cat "/proc/$p/stat"; done |
        awk -v t="$(getconf CLK_TCK)" '{u += $14; s += $15} END {printf "%.2f %.2f", u / t, s / t}'
}
before=$(mirror_cpu)
start=$(date +%s.%N)
/usr/bin/time -f "%U %S" -o "$work/client.time" "$lode" put "$work/tree" >/dev/null
end=$(date +%s.%N)
after=$(mirror_cpu)

if [ -n "${STRACE:-}" ]; then
    kill -INT "$tracer"
    wait "$tracer" 2>/dev/null || true
    echo "== strace -c -f of mirror 1 during the put"
    head -25 "$work/strace-mirror1.txt"
fi

# The peer: the same bytes copied and made durable on the same disk.
start_peer=$(date +%s.%N)
cp -r "$work/tree" "$work/copy"
sync -f "$work/copy"
end_peer=$(date +%s.%N)

awk -v s="$start" -v e="$end" -v ps="$start_peer" -v pe="$end_peer" -v n="$files" 'BEGIN {
    t = e - s; p = pe - ps
    printf "lode put:        %7.2f s  %8.1f files/s  %6.2f ms/file\n", t, n / t, 1000 * t / n
    printf "cp -r + sync -f: %7.2f s  %8.1f files/s\n", p, n / p
    printf "ratio lode/cp:   %.4f\n", p / t
}'
read -r cu cs <"$work/client.time"
read -r bu bs <<<"$before"
read -r au as <<<"$after"
awk -v cu="$cu" -v cs="$cs" -v mu="$(awk -v a="$au" -v b="$bu" 'BEGIN {print a - b}')" \
    -v ms="$(awk -v a="$as" -v b="$bs" 'BEGIN {print a - b}')" \
    -v w="$(awk -v s="$start" -v e="$end" 'BEGIN {print e - s}')" -v n="$(nproc)" 'BEGIN {
    printf "cpu (user + sys): client %.2f + %.2f s, mirrors %.2f + %.2f s, of %.1f core-seconds\n", cu, cs, mu, ms, w * n
}'
