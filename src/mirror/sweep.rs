//! The start-up sweep: share files that no ledger row records.
//!
//! An upload is acknowledged only once its share is in place and recorded,
//! in that order (`commit.rs`): a crash between the two leaves a share file
//! that the ledger does not know. GC and the scrubber walk the ledger and
//! never see it, no account pays for it, and only a later upload of the
//! same share would record it. No one was told it was stored, so each
//! start the mirror walks its shard directories, in the background, and
//! removes such files.
//!
//! Only a crash's leftovers, as far as they can be told apart: a file
//! written in the minutes before the mirror was last seen up (the ledger
//! notes that once a minute), and no more than a few group commits' worth
//! in all. An unrecorded file older than that, or many of them, or any
//! with a ledger that records nothing, means a ledger other than the one
//! the shares were stored under (lost and made anew, or restored from a
//! backup): those files are what clients rely on, and stay, with an error
//! logged. Small shares kept as rows (`small.rs`) carry no time and are
//! not swept: a crash leaves at most a batch of them, 64 KiB each.
//!
//! Candidates are found with no lock held. Each is asked about again, and
//! removed, under the lock uploads hold from their rename to their record
//! (GC's, taken exclusively): a share renamed into place a moment before
//! its record is kept.

use tokio::sync::RwLock;

use super::{DiskShares, Ledger, Result};
use crate::chunk::ShareId;

/// Ids asked of the ledger at a time.
const BATCH: usize = 1024;

/// The most unrecorded shares a sweep removes: a few crashes' worth (each
/// leaves at most one group commit), in case a sweep was stopped before
/// it ended. More, and it removes none.
const MOST: usize = 4 * super::commit::MAX_BATCH;

/// How long before the mirror was last seen up a crash's leftover may
/// have been written: the look is once a minute, and a body's last write
/// comes just before its rename.
const WINDOW_SECS: i64 = 600;

/// What a sweep found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Share files looked at.
    pub checked: u64,
    /// Files the ledger did not record (at most `MOST + 1` are counted).
    pub unrecorded: u64,
    pub removed: u64,
    pub bytes: u64,
}

