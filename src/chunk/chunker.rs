//! Content-defined chunking.
//!
//! FastCDC (2020) finds cut points from a rolling gear hash, so an insert in
//! the middle of a file moves only the boundaries next to it and everything
//! else deduplicates. The gear table is keyed by a per-identity seed: chunk
//! sizes are visible to mirrors, and an unkeyed chunker would let anyone
//! fingerprint a known file by its sequence of sizes.

use std::io::Read;

use fastcdc::v2020::{FastCDC, Normalization};

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
    ///
    /// A longer input streams through a [`Window`].
    pub fn chunks<R: Read>(&self, mut reader: R) -> Chunks<R> {
        let mut head = Vec::new();
        let read = Read::by_ref(&mut reader)
            .take(self.min as u64 + 1)
            .read_to_end(&mut head);
        let state = match read {
            Err(e) => State::Whole(Some(Err(Error::Read(e)))),
            Ok(_) if head.len() <= self.min => State::Whole((!head.is_empty()).then_some(Ok(head))),
            Ok(_) => State::Stream(Window::new(*self, head, reader)),
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
    Stream(Window<R>),
}

/// Buffer of a streaming input, in maximum chunk sizes.
const WINDOW_CHUNKS: usize = 2;

/// FastCDC over a stream, through one buffer of `WINDOW_CHUNKS` maximum
/// chunks. A cut needs `max` bytes ahead of the chunk's start (or the end
/// of the input); once fewer are left, the rest moves to the front and the
/// buffer fills up again. fastcdc's own `StreamCDC` holds exactly `max`
/// bytes and shifts the rest to the front after every chunk: about three
/// bytes moved for each byte chunked, 4 % of the mount's CPU in a 1 GiB
/// write (perf). Here at most `max` bytes move per `max` chunked, usually
/// less. The cuts are FastCDC's own (`FastCDC::cut` over the window looks
/// at no more than `max` bytes), so they match `StreamCDC`'s exactly.
struct Window<R> {
    params: ChunkerParams,
    reader: R,
    buf: Vec<u8>,
    /// The unchunked bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Window<R> {
    /// A window over `head`, bytes already read, followed by `reader`.
    fn new(params: ChunkerParams, head: Vec<u8>, reader: R) -> Window<R> {
        // Zeroed by the allocator (fresh pages), not by a pass of ours.
        let mut buf = vec![0; head.len().max(params.max * WINDOW_CHUNKS)];
        let end = head.len();
        buf[..end].copy_from_slice(&head);
        Window {
            params,
            reader,
            buf,
            start: 0,
            end,
            eof: false,
        }
    }

    /// Move the unchunked bytes to the front and read until the buffer is
    /// full or the input ends.
    fn refill(&mut self) -> Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while !self.eof && self.end < self.buf.len() {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Read(e)),
            }
        }
        Ok(())
    }

    fn next_chunk(&mut self) -> Option<Result<Vec<u8>>> {
        if !self.eof
            && self.end - self.start < self.params.max
            && let Err(e) = self.refill()
        {
            return Some(Err(e));
        }
        let ahead = &self.buf[self.start..self.end];
        if ahead.is_empty() {
            return None;
        }
        let p = &self.params;
        let cdc =
            FastCDC::with_level_and_seed(ahead, p.min, p.avg, p.max, Normalization::Level1, p.seed);
        let (_, cut) = cdc.cut(0, ahead.len());
        let chunk = ahead[..cut].to_vec();
        self.start += cut;
        Some(Ok(chunk))
    }
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.state {
            State::Whole(only) => only.take(),
            State::Stream(window) => window.next_chunk(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcdc::v2020::StreamCDC;

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

    /// Reads a few bytes at a time, as a pipe or a growing file may.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Long inputs, whole or trickling in, cut exactly as fastcdc's
    /// `StreamCDC` cuts them (what every earlier upload was cut with).
    #[test]
    fn long_inputs_cut_as_streamcdc_does() {
        let p = ChunkerParams {
            min: 4096,
            avg: 16384,
            max: 65536,
            seed: 11,
        };
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..1_500_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        // Runs of zeros force cuts at `max`.
        let mut zeros = data.clone();
        zeros[300_000..700_000].fill(0);
        for input in [&data, &zeros] {
            for len in [4097, 65_536, 131_073, 200_000, 1_500_000] {
                let want = streamed(&p, &input[..len]);
                let whole: Vec<Vec<u8>> = p.chunks(&input[..len]).map(|c| c.unwrap()).collect();
                assert_eq!(whole, want, "len {len}");
                for step in [1000, 65_537] {
                    let got: Vec<Vec<u8>> = p
                        .chunks(Trickle(&input[..len], step))
                        .map(|c| c.unwrap())
                        .collect();
                    assert_eq!(got, want, "len {len}, {step} bytes per read");
                }
            }
        }
        assert!(streamed(&p, &zeros).iter().any(|c| c.len() == p.max));
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
