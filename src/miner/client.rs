//! The miner's Stratum v1 client: turns pool jobs into work for the mining
//! threads, and their finds into submissions.
//!
//! It reaches a pool only over the wire. It reconnects with backoff, drops
//! old work on `clean_jobs`, follows difficulty changes, negotiates BIP310
//! version rolling, and rolls extranonce2 (then version bits) when the
//! threads exhaust a header's nonce space.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{Framed, LinesCodec};

use super::{Found, Miners, Work};
use crate::pool::stratum::{self, MAX_SERVER_LINE, ServerMessage, Submit, opening_id};
use crate::pool::{Difficulty, Job, VERSION_ROLLING_MASK, build_header};

/// Counters a running client keeps, for `lode mine` and `lode status`.
#[derive(Debug, Default)]
pub struct MinerStats {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// Sum of the difficulty of accepted shares, in millionths.
    pub accepted_micro: AtomicU64,
    pub connected: AtomicBool,
}

/// The header a piece of work stands for, to turn a find into a submit.
#[derive(Clone)]
struct Issued {
    job_id: String,
    extranonce2: Vec<u8>,
    ntime: u32,
    version_bits: Option<u32>,
    difficulty: Difficulty,
}

struct State {
    extranonce1: Vec<u8>,
    extranonce2_size: usize,
    /// The pool's last `mining.set_difficulty`: it holds for the jobs
    /// notified after it. The pool credits each share at the difficulty
    /// its job went out at (docs/PROTOCOL.md, "Difficulty is per job"),
    /// so the job being mined keeps `job_difficulty`. The running job was
    /// published again at the new figure: lowered, the shares found until
    /// the next job fell short of their job's and were refused; raised,
    /// work was thrown away.
    next_difficulty: Difficulty,
    job_difficulty: Difficulty,
    version_mask: u32,
    job: Option<Job>,
    rolls: u64,
    next_tag: u64,
    issued: HashMap<u64, Issued>,
    current_tag: u64,
}

impl State {
    /// A new job from the pool: at the difficulty announced before it.
    fn notified(&mut self, job: Job) {
        if job.clean {
            self.issued.clear();
        }
        self.job = Some(job);
        self.job_difficulty = self.next_difficulty;
    }

    /// Publish work for the current job with a fresh extranonce2 (or
    /// version bits), under a new tag.
    fn publish(&mut self, miners: &Miners) {
        let Some(job) = &self.job else {
            miners.set_work(None);
            return;
        };
        self.rolls += 1;
        let size = self.extranonce2_size.min(8);
        let en2_full = self.rolls.to_be_bytes();
        let mut extranonce2 = vec![0u8; self.extranonce2_size];
        let n = extranonce2.len();
        extranonce2[n - size..].copy_from_slice(&en2_full[8 - size..]);
        let version_bits = (self.version_mask != 0).then(|| {
            // Spread the roll counter's high bits over the mask too, so a
            // tiny extranonce2 still yields fresh headers.
            let high = (self.rolls >> (8 * size.min(7))) as u32;
            (high << self.version_mask.trailing_zeros()) & self.version_mask
        });
        let version = match version_bits {
            Some(bits) => (job.version & !self.version_mask) | bits,
            None => job.version,
        };
        let header = build_header(job, &self.extranonce1, &extranonce2, job.ntime, 0, version);
        let tag = self.next_tag;
        self.next_tag += 1;
        self.issued.insert(
            tag,
            Issued {
                job_id: job.id.clone(),
                extranonce2,
                ntime: job.ntime,
                version_bits,
                difficulty: self.job_difficulty,
            },
        );
        // Keep the bookkeeping for recent work only.
        self.issued.retain(|t, _| *t + 64 > tag);
        self.current_tag = tag;
        miners.set_work(Some(Work {
            header,
            target: self.job_difficulty.target().to_little_endian(),
            tag,
        }));
    }
}

fn io(e: impl ToString) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// How long a connection to the pool may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one line to the pool may wait to be sent. A pool that stops
/// reading (hung, or hostile) wedged the session for good: the keeper
/// waited on it forever, and `lode mine` did not stop at Ctrl-C.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the pool may say nothing before the connection is taken for
/// dead and made again. Pools send a job every 30 to 60 s (lode's own
/// every 30); with no keepalive, a connection lost to a network change
/// went unnoticed and the threads mined a dead job indefinitely.
const POOL_SILENCE: Duration = Duration::from_secs(300);

