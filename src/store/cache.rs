//! An LRU cache of verified plaintext chunks, bounded in bytes (or by its
//! two newest chunks, if they are larger), whose entries also leave once
//! idle, and the form such a chunk takes ([`Plain`]).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lru::LruCache;

use crate::chunk::ShareId;

/// Entries kept however far past the budget they go (see
/// `ChunkCache::insert_at`).
const KEPT_WHATEVER_SIZE: usize = 2;

/// A verified chunk's plaintext, shared by the cache and its readers: its
/// bytes in order, in one or more buffers (a chunk opened from its data
/// shares keeps each share's buffer, see
/// `chunk::share::open_verified_chunk_parts`). Clones share the buffers.
#[derive(Clone, Default)]
pub struct Plain {
    parts: Arc<[Bytes]>,
    len: usize,
}

impl Plain {
    pub fn new(parts: Vec<Bytes>) -> Plain {
        let len = parts.iter().map(Bytes::len).sum();
        Plain {
            parts: parts.into(),
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffers, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The bytes in `range` (clamped to the chunk), as slices of the
    /// buffers: nothing is copied.
    pub fn slices(&self, range: Range<usize>) -> impl Iterator<Item = Bytes> + '_ {
        let mut start = 0;
        self.parts.iter().filter_map(move |part| {
            let (lo, hi) = (start, start + part.len());
            start = hi;
            let from = range.start.clamp(lo, hi);
            let to = range.end.clamp(lo, hi);
            (from < to).then(|| part.slice(from - lo..to - lo))
        })
    }
}

impl From<Vec<u8>> for Plain {
    fn from(bytes: Vec<u8>) -> Plain {
        Plain::new(vec![Bytes::from(bytes)])
    }
}

/// Chunks keyed by their first share id (unique per chunk and identity).
/// Only verified, decrypted chunks go in, so a hit needs no re-check.
/// Each entry keeps when it was last put or got, and whether it was ever
/// got: see [`ChunkCache::expire_idle`].
pub struct ChunkCache {
    entries: LruCache<ShareId, Entry>,
    bytes: usize,
    budget: usize,
}

struct Entry {
    plain: Plain,
    touched: Instant,
    /// Got since it was put, or put for a reader that had it then. A
    /// chunk fetched ahead of its reader is not, until the reader reaches
    /// it.
    read: bool,
}

/// How many times [`ChunkCache::expire_idle`]'s idle time a chunk no one
/// has read yet stays: readahead runs up to 32 MiB ahead, and a reader of
/// audio or video reaches it minutes later. Expired after the idle time
/// alone, every chunk such a reader read was fetched twice.
const UNREAD_SPAN: u32 = 10;

impl ChunkCache {
    pub fn new(budget: usize) -> ChunkCache {
        ChunkCache {
            entries: LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    pub fn get(&mut self, key: &ShareId) -> Option<Plain> {
        self.get_at(key, Instant::now())
    }

    fn get_at(&mut self, key: &ShareId, now: Instant) -> Option<Plain> {
        let entry = self.entries.get_mut(key)?;
        entry.touched = now;
        entry.read = true;
        Some(entry.plain.clone())
    }

    /// Put a chunk fetched ahead of its reader: not read yet.
    pub fn insert(&mut self, key: ShareId, chunk: Plain) {
        self.put(key, chunk, false, Instant::now());
    }

    /// Put a chunk fetched for a reader that has it now: read.
    pub fn insert_got(&mut self, key: ShareId, chunk: Plain) {
        self.put(key, chunk, true, Instant::now());
    }

    /// Move `key`, if held, to the front of the LRU order and count it
    /// used now, without counting it read; returns whether it is held.
    /// Readahead does this to the chunks ahead of a reader that it finds
    /// already held: by recency alone, the chunk the reader just finished
    /// (got by each of its reads until then) outranked the chunks fetched
    /// for it while it was still there, and the next one was evicted for
    /// it, to be fetched again when the reader got there.
    pub fn touch(&mut self, key: &ShareId) -> bool {
        self.touch_at(key, Instant::now())
    }

    fn touch_at(&mut self, key: &ShareId, now: Instant) -> bool {
        match self.entries.get_mut(key) {
            Some(entry) => {
                entry.touched = now;
                true
            }
            None => false,
        }
    }

    /// Move `key`, if held, to the back of the LRU order: the first to
    /// go when room is needed (a chunk its reader finished).
    pub fn demote(&mut self, key: &ShareId) {
        self.entries.demote(key);
    }

    #[cfg(test)]
    fn insert_at(&mut self, key: ShareId, chunk: Plain, now: Instant) {
        self.put(key, chunk, false, now);
    }

    fn put(&mut self, key: ShareId, chunk: Plain, read: bool, now: Instant) {
        self.bytes += chunk.len();
        let entry = Entry {
            plain: chunk,
            touched: now,
            read,
        };
        if let Some(old) = self.entries.put(key, entry) {
            self.bytes -= old.plain.len();
        }
        // The two newest stay whatever their size: the chunk being read
        // and the one read ahead of it. With our own chunks (8 MiB at
        // most, the budget 16 MiB or more) that changes nothing; a
        // friend's written by another client with larger chunks or a
        // larger k (up to k × 16 MiB) was not cached at all when larger
        // than the budget, and each 128 KiB read of it fetched and
        // decrypted the whole chunk again.
        while self.bytes > self.budget && self.entries.len() > KEPT_WHATEVER_SIZE {
            match self.entries.pop_lru() {
                Some((_, evicted)) => self.bytes -= evicted.plain.len(),
                None => break,
            }
        }
    }

    /// Drop the chunks read and then left for `idle` or longer, and
    /// those never read for [`UNREAD_SPAN`] times that: a mount that read
    /// a large file keeps its chunks only while they are in use, not for
    /// the rest of its life beside whatever it does next (the kernel's
    /// page cache holds what is read again soon). Returns the bytes
    /// dropped.
    pub fn expire_idle(&mut self, idle: Duration) -> usize {
        self.expire_idle_at(idle, Instant::now())
    }

    fn expire_idle_at(&mut self, idle: Duration, now: Instant) -> usize {
        // A few entries (the budget over a chunk's size): all looked at.
        let over = self.bytes > self.budget;
        let gone: Vec<ShareId> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                // Past the budget (chunks larger than it, kept anyway), an
                // unread one is given no longer than a read one.
                let allowed = if e.read || over {
                    idle
                } else {
                    idle * UNREAD_SPAN
                };
                now.saturating_duration_since(e.touched) >= allowed
            })
            .map(|(key, _)| *key)
            .collect();
        let mut dropped = 0;
        for key in gone {
            if let Some(e) = self.entries.pop(&key) {
                dropped += e.plain.len();
            }
        }
        self.bytes -= dropped;
        dropped
    }

