//! The start-up sweep: shares held on disk that no ledger row records.
//!
//! An upload is acknowledged only once its share is in place and recorded,
//! in that order (`commit.rs`): a crash between the two leaves a share file,
//! or a row of the small-share table, that the ledger does not know. GC
//! and the scrubber walk the ledger and never see it, no account pays for
//! it, and only a later upload of the same share would record it. No one
//! was told it was stored, so each start the mirror walks what it holds,
//! in the background, and removes what the ledger does not record.
//!
//! Candidates are found with no lock held. Each is asked about again, and
//! removed, under the lock uploads hold from their rename to their record
//! (GC's, taken exclusively): a share renamed into place a moment before
//! its record is kept.
//!
//! A crash leaves at most one group commit's shares unrecorded. Far more
//! than that means the ledger is not the one these shares were stored
//! under (restored from an older backup, or lost and made anew): then the
//! sweep removes nothing and says so, since those shares are what the
//! mirror's clients rely on. The same goes for a ledger that records
//! nothing at all.

use tokio::sync::RwLock;

use super::{DiskShares, Ledger, Result};
use crate::chunk::ShareId;

/// Ids asked of the ledger at a time.
const BATCH: usize = 1024;

/// The most unrecorded shares a sweep removes: a few crashes' worth (each
/// leaves at most one group commit), in case a sweep was stopped before
/// it ended. More, and it removes none.
const MOST: usize = 4 * super::commit::MAX_BATCH;

/// What a sweep found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Shares looked at, as files and as rows.
    pub checked: u64,
    /// Shares the ledger did not record (at most `MOST + 1` are counted).
    pub unrecorded: u64,
    pub removed: u64,
    pub bytes: u64,
}

/// Walk every shard directory and the small-share table once, then remove
/// each share the ledger does not record, if they are few enough to be a
/// crash's leftovers.
pub(super) async fn sweep_unrecorded(
    ledger: &Ledger,
    shares: &std::sync::Arc<DiskShares>,
    finalize: &RwLock<()>,
) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    let mut found = Vec::new();
    for first in 0..=u8::MAX {
        let store = shares.clone();
        let files = tokio::task::spawn_blocking(move || store.files_in_shard(first))
            .await
            .map_err(|e| super::Error::Task(e.to_string()))??;
        for part in files.chunks(BATCH) {
            report.checked += part.len() as u64;
            let part = part.to_vec();
            found.extend(ledger.run(move |l| l.unrecorded(&part)).await?);
        }
        if found.len() > MOST {
            break;
        }
    }
    let mut after: Option<ShareId> = None;
    while found.len() <= MOST {
        let store = shares.clone();
        let rows = tokio::task::spawn_blocking(move || store.rows_after(after.as_ref(), BATCH))
            .await
            .map_err(|e| super::Error::Task(e.to_string()))??;
        let Some(last) = rows.last().copied() else {
            break;
        };
        report.checked += rows.len() as u64;
        found.extend(ledger.run(move |l| l.unrecorded(&rows)).await?);
        after = Some(last);
    }
    report.unrecorded = found.len() as u64;
    if found.is_empty() {
        return Ok(report);
    }
    if found.len() > MOST || !ledger.run(|l| l.records_any()).await? {
        tracing::error!(
            unrecorded = found.len(),
            "shares are held that the ledger does not record, more than a crash leaves: \
             is ledger.sqlite the one they were stored under? None was removed"
        );
        return Ok(report);
    }
    for part in found.chunks(BATCH) {
        remove_unrecorded(ledger, shares, finalize, part.to_vec(), &mut report).await?;
    }
    if report.removed > 0 {
        tracing::warn!(
            shares = report.removed,
            bytes = report.bytes,
            "removed shares no ledger row recorded (left by a crash between storing and recording)"
        );
    }
    Ok(report)
}