/// Shares sent and not yet answered, at most. Past it, finds are dropped:
/// a pool that never answers (or asks for a tiny difficulty, thousands of
/// finds a second) grew the map without bound.
const MAX_PENDING: usize = 1024;

/// How long a session must have held for the reconnect backoff to start
/// over: a pool that takes the login and then closes at once was asked
/// again every 250 ms, for good.
const HELD: Duration = Duration::from_secs(60);

/// Send one line within [`SEND_TIMEOUT`].
async fn send(lines: &mut Framed<TcpStream, LinesCodec>, line: String) -> std::io::Result<()> {
    match tokio::time::timeout(SEND_TIMEOUT, lines.send(line)).await {
        Err(_) => Err(io("the pool took no line for 30 s")),
        Ok(sent) => sent.map_err(io),
    }
}

/// The threads' finds, read by one pool session at a time. Held by the
/// session's task for as long as it runs, and free again once it ends,
/// however it ends: a session that panicked took the channel with it, and
/// the mount never mined again.
pub type Finds = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Found>>>;

/// Mine for `worker` at the pool `addr` until `stop` turns true.
pub async fn run(
    addr: String,
    worker: String,
    miners: Arc<Miners>,
    finds: Finds,
    stats: Arc<MinerStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut found = finds.lock_owned().await;
    let mut backoff = Duration::from_millis(250);
    while !*stop.borrow() {
        let began = tokio::time::Instant::now();
        let result = session(&addr, &worker, &miners, &mut found, &stats, &mut stop).await;
        // A session that got as far as mining, and held, starts the
        // backoff over: it doubled across every session, so after eight
        // ended connections of a long run each reconnect waited a minute.
        if stats.connected.swap(false, Ordering::Relaxed) && began.elapsed() >= HELD {
            backoff = Duration::from_millis(250);
        }
        miners.set_work(None);
        if *stop.borrow() {
            break;
        }
        if let Err(e) = result {
            tracing::warn!(pool = %addr, error = %e, "pool connection lost; reconnecting in {backoff:?}");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

async fn session(
    addr: &str,
    worker: &str,
    miners: &Miners,
    found: &mut mpsc::UnboundedReceiver<Found>,
    stats: &MinerStats,
    stop: &mut watch::Receiver<bool>,
) -> std::io::Result<()> {
    let stream = tokio::select! {
        s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)) => {
            s.map_err(|_| io("no connection in 10 s"))??
        }
        _ = stop.changed() => return Ok(()),
    };
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_SERVER_LINE));
    let agent = concat!("lode/", env!("CARGO_PKG_VERSION"));
    for line in stratum::opening(VERSION_ROLLING_MASK, agent, worker, "x") {
        send(&mut lines, line).await?;
    }
    let mut heard = tokio::time::Instant::now();
    let mut state = State {
        extranonce1: Vec::new(),
        extranonce2_size: 4,
        next_difficulty: Difficulty::ONE,
        job_difficulty: Difficulty::ONE,
        version_mask: 0,
        job: None,
        rolls: rand::random::<u32>() as u64,
        // Not from 1 each session: a find from a past session's work, late
        // on the channel, must not match a tag of this one's.
        next_tag: rand::random::<u64>() >> 1,
        issued: HashMap::new(),
        current_tag: 0,
    };
    let mut next_id = stratum::FIRST_FREE_ID;
    let mut pending: HashMap<u64, Difficulty> = HashMap::new();
    let mut subscribed = false;
    let mut rolling = false;
    // After a stop, answers to shares already sent are still awaited (for
    // a few seconds), so the counts match what the pool credited.
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        if let Some(until) = draining {
            // Finds made before the stop and still on the channel are
            // sent too: the pool credits them.
            while pending.is_empty()
                && let Ok(f) = found.try_recv()
            {
                if let Found::Share { tag, nonce, .. } = f {
                    submit(
                        &mut lines,
                        &state,
                        worker,
                        &mut pending,
                        &mut next_id,
                        tag,
                        nonce,
                    )
                    .await?;
                }
            }
            if pending.is_empty() || tokio::time::Instant::now() >= until {
                return Ok(());
            }
        }
        tokio::select! {
            _ = stop.changed(), if draining.is_none() => {
                miners.set_work(None);
                draining = Some(tokio::time::Instant::now() + Duration::from_secs(3));
            }
            _ = tokio::time::sleep(Duration::from_millis(200)), if draining.is_some() => {}
            _ = tokio::time::sleep_until(heard + POOL_SILENCE) => {
                return Err(io("the pool has been silent for 5 minutes"));
            }
            line = lines.next() => {
                let line = line.ok_or_else(|| io("pool closed the connection"))?.map_err(io)?;
                heard = tokio::time::Instant::now();
                match stratum::parse_server(&line).map_err(io)? {
                    ServerMessage::Response { id: Some(opening_id::CONFIGURE), result, error } => {
                        state.version_mask =
                            stratum::granted_version_mask(&result, error.as_ref(), VERSION_ROLLING_MASK);
                        rolling = state.version_mask != 0;
                    }
                    ServerMessage::Response { id: Some(opening_id::SUBSCRIBE), result, error } => {
                        if let Some(e) = error {
                            return Err(io(format!("subscribe refused: {e:?}")));
                        }
                        let en1 = result.get(1).and_then(Value::as_str).ok_or_else(|| io("bad subscribe reply"))?;
                        state.extranonce1 = stratum::hex_bytes(en1, "extranonce1").map_err(io)?;
                        let size = result.get(2).and_then(Value::as_u64).unwrap_or(4) as usize;
                        if !(1..=16).contains(&size) {
                            return Err(io(format!("pool asks for a {size}-byte extranonce2")));
                        }
                        state.extranonce2_size = size;
                        subscribed = true;
                        state.publish(miners);
                    }
                    ServerMessage::Response { id: Some(opening_id::AUTHORIZE), result, error } => {
                        if error.is_some() || result != Value::Bool(true) {
                            return Err(io(format!("pool refused worker {worker}: {error:?}")));
                        }
                        stats.connected.store(true, Ordering::Relaxed);
                    }
                    ServerMessage::Response { id: Some(id), result, error } => {
                        if let Some(d) = pending.remove(&id) {
                            if error.is_none() && result == Value::Bool(true) {
                                stats.accepted.fetch_add(1, Ordering::Relaxed);
                                stats.accepted_micro.fetch_add(d.micro(), Ordering::Relaxed);
                            } else {
                                stats.rejected.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(?error, "share rejected");
                            }
                        }
                    }
                    ServerMessage::Notify(job) => {
                        state.notified(job);
                        if subscribed && draining.is_none() {
                            state.publish(miners);
                        }
                    }
                    // For the next job; the one being mined keeps its own.
                    ServerMessage::SetDifficulty(d) => {
                        if let Some(d) = Difficulty::from_f64(d) {
                            state.next_difficulty = d;
                        }
                    }
                    // The pool's mask moved; only if it agreed to rolling.
                    // Work issued before either change makes shares the
                    // pool refuses: it is forgotten, and what the threads
                    // find on it is dropped.
                    ServerMessage::SetVersionMask(mask) if rolling => {
                        state.version_mask = mask & VERSION_ROLLING_MASK;
                        state.issued.clear();
                        if subscribed && draining.is_none() {
                            state.publish(miners);
                        }
                    }
                    ServerMessage::SetExtranonce { extranonce1, extranonce2_size } => {
                        if !(1..=16).contains(&extranonce2_size) {
                            return Err(io(format!("pool asks for a {extranonce2_size}-byte extranonce2")));
                        }
                        state.extranonce1 = extranonce1;
                        state.extranonce2_size = extranonce2_size;
                        state.issued.clear();
                        if subscribed && draining.is_none() {
                            state.publish(miners);
                        }
                    }
                    _ => {}
                }
            }
            f = found.recv() => {
                match f.ok_or_else(|| io("mining threads stopped"))? {
                    // A find made before the stop, still on the channel,
                    // is sent while the answers are awaited: the pool
                    // credits it (it was dropped, and with it credit the
                    // account had earned).
                    Found::Share { .. } if pending.len() >= MAX_PENDING => {
                        tracing::debug!("{MAX_PENDING} shares unanswered; a find dropped");
                    }
                    Found::Share { tag, nonce, .. } => {
                        submit(&mut lines, &state, worker, &mut pending, &mut next_id, tag, nonce).await?;
                    }
                    Found::Exhausted { tag } if tag == state.current_tag && draining.is_none() => state.publish(miners),
                    Found::Exhausted { .. } => {}
                }
            }
        }
    }
}

