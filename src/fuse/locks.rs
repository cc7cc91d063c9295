//! Per-inode locks for work that may wait on the disk or the network:
//! one inode held blocks only that inode, whatever its number.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};

/// The inodes held, and a signal for those waiting on one.
#[derive(Default)]
pub struct InodeLocks {
    held: Mutex<HashSet<u64>>,
    freed: Condvar,
}

/// Holds one inode of an [`InodeLocks`] until dropped (also when the
/// holder panics).
pub struct InodeGuard<'a> {
    locks: &'a InodeLocks,
    ino: u64,
}

impl InodeLocks {
    /// Hold `ino`, once whoever holds it lets go. Not reentrant: a thread
    /// that holds `ino` and asks again waits for itself.
    pub fn lock(&self, ino: u64) -> InodeGuard<'_> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while !held.insert(ino) {
            held = self.freed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        InodeGuard { locks: self, ino }
    }
}

impl Drop for InodeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&self.ino);
        drop(held);
        // Waiters on other inodes wake and wait again: few ever wait.
        self.locks.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Two inodes never wait on each other (sharded by number, 1 and 65
    /// shared a lock), and one inode is held by one thread at a time,
    /// panic or not.
    #[test]
    fn an_inode_waits_only_for_itself() {
        let locks = InodeLocks::default();
        let l = &locks;
        std::thread::scope(|s| {
            let one = l.lock(1);
            let (tx, rx) = mpsc::channel();
            let other = s.spawn({
                let (locks, tx) = (l, tx.clone());
                move || {
                    let _g = locks.lock(65);
                    tx.send(65).unwrap();
                }
            });
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(65));
            other.join().unwrap();
            let same = s.spawn(move || {
                let _g = l.lock(1);
                tx.send(1).unwrap();
            });
            assert!(
                rx.recv_timeout(Duration::from_millis(200)).is_err(),
                "inode 1 was taken twice"
            );
            drop(one);
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(1));
            same.join().unwrap();
        });
        let panicked = std::thread::scope(|s| {
            s.spawn(|| {
                let _g = l.lock(7);
                panic!("a holder panics");
            })
            .join()
        });
        assert!(panicked.is_err());
        drop(locks.lock(7));
        assert!(locks.held.lock().unwrap().is_empty());
    }
}
