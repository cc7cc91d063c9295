//! From plaintext bytes to verifiable shares, and back.
//!
//! This layer owns three pure transforms:
//! - [`chunker`]: content-defined chunking (FastCDC 2020), streamed from a
//!   reader with memory bounded by the maximum chunk size;
//! - [`share`]: convergent encryption of a chunk and its erasure coding into
//!   n hash-addressed shares, any k of which rebuild it;
//! - [`manifest`]: the encrypted tree that lists a file's chunks, their keys
//!   and their share ids.
//!
//! It builds on `crypto` only, and does no I/O other than reading the
//! caller's `Read`. Fetching and placing shares is the `store` layer's job.

pub mod chunker;
mod gear;
pub mod manifest;
pub mod share;

pub use chunker::{ChunkerParams, Chunks, Normalization};
pub use manifest::{FileEncoder, INLINE_MAX, Node, NodeEntry};
pub use share::{IdHasher, Params, Share, ShareHeader, ShareId, share_id};

/// Errors of the chunk layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading input: {0}")]
    Read(#[from] std::io::Error),
    #[error("invalid erasure parameters k={k} n={n} (need 1 <= k <= n <= {max})", max = share::MAX_SHARES)]
    BadParams { k: u8, n: u8 },
    #[error("share {} is corrupt: its bytes do not hash to its id", hex(.0))]
    Corrupt(ShareId),
    #[error("share is malformed: {0}")]
    MalformedShare(&'static str),
    #[error("unsupported share format version {0}")]
    ShareVersion(u8),
    #[error("need {need} good shares to rebuild the chunk, have {have}")]
    TooFewShares { need: usize, have: usize },
    #[error("shares disagree about the chunk they encode")]
    Inconsistent,
    #[error("erasure decoding failed: {0}")]
    Erasure(String),
    #[error("chunk failed authentication: {0}")]
    Crypto(#[from] crate::crypto::Error),
    #[error("manifest is malformed: {0}")]
    MalformedManifest(String),
    #[error("unsupported manifest format version {0}")]
    ManifestVersion(u8),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// `len` bytes of a xorshift sequence from `state`: busy input for the
/// chunker's tests, the same on every run.
#[cfg(test)]
fn xorshift_bytes(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
