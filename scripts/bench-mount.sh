#!/usr/bin/env bash
# lode's FUSE mount against gocryptfs, on the same disk, in the same run:
#
#   1. sequential write of SIZE_MIB (default 1024) of random bytes, dd with
#      conv=fsync (lode's fsync returns once the file is on the mirrors);
#   2. sequential read of that file after a remount and a cache drop (lode
#      reads from the mirrors, not from its staging copy), checked with cmp
#      outside the timed part;
#   3. tar xf of FILES (default 10000) small files in 110 directories, timed
#      on its own and, into fresh directories, together with a sync that
#      waits until the files are durable (lode: `lode sync`, which uploads
#      and publishes everything staged; gocryptfs: syncfs of the disk under
#      its cipher directory): once with an archive of the same shape but
#      other bytes (new content), once with the first archive again
#      (content the file system already stored: lode deduplicates it);
#   4. peak VmRSS of each mount process, sampled every 0.5 s while writing
#      RSS_MIB (default 4096) of random bytes with conv=fsync.
#
# Steps 1 and 2 run twice, gocryptfs-lode then lode-gocryptfs, and report
# the throughput over both rounds. Every timed step starts from dropped
# caches.
#
#   scripts/bench-mount.sh [BASEDIR]      (default /tmp)
#
# Everything (lode's mirrors and staging, gocryptfs's cipher directory, the
# source files) lives in a fresh directory under BASEDIR, so both file
# systems sit on the same disk. Needs root (drop_caches). Installs gocryptfs
# and fuse3 with apt-get if missing. Uses $LODE_BIN (default
# target/release/lode; build it with `cargo build --release`); LODE_OPTS
# adds mount options (`LODE_OPTS=keep=0`). KEEP=1 keeps
# the work directory. STEP_TIMEOUT (default 1800 s) bounds every timed step.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
base=$(realpath -m "${1:-/tmp}")
size_mib=${SIZE_MIB:-1024}
rss_mib=${RSS_MIB:-4096}
nfiles=${FILES:-10000}
step_timeout=${STEP_TIMEOUT:-1800}
export LODE_BIN=${LODE_BIN:-$here/target/release/lode}

[ "$(id -u)" = 0 ] || { echo "needs root (drop_caches, apt-get)" >&2; exit 1; }
[ -x "$LODE_BIN" ] || { echo "no lode binary at $LODE_BIN (cargo build --release)" >&2; exit 1; }
need=()
command -v gocryptfs >/dev/null || need+=(gocryptfs)
command -v fusermount3 >/dev/null || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
for tool in openssl cmp tar timeout; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done

# Space: the source, its copy in each file system (lode: staging plus 1.5x
# in shares on the mirrors), the big RSS file likewise, and some slack.
mkdir -p "$base"
need_mib=$((size_mib * 8 + rss_mib * 4 + 2048))
avail_mib=$(df -Pm "$base" | awk 'NR == 2 {print $4}')
if [ "$avail_mib" -lt "$need_mib" ]; then
    echo "need about $need_mib MiB free under $base, have $avail_mib" >&2
    exit 1
fi

work=$(mktemp -d "$base/lode-bench.XXXXXX")
lmnt=$work/lode-mnt
gmnt=$work/gocryptfs-mnt
gcipher=$work/gocryptfs-cipher
export LODE_QUICKSTART=$work/lode-state
export LODE_HOME=$work/lode-state/home
sampler=

lode_pid() { pgrep -f "[ ]mount $lmnt --foreground" | head -1; }
gocryptfs_pid() { pgrep -f "[g]ocryptfs .* $gmnt" | head -1; }

