//! Small shares, kept as rows of one SQLite file instead of one file each.
//!
//! A share of a few KiB (a small file's chunk, a manifest node) cost a
//! mirror more in file system work than in bytes: a staging file created,
//! written and fsynced, a rename, a shard directory made and fsynced, and
//! on this project's VM each of those fsyncs is a device flush. Untarring
//! 3,000 small files into fresh mirrors took each mirror 8–12 CPU seconds.
//! Here a batch of small shares is one transaction: one WAL append and one
//! fsync for all of them, made in the same group commit that records their
//! leases (`commit.rs`).
//!
//! Layout: `DATA/small-shares.sqlite`, table `shares(id, data)`, the id the
//! share's hash as for files. `PRAGMA user_version` is the format version.
//! A share is held either here or as a file (`disk.rs`), never needed in
//! both; readers look at the file first.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::ledger::cached_row;
use crate::chunk::ShareId;

/// The format of `small-shares.sqlite`.
const FORMAT_VERSION: i64 = 1;

/// Shares of at most this many bytes (by the length an upload declares)
/// are kept here. SQLite stores such rows well (its own measurements put
/// reads of blobs this size faster than from separate files), and the
/// erasure-coded chunk shares of real files are far larger.
pub const SMALL_MAX: u64 = 64 * 1024;

/// The table of small shares. Writers and readers have a connection each,
/// so a batch being committed does not hold up reads (WAL mode).
pub struct SmallShares {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

/// One small share to store.
pub struct NewSmall<'a> {
    pub id: &'a ShareId,
    pub data: &'a [u8],
    /// Replace a held copy that no longer hashes to its id.
    pub replace_corrupt: bool,
}

impl SmallShares {
    /// Open (creating if need be) the table under `data`.
    pub fn open(data: &Path) -> rusqlite::Result<SmallShares> {
        let path = data.join("small-shares.sqlite");
        let writer = Connection::open(&path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        // An acknowledged upload must survive a power cut.
        writer.pragma_update(None, "synchronous", "FULL")?;
        let version: i64 = writer.pragma_query_value(None, "user_version", |r| r.get(0))?;
        match version {
            0 => {
                writer.execute_batch(
                    "CREATE TABLE IF NOT EXISTS shares (
                         id BLOB PRIMARY KEY NOT NULL,
                         data BLOB NOT NULL
                     );",
                )?;
                writer.pragma_update(None, "user_version", FORMAT_VERSION)?;
            }
            FORMAT_VERSION => {}
            other => {
                return Err(rusqlite::Error::InvalidParameterName(format!(
                    "{} has format version {other}; this lode reads {FORMAT_VERSION}",
                    path.display()
                )));
            }
        }
        let reader = Connection::open(&path)?;
        Ok(SmallShares {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    /// Store `shares` in one transaction (blocking). Returns each one's
    /// stored length, in order; a share already held (and, if asked,
    /// still good) is kept as it is. Durable when this returns `Ok`.
    pub fn put_all(&self, shares: &[NewSmall<'_>]) -> rusqlite::Result<Vec<u64>> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(shares.len());
        {
            let mut held = tx.prepare_cached("SELECT data FROM shares WHERE id = ?1")?;
            let mut put =
                tx.prepare_cached("INSERT OR REPLACE INTO shares (id, data) VALUES (?1, ?2)")?;
            for s in shares {
                let existing: Option<Vec<u8>> = held
                    .query_row(params![&s.id[..]], |r| r.get(0))
                    .optional()?;
                match existing {
                    Some(old) if !s.replace_corrupt || crate::chunk::share_id(&old) == *s.id => {
                        out.push(old.len() as u64)
                    }
                    _ => {
                        put.execute(params![&s.id[..], s.data])?;
                        out.push(s.data.len() as u64);
                    }
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// The share's bytes, if held (blocking).
    pub fn get(&self, id: &ShareId) -> rusqlite::Result<Option<Vec<u8>>> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        cached_row(
            &conn,
            "SELECT data FROM shares WHERE id = ?1",
            [&id[..]],
            |r| r.get(0),
        )
        .optional()
    }

    /// Whether the share is held (blocking).
    pub fn contains(&self, id: &ShareId) -> rusqlite::Result<bool> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let found = cached_row(
            &conn,
            "SELECT 1 FROM shares WHERE id = ?1",
            [&id[..]],
            |_| Ok(()),
        );
        Ok(found.optional()?.is_some())
    }

    /// Remove a share; returns the bytes freed, 0 if it was not held
    /// (blocking).
    pub fn delete(&self, id: &ShareId) -> rusqlite::Result<u64> {
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let freed: Option<i64> = cached_row(
            &conn,
            "DELETE FROM shares WHERE id = ?1 RETURNING length(data)",
            [&id[..]],
            |r| r.get(0),
        )
        .optional()?;
        Ok(freed.unwrap_or(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(n: u8) -> (ShareId, Vec<u8>) {
        let data = vec![n; 100 + n as usize];
        (crate::chunk::share_id(&data), data)
    }

    #[test]
    fn stores_reads_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let small = SmallShares::open(dir.path()).unwrap();
        let (a, da) = share(1);
        let (b, db) = share(2);
        let lens = small
            .put_all(&[
                NewSmall {
                    id: &a,
                    data: &da,
                    replace_corrupt: false,
                },
                NewSmall {
                    id: &b,
                    data: &db,
                    replace_corrupt: false,
                },
            ])
            .unwrap();
        assert_eq!(lens, vec![da.len() as u64, db.len() as u64]);
        assert_eq!(small.get(&a).unwrap().unwrap(), da);
        assert!(small.contains(&b).unwrap());
        assert_eq!(small.delete(&a).unwrap(), da.len() as u64);
        assert_eq!(small.delete(&a).unwrap(), 0);
        assert!(small.get(&a).unwrap().is_none());
        // Reopened: what was committed is there.
        drop(small);
        let small = SmallShares::open(dir.path()).unwrap();
        assert_eq!(small.get(&b).unwrap().unwrap(), db);
    }

    /// A held copy is kept, unless it is corrupt and a repair brings a
    /// good one.
    #[test]
    fn held_copies_are_kept_unless_corrupt_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let small = SmallShares::open(dir.path()).unwrap();
        let (a, da) = share(3);
        let bad = vec![0u8; 7];
        // Plant a corrupt copy under a's id.
        small
            .put_all(&[NewSmall {
                id: &a,
                data: &bad,
                replace_corrupt: false,
            }])
            .unwrap();
        small
            .put_all(&[NewSmall {
                id: &a,
                data: &da,
                replace_corrupt: false,
            }])
            .unwrap();
        assert_eq!(
            small.get(&a).unwrap().unwrap(),
            bad,
            "kept without a repair"
        );
        let lens = small
            .put_all(&[NewSmall {
                id: &a,
                data: &da,
                replace_corrupt: true,
            }])
            .unwrap();
        assert_eq!(lens, vec![da.len() as u64]);
        assert_eq!(
            small.get(&a).unwrap().unwrap(),
            da,
            "replaced by the repair"
        );
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SmallShares::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join("small-shares.sqlite")).unwrap();
        conn.pragma_update(None, "user_version", 9).unwrap();
        drop(conn);
        let err = SmallShares::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("format version 9"), "{err}");
    }
}
