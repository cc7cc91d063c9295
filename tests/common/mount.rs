//! A live lode mount for tests, unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::Client;

pub fn mounted(mp: &Path) -> bool {
    let canon = mp.canonicalize().unwrap();
    // The mount table writes a space in a path as `\040`.
    let listed = canon.to_str().unwrap().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(listed.as_str()))
}

/// A live mount, unmounted (and its process awaited) on drop.
pub struct Mounted {
    pub mp: PathBuf,
    home: PathBuf,
}

impl Mounted {
    pub fn new(client: &Client, mp: &Path) -> Mounted {
        Self::with_options(client, mp, &[])
    }

    /// `lode mount MP -o OPTS` (each of `options` one option).
    pub fn with_options(client: &Client, mp: &Path, options: &[&str]) -> Mounted {
        std::fs::create_dir_all(mp).unwrap();
        let joined = options.join(",");
        let mut args = vec!["mount", mp.to_str().unwrap()];
        if !options.is_empty() {
            args.extend(["-o", &joined]);
        }
        client.ok(&args);
        Self::attach(client, mp)
    }

    /// [`Mounted::with_options`], logging with the filter `filter` (see
    /// [`Client::ok_logging`]).
    pub fn logging(client: &Client, mp: &Path, options: &[&str], filter: &str) -> Mounted {
        std::fs::create_dir_all(mp).unwrap();
        let joined = options.join(",");
        let mut args = vec!["mount", mp.to_str().unwrap()];
        if !options.is_empty() {
            args.extend(["-o", &joined]);
        }
        client.ok_logging(&args, filter);
        Self::attach(client, mp)
    }

    /// Take charge of a mount started some other way.
    pub fn attach(client: &Client, mp: &Path) -> Mounted {
        assert!(mounted(mp));
        Mounted {
            mp: mp.to_path_buf(),
            home: client.home.clone(),
        }
    }

    pub fn unmount(&self) {
        // A file of the mount can be held for a moment by a process
        // another test just forked (its descriptors close at exec): busy
        // is tried again, for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        while mounted(&self.mp) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mp)
                .status()
                .unwrap()
                .success();
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "fusermount3 -u failed");
            std::thread::sleep(Duration::from_millis(200));
        }
        // The mount process holds its lock until its final flush is done.
        let lock = std::fs::File::create(self.home.join("data/mount.lock")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while lock.try_lock().is_err() {
            assert!(Instant::now() < deadline, "mount process did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // A test failing already: no second panic (an abort that leaves
        // the mount process running), just end it.
        if std::thread::panicking() {
            if mounted(&self.mp) {
                kill_mount(&self.mp);
            }
            return;
        }
        self.unmount();
    }
}

/// kill -9 the mount process at `mp`, then clear its dead FUSE connection
/// so that it can be mounted again.
pub fn kill_mount(mp: &Path) {
    let pattern = format!("[l]ode mount {} --foreground", mp.display());
    let status = Command::new("pkill").args(["-9", "-f", &pattern]).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "no mount process at {}",
        mp.display()
    );
    let _ = Command::new("fusermount3").arg("-u").arg(mp).status();
}
