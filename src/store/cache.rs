//! An LRU cache of verified plaintext chunks, bounded in bytes, and the
//! form such a chunk takes ([`Plain`]).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use lru::LruCache;

use crate::chunk::ShareId;

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
pub struct ChunkCache {
    entries: LruCache<ShareId, Plain>,
    bytes: usize,
    budget: usize,
}

impl ChunkCache {
    pub fn new(budget: usize) -> ChunkCache {
        ChunkCache {
            entries: LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    pub fn get(&mut self, key: &ShareId) -> Option<Plain> {
        self.entries.get(key).cloned()
    }

    pub fn insert(&mut self, key: ShareId, chunk: Plain) {
        if chunk.len() > self.budget {
            return;
        }
        self.bytes += chunk.len();
        if let Some(old) = self.entries.put(key, chunk) {
            self.bytes -= old.len();
        }
        while self.bytes > self.budget {
            match self.entries.pop_lru() {
                Some((_, evicted)) => self.bytes -= evicted.len(),
                None => break,
            }
        }
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
        c.insert([4; 32], Plain::from(vec![0; 101]));
        assert!(
            c.get(&[4; 32]).is_none(),
            "larger than the budget is not cached"
        );
        c.insert([3; 32], Plain::from(vec![0; 10]));
        assert_eq!(c.bytes(), 50);
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
