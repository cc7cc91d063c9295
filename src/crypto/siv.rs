//! Deterministic authenticated encryption with AES-SIV (RFC 5297).
//!
//! SIV is used without a nonce on purpose: the same key and plaintext give
//! the same ciphertext, which is what convergent encryption needs, and the
//! synthetic IV doubles as the authentication tag.

use aes_siv::{KeyInit, siv::Aes256Siv};
use zeroize::Zeroizing;

use super::{Error, Result, keys::derive};

fn cipher(key: &[u8; 32]) -> Aes256Siv {
    // AES-256-SIV takes 64 bytes of key (one for S2V, one for CTR); both
    // halves are expanded from the 32-byte key.
    let mut full = Zeroizing::new([0u8; 64]);
    full[..32].copy_from_slice(&*derive(key, b"aes-siv mac"));
    full[32..].copy_from_slice(&*derive(key, b"aes-siv ctr"));
    Aes256Siv::new_from_slice(&*full).expect("64-byte key is valid for AES-256-SIV")
}

/// Encrypt `plaintext` under `key`, binding `context` as associated data.
/// The output is 16 bytes longer than the input.
pub fn seal(key: &[u8; 32], context: &[&[u8]], plaintext: &[u8]) -> Vec<u8> {
    cipher(key)
        .encrypt(context, plaintext)
        .expect("AES-SIV encryption has no failure mode for in-memory input")
}

/// Decrypt and authenticate. Any change to the ciphertext, the key or the
/// context yields [`Error::Unauthentic`].
pub fn open(key: &[u8; 32], context: &[&[u8]], ciphertext: &[u8]) -> Result<Vec<u8>> {
    cipher(key)
        .decrypt(context, ciphertext)
        .map_err(|_| Error::Unauthentic)
}
