//! Credit and debit: proof-of-work pays for storage.
//!
//! Credit is the sum of accepted share difficulty, in millionths of a
//! difficulty-1 share. Storage costs `price` per GiB-day of leased bytes
//! above the free allowance, accrued lazily: each time an account is
//! touched (and on every GC pass) the time since its last charge is billed,
//! each stretch between the expiries of its leases at the usage of that
//! stretch. `funded_until = now + balance / daily cost`. An
//! account that pays for storage (usage above the free allowance) and
//! whose balance has been at or below zero for longer than the grace
//! period gets no new or renewed leases, and its shares age out through
//! GC. Within the free allowance an account pays nothing and is never
//! unfunded.

use rusqlite::{OptionalExtension, params};

use super::ledger::{cached_exec, cached_row};
use super::{Error, Ledger, Result};

const GIB: u128 = 1 << 30;
const DAY: i64 = 86_400;
/// How long each accepted share's record (its header hash) is kept before
/// [`Ledger::fold_old_shares`] sums it into its day: far longer than any
/// job a share fits stays current.
pub const SHARE_RECORD_SECS: i64 = 7 * DAY;

/// An account's money, in millionths of a difficulty-1 share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub credit: u64,
    pub debit: u64,
    pub usage: u64,
    pub daily_cost: u64,
    pub shares: u64,
    /// `None` when nothing is being charged (free, or nothing stored).
    pub funded_until: Option<i64>,
}

impl Balance {
    pub fn balance(&self) -> i64 {
        self.credit as i64 - self.debit as i64
    }
}

impl Ledger {
    fn daily_cost(&self, usage: u64) -> u64 {
        let billable = usage.saturating_sub(self.terms.free_bytes) as u128;
        // Saturating: a cost past u64 is past any balance anyway.
        u64::try_from(billable * self.terms.price_micro as u128 / GIB).unwrap_or(u64::MAX)
    }

