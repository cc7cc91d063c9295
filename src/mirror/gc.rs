//! Garbage collection: delete what no live lease covers, never what one does.

use tokio::sync::RwLock;

use super::{DiskShares, Ledger, ObjectKind, Result, ShareStore, unix_now};

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
pub async fn collect_garbage(
    ledger: &Ledger,
    shares: &DiskShares,
    finalize: &RwLock<()>,
) -> Result<GcReport> {
    let mut report = GcReport::default();
    loop {
        let now = unix_now();
        let batch = ledger.run(move |l| l.unleased(now, 1000)).await?;
        if batch.is_empty() {
            break;
        }
        let _guard = finalize.write().await;
        for (id, _) in batch {
            let forgotten = ledger.run(move |l| l.forget_if_unleased(&id, now)).await?;
            match forgotten {
                Some((ObjectKind::Share, size)) => {
                    shares.delete(&id).await?;
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