    /// The bytes it keeps within (see [`ChunkCache::insert`] for the two
    /// newest chunks, kept past it).
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_and_evicts_least_recent() {
        let mut c = ChunkCache::new(100);
        c.insert([1; 32], Plain::from(vec![0; 40]));
        c.insert([2; 32], Plain::from(vec![0; 40]));
        assert!(c.get(&[1; 32]).is_some()); // 1 is now most recent
        c.insert([3; 32], Plain::from(vec![0; 40]));
        assert!(c.bytes() <= 100);
        assert!(c.get(&[2; 32]).is_none(), "least recently used is evicted");
        assert!(c.get(&[1; 32]).is_some() && c.get(&[3; 32]).is_some());
        c.insert([3; 32], Plain::from(vec![0; 10]));
        assert_eq!(c.bytes(), 50);
    }

    /// A reader finishes chunk 1 (got by each of its reads) after chunk
    /// 2 was fetched ahead of it; readahead then touches 2 as it fetches
    /// 4, so 1 goes, not 2. Touched, 2 is not counted read: it keeps an
    /// unread chunk's stay. A chunk fetched for its reader is read.
    #[test]
    fn chunks_touched_ahead_outlast_chunks_read() {
        let t0 = Instant::now();
        let secs = |s| t0 + Duration::from_secs(s);
        let mut c = ChunkCache::new(100);
        c.put([1; 32], Plain::from(vec![0; 30]), true, t0);
        c.insert_at([2; 32], Plain::from(vec![0; 30]), secs(1));
        assert!(c.get_at(&[1; 32], secs(2)).is_some());
        c.insert_at([3; 32], Plain::from(vec![0; 30]), secs(3));
        assert!(c.get_at(&[3; 32], secs(4)).is_some());
        assert!(c.touch_at(&[2; 32], secs(5)));
        assert!(!c.touch_at(&[9; 32], secs(5)), "not held");
        c.insert_at([4; 32], Plain::from(vec![0; 30]), secs(5));
        assert_eq!(c.bytes(), 90);
        assert!(!c.entries.contains(&[1; 32]), "the finished chunk went");
        // 3 read at 4 s, 2 touched at 5 s and never read: at 4 s + 60 s
        // only 3 is idle long enough.
        let idle = Duration::from_secs(60);
        assert_eq!(c.expire_idle_at(idle, secs(64)), 30);
        assert!(c.entries.contains(&[2; 32]) && !c.entries.contains(&[3; 32]));
        assert_eq!(c.expire_idle_at(idle, secs(5) + idle * UNREAD_SPAN), 60);
        c.insert_got([5; 32], Plain::from(vec![0; 10]));
        assert!(c.entries.peek(&[5; 32]).is_some_and(|e| e.read));
        // Demoted (finished by its reader), the newest goes first.
        c.insert_at([6; 32], Plain::from(vec![0; 40]), secs(2000));
        c.demote(&[6; 32]);
        c.insert_at([7; 32], Plain::from(vec![0; 60]), secs(2000));
        assert!(!c.entries.contains(&[6; 32]) && c.entries.contains(&[5; 32]));
    }

