//! The client side of storage: where shares and slots go, and how files and
//! directory trees become them and come back.
//!
//! This layer owns the [`Storage`] trait (implemented by HTTP mirrors, local
//! disk and test doubles), the [`Grid`] that places shares on distinct
//! mirrors and fetches any k verified ones back, and the [`Vault`] that runs
//! the put/get pipelines. Every byte that comes back from a `Storage` is
//! treated as hostile and verified before use.
//!
//! It builds on `dir`, `caps`, `chunk` and `crypto`. It must not reach into
//! the mirror's server code, the mount or the miner.

mod adaptive;
mod cache;
mod check;
mod grid;
mod http;
mod memory;
mod sparse;
mod tree;
pub(crate) mod vault;

pub use cache::ChunkCache;
pub use check::{
    CheckOptions, CheckReport, MirrorRenewal, MirrorTally, Object, ObjectHealth, Reach, Renewal,
    ShareState,
};
pub use grid::{Grid, GridConfig, Room, Space};
pub use http::HttpMirror;
pub use memory::MemoryStorage;
pub use vault::{Absent, DEFAULT_CACHE_BYTES, Pieces, Vault, now, restore_meta};

use async_trait::async_trait;
use bytes::Bytes;

use crate::chunk::ShareId;

/// Errors of the client storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mirror {mirror} is unavailable: {reason}")]
    Unavailable { mirror: String, reason: String },
    #[error(
        "the directory's listing could not be read: {}",
        unanswered(*failed, *mirrors)
    )]
    ListingUnavailable { failed: usize, mirrors: usize },
    #[error("mirror {mirror} rejected the request: {reason}")]
    Rejected { mirror: String, reason: String },
    #[error("mirror {mirror} is out of space or over quota")]
    NoSpace { mirror: String },
    #[error(
        "a directory of {entries} entries needs a {bytes}-byte listing, over the \
         {limit} bytes a directory's listing may take: move some entries into subdirectories"
    )]
    DirectoryTooLarge {
        entries: usize,
        bytes: usize,
        limit: usize,
    },
    #[error("upload reached {placed} distinct mirrors, but happy={happy} are required{why}")]
    NotHappy {
        placed: usize,
        happy: usize,
        /// The last refusal or failure, as ` (last: …)`, or empty: why the others
        /// did not take it (an unfunded account, a full mirror).
        why: String,
    },
    #[error("directory update reached {placed} distinct mirrors, but happy={happy} are required")]
    SlotNotHappy { placed: usize, happy: usize },
    #[error("could not find {need} good shares of {what} on any mirror (found {found})")]
    Unrecoverable {
        what: String,
        need: usize,
        found: usize,
    },
    #[error("no mirror has directory slot {0}")]
    NoSlot(String),
    /// The mount's listing of a directory is of an older version than the
    /// mirrors hold: someone else (another mount of the identity, on
    /// another machine) changed it since. Publishing would undo their
    /// change unseen.
    #[error(
        "directory {slot} was changed elsewhere (another mount of this identity?): the mirrors \
         hold version {theirs}, this mount's listing is of version {ours}, so it is not \
         overwritten; the changes made here stay staged: unmount and mount again, and staged \
         files are put back onto the newest version (other changes made here, such as \
         removals and renames, are not)"
    )]
    ChangedElsewhere {
        slot: String,
        theirs: u64,
        ours: u64,
    },
    #[error("refusing to roll directory {slot} back to seq {offered}: seq {seen} was already seen")]
    Rollback {
        slot: String,
        seen: u64,
        offered: u64,
    },
    /// Every copy of the slot is signed by its writer, and none opens with
    /// the cap's read key: the key is wrong (never a mirror's doing, since
    /// a mirror cannot sign).
    #[error(
        "directory {slot} does not open with this cap's read key: its listing is signed by \
         its writer, but the key is another (a cap put together from two others?)"
    )]
    WrongReadKey { slot: String },
    #[error("{path} is a symbolic link (to {target}): name what it points to")]
    Symlink { path: String, target: String },
    #[error("no such entry: {0}")]
    NotFound(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error("not a regular file: {0}")]
    NotAFile(String),
    #[error("read-only: {0}")]
    ReadOnly(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("invalid name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("symlink {0}: its target is not valid UTF-8 (listings keep targets as text)")]
    BadTarget(String),
    #[error("no mirrors are configured")]
    NoMirrors,
    #[error(transparent)]
    Chunk(#[from] crate::chunk::Error),
    #[error(transparent)]
    Dir(#[from] crate::dir::Error),
    #[error(transparent)]
    Cap(#[from] crate::caps::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Why no mirror gave a listing: none answered, or those that did hold
/// none.
fn unanswered(failed: usize, mirrors: usize) -> String {
    match failed >= mirrors {
        true => format!("none of the {mirrors} mirrors answered"),
        false => {
            format!("{failed} of {mirrors} mirrors did not answer, and none that did holds it")
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A place that holds shares and directory slots: a mirror over HTTP, a
/// local disk, or a test double.
///
/// Contract for implementations:
/// - `put_share` is idempotent and never overwrites: storing an id that is
///   already held succeeds without change. The data is durable (fsynced, or
///   acknowledged by a store that promises as much) when it returns `Ok`.
///   A store that can check the id (every honest one can) rejects bytes
///   that do not hash to it.
/// - `put_slot` accepts an envelope only if its signature is valid and its
///   seq is strictly above the one held.
///
/// Contract for callers: nothing read back is trusted. Shares are checked
/// against their id and slots against their signature and the reader's cap.
/// What one store said to a renewal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renewed {
    /// Ids it does not hold.
    pub missing: Vec<[u8; 32]>,
    /// Ids it holds but did not renew (quota, capacity, an unfunded
    /// account): their leases run out as they are.
    pub refused: Vec<[u8; 32]>,
    /// Why, as the store put it.
    pub reason: Option<String>,
}

#[async_trait]
pub trait Storage: Send + Sync {
    /// A short name for messages and reports, such as the mirror's URL.
    fn name(&self) -> &str;
    /// What the placement ranks this store under (see `grid`): by default
    /// its name. A mirror that moved keeps the name it was added under, so
    /// its shares stay where the placement looks for them.
    fn placement_name(&self) -> &str {
        self.name()
    }
    async fn put_share(&self, id: &ShareId, bytes: Bytes) -> Result<()>;
    /// The bytes stored under `id`, or `None` if this store lacks it.
    async fn get_share(&self, id: &ShareId) -> Result<Option<Bytes>>;
    async fn has_share(&self, id: &ShareId) -> Result<bool>;
    async fn put_slot(&self, envelope: &[u8]) -> Result<()>;
    async fn get_slot(&self, public_key: &[u8; 32]) -> Result<Option<Vec<u8>>>;

    /// Store a share, replacing the held copy if it no longer matches its
    /// id (repair). Stores that cannot go bad may keep `put_share`'s no-op.
    async fn repair_share(&self, id: &ShareId, bytes: Bytes) -> Result<()> {
        self.put_share(id, bytes).await
    }

    /// Extend the leases on `ids` (share ids or slot keys); says which
    /// ids this store does not hold, and which it holds but would not
    /// renew. Stores without leases hold forever.
    async fn renew(&self, ids: &[[u8; 32]]) -> Result<Renewed> {
        let mut missing = Vec::new();
        for id in ids {
            if !self.has_share(id).await? && self.get_slot(id).await?.is_none() {
                missing.push(*id);
            }
        }
        Ok(Renewed {
            missing,
            ..Renewed::default()
        })
    }

    /// Like `renew`, but for an upload about to skip what is held: returns
    /// every id whose lease this store did not extend (missing, or refused
    /// for quota or funding), so those are uploaded and any refusal is
    /// reported by the upload itself.
    async fn claim(&self, ids: &[[u8; 32]]) -> Result<Vec<[u8; 32]>> {
        let renewed = self.renew(ids).await?;
        Ok(renewed.missing.into_iter().chain(renewed.refused).collect())
    }

    /// Recent response time, for asking the fastest mirrors first.
    fn latency(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether reads pass this store over for now, failing at once: it
    /// just failed to answer. The grid asks it last, and only after
    /// [`Storage::revive`].
    fn is_down(&self) -> bool {
        false
    }

    /// A read from this store is long overdue: pass it over for reads as
    /// if it had failed, until it answers again. Stores that cannot hang
    /// ignore this.
    fn pass_over(&self) {}

    /// Let the next read through, down or not: the others could not do
    /// without this store.
    fn revive(&self) {}

    /// Whether a write to this store, taken as down, is out and has not
    /// been answered: a write that can reach `happy` without this store
    /// places its part elsewhere rather than wait on it too.
    fn write_waiting(&self) -> bool {
        false
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}