/// Walk every shard directory once, then remove each share file the
/// ledger does not record, if they look like a crash's leftovers: at most
/// [`MOST`], all written since `WINDOW_SECS` before `last_up` (when the
/// mirror was last seen up before this start, from
/// [`Ledger::alive_at`]; `None` removes nothing).
pub(super) async fn sweep_unrecorded(
    ledger: &Ledger,
    shares: &std::sync::Arc<DiskShares>,
    finalize: &RwLock<()>,
    last_up: Option<i64>,
) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    let mut found = Vec::new();
    for first in 0..=u8::MAX {
        let store = shares.clone();
        let files = tokio::task::spawn_blocking(move || store.files_in_shard(first))
            .await
            .map_err(|e| super::Error::Task(e.to_string()))?;
        let files = match files {
            Ok(files) => files,
            // A shard directory removed by hand: nothing in it to sweep.
            Err(super::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for part in files.chunks(BATCH) {
            report.checked += part.len() as u64;
            let part = part.to_vec();
            found.extend(ledger.run(move |l| l.unrecorded(&part)).await?);
        }
        if found.len() > MOST {
            break;
        }
    }
    report.unrecorded = found.len() as u64;
    if found.is_empty() {
        return Ok(report);
    }
    let store = shares.clone();
    let since = last_up.map(|t| t - WINDOW_SECS);
    let (recent, old) = tokio::task::spawn_blocking(move || {
        found.into_iter().partition::<Vec<_>, _>(|id| {
            let written = std::fs::metadata(store.path_of(id))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64);
            matches!((since, written), (Some(since), Some(at)) if at >= since)
        })
    })
    .await
    .map_err(|e| super::Error::Task(e.to_string()))?;
    if report.unrecorded as usize > MOST
        || !old.is_empty()
        || !ledger.run(|l| l.records_any()).await?
    {
        tracing::error!(
            unrecorded = report.unrecorded,
            older = old.len(),
            "share files are held that the ledger does not record, more or older than a crash \
             leaves: is ledger.sqlite the one they were stored under? None was removed"
        );
        return Ok(report);
    }
    for part in recent.chunks(BATCH) {
        remove_unrecorded(ledger, shares, finalize, part.to_vec(), &mut report).await?;
    }
    if report.removed > 0 {
        tracing::warn!(
            shares = report.removed,
            bytes = report.bytes,
            "removed share files no ledger row recorded (left by a crash between storing and recording)"
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
            if moved.is_some() {
                report.removed += 1;
                report.bytes += bytes;
            }
            retired.extend(moved);
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
    use crate::mirror::unix_now;

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

    fn set_up() -> (tempfile::TempDir, Ledger, std::sync::Arc<DiskShares>) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger.sqlite"), free_terms(3600)).unwrap();
        let shares = std::sync::Arc::new(DiskShares::open(dir.path()).unwrap());
        (dir, ledger, shares)
    }

    async fn sweep(
        ledger: &Ledger,
        shares: &std::sync::Arc<DiskShares>,
        up: Option<i64>,
    ) -> SweepReport {
        sweep_unrecorded(ledger, shares, &RwLock::new(()), up)
            .await
            .unwrap()
    }

    /// A share file written just before the mirror was last seen up, that
    /// no ledger row records, is removed; recorded shares stay, and so do
    /// a file that is not a share's and an unrecorded small row.
    #[tokio::test]
    async fn a_crashs_unrecorded_share_file_is_removed() {
        let (dir, ledger, shares) = set_up();
        let mut kept = stored_shares(&ledger, &shares, 2, 70_000).await;
        kept.extend(stored_shares(&ledger, &shares, 2, 1_000).await);
        let lost = placed_unrecorded(&shares, vec![7; 70_000]).await;
        let row = placed_unrecorded(&shares, vec![8; 1_000]).await;
        let stray = dir.path().join("shares").join("00").join("README");
        std::fs::write(&stray, b"not a share").unwrap();
        assert!(shares.contains(&lost).await.unwrap());

        let report = sweep(&ledger, &shares, Some(unix_now())).await;

        assert_eq!((report.unrecorded, report.removed), (1, 1), "{report:?}");
        assert_eq!((report.bytes, report.checked), (70_000, 3));
        assert!(
            !shares.contains(&lost).await.unwrap(),
            "an unrecorded share stayed"
        );
        for id in kept.iter().chain([&row]) {
            assert!(
                shares.contains(id).await.unwrap(),
                "a share went that should stay"
            );
        }
        assert!(stray.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Unrecorded files that are not a crash's leftovers stay: with a
    /// ledger that records nothing, or none that says when the mirror was
    /// up, or one written long before that, or more than crashes leave.
    /// Each is a ledger other than the one the shares were stored under.
    #[tokio::test]
    async fn a_ledger_that_does_not_know_the_store_removes_nothing() {
        let (dir, ledger, shares) = set_up();
        let lone = placed_unrecorded(&shares, vec![9; 70_000]).await;
        let now = unix_now();
        // A ledger with no record at all.
        let report = sweep(&ledger, &shares, Some(now)).await;
        assert_eq!((report.unrecorded, report.removed), (1, 0), "{report:?}");

        stored_shares(&ledger, &shares, 1, 70_000).await;
        // No time the mirror was last up.
        assert_eq!(sweep(&ledger, &shares, None).await.removed, 0);
        // Written long before it was last up.
        let file = std::fs::File::options()
            .write(true)
            .open(shares.path_of(&lone))
            .unwrap();
        let long_ago =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs((now - 3 * WINDOW_SECS) as u64);
        file.set_modified(long_ago).unwrap();
        assert_eq!(sweep(&ledger, &shares, Some(now)).await.removed, 0);
        assert!(shares.contains(&lone).await.unwrap());

        // Recent, but far more than a crash leaves.
        for n in 0..MOST as u32 + 10 {
            let id = crate::chunk::share_id(&n.to_le_bytes());
            std::fs::write(shares.path_of(&id), n.to_le_bytes()).unwrap();
        }
        let report = sweep(&ledger, &shares, Some(now)).await;
        assert!(report.unrecorded > MOST as u64, "{report:?}");
        assert_eq!(report.removed, 0);
        assert!(dir.path().join("shares").read_dir().is_ok());
        assert!(shares.contains(&lone).await.unwrap());
    }
}
