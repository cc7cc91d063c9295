//! The scrubber: reads back the shares a mirror holds, a bounded amount
//! per pass, and removes any whose bytes no longer hash to their id.
//!
//! A share is checked against its id once, when it arrives. A bit flipped
//! on disk later went unseen by the mirror: it kept answering "held" to
//! every upload of that share and served the damaged bytes, which clients
//! refuse, so a file could lose its copies one by one while every upload
//! and sync reported success (found by a helper's sweep). A damaged share
//! is removed from the disk and its ledger record kept: the mirror then
//! says it does not hold it, so the next upload of it stores it again and
//! `lode check` reports it missing, for `--repair`. The walk goes in id
//! order, from where the last pass stopped (kept in `scrub-cursor`), and
//! starts over at the end, as a RAID or ZFS scrub does.

use std::path::PathBuf;

use futures_util::StreamExt;
use tokio::sync::RwLock;

use super::{Ledger, Result, ShareStore};

/// Shares asked of the ledger at a time.
const BATCH: usize = 256;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub checked: u64,
    pub bytes: u64,
    /// Shares whose bytes did not hash to their id, or could not be read
    /// for a media error (EIO), now removed.
    pub damaged: u64,
    /// Shares passed over: not readable for another reason (out of
    /// descriptors, say), or damaged and not removable.
    pub unreadable: u64,
}

/// Whether reading a share failed because its bytes are lost (the disk
/// said EIO), not for a passing reason: such a share is as good as
/// damaged. Still held, the mirror answered "held" to every upload of it
/// while a read of it failed.
fn lost(e: &super::Error) -> bool {
    matches!(e, super::Error::Io(io) if io.raw_os_error() == Some(libc::EIO))
}

/// Read back about `budget` bytes of shares, from where the last pass
/// stopped, removing the damaged. `finalize` is the lock uploads hold
/// while they put a share in place: a damaged share is checked again and
/// removed under it, so a good copy that an upload just put there is never
/// what goes.
pub async fn scrub<S: ShareStore + ?Sized>(
    ledger: &Ledger,
    shares: &S,
    finalize: &RwLock<()>,
    cursor_file: PathBuf,
    budget: u64,
) -> Result<ScrubReport> {
    let mut report = ScrubReport::default();
    let mut after = read_cursor(&cursor_file);
    let mut wrapped = false;
    while report.bytes < budget {
        let batch = ledger.run(move |l| l.shares_after(after, BATCH)).await?;
        if batch.is_empty() {
            // The end of the walk: start over, once per pass.
            if wrapped || after.is_none() {
                break;
            }
            wrapped = true;
            after = None;
            continue;
        }
        for (id, size) in batch {
            after = Some(id);
            let share = crate::protocol::hex(&id);
            // A share that cannot be read is passed over, not the end of
            // the pass: the error ended every pass at the same share, and
            // none after it was ever checked again.
            let read = match hashes_to_id(shares, &id).await {
                Ok(None) => continue, // not on disk: nothing to check
                Ok(Some(read)) => Ok(read),
                Err(e) => Err(e),
            };
            if let Ok((_, len)) = &read {
                report.checked += 1;
                report.bytes += len;
            }
            let suspect = match &read {
                Ok((ok, _)) => !ok,
                Err(e) => lost(e),
            };
            if let Err(e) = &read
                && !suspect
            {
                report.unreadable += 1;
                // Counted as read: a pass that can read nothing (out of
                // descriptors) walked the whole ledger at once.
                report.bytes += size;
                tracing::warn!(%share, error = %e, "a stored share could not be read; checked at the next walk");
            }
            if suspect {
                let _guard = finalize.write().await;
                let again = hashes_to_id(shares, &id).await;
                let damaged = match &again {
                    Ok(read) => read.is_some_and(|(ok, _)| !ok),
                    Err(e) => lost(e),
                };
                if damaged {
                    match shares.delete(&id).await {
                        Ok(_) => {
                            report.damaged += 1;
                            tracing::error!(
                                %share,
                                "a stored share no longer matches its id, or its bytes are lost; removed, for the next upload or repair to store it again"
                            );
                        }
                        Err(e) => {
                            report.unreadable += 1;
                            tracing::error!(%share, error = %e, "a damaged share could not be removed");
                        }
                    }
                }
            }
            if report.bytes >= budget {
                break;
            }
        }
    }
    write_cursor(&cursor_file, after);
    Ok(report)
}

