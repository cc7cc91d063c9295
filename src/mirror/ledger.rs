//! The mirror's ledger: accounts, objects, leases and directory slots, in
//! SQLite (WAL, `synchronous=FULL`), so that it survives crashes.
//!
//! An account pays for every object it holds a live lease on, so a share
//! that two accounts store counts for both. The SQL is plain and portable
//! (no SQLite-only functions) so the ledger can move to PostgreSQL.
//! The `credit` column is reserved for the proof-of-work pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Error, Result};
use crate::dir::SlotEnvelope;

/// The schema version this code writes.
pub const LEDGER_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    id BLOB PRIMARY KEY,
    created INTEGER NOT NULL,
    credit INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS objects (
    id BLOB PRIMARY KEY,
    kind INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    account BLOB NOT NULL,
    object BLOB NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (account, object)
);
CREATE INDEX IF NOT EXISTS leases_object ON leases (object, expires);
CREATE TABLE IF NOT EXISTS slots (
    pk BLOB PRIMARY KEY,
    seq INTEGER NOT NULL,
    envelope BLOB NOT NULL
);
";

/// Version 2: proof-of-work credit, storage debits, accepted shares.
const SCHEMA_V2: &str = "
ALTER TABLE accounts ADD COLUMN debit INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN charged_at INTEGER;
ALTER TABLE accounts ADD COLUMN unfunded_since INTEGER;
CREATE TABLE pool_shares (
    id INTEGER PRIMARY KEY,
    account BLOB NOT NULL,
    worker TEXT NOT NULL,
    difficulty INTEGER NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    created INTEGER NOT NULL,
    upstream INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX pool_shares_account ON pool_shares (account);
";

/// What an object in the ledger is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Share = 0,
    Slot = 1,
}

impl ObjectKind {
    fn from_i64(v: i64) -> ObjectKind {
        if v == 1 {
            ObjectKind::Slot
        } else {
            ObjectKind::Share
        }
    }
}

/// Limits and terms of a mirror.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    pub lease_secs: i64,
    pub quota: Option<u64>,
    pub capacity: Option<u64>,
    /// Price in millionths of a difficulty-1 share per GiB-day; 0 is free.
    pub price_micro: u64,
    /// How long an account may stay at or below zero balance and still
    /// renew leases.
    pub grace_secs: i64,
    /// Bytes per account that cost nothing.
    pub free_bytes: u64,
}

/// What a batch renewal did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renewal {
    pub renewed: u64,
    /// Ids this mirror does not hold.
    pub missing: Vec<[u8; 32]>,
    /// Ids held but refused a lease (quota, funding).
    pub refused: Vec<[u8; 32]>,
}

/// A share just stored, to be recorded with its first lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewShare {
    pub account: [u8; 32],
    pub id: [u8; 32],
    pub size: u64,
    pub now: i64,
}

/// A handle to the ledger. Cheap to clone; calls block, so async callers
/// go through [`Ledger::run`].
#[derive(Clone)]
pub struct Ledger {
    pub(super) conn: Arc<Mutex<Connection>>,
    pub terms: Terms,
}

/// An account's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub usage: u64,
    pub leases: u64,
}

/// `query_row` through the connection's statement cache. Every upload runs
/// the same few statements, and parsing them afresh each time was a
/// visible part of a mirror's CPU (`sqlite3RunParser` and friends, about
/// 2 % while 3,000 small files went up).
pub(super) fn cached_row<T, P: rusqlite::Params>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: P,
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, row)
}

/// `execute` through the connection's statement cache (see [`cached_row`]).
pub(super) fn cached_exec<P: rusqlite::Params>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

