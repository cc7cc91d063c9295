//! Proxy mode: the mirror's pool relays an upstream Stratum pool's jobs.
//!
//! The mirror subscribes upstream with the operator's credentials and gets
//! an extranonce1 `E` and an extranonce2 size `N`. Each downstream session
//! gets extranonce1 `E ‖ S` (S: `SESSION_BYTES` of its own) and extranonce2
//! size `N − SESSION_BYTES`, so downstream coinbases are exactly upstream
//! coinbases. A downstream share is validated and credited locally; if its
//! hash also meets the upstream difficulty it is submitted upstream as
//! extranonce2 `S ‖ e2`, and the upstream's verdict is recorded.
//!
//! Version rolling (BIP310) is negotiated upstream first: the link asks for
//! lode's mask with `mining.configure`, and downstream sessions are offered
//! only the bits the upstream granted (none if it refused or does not know
//! the method). A share rolling other bits would be credited here but
//! rejected upstream.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LinesCodec};

use super::Ledger;
use super::stratum::Jobs;
use crate::pool::stratum::{self, MAX_SERVER_LINE, ServerMessage, Submit, opening_id};
use crate::pool::{Accepted, Difficulty, VERSION_ROLLING_MASK, hash_meets};

/// Extranonce bytes a proxy reserves per downstream session.
pub const SESSION_BYTES: usize = 2;

/// Where and as whom to mine upstream.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `host:port` of the upstream Stratum endpoint.
    pub addr: String,
    pub user: String,
    pub password: String,
    /// How long the upstream may say nothing before the link is taken for
    /// dead: with no read deadline, a stalled or half-open link kept its
    /// last jobs live, and miners were credited for work the upstream had
    /// retired, for as long as the mirror ran (a helper's review).
    pub silence: Duration,
}

/// A locally accepted share, offered upstream.
pub struct Forward {
    pub accepted: Box<Accepted>,
}

/// Start the upstream link; returns where to offer shares.
pub fn start(config: UpstreamConfig, jobs: Arc<Jobs>, ledger: Ledger) -> mpsc::Sender<Forward> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run(config, jobs, ledger, rx));
    tx
}

async fn run(
    config: UpstreamConfig,
    jobs: Arc<Jobs>,
    ledger: Ledger,
    mut rx: mpsc::Receiver<Forward>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = tokio::time::Instant::now();
        match session(&config, &jobs, &ledger, &mut rx).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(upstream = %config.addr, error = %e, "upstream link lost; reconnecting")
            }
        }
        // Old jobs cannot be forwarded on a new link.
        *jobs.book.write().await = crate::pool::JobBook::default();
        // A link that held a while was a working one: its loss is not one
        // more in a run of failures, and is dialled again soon.
        if started.elapsed() >= LINK_HELD {
            backoff = FIRST_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LAST_BACKOFF);
        // Shares found on the old link's jobs: the new link knows none of
        // them, and the upstream would count each as a rejection.
        while rx.try_recv().is_ok() {}
    }
}

/// The wait before dialling the upstream again after a first failure; it
/// doubles with each failure after, up to [`LAST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const LAST_BACKOFF: Duration = Duration::from_secs(30);
/// A link that lasted this long resets the wait to [`FIRST_BACKOFF`].
const LINK_HELD: Duration = Duration::from_secs(60);
/// Forwarded shares awaiting the upstream's verdict, at most; past that
/// the oldest is taken as unanswered (an upstream that never answers
/// submissions would otherwise grow the map for as long as the link
/// lasts).
const MAX_PENDING: usize = 4096;
/// Jobs whose difficulty is remembered, for shares found on them.
const JOBS_KEPT: usize = 64;

fn io(e: impl ToString) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

