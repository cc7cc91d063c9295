//! `lode mine` and `lode status`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use lode::miner::{MinerConfig, MinerStats, Miners, bench, client};
use lode::protocol::AccountStatus;
use lode::store::HttpMirror;

use super::{Config, Home};
use lode::protocol::unix_now;

#[derive(Debug, Args)]
pub struct MineArgs {
    /// Mining threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Fraction of the time each thread hashes, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    duty: f64,
    /// Benchmark the hasher for SECS seconds and print H/s.
    #[arg(long, value_name = "SECS")]
    bench: Option<f64>,
    /// Keep mining after the account is funded.
    #[arg(long)]
    forever: bool,
    /// Stop after SECS seconds whatever the funding.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Mine for this mirror (default: the least funded configured mirror).
    #[arg(long)]
    mirror: Option<String>,
    /// Mine at normal priority instead of idle (SCHED_IDLE / nice 19).
    #[arg(long)]
    normal_priority: bool,
    /// Days ahead the account should be funded for.
    #[arg(long, default_value_t = 30.0)]
    horizon_days: f64,
}

/// The most miner threads this machine is given: one per core is all
/// hashing can use, and a few times that is surely a typo (99,999 threads
/// ran the process out of memory for their stacks and aborted it).
pub fn max_miner_threads() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |c| c.get())
}

pub fn mine(args: MineArgs) -> Result<()> {
    if !(args.duty > 0.0 && args.duty <= 1.0) {
        bail!("--duty must be in (0, 1]");
    }
    if args.threads > max_miner_threads() {
        bail!(
            "--threads {}: at most {} on this machine (0: one per core)",
            args.threads,
            max_miner_threads()
        );
    }
    // A year at most: beyond that the deadline is no deadline.
    if let Some(s) = args.duration
        && !(s > 0.0 && s <= 366.0 * 86_400.0)
    {
        bail!("--duration wants a positive number of seconds, at most a year; got {s}");
    }
    if let Some(secs) = args.bench {
        // A day at most: a benchmark longer than that is a typo (and
        // past what a Duration holds, it panicked).
        if !(secs > 0.0 && secs <= 86_400.0) {
            bail!("--bench needs a positive number of seconds, at most a day; got {secs}");
        }
        let report = bench(args.threads, secs)?;
        for (i, hps) in report.per_thread_hps.iter().enumerate() {
            println!("thread {i}: {:.2} MH/s", hps / 1e6);
        }
        println!(
            "total: {:.2} MH/s over {} threads",
            report.total_hps / 1e6,
            report.per_thread_hps.len()
        );
        return Ok(());
    }
    let home = Home::locate()?;
    let config = Config::load(&home)?;
    let key = home.secret()?.account_key();
    let account = lode::protocol::hex(&key.public_key());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let urls = match &args.mirror {
            Some(m) => vec![m.trim_end_matches('/').to_string()],
            None => config.mirrors.clone(),
        };
        if urls.is_empty() {
            bail!("no mirrors configured: add one with `lode mirrors add URL`");
        }
        if !(args.horizon_days.is_finite() && (0.0..=36_500.0).contains(&args.horizon_days)) {
            bail!("--horizon-days must be a number from 0 to 36500");
        }
        let horizon = (args.horizon_days * 86_400.0) as i64;
        let deadline = args
            .duration
            .map(|s| Instant::now() + Duration::from_secs_f64(s));
        // Pick the least-funded mirror that has a pool.
        let mut best: Option<(String, String, Option<i64>)> = None;
        for url in &urls {
            let mirror = HttpMirror::new(url, key.clone())?;
            let (info, status) = match (mirror.info().await, mirror.account().await) {
                (Ok(i), Ok(s)) => (i, s),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("{url}: unreachable ({e})");
                    continue;
                }
            };
            let Some(port) = info.stratum_port else {
                eprintln!("{url}: runs no pool");
                continue;
            };
            let host = reqwest::Url::parse(url)?
                .host_str()
                .ok_or_else(|| anyhow!("{url} has no host"))?
                .to_string();
            let addr = format!("{host}:{port}");
            if best
                .as_ref()
                .is_none_or(|(_, _, f)| funded_rank(status.funded_until) < funded_rank(*f))
            {
                best = Some((url.clone(), addr, status.funded_until));
            }
        }
        let (url, addr, funded) = best.ok_or_else(|| anyhow!("no reachable mirror runs a pool"))?;
        let now = unix_now();
        if !args.forever && deadline.is_none() && funded.is_none_or(|f| f >= now + horizon) {
            println!("{url}: funded {}; nothing to mine", describe_funded(funded));
            return Ok(());
        }
        eprintln!("mining for {url} at {addr} as {account}");
        let (tx, rx) = std::sync::mpsc::channel();
        let miners = Arc::new(Miners::start(
            MinerConfig {
                threads: args.threads,
                duty: args.duty,
                idle_priority: !args.normal_priority,
            },
            tx,
        )?);
        let (found_tx, found_rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            while let Ok(f) = rx.recv() {
                if found_tx.send(f).is_err() {
                    break;
                }
            }
        });
        let stats = Arc::new(MinerStats::default());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(client::run(
            addr,
            account.clone(),
            miners.clone(),
            Arc::new(tokio::sync::Mutex::new(found_rx)),
            stats.clone(),
            stop_rx,
        ));
        let mirror = HttpMirror::new(&url, key.clone())?;
        let mut last_check = Instant::now();
        let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = &mut interrupt => break,
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if last_check.elapsed() >= Duration::from_secs(5) {
                last_check = Instant::now();
                eprintln!(
                    "{:.2} MH/s, {} accepted, {} rejected",
                    miners.hashrate() / 1e6,
                    stats.accepted.load(Ordering::Relaxed),
                    stats.rejected.load(Ordering::Relaxed)
                );
                if !args.forever
                    && deadline.is_none()
                    && let Ok(s) = mirror.account().await
                    && s.funded_until.is_none_or(|f| f >= unix_now() + horizon)
                {
                    break;
                }
            }
        }
        let _ = stop_tx.send(true);
        let _ = task.await;
        // Let in-flight answers land before reporting.
        let status = mirror.account().await.ok();
        println!(
            "accepted {} shares worth {} micro-difficulty; rejected {}",
            stats.accepted.load(Ordering::Relaxed),
            stats.accepted_micro.load(Ordering::Relaxed),
            stats.rejected.load(Ordering::Relaxed)
        );
        if let Some(s) = status {
            println!(
                "{url}: balance {:.6}, funded {}",
                balance(&s),
                describe_funded(s.funded_until)
            );
        }
        if let Ok(m) = Arc::try_unwrap(miners) {
            m.stop();
        }
        Ok(())
    })
}

