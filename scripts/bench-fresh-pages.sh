#!/usr/bin/env bash
# What a sequential write costs in system time when its page-cache pages
# are new to the host, against the same write with the bytes punched out
# 64 MiB behind the writer (so its pages come back warm). See
# docs/PERFORMANCE.md, "Where the write's system time goes".
#
#   scripts/bench-fresh-pages.sh [DIR] [SLEEP]   (default /tmp, 5 s)
#
# Writes 1 GiB to DIR/bench-fresh-pages.tmp in 1 MiB pwrites, three times
# each way, alternating; before each, drops the page cache and sleeps
# SLEEP seconds (a VM whose balloon reports free pages hands them back to
# the host meanwhile). Needs root (drop_caches) and python3.
set -euo pipefail
dir=${1:-/tmp}
pause=${2:-5}
[ "$(id -u)" = 0 ] || { echo "needs root (drop_caches)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "needs python3" >&2; exit 1; }
for round in 1 2 3; do
    for mode in plain punch; do
        python3 - "$dir/bench-fresh-pages.tmp" "$mode" "$pause" <<'PY'
import ctypes, os, resource, sys, time
path, mode, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
libc = ctypes.CDLL("libc.so.6", use_errno=True)
KEEP_SIZE, PUNCH_HOLE = 1, 2
MIB, LAG, STEP = 1 << 20, 64, 8
buf = os.urandom(MIB)
os.sync()
with open("/proc/sys/vm/drop_caches", "w") as f:
    f.write("3\n")
time.sleep(pause)
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
for i in range(1024):
    os.pwrite(fd, buf, i * MIB)
    if mode == "punch" and i >= LAG + STEP and i % STEP == 0:
        at = (i - LAG - STEP) * MIB
        if libc.fallocate(fd, PUNCH_HOLE | KEEP_SIZE, ctypes.c_long(at), ctypes.c_long(STEP * MIB)):
            sys.exit("fallocate: " + os.strerror(ctypes.get_errno()))
after, t1 = resource.getrusage(resource.RUSAGE_SELF), time.time()
os.close(fd)
os.unlink(path)
print(f"{mode:5}  wall {t1 - t0:.3f} s  system {after.ru_stime - before.ru_stime:.3f} s")
PY
    done
done
