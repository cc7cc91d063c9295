//! Group commit of share uploads.
//!
//! A share upload is acknowledged only once its bytes and its ledger record
//! are durable. Done one upload at a time, that is a rename and a shard
//! directory fsync, then an SQLite commit (a WAL fsync) under the ledger's
//! lock, so concurrent uploads queue behind each other's fsyncs. Instead,
//! uploads that have finished staging (their bodies already written and
//! fsynced, in parallel, with no lock held) wait here; one task takes every
//! upload waiting at that moment, renames them all into place, fsyncs each
//! shard directory once, records them all in one ledger transaction, and
//! only then answers each. Nothing waits for a batch to fill: a lone upload
//! goes through at once, and a batch is whatever arrived while the last one
//! was being made durable.
//!
//! The batch holds the finalize lock (shared) from the first rename to the
//! last record, exactly as a single upload did, so GC, which takes it
//! exclusively, never sees a renamed share without its record.

use std::sync::Arc;

use tokio::sync::{RwLock, mpsc, oneshot};

use super::clock::LedgerClock;
use super::ledger::NewShare;
use super::{DiskShares, Error, Ledger, Result, ShareStore, Staged};

/// Most uploads one batch takes.
pub(super) const MAX_BATCH: usize = 256;
/// Uploads that may wait for a batch before senders wait to queue.
const QUEUE: usize = 1024;

/// A staged upload waiting to be committed.
struct Waiting {
    staged: Staged,
    repair: bool,
    account: [u8; 32],
    answer: oneshot::Sender<Result<()>>,
}

/// The queue in front of the commit task. Dropping every handle stops it.
pub(super) struct CommitQueue {
    queue: mpsc::Sender<Waiting>,
}

impl CommitQueue {
    /// Start the commit task.
    pub(super) fn start(
        shares: Arc<DiskShares>,
        ledger: Ledger,
        finalize: Arc<RwLock<()>>,
        clock: LedgerClock,
    ) -> CommitQueue {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(run(waiting, shares, ledger, finalize, clock));
        CommitQueue { queue }
    }

    /// Publish a staged share and record `account`'s lease on it; returns
    /// once both are durable (or refused: quota, capacity, funding, in
    /// which case no unrecorded file is left behind).
    pub(super) async fn commit(
        &self,
        staged: Staged,
        repair: bool,
        account: [u8; 32],
    ) -> Result<()> {
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            staged,
            repair,
            account,
            answer,
        };
        self.queue
            .send(waiting)
            .await
            .map_err(|_| Error::Commit("the commit task has stopped".into()))?;
        answered
            .await
            .map_err(|_| Error::Commit("the commit task dropped an upload".into()))?
    }
}

async fn run(
    mut queue: mpsc::Receiver<Waiting>,
    shares: Arc<DiskShares>,
    ledger: Ledger,
    finalize: Arc<RwLock<()>>,
    clock: LedgerClock,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        tracing::trace!(uploads = batch.len(), "group commit");
        let (work, answers): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|w| ((w.staged, w.repair, w.account), w.answer))
            .unzip();
        let results = commit_batch(&shares, &ledger, &finalize, &clock, work).await;
        for (answer, result) in answers.into_iter().zip(results) {
            // The uploader may have gone; its share is stored all the same.
            let _ = answer.send(result);
        }
    }
}

/// Rename, fsync and record one batch; one result per upload, in order.
async fn commit_batch(
    shares: &DiskShares,
    ledger: &Ledger,
    finalize: &RwLock<()>,
    clock: &LedgerClock,
    work: Vec<(Staged, bool, [u8; 32])>,
) -> Vec<Result<()>> {
    let _guard = finalize.read().await;
    let mut records = Vec::with_capacity(work.len());
    let mut staged = Vec::with_capacity(work.len());
    for (s, repair, account) in work {
        records.push(NewShare {
            account,
            id: *s.id(),
            size: 0,
            // Stamped as they are recorded, below.
            now: 0,
        });
        staged.push((s, repair));
    }
    let placed = shares.commit_batch(staged).await;
    // Only shares now durable on disk are recorded. One whose placing
    // failed may have been renamed into place all the same (its
    // directory's fsync failed): like a refused one, below, it must not
    // stay as a file no ledger row records, which nothing would remove.
    let mut results: Vec<Result<()>> = Vec::with_capacity(records.len());
    let mut to_record = Vec::new();
    let mut unrecorded = Vec::new();
    for (i, p) in placed.into_iter().enumerate() {
        match p {
            Ok(size) => {
                records[i].size = size;
                to_record.push(i);
                results.push(Ok(()));
            }
            Err(e) => {
                unrecorded.push(records[i].id);
                results.push(Err(e));
            }
        }
    }
    if !to_record.is_empty() {
        record(
            ledger,
            clock,
            &records,
            &to_record,
            &mut results,
            &mut unrecorded,
        )
        .await;
    }
    // Leave no unrecorded file (another upload of the same share, in this
    // batch or before it, may have recorded it; then it stays).
    if !unrecorded.is_empty() {
        let orphans = ledger
            .run(move |l| l.unrecorded(&unrecorded))
            .await
            .unwrap_or_default();
        for id in orphans {
            let _ = shares.delete(&id).await;
        }
    }
    results
}

