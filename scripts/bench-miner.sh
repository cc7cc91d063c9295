#!/usr/bin/env bash
# Miner hashrate: `lode mine --bench` against OpenSSL's SHA-256 on the same
# machine in the same run.
#
# A header hash with a midstate costs two SHA-256 compressions (the header's
# second block, then the 32-byte inner hash), exactly as many as hashing one
# 64-byte message (data block plus padding block). So OpenSSL's 64-byte
# SHA-256 rate on one core is the natural ceiling to compare against.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECS:-5}
cargo build --release --quiet
lode=target/release/lode

grep -m1 'model name' /proc/cpuinfo | sed 's/^model name\s*:\s*/cpu: /'
grep -q sha_ni /proc/cpuinfo && echo "sha_ni: yes" || echo "sha_ni: no"
echo "cores: $(nproc)"

echo "== lode mine --bench $secs --threads 1"
one=$($lode mine --bench "$secs" --threads 1 | awk '/^total:/ {print $2}')
echo "lode, 1 thread: $one MH/s"
echo "== lode mine --bench $secs (all cores)"
$lode mine --bench "$secs"

echo "== openssl speed -evp sha256, 64-byte messages, 1 thread"
ops=$(openssl speed -evp sha256 -bytes 64 -seconds "$secs" 2>/dev/null \
      | awk '/^sha256|^SHA256/ {v=$NF; sub(/k$/, "", v); print v * 1000 / 64}')
peer=$(awk -v o="$ops" 'BEGIN {printf "%.2f", o / 1e6}')
echo "openssl, 1 thread: $peer M messages/s"
awk -v a="$one" -v b="$peer" 'BEGIN {printf "ratio lode/openssl (per core): %.2f\n", a / b}'
