#!/usr/bin/env bash
# The history scripts/bench-mount.sh puts its mount through before the RSS
# step, on one lode mount, with VmRSS read after each step:
#
#   quickstart (three loopback mirrors), 1 GiB written; remount; a cold
#   read of it; the file removed; three untars of FILES (default 10000)
#   small files, each followed by `lode sync`; a pause of SETTLE seconds
#   (default 62); drop_caches; RSS_MIB (default 4096) of an openssl stream
#   written with dd conv=fsync, VmRSS sampled every 0.5 s.
#
#   scripts/bench-rss-history.sh [BASEDIR]      (default /tmp)
#
# Uses $LODE_BIN (default target/release/lode). Needs root (drop_caches).
# OPTS=",cache=16" adds mount options.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
base=$(realpath -m "${1:-/tmp}")
export LODE_BIN=${LODE_BIN:-$here/target/release/lode}
nfiles=${FILES:-10000}
rss_mib=${RSS_MIB:-4096}
[ "$(id -u)" = 0 ] || { echo "needs root (drop_caches)" >&2; exit 1; }
[ -x "$LODE_BIN" ] || { echo "no lode binary at $LODE_BIN (cargo build --release)" >&2; exit 1; }
work=$(mktemp -d "$base/lode-rss.XXXXXX")
mnt=$work/mnt
export LODE_QUICKSTART=$work/state LODE_HOME=$work/state/home
sampler=
cleanup() {
    set +e
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
    timeout 300 "$here/scripts/quickstart.sh" --stop "$mnt" >/dev/null 2>&1
    grep -qs " $mnt " /proc/self/mounts && umount -l "$mnt"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_pid() { pgrep -f "[ ]mount $mnt --foreground" | head -1; }
lode_mount() { "$LODE_BIN" mount "$mnt" -o "nominer${OPTS:-}" >/dev/null; pid=$(mount_pid); }
lode_umount() {
    fusermount3 -u "$mnt"
    while [ -n "$(mount_pid)" ]; do sleep 0.1; done
}
rss() {
    awk -v what="$1" '/^VmRSS/ {r = $2} /^VmHWM/ {h = $2}
        END {printf "%-24s VmRSS %4d MiB (peak so far %d)\n", what, r / 1024, h / 1024}' "/proc/$pid/status"
}

tree=$work/tree
for tarball in small small2; do
    i=0
    while [ "$i" -lt "$nfiles" ]; do
        mkdir -p "$tree/d$((i % 10))/e$((i / 10 % 10))"
        head -c $((100 + (i * 7919) % 8093)) /dev/urandom >"$tree/d$((i % 10))/e$((i / 10 % 10))/f$i"
        i=$((i + 1))
    done
    tar cf "$work/$tarball.tar" -C "$tree" .
    rm -rf "$tree"
done
head -c 1G /dev/urandom >"$work/big"

mkdir -p "$mnt"
"$here/scripts/quickstart.sh" "$mnt" >/dev/null
lode_umount
lode_mount
dd if="$work/big" of="$mnt/big" bs=1M conv=fsync status=none
lode_umount
lode_mount
rss "fresh mount"
sync; echo 3 >/proc/sys/vm/drop_caches
dd if="$mnt/big" of=/dev/null bs=1M status=none
rss "after a cold 1 GiB read"
rm -f "$mnt/big"
for u in 1 2 3; do
    tarball=$work/small.tar
    [ "$u" = 2 ] && tarball=$work/small2.tar
    mkdir "$mnt/untar$u"
    tar xf "$tarball" -C "$mnt/untar$u"
    "$LODE_BIN" sync >/dev/null
    rss "after untar $u + sync"
done
sleep "${SETTLE:-62}"
rss "after the pause"
samples=$work/samples
: >"$samples"
(while kill -0 "$pid" 2>/dev/null; do
    awk '/^VmRSS/ {print $2}' "/proc/$pid/status" >>"$samples" 2>/dev/null || true
    sleep 0.5
done) &
sampler=$!
sync; echo 3 >/proc/sys/vm/drop_caches
(set +o pipefail
 openssl enc -aes-128-ctr -pass pass:lode-bench -nosalt -pbkdf2 </dev/zero 2>/dev/null |
     head -c "$((rss_mib << 20))" | dd of="$mnt/huge" bs=1M iflag=fullblock conv=fsync status=none)
sleep 1
kill "$sampler"; wait "$sampler" 2>/dev/null || true
sampler=
rss "after the $rss_mib MiB write"
echo "peak VmRSS during the write: $(( $(sort -n "$samples" | tail -1) / 1024 )) MiB"
