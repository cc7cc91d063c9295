//! mount(8) and fstab through the helpers, inside a private mount
//! namespace (`unshare -m`) so nothing leaks to the host.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Client, MirrorProc};

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn mount_t_fuse_lode_and_fstab_in_a_namespace() {
    assert!(
        have("unshare") && have("fusermount3"),
        "unshare and fusermount3 are needed (fuse3, util-linux)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let mirrors: Vec<MirrorProc> = (0..3)
        .map(|i| MirrorProc::start(&tmp.path().join(format!("m{i}")), &[]))
        .collect();
    let urls: Vec<&str> = mirrors.iter().map(|m| m.url.as_str()).collect();
    let client = Client::new(&tmp.path().join("id"), &urls);
    let helpers = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helpers");
    let bin = Path::new(common::LODE).parent().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let sbin = tmp.path().join("sbin");
    std::fs::create_dir(&sbin).unwrap();
    let fstab = tmp.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "{} {} fuse.lode noauto,_netdev,x-systemd.automount 0 0\n",
            client.home.display(),
            mnt.display()
        ),
    )
    .unwrap();
    // A line `mount -a` mounts (no noauto).
    let auto = tmp.path().join("fstab-auto");
    std::fs::write(
        &auto,
        format!(
            "{} {} fuse.lode nominer 0 0\n",
            client.home.display(),
            mnt.display()
        ),
    )
    .unwrap();
    // Inside the namespace: the helpers are installed where mount(8) looks
    // (/sbin, bind-mounted over with a private copy), then mounted by
    // type, by fstab, and with a bad source.
    let script = format!(
        r#"set -eu
mount --make-rprivate /
cp -a /sbin/. {sbin}/ 2>/dev/null || true
cp {helpers}/mount.lode {sbin}/mount.lode
ln -sf mount.lode {sbin}/mount.fuse.lode
mount --bind {sbin} /sbin
mount --bind {bin} /usr/local/bin
export PATH={bin}:$PATH
wait_gone() {{ for _ in $(seq 600); do pgrep -f "[l]ode mount {mnt} --foreground" >/dev/null || return 0; sleep 0.1; done; return 1; }}

mount -t fuse.lode {home} {mnt} -o default_permissions
grep -q " {mnt} fuse.lode " /proc/self/mounts
echo via-mount-t > {mnt}/a.txt
test "$(cat {mnt}/a.txt)" = via-mount-t
umount {mnt}
wait_gone
echo UNMOUNTED-1

mount -T {fstab} {mnt}
grep -q " {mnt} fuse.lode " /proc/self/mounts
test "$(cat {mnt}/a.txt)" = via-mount-t
umount {mnt}
wait_gone
echo UNMOUNTED-2

# mount -a: the source shows as fstab's, so a second run sees the line
# mounted and leaves it be. And over another file system at the path (as
# systemd's automount puts autofs there first), lode mounts on top.
mount -t tmpfs tmpfs {mnt}
touch {mnt}/under
mount -a -T {auto}
mount -a -T {auto}
test "$(grep -c " {mnt} fuse.lode " /proc/self/mounts)" = 1
grep -q "^{home} {mnt} fuse.lode " /proc/self/mounts
test "$(cat {mnt}/a.txt)" = via-mount-t
umount {mnt}
wait_gone
# The file system under it is still there: the mount's end did not
# unmount the path a second time.
test -e {mnt}/under
umount {mnt}
echo MOUNT-A-OK

# A mount that fails exits 32, as mount(8) says of one.
rc=0; mount -t fuse.lode /nonexistent/identity {mnt} 2>{tmp}/err1 || rc=$?
test $rc = 32 || exit 11
rc=0; mount -t fuse.lode {home} {tmp}/no-such-dir 2>{tmp}/err2 || rc=$?
test $rc != 0 || exit 12
if grep -q " {mnt} " /proc/self/mounts; then exit 13; fi
echo ERRORS-OK
"#,
        sbin = sbin.display(),
        helpers = helpers.display(),
        bin = bin.display(),
        home = client.home.display(),
        mnt = mnt.display(),
        fstab = fstab.display(),
        auto = auto.display(),
        tmp = tmp.path().display(),
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "namespace script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for marker in ["UNMOUNTED-1", "UNMOUNTED-2", "MOUNT-A-OK", "ERRORS-OK"] {
        assert!(
            stdout.contains(marker),
            "{marker} missing:\n{stdout}\n{stderr}"
        );
    }
    // Each failure said why, in one line.
    let err1 = std::fs::read_to_string(tmp.path().join("err1")).unwrap();
    assert!(err1.contains("not a lode identity directory"), "{err1}");
    let err2 = std::fs::read_to_string(tmp.path().join("err2")).unwrap();
    assert!(
        err2.contains("does not exist") || err2.contains("mount point"),
        "{err2}"
    );
    // Nothing leaked to the host's mount table.
    let host = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!host.contains(mnt.to_str().unwrap()));
}