impl Ledger {
    pub fn open(path: &Path, terms: Terms) -> Result<Ledger> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        let version: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match version {
            None => {
                conn.execute_batch(SCHEMA_V2)?;
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                    [LEDGER_VERSION],
                )?;
            }
            Some(1) => {
                // Old ledgers stay readable: add what version 2 needs.
                conn.execute_batch(&format!(
                    "BEGIN; {SCHEMA_V2} UPDATE meta SET value = 2 WHERE key = 'schema'; COMMIT;"
                ))?;
            }
            Some(LEDGER_VERSION) => {}
            Some(v) => {
                return Err(Error::BadRequest(format!(
                    "ledger schema version {v} is not supported (this mirror reads up to {LEDGER_VERSION})"
                )));
            }
        }
        Ok(Ledger {
            conn: Arc::new(Mutex::new(conn)),
            terms,
        })
    }

    /// Run a blocking ledger operation off the async executor.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> Result<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    pub(super) fn with_tx<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn.lock().expect("ledger lock");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    pub(super) fn usage_in(tx: &rusqlite::Connection, account: &[u8; 32], now: i64) -> Result<u64> {
        let used: i64 = cached_row(
            tx,
            "SELECT COALESCE(SUM(o.size), 0) FROM leases l JOIN objects o ON o.id = l.object
             WHERE l.account = ?1 AND l.expires > ?2",
            params![&account[..], now],
            |r| r.get(0),
        )?;
        Ok(used as u64)
    }

    fn total_in(tx: &rusqlite::Connection) -> Result<u64> {
        let total: i64 = cached_row(tx, "SELECT COALESCE(SUM(size), 0) FROM objects", [], |r| {
            r.get(0)
        })?;
        Ok(total as u64)
    }

    /// Refuse `wanted` more bytes for `account` if over quota; `new_object`
    /// bytes also count against the mirror's capacity.
    fn check_room(
        &self,
        tx: &rusqlite::Connection,
        account: &[u8; 32],
        wanted: u64,
        new_object: bool,
        now: i64,
    ) -> Result<()> {
        if let Some(quota) = self.terms.quota {
            let used = Self::usage_in(tx, account, now)?;
            if used + wanted > quota {
                return Err(Error::Quota {
                    used,
                    wanted,
                    quota,
                });
            }
        }
        if let (Some(capacity), true) = (self.terms.capacity, new_object) {
            let used = Self::total_in(tx)?;
            if used + wanted > capacity {
                return Err(Error::Capacity {
                    used,
                    wanted,
                    capacity,
                });
            }
        }
        Ok(())
    }

    pub(super) fn ensure_account(
        tx: &rusqlite::Connection,
        account: &[u8; 32],
        now: i64,
    ) -> Result<()> {
        cached_exec(
            tx,
            "INSERT INTO accounts (id, created) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
            params![&account[..], now],
        )?;
        Ok(())
    }

    /// Lease an object, checking quota when the lease is new or expired.
    /// Returns `false` if the mirror does not hold the object.
    fn lease_in(
        &self,
        tx: &rusqlite::Connection,
        account: &[u8; 32],
        id: &[u8; 32],
        now: i64,
    ) -> Result<bool> {
        let size: Option<i64> = tx
            .query_row("SELECT size FROM objects WHERE id = ?1", [&id[..]], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(size) = size else { return Ok(false) };
        let live: bool = tx
            .query_row(
                "SELECT COUNT(*) FROM leases WHERE account = ?1 AND object = ?2 AND expires > ?3",
                params![&account[..], &id[..], now],
                |r| r.get::<_, i64>(0),
            )
            .map(|c| c > 0)?;
        if !live {
            self.check_room(tx, account, size as u64, false, now)?;
        }
        Self::ensure_account(tx, account, now)?;
        self.check_funded(tx, account, now)?;
        cached_exec(
            tx,
            "INSERT INTO leases (account, object, expires) VALUES (?1, ?2, ?3)
             ON CONFLICT (account, object) DO UPDATE SET expires = MAX(expires, excluded.expires)",
            params![&account[..], &id[..], now + self.terms.lease_secs],
        )?;
        Ok(true)
    }

    /// Lease an object the mirror already holds. `false` if it does not.
    pub fn lease_existing(&self, account: &[u8; 32], id: &[u8; 32], now: i64) -> Result<bool> {
        self.with_tx(|tx| self.lease_in(tx, account, id, now))
    }

    /// Whether `size` more bytes fit, before a share is streamed in.
    pub fn precheck(&self, account: &[u8; 32], size: u64, now: i64) -> Result<()> {
        self.with_tx(|tx| {
            self.check_room(tx, account, size, true, now)?;
            Self::ensure_account(tx, account, now)?;
            self.check_funded(tx, account, now)
        })
    }

    /// [`Self::lease_existing`] or [`Self::precheck`] for every share of a
    /// batch upload, in one transaction: `Ok(true)` for a share held (in
    /// `on_disk`) and now leased, `Ok(false)` for one to store, or the
    /// refusal (quota, capacity, funding) the share would have got alone.
    /// Only a ledger failure fails the whole call.
    pub fn admit_batch(
        &self,
        account: &[u8; 32],
        shares: &[([u8; 32], u64, bool)],
        now: i64,
    ) -> Result<Vec<Result<bool>>> {
        self.with_tx(|tx| {
            let mut out = Vec::with_capacity(shares.len());
            for (id, len, on_disk) in shares {
                let admitted = match *on_disk {
                    true => self.lease_in(tx, account, id, now),
                    false => Ok(false),
                }
                .and_then(|held| match held {
                    true => Ok(true),
                    false => self
                        .check_room(tx, account, *len, true, now)
                        .and_then(|()| Self::ensure_account(tx, account, now))
                        .and_then(|()| self.check_funded(tx, account, now))
                        .map(|()| false),
                });
                match admitted {
                    Err(e @ (Error::Ledger(_) | Error::Io(_))) => return Err(e),
                    other => out.push(other),
                }
            }
            Ok(out)
        })
    }

    /// Record a newly stored share and its first lease, atomically.
    pub fn add_share(&self, account: &[u8; 32], id: &[u8; 32], size: u64, now: i64) -> Result<()> {
        self.with_tx(|tx| {
            self.add_share_in(
                tx,
                &NewShare {
                    account: *account,
                    id: *id,
                    size,
                    now,
                },
            )
        })
    }

    /// Record many newly stored shares in one transaction: one commit, so
    /// one WAL fsync, for all of them. Each share stands on its own, as if
    /// added alone in this order: one refused (quota, capacity, funding)
    /// gets its error and does not undo the others. Any other error fails
    /// the whole batch, and nothing of it is recorded.
    pub fn add_shares(&self, shares: &[NewShare]) -> Result<Vec<Result<()>>> {
        let mut conn = self.conn.lock().expect("ledger lock");
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(shares.len());
        for share in shares {
            let sp = tx.savepoint()?;
            match self.add_share_in(&sp, share) {
                Ok(()) => {
                    sp.commit()?;
                    out.push(Ok(()));
                }
                Err(
                    e @ (Error::Quota { .. } | Error::Capacity { .. } | Error::Unfunded { .. }),
                ) => out.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn add_share_in(&self, tx: &rusqlite::Connection, share: &NewShare) -> Result<()> {
        let NewShare {
            account,
            id,
            size,
            now,
        } = share;
        let known: bool = tx
            .query_row(
                "SELECT COUNT(*) FROM objects WHERE id = ?1",
                [&id[..]],
                |r| r.get::<_, i64>(0),
            )
            .map(|c| c > 0)?;
        if !known {
            self.check_room(tx, account, *size, true, *now)?;
            cached_exec(
                tx,
                "INSERT INTO objects (id, kind, size, created) VALUES (?1, ?2, ?3, ?4)",
                params![&id[..], ObjectKind::Share as i64, *size as i64, now],
            )?;
        }
        self.lease_in(tx, account, id, *now)?;
        Ok(())
    }

    /// Store a new version of a slot: the mirror's checks (signature, higher
    /// seq), quota, and a lease for the writer, in one transaction.
    pub fn put_slot(
        &self,
        account: &[u8; 32],
        envelope: &SlotEnvelope,
        bytes: &[u8],
        now: i64,
    ) -> Result<()> {
        envelope.verify()?;
        let pk = envelope.public_key;
        self.with_tx(|tx| {
            let current: Option<Vec<u8>> = tx
                .query_row("SELECT envelope FROM slots WHERE pk = ?1", [&pk[..]], |r| {
                    r.get(0)
                })
                .optional()?;
            let current = current.map(|b| SlotEnvelope::decode(&b)).transpose()?;
            envelope.check_update(current.as_ref())?;
            let old = current.map(|c| c.encode().len() as u64).unwrap_or(0);
            let size = bytes.len() as u64;
            if size > old {
                self.check_room(tx, account, size - old, true, now)?;
            }
            cached_exec(
                tx,
                "INSERT INTO slots (pk, seq, envelope) VALUES (?1, ?2, ?3)
                 ON CONFLICT (pk) DO UPDATE SET seq = excluded.seq, envelope = excluded.envelope",
                params![&pk[..], envelope.seq as i64, bytes],
            )?;
            cached_exec(
                tx,
                "INSERT INTO objects (id, kind, size, created) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET size = excluded.size",
                params![&pk[..], ObjectKind::Slot as i64, size as i64, now],
            )?;
            self.lease_in(tx, account, &pk, now)?;
            Ok(())
        })
    }

    pub fn get_slot(&self, pk: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let conn = self.conn.lock().expect("ledger lock");
        Ok(conn
            .query_row("SELECT envelope FROM slots WHERE pk = ?1", [&pk[..]], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn has_object(&self, id: &[u8; 32]) -> Result<bool> {
        let conn = self.conn.lock().expect("ledger lock");
        Ok(conn
            .query_row(
                "SELECT COUNT(*) FROM objects WHERE id = ?1",
                [&id[..]],
                |r| r.get::<_, i64>(0),
            )
            .map(|c| c > 0)?)
    }

    /// Extend the leases of `ids` that the mirror holds. Each id stands on
    /// its own: one refused (quota, funding) does not undo the others.
    /// Returns how many were renewed, the ids not held, and the ids refused.
    pub fn renew(&self, account: &[u8; 32], ids: &[[u8; 32]], now: i64) -> Result<Renewal> {
        let mut conn = self.conn.lock().expect("ledger lock");
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut renewed = 0;
        let mut missing = Vec::new();
        let mut refused = Vec::new();
        for id in ids {
            let sp = tx.savepoint()?;
            match self.lease_in(&sp, account, id, now) {
                Ok(true) => {
                    sp.commit()?;
                    renewed += 1;
                }
                Ok(false) => missing.push(*id),
                Err(Error::Quota { .. } | Error::Capacity { .. } | Error::Unfunded { .. }) => {
                    refused.push(*id)
                }
                Err(e) => return Err(e),
            }
        }
        tx.commit()?;
        Ok(Renewal {
            renewed,
            missing,
            refused,
        })
    }

    pub fn standing(&self, account: &[u8; 32], now: i64) -> Result<Standing> {
        self.with_tx(|tx| {
            let usage = Self::usage_in(tx, account, now)?;
            let leases: i64 = cached_row(
                tx,
                "SELECT COUNT(*) FROM leases WHERE account = ?1 AND expires > ?2",
                params![&account[..], now],
                |r| r.get(0),
            )?;
            Ok(Standing {
                usage,
                leases: leases as u64,
            })
        })
    }

    pub fn used_bytes(&self) -> Result<u64> {
        self.with_tx(|tx| Self::total_in(tx))
    }

    /// Objects with no live lease, oldest first.
    pub fn unleased(&self, now: i64, limit: usize) -> Result<Vec<([u8; 32], ObjectKind)>> {
        let conn = self.conn.lock().expect("ledger lock");
        let mut stmt = conn.prepare(
            "SELECT id, kind FROM objects o
             WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.object = o.id AND l.expires > ?1)
             ORDER BY created LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now, limit as i64], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind) = row?;
            if let Ok(id) = <[u8; 32]>::try_from(id.as_slice()) {
                out.push((id, ObjectKind::from_i64(kind)));
            }
        }
        Ok(out)
    }

    /// Forget an object if, and only if, it still has no live lease (checked
    /// in the same transaction). Returns its kind and size if forgotten.
    pub fn forget_if_unleased(&self, id: &[u8; 32], now: i64) -> Result<Option<(ObjectKind, u64)>> {
        self.with_tx(|tx| {
            let row: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT kind, size FROM objects o WHERE id = ?1 AND NOT EXISTS
                     (SELECT 1 FROM leases l WHERE l.object = o.id AND l.expires > ?2)",
                    params![&id[..], now],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((kind, size)) = row else {
                return Ok(None);
            };
            cached_exec(tx, "DELETE FROM objects WHERE id = ?1", [&id[..]])?;
            cached_exec(tx, "DELETE FROM leases WHERE object = ?1", [&id[..]])?;
            cached_exec(tx, "DELETE FROM slots WHERE pk = ?1", [&id[..]])?;
            Ok(Some((ObjectKind::from_i64(kind), size as u64)))
        })
    }
}