cleanup() {
    set +e
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
    if grep -qs " $gmnt " /proc/self/mounts; then
        fusermount3 -u "$gmnt" 2>/dev/null || umount -l "$gmnt"
    fi
    timeout 300 "$here/scripts/quickstart.sh" --stop "$lmnt" >/dev/null 2>&1
    if grep -qs " $lmnt " /proc/self/mounts; then umount -l "$lmnt"; fi
    pid=$(lode_pid)
    [ -n "$pid" ] && kill "$pid"
    if [ -n "${KEEP:-}" ]; then
        echo "kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- helpers ----

now() { date +%s.%N; }
# elapsed START: seconds since START, 3 decimals.
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; }
mibps() { awk -v m="$1" -v s="$2" 'BEGIN {printf "%.1f", m / s}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# ticks PID...: CPU ticks (user, system) the processes have used so far.
ticks() {
    local u=0 s=0 pid f
    for pid in "$@"; do
        [ -r "/proc/$pid/stat" ] || continue
        # Fields 14 and 15 of stat, counted after the command's parentheses.
        f=$(sed 's/.*) //' "/proc/$pid/stat")
        u=$((u + $(echo "$f" | cut -d' ' -f12)))
        s=$((s + $(echo "$f" | cut -d' ' -f13)))
    done
    echo "$u $s"
}
# cpu_since "U S" PID...: "X CPU s (Y system)" used since ticks gave U S.
cpu_since() {
    local before=$1
    shift
    awk -v b="$before" -v a="$(ticks "$@")" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        split(b, x, " "); split(a, y, " ")
        printf "%.2f CPU s (%.2f system)", (y[1] + y[2] - x[1] - x[2]) / hz, (y[2] - x[2]) / hz
    }'
}
# What each file system's processes used in a step: for lode the mount and
# its mirrors apart, for gocryptfs its one process.
fs_pids() {
    if [ "$1" = lode ]; then lode_pid; else gocryptfs_pid; fi
}
mirror_pids() { cat "$LODE_QUICKSTART"/mirror*.pid 2>/dev/null; }
cpu_report() {
    local fs=$1 before_fs=$2 before_mirrors=$3
    if [ "$fs" = lode ]; then
        # shellcheck disable=SC2046
        echo "mount $(cpu_since "$before_fs" $(fs_pids lode)), mirrors $(cpu_since "$before_mirrors" $(mirror_pids))"
    else
        echo "$(cpu_since "$before_fs" $(fs_pids gocryptfs))"
    fi
}

# The machine may be shared: show the load next to every result.
load() { echo "(load $(cut -d' ' -f1 /proc/loadavg))"; }

# timed CMD...: run CMD under the step timeout and print its wall time in
# seconds (CMD's own output goes to stderr). Used as t=$(timed ...), so a
# failure ends the script through set -e.
timed() {
    local t0
    t0=$(now)
    if ! timeout "$step_timeout" "$@" >&2; then
        echo "step failed or timed out after ${step_timeout}s: $*" >&2
        exit 1
    fi
    elapsed "$t0"
}

lode_mount() {
    "$LODE_BIN" mount "$lmnt" -o "nominer${LODE_OPTS:+,$LODE_OPTS}" >/dev/null
}

lode_umount() {
    fusermount3 -u "$lmnt"
    # The process exits once its final flush has published everything.
    for _ in $(seq 3000); do
        [ -z "$(lode_pid)" ] && return 0
        sleep 0.1
    done
    echo "lode mount did not exit within 300 s of the unmount" >&2
    exit 1
}

gocryptfs_mount() {
    gocryptfs -q -nosyslog -extpass 'echo lode-bench-pw' "$gcipher" "$gmnt"
}

gocryptfs_umount() {
    fusermount3 -u "$gmnt"
    for _ in $(seq 300); do
        [ -z "$(gocryptfs_pid)" ] && return 0
        sleep 0.1
    done
    echo "gocryptfs did not exit within 30 s of the unmount" >&2
    exit 1
}

# Wait (bounded) until lode has nothing staged: every file uploaded and
# every directory published. `lode sync` asks the mount to do just that;
# the staging directory itself is no measure, since published files keep
# their local copy as a read cache.
lode_settle() {
    for _ in $(seq 60); do
        timeout 600 "$LODE_BIN" sync >/dev/null && return 0
        sleep 1
    done
    echo "lode sync did not succeed after 60 tries" >&2
    exit 1
}

