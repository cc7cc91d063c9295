//! The mirror's ledger: accounts, objects, leases and directory slots, in
//! SQLite (WAL, `synchronous=FULL`), so that it survives crashes.
//!
//! An account pays for every object it holds a live lease on, so a share
//! that two accounts store counts for both. The queries are plain SQL; the
//! running totals of version 3 are kept by triggers, whose syntax is
//! SQLite's (PostgreSQL would need them as trigger functions).
//! The `credit` column is reserved for the proof-of-work pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::clock::LedgerClock;
use super::{Error, Result};
use crate::dir::SlotEnvelope;

/// The schema version this code writes.
pub const LEDGER_VERSION: i64 = 5;

/// Accounts billed or pruned in one transaction by a GC pass: few enough
/// that uploads and renewals wait little for the ledger between them.
pub(super) const ACCOUNTS_PER_TX: usize = 256;

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

/// Version 3: running totals, so no upload reads more than a few rows.
///
/// Until version 2 an account's usage was a sum over all its leases, and
/// the mirror's stored bytes a sum over all objects, worked out afresh for
/// every upload and renewal that a quota, a capacity or a price applies
/// to: on a priced mirror, adding the 3,000th share of an account took
/// 1.8 ms, and every renewal pass grew with the square of the shares held.
/// Now each lease row carries its object's size, `accounts.leased` sums
/// the sizes of the account's lease rows (live or not yet pruned), and
/// the meta row `stored` sums the objects' sizes. Triggers keep both
/// totals in step with every insert, delete and resize, whatever code
/// path makes it. An account's usage at time `t` is then `leased` less
/// the sizes of its leases expired by `t`, read off the
/// `(account, expires)` index; GC prunes expired leases, so those stay
/// few.
///
/// Lease rows whose object is gone (which no code wrote, but a damaged or
/// hand-edited file may hold) counted for nothing before and are dropped;
/// an account a lease names but the table lacks is added, so its total
/// has a row to live in.
const SCHEMA_V3: &str = "
DELETE FROM leases WHERE object NOT IN (SELECT id FROM objects);
INSERT INTO accounts (id, created)
    SELECT DISTINCT account, CAST(strftime('%s', 'now') AS INTEGER) FROM leases
    WHERE account NOT IN (SELECT id FROM accounts);
ALTER TABLE leases ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
UPDATE leases SET size = COALESCE((SELECT size FROM objects WHERE id = leases.object), 0);
ALTER TABLE accounts ADD COLUMN leased INTEGER NOT NULL DEFAULT 0;
UPDATE accounts SET leased =
    (SELECT COALESCE(SUM(size), 0) FROM leases WHERE account = accounts.id);
CREATE INDEX leases_expiry ON leases (account, expires);
INSERT INTO meta (key, value) VALUES ('stored', (SELECT COALESCE(SUM(size), 0) FROM objects));
CREATE TRIGGER lease_added AFTER INSERT ON leases BEGIN
    UPDATE accounts SET leased = leased + NEW.size WHERE id = NEW.account;
END;
CREATE TRIGGER lease_removed AFTER DELETE ON leases BEGIN
    UPDATE accounts SET leased = leased - OLD.size WHERE id = OLD.account;
END;
CREATE TRIGGER lease_resized AFTER UPDATE OF size ON leases BEGIN
    UPDATE accounts SET leased = leased - OLD.size + NEW.size WHERE id = NEW.account;
END;
CREATE TRIGGER object_added AFTER INSERT ON objects BEGIN
    UPDATE meta SET value = value + NEW.size WHERE key = 'stored';
END;
CREATE TRIGGER object_removed AFTER DELETE ON objects BEGIN
    UPDATE meta SET value = value - OLD.size WHERE key = 'stored';
END;
CREATE TRIGGER object_resized AFTER UPDATE OF size ON objects BEGIN
    UPDATE meta SET value = value - OLD.size + NEW.size WHERE key = 'stored';
    UPDATE leases SET size = NEW.size WHERE object = NEW.id;
END;
";

/// Version 4: accepted shares are kept one by one for a week, then summed
/// per account and day.
///
/// `pool_shares` exists to credit each share once (its header hash is
/// unique) and to account for the credit. It grew by about 245 bytes per
/// accepted share, forever: a miner at vardiff's 10 s per share added 2 MB
/// a day. A share can only be submitted again while a job it fits is
/// current, and a job's ntime range lasts minutes, so a week of hashes
/// refuses every replay. Older rows are folded into `pool_share_days`,
/// which keeps what they accounted for: count, credited difficulty and the
/// upstream's verdicts. `accounts.credit` always equals the credited
/// difficulty summed over both tables.
const SCHEMA_V4: &str = "
CREATE TABLE pool_share_days (
    account BLOB NOT NULL,
    day INTEGER NOT NULL,
    shares INTEGER NOT NULL,
    difficulty INTEGER NOT NULL,
    upstream_accepted INTEGER NOT NULL,
    upstream_rejected INTEGER NOT NULL,
    PRIMARY KEY (account, day)
);
CREATE INDEX pool_shares_created ON pool_shares (created);
";

/// Version 5: shares GC has forgotten whose files may still be on disk.
/// GC records one in the transaction that forgets it, removes the file,
/// then the record; a pass cut short in between (a crash, a failed unlink)
/// left a file no ledger row counted, on disk for good. Each pass first
/// removes what is recorded here.
const SCHEMA_V5: &str = "
CREATE TABLE doomed (id BLOB PRIMARY KEY);
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
    /// Why the first of them was refused.
    pub reason: Option<String>,
}

/// A share just stored, to be recorded with its first lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewShare {
    pub account: [u8; 32],
    pub id: [u8; 32],
    pub size: u64,
    pub now: i64,
}

