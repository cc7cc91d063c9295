//! Early uploads: a file written front to back starts going up to the
//! mirrors while it is still being written, so that close and fsync wait
//! only for its tail instead of for the whole file.
//!
//! A writer that starts at offset 0 of an empty file and only appends gets
//! an [`Early`] record. Once it has written [`START_BYTES`], an upload
//! starts: `Vault::put_reader` over a [`Growing`] reader of the staged file,
//! which hands out only bytes already written and waits for more.
//!
//! The first write that is not an append, a truncate, or a writer idle for
//! [`IDLE`] spoils the record: the reader fails, that upload stops, and the
//! file goes up the ordinary way later. The shares already sent are not
//! wasted: the ordinary upload finds them held (the claim in `Grid`), since
//! convergent encryption gives the same chunks the same shares.
//!
//! When the file is to be uploaded (the flusher after the last close, or
//! fsync), the record is sealed at the bytes appended so far; the reader
//! then ends there and the upload's cap is used, provided no write came in
//! since (the generation check of `LodeFs::upload`). The staged file is
//! the truth throughout: an early upload only ever saves work.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::caps::FileReadCap;

/// Bytes a file must have been written front to back before its upload
/// starts: smaller files go up whole once closed.
pub const START_BYTES: u64 = 8 << 20;
/// Early uploads running at once; others wait for a free place (and start
/// from the beginning of their file when they get one).
pub const MAX_RUNNING: usize = 2;
/// A writer that adds nothing for this long loses its early upload.
pub const IDLE: Duration = Duration::from_secs(30);

/// The result of an early upload, once it ends.
pub type Outcome = crate::store::Result<FileReadCap>;

#[derive(Default)]
struct State {
    /// Bytes written front to back so far.
    appended: u64,
    /// Set when the upload should end at this size.
    end: Option<u64>,
    spoiled: bool,
}

/// One file's early upload.
#[derive(Default)]
pub struct Early {
    state: Mutex<State>,
    moved: Condvar,
    /// The upload, once started.
    task: Mutex<Option<tokio::task::JoinHandle<Outcome>>>,
}