    /// Bill `account` for storage up to `now`, and track when it went
    /// unfunded.
    pub(super) fn charge_in(
        &self,
        tx: &rusqlite::Connection,
        account: &[u8; 32],
        now: i64,
    ) -> Result<()> {
        let row: Option<(Option<i64>, i64, i64, Option<i64>)> = cached_row(
            tx,
            "SELECT charged_at, credit, debit, unfunded_since FROM accounts WHERE id = ?1",
            [&account[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
        let Some((charged_at, credit, mut debit, unfunded)) = row else {
            return Ok(());
        };
        let since = charged_at.unwrap_or(now);
        // Bill whole millionths only, and move `charged_at` on by the
        // whole seconds those millionths pay for, rounded up: a second is
        // billed once, and frequent charges cannot round usage to zero
        // (what cost under a millionth waits for the next bill). Rounding
        // the seconds down instead left the last second unpaid-for on the
        // books while billing it, so every charge within it billed it
        // again: 50 balance reads in one second cost 50 seconds of
        // storage. What rounding up forgives is under a millionth per
        // charge. `charged_at` never moves back: an upload records its
        // share with the time it started, which may be before the last
        // bill.
        //
        // Usage drops as leases lapse, so the time is billed in stretches
        // between the expiries that fall in it, each at its own usage. It
        // was billed at the usage of `since` throughout: a lease that lapsed
        // just after a bill was paid for until the next one (up to a GC
        // interval per lapse, and all the time since the last bill for an
        // account no one touched). Only the last stretch carries its
        // unbilled fraction to the next bill; an earlier one forgives it
        // (under a millionth each).
        let mut charged_to = since.max(now);
        let mut cost = 0i128;
        if self.terms.price_micro > 0 {
            let mut usage = Self::usage_in(tx, account, since)?;
            let mut stretches = Self::lapses_in(tx, account, since, now)?;
            stretches.push((now, 0));
            let mut at = since;
            for (end, lapsing) in stretches {
                cost = self.daily_cost(usage) as i128;
                if cost > 0 && end > at {
                    let billed = cost * (end - at) as i128 / DAY as i128;
                    debit = debit.saturating_add(i64::try_from(billed).unwrap_or(i64::MAX));
                    let paid_for = (billed * DAY as i128 + cost - 1) / cost;
                    if end == now {
                        charged_to = at + paid_for as i64;
                    }
                }
                usage = usage.saturating_sub(lapsing);
                at = at.max(end);
            }
        }
        // Unfunded: paying for storage with nothing left to pay, from the
        // first bill that found it so until its balance is above zero
        // again. An account within the free allowance (or storing
        // nothing) pays nothing, whatever its balance, so it does not
        // become unfunded (it did from its first bill, and past the grace
        // period a user who stayed within `--free` and never mined was
        // refused every lease); one that already was stays so while in
        // debt, and `check_funded` lets it lease within the allowance.
        // Cleared at any bill that found nothing stored, an account in
        // debt whose leases had all lapsed renewed them before GC took
        // the shares, with a fresh grace period each time: storage for
        // free, for good (a helper's review).
        let unfunded = match (credit - debit > 0, cost > 0, unfunded) {
            (true, _, _) => None,
            (false, true, None) => Some(now),
            (false, _, since) => since,
        };
        cached_exec(
            tx,
            "UPDATE accounts SET debit = ?2, charged_at = ?3, unfunded_since = ?4 WHERE id = ?1",
            params![&account[..], debit, charged_to, unfunded],
        )?;
        Ok(())
    }

    /// Before `adding` bytes are leased at `now`, just billed
    /// (`check_funded`): carry what the account's last bill left unbilled
    /// over to the new usage. A bill leaves `charged_at` behind by the
    /// time its usage cost under a millionth in, and the next bill charges
    /// that time at the usage it finds; billed at the usage with the new
    /// lease, the new bytes paid for time before they were leased (for a
    /// small account, up to a day of them). The lag is shrunk instead by
    /// the old cost over the new, rounded down: the same fraction of a
    /// millionth, at the new rate, less under a second of it.
    pub(super) fn carry_to(
        &self,
        tx: &rusqlite::Connection,
        account: &[u8; 32],
        adding: u64,
        now: i64,
    ) -> Result<()> {
        if self.terms.price_micro == 0 {
            return Ok(());
        }
        let charged_at: Option<i64> = cached_row(
            tx,
            "SELECT charged_at FROM accounts WHERE id = ?1",
            [&account[..]],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
        let Some(charged_at) = charged_at.filter(|t| *t < now) else {
            return Ok(());
        };
        let usage = Self::usage_in(tx, account, now)?;
        let (old, new) = (
            self.daily_cost(usage) as i128,
            self.daily_cost(usage.saturating_add(adding)) as i128,
        );
        if new <= old {
            return Ok(());
        }
        let lag = i64::try_from((now - charged_at) as i128 * old / new).unwrap_or(0);
        cached_exec(
            tx,
            "UPDATE accounts SET charged_at = ?2 WHERE id = ?1",
            params![&account[..], now - lag],
        )?;
        Ok(())
    }

    /// The times in `(from, to)` at which leases of `account` lapse, in
    /// order, each with the bytes that lapse then.
    fn lapses_in(
        tx: &rusqlite::Connection,
        account: &[u8; 32],
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, u64)>> {
        if to <= from {
            return Ok(Vec::new());
        }
        let mut stmt = tx.prepare_cached(
            "SELECT expires, SUM(size) FROM leases \
             WHERE account = ?1 AND expires > ?2 AND expires < ?3 \
             GROUP BY expires ORDER BY expires",
        )?;
        let rows = stmt.query_map(params![&account[..], from, to], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Refuse a lease to an account past its grace period, unless with
    /// the `adding` bytes it brings its usage stays within the free
    /// allowance (which costs nothing).
    pub(super) fn check_funded(
        &self,
        tx: &rusqlite::Connection,
        account: &[u8; 32],
        adding: u64,
        now: i64,
    ) -> Result<()> {
        if self.terms.price_micro == 0 {
            return Ok(());
        }
        self.charge_in(tx, account, now)?;
        // An account with no row yet (its first upload) has never been
        // billed, so never unfunded.
        let since: Option<i64> = cached_row(
            tx,
            "SELECT unfunded_since FROM accounts WHERE id = ?1",
            [&account[..]],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
        let free = || -> Result<bool> {
            let usage = Self::usage_in(tx, account, now)?;
            Ok(self.daily_cost(usage.saturating_add(adding)) == 0)
        };
        match since {
            Some(t) if now - t > self.terms.grace_secs && !free()? => Err(Error::Unfunded {
                since: t,
                grace_secs: self.terms.grace_secs,
            }),
            _ => Ok(()),
        }
    }

    /// Record an accepted share and credit its difficulty, atomically and
    /// durably: the pool acknowledges a share only once this returns, so a
    /// crash can leave a share credited and not acknowledged (the miner's
    /// loss of one answer), never acknowledged and not credited (the
    /// user's loss of credit). Returns `false` (and credits nothing) if
    /// this exact share (by header hash) was credited before, on any
    /// connection, before any restart.
    pub fn credit_share(
        &self,
        account: &[u8; 32],
        worker: &str,
        difficulty_micro: u64,
        hash: &[u8; 32],
        now: i64,
    ) -> Result<bool> {
        self.with_tx(|tx| {
            let inserted = cached_exec(tx,
                "INSERT INTO pool_shares (account, worker, difficulty, hash, created) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (hash) DO NOTHING",
                params![&account[..], worker, difficulty_micro as i64, &hash[..], now],
            )?;
            if inserted == 0 {
                return Ok(false);
            }
            Self::ensure_account(tx, account, now)?;
            self.charge_in(tx, account, now)?;
            cached_exec(tx,
                "UPDATE accounts SET credit = credit + ?2 WHERE id = ?1",
                params![&account[..], difficulty_micro as i64],
            )?;
            self.charge_in(tx, account, now)?;
            Ok(true)
        })
    }

    /// Record what the upstream pool said about a forwarded share.
    pub fn record_upstream(&self, hash: &[u8; 32], accepted: bool) -> Result<()> {
        let conn = self.conn.lock().expect("ledger lock");
        conn.execute(
            "UPDATE pool_shares SET upstream = ?2 WHERE hash = ?1",
            params![&hash[..], if accepted { 2 } else { 3 }],
        )?;
        Ok(())
    }

    /// Upstream results so far: (forwarded and accepted, rejected).
    pub fn upstream_counts(&self) -> Result<(u64, u64)> {
        let conn = self.conn.lock().expect("ledger lock");
        Ok(conn.query_row(
            "SELECT (SELECT COALESCE(SUM(CASE WHEN upstream = 2 THEN 1 ELSE 0 END), 0) FROM pool_shares)
                  + (SELECT COALESCE(SUM(upstream_accepted), 0) FROM pool_share_days),
                    (SELECT COALESCE(SUM(CASE WHEN upstream = 3 THEN 1 ELSE 0 END), 0) FROM pool_shares)
                  + (SELECT COALESCE(SUM(upstream_rejected), 0) FROM pool_share_days)",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    }

    /// Fold the records of shares accepted before `now - SHARE_RECORD_SECS`
    /// into per-account daily sums (see `SCHEMA_V4`), one day per
    /// transaction, so a pass never holds the ledger long. Run on each GC
    /// pass. Returns the share records folded.
    pub fn fold_old_shares(&self, now: i64) -> Result<u64> {
        let cutoff = now - SHARE_RECORD_SECS;
        let mut folded = 0;
        loop {
            let n = self.with_tx(|tx| {
                let oldest: Option<i64> =
                    tx.query_row("SELECT MIN(created) FROM pool_shares", [], |r| r.get(0))?;
                let Some(oldest) = oldest.filter(|&t| t < cutoff) else {
                    return Ok(0);
                };
                // The end of the oldest record's day, or the cutoff.
                let until = (oldest.div_euclid(DAY) + 1).saturating_mul(DAY).min(cutoff);
                tx.execute(
                    "INSERT INTO pool_share_days
                         (account, day, shares, difficulty, upstream_accepted, upstream_rejected)
                     SELECT account, created / 86400, COUNT(*), SUM(difficulty),
                            SUM(CASE WHEN upstream = 2 THEN 1 ELSE 0 END), SUM(CASE WHEN upstream = 3 THEN 1 ELSE 0 END)
                     FROM pool_shares WHERE created < ?1 GROUP BY account, created / 86400
                     ON CONFLICT (account, day) DO UPDATE SET
                         shares = shares + excluded.shares,
                         difficulty = difficulty + excluded.difficulty,
                         upstream_accepted = upstream_accepted + excluded.upstream_accepted,
                         upstream_rejected = upstream_rejected + excluded.upstream_rejected",
                    [until],
                )?;
                Ok(tx.execute("DELETE FROM pool_shares WHERE created < ?1", [until])? as u64)
            })?;
            if n == 0 {
                return Ok(folded);
            }
            folded += n;
        }
    }

    /// Bill an account up to now and report its standing.
    pub fn balance(&self, account: &[u8; 32], now: i64) -> Result<Balance> {
        self.with_tx(|tx| {
            self.charge_in(tx, account, now)?;
            let (credit, debit, unfunded): (i64, i64, Option<i64>) = tx
                .query_row(
                    "SELECT credit, debit, unfunded_since FROM accounts WHERE id = ?1",
                    [&account[..]],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?
                .unwrap_or((0, 0, None));
            let shares: i64 = cached_row(
                tx,
                "SELECT (SELECT COUNT(*) FROM pool_shares WHERE account = ?1)
                      + (SELECT COALESCE(SUM(shares), 0) FROM pool_share_days WHERE account = ?1)",
                [&account[..]],
                |r| r.get(0),
            )?;
            let usage = Self::usage_in(tx, account, now)?;
            let daily_cost = self.daily_cost(usage);
            let balance = credit - debit;
            // Storing nothing billable, an account in debt is still not
            // funded: `check_funded` refuses it any lease past `--free`
            // until its balance is above zero. Reported as "none" (funded
            // indefinitely), its mount never mined for it, and it stayed
            // refused for good (a helper's review). Now: funded until now.
            let in_debt = self.terms.price_micro > 0 && (balance < 0 || unfunded.is_some());
            let funded_until = match daily_cost {
                0 => in_debt.then_some(now),
                cost => Some(now + (balance.max(0) as i128 * DAY as i128 / cost as i128) as i64),
            };
            Ok(Balance {
                credit: credit as u64,
                debit: debit as u64,
                usage,
                daily_cost,
                shares: shares as u64,
                funded_until,
            })
        })
    }

    /// Bill every account up to now (run on each GC pass).
    pub fn charge_all(&self, now: i64) -> Result<()> {
        if self.terms.price_micro == 0 {
            return Ok(());
        }
        let accounts: Vec<Vec<u8>> = {
            let conn = self.conn.lock().expect("ledger lock");
            let mut stmt = conn.prepare("SELECT id FROM accounts")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        for chunk in accounts.chunks(super::ledger::ACCOUNTS_PER_TX) {
            self.with_tx(|tx| {
                for id in chunk {
                    if let Ok(id) = <[u8; 32]>::try_from(id.as_slice()) {
                        self.charge_in(tx, &id, now)?;
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}
