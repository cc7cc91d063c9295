//! Cost of recording and renewing shares on a mirror's ledger, as the
//! account grows.
//!
//! Run with `cargo bench --bench ledger`; results are in
//! docs/PERFORMANCE.md. For each size N, an account is given N leases on
//! a free ledger (filling is not what is measured), the ledger is opened
//! again with a price and a quota, and then timed: recording 500 new
//! shares, in the mirror's batches of 32, and renewing 500 held ones. The
//! figure to read is the ratio of the largest size's cost to the
//! smallest's, measured in the same run: near 1 means the cost per share
//! does not grow with the account.

use std::time::{Duration, Instant};

use lode::mirror::{Ledger, NewShare, Terms};

const SIZES: [u64; 3] = [1_000, 10_000, 50_000];
const TIMED: u64 = 500;
const BATCH: usize = 32;
const SHARE_BYTES: u64 = 512 * 1024;
const T0: i64 = 1_700_000_000;

fn terms(price_micro: u64, quota: Option<u64>) -> Terms {
    Terms {
        lease_secs: 31 * 86_400,
        quota,
        capacity: quota.map(|q| q * 4),
        price_micro,
        grace_secs: 7 * 86_400,
        free_bytes: 0,
    }
}

fn share(n: u64, now: i64) -> NewShare {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_le_bytes());
    NewShare {
        account: [1; 32],
        id,
        size: SHARE_BYTES,
        now,
    }
}

/// (record 500, renew 500) for an account that already holds `size`.
fn measure(size: u64) -> (Duration, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger.sqlite");
    {
        let free = Ledger::open(&path, terms(0, None)).expect("open");
        let fill: Vec<NewShare> = (0..size).map(|n| share(n, T0)).collect();
        for batch in fill.chunks(1000) {
            free.add_shares(batch).expect("fill");
        }
    }
    let priced = Ledger::open(&path, terms(1_000, Some(1 << 50))).expect("reopen");
    // A bill at the start, then each timed call a second later: each one
    // asks for the account's usage again, as uploads spread over time do.
    priced.balance(&[1; 32], T0 + 60).expect("balance");
    let new: Vec<NewShare> = (size..size + TIMED)
        .enumerate()
        .map(|(i, n)| share(n, T0 + 61 + (i / BATCH) as i64))
        .collect();
    let started = Instant::now();
    for batch in new.chunks(BATCH) {
        for result in priced.add_shares(batch).expect("add") {
            result.expect("share admitted");
        }
    }
    let record = started.elapsed();
    let held: Vec<[u8; 32]> = (0..TIMED).map(|n| share(n, T0).id).collect();
    let started = Instant::now();
    for (i, batch) in held.chunks(BATCH).enumerate() {
        let renewal = priced
            .renew(&[1; 32], batch, T0 + 120 + i as i64)
            .expect("renew");
        assert_eq!(renewal.renewed as usize, batch.len());
    }
    (record, started.elapsed())
}

fn main() {
    // `cargo test` runs benches with --bench absent: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("ledger: {TIMED} shares recorded / renewed on a priced, quota'd mirror");
    let mut first = None;
    for size in SIZES {
        let (record, renew) = measure(size);
        let per = |d: Duration| d.as_secs_f64() * 1e6 / TIMED as f64;
        println!(
            "account of {size:>6} leases: record {:>8.1} µs/share, renew {:>8.1} µs/share",
            per(record),
            per(renew)
        );
        let (r0, n0) = *first.get_or_insert((per(record), per(renew)));
        if size == SIZES[SIZES.len() - 1] {
            println!(
                "ratio {size} to {}: record {:.2}, renew {:.2}",
                SIZES[0],
                per(record) / r0,
                per(renew) / n0
            );
        }
    }
}
