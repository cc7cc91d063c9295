#!/usr/bin/env bash
# Run the pipeline benchmarks (benches/pipeline.rs) and print a summary:
# throughput of each stage in MiB/s, and the ratio of sealing a chunk to
# plain SHA-256 measured in the same run (the figure to compare across
# machines; see docs/PERFORMANCE.md).
#
# Usage: scripts/bench-pipeline.sh [extra criterion args, e.g. a filter]
# Builds in release mode; takes a few minutes on a 2-core machine.
set -euo pipefail

cd "$(dirname "$0")/.."

log="$(mktemp "${TMPDIR:-/tmp}/lode-bench-pipeline.XXXXXX")"
trap 'rm -f "$log"' EXIT

echo "== machine"
echo "cores:  $(nproc)"
echo "cpu:    $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
if grep -qw sha_ni /proc/cpuinfo; then sha_ni=yes; else sha_ni=no; fi
echo "sha_ni: $sha_ni"
echo "rustc:  $(rustc --version)"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) before the run"
echo

echo "== cargo bench --bench pipeline $*"
cargo bench --bench pipeline -- "$@" 2>&1 | tee "$log"
echo

echo "== summary (load $(cut -d' ' -f1-3 /proc/loadavg) after the run)"
# Criterion prints the benchmark id on its own line or before "time:", and
# the throughput as "thrpt: [low mid high]" with a unit on each figure. Keep
# the middle estimate, converted to MiB/s.
awk '
    function mib(value, unit) {
        if (unit == "B/s")   return value / 1048576
        if (unit == "KiB/s") return value / 1024
        if (unit == "MiB/s") return value
        if (unit == "GiB/s") return value * 1024
        if (unit == "TiB/s") return value * 1048576
        return -1
    }
    $1 ~ /^pipeline\// { name = $1; sub(/^pipeline\//, "", name) }
    /thrpt:/ && !/%/ {  # "change:" blocks give percentages; skip them
        line = $0
        sub(/.*\[/, "", line); sub(/\].*/, "", line)
        split(line, f, " ")
        rate[name] = mib(f[3], f[4])
        order[++n] = name
    }
    END {
        printf "%-28s %12s\n", "benchmark", "MiB/s"
        for (i = 1; i <= n; i++) printf "%-28s %12.1f\n", order[i], rate[order[i]]
        if (rate["sha256"] > 0 && ("seal_chunk_2of3" in rate))
            printf "\nseal_chunk_2of3 / sha256 = %.3f\n", rate["seal_chunk_2of3"] / rate["sha256"]
    }
' "$log"