async fn session(
    config: &UpstreamConfig,
    jobs: &Jobs,
    ledger: &Ledger,
    rx: &mut mpsc::Receiver<Forward>,
) -> std::io::Result<()> {
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&config.addr))
        .await
        .map_err(|_| io("no answer to the connection within 10 s"))??;
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_SERVER_LINE));
    // No session of this link may roll version bits until the upstream
    // says which it takes.
    jobs.version_mask.store(0, Ordering::Relaxed);
    // Nor is any session capped by the last link's difficulty.
    jobs.upstream_difficulty.store(0, Ordering::Relaxed);
    for line in stratum::opening(
        VERSION_ROLLING_MASK,
        "lode-proxy",
        &config.user,
        &config.password,
    ) {
        lines.send(line).await.map_err(io)?;
    }
    let mut next_id = stratum::FIRST_FREE_ID;
    let mut version_mask = 0u32;
    // Whether the upstream agreed to version rolling at all.
    let mut rolling = false;
    // The difficulty of jobs notified from now on (Stratum's
    // set_difficulty applies from the next job), and each recent job's.
    let mut difficulty = Difficulty::ONE;
    let mut job_difficulty: VecDeque<(String, Difficulty)> = VecDeque::new();
    // Submissions awaiting the upstream's answer: id → share hash. Ids
    // only grow, so the first is the oldest.
    let mut pending: BTreeMap<u64, [u8; 32]> = BTreeMap::new();
    let mut prefix_len = None;
    // Jobs are served downstream only once the upstream took the
    // credentials: before that, shares would be credited here for jobs the
    // upstream never meant for this link. The latest job meanwhile is held.
    let mut authorized = false;
    let mut held_job = None;
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(heard + config.silence) => {
                return Err(io(format!("upstream silent for {} s", config.silence.as_secs())));
            }
            line = lines.next() => {
                let line = line.ok_or_else(|| io("upstream closed the connection"))?.map_err(io)?;
                heard = tokio::time::Instant::now();
                match stratum::parse_server(&line).map_err(io)? {
                    ServerMessage::Response { id: Some(opening_id::CONFIGURE), result, error } => {
                        // Sessions read this before the extranonce below
                        // (the upstream answers in order), so a session of
                        // the new generation rolls only granted bits.
                        version_mask = stratum::granted_version_mask(&result, error.as_ref(), VERSION_ROLLING_MASK);
                        jobs.version_mask.store(version_mask, Ordering::Relaxed);
                        rolling = version_mask != 0;
                        tracing::info!(upstream = %config.addr, mask = format_args!("{version_mask:08x}"), "upstream version rolling");
                    }
                    ServerMessage::Response { id: Some(opening_id::SUBSCRIBE), result, .. } => {
                        let en1 = result.get(1).and_then(|v| v.as_str()).ok_or_else(|| io("bad subscribe reply"))?;
                        let en1 = stratum::hex_bytes(en1, "extranonce1").map_err(io)?;
                        let size = result.get(2).and_then(|v| v.as_u64()).ok_or_else(|| io("bad subscribe reply"))? as usize;
                        if size <= SESSION_BYTES {
                            return Err(io(format!("upstream extranonce2 size {size} leaves no room for sessions")));
                        }
                        prefix_len = Some(en1.len());
                        *jobs.extranonce.write().await = (en1, size - SESSION_BYTES);
                        // Only now: a session that sees the new generation
                        // also sees the new extranonce.
                        jobs.generation.fetch_add(1, Ordering::Relaxed);
                    }
                    ServerMessage::Response { id: Some(opening_id::AUTHORIZE), result, error } => {
                        if error.is_some() || result != json!(true) {
                            return Err(io(format!("upstream refused authorization: {error:?}")));
                        }
                        authorized = true;
                        if let Some(job) = held_job.take() {
                            jobs.publish(job).await;
                        }
                    }
                    ServerMessage::Response { id: Some(id), result, error } => {
                        if let Some(hash) = pending.remove(&id) {
                            let ok = error.is_none() && result == json!(true);
                            if !ok {
                                tracing::info!(?error, "upstream rejected a forwarded share");
                            }
                            let ledger = ledger.clone();
                            let _ = ledger.run(move |l| l.record_upstream(&hash, ok)).await;
                        }
                    }
                    ServerMessage::Notify(job) if prefix_len.is_some() => {
                        if job.clean {
                            job_difficulty.clear();
                        }
                        if job_difficulty.len() == JOBS_KEPT {
                            job_difficulty.pop_front();
                        }
                        job_difficulty.push_back((job.id.clone(), difficulty));
                        match authorized {
                            true => jobs.publish(job).await,
                            false => held_job = Some(job),
                        }
                    }
                    // Rounded to the stricter target: a looser one forwards
                    // shares the upstream rejects. One that is no
                    // difficulty (zero, negative) is ignored: taken as 1 it
                    // forwarded every share of difficulty 1 to be rejected.
                    ServerMessage::SetDifficulty(d) => match Difficulty::from_f64_up(d) {
                        Some(d) => {
                            difficulty = d;
                            jobs.upstream_difficulty.store(d.micro(), Ordering::Relaxed);
                        }
                        None => tracing::warn!(
                            difficulty = d,
                            "the upstream set a difficulty that is none; keeping the last"
                        ),
                    },
                    ServerMessage::SetVersionMask(mask) if rolling => {
                        let narrowed = version_mask & !mask != 0;
                        version_mask = mask & VERSION_ROLLING_MASK;
                        jobs.version_mask.store(version_mask, Ordering::Relaxed);
                        if narrowed {
                            // Sessions may be rolling bits the upstream no
                            // longer takes: they close at the next job, and
                            // their miners negotiate again.
                            jobs.generation.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
            }
            fwd = rx.recv() => {
                let Some(Forward { accepted: a }) = fwd else { return Ok(()) };
                let Some(prefix_len) = prefix_len else { continue };
                let rolled_outside = a.submit.version_bits.is_some_and(|bits| bits & !version_mask != 0);
                let wanted = job_difficulty
                    .iter()
                    .rev()
                    .find(|(id, _)| *id == a.submit.job_id)
                    .map_or(difficulty, |(_, d)| *d);
                if !hash_meets(&a.hash, &wanted.target()) || a.extranonce1.len() < prefix_len || rolled_outside {
                    continue;
                }
                let mut extranonce2 = a.extranonce1[prefix_len..].to_vec();
                extranonce2.extend_from_slice(&a.submit.extranonce2);
                let submit = Submit {
                    worker: config.user.clone(),
                    job_id: a.submit.job_id.clone(),
                    extranonce2,
                    ntime: a.submit.ntime,
                    nonce: a.submit.nonce,
                    version_bits: a.submit.version_bits,
                };
                if pending.len() == MAX_PENDING {
                    pending.pop_first();
                }
                pending.insert(next_id, a.hash);
                lines.send(stratum::request(next_id, "mining.submit", stratum::submit_params(&submit))).await.map_err(io)?;
                next_id += 1;
            }
        }
    }
}
