//! Shared setup for lode's integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use lode::crypto::RootSecret;
use lode::store::{Grid, GridConfig, MemoryStorage, Storage, Vault};
use sha2::{Digest, Sha256};

/// Deterministic pseudo-random bytes: SHA-256 in counter mode over `seed`.
/// Stable across crate versions, unlike a library RNG's stream.
pub fn seeded_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed.as_bytes());
        h.update(counter.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

pub fn secret(byte: u8) -> RootSecret {
    RootSecret::from_bytes([byte; 32])
}

/// A vault over one in-memory store, 1-of-1.
pub fn single(byte: u8) -> (Vault, Arc<MemoryStorage>) {
    let store = Arc::new(MemoryStorage::new());
    (Vault::single(&secret(byte), store.clone()), store)
}

/// A vault over three in-memory mirrors, 2-of-3, happy 3.
pub fn grid3(byte: u8) -> (Vault, Vec<Arc<MemoryStorage>>) {
    let stores: Vec<Arc<MemoryStorage>> = (0..3)
        .map(|i| Arc::new(MemoryStorage::named(&format!("mem{i}"))))
        .collect();
    let dyns: Vec<Arc<dyn Storage>> = stores
        .iter()
        .map(|s| s.clone() as Arc<dyn Storage>)
        .collect();
    let grid = Grid::new(dyns, GridConfig::default()).expect("valid grid");
    (Vault::new(&secret(byte), grid), stores)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