    /// Chunks larger than the whole budget are kept, the two newest, so
    /// that a read of one and the read ahead of the next both hit; the
    /// others go, and the budget holds again once small ones come.
    #[test]
    fn the_two_newest_stay_whatever_their_size() {
        let mut c = ChunkCache::new(100);
        c.insert([1; 32], Plain::from(vec![0; 40]));
        c.insert([2; 32], Plain::from(vec![0; 150]));
        assert_eq!(c.bytes(), 190, "the newest two are kept");
        c.insert([3; 32], Plain::from(vec![0; 150]));
        assert!(c.get(&[2; 32]).is_some() && c.get(&[3; 32]).is_some());
        assert!(c.get(&[1; 32]).is_none());
        assert_eq!(c.bytes(), 300);
        for k in 4..8u8 {
            c.insert([k; 32], Plain::from(vec![0; 30]));
        }
        assert!(c.get(&[2; 32]).is_none() && c.get(&[3; 32]).is_none());
        assert_eq!(c.bytes(), 90);
        // Past the budget, chunks never read leave once idle as read ones
        // do (not ten times later): a friend's chunk may be 1 GiB.
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        let mut c = ChunkCache::new(100);
        c.insert_at([1; 32], Plain::from(vec![0; 150]), t0);
        c.insert_at([2; 32], Plain::from(vec![0; 150]), t0);
        assert_eq!(c.expire_idle_at(idle, t0 + idle / 2), 0);
        assert_eq!(c.expire_idle_at(idle, t0 + idle), 300);
        // Within it, they keep their longer time.
        c.insert_at([3; 32], Plain::from(vec![0; 50]), t0);
        assert_eq!(c.expire_idle_at(idle, t0 + idle * 2), 0);
    }

