//! Content-defined chunking.
//!
//! FastCDC (2020) finds cut points from a rolling gear hash, so an insert in
//! the middle of a file moves only the boundaries next to it and everything
//! else deduplicates. The gear table is keyed by a per-identity seed: chunk
//! sizes are visible to mirrors, and an unkeyed chunker would let anyone
//! fingerprint a known file by its sequence of sizes.

use std::io::Read;

pub use fastcdc::v2020::Normalization;

use super::gear::Gear;
use super::{Error, Result};

/// Chunk size bounds and the gear seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
    /// How tightly sizes gather around `avg` (FastCDC's levels 0 to 3).
    pub normalization: Normalization,
    pub seed: u64,
}

impl ChunkerParams {
    /// 1 MiB min, 4 MiB average, 8 MiB max, FastCDC's normalization
    /// level 2: over 512 MiB of random bytes, 110 chunks of 4.65 MiB on
    /// average, 80 % of them between 3 and 6 MiB, 3 % cut at the max.
    ///
    /// Large for a chunker (restic averages 1 MiB, Kopia 4 MiB) because
    /// every chunk costs each of its `n` mirrors a request, a file, an
    /// fsync and a ledger row: with 1 MiB chunks that per-share work was
    /// 40 % of what three mirrors spent storing a GiB, and a read paid a
    /// request per 512 KiB (docs/PERFORMANCE.md, "Larger chunks"). The
    /// narrow spread keeps the max, and with it the chunker's window and
    /// the chunks in flight, small: the mount's memory while writing is
    /// bounded (issue 5: 256 MiB). The price is coarser deduplication and
    /// a random read that fetches a whole chunk; a file up to `min` is
    /// still one chunk of its own size.
    pub fn new(seed: u64) -> Self {
        Self {
            min: 1024 * 1024,
            avg: 4 * 1024 * 1024,
            max: 8 * 1024 * 1024,
            normalization: Normalization::Level2,
            seed,
        }
    }

    /// Split `reader` into chunks, in order. Memory use is bounded by `max`.
    ///
    /// An input no longer than `min` is one chunk whatever its content (the
    /// cut FastCDC would make too), so it is read into a buffer of its own
    /// size and never reaches the streaming chunker, which sets up a gear
    /// table and a `max`-sized buffer per input (an earlier chunker zeroed
    /// that buffer: for a small file it cost more than sealing and
    /// uploading it, 7 % of the mount's CPU while 3,000 small files went
    /// up).
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

/// Bytes a streaming chunker reads at a time, at most.
const READ_STEP: usize = 256 << 10;

/// FastCDC over a stream, straight into each chunk's own buffer. The
/// chunk's bytes are read `READ_STEP` at a time and searched for a cut as
/// they come ([`Gear::search`] goes on where it stopped); at a cut, only
/// the bytes read past it (under `READ_STEP`) move to the next chunk's
/// buffer, and the chunk leaves as it is. The window this replaced read
/// `max` bytes ahead and copied every chunk out of it, a second copy of
/// every byte (docs/PERFORMANCE.md, "The chunker reads into each chunk's
/// own buffer"). A step of 256 KiB rather than 1 MiB leaves less read past
/// each cut in the chunk's pages: the mount's peak memory writing 4 GiB
/// stayed where it was. The cuts are FastCDC's own, so they match
/// `StreamCDC`'s exactly: a step's masks depend only on whether it lies
/// before `avg` (FastCDC moves that edge to a shorter input's end, but
/// every step of such an input lies before it anyway).
struct Window<R> {
    params: ChunkerParams,
    gear: Gear,
    reader: R,
    /// The next chunk's bytes read so far, with room for `max`.
    buf: Vec<u8>,
    /// Two-byte steps of `buf` searched without a cut.
    searched: usize,
    eof: bool,
}

impl<R: Read> Window<R> {
    /// A window over `head`, bytes already read, followed by `reader`.
    fn new(params: ChunkerParams, mut head: Vec<u8>, reader: R) -> Window<R> {
        head.reserve_exact(params.max.saturating_sub(head.len()));
        Window {
            params,
            gear: Gear::new(&params),
            reader,
            buf: head,
            searched: 0,
            eof: false,
        }
    }

    /// Read up to `READ_STEP` more bytes of the chunk, never past `max`.
    fn read_step(&mut self) -> Result<()> {
        let want = READ_STEP.min(self.params.max - self.buf.len()) as u64;
        // `read_to_end` retries `Interrupted`. It zeroes the reserved room
        // before the reader fills it (std reads only into initialized
        // memory through a plain `Read`): the first touch of a new chunk's
        // pages is that zeroing.
        let got = Read::by_ref(&mut self.reader)
            .take(want)
            .read_to_end(&mut self.buf)
            .map_err(Error::Read)?;
        if (got as u64) < want {
            self.eof = true;
        }
        Ok(())
    }

    /// The chunk is `buf[..cut]`; what follows starts the next.
    fn split(&mut self, cut: usize) -> Vec<u8> {
        // The input's last chunk leaves no next one to read into.
        let last = self.eof && cut == self.buf.len();
        let mut next = Vec::with_capacity(if last { 0 } else { self.params.max });
        next.extend_from_slice(&self.buf[cut..]);
        self.buf.truncate(cut);
        self.searched = 0;
        std::mem::replace(&mut self.buf, next)
    }

