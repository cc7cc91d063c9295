//! scripts/quickstart.sh is idempotent, and --stop leaves no process and no
//! mount behind. Also: the mount's error messages.

mod common;

use std::path::Path;
use std::process::Command;

fn quickstart(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/quickstart.sh"))
        .args(args)
        .env("LODE_BIN", common::LODE)
        .env("LODE_QUICKSTART", dir.join("state"))
        .current_dir(dir)
        .output()
        .unwrap()
}

fn mounts_of(mp: &Path) -> usize {
    let mp = mp.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(mp))
        .count()
}

fn processes_of(dir: &Path) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-af", &format!("[l]ode .*{}", dir.display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// Stops what a quickstart started, should the test end early (a failed
/// assertion): mirrors left running outlive the test's directory.
struct Stop<'a>(&'a Path, &'a Path);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = quickstart(self.0, &["--stop", self.1.to_str().unwrap()]);
        }
    }
}

#[test]
fn quickstart_twice_then_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    let _stop = Stop(tmp.path(), &mp);
    let first = quickstart(tmp.path(), &[mp.to_str().unwrap()]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(mounts_of(&mp), 1);
    std::fs::write(mp.join("hello.txt"), b"hi").unwrap();
    let pids_before = processes_of(tmp.path());
    assert_eq!(
        pids_before.len(),
        4,
        "three mirrors and the mount: {pids_before:?}"
    );
    // Each runs in `/`, as a daemon does, so none keeps the directory it
    // was started from busy.
    for line in &pids_before {
        let pid = line.split_whitespace().next().unwrap();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        assert_eq!(cwd, Path::new("/"), "{line}");
    }

    // Again: nothing new starts, the mount stays, the data is there.
    let second = quickstart(tmp.path(), &[mp.to_str().unwrap()]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(mounts_of(&mp), 1);
    assert_eq!(processes_of(tmp.path()), pids_before);
    assert_eq!(std::fs::read(mp.join("hello.txt")).unwrap(), b"hi");
    let status = String::from_utf8_lossy(&second.stdout).into_owned();
    assert_eq!(status.matches(": up,").count(), 3, "{status}");

    let stop = quickstart(tmp.path(), &["--stop", mp.to_str().unwrap()]);
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert_eq!(mounts_of(&mp), 0, "still mounted");
    assert!(
        processes_of(tmp.path()).is_empty(),
        "left running: {:?}",
        processes_of(tmp.path())
    );
}

#[test]
fn mount_errors_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let client = common::Client {
        home: tmp.path().join("home"),
    };
    client.ok(&["init"]);
    let missing = tmp.path().join("nope");
    let err = client.fails(&["mount", missing.to_str().unwrap()]);
    assert!(err.contains("does not exist"), "{err}");
    let mp = tmp.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    // An unreadable config: it says which file and why.
    std::fs::write(
        client.home.join("config/config.toml"),
        "mirrors = [unterminated",
    )
    .unwrap();
    let err = client.fails(&["mount", mp.to_str().unwrap()]);
    assert!(err.contains("config.toml"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(mounts_of(&mp), 0);
    let err = client.fails(&["mount", mp.to_str().unwrap(), "-o", "bogus"]);
    assert!(err.contains("unknown mount option"), "{err}");
    let err = client.fails(&["mount", mp.to_str().unwrap(), "-o", "inodes=many"]);
    assert!(err.contains("inodes= wants a number"), "{err}");
    let err = client.fails(&["mount", mp.to_str().unwrap(), "-o", "inodes=5"]);
    assert!(err.contains("at least 100"), "{err}");
    let err = client.fails(&["mount", mp.to_str().unwrap(), "-o", "remount"]);
    assert!(err.contains("unmount it and mount it again"), "{err}");
    // What fstab lines carry for other tools passes; the config's error
    // is next.
    let err = client.fails(&[
        "mount",
        mp.to_str().unwrap(),
        "-o",
        "comment=systemd.automount,lazytime",
    ]);
    assert!(err.contains("config.toml"), "{err}");
    // A happy of 0 counted a file stored on no mirror as stored.
    std::fs::write(client.home.join("config/config.toml"), "happy = 0\n").unwrap();
    let err = client.fails(&["mount", mp.to_str().unwrap()]);
    assert!(err.contains("happy = 0 must be from 1 to n = 3"), "{err}");
    std::fs::write(client.home.join("config/config.toml"), "happy = 4\n").unwrap();
    let err = client.fails(&["status"]);
    assert!(err.contains("happy = 4 must be from 1 to n = 3"), "{err}");
    // One mirror twice would count twice towards happy; a URL edited in
    // by hand is checked as `mirrors add` checks it.
    for (mirrors, says) in [
        (
            r#"["http://127.0.0.1:9", "http://127.0.0.1:9/"]"#,
            "listed twice",
        ),
        (r#"["not a url"]"#, "is not a URL"),
    ] {
        let text = format!("mirrors = {mirrors}\n");
        std::fs::write(client.home.join("config/config.toml"), text).unwrap();
        let err = client.fails(&["status"]);
        assert!(err.contains("config.toml") && err.contains(says), "{err}");
    }
    // Flags of mount(8) and fstab that ask nothing of lode pass.
    let err = client.fails(&[
        "mount",
        mp.to_str().unwrap(),
        "-o",
        "nodiratime,diratime,strictatime,silent",
    ]);
    assert!(err.contains("config.toml"), "{err}");
    std::fs::write(client.home.join("config/config.toml"), "").unwrap();
    for url in [
        "http://127.0.0.1:9/?x=1",
        "http://127.0.0.1:9/#f",
        "http://u:p@127.0.0.1:9",
    ] {
        let err = client.fails(&["mirrors", "add", url]);
        assert!(err.contains("a mirror URL"), "{url}: {err}");
    }
    assert_eq!(mounts_of(&mp), 0);
}
