#!/usr/bin/env bash
# Install lode and its mount helpers.
#   scripts/install.sh                  # /usr/local/bin/lode, /sbin/mount.lode
#   PREFIX=$HOME/.local SBINDIR=$HOME/.local/sbin scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-/usr/local}
sbindir=${SBINDIR:-/sbin}
command -v fusermount3 >/dev/null || { apt-get update -qq && apt-get install -y -qq fuse3; }
cargo build --release --locked
install -Dm755 target/release/lode "$prefix/bin/lode"
install -Dm755 mount-helpers/mount.lode "$sbindir/mount.lode"
ln -sf mount.lode "$sbindir/mount.fuse.lode"
install -Dm644 mount-helpers/lode-mirror.service "$prefix/share/lode/lode-mirror.service"
install -Dm644 mount-helpers/lode-mount.service "$prefix/share/lode/lode-mount.service"
echo "installed $prefix/bin/lode and $sbindir/mount.lode, mount.fuse.lode"
