//! FastCDC 2020's search for a cut point, over four stretches of the input
//! at once.
//!
//! The cuts are exactly the `fastcdc` crate's (`FastCDC::cut`, tested
//! below against it): same seeded gear tables, same masks, same two-byte
//! steps, same candidates. Only the order of the work differs.
//!
//! Why: the crate's scan is one chain, in which every step's hash waits for
//! the one before (shift, add, add), so a core runs it at that chain's
//! latency with most of its units idle. The gear hash forgets: each step
//! shifts the hash two bits left, so after 32 steps (64 bytes) nothing of
//! what came before is left in its 64 bits. A stretch's hash can therefore
//! be set up from the 64 bytes in front of it, wherever it starts, and four
//! stretches scanned side by side are four independent chains that the
//! core overlaps. The first candidate in input order wins, as in the
//! single chain (docs/PERFORMANCE.md, "The gear scan in four lanes").

use fastcdc::v2020::{get_gear_with_seed, select_masks};

use super::ChunkerParams;

/// Stretches scanned side by side.
const LANES: usize = 4;

/// Two-byte steps in each lane's stretch of a round: 8 KiB of input per
/// lane. A round that finds a cut wastes the work past it, at most one
/// round (32 KiB) per chunk of megabytes; each stretch costs 32 steps to
/// set up its hash.
const STEPS: usize = 4096;

/// Steps after which the hash holds nothing of what came before.
const MEMORY: usize = 32;

/// The cut search for one set of [`ChunkerParams`].
pub struct Gear {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
    min: usize,
    avg: usize,
    max: usize,
}

/// The masks of one part of the search (before or after the average).
#[derive(Clone, Copy)]
struct Masks {
    /// Tested after the first byte of a step.
    first: u64,
    /// Tested after the second.
    second: u64,
}

impl Gear {
    pub fn new(p: &ChunkerParams) -> Gear {
        let (mask_s, mask_l) = select_masks(p.avg, p.normalization);
        let (g, g_ls) = get_gear_with_seed(p.seed);
        let table = |t: &[u64]| -> Box<[u64; 256]> {
            Box::new(t.try_into().expect("gear tables have 256 entries"))
        };
        Gear {
            gear: table(&g),
            gear_ls: table(&g_ls),
            mask_s,
            mask_l,
            min: p.min,
            avg: p.avg,
            max: p.max,
        }
    }

    /// The length of the chunk that starts `source`: where FastCDC cuts it
    /// (`FastCDC::cut`), in one search. The chunker searches step by step
    /// instead; the tests hold both to the crate.
    #[cfg(test)]
    pub fn cut(&self, source: &[u8]) -> usize {
        let remaining = source.len().min(self.max);
        if remaining <= self.min {
            return remaining;
        }
        self.search(source, self.min / 2, remaining / 2)
            .unwrap_or(remaining)
    }

    /// The first cut among the two-byte steps `from..to` of a chunk that
    /// starts `source`, which may hold only the chunk's first bytes: a
    /// step's masks depend only on whether it lies before `avg` (for an
    /// input shorter than `avg`, FastCDC moves that edge to the input's
    /// end, which no step passes). A search can go on where an earlier one
    /// stopped: each step's hash depends on the 64 bytes before it only.
    /// The steps run from `min / 2` to `max / 2`.
    pub fn search(&self, source: &[u8], from: usize, to: usize) -> Option<usize> {
        let (origin, center) = (self.min / 2, self.avg / 2);
        let from = from.max(origin);
        let to = to.min(self.max / 2).min(source.len() / 2);
        let small = Masks {
            first: self.mask_s << 1,
            second: self.mask_s,
        };
        let large = Masks {
            first: self.mask_l << 1,
            second: self.mask_l,
        };
        let mid = center.clamp(from, to.max(from));
        if from < mid
            && let Some(cut) = self.scan(source, origin, from, mid, small)
        {
            return Some(cut);
        }
        let start = mid.max(from);
        (start < to)
            .then(|| self.scan(source, origin, start, to, large))
            .flatten()
    }

    /// The first cut among steps `from..to`, the hash starting from zero at
    /// step `origin`.
    fn scan(&self, src: &[u8], origin: usize, from: usize, to: usize, m: Masks) -> Option<usize> {
        let mut at = from;
        while to - at >= LANES * STEPS {
            let starts: [usize; LANES] = std::array::from_fn(|l| at + l * STEPS);
            if let Some(cut) = self.round(src, origin, starts, m) {
                return Some(cut);
            }
            at += LANES * STEPS;
        }
        let mut hash = self.primed(src, origin, at);
        for step in at..to {
            let a = 2 * step;
            hash = (hash << 2).wrapping_add(self.gear_ls[src[a] as usize]);
            if hash & m.first == 0 {
                return Some(a);
            }
            hash = hash.wrapping_add(self.gear[src[a + 1] as usize]);
            if hash & m.second == 0 {
                return Some(a + 1);
            }
        }
        None
    }

    /// The hash before step `at`: from zero at `origin`, or over the
    /// `MEMORY` steps before `at`, which is the same.
    fn primed(&self, src: &[u8], origin: usize, at: usize) -> u64 {
        let from = at.saturating_sub(MEMORY).max(origin);
        src[2 * from..2 * at]
            .as_chunks::<2>()
            .0
            .iter()
            .fold(0u64, |h, pair| {
                (h << 2)
                    .wrapping_add(self.gear_ls[pair[0] as usize])
                    .wrapping_add(self.gear[pair[1] as usize])
            })
    }

