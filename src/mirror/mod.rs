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

mod budget;
mod clock;
mod commit;
mod credit;
mod disk;
mod gc;
mod http;
mod layout;
mod ledger;
pub mod listen;
mod scrub;
mod small;
mod stratum;
mod sweep;
mod upstream;

pub use credit::Balance;
pub use disk::{DiskShares, ShareStore, Staged};
pub use gc::GcReport;
use gc::collect_garbage;
pub use http::{MirrorConfig, bind, serve};
pub use ledger::{Ledger, NewShare, ObjectKind, Terms};
pub use scrub::{ScrubReport, scrub};
pub use stratum::PoolConfig;
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
    #[error("the mirror is busy (its memory for request bodies is taken); try again shortly")]
    Busy,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Set-up shared by the mirror's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{DiskShares, Ledger, ShareStore, Terms};

    /// Free terms: no quota, no capacity, no price, leases of `lease_secs`.
    pub fn free_terms(lease_secs: i64) -> Terms {
        Terms {
            lease_secs,
            quota: None,
            capacity: None,
            price_micro: 0,
            grace_secs: 0,
            free_bytes: 0,
        }
    }

    /// Store `count` shares of `len` bytes each (byte `n` repeated, for
    /// the n-th) on `disk`, recorded for account `[1; 32]` at time 1000;
    /// their ids, in the order stored.
    pub async fn stored_shares(
        ledger: &Ledger,
        disk: &DiskShares,
        count: u8,
        len: usize,
    ) -> Vec<[u8; 32]> {
        let mut ids = Vec::new();
        for n in 0..count {
            let bytes = vec![n; len];
            let id = crate::chunk::share_id(&bytes);
            let body: super::disk::ByteStream =
                Box::pin(futures_util::stream::iter([Ok(bytes::Bytes::from(bytes))]));
            let staged = disk.stage(&id, body, len as u64).await.unwrap();
            disk.commit(staged, false).await.unwrap();
            ledger.add_share(&[1; 32], &id, len as u64, 1000).unwrap();
            ids.push(id);
        }
        ids
    }
}