# rss_sample PID OUT: VmRSS in KiB every 0.5 s until killed.
rss_sample() {
    while kill -0 "$1" 2>/dev/null; do
        awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null >>"$2" || true
        sleep 0.5
    done
}

# ---- set up ----

echo "== machine"
echo "cores: $(nproc); cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
echo "disk under $work: $(df -Ph "$work" | awk 'NR == 2 {print $1, $2, "size,", $4, "free"}')"
echo "lode: $LODE_BIN ($("$LODE_BIN" --version 2>/dev/null || echo '?'))"
echo "gocryptfs: $(gocryptfs -version | head -1)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"

mkdir -p "$lmnt" "$gmnt" "$gcipher"
"$here/scripts/quickstart.sh" "$lmnt" >/dev/null
# Remount without the background miner, so it does not compete for the CPU.
lode_umount
lode_mount
gocryptfs -init -q -extpass 'echo lode-bench-pw' "$gcipher" >/dev/null
gocryptfs_mount

echo "== preparing sources in $work"
head -c "$((size_mib << 20))" /dev/urandom >"$work/src.bin"
head -c "$((size_mib << 20))" /dev/urandom >"$work/src2.bin"
tree_dir=$work/tree
# 10 top directories of 10 subdirectories each; the files spread over the
# 100 leaves, 100 B to 8 KiB of random bytes each. Made twice, with other
# bytes the second time: new content for the timed untar + sync.
for a in $(seq 0 9); do
    for b in $(seq 0 9); do
        mkdir -p "$tree_dir/d$a/e$b"
    done
done
for tarball in small small2; do
    i=0
    while [ "$i" -lt "$nfiles" ]; do
        head -c $((100 + (i * 7919) % 8093)) /dev/urandom \
            >"$tree_dir/d$((i % 10))/e$((i / 10 % 10))/f$i"
        i=$((i + 1))
    done
    tar cf "$work/$tarball.tar" -C "$tree_dir" .
done
rm -rf "$tree_dir"
echo "tarball: $nfiles files, $(du -m "$work/small.tar" | cut -f1) MiB"

declare -A res

# ---- 1. sequential write ----

# Steps 1 and 2 run each file system twice, in the order gocryptfs, lode,
# lode, gocryptfs, and report the throughput over both rounds: on this VM
# the one that runs second after the other pays for it (fresh memory is
# dear, see docs/PERFORMANCE.md, run 9), and the mirrored order cancels
# that. Each write starts from dropped caches with its source read back in;
# round 2 writes other random bytes (lode would find round 1's shares held).
rounds=("gocryptfs lode" "lode gocryptfs")
echo "== 1. sequential write, $size_mib MiB, dd bs=1M conv=fsync, two rounds"
declare -A wsum=([gocryptfs]=0 [lode]=0) rsum=([gocryptfs]=0 [lode]=0)
for r in 1 2; do
    for fs in ${rounds[$((r - 1))]}; do
        mnt=$lmnt
        [ "$fs" = gocryptfs ] && mnt=$gmnt
        src=$work/src.bin name=big
        [ "$r" = 2 ] && src=$work/src2.bin name=big2
        drop_caches
        cat "$src" >/dev/null # the source comes from the page cache for both
        # shellcheck disable=SC2046
        c0=$(ticks $(fs_pids "$fs")) m0=$(ticks $(mirror_pids))
        t=$(timed dd if="$src" of="$mnt/$name" bs=1M conv=fsync status=none)
        wsum[$fs]=$(awk -v a="${wsum[$fs]}" -v b="$t" 'BEGIN {print a + b}')
        echo "$fs, round $r: ${t}s, $(mibps "$size_mib" "$t") MiB/s $(load); $(cpu_report "$fs" "$c0" "$m0")"
    done
