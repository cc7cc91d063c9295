//! Content-defined chunking.
//!
//! FastCDC (2020) finds cut points from a rolling gear hash, so an insert in
//! the middle of a file moves only the boundaries next to it and everything
//! else deduplicates. The gear table is keyed by a per-identity seed: chunk
//! sizes are visible to mirrors, and an unkeyed chunker would let anyone
//! fingerprint a known file by its sequence of sizes.

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};

use super::{Error, Result};

/// Chunk size bounds and the gear seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
    pub seed: u64,
}

impl ChunkerParams {
    /// 256 KiB min, 1 MiB average, 4 MiB max.
    pub fn new(seed: u64) -> Self {
        Self {
            min: 256 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
            seed,
        }
    }

    /// Split `reader` into chunks. Memory use is bounded by `max`.
    pub fn chunks<R: Read>(&self, reader: R) -> Chunks<R> {
        Chunks {
            inner: StreamCDC::with_level_and_seed(
                reader,
                self.min,
                self.avg,
                self.max,
                Normalization::Level1,
                self.seed,
            ),
        }
    }
}

/// An iterator of chunk plaintexts, in file order.
pub struct Chunks<R: Read> {
    inner: StreamCDC<R>,
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|r| {
            r.map(|c| c.data)
                .map_err(|e| Error::Read(std::io::Error::from(e)))
        })
    }
}