/// Whether the share `id` as stored hashes to its id, and its length;
/// `None` if it is not stored.
async fn hashes_to_id<S: ShareStore + ?Sized>(
    shares: &S,
    id: &[u8; 32],
) -> Result<Option<(bool, u64)>> {
    let Some((_, mut body)) = shares.get(id).await? else {
        return Ok(None);
    };
    let mut hasher = crate::chunk::IdHasher::new();
    let mut len = 0u64;
    while let Some(bytes) = body.next().await {
        let bytes = bytes?;
        len += bytes.len() as u64;
        hasher.update(&bytes);
    }
    Ok(Some((hasher.finalize() == *id, len)))
}

fn read_cursor(path: &PathBuf) -> Option<[u8; 32]> {
    let text = std::fs::read_to_string(path).ok()?;
    crate::protocol::parse_hex::<32>(text.trim()).ok()
}

/// Where the next pass starts. Losing it (a crash) only starts a walk
/// over, so it is written without a sync.
fn write_cursor(path: &PathBuf, at: Option<[u8; 32]>) {
    let text = at.map(|id| crate::protocol::hex(&id)).unwrap_or_default();
    let _ = std::fs::write(path, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::disk::ByteStream;
    use crate::mirror::testing::{free_terms, stored_shares};
    use crate::mirror::{DiskShares, Staged};
    use async_trait::async_trait;

    /// A disk store whose reads of one share fail with `errno`.
    struct FailingRead {
        disk: DiskShares,
        bad: [u8; 32],
        errno: i32,
    }

    #[async_trait]
    impl ShareStore for FailingRead {
        async fn stage(&self, id: &[u8; 32], body: ByteStream, max_len: u64) -> Result<Staged> {
            self.disk.stage(id, body, max_len).await
        }
        async fn commit(&self, staged: Staged, replace_corrupt: bool) -> Result<u64> {
            self.disk.commit(staged, replace_corrupt).await
        }
        async fn get(&self, id: &[u8; 32]) -> Result<Option<(u64, ByteStream)>> {
            if *id == self.bad && self.disk.contains(id).await? {
                return Err(std::io::Error::from_raw_os_error(self.errno).into());
            }
            self.disk.get(id).await
        }
        async fn contains(&self, id: &[u8; 32]) -> Result<bool> {
            self.disk.contains(id).await
        }
        async fn delete(&self, id: &[u8; 32]) -> Result<u64> {
            self.disk.delete(id).await
        }
    }

    /// A share that cannot be read does not end the pass: those after it
    /// are checked. One the disk lost (EIO) is removed, so the mirror no
    /// longer says it holds it; one unreadable for a passing reason
    /// (EMFILE) is kept. The first error ended every pass at that share.
    #[tokio::test]
    async fn an_unreadable_share_does_not_stop_the_scrubber() {
        for (errno, removed) in [(libc::EIO, true), (libc::EMFILE, false)] {
            let dir = tempfile::tempdir().unwrap();
            let ledger = Ledger::open(&dir.path().join("ledger.sqlite"), free_terms(3600)).unwrap();
            let disk = DiskShares::open(dir.path()).unwrap();
            let mut ids = stored_shares(&ledger, &disk, 3, 100_000).await;
            ids.sort_unstable();
            let store = FailingRead {
                disk,
                bad: ids[0],
                errno,
            };
            let finalize = RwLock::new(());
            let cursor = dir.path().join("scrub-cursor");
            // The unreadable share counts its size against the budget.
            let report = scrub(&ledger, &store, &finalize, cursor, 300_000)
                .await
                .unwrap();
            assert!(report.checked >= 2, "errno {errno}: {report:?}");
            assert_eq!(report.damaged, u64::from(removed), "errno {errno}");
            assert_eq!(report.unreadable, u64::from(!removed), "errno {errno}");
            assert_eq!(store.contains(&ids[0]).await.unwrap(), !removed);
        }
    }
}