done
for fs in gocryptfs lode; do
    res[write_$fs]=$(mibps "$((2 * size_mib))" "${wsum[$fs]}")
    echo "$fs: ${res[write_$fs]} MiB/s over both rounds"
done
rm -f "$gmnt/big2" "$lmnt/big2"

# ---- 2. sequential read ----

echo "== 2. sequential read, $size_mib MiB, dd bs=1M, after remount and drop_caches, two rounds"
for r in 1 2; do
    for fs in ${rounds[$((r - 1))]}; do
        if [ "$fs" = gocryptfs ]; then
            mnt=$gmnt
            gocryptfs_umount
            gocryptfs_mount
        else
            mnt=$lmnt
            # A fresh process: nothing cached, nothing staged (the unmount's
            # final flush removes the staging copy once it is published).
            lode_umount
            lode_mount
            n=$(find "$LODE_HOME/data/staging" -type f ! -name '*.*' | wc -l)
            [ "$n" = 0 ] || echo "warning: $n files still staged after the remount" >&2
        fi
        drop_caches
        t=$(timed dd if="$mnt/big" of=/dev/null bs=1M status=none)
        rsum[$fs]=$(awk -v a="${rsum[$fs]}" -v b="$t" 'BEGIN {print a + b}')
        echo "$fs, round $r: ${t}s, $(mibps "$size_mib" "$t") MiB/s $(load)"
        # Not timed: the bytes read are the bytes written (mostly from the
        # page cache the timed read just filled).
        [ "$r" = 1 ] || continue
        if timeout "$step_timeout" cmp "$work/src.bin" "$mnt/big"; then
            echo "$fs: content verified"
        else
            echo "$fs: CONTENT DIFFERS (or cmp timed out)" >&2
            res[bad_$fs]=1
        fi
    done
done
for fs in gocryptfs lode; do
    res[read_$fs]=$(mibps "$((2 * size_mib))" "${rsum[$fs]}")
    [ -n "${res[bad_$fs]:-}" ] && res[read_$fs]="${res[read_$fs]} (content differs!)"
    echo "$fs: ${res[read_$fs]} MiB/s over both rounds"
done
rm -f "$gmnt/big" "$lmnt/big"

# ---- 3. untar ----

echo "== 3. tar xf of $nfiles small files"
for fs in gocryptfs lode; do
    if [ "$fs" = gocryptfs ]; then mnt=$gmnt; else mnt=$lmnt; fi
    mkdir "$mnt/untar1"
    drop_caches
    t=$(timed tar xf "$work/small.tar" -C "$mnt/untar1")
    res[tar_$fs]=$t
    echo "$fs: tar xf ${t}s $(load)"
    # Let the first one reach the disk / the mirrors before the second.
    if [ "$fs" = lode ]; then lode_settle; else sync -f "$gcipher"; fi
    for round in new again; do
        if [ "$round" = new ]; then tarball=$work/small2.tar; dir=$mnt/untar2; else tarball=$work/small.tar; dir=$mnt/untar3; fi
        mkdir "$dir"
        drop_caches
        # shellcheck disable=SC2016 # expanded by the inner sh
        if [ "$fs" = gocryptfs ]; then
            t=$(timed sh -c 'tar xf "$1" -C "$2" && sync -f "$3"' sh "$tarball" "$dir" "$gcipher")
        else
            # `lode sync` returns once every file is uploaded and every
            # directory published (syncfs does not reach a FUSE server).
            t=$(timed sh -c 'tar xf "$1" -C "$2" && "$3" sync >/dev/null' sh "$tarball" "$dir" "$LODE_BIN")
        fi
        res[tarsync_${round}_$fs]=$t
        if [ "$round" = new ]; then what="new content"; else what="same archive again"; fi
        echo "$fs: tar xf + sync, $what, ${t}s $(load)"
        if [ "$fs" = lode ]; then lode_settle; else sync -f "$gcipher"; fi
    done
    n=$(find "$mnt/untar2" -type f | wc -l)
    [ "$n" = "$nfiles" ] || echo "warning: $fs holds $n files after the untar, not $nfiles" >&2