    fn next_chunk(&mut self) -> Option<Result<Vec<u8>>> {
        let (min, max) = (self.params.min, self.params.max);
        loop {
            let len = self.buf.len();
            if len > min {
                let to = len.min(max) / 2;
                if let Some(cut) = self.gear.search(&self.buf, self.searched, to) {
                    return Some(Ok(self.split(cut)));
                }
                self.searched = self.searched.max(to);
            }
            if len >= max {
                return Some(Ok(self.split(max)));
            }
            if self.eof {
                return (len > 0).then(|| Ok(self.split(len)));
            }
            if let Err(e) = self.read_step() {
                // The error is the last item: the input's end is unknown.
                self.buf = Vec::new();
                self.eof = true;
                return Some(Err(e));
            }
        }
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

    /// Bounds small enough for tests to cross many chunks quickly.
    fn small(seed: u64) -> ChunkerParams {
        ChunkerParams {
            min: 4096,
            avg: 16384,
            max: 65536,
            normalization: Normalization::Level2,
            seed,
        }
    }

    /// `len` bytes of a fixed, busy pattern.
    fn pattern(len: u32, shift: u32) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> shift) as u8)
            .collect()
    }

    /// What the streaming chunker alone cuts.
    fn streamed(p: &ChunkerParams, data: &[u8]) -> Vec<Vec<u8>> {
        StreamCDC::with_level_and_seed(data, p.min, p.avg, p.max, p.normalization, p.seed)
            .map(|c| c.unwrap().data)
            .collect()
    }

    /// The short-input path cuts exactly what FastCDC cuts, at every size
    /// around the switch, so caps and deduplication do not depend on it.
    #[test]
    fn short_inputs_cut_as_fastcdc_does() {
        let (p, data) = (small(7), pattern(200_000, 13));
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
        let p = small(11);
        let data = crate::chunk::xorshift_bytes(1_500_000, 0x9e37_79b9_7f4a_7c15);
        // Runs of zeros force cuts at `max`.
        let mut zeros = data.clone();
        zeros[300_000..700_000].fill(0);
        for input in [&data, &zeros] {
            // Around one and two windows' worth too (`2 * max`, plus `min`).
            for len in [4097, 65_536, 131_072, 131_073, 135_168, 200_000, 1_500_000] {
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

    /// At the mount's sizes a chunk takes several read steps, and its cut
    /// is searched step by step: still StreamCDC's cuts, for cuts early
    /// in a chunk, late, and at the max (a run of zeros), read whole or a
    /// few bytes at a time.
    #[test]
    fn chunks_searched_step_by_step_cut_as_streamcdc_does() {
        let p = ChunkerParams::new(0x1234);
        let mut data = crate::chunk::xorshift_bytes(40 << 20, 0x2545_f491_4f6c_dd1d);
        data[10 << 20..30 << 20].fill(0);
        let want = streamed(&p, &data);
        assert!(want.iter().any(|c| c.len() == p.max));
        assert!(want.iter().any(|c| c.len() < p.avg && c.len() > p.min));
        let whole: Vec<Vec<u8>> = p.chunks(&data[..]).map(|c| c.unwrap()).collect();
        assert!(whole == want, "whole input");
        let trickled: Vec<Vec<u8>> = p
            .chunks(Trickle(&data, 300_007))
            .map(|c| c.unwrap())
            .collect();
        assert!(trickled == want, "300,007 bytes per read");
    }

    /// Fails once `ok` bytes are read, and is interrupted before every
    /// other read, as a signal would.
    struct Flaky<'a> {
        data: &'a [u8],
        ok: usize,
        interrupt: bool,
    }
    impl Read for Flaky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            if self.ok == 0 {
                return Err(std::io::Error::other("disk gone"));
            }
            let n = buf.len().min(self.ok).min(self.data.len()).min(5000);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.ok -= n;
            Ok(n)
        }
    }

    /// Interruptions are retried; an error in the middle of a long input
    /// ends the chunks with that error, after only whole chunks.
    #[test]
    fn long_inputs_retry_interruptions_and_end_at_errors() {
        let (p, data) = (small(3), pattern(400_000, 11));
        let all = |ok| {
            let flaky = Flaky {
                data: &data,
                ok,
                interrupt: false,
            };
            p.chunks(flaky).collect::<Vec<_>>()
        };
        let whole: Vec<Vec<u8>> = all(usize::MAX).into_iter().map(|c| c.unwrap()).collect();
        assert_eq!(whole, streamed(&p, &data));
        let broken = all(250_000);
        let (last, good) = broken.split_last().unwrap();
        assert!(matches!(last, Err(Error::Read(_))), "ends with the error");
        let good: Vec<&Vec<u8>> = good.iter().map(|c| c.as_ref().unwrap()).collect();
        assert!(!good.is_empty());
        for (got, want) in good.iter().zip(&whole) {
            assert_eq!(*got, want, "chunks before the error are whole and right");
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
