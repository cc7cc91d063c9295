//! Shares on local disk.
//!
//! Layout: `DATA/shares/ab/cd/<64 hex>`, two levels of 256-way sharding by
//! the id's first two bytes, so no directory grows past a few thousand
//! entries for a mirror of a few billion shares. Writes go to `DATA/tmp/`,
//! are hashed while they stream in, fsynced, renamed into place and the
//! shard directory fsynced: a share is either wholly present and durable or
//! absent, whatever the crash.

use std::path::{Path, PathBuf};
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{Error, Result};
use crate::chunk::ShareId;
use crate::protocol::hex;

/// A stream of body bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Where a mirror keeps share bytes. Implemented by local disk; an object
/// store (S3 via `object_store`) fits the same shape.
///
/// Contract: `stage` streams a body somewhere private, checks it hashes to
/// `id` (rejecting it otherwise, leaving nothing behind) and makes it
/// durable; `commit` publishes a staged share under its id, atomically. A
/// share already held is kept (the staged copy dropped), unless
/// `replace_corrupt` is set and the held copy no longer matches its id.
/// Nothing is ever overwritten with different valid content, since ids are
/// content hashes. Staging takes no lock, so a slow upload holds up no one.
#[async_trait]
pub trait ShareStore: Send + Sync {
    async fn stage(&self, id: &ShareId, body: ByteStream, max_len: u64) -> Result<Staged>;
    /// Returns the stored length.
    async fn commit(&self, staged: Staged, replace_corrupt: bool) -> Result<u64>;
    /// The share's length and a stream of its bytes, or `None`.
    async fn get(&self, id: &ShareId) -> Result<Option<(u64, ByteStream)>>;
    async fn contains(&self, id: &ShareId) -> Result<bool>;
    /// Remove a share; returns the bytes freed (0 if it was absent).
    async fn delete(&self, id: &ShareId) -> Result<u64>;
}

/// A verified, durable share body not yet visible under its id.
pub struct Staged {
    id: ShareId,
    tmp: PathBuf,
    len: u64,
}

/// How long an upload may stall between two pieces of its body.
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Shares as files under a data directory.
pub struct DiskShares {
    root: PathBuf,
}

impl DiskShares {
    pub fn open(data: &Path) -> Result<DiskShares> {
        std::fs::create_dir_all(data.join("shares"))?;
        let tmp = data.join("tmp");
        // Leftovers of writes cut short by a crash are never valid shares.
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(DiskShares {
            root: data.to_path_buf(),
        })
    }

    /// The file that holds share `id`.
    pub fn path_of(&self, id: &ShareId) -> PathBuf {
        let h = hex(id);
        self.root
            .join("shares")
            .join(&h[..2])
            .join(&h[2..4])
            .join(h)
    }

    async fn matches(&self, id: &ShareId) -> Result<bool> {
        let path = self.path_of(id);
        let id = *id;
        tokio::task::spawn_blocking(move || -> Result<bool> {
            let bytes = std::fs::read(path)?;
            Ok(crate::crypto::sha256(&bytes) == id)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl ShareStore for DiskShares {
    async fn stage(&self, id: &ShareId, mut body: ByteStream, max_len: u64) -> Result<Staged> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{}", hex(id), rand::random::<u64>()));
        let mut file = tokio::fs::File::create(&tmp).await?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let result: Result<()> = async {
            loop {
                let piece = match tokio::time::timeout(BODY_IDLE, body.next()).await {
                    Err(_) => return Err(Error::BadRequest("upload stalled".into())),
                    Ok(None) => break,
                    Ok(Some(piece)) => piece?,
                };
                len += piece.len() as u64;
                if len > max_len {
                    return Err(Error::TooLarge { limit: max_len });
                }
                hasher.update(&piece);
                file.write_all(&piece).await?;
            }
            if <[u8; 32]>::from(hasher.finalize()) != *id {
                return Err(Error::Mismatch(*id));
            }
            file.sync_all().await?;
            Ok(())
        }
        .await;
        drop(file);
        match result {
            Ok(()) => Ok(Staged { id: *id, tmp, len }),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    async fn commit(&self, staged: Staged, replace_corrupt: bool) -> Result<u64> {
        let dest = self.path_of(&staged.id);
        if let Ok(meta) = tokio::fs::metadata(&dest).await
            && (!replace_corrupt || self.matches(&staged.id).await?)
        {
            let _ = tokio::fs::remove_file(&staged.tmp).await;
            return Ok(meta.len());
        }
        let shard = dest
            .parent()
            .expect("share paths have a parent")
            .to_path_buf();
        let tmp = staged.tmp;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&shard)?;
            std::fs::rename(&tmp, &dest)?;
            fsync_dir(&shard)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        Ok(staged.len)
    }

    async fn get(&self, id: &ShareId) -> Result<Option<(u64, ByteStream)>> {
        match tokio::fs::File::open(self.path_of(id)).await {
            Ok(file) => {
                let len = file.metadata().await?.len();
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
                Ok(Some((len, Box::pin(stream))))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn contains(&self, id: &ShareId) -> Result<bool> {
        Ok(tokio::fs::try_exists(self.path_of(id)).await?)
    }

    async fn delete(&self, id: &ShareId) -> Result<u64> {
        let path = self.path_of(id);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => {
                tokio::fs::remove_file(&path).await?;
                Ok(meta.len())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}
