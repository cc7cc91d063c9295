//! Removal of evicted kept copies off the path that evicted them.
//!
//! The keep budget evicts the oldest kept copy when a newer one is kept:
//! at the end of an upload, inside whatever waited for it (an fsync, a
//! `lode sync`). Unlinking a large file is not free. On ext4 mounted with
//! `discard` and without a journal, as the disks of docs/PERFORMANCE.md
//! are, the unlink waits while the device trims every extent: 1 GiB took
//! 12 discards and 289 ms of device time, charged to the fsync of the
//! next 1 GiB write. A [`Remover`] hands such unlinks to a thread of its
//! own. The copies it is given are caches no node names any more, under
//! random names never used again, so removing them late harms nothing;
//! one left by a crash is removed by the next mount's recovery, as every
//! staged file without a note is.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};

/// Queued unlinks, done one at a time on a thread started with the first.
#[derive(Default)]
pub struct Remover {
    state: Mutex<State>,
    pending: Arc<Pending>,
}

#[derive(Default)]
struct State {
    /// To the thread; `None` before the first removal and once finished.
    tx: Option<mpsc::Sender<(PathBuf, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
    finished: bool,
}

/// Removals queued and done, shared with the thread.
#[derive(Default)]
struct Pending {
    counts: Mutex<Counts>,
    done: Condvar,
}

#[derive(Default)]
struct Counts {
    /// Removals ever queued, and ever done (in queue order).
    queued: u64,
    done: u64,
    /// Bytes of those queued and not yet done.
    bytes: u64,
}

impl Pending {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, bytes: u64) {
        let mut counts = self.counts();
        counts.queued += 1;
        counts.bytes = counts.bytes.saturating_add(bytes);
    }

    fn done(&self, bytes: u64) {
        let mut counts = self.counts();
        counts.done += 1;
        counts.bytes = counts.bytes.saturating_sub(bytes);
        self.done.notify_all();
    }
}

/// Counts a removal done when dropped, also if the removal panicked: a
/// count left behind would hold every later `wait` for good.
struct Done<'a>(&'a Pending, u64);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.done(self.1);
    }
}

impl Remover {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remove the staged copy `path`, of `bytes` (and its fill log, if it
    /// has one), soon, on the remover's thread; at once if the remover is
    /// finished or cannot start its thread.
    pub fn remove(&self, path: PathBuf, bytes: u64) {
        let mut state = self.lock();
        if !state.finished && state.tx.is_none() {
            let (tx, rx) = mpsc::channel::<(PathBuf, u64)>();
            let pending = Arc::clone(&self.pending);
            let spawned = std::thread::Builder::new()
                .name("lode-remove".into())
                .spawn(move || {
                    for (path, bytes) in rx {
                        let _done = Done(&pending, bytes);
                        super::partial::remove_staged(&path);
                    }
                });
            match spawned {
                Ok(thread) => {
                    state.tx = Some(tx);
                    state.thread = Some(thread);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the remover's thread");
                    state.finished = true;
                }
            }
        }
        let path = match &state.tx {
            Some(tx) => {
                self.pending.add(bytes);
                match tx.send((path, bytes)) {
                    Ok(()) => return,
                    // The thread is gone (it does not panic, but if it did).
                    Err(mpsc::SendError((back, _))) => {
                        self.pending.done(bytes);
                        state.tx = None;
                        state.finished = true;
                        back
                    }
                }
            }
            None => path,
        };
        drop(state);
        super::partial::remove_staged(&path);
    }

    /// Removals ever queued.
    #[cfg(test)]
    pub fn queued(&self) -> u64 {
        self.pending.counts().queued
    }

    /// Bytes of the copies queued and not yet removed: disk space that is
    /// about to come back.
    pub fn queued_bytes(&self) -> u64 {
        self.pending.counts().bytes
    }

    /// Wait until every removal queued before this call is done (not for
    /// those queued meanwhile, which could go on without end); returns
    /// whether there was any.
    pub fn wait(&self) -> bool {
        let mut counts = self.pending.counts();
        let target = counts.queued;
        let any = counts.done < target;
        while counts.done < target {
            counts = self
                .pending
                .done
                .wait(counts)
                .unwrap_or_else(|p| p.into_inner());
        }
        any
    }

    /// Do every queued removal and stop the thread: later removals are
    /// done at once, by their callers (at unmount, before the process
    /// ends).
    pub fn finish(&self) {
        let thread = {
            let mut state = self.lock();
            state.finished = true;
            state.tx = None;
            state.thread.take()
        };
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Remover {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_removals_are_done_by_wait_and_by_finish() {
        let dir = tempfile::tempdir().unwrap();
        let remover = Remover::default();
        let make = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, b"copy").unwrap();
            std::fs::write(super::super::partial::log_path(&p), b"log").unwrap();
            p
        };
        let first: Vec<PathBuf> = (0..20).map(|i| make(&format!("a{i}"))).collect();
        for p in &first {
            remover.remove(p.clone(), 4);
        }
        remover.wait();
        assert_eq!(remover.queued_bytes(), 0);
        for p in &first {
            assert!(!p.exists(), "{} not removed", p.display());
            assert!(!super::super::partial::log_path(p).exists());
        }
        let second = make("b");
        remover.remove(second.clone(), 4);
        remover.finish();
        assert!(!second.exists(), "finish left a queued removal undone");
        // Finished: a removal is done before `remove` returns.
        let third = make("c");
        remover.remove(third.clone(), 4);
        assert!(!third.exists(), "a removal after finish was left for later");
        let leftover: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftover.is_empty(), "{leftover:?}");
    }
}
