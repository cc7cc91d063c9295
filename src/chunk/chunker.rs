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

    /// Split `reader` into chunks, in order. Memory use is bounded by `max`.
    ///
    /// An input no longer than `min` is one chunk whatever its content (the
    /// cut FastCDC would make too), so it is read into a buffer of its own
    /// size and never reaches the streaming chunker, which zeroes a `max`
    /// (4 MiB) buffer for every input: for a small file that zeroing cost
    /// more than sealing and uploading it (perf: 7 % of the mount's CPU,
    /// most of it `memset`, while 3,000 small files went up).
    pub fn chunks<R: Read>(&self, mut reader: R) -> Chunks<R> {
        let mut head = Vec::new();
        let read = Read::by_ref(&mut reader)
            .take(self.min as u64 + 1)
            .read_to_end(&mut head);
        let state = match read {
            Err(e) => State::Whole(Some(Err(Error::Read(e)))),
            Ok(_) if head.len() <= self.min => State::Whole((!head.is_empty()).then_some(Ok(head))),
            Ok(_) => State::Stream(StreamCDC::with_level_and_seed(
                std::io::Cursor::new(head).chain(reader),
                self.min,
                self.avg,
                self.max,
                Normalization::Level1,
                self.seed,
            )),
        };
        Chunks { state }
    }
}

/// An iterator of chunks (see [`ChunkerParams::chunks`]).
pub struct Chunks<R: Read> {
    state: State<R>,
}

enum State<R: Read> {
    /// A short input: its only chunk, if any (or the error reading it).
    Whole(Option<Result<Vec<u8>>>),
    Stream(StreamCDC<std::io::Chain<std::io::Cursor<Vec<u8>>, R>>),
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.state {
            State::Whole(only) => only.take(),
            State::Stream(cdc) => cdc.next().map(|r| {
                r.map(|c| c.data)
                    .map_err(|e| Error::Read(std::io::Error::from(e)))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the streaming chunker alone cuts.
    fn streamed(p: &ChunkerParams, data: &[u8]) -> Vec<Vec<u8>> {
        StreamCDC::with_level_and_seed(data, p.min, p.avg, p.max, Normalization::Level1, p.seed)
            .map(|c| c.unwrap().data)
            .collect()
    }

    /// The short-input path cuts exactly what FastCDC cuts, at every size
    /// around the switch, so caps and deduplication do not depend on it.
    #[test]
    fn short_inputs_cut_as_fastcdc_does() {
        let p = ChunkerParams {
            min: 4096,
            avg: 16384,
            max: 65536,
            seed: 7,
        };
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [
            0, 1, 100, 4095, 4096, 4097, 4098, 20_000, 65_536, 65_537, 200_000,
        ] {
            let ours: Vec<Vec<u8>> = p.chunks(&data[..len]).map(|c| c.unwrap()).collect();
            assert_eq!(ours, streamed(&p, &data[..len]), "len {len}");
        }
    }

    /// A read error surfaces as the first item, whichever path it hits.
    #[test]
    fn read_errors_are_items() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk gone"))
            }
        }
        let mut chunks = ChunkerParams::new(1).chunks(Broken);
        assert!(matches!(chunks.next(), Some(Err(Error::Read(_)))));
    }
}