/// Remove those of `candidates` the ledger does not record, asked again
/// under the lock.
async fn remove_unrecorded(
    ledger: &Ledger,
    shares: &DiskShares,
    finalize: &RwLock<()>,
    candidates: Vec<ShareId>,
    report: &mut SweepReport,
) -> Result<()> {
    let mut retired = Vec::new();
    let removed = async {
        let _guard = finalize.write().await;
        for id in ledger.run(move |l| l.unrecorded(&candidates)).await? {
            let (bytes, moved) = shares.retire(&id).await?;
            retired.extend(moved);
            report.removed += 1;
            report.bytes += bytes;
        }
        Ok(())
    }
    .await;
    super::gc::unlink(&mut retired).await;
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::ShareStore;
    use crate::mirror::testing::{free_terms, stored_shares};

    /// Put `bytes` in place on `shares` without recording it, as a crash
    /// between a batch's renames and its ledger commit leaves it.
    async fn placed_unrecorded(shares: &DiskShares, bytes: Vec<u8>) -> ShareId {
        let id = crate::chunk::share_id(&bytes);
        let len = bytes.len() as u64;
        let body = futures_util::stream::iter([Ok(bytes::Bytes::from(bytes))]);
        let staged = shares.stage(&id, Box::pin(body), len).await.unwrap();
        shares.commit(staged, false).await.unwrap();
        id
    }

    /// Unrecorded shares, as files and as small rows, are removed;
    /// recorded ones of both kinds stay, and so does a file that is not
    /// a share's.
    #[tokio::test]
    async fn shares_no_ledger_row_records_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger.sqlite"), free_terms(3600)).unwrap();
        let shares = std::sync::Arc::new(DiskShares::open(dir.path()).unwrap());
        let mut kept = stored_shares(&ledger, &shares, 2, 70_000).await;
        kept.extend(stored_shares(&ledger, &shares, 2, 1_000).await);
        let lost = [
            placed_unrecorded(&shares, vec![7; 70_000]).await,
            placed_unrecorded(&shares, vec![8; 1_000]).await,
        ];
        let stray = dir.path().join("shares").join("00").join("README");
        std::fs::write(&stray, b"not a share").unwrap();
        for id in kept.iter().chain(&lost) {
            assert!(shares.contains(id).await.unwrap());
        }

        let report = sweep_unrecorded(&ledger, &shares, &RwLock::new(()))
            .await
            .unwrap();

        assert_eq!((report.unrecorded, report.removed), (2, 2), "{report:?}");
        assert_eq!(report.bytes, 71_000);
        assert_eq!(report.checked, 6);
        for id in &lost {
            assert!(
                !shares.contains(id).await.unwrap(),
                "an unrecorded share stayed"
            );
        }
        for id in &kept {
            assert!(shares.contains(id).await.unwrap(), "a recorded share went");
        }
        assert!(stray.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Put `count` small shares in place, unrecorded, in one batch.
    async fn many_unrecorded(shares: &DiskShares, count: u32) {
        let mut staged = Vec::new();
        for n in 0..count {
            let bytes = n.to_le_bytes().to_vec();
            let id = crate::chunk::share_id(&bytes);
            let body = futures_util::stream::iter([Ok(bytes::Bytes::from(bytes))]);
            staged.push((shares.stage(&id, Box::pin(body), 4).await.unwrap(), false));
        }
        for placed in shares.commit_batch(staged).await {
            placed.unwrap();
        }
    }

    /// More unrecorded shares than crashes leave, or a ledger that records
    /// nothing: the ledger is not the one they were stored under, and
    /// nothing is removed.
    #[tokio::test]
    async fn a_ledger_that_does_not_know_the_store_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger.sqlite"), free_terms(3600)).unwrap();
        let shares = std::sync::Arc::new(DiskShares::open(dir.path()).unwrap());
        let lone = placed_unrecorded(&shares, vec![9; 70_000]).await;

        // A ledger with no record at all.
        let report = sweep_unrecorded(&ledger, &shares, &RwLock::new(()))
            .await
            .unwrap();
        assert_eq!((report.unrecorded, report.removed), (1, 0), "{report:?}");
        assert!(shares.contains(&lone).await.unwrap());

        // One that records some, with far more unrecorded than a crash
        // leaves.
        stored_shares(&ledger, &shares, 1, 70_000).await;
        many_unrecorded(&shares, MOST as u32 + 10).await;
        let report = sweep_unrecorded(&ledger, &shares, &RwLock::new(()))
            .await
            .unwrap();
        assert!(report.unrecorded > MOST as u64, "{report:?}");
        assert_eq!(report.removed, 0);
        assert!(shares.contains(&lone).await.unwrap());
    }
}
