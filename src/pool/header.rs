//! Building the 80-byte Bitcoin block header a share commits to.
//!
//! - coinbase = coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2
//! - merkle root = fold over the branch: `root = sha256d(root ‖ b)`, from
//!   `sha256d(coinbase)`, all in internal byte order
//! - header = version (LE) ‖ prevhash ‖ merkle root ‖ ntime (LE) ‖ nbits (LE)
//!   ‖ nonce (LE), where Stratum sends prevhash with each 4-byte word
//!   byte-swapped relative to the header.

use sha2::{Digest, Sha256};

/// A unit of work, as `mining.notify` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    /// Previous block hash in Stratum's order (4-byte words swapped).
    pub prevhash: [u8; 32],
    pub coinb1: Vec<u8>,
    pub coinb2: Vec<u8>,
    /// Merkle branch hashes, internal byte order.
    pub branch: Vec<[u8; 32]>,
    pub version: u32,
    pub nbits: u32,
    pub ntime: u32,
    /// Whether miners must drop earlier jobs.
    pub clean: bool,
}

impl Job {
    /// What a share of this job commits to, but for the miner's own parts
    /// (extranonces, ntime, nonce, rolled version bits): two jobs with the
    /// same work give the same header for the same parts. Pools commonly
    /// send such jobs, with only a fresh ntime, and a share found on one is
    /// then a share of the other (see `Session::send_job`).
    pub fn work(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"lode job work v1");
        h.update(self.prevhash);
        for part in [&self.coinb1, &self.coinb2] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update((self.branch.len() as u64).to_le_bytes());
        for b in &self.branch {
            h.update(b);
        }
        // Rolled bits come from the miner: two jobs that differ only there
        // give the same headers.
        h.update((self.version & !super::VERSION_ROLLING_MASK).to_le_bytes());
        h.update(self.nbits.to_le_bytes());
        h.finalize().into()
    }
}

pub fn sha256d(data: &[u8]) -> [u8; 32] {
    Sha256::digest(Sha256::digest(data)).into()
}

pub fn coinbase(job: &Job, extranonce1: &[u8], extranonce2: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(
        job.coinb1.len() + extranonce1.len() + extranonce2.len() + job.coinb2.len(),
    );
    c.extend_from_slice(&job.coinb1);
    c.extend_from_slice(extranonce1);
    c.extend_from_slice(extranonce2);
    c.extend_from_slice(&job.coinb2);
    c
}

pub fn merkle_root(coinbase_hash: [u8; 32], branch: &[[u8; 32]]) -> [u8; 32] {
    branch.iter().fold(coinbase_hash, |root, b| {
        let mut pair = [0u8; 64];
        pair[..32].copy_from_slice(&root);
        pair[32..].copy_from_slice(b);
        sha256d(&pair)
    })
}

/// The header from its parts (prevhash in Stratum order).
pub fn header_from_parts(
    version: u32,
    prevhash: &[u8; 32],
    merkle: &[u8; 32],
    ntime: u32,
    nbits: u32,
    nonce: u32,
) -> [u8; 80] {
    let mut h = [0u8; 80];
    h[..4].copy_from_slice(&version.to_le_bytes());
    for (word, out) in prevhash.chunks(4).zip(h[4..36].chunks_mut(4)) {
        out.copy_from_slice(&[word[3], word[2], word[1], word[0]]);
    }
    h[36..68].copy_from_slice(merkle);
    h[68..72].copy_from_slice(&ntime.to_le_bytes());
    h[72..76].copy_from_slice(&nbits.to_le_bytes());
    h[76..80].copy_from_slice(&nonce.to_le_bytes());
    h
}

/// The header a share for `job` commits to.
pub fn build_header(
    job: &Job,
    extranonce1: &[u8],
    extranonce2: &[u8],
    ntime: u32,
    nonce: u32,
    version: u32,
) -> [u8; 80] {
    let root = merkle_root(
        sha256d(&coinbase(job, extranonce1, extranonce2)),
        &job.branch,
    );
    header_from_parts(version, &job.prevhash, &root, ntime, job.nbits, nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap()
    }
    fn h32(s: &str) -> [u8; 32] {
        hex(s).try_into().unwrap()
    }
    fn display(hash: [u8; 32]) -> String {
        let mut r = hash;
        r.reverse();
        data_encoding::HEXLOWER.encode(&r)
    }

    #[test]
    fn genesis_header_hash() {
        let header = hex(
            "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c",
        );
        assert_eq!(
            display(sha256d(&header)),
            "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
        );
    }

    /// Block 100000 rebuilt from its coinbase txid, merkle branch and the
    /// Stratum encodings of its fields (shared/vectors/bitcoin.json).
    #[test]
    fn block_100000_rebuilt_from_stratum_fields() {
        let mut coinbase_txid =
            h32("8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87");
        coinbase_txid.reverse(); // display → internal
        let branch = [
            h32("c40297f730dd7b5a99567eb8d27b78758f607507c52292d02d4031895b52f2ff"),
            h32("49aef42d78e3e9999c9e6ec9e1dddd6cb880bf3b076a03be1318ca789089308e"),
        ];
        let root = merkle_root(coinbase_txid, &branch);
        assert_eq!(
            display(root),
            "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766"
        );
        let prevhash = h32("1901125004612a1701c3a621d930d31d36b607df1fccc2160002d01c00000000");
        let version = u32::from_str_radix("00000001", 16).unwrap();
        let nbits = u32::from_str_radix("1b04864c", 16).unwrap();
        let ntime = u32::from_str_radix("4d1b2237", 16).unwrap();
        let nonce = u32::from_str_radix("10572b0f", 16).unwrap();
        let header = header_from_parts(version, &prevhash, &root, ntime, nbits, nonce);
        assert_eq!(
            data_encoding::HEXLOWER.encode(&header),
            "0100000050120119172a610421a6c3011dd330d9df07b63616c2cc1f1cd00200000000006657a9252aacd5c0b2940996ecff952228c3067cc38d4885efb5a4ac4247e9f337221b4d4c86041b0f2b5710"
        );
        assert_eq!(
            display(sha256d(&header)),
            "000000000003ba27aa200b1cecaad478d2b00432346c3f1f3986da1afd33e506"
        );
    }

    #[test]
    fn coinbase_concatenates_and_feeds_the_root() {
        let job = Job {
            id: "1".into(),
            prevhash: [7; 32],
            coinb1: vec![1, 2],
            coinb2: vec![9],
            branch: vec![[3; 32]],
            version: 0x2000_0000,
            nbits: 0x1d00ffff,
            ntime: 100,
            clean: true,
        };
        assert_eq!(
            coinbase(&job, &[4, 5], &[6, 7, 8]),
            vec![1, 2, 4, 5, 6, 7, 8, 9]
        );
        let h = build_header(&job, &[4, 5], &[6, 7, 8], 101, 5, job.version);
        let root = merkle_root(sha256d(&[1, 2, 4, 5, 6, 7, 8, 9]), &job.branch);
        assert_eq!(&h[36..68], &root);
        assert_eq!(&h[68..72], &101u32.to_le_bytes());
        assert_ne!(
            build_header(&job, &[4, 5], &[6, 7, 9], 101, 5, job.version),
            h
        );
    }
}
