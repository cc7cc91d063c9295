#!/usr/bin/env bash
# From a built lode to a running mount: three local mirrors (each with its
# built-in Stratum pool), an identity that stores 2-of-3 across them, and
# the mount. Safe to run again: it reuses what is already running.
#
#   scripts/quickstart.sh [MOUNTPOINT]     (default ./lode-mnt)
#   scripts/quickstart.sh --stop [MOUNTPOINT]
#
# State lives in $LODE_QUICKSTART (default ./lode-quickstart).
set -euo pipefail
stop=
if [ "${1:-}" = "--stop" ]; then stop=1; shift; fi
mnt=$(realpath -m "${1:-./lode-mnt}")
dir=$(realpath -m "${LODE_QUICKSTART:-./lode-quickstart}")
lode=$(realpath -m "${LODE_BIN:-$(command -v lode || echo "$(dirname "$0")/../target/debug/lode")}")
export LODE_HOME="$dir/home"

# Whether PID is a lode mirror still running: not a number reused by
# another process, nor one that ended and waits to be reaped (a zombie,
# where the container's first process does not reap).
mirror_running() {
    [ -n "$1" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q ' mirror serve ' &&
        ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# Whether MOUNTPOINT is in the mount table, which writes a space in a path
# as \040 (and a tab, a newline and a backslash as \011, \012, \134).
mounted() {
    local esc=${1//\\/\\134}
    esc=${esc// /\\040}
    esc=${esc//$'\t'/\\011}
    esc=${esc//$'\n'/\\012}
    grep -qsF -- " $esc " /proc/self/mounts
}

if [ -n "$stop" ]; then
    if mounted "$mnt"; then
        fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt"
    fi
    # The mount process exits once its final flush is done. (Its command
    # line, matched literally: the path may hold a regex's characters.)
    re=$(printf '%s' "$mnt" | sed 's/[][\\.*^$+?(){}|]/\\&/g')
    for _ in $(seq 600); do
        pgrep -f -- "[ ]mount $re --foreground" >/dev/null || break
        sleep 0.1
    done
    pids=()
    for pidfile in "$dir"/mirror*.pid; do
        [ -e "$pidfile" ] || continue
        # Only a mirror still running: after a reboot the number may be
        # another process's now.
        pid=$(cat "$pidfile")
        if mirror_running "$pid"; then
            pids+=("$pid")
            kill "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    # Return once they are gone (a mirror finishes its requests first).
    for pid in "${pids[@]+"${pids[@]}"}"; do
        for _ in $(seq 100); do mirror_running "$pid" || break; sleep 0.1; done
    done
    echo "stopped: $mnt unmounted, mirrors in $dir stopped"
    exit 0
fi

command -v fusermount3 >/dev/null || { apt-get update -qq && apt-get install -y -qq fuse3; }
mkdir -p "$dir"
# Not over a mount (a dead one, whose process is gone, fails even a stat:
# `lode mount` below says what to do about it).
[ -d "$mnt" ] || mounted "$mnt" || mkdir -p "$mnt"
for i in 1 2 3; do
    pidfile="$dir/mirror$i.pid"
    if [ -e "$pidfile" ] && mirror_running "$(cat "$pidfile")"; then continue; fi
    # A mirror keeps its first address, so the identity's config stays valid.
    listen=$(cat "$dir/mirror$i.addr" 2>/dev/null || echo 127.0.0.1:0)
    stratum=$(cat "$dir/mirror$i.stratum" 2>/dev/null || echo 127.0.0.1:0)
    # From /, as a daemon runs: not holding busy the directory this was
    # run from (perhaps inside the mount itself).
    (cd / && exec "$lode" mirror serve --data "$dir/mirror$i" --listen "$listen" \
        --stratum "$stratum") >"$dir/mirror$i.log" 2>&1 &
    echo $! >"$pidfile"
done
for i in 1 2 3; do
    # A mirror announces itself once its store is open (an older share
    # layout moved forward first, which may take a while on a big one).
    for _ in $(seq 600); do grep -q "pool listening" "$dir/mirror$i.log" && break; sleep 0.1; done
    grep -q "pool listening" "$dir/mirror$i.log" || { cat "$dir/mirror$i.log" >&2; exit 1; }
    grep -m1 "mirror listening on" "$dir/mirror$i.log" | sed 's|.*http://||' >"$dir/mirror$i.addr"
    grep -m1 "pool listening on" "$dir/mirror$i.log" | sed 's|.*tcp://||' >"$dir/mirror$i.stratum"
done
[ -e "$LODE_HOME/data/secret" ] || "$lode" init
for i in 1 2 3; do
    url=$(grep -m1 "mirror listening on" "$dir/mirror$i.log" | awk '{print $NF}')
    grep -qF "\"$url\"" "$LODE_HOME/config/config.toml" || "$lode" mirrors add "$url"
done
if ! { mounted "$mnt" && stat "$mnt" >/dev/null 2>&1; }; then
    "$lode" mount "$mnt" || {
        echo "the mount failed; the mirrors are still running (stop them with: $0 --stop $mnt)" >&2
        exit 1
    }
fi
"$lode" status
echo
echo "lode is mounted at $mnt (LODE_HOME=$LODE_HOME)."
echo "stop everything with: $0 --stop $mnt"
