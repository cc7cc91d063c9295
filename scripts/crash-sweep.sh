#!/usr/bin/env bash
# kill -9 the mount while it writes, swaps and moves files and directories,
# then check that no closed file is lost. One round per seed:
#
#   1. a fresh quickstart (three local mirrors, scripts/quickstart.sh),
#      mounted with -o nominer;
#   2. scripts/crash-sweep.py work on the mount, killed with the mount
#      (kill -9) after 2-9 s (from the seed);
#   3. the published tree as the mirrors hold it, into published.txt;
#      mount again (recovery), `lode sync`, unmount, mount again;
#   4. scripts/crash-sweep.py check: every file's last closed content
#      must be somewhere in the tree.
#
#   scripts/crash-sweep.sh SEED...        (e.g. $(seq 1 10))
#
# Uses $LODE_BIN (default target/release/lode). A round that loses a file
# keeps its directory (under $SWEEP_DIR, default /tmp/lode-crash-sweep);
# the others are removed (kept too with SWEEP_KEEP=1). P_OVER, P_SWAP, P_DIR set the workload's weights
# (see crash-sweep.py). Exits 1 if any round lost a file.
#
# To trace a lost directory: LODE_LOG=warn,lode::fuse::tree=trace logs each
# directory move and each listing taken and sent (the subdirectories it
# names, kept ones marked) to the crashed mount's log, which survives the
# kill (it is written unbuffered) and is kept as crashed-mount.log in the
# round's directory; compare it with the round's published.txt.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
lode=$(realpath -m "${LODE_BIN:-$here/target/release/lode}")
base=${SWEEP_DIR:-/tmp/lode-crash-sweep}
[ $# -gt 0 ] || { echo "usage: $0 SEED..." >&2; exit 2; }
[ -x "$lode" ] || { echo "no lode binary at $lode (cargo build --release)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "needs python3" >&2; exit 2; }
mkdir -p "$base"
# Print the published tree under PATH (from the mirrors), one entry a line.
published() {
    local entry
    "$lode" ls "$1" | while IFS= read -r entry; do
        echo "$1 $entry"
        case $entry in
        d*) published "${1%/}/${entry##* }" ;;
        esac
    done || echo "$1 NOT LISTED (lode ls failed)"
}
failed=0
for seed in "$@"; do
    w=$base/round-$seed
    rm -rf "$w"
    mkdir -p "$w"
    export LODE_QUICKSTART=$w/qs LODE_HOME=$w/qs/home LODE_BIN=$lode
    mnt=$w/mnt
    running() { pgrep -f "[ ]mount $mnt --foreground" >/dev/null; }
    if ! "$here/scripts/quickstart.sh" "$mnt" >"$w/quickstart.log" 2>&1; then
        echo "seed $seed: quickstart failed (see $w/quickstart.log)"
        failed=1
        continue
    fi
    fusermount3 -u "$mnt"
    while running; do sleep 0.1; done
    "$lode" mount "$mnt" -o nominer >/dev/null
    python3 "$here/scripts/crash-sweep.py" work "$mnt" "$w/log" "$seed" 2>"$w/work.err" &
    worker=$!
    sleep "$(python3 -c "import random; random.seed($seed); print(round(random.uniform(2, 9), 2))")"
    pkill -9 -f "[ ]mount $mnt --foreground"
    kill -9 "$worker" 2>/dev/null
    wait "$worker" 2>/dev/null
    fusermount3 -u -z "$mnt" 2>/dev/null
    # The crashed mount's log (the next mounts rotate it away), and what
    # the mirrors hold at the crash, before recovery changes it.
    cp "$LODE_HOME/data/mount.log" "$w/crashed-mount.log" 2>/dev/null
    published "/" >"$w/published.txt" 2>&1
    "$lode" mount "$mnt" -o nominer >/dev/null
    timeout 300 "$lode" sync >/dev/null || echo "seed $seed: lode sync failed"
    fusermount3 -u "$mnt"
    while running; do sleep 0.1; done
    "$lode" mount "$mnt" -o nominer >/dev/null
    said=$(python3 "$here/scripts/crash-sweep.py" check "$mnt" "$w/log")
    rc=$?
    # With the trace on: how many listings went up short of `happy`.
    partly=$(grep -c 'sent=Partly' "$w/crashed-mount.log" 2>/dev/null)
    echo "seed $seed: $said${partly:+ (listings sent partly: $partly)}"
    "$here/scripts/quickstart.sh" --stop "$mnt" >/dev/null 2>&1
    if [ $rc != 0 ]; then failed=1; elif [ -z "${SWEEP_KEEP:-}" ]; then rm -rf "$w"; fi
done
exit $failed