done

# ---- 4. RSS while writing a big file ----

echo "== 4. peak RSS of the mount process while writing $rss_mib MiB (conv=fsync)"
for fs in gocryptfs lode; do
    if [ "$fs" = gocryptfs ]; then
        mnt=$gmnt
        pid=$(gocryptfs_pid)
    else
        mnt=$lmnt
        pid=$(lode_pid)
    fi
    [ -n "$pid" ] || { echo "no $fs mount process found" >&2; exit 1; }
    drop_caches
    samples=$work/rss-$fs
    : >"$samples"
    rss_sample "$pid" "$samples" &
    sampler=$!
    # shellcheck disable=SC2016 # expanded by the inner sh
    t=$(timed sh -c 'openssl enc -aes-128-ctr -pass pass:lode-bench -nosalt -pbkdf2 </dev/zero 2>/dev/null |
        head -c "$2" | dd of="$1" bs=1M iflag=fullblock conv=fsync status=none' \
        sh "$mnt/huge" "$((rss_mib << 20))")
    sleep 1
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sampler=
    peak=$(sort -n "$samples" | tail -1)
    res[rss_$fs]=$((peak / 1024))
    res[huge_$fs]=$(mibps "$rss_mib" "$t")
    echo "$fs: peak VmRSS ${res[rss_$fs]} MiB over $(wc -l <"$samples") samples; wrote at ${res[huge_$fs]} MiB/s (${t}s) $(load)"
    rm -f "$mnt/huge"
done

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- summary ----

echo
echo "== summary (lode vs gocryptfs, same disk, same run)"
printf '%-34s %12s %12s %8s\n' test gocryptfs lode ratio
printf '%-34s %12s %12s %8s\n' "seq write ${size_mib} MiB, fsync (MiB/s)" \
    "${res[write_gocryptfs]}" "${res[write_lode]}" "$(ratio "${res[write_lode]}" "${res[write_gocryptfs]}")"
printf '%-34s %12s %12s %8s\n' "seq read ${size_mib} MiB, cold (MiB/s)" \
    "${res[read_gocryptfs]%% *}" "${res[read_lode]%% *}" "$(ratio "${res[read_lode]%% *}" "${res[read_gocryptfs]%% *}")"
printf '%-34s %12s %12s %8s\n' "tar xf $nfiles files (s)" \
    "${res[tar_gocryptfs]}" "${res[tar_lode]}" "$(ratio "${res[tar_gocryptfs]}" "${res[tar_lode]}")"
printf '%-34s %12s %12s %8s\n' "tar xf + sync, new content (s)" \
    "${res[tarsync_new_gocryptfs]}" "${res[tarsync_new_lode]}" "$(ratio "${res[tarsync_new_gocryptfs]}" "${res[tarsync_new_lode]}")"
printf '%-34s %12s %12s %8s\n' "tar xf + sync, same again (s)" \
    "${res[tarsync_again_gocryptfs]}" "${res[tarsync_again_lode]}" "$(ratio "${res[tarsync_again_gocryptfs]}" "${res[tarsync_again_lode]}")"
printf '%-34s %12s %12s %8s\n' "write ${rss_mib} MiB, fsync (MiB/s)" \
    "${res[huge_gocryptfs]}" "${res[huge_lode]}" "$(ratio "${res[huge_lode]}" "${res[huge_gocryptfs]}")"
printf '%-34s %12s %12s\n' "peak mount VmRSS (MiB)" "${res[rss_gocryptfs]}" "${res[rss_lode]}"
echo "ratio > 1 means lode is faster: lode/gocryptfs for MiB/s, gocryptfs/lode for times."
echo "goals: seq write and read ratio >= 1.0; lode peak RSS <= 256 MiB while writing 4 GiB."
