//! Difficulty and share targets.
//!
//! `target = floor(diff1 / difficulty)` with `diff1 = 0xFFFF · 2^208`. A
//! difficulty is kept as an integer count of millionths, so the division is
//! exact (`diff1 · 10^6 / micro`) and credit sums never drift: 0.001 is 1000
//! micro-difficulty, 1 is 1 000 000.

use primitive_types::U256;

/// The difficulty-1 target, `0xFFFF · 2^208`.
pub const DIFF1_TARGET: U256 = U256([0, 0, 0, 0xFFFF << 16]);

const MICRO: u64 = 1_000_000;

/// A share difficulty, in millionths of difficulty 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Difficulty(u64);

impl Difficulty {
    pub const ONE: Difficulty = Difficulty(MICRO);

    /// From millionths; at least 1.
    pub fn from_micro(micro: u64) -> Difficulty {
        Difficulty(micro.max(1))
    }

    /// Round `d` to millionths; `None` unless `d` is positive and finite.
    pub fn from_f64(d: f64) -> Option<Difficulty> {
        if !(d.is_finite() && d > 0.0) {
            return None;
        }
        let micro = (d * MICRO as f64).round();
        (micro < u64::MAX as f64).then(|| Difficulty::from_micro(micro as u64))
    }

    /// `d` rounded up to millionths, for a difficulty someone else sets
    /// (an upstream pool's): the target made from it is never looser than
    /// theirs, so no share that misses theirs passes ours. `None` unless
    /// `d` is positive and finite; past the largest count of millionths,
    /// that largest.
    pub fn from_f64_up(d: f64) -> Option<Difficulty> {
        if !(d.is_finite() && d > 0.0) {
            return None;
        }
        let micro = (d * MICRO as f64).ceil();
        Some(Difficulty::from_micro(if micro < u64::MAX as f64 {
            micro as u64
        } else {
            u64::MAX
        }))
    }

    pub fn micro(self) -> u64 {
        self.0
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / MICRO as f64
    }

    /// The share target: a hash meets it when, read as a little-endian
    /// 256-bit number, it is at most this.
    pub fn target(self) -> U256 {
        // diff1 · 10^6 < 2^244: no overflow.
        (DIFF1_TARGET * U256::from(MICRO)) / U256::from(self.0)
    }
}

/// A header hash (as sha256d returns it) as a number.
pub fn hash_to_u256(hash: &[u8; 32]) -> U256 {
    U256::from_little_endian(hash)
}

/// Whether `hash` meets `target`.
pub fn hash_meets(hash: &[u8; 32], target: &U256) -> bool {
    hash_to_u256(hash) <= *target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_target(d: Difficulty) -> String {
        data_encoding::HEXLOWER.encode(&d.target().to_big_endian())
    }

    #[test]
    fn a_difficulty_set_upstream_rounds_to_the_stricter_target() {
        let up = |d: f64| Difficulty::from_f64_up(d).map(Difficulty::micro);
        // 1.4 millionths: to 2 (a target stricter than theirs), not 1.
        assert_eq!(up(1.4e-6), Some(2));
        assert_eq!(Difficulty::from_f64(1.4e-6).map(Difficulty::micro), Some(1));
        assert_eq!(up(1024.0), Some(1_024_000_000));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(up(bad), None, "{bad}");
        }
        assert_eq!(up(1e300), Some(u64::MAX));
    }

    /// Vectors from shared/vectors/bitcoin.json ("share_targets").
    #[test]
    fn targets_match_vectors() {
        let cases = [
            (
                "1",
                "00000000ffff0000000000000000000000000000000000000000000000000000",
            ),
            (
                "0.001",
                "000003e7fc180000000000000000000000000000000000000000000000000000",
            ),
            (
                "1000000",
                "00000000000010c6e6d9be4cd74927913e81450efdc9c4da9003eea209aaa3ad",
            ),
            (
                "65536",
                "000000000000ffff000000000000000000000000000000000000000000000000",
            ),
        ];
        for (d, expected) in cases {
            let diff = Difficulty::from_f64(d.parse().unwrap()).unwrap();
            assert_eq!(hex_target(diff), expected, "difficulty {d}");
        }
    }

    #[test]
    fn rejects_nonsense() {
        for d in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Difficulty::from_f64(d).is_none(), "{d}");
        }
        assert_eq!(Difficulty::from_f64(1e-9).unwrap().micro(), 1);
    }

    #[test]
    fn meets_compares_little_endian() {
        let target = Difficulty::ONE.target();
        let mut hash = [0u8; 32];
        hash[27] = 0xff;
        hash[26] = 0xff;
        assert!(hash_meets(&hash, &target));
        hash[0] = 1;
        assert!(!hash_meets(&hash, &target));
    }
}
