#!/usr/bin/env bash
# Start three local mirrors, create an identity, store and fetch a file.
# Usage: scripts/demo.sh [DIR]   (state goes in DIR, default ./lode-demo)
#        scripts/demo.sh --stop [DIR]
set -euo pipefail
stop=
if [ "${1:-}" = "--stop" ]; then stop=1; shift; fi
dir=$(realpath -m "${1:-./lode-demo}")
lode=${LODE_BIN:-$(command -v lode || echo "$(dirname "$0")/../target/debug/lode")}

if [ -n "$stop" ]; then
    for pidfile in "$dir"/mirror*.pid; do
        [ -e "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
    echo "stopped the mirrors in $dir"
    exit 0
fi

mkdir -p "$dir"
export LODE_HOME="$dir/home"
for i in 1 2 3; do
    pidfile="$dir/mirror$i.pid"
    if [ -e "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then continue; fi
    "$lode" mirror serve --data "$dir/mirror$i" --listen 127.0.0.1:0 >"$dir/mirror$i.log" 2>&1 &
    echo $! >"$pidfile"
done
for i in 1 2 3; do
    for _ in $(seq 50); do grep -q listening "$dir/mirror$i.log" && break; sleep 0.1; done
done
if [ ! -e "$LODE_HOME/data/secret" ]; then
    "$lode" init
fi
for i in 1 2 3; do
    url=$(head -1 "$dir/mirror$i.log" | awk '{print $NF}')
    grep -qF "\"$url\"" "$LODE_HOME/config/config.toml" || "$lode" mirrors add "$url"
done
echo "hello from lode, $(date)" >"$dir/hello.txt"
cap=$("$lode" put "$dir/hello.txt" --to hello.txt)
echo "stored hello.txt as $cap"
"$lode" get hello.txt
echo
echo "mirrors run from $dir; LODE_HOME=$LODE_HOME"
echo "stop them with: $0 --stop $dir"
