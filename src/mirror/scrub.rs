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
    /// Shares whose bytes did not hash to their id, now removed.
    pub damaged: u64,
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
        for (id, _) in batch {
            after = Some(id);
            let Some(read) = hashes_to_id(shares, &id).await? else {
                continue; // not on disk: nothing to check
            };
            report.checked += 1;
            report.bytes += read.1;
            if !read.0 {
                let _guard = finalize.write().await;
                if hashes_to_id(shares, &id).await?.is_some_and(|(ok, _)| !ok) {
                    shares.delete(&id).await?;
                    report.damaged += 1;
                    tracing::error!(
                        share = %crate::protocol::hex(&id),
                        "a stored share no longer matches its id; removed, for the next upload or repair to store it again"
                    );
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
