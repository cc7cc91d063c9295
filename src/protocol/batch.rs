//! The body of `POST /v1/shares`: many small shares in one signed request.
//!
//! A small file is one small share per mirror (its manifest root), so an
//! untar of thousands of files was thousands of requests per mirror, each
//! with its own signature check, ledger trip and task hand-offs. A batch
//! carries up to [`MAX_BATCH_SHARES`] shares of at most
//! [`MAX_BATCH_SHARE_BYTES`] each, and the mirror answers each share on
//! its own, exactly as it would have answered it alone.
//!
//! The body is binary and versioned (docs/PROTOCOL.md):
//!
//! ```text
//! version (1 byte, = 1) ‖ count (u16 BE) ‖ count × (id (32) ‖ len (u32 BE) ‖ bytes)
//! ```
//!
//! The signature covers [`batch_digest`] of the ids in order; the mirror
//! checks every share against its id, so the ids pin the whole body.

use serde::{Deserialize, Serialize};

use super::Error;
use sha2::{Digest, Sha256};

use crate::crypto::Hash;

/// Version byte that opens a batch body.
pub const BATCH_VERSION: u8 = 1;
/// Most shares in one batch.
pub const MAX_BATCH_SHARES: usize = 256;
/// Largest share a batch may carry; larger shares are uploaded alone.
pub const MAX_BATCH_SHARE_BYTES: usize = 64 * 1024;
/// Largest batch body.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

const HEADER: usize = 3;
const ITEM_HEADER: usize = 32 + 4;

/// One share in a decoded batch, borrowing the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchItem<'a> {
    pub id: [u8; 32],
    pub bytes: &'a [u8],
}

/// Body bytes a batch of shares of these lengths takes.
pub fn batch_len(lens: impl IntoIterator<Item = usize>) -> usize {
    HEADER + lens.into_iter().map(|l| ITEM_HEADER + l).sum::<usize>()
}

/// Encode a batch. Panics if it breaks the limits: callers cut batches
/// with [`batch_len`] and the constants above.
pub fn encode_batch<'a>(items: impl ExactSizeIterator<Item = (&'a [u8; 32], &'a [u8])>) -> Vec<u8> {
    let count = items.len();
    assert!(
        (1..=MAX_BATCH_SHARES).contains(&count),
        "batch of {count} shares"
    );
    let mut out = Vec::new();
    out.push(BATCH_VERSION);
    out.extend_from_slice(&(count as u16).to_be_bytes());
    for (id, bytes) in items {
        assert!(
            bytes.len() <= MAX_BATCH_SHARE_BYTES,
            "share too large for a batch"
        );
        out.extend_from_slice(id);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    assert!(out.len() <= MAX_BATCH_BYTES, "batch body too large");
    out
}

/// Decode and bound-check a batch body. Nothing is trusted: every length
/// is checked against the limits and the bytes actually present.
pub fn decode_batch(body: &[u8]) -> Result<Vec<BatchItem<'_>>, Error> {
    if body.len() > MAX_BATCH_BYTES {
        return Err(Error::BadBatch("body over the batch limit"));
    }
    let (&version, rest) = body.split_first().ok_or(Error::BadBatch("empty body"))?;
    if version != BATCH_VERSION {
        return Err(Error::BadBatch("unknown batch version"));
    }
    let (count, mut rest) = rest
        .split_first_chunk::<2>()
        .ok_or(Error::BadBatch("truncated header"))?;
    let count = u16::from_be_bytes(*count) as usize;
    if count == 0 || count > MAX_BATCH_SHARES {
        return Err(Error::BadBatch("share count out of range"));
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let (id, after_id) = rest
            .split_first_chunk::<32>()
            .ok_or(Error::BadBatch("truncated share header"))?;
        let (len, after_len) = after_id
            .split_first_chunk::<4>()
            .ok_or(Error::BadBatch("truncated share header"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > MAX_BATCH_SHARE_BYTES {
            return Err(Error::BadBatch("share over the batch share limit"));
        }
        if after_len.len() < len {
            return Err(Error::BadBatch("truncated share"));
        }
        let (bytes, next) = after_len.split_at(len);
        items.push(BatchItem { id: *id, bytes });
        rest = next;
    }
    if !rest.is_empty() {
        return Err(Error::BadBatch("bytes after the last share"));
    }
    Ok(items)
}

/// The digest a batch request signs: SHA-256 over a label and the ids in
/// order.
pub fn batch_digest<'a>(ids: impl IntoIterator<Item = &'a [u8; 32]>) -> Hash {
    let mut h = Sha256::new();
    h.update(b"lode share batch v1\0");
    for id in ids {
        h.update(id);
    }
    h.finalize().into()
}

/// `POST /v1/shares` reply: one result per share, in request order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchReply {
    pub results: Vec<BatchResult>,
}

/// What the mirror would have answered the share alone: the status
/// (201 stored, 200 already held, 400, 507, …) and, for an error, why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchResult {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(items: &[([u8; 32], Vec<u8>)]) -> Vec<u8> {
        encode_batch(items.iter().map(|(id, b)| (id, &b[..])))
    }

    #[test]
    fn batches_round_trip_and_their_length_is_known_ahead() {
        let items = vec![
            ([1; 32], vec![]),
            ([2; 32], vec![7; 100]),
            ([3; 32], vec![9; MAX_BATCH_SHARE_BYTES]),
        ];
        let body = encoded(&items);
        assert_eq!(body.len(), batch_len(items.iter().map(|(_, b)| b.len())));
        let back = decode_batch(&body).unwrap();
        assert_eq!(back.len(), 3);
        for ((id, bytes), item) in items.iter().zip(&back) {
            assert_eq!(&item.id, id);
            assert_eq!(item.bytes, &bytes[..]);
        }
    }

    #[test]
    fn malformed_batches_are_refused() {
        let good = encoded(&[([1; 32], vec![5; 10]), ([2; 32], vec![6; 3])]);
        let mut wrong_version = good.clone();
        wrong_version[0] = 2;
        let mut zero = good.clone();
        zero[1..3].copy_from_slice(&0u16.to_be_bytes());
        let mut too_many = good.clone();
        too_many[1..3].copy_from_slice(&(MAX_BATCH_SHARES as u16 + 1).to_be_bytes());
        let mut more_than_present = good.clone();
        more_than_present[1..3].copy_from_slice(&3u16.to_be_bytes());
        let mut long_len = good.clone();
        long_len[3 + 32..3 + 36].copy_from_slice(&11u32.to_be_bytes());
        let mut huge_len = good.clone();
        huge_len[3 + 32..3 + 36].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut trailing = good.clone();
        trailing.push(0);
        for (what, body) in [
            ("empty", &[][..]),
            ("version", &wrong_version[..]),
            ("zero count", &zero[..]),
            ("too many", &too_many[..]),
            ("count over items", &more_than_present[..]),
            ("length over body", &long_len[..]),
            ("length over limit", &huge_len[..]),
            ("trailing", &trailing[..]),
            ("cut short", &good[..good.len() - 1]),
            ("header only", &good[..3]),
        ] {
            assert!(
                matches!(decode_batch(body), Err(Error::BadBatch(_))),
                "{what}"
            );
        }
        assert!(decode_batch(&good).is_ok());
    }

    #[test]
    fn the_digest_binds_the_ids_and_their_order() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let ab = batch_digest([&a, &b]);
        assert_ne!(ab, batch_digest([&b, &a]));
        assert_ne!(ab, batch_digest([&a]));
        assert_eq!(ab, batch_digest(vec![&a, &b]));
    }
}
