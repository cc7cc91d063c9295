//! kill -9 the mount in the middle of a mix of writes, overwrites, swaps of
//! files between directories, subdirectory moves and removals (what
//! `scripts/crash-sweep.sh` does at length): after recovery, every file's
//! last closed content is somewhere in the tree. Before a directory kept
//! what was renamed away from it until its new place was published, this
//! lost closed files in nearly every round.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mount::{Mounted, kill_mount};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};

/// What the workload closed: each file's last content (by hash), and the
/// files it removed.
#[derive(Default)]
struct Closed {
    latest: HashMap<u64, [u8; 32]>,
    removed: HashSet<u64>,
}

/// Write `body` to `path` and close it, reporting a failed close (a kill
/// may land between the write and the close).
fn write_closed(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(body)?;
    nix::unistd::close(file.into_raw_fd()).map_err(std::io::Error::from)
}

/// Run the mix on `mp` until an operation fails (the mount is killed) or
/// `stop` is set, recording in `closed` what it closed. Returns where each
/// file still named is.
fn work(
    mp: &Path,
    seed: u64,
    closed: &Mutex<Closed>,
    stop: &AtomicBool,
) -> std::io::Result<HashMap<u64, PathBuf>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let tops: Vec<PathBuf> = (0..4).map(|i| mp.join(format!("d{i}"))).collect();
    for d in &tops {
        std::fs::create_dir_all(d)?;
    }
    let mut subs: Vec<PathBuf> = Vec::new();
    for j in 0..4 {
        let sub = tops[rng.random_range(0..4)].join(format!("s{j}"));
        std::fs::create_dir_all(&sub)?;
        subs.push(sub);
    }
    let mut at: HashMap<u64, PathBuf> = HashMap::new();
    let mut version: HashMap<u64, u64> = HashMap::new();
    let mut write = |id: u64, path: &Path, rng: &mut StdRng| -> std::io::Result<()> {
        let v = version.entry(id).or_default();
        *v += 1;
        let body = common::seeded_bytes(&format!("{seed} {id} {v}"), rng.random_range(1..40_000));
        write_closed(path, &body)?;
        closed
            .lock()
            .unwrap()
            .latest
            .insert(id, Sha256::digest(&body).into());
        Ok(())
    };
    for id in 1.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let ids: Vec<u64> = {
            let mut ids: Vec<u64> = at.keys().copied().collect();
            ids.sort_unstable();
            ids
        };
        let pick = |rng: &mut StdRng| ids[rng.random_range(0..ids.len())];
        match rng.random_range(0..100) {
            _ if ids.len() < 4 => {}
            0..50 => {}
            50..65 => {
                // Not checked while the rewrite is in flight: its O_TRUNC
                // may have emptied the file before the kill, and an empty
                // file is then what was there.
                let id = pick(&mut rng);
                closed.lock().unwrap().removed.insert(id);
                write(id, &at[&id].clone(), &mut rng)?;
                closed.lock().unwrap().removed.remove(&id);
                continue;
            }
            65..85 => {
                // Two files trade directories: a cycle of renames.
                let (a, b) = (pick(&mut rng), pick(&mut rng));
                let (pa, pb) = (at[&a].clone(), at[&b].clone());
                let (da, db) = (pa.parent().unwrap(), pb.parent().unwrap());
                if da != db {
                    let aside = pa.with_extension("swap");
                    let (na, nb) = (
                        db.join(pa.file_name().unwrap()),
                        da.join(pb.file_name().unwrap()),
                    );
                    std::fs::rename(&pa, &aside)?;
                    std::fs::rename(&pb, &nb)?;
                    std::fs::rename(&aside, &na)?;
                    at.insert(a, na);
                    at.insert(b, nb);
                }
                continue;
            }
            85..93 => {
                let j = rng.random_range(0..subs.len());
                let to = tops[rng.random_range(0..4)].join(format!("s{j}"));
                if to != subs[j] {
                    std::fs::rename(&subs[j], &to)?;
                    for path in at.values_mut() {
                        if let Ok(rest) = path.strip_prefix(&subs[j]) {
                            *path = to.join(rest);
                        }
                    }
                    subs[j] = to;
                }
                continue;
            }
            _ => {
                let id = pick(&mut rng);
                // Counted as removed before the unlink: one in flight at
                // the kill may have been done (even published) with its
                // answer lost, and the file is then rightly gone.
                closed.lock().unwrap().removed.insert(id);
                std::fs::remove_file(&at[&id])?;
                at.remove(&id);
                continue;
            }
        }
        let dirs: Vec<&PathBuf> = tops.iter().chain(&subs).collect();
        let path = dirs[rng.random_range(0..dirs.len())].join(format!("f{id}"));
        write(id, &path, &mut rng)?;
        at.insert(id, path);
    }
    Ok(at)
}

/// What the workload started by [`start_work`] reports.
type Worker = std::thread::JoinHandle<std::io::Result<HashMap<u64, PathBuf>>>;

/// Run [`work`] on `mp` in a thread of its own until the returned flag is
/// set (or the mount dies).
fn start_work(mp: &Path, seed: u64) -> (Arc<Mutex<Closed>>, Arc<AtomicBool>, Worker) {
    let closed = Arc::new(Mutex::new(Closed::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (mp, closed, stop) = (mp.to_path_buf(), closed.clone(), stop.clone());
        std::thread::spawn(move || work(&mp, seed, &closed, &stop))
    };
    (closed, stop, worker)
}

/// The hash of every file under `dir`, with its paths.
fn contents(dir: &Path, found: &mut HashMap<[u8; 32], Vec<PathBuf>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "friends") && path.parent() == Some(dir) {
            continue;
        }
        // A name listed and gone at its lookup: after a crash, a parent's
        // listing may still hold a subdirectory that moved elsewhere, and
        // the mount drops such a stale name when it is looked up. (A file
        // gone so would be missed by the check of what was closed.)
        let meta = match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            meta => meta.unwrap(),
        };
        if meta.is_dir() {
            contents(&path, found);
        } else {
            let body = std::fs::read(&path).unwrap();
            found
                .entry(Sha256::digest(&body).into())
                .or_default()
                .push(path);
        }
    }
}

