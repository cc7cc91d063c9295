//! A file under random edits through a real mount, checked against a
//! model after every read, in the manner of fsx: writes at random offsets
//! (inside, across and past the end), truncates both ways, fsyncs, closes
//! and reopens, `lode sync`, and remounts. The keep budget is 1 MiB, so a
//! published file's local copy soon goes and later reads and edits go to
//! the mirrors: partial re-uploads, reads across chunk boundaries, and
//! reads of staged data all meet the same model. Beside the edits, a
//! thread runs `lode sync` every 300 ms, so uploads of the open file race
//! the writes (with the upload's generation check broken, seeds 1-3 fail).
//!
//! `FSX_SEED` and `FSX_OPS` replay or lengthen a run.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::mount::Mounted;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const MAX_LEN: u64 = 12 << 20;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?}")))
        .unwrap_or(default)
}

fn open(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

/// The whole file through `file` equals the model, with its length.
fn check_whole(file: &File, model: &[u8], log: &[String]) {
    let len = file.metadata().unwrap().len();
    assert_eq!(len, model.len() as u64, "length; last ops:\n{}", tail(log));
    let mut got = vec![0; model.len()];
    file.read_exact_at(&mut got, 0).unwrap();
    if let Some(at) = got.iter().zip(model).position(|(a, b)| a != b) {
        panic!("first difference at byte {at}; last ops:\n{}", tail(log));
    }
}

fn tail(log: &[String]) -> String {
    log[log.len().saturating_sub(25)..].join("\n")
}

#[test]
fn random_edits_read_back_exactly() {
    let seed = env_or("FSX_SEED", 0x10de);
    let ops = env_or("FSX_OPS", 400);
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let (_mirrors, client) = common::three_mirrors_and_client(tmp.path());
    let mp = tmp.path().join("mnt");
    let mount =
        |client: &common::Client| Mounted::with_options(client, &mp, &["keep=1", "nominer"]);
    // An `Option`, so that a remount drops (and unmounts) the old mount
    // before the new one is made: dropped after, it would unmount the new.
    let mut m = Some(mount(&client));
    let path = mp.join("fsx.bin");
    let mut file = open(&path);
    let mut model: Vec<u8> = Vec::new();
    let mut log = vec![format!("seed {seed:#x}")];
    let mut remounts = 0;
    // Beside the edits, `lode sync` every 300 ms uploads the file while it
    // is open and being written: an upload must never mark clean what
    // changed while it read.
    let syncing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let syncer = {
        let syncing = syncing.clone();
        let client = common::Client {
            home: client.home.clone(),
        };
        std::thread::spawn(move || {
            while syncing.load(std::sync::atomic::Ordering::Relaxed) {
                // Fails while a remount is under way; the next one counts.
                client.run(&["sync"]);
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        })
    };

    for op in 0..ops {
        let len = model.len() as u64;
        match rng.random_range(0..100) {
            // Write: mostly small, sometimes several chunks long; anywhere
            // up to half a MiB past the end (the gap reads as zeros).
            0..40 => {
                let at = rng.random_range(0..=len + (512 << 10)).min(MAX_LEN - 1);
                let n = match rng.random_range(0..10) {
                    0..7 => rng.random_range(1..=64 << 10),
                    _ => rng.random_range(1..=3 << 20),
                }
                .min(MAX_LEN - at);
                let mut bytes = vec![0u8; n as usize];
                rng.fill(&mut bytes[..]);
                log.push(format!("{op}: write {n} at {at} (len {len})"));
                file.write_all_at(&bytes, at).unwrap();
                let end = (at + n) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[at as usize..end].copy_from_slice(&bytes);
            }
            40..65 => {
                let at = rng.random_range(0..=len);
                let n = rng.random_range(0..=(2 << 20)).min(len - at);
                log.push(format!("{op}: read {n} at {at} (len {len})"));
                let mut got = vec![0u8; n as usize];
                file.read_exact_at(&mut got, at).unwrap();
                let want = &model[at as usize..(at + n) as usize];
                if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
                    panic!(
                        "read {n} at {at}: first difference at byte {}; last ops:\n{}",
                        at + i as u64,
                        tail(&log)
                    );
                }
            }
            65..75 => {
                let to = rng.random_range(0..=(len + len / 5 + 4096).min(MAX_LEN));
                log.push(format!("{op}: truncate to {to} (len {len})"));
                file.set_len(to).unwrap();
                model.resize(to as usize, 0);
            }
            75..85 => {
                log.push(format!("{op}: fsync"));
                file.sync_all().unwrap();
            }
            85..93 => {
                log.push(format!("{op}: close and reopen"));
                drop(file);
                file = open(&path);
                check_whole(&file, &model, &log);
            }
            93..98 => {
                log.push(format!("{op}: lode sync"));
                client.ok(&["sync"]);
            }
            _ if remounts < 2 => {
                remounts += 1;
                log.push(format!("{op}: remount"));
                drop(file);
                drop(m.take());
                m = Some(mount(&client));
                file = open(&path);
                check_whole(&file, &model, &log);
            }
            _ => {}
        }
    }
    syncing.store(false, std::sync::atomic::Ordering::Relaxed);
    syncer.join().unwrap();
    check_whole(&file, &model, &log);
    drop(file);
    client.ok(&["sync"]);
    drop(m.take());
    let _m = mount(&client);
    check_whole(&open(&path), &model, &log);
}