fn funded_rank(f: Option<i64>) -> i64 {
    f.unwrap_or(i64::MAX)
}

fn balance(s: &AccountStatus) -> f64 {
    (s.credit_micro as f64 - s.debit_micro as f64) / 1e6
}

fn describe_funded(f: Option<i64>) -> String {
    match f {
        // No charge at the current usage: a free mirror, or nothing held
        // on a priced one yet. Either way, not a promise about later.
        None => "indefinitely at the current usage (nothing held there costs credit)".into(),
        Some(t) => {
            let days = (t - unix_now()) as f64 / 86_400.0;
            format!(
                "until {} ({days:.1} days from now)",
                super::client::listed_time(t)
            )
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// How long `lode status` waits for a mirror's account.
const STATUS_WAIT: Duration = Duration::from_secs(10);

pub fn status(args: StatusArgs) -> Result<()> {
    let home = Home::locate()?;
    let config = Config::load(&home)?;
    let key = home.secret()?.account_key();
    let rt = tokio::runtime::Runtime::new()?;
    // All mirrors at once, each given at most STATUS_WAIT: a mirror that
    // hangs must not hold the report (or one per mirror, in turn).
    let rows = rt.block_on(async {
        let mut asks = Vec::new();
        for url in &config.mirrors {
            let mirror = HttpMirror::new(url, key.clone()).context("mirror URL")?;
            asks.push(async move {
                let answer = tokio::time::timeout(STATUS_WAIT, mirror.account()).await;
                let answer = answer.unwrap_or_else(|_| {
                    Err(lode::store::Error::Unavailable {
                        mirror: url.clone(),
                        reason: format!("no answer in {} s", STATUS_WAIT.as_secs()),
                    })
                });
                (url.clone(), answer)
            });
        }
        anyhow::Ok(futures_util::future::join_all(asks).await)
    })?;
    let mount = mount_status(&home.data.join("mount.sock"));
    if args.json {
        let mirrors: Vec<_> = rows
            .iter()
            .map(|(url, r)| match r {
                Ok(s) => serde_json::json!({
                    "url": url, "reachable": true, "balance": balance(s),
                    "daily_cost": s.daily_cost_micro as f64 / 1e6, "funded_until": s.funded_until,
                    // `funded_until` null: nothing held there costs credit.
                    "funded_indefinitely": s.funded_until.is_none(),
                    "usage_bytes": s.usage_bytes, "shares_accepted": s.shares_accepted,
                }),
                Err(e) => {
                    serde_json::json!({"url": url, "reachable": false, "error": e.to_string()})
                }
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "account": lode::protocol::hex(&key.public_key()),
                "mirrors": mirrors,
                "mount": mount,
            }))?
        );
        return Ok(());
    }
    println!("account {}", lode::protocol::hex(&key.public_key()));
    if let Some(m) = &mount {
        // `miner` is absent from an older mount's answer: it had one.
        let miner = if m["miner"].as_bool() == Some(false) {
            "miner off (-o nominer)".to_string()
        } else {
            format!(
                "miner {} at {:.2} MH/s, {} accepted, {} rejected",
                match (m["mining_for"].as_str(), m["pool_connected"].as_bool()) {
                    (None, _) => "idle".to_string(),
                    (Some(u), Some(false)) => format!("connecting to the pool of {u}"),
                    (Some(u), _) => format!("mining for {u}"),
                },
                m["hashrate"].as_f64().unwrap_or(0.0) / 1e6,
                m["accepted"],
                m["rejected"],
            )
        };
        println!(
            "mount at {}: {} files ({} bytes) staged, {} inodes held; {miner}",
            m["mountpoint"].as_str().unwrap_or("?"),
            m["staged_files"],
            m["staged_bytes"],
            m["inodes"],
        );
        if let Some(f) = m.get("uploads_failing").filter(|f| f.is_object()) {
            println!(
                "  uploads failing ({} tries in a row, for {} s): {}; next try in {} s (`lode sync` tries now)",
                f["tries"],
                unix_now() - f["since"].as_i64().unwrap_or(0),
                f["error"].as_str().unwrap_or("?"),
                f["next_try_in_s"],
            );
        }
        if let (Some(r), Some(at)) = (m["last_renewal"].as_str(), m["last_renewal_at"].as_i64()) {
            // The JSON line carries the time at its end, for older readers.
            let what = r.strip_suffix(&format!(" at {at}")).unwrap_or(r);
            let how = match m["renewal_short"].as_bool() {
                Some(true) => "NOT ALL RENEWED",
                _ => "renewed",
            };
            println!("  leases {how}, {} s ago: {what}", (unix_now() - at).max(0));
        }
    }
    for (url, r) in rows {
        match r {
            Ok(s) => println!(
                "{url}: up, {} bytes leased, balance {:.6}, daily cost {:.6}, funded {}, {} shares accepted",
                s.usage_bytes,
                balance(&s),
                s.daily_cost_micro as f64 / 1e6,
                describe_funded(s.funded_until),
                s.shares_accepted
            ),
            Err(e) => println!("{url}: DOWN ({e})"),
        }
    }
    Ok(())
}

/// Ask a running mount for its state over its control socket.
fn mount_status(socket: &std::path::Path) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"status\n").ok()?;
    let mut line = String::new();
    stream.read_to_string(&mut line).ok()?;
    serde_json::from_str(line.trim()).ok()
}
