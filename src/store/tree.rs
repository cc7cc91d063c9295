//! Uploading a local directory tree: many files at once.
//!
//! A tree of small files is bound by round trips, not bytes: each file is
//! two rounds of share uploads (its chunks, then its manifest root, which
//! must come after what it names). So files go up [`TREE_WINDOW`] at a
//! time, across directories, and each directory's listing is published
//! once, when its last file is stored.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures_util::StreamExt;

use super::vault::mtime_of;
use super::{Error, Result, Vault};
use crate::caps::DirWriteCap;
use crate::crypto::SlotSeed;
use crate::dir::{Entry, Listing};

/// Files of one tree uploaded concurrently. Small files are a round trip
/// each, and their shares go to each mirror in batches with the others in
/// flight (`store::http`), so many run at once.
const TREE_WINDOW: usize = 32;
/// Of those, files over this size (each may hold the vault's upload
/// window of shares in memory) ...
const SMALL_FILE_BYTES: u64 = crate::protocol::MAX_BATCH_SHARE_BYTES as u64;
/// ... upload at most this many at a time.
const LARGE_FILES_AT_ONCE: usize = 8;

/// A directory whose listing waits for its files.
struct PendingDir {
    cap: DirWriteCap,
    listing: Listing,
    files_left: usize,
}

/// One step of a tree upload.
enum Step {
    File {
        dir: usize,
        name: String,
        path: PathBuf,
        size: u64,
        mode: u32,
        mtime: (i64, u32),
    },
    /// A directory with no files: its listing is complete when scanned.
    Publish(usize),
}

/// Walks a local tree one directory at a time, as the uploads need steps.
/// Scanning a directory registers its listing (directories and symlinks
/// already in it) in `pending`, then yields its files.
struct Walk<'a> {
    stack: Vec<(PathBuf, DirWriteCap)>,
    queue: VecDeque<Step>,
    pending: &'a Mutex<HashMap<usize, PendingDir>>,
    next_dir: usize,
}

fn new_cap() -> DirWriteCap {
    DirWriteCap {
        seed: SlotSeed::generate(&mut rand::rng()),
    }
}

impl Walk<'_> {
    fn scan(&mut self, dir: &Path, cap: DirWriteCap) -> Result<()> {
        let index = self.next_dir;
        self.next_dir += 1;
        let mut listing = Listing::default();
        let mut files = Vec::new();
        let mut items: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
        items.sort_by_key(|e| e.file_name());
        for item in items {
            let name = item.file_name().into_string().map_err(|_| Error::BadName {
                name: item.path().to_string_lossy().into_owned(),
                reason: "not valid UTF-8",
            })?;
            let meta = std::fs::symlink_metadata(item.path())?;
            let mtime = mtime_of(&meta);
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
            if meta.file_type().is_symlink() {
                // Not made lossy: a link that changed its target on the
                // way up would point somewhere else, silently.
                let target = std::fs::read_link(item.path())?;
                let target = target
                    .to_str()
                    .ok_or_else(|| Error::BadTarget(item.path().display().to_string()))?;
                let entry = Entry::symlink(target, mtime);
                listing.entries.insert(name, entry);
            } else if meta.is_dir() {
                let child = new_cap();
                listing
                    .entries
                    .insert(name.clone(), Entry::dir(&cap, &name, &child, mode, mtime));
                self.stack.push((item.path(), child));
            } else if meta.is_file() {
                files.push(Step::File {
                    dir: index,
                    name,
                    path: item.path(),
                    size: meta.len(),
                    mode,
                    mtime,
                });
            } else {
                tracing::warn!(path = %item.path().display(), "skipping special file");
            }
        }
        if files.is_empty() {
            self.queue.push_back(Step::Publish(index));
        }
        let pending = PendingDir {
            cap,
            listing,
            files_left: files.len(),
        };
        self.pending
            .lock()
            .expect("pending lock")
            .insert(index, pending);
        self.queue.extend(files);
        Ok(())
    }
}

impl Iterator for Walk<'_> {
    type Item = Result<Step>;

    fn next(&mut self) -> Option<Result<Step>> {
        loop {
            if let Some(step) = self.queue.pop_front() {
                return Some(Ok(step));
            }
            let (dir, cap) = self.stack.pop()?;
            if let Err(e) = self.scan(&dir, cap) {
                self.stack.clear();
                return Some(Err(e));
            }
        }
    }
}

impl Vault {
    /// Upload a local directory tree as a new directory; returns its
    /// write-cap. Files, directories and symlinks are kept, with modes and
    /// modification times. Each directory's slot is written once, with its
    /// whole listing, after every file in it is stored; the returned cap
    /// is complete only when this returns `Ok`.
    pub async fn put_tree(&self, local: &Path) -> Result<DirWriteCap> {
        let top = new_cap();
        let pending = Mutex::new(HashMap::new());
        let walk = Walk {
            stack: vec![(local.to_path_buf(), top.clone())],
            queue: VecDeque::new(),
            pending: &pending,
            next_dir: 0,
        };
        let pending = &pending;
        let large = &tokio::sync::Semaphore::new(LARGE_FILES_AT_ONCE);
        let mut steps = futures_util::stream::iter(walk)
            .map(|step| async move { self.tree_step(step?, pending, large).await })
            .buffer_unordered(TREE_WINDOW);
        while let Some(done) = steps.next().await {
            done?;
        }
        Ok(top)
    }

    async fn tree_step(
        &self,
        step: Step,
        pending: &Mutex<HashMap<usize, PendingDir>>,
        large: &tokio::sync::Semaphore,
    ) -> Result<()> {
        let (dir, entry) = match step {
            Step::Publish(dir) => (dir, None),
            Step::File {
                dir,
                name,
                path,
                size,
                mode,
                mtime,
            } => {
                let _permit = match size > SMALL_FILE_BYTES {
                    true => Some(large.acquire().await.expect("never closed")),
                    false => None,
                };
                let cap = self.put_path(&path).await?;
                (dir, Some((name, Entry::file(cap, mode, mtime))))
            }
        };
        let complete = {
            let mut pending = pending.lock().expect("pending lock");
            let d = pending.get_mut(&dir).expect("a scanned directory");
            if let Some((name, entry)) = entry {
                d.listing.entries.insert(name, entry);
                d.files_left -= 1;
            }
            if d.files_left == 0 {
                pending.remove(&dir)
            } else {
                None
            }
        };
        if let Some(mut d) = complete {
            self.publish_dir(&d.cap, 1, &mut d.listing).await?;
        }
        Ok(())
    }
}
