#!/usr/bin/env bash
# Run the Rust pjdfstest on a fresh lode mount over three local mirrors.
#
#   scripts/pjdfstest.sh [OUT]        (default ./pjdfstest.out)
#
# Needs root (allow_other and the suite's setuid checks). Installs pjdfstest
# with cargo and creates its dummy user/group `tests` if missing. Prints the
# pass/fail/skip counts at the end.
set -euo pipefail
out=$(realpath -m "${1:-./pjdfstest.out}")
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/lode-pjd.XXXXXX)
chmod 0755 "$work"   # the suite works as other users too
mnt="$work/mnt"
export LODE_QUICKSTART="$work/state"
export LODE_BIN=${LODE_BIN:-$here/target/debug/lode}
export LODE_HOME="$work/state/home"

command -v pjdfstest >/dev/null || cargo install --locked pjdfstest
getent group tests >/dev/null || groupadd tests
id tests >/dev/null 2>&1 || useradd -M -g tests tests

# Stop everything, then remove the work directory (not while anything is
# still mounted in it: that would delete through the mount).
cleanup() {
    "$here/scripts/quickstart.sh" --stop "$mnt" >/dev/null 2>&1 || true
    grep -qs " $mnt " /proc/self/mounts || rm -rf "$work"
}
trap cleanup EXIT

# Mirrors and identity from the quickstart, then remount with the options
# the suite needs (other users, no miner competing for the CPU).
"$here/scripts/quickstart.sh" "$mnt" >/dev/null
fusermount3 -u "$mnt"
for _ in $(seq 300); do pgrep -f "[ ]mount $mnt --foreground" >/dev/null || break; sleep 0.1; done
"$LODE_BIN" mount "$mnt" -o allow_other,nominer
mkdir "$mnt/work"
chmod 0777 "$mnt/work"
cat >"$work/pjd.toml" <<'TOML'
[features]
utimensat = {}
utime_now = {}
rename_ctime = {}
posix_fallocate = {}
[settings]
naptime = 0.001
allow_remount = false
[dummy_auth]
entries = [ ["nobody", "nogroup"], ["tests", "tests"] ]
TOML
set +e
(cd "$mnt/work" && pjdfstest -c "$work/pjd.toml" -p "$mnt/work") >"$out" 2>&1
set -e
passed=$(grep -cE '^[a-z0-9_:]+ +ok$' "$out" || true)
failed=$(grep -cE '^[a-z0-9_:]+ +FAILED$' "$out" || true)
skipped=$(grep -cE '^[a-z0-9_:]+ +skipped' "$out" || true)
ran=$((passed + failed))
echo "passed $passed  failed $failed  skipped $skipped  pass rate $((100 * passed / (ran > 0 ? ran : 1)))% of those that ran"
