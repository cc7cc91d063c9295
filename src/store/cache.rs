//! An LRU cache of verified plaintext chunks, bounded in bytes.

use std::sync::Arc;

use lru::LruCache;

use crate::chunk::ShareId;

/// Chunks keyed by their first share id (unique per chunk and identity).
/// Only verified, decrypted chunks go in, so a hit needs no re-check.
pub struct ChunkCache {
    entries: LruCache<ShareId, Arc<Vec<u8>>>,
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

    pub fn get(&mut self, key: &ShareId) -> Option<Arc<Vec<u8>>> {
        self.entries.get(key).cloned()
    }

    pub fn insert(&mut self, key: ShareId, chunk: Arc<Vec<u8>>) {
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
        c.insert([1; 32], Arc::new(vec![0; 40]));
        c.insert([2; 32], Arc::new(vec![0; 40]));
        assert!(c.get(&[1; 32]).is_some()); // 1 is now most recent
        c.insert([3; 32], Arc::new(vec![0; 40]));
        assert!(c.bytes() <= 100);
        assert!(c.get(&[2; 32]).is_none(), "least recently used is evicted");
        assert!(c.get(&[1; 32]).is_some() && c.get(&[3; 32]).is_some());
        c.insert([4; 32], Arc::new(vec![0; 101]));
        assert!(
            c.get(&[4; 32]).is_none(),
            "larger than the budget is not cached"
        );
        c.insert([3; 32], Arc::new(vec![0; 10]));
        assert_eq!(c.bytes(), 50);
    }
}