impl Early {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Note a write of `len` bytes at `offset`. Returns false (and spoils
    /// the record) unless it continues the file exactly where it ended.
    pub fn wrote(&self, offset: u64, len: u64) -> bool {
        let mut s = self.lock();
        let ok = !s.spoiled && s.end.is_none() && offset == s.appended;
        if ok {
            s.appended += len;
        } else {
            s.spoiled = true;
        }
        drop(s);
        self.moved.notify_all();
        ok
    }

    pub fn appended(&self) -> u64 {
        self.lock().appended
    }

    /// Give up: the reader fails and the upload stops.
    pub fn spoil(&self) {
        self.lock().spoiled = true;
        self.moved.notify_all();
    }

    /// End the upload at the bytes written so far; returns that size.
    pub fn seal(&self) -> u64 {
        let mut s = self.lock();
        let end = s.appended;
        s.end = Some(end);
        drop(s);
        self.moved.notify_all();
        end
    }

    pub fn started(&self) -> bool {
        self.task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub fn start(&self, task: tokio::task::JoinHandle<Outcome>) {
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// The upload's task, if it was started.
    pub fn take_task(&self) -> Option<tokio::task::JoinHandle<Outcome>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The early uploads of the mount, by inode.
#[derive(Default)]
pub struct Earlies {
    by_ino: Mutex<HashMap<u64, Arc<Early>>>,
}

impl Earlies {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Early>>> {
        self.by_ino.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Note a write to `ino` at `offset` of `len` bytes, the file having
    /// been `old_size` bytes before it. Returns the record if its upload
    /// should start now. Call with the tree locked, before the write's
    /// generation is counted, so that a sealed record never lacks a write
    /// its generation includes.
    pub fn wrote(&self, ino: u64, offset: u64, len: u64, old_size: u64) -> Option<Arc<Early>> {
        let mut map = self.lock();
        let early = match map.get(&ino) {
            Some(e) => {
                if !e.wrote(offset, len) {
                    map.remove(&ino);
                    return None;
                }
                e.clone()
            }
            None if offset == 0 && old_size == 0 => {
                let e = Arc::new(Early::default());
                e.wrote(0, len);
                map.insert(ino, e.clone());
                e
            }
            None => return None,
        };
        if early.started() || early.appended() < START_BYTES {
            return None;
        }
        // Counted only for a file big enough to start: the map holds every
        // file written since its last upload (thousands, in an untar), and
        // counting on each write made small writes quadratic.
        let running = map.values().filter(|e| e.started()).count();
        (running < MAX_RUNNING).then_some(early)
    }

    /// Take `ino`'s record out (to seal or to drop it).
    pub fn take(&self, ino: u64) -> Option<Arc<Early>> {
        self.lock().remove(&ino)
    }

    /// Drop `ino`'s record, stopping its upload (a truncate, an unlink).
    pub fn spoil(&self, ino: u64) {
        if let Some(e) = self.take(ino) {
            e.spoil();
        }
    }

    /// Drop (and stop) the records of inodes `keep` says no: files gone
    /// from the tree, or orphans no writer holds open. Nothing else takes
    /// those out, and each one started holds one of the `MAX_RUNNING`
    /// places for good.
    pub fn retain(&self, mut keep: impl FnMut(u64) -> bool) {
        self.lock().retain(|&ino, e| {
            let kept = keep(ino);
            if !kept {
                e.spoil();
            }
            kept
        });
    }

    /// Records held (started or not).
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.lock().len()
    }

    /// Whether `ino` has a record whose upload started.
    #[cfg(test)]
    pub fn started(&self, ino: u64) -> bool {
        self.lock().get(&ino).is_some_and(|e| e.started())
    }

    /// Stop every early upload (unmount).
    pub fn spoil_all(&self) {
        for (_, e) in self.lock().drain() {
            e.spoil();
        }
    }
}

/// Reads a staged file as it grows, up to where its [`Early`] is sealed.
pub struct Growing {
    file: std::fs::File,
    early: Arc<Early>,
    pos: u64,
}

impl Growing {
    pub fn new(file: std::fs::File, early: Arc<Early>) -> Growing {
        Growing {
            file,
            early,
            pos: 0,
        }
    }
}

impl Read for Growing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = {
            let mut s = self.early.lock();
            loop {
                if s.spoiled {
                    return Err(std::io::Error::other(
                        "early upload abandoned: the file changed other than by appending",
                    ));
                }
                if s.appended > self.pos {
                    let limit = s.end.unwrap_or(s.appended).min(s.appended);
                    break (limit - self.pos).min(buf.len() as u64) as usize;
                }
                if s.end.is_some() {
                    return Ok(0);
                }
                let (next, waited) = self
                    .early
                    .moved
                    .wait_timeout(s, IDLE)
                    .unwrap_or_else(|p| p.into_inner());
                s = next;
                if waited.timed_out() && s.appended <= self.pos && s.end.is_none() {
                    s.spoiled = true;
                }
            }
        };
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::Error::other(
                "early upload: the staged file is shorter than what was written",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(bytes: &[u8]) -> (tempfile::NamedTempFile, std::fs::File) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), bytes).unwrap();
        let file = std::fs::File::open(tmp.path()).unwrap();
        (tmp, file)
    }

    #[test]
    fn reader_waits_for_appends_and_ends_at_the_seal() {
        let data: Vec<u8> = (0..100u8).collect();
        let (_tmp, file) = staged(&data);
        let early = Arc::new(Early::default());
        assert!(early.wrote(0, 40));
        let mut reader = Growing::new(file, early.clone());
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).map(|_| out)
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(early.wrote(40, 60));
        assert_eq!(early.seal(), 100);
        assert_eq!(handle.join().unwrap().unwrap(), data);
    }

    #[test]
    fn a_write_that_is_not_an_append_fails_the_reader() {
        let (_tmp, file) = staged(&[7; 64]);
        let early = Arc::new(Early::default());
        assert!(early.wrote(0, 32));
        let mut reader = Growing::new(file, early.clone());
        let mut buf = [0; 64];
        assert_eq!(reader.read(&mut buf).unwrap(), 32);
        assert!(!early.wrote(8, 8), "an overwrite is not an append");
        assert!(reader.read(&mut buf).is_err());
        assert!(!early.wrote(32, 8), "a spoiled record stays spoiled");
    }

    #[test]
    fn uploads_start_past_the_threshold_and_only_for_fresh_files() {
        let earlies = Earlies::default();
        assert!(earlies.wrote(1, 0, 4096, 0).is_none());
        assert!(earlies.wrote(1, 4096, START_BYTES, 4096).is_some());
        // A file that had content before is not uploaded early.
        assert!(earlies.wrote(2, 10, START_BYTES, 10).is_none());
        assert!(earlies.take(2).is_none());
        // Past the limit of running uploads, a record waits.
        let rt = tokio::runtime::Runtime::new().unwrap();
        for ino in 3..3 + MAX_RUNNING as u64 {
            let e = earlies.wrote(ino, 0, START_BYTES, 0).expect("starts");
            e.start(
                rt.spawn(async { Err(crate::store::Error::Io(std::io::Error::other("test"))) }),
            );
        }
        assert!(earlies.wrote(99, 0, START_BYTES, 0).is_none());
    }
}