    /// One round: `STEPS` steps from each of `starts` side by side; the
    /// first cut in input order, if any.
    fn round(&self, src: &[u8], origin: usize, starts: [usize; LANES], m: Masks) -> Option<usize> {
        let (g, gl) = (&self.gear, &self.gear_ls);
        let mut h: [u64; LANES] = std::array::from_fn(|l| self.primed(src, origin, starts[l]));
        let lane = |l: usize| {
            src[2 * starts[l]..2 * (starts[l] + STEPS)]
                .as_chunks::<2>()
                .0
                .iter()
        };
        let mut found: [Option<usize>; LANES] = [None; LANES];
        let steps = lane(0).zip(lane(1)).zip(lane(2)).zip(lane(3));
        for (k, (((p0, p1), p2), p3)) in steps.enumerate() {
            let mut hit = [false; 2 * LANES];
            for (l, pair) in [p0, p1, p2, p3].into_iter().enumerate() {
                h[l] = (h[l] << 2).wrapping_add(gl[pair[0] as usize]);
                hit[2 * l] = h[l] & m.first == 0;
                h[l] = h[l].wrapping_add(g[pair[1] as usize]);
                hit[2 * l + 1] = h[l] & m.second == 0;
            }
            if hit.iter().any(|&x| x) {
                for l in 0..LANES {
                    if found[l].is_none() && (hit[2 * l] || hit[2 * l + 1]) {
                        let a = 2 * (starts[l] + k);
                        found[l] = Some(if hit[2 * l] { a } else { a + 1 });
                    }
                }
                // No later lane's cut can come before the first lane's.
                if found[0].is_some() {
                    break;
                }
            }
        }
        found.into_iter().flatten().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Normalization;
    use fastcdc::v2020::FastCDC;

    /// Every cut, chunk after chunk, is the crate's.
    fn same_cuts(p: &ChunkerParams, data: &[u8]) -> usize {
        let gear = Gear::new(p);
        let (mut at, mut cuts) = (0, 0);
        while at < data.len() {
            let rest = &data[at..];
            let cdc =
                FastCDC::with_level_and_seed(rest, p.min, p.avg, p.max, p.normalization, p.seed);
            let (_, want) = cdc.cut(0, rest.len());
            assert_eq!(gear.cut(rest), want, "at {at} of {}", data.len());
            at += want;
            cuts += 1;
        }
        cuts
    }

    #[test]
    fn cuts_as_fastcdc_does_with_the_mounts_sizes() {
        let p = ChunkerParams::new(0x5eed);
        let data = crate::chunk::xorshift_bytes(48 << 20, 1);
        assert!(same_cuts(&p, &data) > 8);
    }

    /// A search stopped anywhere and taken up again finds the same cut,
    /// also when it stops a step or a few before the cut (where the hash
    /// must come from the bytes before the stop) and inside a lane's round.
    #[test]
    fn a_search_taken_up_again_finds_the_same_cut() {
        let p = ChunkerParams::new(0xface);
        let gear = Gear::new(&p);
        let data = crate::chunk::xorshift_bytes(40 << 20, 3);
        let (mut at, mut checked) = (0, 0);
        while at + p.max < data.len() {
            let src = &data[at..];
            let cut = gear.cut(src);
            let step = cut / 2;
            let (first, last) = (p.min / 2, p.max / 2);
            if cut < p.max {
                for stop in [step - 40, step - 1, step, first + 1, first + 33, step / 2] {
                    let stop = stop.clamp(first, step);
                    assert_eq!(gear.search(src, first, stop), None, "stop {stop}");
                    assert_eq!(gear.search(src, stop, last), Some(cut), "stop {stop}");
                }
                checked += 1;
            }
            at += cut;
        }
        assert!(checked > 4);
    }

    /// Small bounds cross many rounds, stretches and mask switches; odd
    /// lengths, zeros (cut at the max), a short repeating pattern (cuts
    /// found in any lane, or none) and every normalization level.
    #[test]
    fn cuts_as_fastcdc_does_at_every_edge() {
        let mut data = crate::chunk::xorshift_bytes(3 << 20, 2);
        data[500_000..900_000].fill(0);
        for (i, b) in data[1_200_000..1_600_000].iter_mut().enumerate() {
            *b = (i % 7) as u8;
        }
        for (n, level) in [
            Normalization::Level0,
            Normalization::Level1,
            Normalization::Level2,
            Normalization::Level3,
        ]
        .into_iter()
        .enumerate()
        {
            for (min, avg, max) in [
                (4096, 16_384, 65_536),
                (64, 256, 1024),
                (8192, 65_536, 262_144),
                (1 << 20, 4 << 20, 8 << 20),
            ] {
                let p = ChunkerParams {
                    min,
                    avg,
                    max,
                    normalization: level,
                    seed: n as u64 * 7 + 1,
                };
                for len in [min - 1, min, min + 1, avg + 3, max - 1, max + 5, data.len()] {
                    same_cuts(&p, &data[..len.min(data.len())]);
                }
            }
        }
    }
}
