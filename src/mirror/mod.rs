//! The mirror: a storage server that holds ciphertext for many accounts.
//!
//! This layer owns the HTTP API (`/v1/`, see docs/PROTOCOL.md), the share
//! store on disk behind the [`ShareStore`] trait, the SQLite [`Ledger`] of
//! accounts, leases and directory slots, and the garbage collector. A mirror
//! never sees plaintext or keys: it checks shares against their ids, slots
//! against their signatures, and requests against their account signatures.
//!
//! It builds on `protocol`, `chunk` and `dir`. It must never link the
//! client store, the mount or the miner.

mod commit;
mod credit;
mod disk;
mod gc;
mod http;
mod layout;
mod ledger;
mod scrub;
mod small;
mod stratum;
mod upstream;

pub use credit::Balance;
pub use disk::{DiskShares, ShareStore, Staged};
pub use gc::{GcReport, collect_garbage};
pub use http::{MirrorConfig, bind, serve};
pub use ledger::{Ledger, NewShare, ObjectKind, Terms};
pub use scrub::{ScrubReport, scrub};
pub use stratum::{PoolConfig, run_pool};
pub use upstream::UpstreamConfig;

pub(crate) use crate::protocol::unix_now;

/// A mirror's identity, committed to in its built-in pool's jobs and
/// told to clients (`/v1/info`): random, made once and kept in the data
/// directory.
pub fn mirror_id(data: &std::path::Path) -> std::io::Result<[u8; 32]> {
    std::fs::create_dir_all(data)?;
    let path = data.join("mirror-id");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(id) = crate::protocol::parse_hex::<32>(text.trim())
    {
        return Ok(id);
    }
    let id: [u8; 32] = rand::random();
    std::fs::write(&path, crate::protocol::hex(&id))?;
    Ok(id)
}

use crate::chunk::ShareId;

/// Errors of the mirror.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("ledger: {0}")]
    Ledger(#[from] rusqlite::Error),
    #[error("share body does not hash to its id {}", crate::protocol::hex(.0))]
    Mismatch(ShareId),
    #[error("body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("account quota exceeded: {used} + {wanted} bytes > {quota}")]
    Quota { used: u64, wanted: u64, quota: u64 },
    #[error("mirror capacity exceeded: {used} + {wanted} bytes > {capacity}")]
    Capacity {
        used: u64,
        wanted: u64,
        capacity: u64,
    },
    #[error("unauthorized: {0}")]
    Auth(#[from] crate::protocol::Error),
    #[error("directory slot rejected: {0}")]
    Slot(#[from] crate::dir::Error),
    #[error(
        "account unfunded since {since} (past the {grace_secs} s grace period): mine to renew leases"
    )]
    Unfunded { since: i64, grace_secs: i64 },
    #[error("not found")]
    NotFound,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("ledger task failed: {0}")]
    Task(String),
    #[error("group commit failed: {0}")]
    Commit(String),
    #[error("share layout: {0}")]
    Layout(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
