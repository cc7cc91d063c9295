//! The directory slot: a mutable, signed, encrypted, versioned listing.
//!
//! A directory is a slot named by an ed25519 public key. Its content is a
//! CBOR [`Listing`] of entries, sealed under the slot's read key and signed
//! with the slot's key over (public key, seq, ciphertext).
//!
//! Two verification paths, for two kinds of reader:
//! - a mirror holds no keys: [`SlotEnvelope::verify`] checks the signature,
//!   and [`SlotEnvelope::check_update`] the seq;
//! - a client with a read-cap: [`SlotEnvelope::open`] checks the signature
//!   against the cap's key, then decrypts and authenticates.
//!
//! This layer builds on `caps` and `crypto` and does no I/O.

mod listing;
mod slot;

#[cfg(test)]
pub(crate) use listing::page_of;
pub use listing::{
    DirAttrs, Encoded, Entry, EntryKind, Home, LISTING_VERSION, LinkId, Listing, MAX_LISTING_BYTES,
    MAX_PAGE_BYTES, Place, Time, check_name,
};
pub use slot::{MAX_SLOT_BYTES, SLOT_VERSION, SlotEnvelope};

/// Errors of the directory layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("directory slot is malformed: {0}")]
    Malformed(String),
    #[error("unsupported directory slot version {0}")]
    SlotVersion(u8),
    #[error("unsupported listing version {0}")]
    ListingVersion(u8),
    #[error("directory slot signature is invalid")]
    BadSignature,
    #[error("directory slot belongs to another key")]
    WrongSlot,
    #[error("stale directory update: seq {offered} is not above {current}")]
    Stale { offered: u64, current: u64 },
    #[error("directory listing failed authentication")]
    Unauthentic,
    #[error("entry {name:?}: {reason}")]
    BadEntry { name: String, reason: String },
    #[error("a listing still waiting for its pages cannot be stored")]
    Pending,
    #[error(transparent)]
    Cap(#[from] crate::caps::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