/// Record the placed shares `to_record` (indices into `records`) in one
/// ledger transaction; each refused, or all if the transaction failed,
/// gets its error in `results` and its id in `unrecorded`.
async fn record(
    ledger: &Ledger,
    clock: &LedgerClock,
    records: &[NewShare],
    to_record: &[usize],
    results: &mut [Result<()>],
    unrecorded: &mut Vec<[u8; 32]>,
) {
    let mut batch: Vec<NewShare> = to_record.iter().map(|&i| records[i]).collect();
    // Leases run from the time they are recorded, under a stamp: a look
    // moves the ledger's rows and its clock together (`keep_time`), and a
    // time read before that, while the body came in, would be in the old
    // frame.
    let recorded = ledger
        .run_stamped(clock, move |l, now| {
            for record in &mut batch {
                record.now = now;
            }
            l.add_shares(&batch)
        })
        .await;
    match recorded {
        Ok(each) => {
            for (&i, r) in to_record.iter().zip(each) {
                if let Err(e) = r {
                    unrecorded.push(records[i].id);
                    results[i] = Err(e);
                }
            }
        }
        Err(e) => {
            let reason = e.to_string();
            for &i in to_record {
                unrecorded.push(records[i].id);
                results[i] = Err(Error::Commit(reason.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::disk::faults;
    use crate::mirror::testing::free_terms;

    /// A share renamed into place whose directory's fsync then failed is
    /// not recorded, and its file does not stay behind, held by nothing
    /// (no GC pass or scrub would find it: they walk the ledger). With the
    /// disk well again, the same upload goes through.
    #[tokio::test]
    async fn a_batch_whose_directory_sync_failed_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let shares = DiskShares::open(dir.path()).unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger.sqlite"), free_terms(3600)).unwrap();
        let (finalize, clock) = (RwLock::new(()), LedgerClock::new(1_000_000));
        let bytes: Vec<u8> = (0..1usize << 20).map(|i| (i * 7 % 251) as u8).collect();
        let id = crate::chunk::share_id(&bytes);
        let stage = || async {
            let body = futures_util::stream::iter([Ok(bytes::Bytes::from(bytes.clone()))]);
            shares
                .stage(&id, Box::pin(body), bytes.len() as u64)
                .await
                .unwrap()
        };

        // One upload of the share, alone in its batch, with every
        // directory fsync failing or not.
        let upload = |repair: bool, account: [u8; 32], failing: bool| {
            let (shares, ledger, finalize, clock) = (&shares, &ledger, &finalize, &clock);
            let (stage, root) = (&stage, dir.path());
            async move {
                let staged = stage().await;
                faults::fail_dir_syncs_under(root, failing);
                let done = commit_batch(
                    shares,
                    ledger,
                    finalize,
                    clock,
                    vec![(staged, repair, account)],
                )
                .await;
                faults::fail_dir_syncs_under(root, false);
                done.into_iter().next().expect("one result")
            }
        };

        assert!(upload(false, [1; 32], true).await.is_err());
        assert!(!ledger.has_object(&id).unwrap());
        assert!(
            !shares.path_of(&id).exists(),
            "an unrecorded share file stayed behind"
        );

        let stored = upload(false, [1; 32], false).await;
        assert!(stored.is_ok(), "{stored:?}");
        assert!(ledger.has_object(&id).unwrap());
        assert_eq!(std::fs::read(shares.path_of(&id)).unwrap(), bytes);

        // A recorded copy stays when a later upload of it (or a repair)
        // fails the same way: the ledger holds it.
        for repair in [false, true] {
            assert!(upload(repair, [2; 32], true).await.is_err());
            assert_eq!(std::fs::read(shares.path_of(&id)).unwrap(), bytes);
        }
    }
}