/// How long before an account's last bill a lease must have expired to be
/// pruned ([`Ledger::prune_leases`]): longer than any upload takes from
/// its checks to its record.
const PRUNE_MARGIN_SECS: i64 = 86_400;

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
        // Old ledgers stay readable: each step adds what its version
        // needs, all of them in one transaction.
        let steps = match version {
            None => format!(
                "{SCHEMA_V2} {SCHEMA_V3} {SCHEMA_V4} {SCHEMA_V5} INSERT INTO meta (key, value) VALUES ('schema', {LEDGER_VERSION});"
            ),
            Some(1) => format!(
                "{SCHEMA_V2} {SCHEMA_V3} {SCHEMA_V4} {SCHEMA_V5} UPDATE meta SET value = {LEDGER_VERSION} WHERE key = 'schema';"
            ),
            Some(2) => format!(
                "{SCHEMA_V3} {SCHEMA_V4} {SCHEMA_V5} UPDATE meta SET value = {LEDGER_VERSION} WHERE key = 'schema';"
            ),
            Some(3) => format!(
                "{SCHEMA_V4} {SCHEMA_V5} UPDATE meta SET value = {LEDGER_VERSION} WHERE key = 'schema';"
            ),
            Some(4) => format!(
                "{SCHEMA_V5} UPDATE meta SET value = {LEDGER_VERSION} WHERE key = 'schema';"
            ),
            Some(LEDGER_VERSION) => String::new(),
            Some(v) => {
                return Err(Error::BadRequest(format!(
                    "ledger schema version {v} is not supported (this mirror reads up to {LEDGER_VERSION})"
                )));
            }
        };
        if !steps.is_empty() {
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {steps} COMMIT;"))?;
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

    /// [`Ledger::run`] with the ledger's time now, under a stamp of
    /// `clock` (see `clock.rs`): for work that writes a time into the
    /// ledger or compares one with it.
    pub(super) async fn run_stamped<T, F>(&self, clock: &LedgerClock, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger, i64) -> Result<T> + Send + 'static,
    {
        let clock = clock.clone();
        self.run(move |l| clock.stamp(|now| f(l, now))).await
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

    /// Bytes `account` leases at time `t`: its running total, less its
    /// leases expired by then (few: GC prunes them).
    pub(super) fn usage_in(tx: &rusqlite::Connection, account: &[u8; 32], t: i64) -> Result<u64> {
        let leased: i64 = cached_row(
            tx,
            "SELECT leased FROM accounts WHERE id = ?1",
            [&account[..]],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
        let expired: i64 = cached_row(
            tx,
            "SELECT COALESCE(SUM(size), 0) FROM leases WHERE account = ?1 AND expires <= ?2",
            params![&account[..], t],
            |r| r.get(0),
        )?;
        Ok((leased - expired).max(0) as u64)
    }

    /// Bytes of every object the mirror holds (a running total).
    fn total_in(tx: &rusqlite::Connection) -> Result<u64> {
        let total: i64 = cached_row(tx, "SELECT value FROM meta WHERE key = 'stored'", [], |r| {
            r.get(0)
        })?;
        Ok(total.max(0) as u64)
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

    /// Whether the ledger records object `id`.
    fn known_in(tx: &rusqlite::Connection, id: &[u8; 32]) -> Result<bool> {
        let sql = "SELECT COUNT(*) FROM objects WHERE id = ?1";
        Ok(cached_row(tx, sql, [&id[..]], |r| r.get::<_, i64>(0))? > 0)
    }

    /// Whether `account` holds a lease on `id` live at `now`.
    fn leased_in(
        tx: &rusqlite::Connection,
        account: &[u8; 32],
        id: &[u8; 32],
        now: i64,
    ) -> Result<bool> {
        let sql = "SELECT COUNT(*) FROM leases WHERE account = ?1 AND object = ?2 AND expires > ?3";
        let count = cached_row(tx, sql, params![&account[..], &id[..], now], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok(count > 0)
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
        let size: Option<i64> = cached_row(
            tx,
            "SELECT size FROM objects WHERE id = ?1",
            [&id[..]],
            |r| r.get(0),
        )
        .optional()?;
        let Some(size) = size else { return Ok(false) };
        let adding = match Self::leased_in(tx, account, id, now)? {
            true => 0,
            false => {
                self.check_room(tx, account, size as u64, false, now)?;
                size as u64
            }
        };
        Self::ensure_account(tx, account, now)?;
        self.check_funded(tx, account, adding, now)?;
        if adding > 0 {
            self.carry_to(tx, account, adding, now)?;
        }
        cached_exec(
            tx,
            "INSERT INTO leases (account, object, expires, size) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (account, object) DO UPDATE
             SET expires = CASE WHEN excluded.expires > leases.expires
                 THEN excluded.expires ELSE leases.expires END",
            params![&account[..], &id[..], now + self.terms.lease_secs, size],
        )?;
        Ok(true)
    }

    /// Lease an object the mirror already holds. `false` if it does not.
    pub fn lease_existing(&self, account: &[u8; 32], id: &[u8; 32], now: i64) -> Result<bool> {
        self.with_tx(|tx| self.lease_in(tx, account, id, now))
    }

    /// Whether share `id`, `size` bytes, fits, before it is streamed in.
    pub fn precheck(&self, account: &[u8; 32], id: &[u8; 32], size: u64, now: i64) -> Result<()> {
        self.with_tx(|tx| self.precheck_in(tx, account, id, size, now))
    }

    /// [`Self::precheck`] in `tx`. A share the ledger knows is counted in
    /// the mirror's stored bytes already, and one the account holds a
    /// live lease on in its usage: a re-upload of such a share (its file
    /// was lost, or a repair replaces a corrupt one) adds to neither,
    /// and is checked for neither. They were counted again, so a full
    /// mirror refused every repair (507), and an account near its quota
    /// could not send back a share it was paying for.
    fn precheck_in(
        &self,
        tx: &rusqlite::Connection,
        account: &[u8; 32],
        id: &[u8; 32],
        size: u64,
        now: i64,
    ) -> Result<()> {
        let known = Self::known_in(tx, id)?;
        let adding = match known && Self::leased_in(tx, account, id, now)? {
            true => 0,
            false => {
                self.check_room(tx, account, size, !known, now)?;
                size
            }
        };
        // No account row: one is made when something is stored or leased
        // (`lease_in`) or a mining share credited. A precheck made one for
        // any signed request with a fresh key, a row per key for good,
        // and every GC pass bills and prunes each row.
        self.check_funded(tx, account, adding, now)
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
                    false => self.precheck_in(tx, account, id, *len, now).map(|()| false),
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
        if !Self::known_in(tx, id)? {
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
            let held: Option<Vec<u8>> = tx
                .query_row("SELECT envelope FROM slots WHERE pk = ?1", [&pk[..]], |r| {
                    r.get(0)
                })
                .optional()?;
            // A held copy that is not a valid envelope of this slot (a bad
            // disk, a hand edit) protects nothing: any version its writer
            // signed replaces it. It made the slot refuse every repair at
            // the version it claimed (found by a helper's sweep).
            let current = held.as_deref().and_then(|b| {
                let valid = SlotEnvelope::decode(b)
                    .ok()
                    .filter(|c| c.public_key == pk && c.verify().is_ok());
                if valid.is_none() {
                    tracing::warn!(
                        slot = %crate::protocol::hex(&pk),
                        "the held copy of a slot is damaged; a valid one replaces it"
                    );
                }
                valid
            });
            envelope.check_update(current.as_ref())?;
            let old = held.map_or(0, |b| b.len() as u64);
            let size = bytes.len() as u64;
            if size > old {
                self.check_room(tx, account, size - old, true, now)?;
            }
            // A new size counts from now: whoever leases the slot is billed
            // up to now at the old one first. Resized (a trigger resizes
            // its leases), it was billed at the new size back to each
            // account's last bill.
            if size != old && self.terms.price_micro > 0 {
                let holders: Vec<Vec<u8>> = {
                    let mut stmt =
                        tx.prepare_cached("SELECT account FROM leases WHERE object = ?1")?;
                    stmt.query_map([&pk[..]], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?
                };
                for holder in holders {
                    if let Ok(holder) = <[u8; 32]>::try_from(holder.as_slice()) {
                        self.charge_in(tx, &holder, now)?;
                        // What that bill left under a millionth is carried
                        // over at the grown cost, as for a new lease.
                        if size > old && Self::leased_in(tx, &holder, &pk, now)? {
                            self.carry_to(tx, &holder, size - old, now)?;
                        }
                    }
                }
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

    /// Those of `ids` the ledger does not record, in order.
    pub fn unrecorded(&self, ids: &[[u8; 32]]) -> Result<Vec<[u8; 32]>> {
        let conn = self.conn.lock().expect("ledger lock");
        let mut stmt = conn.prepare_cached("SELECT 1 FROM objects WHERE id = ?1")?;
        let mut out = Vec::new();
        for id in ids {
            if !stmt.exists([&id[..]])? {
                out.push(*id);
            }
        }
        Ok(out)
    }

    /// Whether the ledger records any object at all.
    pub fn records_any(&self) -> Result<bool> {
        let conn = self.conn.lock().expect("ledger lock");
        Ok(conn
            .prepare_cached("SELECT 1 FROM objects LIMIT 1")?
            .exists([])?)
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
        let mut reason = None;
        for id in ids {
            let sp = tx.savepoint()?;
            match self.lease_in(&sp, account, id, now) {
                Ok(true) => {
                    sp.commit()?;
                    renewed += 1;
                }
                Ok(false) => missing.push(*id),
                Err(
                    e @ (Error::Quota { .. } | Error::Capacity { .. } | Error::Unfunded { .. }),
                ) => {
                    reason.get_or_insert_with(|| e.to_string());
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
            reason,
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

    /// Drop lease rows that expired a day or more before the account's
    /// last bill, so that an account's usage ([`Self::usage_in`]) never
    /// reads many. No bill still to come asks about a time before
    /// `charged_at` (it never moves back), and the day covers the checks
    /// of uploads that began before the bill and are recorded after it,
    /// with the time they began. On a free mirror, each account is first
    /// marked billed (at zero) up to `now`, so a price set later never
    /// bills the free time. Run on each GC pass, after
    /// [`Self::charge_all`]. Returns the rows dropped.
    pub fn prune_leases(&self, now: i64) -> Result<u64> {
        let accounts: Vec<Vec<u8>> = {
            let conn = self.conn.lock().expect("ledger lock");
            let mut stmt = conn.prepare("SELECT id FROM accounts")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut dropped = 0;
        // Many accounts to a transaction: one each cost a commit (an
        // fsync) per account per GC pass, hours of them for a million
        // accounts, which anyone can make by signing with fresh keys.
        for chunk in accounts.chunks(ACCOUNTS_PER_TX) {
            dropped += self.with_tx(|tx| {
                let mut dropped = 0;
                for id in chunk {
                    if self.terms.price_micro == 0 {
                        cached_exec(
                            tx,
                            "UPDATE accounts SET charged_at =
                                 CASE WHEN charged_at IS NULL OR charged_at < ?2 THEN ?2 ELSE charged_at END
                             WHERE id = ?1",
                            params![id, now],
                        )?;
                    }
                    dropped += cached_exec(
                        tx,
                        "DELETE FROM leases WHERE account = ?1 AND expires <=
                         COALESCE(CASE WHEN (SELECT charged_at FROM accounts WHERE id = ?1) < ?2
                             THEN (SELECT charged_at FROM accounts WHERE id = ?1) END, ?2) - ?3",
                        params![id, now, PRUNE_MARGIN_SECS],
                    )? as u64;
                }
                Ok(dropped)
            })?;
        }
        Ok(dropped)
    }

    /// Up to `limit` shares with ids after `after` (from the first, if
    /// `None`), in id order, with their recorded sizes: the scrubber's walk.
    pub fn shares_after(
        &self,
        after: Option<[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<([u8; 32], u64)>> {
        let conn = self.conn.lock().expect("ledger lock");
        let mut stmt = conn.prepare_cached(
            "SELECT id, size FROM objects WHERE kind = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let from = after.map_or_else(Vec::new, |a| a.to_vec());
        let rows = stmt.query_map(params![ObjectKind::Share as i64, from, limit as i64], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, size) = row?;
            if let Ok(id) = <[u8; 32]>::try_from(id.as_slice()) {
                out.push((id, size as u64));
            }
        }
        Ok(out)
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
            let kind = ObjectKind::from_i64(kind);
            if kind == ObjectKind::Share {
                cached_exec(
                    tx,
                    "INSERT INTO doomed (id) VALUES (?1) ON CONFLICT (id) DO NOTHING",
                    [&id[..]],
                )?;
            }
            Ok(Some((kind, size as u64)))
        })
    }

    /// The wall clock was stepped by `by` seconds (an NTP correction, a
    /// bad RTC): move every lease's expiry and every account's billing
    /// marks by as much, so that leases keep the time they had left and
    /// no one is billed for (or excused) the step. A step forward past the
    /// lease length otherwise took every share at the next GC.
    /// `now` is recorded as the time the mirror is up
    /// ([`Ledger::mark_alive`]) in the same transaction.
    pub fn shift_clock(&self, by: i64, now: i64) -> Result<()> {
        self.with_tx(|tx| {
            Self::shift_in(tx, by)?;
            Self::alive_in(tx, now)
        })
    }

    fn shift_in(tx: &rusqlite::Connection, by: i64) -> Result<()> {
        cached_exec(tx, "UPDATE leases SET expires = expires + ?1", [by])?;
        cached_exec(
            tx,
            "UPDATE accounts SET charged_at = charged_at + ?1, \
             unfunded_since = unfunded_since + ?1",
            [by],
        )?;
        Ok(())
    }

    /// Record that the mirror is up at `now` (a `meta` row, `alive_at`):
    /// the next start takes the time since as downtime
    /// ([`Ledger::excuse_downtime`]).
    pub fn mark_alive(&self, now: i64) -> Result<()> {
        let conn = self.conn.lock().expect("ledger lock");
        Self::alive_in(&conn, now)
    }

    /// When the mirror was last seen up (`keep_time`, once a minute), in
    /// the ledger's time; `None` for a ledger never run.
    pub fn alive_at(&self) -> Result<Option<i64>> {
        let conn = self.conn.lock().expect("ledger lock");
        Ok(cached_row(
            &conn,
            "SELECT value FROM meta WHERE key = 'alive_at'",
            [],
            |r| r.get(0),
        )
        .optional()?)
    }

    fn alive_in(conn: &rusqlite::Connection, now: i64) -> Result<()> {
        cached_exec(
            conn,
            "INSERT INTO meta (key, value) VALUES ('alive_at', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [now],
        )?;
        Ok(())
    }

    /// At a start, before any billing or GC: if the mirror was last
    /// recorded up ([`Ledger::mark_alive`]) more than `min` seconds from
    /// `now`, either way, move every lease and billing mark by that gap
    /// ([`Ledger::shift_clock`]), and record `now`. Returns the gap moved.
    ///
    /// Clients cannot renew leases at a mirror that is down, and a mirror
    /// cannot tell its downtime from a step of its wall clock while it
    /// was stopped (a dead RTC battery, a VM restored with a wrong
    /// clock). Counted as time passed, a long stop, or a step forward
    /// past the lease length, let the first GC pass take every share
    /// whose lease lapsed meanwhile; and a step back extended them all.
    /// Now leases keep the time they had left when the mirror stopped,
    /// and the stop is neither billed nor counted against them.
    pub fn excuse_downtime(&self, now: i64, min: i64) -> Result<Option<i64>> {
        self.with_tx(|tx| {
            let at: Option<i64> = cached_row(
                tx,
                "SELECT value FROM meta WHERE key = 'alive_at'",
                [],
                |r| r.get(0),
            )
            .optional()?;
            let gap = at
                .map(|at| now.saturating_sub(at))
                .filter(|gap| gap.abs() > min);
            if let Some(gap) = gap {
                Self::shift_in(tx, gap)?;
            }
            Self::alive_in(tx, now)?;
            Ok(gap)
        })
    }

    /// Shares forgotten by GC whose files may still be on disk, with
    /// whether the ledger knows each again (stored anew since: its file
    /// is that upload's, and stays).
    pub fn doomed(&self) -> Result<Vec<([u8; 32], bool)>> {
        let conn = self.conn.lock().expect("ledger lock");
        let mut stmt = conn.prepare_cached(
            "SELECT d.id, EXISTS (SELECT 1 FROM objects o WHERE o.id = d.id) FROM doomed d",
        )?;
        let rows = stmt.query_map([], |r| {
            let id: Vec<u8> = r.get(0)?;
            Ok((id, r.get::<_, bool>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, known) = row?;
            if let Ok(id) = <[u8; 32]>::try_from(id.as_slice()) {
                out.push((id, known));
            }
        }
        Ok(out)
    }

    /// The file of a doomed share is gone (or was kept): forget the record.
    pub fn spare(&self, id: &[u8; 32]) -> Result<()> {
        let conn = self.conn.lock().expect("ledger lock");
        cached_exec(&conn, "DELETE FROM doomed WHERE id = ?1", [&id[..]])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const T0: i64 = 1_700_000_000;

    fn terms(price_micro: u64) -> Terms {
        Terms {
            lease_secs: 10 * DAY,
            quota: Some(1 << 40),
            capacity: Some(1 << 42),
            price_micro,
            grace_secs: 7 * DAY,
            free_bytes: 0,
        }
    }

    fn id(n: u32) -> [u8; 32] {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_le_bytes());
        id
    }

    fn share(account: u8, n: u32, size: u64, now: i64) -> NewShare {
        NewShare {
            account: [account; 32],
            id: id(n),
            size,
            now,
        }
    }

    /// A share the account already holds is not counted again when it is
    /// sent once more (its file lost, or a repair): not against a full
    /// quota, not against a full mirror. A new share, or a held one the
    /// account has no lease on, still is.
    #[test]
    fn a_share_sent_again_is_not_counted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let full = Terms {
            quota: Some(1000),
            capacity: Some(1000),
            ..terms(0)
        };
        let l = Ledger::open(&dir.path().join("ledger.sqlite"), full).unwrap();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        l.precheck(&a, &id(1), 1000, T0).unwrap();
        l.add_share(&a, &id(1), 1000, T0).unwrap();
        // Both the account's quota and the mirror are full now.
        l.precheck(&a, &id(1), 1000, T0 + 1).unwrap();
        assert!(matches!(
            l.precheck(&a, &id(2), 1, T0 + 1),
            Err(Error::Quota { .. })
        ));
        // Another account: its quota counts the share, the mirror does not.
        l.precheck(&b, &id(1), 1000, T0 + 1).unwrap();
        assert!(matches!(
            l.precheck(&b, &id(2), 1, T0 + 1),
            Err(Error::Capacity { .. })
        ));
        // The batch path answers the same.
        let admitted = l
            .admit_batch(&a, &[(id(1), 1000, false), (id(2), 1, false)], T0 + 1)
            .unwrap();
        assert!(matches!(admitted[0], Ok(false)), "{:?}", admitted[0]);
        assert!(matches!(admitted[1], Err(Error::Quota { .. })));
        // Once its lease lapsed, the account's quota counts it again.
        let later = T0 + 11 * DAY;
        l.precheck(&a, &id(1), 1000, later).unwrap();
        let small = Terms {
            quota: Some(999),
            ..terms(0)
        };
        drop(l);
        let l = Ledger::open(&dir.path().join("ledger.sqlite"), small).unwrap();
        assert!(matches!(
            l.precheck(&a, &id(1), 1000, later),
            Err(Error::Quota { .. })
        ));
        l.precheck(&a, &id(1), 1000, T0 + 2).unwrap();
    }

    /// A signed request that stores nothing leaves no account behind: a
    /// precheck (alone or in a batch) by a fresh key makes no row, on a
    /// free mirror and on a priced one; storing does.
    #[test]
    fn a_precheck_makes_no_account() {
        for price in [0, 1_000_000] {
            let dir = tempfile::tempdir().unwrap();
            let l = Ledger::open(&dir.path().join("ledger.sqlite"), terms(price)).unwrap();
            let accounts = |l: &Ledger| -> i64 { value(l, "SELECT COUNT(*) FROM accounts", []) };
            for key in 1..=50u8 {
                l.precheck(&[key; 32], &id(u32::from(key)), 1000, T0)
                    .unwrap();
            }
            let admitted = l
                .admit_batch(&[99; 32], &[(id(1), 10, false), (id(2), 10, false)], T0)
                .unwrap();
            assert!(admitted.iter().all(|a| matches!(a, Ok(false))));
            assert_eq!(accounts(&l), 0, "price {price}");
            l.add_share(&[7; 32], &id(7), 1000, T0).unwrap();
            assert_eq!(accounts(&l), 1, "price {price}");
            l.precheck(&[7; 32], &id(8), 1000, T0 + 1).unwrap();
            assert_eq!(accounts(&l), 1, "price {price}");
        }
    }

    /// The one value `sql` selects, read straight from the tables.
    fn value<T: rusqlite::types::FromSql>(l: &Ledger, sql: &str, p: impl rusqlite::Params) -> T {
        l.conn
            .lock()
            .unwrap()
            .query_row(sql, p, |r| r.get(0))
            .unwrap()
    }

    /// Usage and stored bytes worked out from scratch, as version 2 did.
    fn recount(l: &Ledger, account: u8, t: i64) -> (u64, u64) {
        let usage: i64 = value(
            l,
            "SELECT COALESCE(SUM(o.size), 0) FROM leases l JOIN objects o ON o.id = l.object
             WHERE l.account = ?1 AND l.expires > ?2",
            params![&[account; 32][..], t],
        );
        let stored: i64 = value(l, "SELECT COALESCE(SUM(size), 0) FROM objects", []);
        (usage as u64, stored as u64)
    }

    /// The running totals, read the way uploads read them.
    fn totals(l: &Ledger, account: u8, t: i64) -> (u64, u64) {
        l.with_tx(|tx| {
            Ok((
                Ledger::usage_in(tx, &[account; 32], t)?,
                Ledger::total_in(tx)?,
            ))
        })
        .unwrap()
    }

    fn assert_totals(l: &Ledger, when: &str) {
        for account in [1, 2] {
            for t in [
                T0,
                T0 + 5 * DAY,
                T0 + 11 * DAY,
                T0 + 15 * DAY,
                T0 + 30 * DAY,
            ] {
                assert_eq!(
                    totals(l, account, t),
                    recount(l, account, t),
                    "{when}: account {account} at {t}"
                );
            }
        }
    }

    #[test]
    fn running_totals_match_a_recount_through_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("ledger.sqlite"), terms(0)).unwrap();
        let first: Vec<NewShare> = (0..40).map(|n| share(1, n, 1000 + n as u64, T0)).collect();
        assert!(l.add_shares(&first).unwrap().iter().all(|r| r.is_ok()));
        // Account 2 leases some of the same objects, and objects of its own.
        let second: Vec<NewShare> = (30..60)
            .map(|n| share(2, n, 1000 + n as u64, T0 + 3 * DAY))
            .collect();
        assert!(l.add_shares(&second).unwrap().iter().all(|r| r.is_ok()));
        assert_totals(&l, "after adding");

        // Renewing moves expiry only.
        let ids: Vec<_> = (0..10).map(id).collect();
        assert_eq!(l.renew(&[1; 32], &ids, T0 + 5 * DAY).unwrap().renewed, 10);
        assert_totals(&l, "after renewing");

        // An object that changes size (as a slot does) moves both totals.
        {
            let conn = l.conn.lock().unwrap();
            conn.execute(
                "INSERT INTO objects (id, kind, size, created) VALUES (?1, 1, 5, ?2)
                 ON CONFLICT (id) DO UPDATE SET size = excluded.size",
                params![&id(35)[..], T0],
            )
            .unwrap();
        }
        assert_totals(&l, "after a resize");

        // GC forgets what no live lease covers, with its lease rows.
        let at = T0 + 12 * DAY;
        let mut forgotten = 0;
        for (object, _) in l.unleased(at, 1000).unwrap() {
            forgotten += l.forget_if_unleased(&object, at).unwrap().is_some() as usize;
        }
        // Ids 10..30 had only account 1's lapsed leases; 30..40 are still
        // account 2's, and account 1's lapsed rows on them stay for now.
        assert_eq!(forgotten, 20);
        assert_totals(&l, "after GC");

        // Pruning (a free mirror: bound now less a day) drops the lapsed
        // rows and changes no answer about any time from that bound on.
        let at = T0 + 15 * DAY;
        let asked = [at - DAY, at - DAY / 2, at, at + 20 * DAY];
        let answers = |l: &Ledger| -> Vec<_> {
            [1, 2]
                .iter()
                .flat_map(|&a| asked.map(|t| totals(l, a, t)))
                .collect()
        };
        let before = answers(&l);
        // Account 1's rows on 30..40 (lapsed at T0 + 10 days) and account
        // 2's on 30..60 (T0 + 13 days); account 1's on 0..10 run to T0 + 15.
        assert_eq!(l.prune_leases(at).unwrap(), 40);
        assert_eq!(answers(&l), before);
        let lapsed: i64 = value(
            &l,
            "SELECT COUNT(*) FROM leases WHERE expires <= ?1",
            [at - DAY],
        );
        assert_eq!(lapsed, 0);

        // Leasing a pruned row's object again counts it again.
        let again: Vec<_> = (30..35).map(id).collect();
        assert_eq!(l.renew(&[1; 32], &again, at + DAY).unwrap().renewed, 5);
        assert_totals(&l, "after leasing pruned objects again");
        assert_eq!(
            totals(&l, 1, at + DAY).0,
            (30..35).map(|n| 1000 + n).sum::<u64>()
        );
    }

    fn charged_at(l: &Ledger, account: u8) -> Option<i64> {
        value(
            l,
            "SELECT charged_at FROM accounts WHERE id = ?1",
            [&[account; 32][..]],
        )
    }

    /// An account in debt past its grace gets no fresh grace once its
    /// leases lapse: renewing them before GC takes the shares is refused.
    /// A bill that found nothing stored cleared the mark, and the grace
    /// started again at the next bill: storage for free, one lease period
    /// after another. Within the free allowance it may still lease.
    #[test]
    fn debt_is_not_forgiven_when_the_leases_lapse() {
        let dir = tempfile::tempdir().unwrap();
        let mut priced = terms(1_000_000);
        priced.free_bytes = 1 << 20;
        let l = Ledger::open(&dir.path().join("ledger.sqlite"), priced).unwrap();
        assert!(l.add_shares(&[share(1, 1, 1 << 30, T0)]).unwrap()[0].is_ok());
        assert!(l.add_shares(&[share(1, 2, 1000, T0)]).unwrap()[0].is_ok());
        // GC's bill: in debt from here.
        l.charge_all(T0 + 60).unwrap();
        // Past the lease (10 days) and the grace (7), before GC runs.
        let later = T0 + 10 * DAY + 10;
        let r = l.renew(&[1; 32], &[id(1)], later).unwrap();
        assert_eq!(
            (r.renewed, r.refused.clone()),
            (0, vec![id(1)]),
            "{:?}",
            r.reason
        );
        let r = l.renew(&[1; 32], &[id(1)], later + 1).unwrap();
        assert_eq!(r.renewed, 0, "no fresh grace");
        // Storing nothing billable now, it is still not funded: its mount
        // is told to mine (it was "funded indefinitely", so never did).
        let b = l.balance(&[1; 32], later + 1).unwrap();
        assert_eq!((b.daily_cost, b.funded_until), (0, Some(later + 1)));
        // 1000 bytes, within the free MiB: that costs nothing.
        let r = l.renew(&[1; 32], &[id(2)], later + 2).unwrap();
        assert_eq!(r.renewed, 1, "{:?}", r.reason);
    }

    /// After a step of the wall clock, leases keep the time they had
    /// left: a step forward past the lease no longer lets GC take them,
    /// and the step is not billed.
    #[test]
    fn leases_move_with_a_clock_step() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("ledger.sqlite"), terms(1_000_000)).unwrap();
        assert!(l.add_shares(&[share(1, 1, 1 << 30, T0)]).unwrap()[0].is_ok());
        l.charge_all(T0 + DAY).unwrap();
        let debit = l.balance(&[1; 32], T0 + DAY).unwrap().debit;
        l.mark_alive(T0 + DAY).unwrap();
        let step = 40 * DAY;
        l.shift_clock(step, T0 + DAY + step).unwrap();
        // The time up is recorded with the step: a restart a minute
        // later does not take the step for downtime and move it again.
        assert_eq!(l.excuse_downtime(T0 + DAY + step + 60, 600).unwrap(), None);
        assert!(
            l.unleased(T0 + DAY + step, 10).unwrap().is_empty(),
            "still leased"
        );
        let after = l.balance(&[1; 32], T0 + DAY + step).unwrap().debit;
        assert_eq!(after, debit, "the step is not billed");
        assert_eq!(l.unleased(T0 + 10 * DAY + step + 1, 10).unwrap().len(), 1);
    }

    /// The time a mirror was stopped (or its clock stepped while it was)
    /// is moved past at its next start: leases keep the time they had
    /// left, and nothing is billed for the stop. A short stop changes
    /// nothing.
    #[test]
    fn downtime_is_moved_past_at_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let l = Ledger::open(&path, terms(1_000_000)).unwrap();
        assert_eq!(l.excuse_downtime(T0, 600).unwrap(), None, "a first start");
        assert!(l.add_shares(&[share(1, 1, 1 << 30, T0)]).unwrap()[0].is_ok());
        l.charge_all(T0 + DAY).unwrap();
        l.mark_alive(T0 + DAY).unwrap();
        let debit = l.balance(&[1; 32], T0 + DAY).unwrap().debit;
        drop(l);
        // Started again 40 days later: past the 10-day lease.
        let l = Ledger::open(&path, terms(1_000_000)).unwrap();
        let start = T0 + 41 * DAY;
        assert_eq!(l.excuse_downtime(start, 600).unwrap(), Some(40 * DAY));
        assert!(l.unleased(start, 10).unwrap().is_empty(), "still leased");
        l.charge_all(start).unwrap();
        assert_eq!(
            l.balance(&[1; 32], start).unwrap().debit,
            debit,
            "the stop is not billed"
        );
        // The lease lapses 9 days of running later, as it would have.
        assert!(l.unleased(start + 9 * DAY - 1, 10).unwrap().is_empty());
        assert_eq!(l.unleased(start + 9 * DAY + 1, 10).unwrap().len(), 1);
        // A restart within ten minutes moves nothing; a clock stepped
        // back while stopped moves the leases back by as much.
        l.mark_alive(start).unwrap();
        assert_eq!(l.excuse_downtime(start + 300, 600).unwrap(), None);
        assert_eq!(
            l.excuse_downtime(start - DAY, 600).unwrap(),
            Some(-DAY - 300)
        );
        assert!(
            l.unleased(start + 8 * DAY - 300 - 1, 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(l.unleased(start + 8 * DAY, 10).unwrap().len(), 1);
    }

    #[test]
    fn the_last_bill_never_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("ledger.sqlite"), terms(1_000_000)).unwrap();
        assert!(l.add_shares(&[share(1, 1, 1 << 30, T0)]).unwrap()[0].is_ok());
        l.charge_all(T0 + 2 * DAY).unwrap();
        let billed = charged_at(&l, 1).unwrap();
        assert!(billed > T0 + DAY);
        // An upload that began a day ago is recorded now, with its start.
        assert!(l.add_shares(&[share(1, 2, 1 << 30, T0 + DAY)]).unwrap()[0].is_ok());
        assert_eq!(charged_at(&l, 1), Some(billed));
    }

    /// A new lease is billed from when it was taken, not from the last
    /// bill. A small account's bills carry what its time cost under a
    /// millionth by leaving `charged_at` behind (here 2 KB at 10^6 per
    /// GiB-day, one millionth a day: a whole day behind); a GiB leased
    /// then was billed from there, at its own size: a day of the GiB
    /// for a second of it.
    #[test]
    fn a_new_lease_is_not_billed_for_the_time_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("ledger.sqlite"), terms(1_000_000)).unwrap();
        assert!(l.add_shares(&[share(1, 1, 2000, T0)]).unwrap()[0].is_ok());
        let small = l.balance(&[1; 32], T0 + DAY / 2).unwrap();
        assert_eq!((small.daily_cost, small.debit), (1, 0));
        let at = T0 + DAY / 2;
        assert!(l.add_shares(&[share(1, 2, 1 << 30, at)]).unwrap()[0].is_ok());
        let b = l.balance(&[1; 32], at + 100).unwrap();
        // 100 s of the GiB and the 2 KB (1,157.4 millionths), and no more
        // than the millionth the small one owed for its half day.
        let hundred = (1_000_001i64 * 100 / DAY) as u64;
        assert!(
            (hundred..=hundred + 1).contains(&b.debit),
            "billed {} for 100 s of {} a day",
            b.debit,
            b.daily_cost
        );
        // And nothing of it lost: a day on, the day is billed.
        let day = l.balance(&[1; 32], at + 100 + DAY).unwrap();
        assert!(
            (day.debit - b.debit).abs_diff(1_000_001) <= 1,
            "a day billed {}",
            day.debit - b.debit
        );
    }

    /// A slot that grows is billed at its new size from when it grew, not
    /// back to the last bill, nor for what that bill left under a
    /// millionth: 2 KB and a 100-byte slot cost 2 millionths a day, so
    /// three quarters of a day bill 1 and leave a quarter behind, which
    /// at the grown size (8 MiB) is 1,953.
    #[test]
    fn a_grown_slot_is_billed_at_its_new_size_from_then() {
        use crate::dir::SlotEnvelope;
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("ledger.sqlite"), terms(1_000_000)).unwrap();
        assert!(l.add_shares(&[share(1, 1, 2000, T0)]).unwrap()[0].is_ok());
        let cap = crate::store::Vault::fresh_dir();
        let small = SlotEnvelope::seal_plaintext(&cap, 1, &[7; 100]);
        l.put_slot(&[1; 32], &small, &small.encode(), T0).unwrap();
        let before = l.balance(&[1; 32], T0).unwrap();
        assert_eq!((before.debit, before.daily_cost), (0, 2));
        let at = T0 + 3 * DAY / 4;
        let big = SlotEnvelope::seal_plaintext(&cap, 2, &vec![7; 8 << 20]);
        l.put_slot(&[1; 32], &big, &big.encode(), at).unwrap();
        let b = l.balance(&[1; 32], at).unwrap();
        assert!(b.daily_cost >= 7_812, "{}", b.daily_cost);
        assert!(
            b.debit <= 2,
            "billed {} for three quarters of a day at 2",
            b.debit
        );
        // From then on, at the new size.
        let later = l.balance(&[1; 32], at + DAY).unwrap();
        assert!(
            (later.debit - b.debit).abs_diff(b.daily_cost) <= 1,
            "a day billed {}",
            later.debit - b.debit
        );
    }

    /// Every charge within one second bills that second once, and an hour
    /// of charges every second bills the hour, to within a millionth per
    /// charge (the daily cost here is no whole number per second: 1 GiB
    /// and 1000 bytes at 10^6 per GiB-day is 11.57... per second).
    #[test]
    fn a_second_is_billed_once_however_often_it_is_charged() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("ledger.sqlite"), terms(1_000_000)).unwrap();
        let size = (1u64 << 30) + 1000;
        assert!(l.add_shares(&[share(1, 1, size, T0)]).unwrap()[0].is_ok());
        let per_day = (u128::from(size) * 1_000_000 / (1u128 << 30)) as i64;
        let once = l.balance(&[1; 32], T0 + 1).unwrap().debit;
        for _ in 0..50 {
            l.balance(&[1; 32], T0 + 1).unwrap();
        }
        assert_eq!(l.balance(&[1; 32], T0 + 1).unwrap().debit, once);
        assert_eq!(once as i64, per_day / DAY);
        for t in 2..=3600 {
            l.balance(&[1; 32], T0 + t).unwrap();
        }
        let hour = l.balance(&[1; 32], T0 + 3600).unwrap().debit as i64;
        let exact = per_day * 3600 / DAY;
        assert!(
            (exact - 3600..=exact).contains(&hour),
            "billed {hour} for an hour that costs {exact}"
        );
    }

    #[test]
    fn a_free_mirror_never_bills_its_free_time_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        {
            let free = Ledger::open(&path, terms(0)).unwrap();
            assert!(free.add_shares(&[share(1, 1, 1 << 30, T0)]).unwrap()[0].is_ok());
            free.prune_leases(T0 + 5 * DAY).unwrap();
        }
        let priced = Ledger::open(&path, terms(1_000_000)).unwrap();
        // One GiB from T0 + 5 days to T0 + 6 days: one share's worth.
        let debit = priced.balance(&[1; 32], T0 + 6 * DAY).unwrap().debit;
        assert_eq!(debit, 1_000_000);
    }

    #[test]
    fn pruning_keeps_leases_a_bill_still_covers() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("ledger.sqlite"), terms(1_000_000)).unwrap();
        assert!(l.add_shares(&[share(1, 1, 1 << 30, T0)]).unwrap()[0].is_ok());
        // Billed up to T0 + 1 day; the lease then lapses at T0 + 10 days.
        l.charge_all(T0 + DAY).unwrap();
        assert_eq!(l.prune_leases(T0 + 20 * DAY).unwrap(), 0);
        // The next bill still sees the GiB up to its expiry, and not after:
        // 10 GiB-days in all at 1 share (10^6 micro) per GiB-day. It was
        // billed at the usage of the last bill to the end, 19 GiB-days.
        let debit = l.balance(&[1; 32], T0 + 20 * DAY).unwrap().debit;
        assert_eq!(debit, 10_000_000);
        assert_eq!(l.prune_leases(T0 + 20 * DAY).unwrap(), 1);
    }

    /// Share records older than a week fold into daily sums: the account's
    /// share count, its credit and the upstream's verdicts are what they
    /// were, credit still equals the credited difficulty summed over both
    /// tables, and a share still on record is still refused a second time.
    #[test]
    fn old_share_records_fold_into_daily_sums() {
        use super::super::credit::SHARE_RECORD_SECS;
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("ledger.sqlite"), terms(0)).unwrap();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let base = T0 - T0.rem_euclid(DAY); // midnight UTC
        let now = base + 30 * DAY;
        let hash = |n: u32| sha2_like(n);
        // 3 days of old shares for a, with upstream verdicts; one for b;
        // and recent ones for both.
        let mut n = 0;
        for day in 0..3 {
            for k in 0..4 {
                n += 1;
                let at = base + day * DAY + k * 3_600;
                assert!(
                    l.credit_share(&a, "w", 1_000 + n as u64, &hash(n), at)
                        .unwrap()
                );
                if k < 2 {
                    l.record_upstream(&hash(n), k == 0).unwrap();
                }
            }
        }
        assert!(l.credit_share(&b, "w", 77, &hash(100), base).unwrap());
        let recent = now - SHARE_RECORD_SECS + 10;
        assert!(l.credit_share(&a, "w", 5, &hash(200), recent).unwrap());
        assert!(l.credit_share(&b, "w", 6, &hash(201), recent).unwrap());
        let before = (
            l.balance(&a, now).unwrap(),
            l.balance(&b, now).unwrap(),
            l.upstream_counts().unwrap(),
        );
        assert_eq!((before.0.shares, before.1.shares), (13, 2));
        assert_eq!(before.2, (3, 3));

        assert_eq!(l.fold_old_shares(now).unwrap(), 13);
        let rows: i64 = value(&l, "SELECT COUNT(*) FROM pool_shares", []);
        assert_eq!(rows, 2, "only the recent records stay");
        let days: i64 = value(&l, "SELECT COUNT(*) FROM pool_share_days", []);
        assert_eq!(days, 4, "three days of a, one of b");
        let after = (
            l.balance(&a, now).unwrap(),
            l.balance(&b, now).unwrap(),
            l.upstream_counts().unwrap(),
        );
        assert_eq!(after, before);
        for acct in [a, b] {
            let credit: i64 = value(&l, "SELECT credit FROM accounts WHERE id = ?1", [&acct[..]]);
            let summed: i64 = value(
                &l,
                "SELECT (SELECT COALESCE(SUM(difficulty), 0) FROM pool_shares WHERE account = ?1)
                      + (SELECT COALESCE(SUM(difficulty), 0) FROM pool_share_days WHERE account = ?1)",
                [&acct[..]],
            );
            assert_eq!(credit, summed);
        }
        assert!(
            !l.credit_share(&a, "w", 5, &hash(200), now).unwrap(),
            "still a duplicate"
        );
        // A second pass finds nothing; a later one folds into the same day.
        assert_eq!(l.fold_old_shares(now).unwrap(), 0);
        assert!(l.credit_share(&a, "w", 9, &hash(300), base + 5).unwrap());
        assert_eq!(l.fold_old_shares(now).unwrap(), 1);
        assert_eq!(l.balance(&a, now).unwrap().shares, 14);
        let day0: i64 = value(
            &l,
            "SELECT shares FROM pool_share_days WHERE account = ?1 AND day = ?2",
            params![&a[..], base / DAY],
        );
        assert_eq!(day0, 5);
    }

    #[test]
    fn a_version_3_ledger_gains_daily_share_sums() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "{SCHEMA} {SCHEMA_V2} {SCHEMA_V3} INSERT INTO meta (key, value) VALUES ('schema', 3);
                 INSERT INTO accounts (id, created, credit) VALUES (x'{a}', 0, 40);
                 INSERT INTO pool_shares (account, worker, difficulty, hash, created)
                     VALUES (x'{a}', 'w', 40, x'{h}', {T0});",
                a = "01".repeat(32),
                h = "0f".repeat(32),
            ))
            .unwrap();
        }
        let l = Ledger::open(&path, terms(0)).unwrap();
        let version: i64 = value(&l, "SELECT value FROM meta WHERE key = 'schema'", []);
        assert_eq!(version, LEDGER_VERSION);
        assert_eq!(l.fold_old_shares(T0 + 30 * DAY).unwrap(), 1);
        let b = l.balance(&[1; 32], T0 + 30 * DAY).unwrap();
        assert_eq!((b.shares, b.credit), (1, 40));
    }

    fn sha2_like(n: u32) -> [u8; 32] {
        let mut h = [0xab; 32];
        h[..4].copy_from_slice(&n.to_be_bytes());
        h
    }

    #[test]
    fn a_version_2_ledger_gains_its_totals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "{SCHEMA} {SCHEMA_V2} INSERT INTO meta (key, value) VALUES ('schema', 2);
                 INSERT INTO accounts (id, created) VALUES (x'{a}', 0), (x'{b}', 0);
                 INSERT INTO objects (id, kind, size, created) VALUES (x'{a}', 0, 100, 0), (x'{b}', 0, 20, 0);
                 INSERT INTO leases (account, object, expires) VALUES
                     (x'{a}', x'{a}', {T0}), (x'{a}', x'{b}', {T0}), (x'{b}', x'{b}', {T0});",
                a = "01".repeat(32),
                b = "02".repeat(32),
            ))
            .unwrap();
        }
        let l = Ledger::open(&path, terms(0)).unwrap();
        let version: i64 = value(&l, "SELECT value FROM meta WHERE key = 'schema'", []);
        assert_eq!(version, LEDGER_VERSION);
        assert_eq!(totals(&l, 1, T0 - 1), (120, 120));
        assert_eq!(totals(&l, 2, T0 - 1), (20, 120));
        assert_eq!(totals(&l, 1, T0), (0, 120));
        drop(l);
        // Opening again changes nothing.
        let l = Ledger::open(&path, terms(0)).unwrap();
        assert_eq!(totals(&l, 1, T0 - 1), (120, 120));
    }

    #[test]
    fn a_version_1_ledger_is_mended_on_its_way_to_3() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            // A lease whose object is gone, and one whose account is.
            conn.execute_batch(&format!(
                "{SCHEMA} INSERT INTO meta (key, value) VALUES ('schema', 1);
                 INSERT INTO accounts (id, created) VALUES (x'{a}', 0);
                 INSERT INTO objects (id, kind, size, created) VALUES (x'{a}', 0, 100, 0);
                 INSERT INTO leases (account, object, expires) VALUES
                     (x'{a}', x'{a}', {T0}), (x'{a}', x'{c}', {T0}), (x'{b}', x'{a}', {T0});",
                a = "01".repeat(32),
                b = "02".repeat(32),
                c = "03".repeat(32),
            ))
            .unwrap();
        }
        let l = Ledger::open(&path, terms(0)).unwrap();
        assert_eq!(totals(&l, 1, T0 - 1), (100, 100));
        assert_eq!(totals(&l, 2, T0 - 1), (100, 100));
        // Account 2's new row keeps its total: dropping its lease zeroes it.
        l.prune_leases(T0 + 2 * DAY).unwrap();
        assert_eq!(totals(&l, 2, T0 + 2 * DAY), (0, 100));
        let leased: i64 = value(
            &l,
            "SELECT leased FROM accounts WHERE id = ?1",
            [&[2u8; 32][..]],
        );
        assert_eq!(leased, 0);
    }
}
