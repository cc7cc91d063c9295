//! Key types, key derivation and the ciphers. Everything secret in lode is
//! born here.
//!
//! This layer owns: the 32-byte [`RootSecret`] and what HKDF-SHA256 derives
//! from it; the secret-key newtypes (zeroized on drop, constant-time equal,
//! `Debug` that prints `****`); deterministic AES-SIV sealing; SHA-256 and
//! BLAKE3.
//! It does no I/O and knows nothing of caps, chunks or mirrors.

mod keys;
mod lanes;
mod siv;

pub use siv::TAG_LEN;

pub use keys::{
    AccountKey, ChunkKey, ConvergenceSecret, PlaceKey, ReadKey, RootSecret, SlotSeed, VerifyKey,
    WriteSealKey,
};

use sha2::{Digest, Sha256};

/// A 32-byte digest (SHA-256 or BLAKE3).
pub type Hash = [u8; 32];

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// BLAKE3 of `data`: the hash for bulk bytes (share ids), about five times
/// SHA-256's speed here (SIMD across 1 KiB blocks, where SHA-256 is one
/// serial chain even with SHA-NI).
pub fn blake3(data: &[u8]) -> Hash {
    blake3::hash(data).into()
}

/// Errors of the crypto layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// AES-SIV refused the ciphertext: it was altered, truncated, or sealed
    /// under another key or context.
    #[error("ciphertext failed authentication (tampered, truncated or wrong key)")]
    Unauthentic,
    /// An ed25519 signature did not verify.
    #[error("signature is invalid")]
    BadSignature,
    /// Bytes that should be an ed25519 public key are not a valid point.
    #[error("not a valid ed25519 public key")]
    BadPublicKey,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Verify an ed25519 signature strictly (no malleable encodings).
pub fn verify_signature(public_key: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> Result<()> {
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(public_key).map_err(|_| Error::BadPublicKey)?;
    let sig = ed25519_dalek::Signature::from_bytes(sig);
    key.verify_strict(message, &sig)
        .map_err(|_| Error::BadSignature)
}