    #[test]
    fn idle_chunks_leave_and_used_ones_stay() {
        let t0 = Instant::now();
        let secs = |s| t0 + Duration::from_secs(s);
        let idle = Duration::from_secs(60);
        let mut c = ChunkCache::new(1000);
        c.insert_at([1; 32], Plain::from(vec![1; 40]), t0);
        c.insert_at([2; 32], Plain::from(vec![2; 30]), secs(10));
        c.insert_at([3; 32], Plain::from(vec![3; 20]), secs(20));
        // Each read once when put (the idle time counts from the read).
        for (key, at) in [([1; 32], 0), ([2; 32], 10), ([3; 32], 20)] {
            assert!(c.get_at(&key, secs(at)).is_some());
        }
        // Read at 50 s: chunk 1 is in use again.
        assert!(c.get_at(&[1; 32], secs(50)).is_some());
        assert_eq!(
            c.expire_idle_at(idle, secs(59)),
            0,
            "none idle a minute yet"
        );
        assert_eq!(c.bytes(), 90);
        // At 75 s, 2 (put at 10) has been idle 65 s; 3 (put at 20) 55 s.
        assert_eq!(c.expire_idle_at(idle, secs(75)), 30);
        assert!(c.get_at(&[2; 32], secs(75)).is_none());
        assert_eq!(c.bytes(), 60);
        // 3 was not got by that look at 2: at 81 s it has been idle 61 s,
        // 1 (got at 50) 31 s.
        assert_eq!(c.expire_idle_at(idle, secs(81)), 20);
        assert_eq!(c.get_at(&[1; 32], secs(81)).map(|p| p.len()), Some(40));
        assert_eq!(c.expire_idle_at(idle, secs(1000)), 40);
        assert_eq!(c.bytes(), 0);
        // Empty, it stays usable.
        c.insert_at([4; 32], Plain::from(vec![4; 10]), secs(1000));
        assert_eq!(c.bytes(), 10);
    }

    /// A chunk fetched ahead of a slow reader waits for it far longer
    /// than one already read; once read, it is idle from then.
    #[test]
    fn a_chunk_read_ahead_waits_for_its_reader() {
        let t0 = Instant::now();
        let secs = |s| t0 + Duration::from_secs(s);
        let idle = Duration::from_secs(60);
        let mut c = ChunkCache::new(1000);
        c.insert_at([1; 32], Plain::from(vec![1; 40]), t0);
        c.insert_at([2; 32], Plain::from(vec![2; 30]), t0);
        assert!(c.get_at(&[1; 32], secs(1)).is_some());
        // At 100 s the read one has gone, the unread one (behind it in
        // LRU order) stays.
        assert_eq!(c.expire_idle_at(idle, secs(100)), 40);
        assert_eq!(c.bytes(), 30);
        assert!(c.get_at(&[2; 32], secs(500)).is_some(), "still there");
        assert_eq!(c.expire_idle_at(idle, secs(559)), 0);
        assert_eq!(c.expire_idle_at(idle, secs(560)), 30);
        // Never read: gone after ten times the idle time.
        c.insert_at([3; 32], Plain::from(vec![3; 20]), secs(1000));
        assert_eq!(c.expire_idle_at(idle, secs(1599)), 0);
        assert_eq!(c.expire_idle_at(idle, secs(1600)), 20);
    }

    #[test]
    fn slices_of_a_chunk_in_parts() {
        let plain = Plain::new(vec![
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from_static(b"defg"),
        ]);
        assert_eq!(plain.len(), 7);
        let cut =
            |r: Range<usize>| -> Vec<Vec<u8>> { plain.slices(r).map(|b| b.to_vec()).collect() };
        assert_eq!(cut(0..7), vec![b"abc".to_vec(), b"defg".to_vec()]);
        assert_eq!(cut(1..2), vec![b"b".to_vec()]);
        assert_eq!(cut(2..5), vec![b"c".to_vec(), b"de".to_vec()]);
        assert_eq!(cut(3..7), vec![b"defg".to_vec()]);
        assert_eq!(cut(5..100), vec![b"fg".to_vec()]);
        assert!(cut(3..3).is_empty());
        assert!(cut(9..12).is_empty());
    }
}