/// The mount's log filter that traces directory moves and publishes.
const TREE_TRACE: &str = "warn,lode::fuse::tree=trace";

/// The last `n` lines of `log` about directory moves and publishes.
fn tree_trace_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("lode::fuse::tree"))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn a_mount_killed_among_renames_loses_no_closed_file() {
    for round in 0..3u64 {
        let tmp = tempfile::tempdir().unwrap();
        let (_mirrors, client) = common::three_mirrors_and_client(tmp.path());
        let mp = tmp.path().join("mnt");
        // Traced: a subdirectory named by no listing after the kill (seen
        // rarely, not yet explained; docs/ARCHITECTURE.md, "What the sweep
        // still finds") shows in the failure with its moves and publishes.
        let m = Mounted::logging(&client, &mp, &["nominer"], TREE_TRACE);
        let (closed, stop, worker) = start_work(&mp, round);
        std::thread::sleep(Duration::from_millis(2500 + 1000 * round));
        kill_mount(&mp);
        stop.store(true, Ordering::Relaxed);
        // It ends at its first operation on the dead mount.
        let _ = worker.join().unwrap();
        drop(m);
        // Before the next mount rotates it away.
        let crashed_log =
            std::fs::read_to_string(client.home.join("data/mount.log")).unwrap_or_default();
        let m = Mounted::with_options(&client, &mp, &["nominer"]);
        client.ok(&["sync"]);
        m.unmount();
        drop(m);
        let m = Mounted::with_options(&client, &mp, &["nominer"]);
        let mut found = HashMap::new();
        contents(&mp, &mut found);
        let closed = closed.lock().unwrap();
        let lost: Vec<u64> = closed
            .latest
            .iter()
            .filter(|(id, hash)| !closed.removed.contains(id) && !found.contains_key(*hash))
            .map(|(id, _)| *id)
            .collect();
        let kept = closed.latest.len() - closed.removed.len();
        assert!(
            kept > 50,
            "round {round}: only {kept} files closed before the kill"
        );
        assert!(
            lost.is_empty(),
            "round {round}: {} of {kept} closed files lost: {lost:?}\n\
             the crashed mount's last directory moves and publishes:\n{}",
            lost.len(),
            tree_trace_tail(&crashed_log, 300)
        );
        drop(m);
    }
}

/// After a storm of swaps and moves (no crash), `lode sync` ends, and the
/// tree the mirrors hold is the mount's exactly: every file at its last
/// name with its last content, and no name a file left (a directory keeps
/// one until the file's new place is published, then drops it). Between
/// e0388f6 and 133f571 a directory dirty only to drop such names counted
/// as a destination still to publish, and a sync after a storm like this
/// spun for minutes.
#[test]
fn a_sync_after_a_storm_of_renames_ends_with_the_mounts_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let (_mirrors, client) = common::three_mirrors_and_client(tmp.path());
    let mp = tmp.path().join("mnt");
    let m = Mounted::with_options(&client, &mp, &["nominer"]);
    let (closed, stop, worker) = start_work(&mp, 7);
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, Ordering::Relaxed);
    let at = worker.join().unwrap().expect("the workload ran");
    let want: HashSet<(PathBuf, [u8; 32])> = {
        let closed = closed.lock().unwrap();
        at.iter()
            .map(|(id, path)| {
                (
                    path.strip_prefix(&mp).unwrap().to_path_buf(),
                    closed.latest[id],
                )
            })
            .collect()
    };
    assert!(want.len() > 100, "only {} files", want.len());
    // It takes about 3 s here; spinning, it took 100.
    let synced = client.run_within(&["sync"], Duration::from_secs(60));
    assert!(
        synced.status.success(),
        "lode sync failed: {}",
        String::from_utf8_lossy(&synced.stderr)
    );
    let held = |mp: &Path| -> HashSet<(PathBuf, [u8; 32])> {
        let mut found = HashMap::new();
        contents(mp, &mut found);
        found
            .into_iter()
            .flat_map(|(hash, paths)| paths.into_iter().map(move |p| (p, hash)))
            .map(|(p, hash)| (p.strip_prefix(mp).unwrap().to_path_buf(), hash))
            .collect()
    };
    let differ = |got: &HashSet<(PathBuf, [u8; 32])>| {
        let extra: Vec<_> = got.difference(&want).map(|(p, _)| p.clone()).collect();
        let missing: Vec<_> = want.difference(got).map(|(p, _)| p.clone()).collect();
        (extra, missing)
    };
    let (extra, missing) = differ(&held(&mp));
    assert!(
        extra.is_empty() && missing.is_empty(),
        "the mount: extra {extra:?}, missing {missing:?}"
    );
    m.unmount();
    drop(m);
    // From the mirrors: the mount's data directory goes, staging and all.
    std::fs::remove_dir_all(client.home.join("data/staging")).unwrap();
    let m = Mounted::with_options(&client, &mp, &["nominer"]);
    let (extra, missing) = differ(&held(&mp));
    assert!(
        extra.is_empty() && missing.is_empty(),
        "after a remount: extra {extra:?}, missing {missing:?}"
    );
    drop(m);
}