/// Send a find on work `tag` of this session (one of another, or on
/// work forgotten since, is dropped: the pool would refuse it), and await
/// its answer as request `next_id`.
async fn submit(
    lines: &mut Framed<TcpStream, LinesCodec>,
    state: &State,
    worker: &str,
    pending: &mut HashMap<u64, Difficulty>,
    next_id: &mut u64,
    tag: u64,
    nonce: u32,
) -> std::io::Result<()> {
    let Some(issued) = state.issued.get(&tag).cloned() else {
        return Ok(());
    };
    let submit = Submit {
        worker: worker.to_string(),
        job_id: issued.job_id,
        extranonce2: issued.extranonce2,
        ntime: issued.ntime,
        nonce,
        version_bits: issued.version_bits,
    };
    pending.insert(*next_id, issued.difficulty);
    let line = stratum::request(*next_id, "mining.submit", stratum::submit_params(&submit));
    *next_id += 1;
    send(lines, line).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> Job {
        Job {
            id: id.into(),
            prevhash: [0; 32],
            coinb1: vec![1; 8],
            coinb2: vec![2; 8],
            branch: Vec::new(),
            version: 0x2000_0000,
            nbits: 0x1d00_ffff,
            ntime: 1_700_000_000,
            clean: true,
        }
    }

    /// Mining threads (one, at normal priority) whose finds go nowhere.
    fn one_thread() -> Miners {
        let (tx, _rx) = std::sync::mpsc::channel();
        let config = crate::miner::MinerConfig {
            threads: 1,
            duty: 1.0,
            idle_priority: false,
        };
        Miners::start(config, tx).unwrap()
    }

    /// A difficulty the pool announces holds from its next job on: the
    /// job being mined keeps the one it was sent at, as the pool credits
    /// it (the client published the running job again at the new one).
    #[test]
    fn a_new_difficulty_waits_for_the_next_job() {
        let miners = one_thread();
        let mut state = State {
            extranonce1: vec![0; 4],
            extranonce2_size: 4,
            next_difficulty: Difficulty::ONE,
            job_difficulty: Difficulty::ONE,
            version_mask: 0,
            job: None,
            rolls: 0,
            next_tag: 1,
            issued: HashMap::new(),
            current_tag: 0,
        };
        let (high, low) = (
            Difficulty::from_f64(2.0).unwrap(),
            Difficulty::from_f64(0.5).unwrap(),
        );
        let published = |state: &State| {
            let issued = &state.issued[&state.current_tag];
            (issued.job_id.clone(), issued.difficulty)
        };
        state.next_difficulty = high;
        state.notified(job("j1"));
        state.publish(&miners);
        assert_eq!(published(&state), ("j1".to_string(), high));
        // Lowered: j1, mined on (a fresh extranonce2), keeps its own.
        state.next_difficulty = low;
        state.publish(&miners);
        assert_eq!(published(&state), ("j1".to_string(), high));
        state.notified(job("j2"));
        state.publish(&miners);
        assert_eq!(published(&state), ("j2".to_string(), low));
        miners.stop();
    }

    /// A share found before the session is stopped, and still on the
    /// channel when the stop comes, is sent to the pool while the answers
    /// to those sent before are awaited, not dropped. (The pool holds its
    /// answer to the first find until the second comes, so the session is
    /// still draining then, for up to 3 s.)
    #[tokio::test]
    async fn a_find_made_before_a_stop_is_still_sent() {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (heard_tx, heard) = std::sync::mpsc::channel();
        let pool = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut out = conn.try_clone().unwrap();
            let mut send = |v: serde_json::Value| out.write_all(format!("{v}\n").as_bytes());
            let mut held = None;
            for line in std::io::BufReader::new(conn).lines() {
                let Ok(line) = line else { return };
                let msg: serde_json::Value = serde_json::from_str(&line).unwrap();
                let id = msg["id"].clone();
                let answer =
                    |result| serde_json::json!({"id": id, "result": result, "error": null});
                let sent = match msg["method"].as_str().unwrap_or_default() {
                    "mining.subscribe" => send(answer(serde_json::json!([[], "aabbccdd", 4])))
                        // No thread finds a share at this difficulty.
                        .and_then(|_| send(serde_json::json!({"id": null, "method": "mining.set_difficulty", "params": [1e12]})))
                        .and_then(|_| send(serde_json::json!({"id": null, "method": "mining.notify", "params": [
                            "a", "00".repeat(32), "01000000", "ffffffff", [], "20000000", "1d00ffff", "5f5e1000", true
                        ]}))),
                    "mining.authorize" => send(answer(serde_json::json!(true))),
                    // The first find's answer is held until the second
                    // comes, so the session drains while it does.
                    "mining.submit" => {
                        let nonce = msg["params"][4].as_str().unwrap_or_default().to_string();
                        let _ = heard_tx.send(nonce);
                        match held.take() {
                            None => {
                                held = Some(id.clone());
                                Ok(())
                            }
                            Some(first) => send(serde_json::json!({"id": first, "result": true, "error": null}))
                                .and_then(|_| send(answer(serde_json::json!(true)))),
                        }
                    }
                    _ => Ok(()),
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        let miners = Arc::new(one_thread());
        let (found_tx, mut found) = mpsc::unbounded_channel();
        let stats = Arc::new(MinerStats::default());
        let (stop_tx, mut stop) = watch::channel(false);
        let task = tokio::spawn({
            let (miners, stats) = (miners.clone(), stats.clone());
            async move { session(&addr, "w", &miners, &mut found, &stats, &mut stop).await }
        });
        let began = std::time::Instant::now();
        let until = async |what: &str, mut done: Box<dyn FnMut() -> bool + '_>| {
            while !done() {
                assert!(began.elapsed() < Duration::from_secs(20), "{what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let mut tag = None;
        until(
            "no work was published",
            Box::new(|| {
                tag = miners.work_tag();
                tag.is_some()
            }),
        )
        .await;
        let tag = tag.unwrap();
        let share = |nonce| Found::Share {
            tag,
            nonce,
            hash: [0; 32],
        };
        let mut nonces = Vec::new();
        found_tx.send(share(1)).unwrap();
        until(
            "the first find was not sent",
            Box::new(|| {
                nonces.extend(heard.try_iter());
                !nonces.is_empty()
            }),
        )
        .await;
        // Stopped while the first find's answer is awaited: the threads
        // are paused, and then the second find comes in.
        stop_tx.send(true).unwrap();
        until(
            "the stop did not pause the threads",
            Box::new(|| miners.work_tag().is_none()),
        )
        .await;
        found_tx.send(share(2)).unwrap();
        task.await.unwrap().unwrap();
        nonces.extend(heard.try_iter());
        assert_eq!(
            nonces,
            ["00000001", "00000002"],
            "the second find was dropped"
        );
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 2);
        drop(found_tx);
        pool.join().unwrap();
        Arc::into_inner(miners).unwrap().stop();
    }

    /// A pool that takes the connection and then says nothing is left
    /// after `POOL_SILENCE`, rather than held for good. (Virtual time.)
    #[tokio::test(start_paused = true)]
    async fn a_silent_pool_is_left() {
        let miners = one_thread();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let pool = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(conn);
        });
        let (_found_tx, mut found) = mpsc::unbounded_channel();
        let stats = MinerStats::default();
        let (_stop_tx, mut stop) = watch::channel(false);
        let began = tokio::time::Instant::now();
        let ended = session(&addr, "w", &miners, &mut found, &stats, &mut stop).await;
        let err = ended.expect_err("a silent pool ends the session");
        assert!(err.to_string().contains("silent"), "{err}");
        assert!(began.elapsed() >= POOL_SILENCE && began.elapsed() < POOL_SILENCE * 2);
        pool.abort();
        miners.stop();
    }
}
