//! Garbage collection: delete what no live lease covers, never what one does.

use tokio::sync::RwLock;

use super::clock::LedgerClock;
use super::{DiskShares, Ledger, ObjectKind, Result};

/// What one GC pass freed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub shares: u64,
    pub slots: u64,
    pub bytes: u64,
}

/// One GC pass. `finalize` is the lock that share uploads hold while they
/// rename a share into place and record it: GC holds it exclusively while it
/// forgets and deletes, so an upload racing with GC never loses its file.
/// Times are the ledger's (`clock.rs`): each share is forgotten only if
/// its leases have lapsed at the time read under the stamp that forgets
/// it, so a look moving the rows meanwhile cannot make it seem lapsed.
pub(super) async fn collect_garbage(
    ledger: &Ledger,
    shares: &DiskShares,
    finalize: &RwLock<()>,
    clock: &LedgerClock,
) -> Result<GcReport> {
    let mut report = GcReport::default();
    // Share files are moved aside under the lock and unlinked after it
    // (`DiskShares::retire`): uploads do not wait for the disk's trims.
    let mut retired = Vec::new();
    // What a pass cut short (a crash, a failed unlink) forgot but left on
    // disk: removed first, unless stored anew since. Asked under the lock
    // uploads hold while they record a share: asked before it, a share
    // recorded anew while GC waited for the lock lost its file. One that
    // cannot be removed stays recorded for a later pass, and stops no
    // pass: every pass would have ended there, and nothing was freed
    // again.
    {
        let _guard = finalize.write().await;
        for (id, known) in ledger.run(|l| l.doomed()).await? {
            if !known {
                match shares.retire(&id).await {
                    Ok((_, moved)) => retired.extend(moved),
                    Err(e) => {
                        tracing::warn!(share = %crate::protocol::hex(&id), error = %e, "a share GC forgot cannot be removed; trying again at the next pass");
                        continue;
                    }
                }
            }
            ledger.run(move |l| l.spare(&id)).await?;
        }
    }
    unlink(&mut retired).await;
    loop {
        let now = clock.now();
        let batch = ledger.run(move |l| l.unleased(now, 1000)).await?;
        if batch.is_empty() {
            break;
        }
        let pass = async {
            let _guard = finalize.write().await;
            for (id, _) in batch {
                let forgotten = ledger
                    .run_stamped(clock, move |l, now| l.forget_if_unleased(&id, now))
                    .await?;
                match forgotten {
                    Some((ObjectKind::Share, size)) => {
                        retired.extend(shares.retire(&id).await?.1);
                        ledger.run(move |l| l.spare(&id)).await?;
                        report.shares += 1;
                        report.bytes += size;
                    }
                    Some((ObjectKind::Slot, size)) => {
                        report.slots += 1;
                        report.bytes += size;
                    }
                    None => {}
                }
            }
            Ok::<(), super::Error>(())
        }
        .await;
        unlink(&mut retired).await;
        pass?;
    }
    if report.shares + report.slots > 0 {
        tracing::info!(
            shares = report.shares,
            slots = report.slots,
            bytes = report.bytes,
            "gc freed"
        );
    }
    Ok(report)
}

/// Unlink share files GC (or the sweep) moved aside, now that it holds no
/// lock. One that cannot be unlinked stays in `tmp/` until the mirror starts again.
pub(super) async fn unlink(retired: &mut Vec<std::path::PathBuf>) {
    for path in retired.drain(..) {
        if let Err(e) = tokio::fs::remove_file(&path).await {
            tracing::warn!(file = %path.display(), error = %e, "a share GC removed is left in tmp/ until the mirror starts again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::testing::{free_terms, stored_shares};
    use crate::mirror::{ShareStore, unix_now};

    /// A share GC forgot but did not get to remove (the pass cut short
    /// between the two) is removed by the next pass; one forgotten and
    /// then stored anew stays. The first was on disk for good, counted
    /// nowhere.
    #[tokio::test]
    async fn a_pass_cut_short_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger.sqlite"), free_terms(1)).unwrap();
        let shares = DiskShares::open(dir.path()).unwrap();
        let ids = stored_shares(&ledger, &shares, 2, 70_000).await;
        // Both forgotten, as a pass that then stopped would have.
        for id in &ids {
            assert!(ledger.forget_if_unleased(id, 2000).unwrap().is_some());
        }
        // The second is stored anew before the next pass.
        ledger
            .add_share(&[1; 32], &ids[1], 70_000, unix_now())
            .unwrap();
        let finalize = RwLock::new(());
        collect_garbage(&ledger, &shares, &finalize, &LedgerClock::new(unix_now()))
            .await
            .unwrap();
        assert!(!shares.contains(&ids[0]).await.unwrap(), "left behind");
        assert!(shares.contains(&ids[1]).await.unwrap(), "stored anew");
        assert!(ledger.doomed().unwrap().is_empty());
        // Moved aside under the lock, unlinked after it: nothing is left.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
