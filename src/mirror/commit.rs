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
//!
//! An upload of a share the mirror already holds comes here too, to have
//! its lease recorded in the same transaction: re-uploading a tree whose
//! shares are all held (a second copy of a directory, say) was one ledger
//! transaction, so one WAL fsync, per share, one after another under the
//! ledger's lock.

use std::sync::Arc;

use tokio::sync::{RwLock, mpsc, oneshot};

use super::ledger::NewShare;
use super::{DiskShares, Error, Ledger, Result, ShareStore, Staged};

/// Most uploads one batch takes.
const MAX_BATCH: usize = 256;
/// Uploads that may wait for a batch before senders wait to queue.
const QUEUE: usize = 1024;

/// An upload waiting to be committed.
struct Waiting {
    work: Work,
    account: [u8; 32],
    now: i64,
    /// `Ok(false)`: a lease for a share that is no longer held.
    answer: oneshot::Sender<Result<bool>>,
}

enum Work {
    /// A staged body to publish and record.
    Store { staged: Staged, repair: bool },
    /// A lease on a share the mirror already holds.
    Lease { id: [u8; 32] },
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
    ) -> CommitQueue {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(run(waiting, shares, ledger, finalize));
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
        now: i64,
    ) -> Result<()> {
        self.submit(Work::Store { staged, repair }, account, now)
            .await
            .map(|_| ())
    }

    /// Lease a share the mirror holds for `account`, durably; `false` if
    /// it is not held any more (GC took it since the caller looked).
    pub(super) async fn lease(&self, id: [u8; 32], account: [u8; 32], now: i64) -> Result<bool> {
        self.submit(Work::Lease { id }, account, now).await
    }

    async fn submit(&self, work: Work, account: [u8; 32], now: i64) -> Result<bool> {
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            work,
            account,
            now,
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
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        tracing::trace!(uploads = batch.len(), "group commit");
        let (work, answers): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|w| ((w.work, w.account, w.now), w.answer))
            .unzip();
        let results = commit_batch(&shares, &ledger, &finalize, work).await;
        for (answer, result) in answers.into_iter().zip(results) {
            // The uploader may have gone; its share is stored all the same.
            let _ = answer.send(result);
        }
    }
}

/// Publish, fsync and record one batch; one result per upload, in order.
async fn commit_batch(
    shares: &DiskShares,
    ledger: &Ledger,
    finalize: &RwLock<()>,
    work: Vec<(Work, [u8; 32], i64)>,
) -> Vec<Result<bool>> {
    let _guard = finalize.read().await;
    let n = work.len();
    let mut results: Vec<Option<Result<bool>>> = (0..n).map(|_| None).collect();
    // Stores: (index, record); leases: (index, lease).
    let mut stores = Vec::new();
    let mut staged = Vec::new();
    let mut leases = Vec::new();
    for (i, (w, account, now)) in work.into_iter().enumerate() {
        match w {
            Work::Store { staged: s, repair } => {
                let record = NewShare {
                    account,
                    id: *s.id(),
                    size: 0,
                    now,
                };
                stores.push((i, record));
                staged.push((s, repair));
            }
            Work::Lease { id } => leases.push((
                i,
                NewShare {
                    account,
                    id,
                    size: 0,
                    now,
                },
            )),
        }
    }
    let placed = if staged.is_empty() {
        Vec::new()
    } else {
        shares.commit_batch(staged).await
    };
    // Only shares now durable on disk are recorded.
    let mut to_record = Vec::new();
    for ((i, mut record), p) in stores.into_iter().zip(placed) {
        match p {
            Ok(size) => {
                record.size = size;
                to_record.push((i, record));
            }
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    let store_batch: Vec<NewShare> = to_record.iter().map(|(_, r)| *r).collect();
    let lease_batch: Vec<NewShare> = leases.iter().map(|(_, l)| *l).collect();
    let recorded = if store_batch.is_empty() && lease_batch.is_empty() {
        Ok((Vec::new(), Vec::new()))
    } else {
        ledger
            .run(move |l| l.record_batch(&store_batch, &lease_batch))
            .await
    };
    let mut unrecorded = Vec::new();
    match recorded {
        Ok((stored, leased)) => {
            for ((i, record), r) in to_record.iter().zip(stored) {
                results[*i] = Some(match r {
                    Ok(()) => Ok(true),
                    Err(e) => {
                        unrecorded.push(record.id);
                        Err(e)
                    }
                });
            }
            for ((i, _), r) in leases.iter().zip(leased) {
                results[*i] = Some(r);
            }
        }
        Err(e) => {
            let reason = e.to_string();
            for (i, record) in &to_record {
                unrecorded.push(record.id);
                results[*i] = Some(Err(Error::Commit(reason.clone())));
            }
            for (i, _) in &leases {
                results[*i] = Some(Err(Error::Commit(reason.clone())));
            }
        }
    }
    // Refused: leave no unrecorded file (another upload of the same share,
    // in this batch or before it, may have recorded it; then it stays).
    if !unrecorded.is_empty() {
        let orphans = ledger
            .run(move |l| {
                let mut out = Vec::new();
                for id in unrecorded {
                    if !l.has_object(&id)? {
                        out.push(id);
                    }
                }
                Ok(out)
            })
            .await
            .unwrap_or_default();
        for id in orphans {
            let _ = shares.delete(&id).await;
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every upload of the batch is answered"))
        .collect()
}
