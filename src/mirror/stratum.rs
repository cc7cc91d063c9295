//! The mirror's Stratum v1 endpoint: the socket loop around `pool`.
//!
//! One task per connection. Every share goes through `pool::Session`'s full
//! validation; an accepted share is credited in the ledger in one
//! transaction before the miner is told "accepted", so a crash can lose an
//! acknowledgement but never credit that was acknowledged. The ledger keeps
//! each share's header hash unique, so no share is ever credited twice,
//! across connections and restarts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{RwLock, broadcast, mpsc};
use tokio_util::codec::{Framed, LinesCodec};

use super::clock::LedgerClock;
use super::upstream::{self, Forward, UpstreamConfig};
use super::{Ledger, Result, unix_now};
use crate::pool::stratum::{self, MAX_LINE, code};
use crate::pool::{
    BuiltinJobs, Difficulty, EXTRANONCE2_SIZE, Job, JobBook, Outcome, Session, SessionConfig,
    VERSION_ROLLING_MASK,
};

/// Accepted shares not handed to the upstream forwarder because its queue
/// was full, over the process's life (logged at each power of two).
static FORWARDS_DROPPED: AtomicU64 = AtomicU64::new(0);

/// How a mirror's pool runs.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub initial: Difficulty,
    pub min: Difficulty,
    pub max: Difficulty,
    /// Seconds per share that vardiff steers each connection toward.
    pub share_interval: f64,
    /// Built-in mode: seconds between new jobs.
    pub job_interval: Duration,
    /// Committed to in built-in jobs' coinbase.
    pub mirror_id: [u8; 32],
    /// Proxy mode: relay this pool's jobs instead of making our own.
    pub upstream: Option<UpstreamConfig>,
    /// Connections open at once; past it the pool stops accepting until
    /// one closes (a connection costs a task, a job stream and buffers,
    /// and anyone may open one).
    pub max_connections: usize,
}

/// Jobs shared by every connection.
pub(super) struct Jobs {
    pub book: RwLock<JobBook>,
    pub tx: broadcast::Sender<Published>,
    /// Extranonce1 prefix every session's extranonce1 starts with, and the
    /// extranonce2 size sessions get (set by the upstream in proxy mode).
    pub extranonce: RwLock<(Vec<u8>, usize)>,
    /// Bumped when the upstream reconnects; sessions of an older
    /// generation close so their miners reconnect with fresh extranonces.
    pub generation: AtomicU64,
    /// The version bits sessions may let miners roll: all lode knows in
    /// built-in mode; in proxy mode what the upstream granted, none until
    /// it has answered.
    pub version_mask: AtomicU32,
    /// In proxy mode, the upstream's difficulty in millionths (0 until it
    /// sets one): no session's difficulty goes above it
    /// (`Session::cap_difficulty`).
    pub upstream_difficulty: AtomicU64,
    /// A session's miner sends shares far faster than vardiff aims for:
    /// the built-in source makes new work early, so that its difficulty
    /// rises within seconds, not at the next `job_interval` (the shares
    /// until then each cost a ledger commit).
    pub hurry: tokio::sync::Notify,
}

impl Jobs {
    /// The cap on sessions' difficulty, if the upstream set one.
    fn difficulty_cap(&self) -> Option<Difficulty> {
        match self.upstream_difficulty.load(Ordering::Relaxed) {
            0 => None,
            micro => Some(Difficulty::from_micro(micro)),
        }
    }

    pub async fn publish(&self, job: Job) {
        let job = self.book.write().await.push(job);
        let _ = self.tx.send(Published {
            job,
            at_ms: now_ms(),
            cap: self.difficulty_cap(),
        });
    }
}

/// A job as the pool published it, when, and the proxy's cap on
/// difficulty then: a session prices it as of then, not as of when it got
/// to the job, which a miner that stops reading can put off (and so
/// choose, after hashing the job on another connection, whether its
/// vardiff window has run long enough to lower the difficulty, or wait
/// for the upstream's difficulty to move the cap).
#[derive(Clone)]
pub(super) struct Published {
    job: Arc<Job>,
    at_ms: i64,
    cap: Option<Difficulty>,
}

/// The session parts of extranonce1 that live connections hold, so that no
/// two share one. Two that did would build the same coinbases: their miners
/// would scan the same headers, and one's shares would be refused as the
/// other's duplicates. In proxy mode a part is two bytes, so a plain counter
/// came round to a live connection's part after 65,536 others.
///
/// Parts are drawn at random: a miner that could tell the part its next
/// connection gets could hash the running job for that connection before
/// opening it, then ask for the difficulty that suits the hashes it found
/// (`mining.suggest_difficulty`) and subscribe, to have the job priced at
/// it (found by a review; parts were counted up from a random start).
pub(super) struct SessionParts {
    state: std::sync::Mutex<PartsState>,
    /// Whether a part's prices outlive its connection (two-byte parts,
    /// behind a proxy: see [`SessionParts::hand_on`]).
    keep_prices: bool,
}

#[derive(Default)]
struct PartsState {
    /// The parts held.
    held: std::collections::HashSet<u32>,
    /// The prices the last connection with each part set, for works then
    /// in the book, and the extranonce prefix it had (the upstream's
    /// extranonce1: another gives other headers, the same the same ones,
    /// whether or not the link was made again meanwhile).
    prices: std::collections::HashMap<u32, (Vec<u8>, Prices)>,
}

/// Works and the difficulty each went out at on one connection.
type Prices = Vec<([u8; 32], Difficulty)>;

/// One connection's part, given back when dropped, and the prices the
/// last connection with it set.
pub(super) struct SessionPart {
    parts: Arc<SessionParts>,
    value: u32,
    inherited: Prices,
}

impl SessionParts {
    /// Parts whose prices are handed on to the next connection that gets
    /// the part if `keep_prices`.
    pub fn new(keep_prices: bool) -> SessionParts {
        SessionParts {
            state: Default::default(),
            keep_prices,
        }
    }

    /// Keep `prices`, set by the connection holding `part`, for the next
    /// connection that gets it. A freed part is handed out again, and its
    /// headers are the same, so a work priced on one connection must keep
    /// that price on the next: else a miner that hashed the running work
    /// for every part could cycle connections and choose each part's price
    /// after seeing its hashes (found by a review). Only two-byte parts
    /// (behind a proxy) need it: four-byte ones, drawn at random, are as
    /// good as never handed out again while a work is current.
    pub fn hand_on(&self, part: &SessionPart, prefix: &[u8], prices: Prices) {
        if !self.keep_prices {
            return;
        }
        let mut state = self.state.lock().expect("session parts lock");
        if prices.is_empty() {
            state.prices.remove(&part.value);
        } else {
            state.prices.insert(part.value, (prefix.to_vec(), prices));
        }
    }

    /// A random part of `bytes` (at most 4) that no live connection holds,
    /// or `None` if three quarters of them are held: past that, a miner
    /// holding the rest could tell the few left, and so its next part. It
    /// brings the prices handed on with it under the extranonce `prefix`.
    pub fn take(self: &Arc<Self>, bytes: usize, prefix: &[u8]) -> Option<SessionPart> {
        let space = 1u64 << (8 * bytes.min(4));
        let mut state = self.state.lock().expect("session parts lock");
        let held = &mut state.held;
        if held.len() as u64 >= space - space / 4 {
            return None;
        }
        // A few random tries; nearly full, the next free part after a
        // random one.
        let start = rand::random::<u64>() % space;
        let value = (0..16)
            .map(|_| rand::random::<u64>() % space)
            .find(|v| !held.contains(&(*v as u32)))
            .or_else(|| {
                (0..space)
                    .map(|i| (start + i) % space)
                    .find(|v| !held.contains(&(*v as u32)))
            })
            .expect("fewer held than there are parts") as u32;
        held.insert(value);
        let inherited = match state.prices.get(&value) {
            Some((p, prices)) if p[..] == prefix[..] => prices.clone(),
            _ => Vec::new(),
        };
        Some(SessionPart {
            parts: self.clone(),
            value,
            inherited,
        })
    }
}

impl SessionPart {
    pub fn value(&self) -> u32 {
        self.value
    }

    /// The prices the last connection with this part set.
    pub fn inherited(&self) -> &[([u8; 32], Difficulty)] {
        &self.inherited
    }
}

impl Drop for SessionPart {
    fn drop(&mut self) {
        let mut state = self.parts.state.lock().expect("session parts lock");
        state.held.remove(&self.value);
    }
}

/// How long the pool waits after a failed accept before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Run the pool on `listener` until the task is aborted.
/// Shares are credited at `clock`'s time (`clock.rs`).
pub(super) async fn run_pool(
    listener: TcpListener,
    config: PoolConfig,
    ledger: Ledger,
    clock: LedgerClock,
) -> Result<()> {
    let (tx, _) = broadcast::channel(16);
    let jobs = Arc::new(Jobs {
        book: RwLock::new(JobBook::default()),
        tx,
        extranonce: RwLock::new((Vec::new(), EXTRANONCE2_SIZE)),
        generation: AtomicU64::new(0),
        version_mask: AtomicU32::new(match config.upstream {
            Some(_) => 0,
            None => VERSION_ROLLING_MASK,
        }),
        upstream_difficulty: AtomicU64::new(0),
        hurry: tokio::sync::Notify::new(),
    });
    let forward = match &config.upstream {
        Some(up) => Some(upstream::start(up.clone(), jobs.clone(), ledger.clone())),
        None => {
            tokio::spawn(builtin_source(
                jobs.clone(),
                config.mirror_id,
                config.job_interval,
            ));
            None
        }
    };
    let counter = Arc::new(SessionParts::new(config.upstream.is_some()));
    let config = Arc::new(config);
    let places = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    // One peer address holds at most its share of the places, as on the
    // HTTP side (`listen.rs`): without it, one host that opened every
    // connection the pool allows and sent nothing locked every miner out,
    // and on a priced mirror no account could earn the credit its leases
    // need (found by a helper's hostile-client sweep).
    let peers = super::listen::PeerPlaces::new(config.max_connections.max(1));
    let mut said_peer = None;
    // When the bound was last said to be met: once a minute at most.
    let mut said_full: Option<tokio::time::Instant> = None;
    loop {
        let place = match places.clone().try_acquire_owned() {
            Ok(place) => place,
            Err(_) => {
                if said_full.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    said_full = Some(tokio::time::Instant::now());
                    tracing::warn!(
                        "every Stratum connection the pool allows is open; new ones wait until one closes"
                    );
                }
                places
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors (EMFILE, ENFILE: many connections at
            // once), or a connection gone before it was taken. The pool
            // outlives it: this returned the error, ending the pool for
            // good and with no word, while the mirror went on serving and
            // advertising its Stratum port (found by a helper's sweep).
            Err(e) => {
                tracing::warn!(error = %e, "stratum accept failed; trying again shortly");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        // Past its share: closed now, the place kept for another.
        let Some(peer_place) = peers.take(peer.ip()) else {
            if super::listen::said_long_ago(&mut said_peer) {
                let most = peers.most();
                tracing::warn!(ip = %peer.ip(), most, "a peer has every Stratum connection it may; closing its new ones");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (jobs, ledger, clock, config, counter, forward) = (
            jobs.clone(),
            ledger.clone(),
            clock.clone(),
            config.clone(),
            counter.clone(),
            forward.clone(),
        );
        tokio::spawn(async move {
            let _place = (place, peer_place);
            let credit = Credit { ledger, clock };
            if let Err(e) = connection(stream, jobs, credit, config, counter, forward).await {
                tracing::debug!(%peer, error = %e, "stratum connection ended");
            }
        });
    }
}

async fn builtin_source(jobs: Arc<Jobs>, mirror_id: [u8; 32], interval: Duration) {
    let mut source = BuiltinJobs::new(mirror_id, rand::random());
    let mut block_since: Option<tokio::time::Instant> = None;
    loop {
        // A new synthetic block every ten intervals (a clean job: shares
        // of earlier ones are stale); new work in between.
        let now = tokio::time::Instant::now();
        let new_block = block_since.is_none_or(|t| {
            now.checked_duration_since(t)
                .is_some_and(|d| d >= interval.saturating_mul(BLOCK_JOBS))
        });
        if new_block {
            block_since = Some(now);
        }
        jobs.publish(source.next(unix_now() as u32, new_block))
            .await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = jobs.hurry.notified() => {
                tokio::time::sleep_until(now + interval.min(HURRIED_JOB_GAP)).await;
                // Asked for meanwhile (more shares of the same burst): the
                // job about to go out answers those too.
                let _ = jobs.hurry.notified().now_or_never();
            }
        }
    }
}

/// Built-in jobs per synthetic block, at `job_interval`.
const BLOCK_JOBS: u32 = 10;
/// The least time between two built-in jobs when a session hurries them
/// ([`Jobs::hurry`]): the book keeps eight jobs, so a miner's share is
/// stale only if its job is 32 s old or more, about as with jobs every
/// 30 s and none hurried.
const HURRIED_JOB_GAP: Duration = Duration::from_secs(4);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Connections are closed after this long without a line from the miner
/// (jobs going out do not count).
const IDLE: Duration = Duration::from_secs(600);
/// How long a connection may take, from its start, to be authorized: a
/// miner subscribes and authorizes as soon as it connects.
const HELLO: Duration = Duration::from_secs(60);

/// How long a line to the miner may take to go out. A peer that sends
/// requests and reads none of the answers would otherwise hold its
/// connection's task in a send for good, past every deadline.
const SEND_WITHIN: Duration = Duration::from_secs(30);

/// Send `line` to the miner, within [`SEND_WITHIN`].
async fn send_line(lines: &mut Framed<TcpStream, LinesCodec>, line: String) -> std::io::Result<()> {
    match tokio::time::timeout(SEND_WITHIN, lines.send(line)).await {
        Ok(sent) => sent.map_err(std::io::Error::other),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the miner reads nothing of what is sent",
        )),
    }
}

/// Answer a line that is not a request, with no id to answer to, and end
/// the connection: the error says why it closed.
async fn refuse(lines: &mut Framed<TcpStream, LinesCodec>, why: &str) -> std::io::Result<()> {
    let reply = stratum::err(&serde_json::Value::Null, code::OTHER, why);
    send_line(lines, reply).await?;
    Err(std::io::Error::other(why.to_string()))
}

/// Where a connection's accepted shares are credited.
struct Credit {
    ledger: Ledger,
    clock: LedgerClock,
}

async fn connection(
    stream: TcpStream,
    jobs: Arc<Jobs>,
    credit: Credit,
    config: Arc<PoolConfig>,
    counter: Arc<SessionParts>,
    forward: Option<mpsc::Sender<Forward>>,
) -> std::io::Result<()> {
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
    let mut job_rx = jobs.tx.subscribe();
    if config.upstream.is_some() {
        // Wait for the upstream's extranonce before serving.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while jobs.book.read().await.current().is_none() {
            if tokio::time::Instant::now() > deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let generation = jobs.generation.load(Ordering::Relaxed);
    let (prefix, en2_size) = jobs.extranonce.read().await.clone();
    let mut extranonce1 = prefix.clone();
    // In proxy mode the session's part is what the upstream extranonce2
    // leaves over; see upstream.rs.
    let own_len = if config.upstream.is_some() {
        upstream::SESSION_BYTES
    } else {
        4
    };
    let Some(own) = counter.take(own_len, &prefix) else {
        return refuse(
            &mut lines,
            "the pool has no extranonce left for another connection",
        )
        .await;
    };
    extranonce1.extend_from_slice(&own.value().to_be_bytes()[4 - own_len..]);
    let mut session = Session::new(
        SessionConfig {
            extranonce1,
            extranonce2_size: en2_size,
            initial: config.initial,
            min: config.min,
            max: config.max,
            target_interval: config.share_interval,
            version_mask: jobs.version_mask.load(Ordering::Relaxed),
        },
        now_ms(),
    );
    session.inherit(own.inherited());
    session.cap_difficulty(jobs.difficulty_cap());
    let served = serve(
        &mut session,
        &mut lines,
        &mut job_rx,
        &jobs,
        &credit,
        generation,
        &forward,
    )
    .await;
    // Before the part is given back (when `own` drops).
    counter.hand_on(&own, &prefix, session.works_in(&*jobs.book.read().await));
    served
}

/// Answer one connection's miner until it leaves or fails.
async fn serve(
    session: &mut Session,
    lines: &mut Framed<TcpStream, LinesCodec>,
    job_rx: &mut broadcast::Receiver<Published>,
    jobs: &Jobs,
    credit: &Credit,
    generation: u64,
    forward: &Option<mpsc::Sender<Forward>>,
) -> std::io::Result<()> {
    // Moved only by the miner's lines. A timeout made afresh at each turn
    // of the loop started over at every job sent, so a connection that
    // never said a word was never closed. Until the miner is authorized
    // the deadline is counted from the connection's start, whatever it
    // sends.
    let opened = tokio::time::Instant::now();
    let mut heard = opened;
    loop {
        let until = match session.account() {
            Some(_) => heard + IDLE,
            None => opened + HELLO,
        };
        tokio::select! {
            // Jobs first: a job published before a miner's line is priced
            // before the line is read. Otherwise a miner that held its
            // connection's task back (by not reading) could learn the job
            // on another connection, hash it for this one, and then send
            // `mining.suggest_difficulty` to set its price.
            biased;
            job = job_rx.recv() => {
                match job {
                    Ok(Published { job, at_ms, cap }) => {
                        if jobs.generation.load(Ordering::Relaxed) != generation {
                            return Ok(()); // the upstream reconnected: extranonces changed
                        }
                        let book = jobs.book.read().await.clone();
                        session.cap_difficulty(cap);
                        for l in session.on_job(&job, &book, at_ms) {
                            send_line(lines, l).await?;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
            () = tokio::time::sleep_until(until) => return Ok(()), // idle
            line = lines.next() => {
                let line = match line {
                    None => return Ok(()),
                    // Too long or not UTF-8: the stream cannot be trusted
                    // to resume at a line, so say why and close.
                    Some(Err(e)) => return refuse(lines, &e.to_string()).await,
                    Some(Ok(l)) => l,
                };
                if line.trim().is_empty() {
                    continue;
                }
                heard = tokio::time::Instant::now();
                let call = match stratum::parse_request(&line) {
                    Ok(call) => call,
                    // Not JSON-RPC at all (another protocol on the port, a
                    // broken client): say so, then close.
                    Err(e @ crate::pool::Error::Json(_)) => return refuse(lines, &e.to_string()).await,
                    Err(e) => {
                        let id = serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v.get("id").cloned()).unwrap_or_default();
                        send_line(lines, stratum::err(&id, code::OTHER, &e.to_string())).await?;
                        continue;
                    }
                };
                let book = jobs.book.read().await.clone();
                match session.handle(call, &book, now_ms()) {
                    Outcome::Reply(out) => {
                        for l in out {
                            send_line(lines, l).await?;
                        }
                    }
                    Outcome::Accepted(a) => {
                        let (account, worker, micro, hash) = (a.account, a.worker.clone(), a.difficulty.micro(), a.hash);
                        // Answered once the credit is committed (see
                        // Ledger::credit_share).
                        let credited = tokio::task::block_in_place(|| {
                            credit.clock.stamp(|now| {
                                credit.ledger.credit_share(&account, &worker, micro, &hash, now)
                            })
                        })
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                        if credited {
                            if session.wants_new_work(now_ms()) {
                                jobs.hurry.notify_one();
                            }
                            if let Some(fwd) = &forward
                                && let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) =
                                    fwd.try_send(Forward { accepted: a.clone() })
                            {
                                // The miner keeps its credit; the upstream
                                // pool misses a share, which its operator
                                // should hear of.
                                let n = FORWARDS_DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
                                if n.is_power_of_two() {
                                    tracing::warn!(dropped = n, "upstream queue full: shares not forwarded");
                                }
                            }
                            send_line(lines, stratum::ok(&a.id, serde_json::Value::Bool(true))).await?;
                        } else {
                            send_line(lines, stratum::err(&a.id, code::DUPLICATE, "duplicate share")).await?;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool on a loopback port, jobs every 10 s, with a fresh ledger.
    async fn a_pool(max_connections: usize) -> (std::net::SocketAddr, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let terms = crate::mirror::testing::free_terms(3600);
        let ledger = Ledger::open(&dir.path().join("ledger.sqlite"), terms).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = PoolConfig {
            initial: Difficulty::ONE,
            min: Difficulty::from_micro(1),
            max: Difficulty::ONE,
            share_interval: 10.0,
            job_interval: Duration::from_secs(10),
            mirror_id: [7; 32],
            upstream: None,
            max_connections,
        };
        tokio::spawn(run_pool(
            listener,
            config,
            ledger,
            LedgerClock::new(unix_now()),
        ));
        (addr, dir)
    }

    /// Read what `conn` gets until it is closed; `false` if it is still
    /// open after `within` (of the test's paused time).
    async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        let reading = async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(within, reading).await.is_ok()
    }

    /// A connection that never says a word is closed, though jobs go out
    /// to it every 10 s: the idle timer started over at each one, so one
    /// host could hold every place for good.
    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_while_jobs_go_out() {
        let (addr, _dir) = a_pool(16).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut silent, HELLO + Duration::from_secs(30)).await);
        // Lines that are not an authorization do not keep it either.
        let mut chatty = TcpStream::connect(addr).await.unwrap();
        let talk = async {
            use tokio::io::AsyncWriteExt;
            for _ in 0..10 {
                let hello = b"{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": []}\n";
                if chatty.write_all(hello).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(20)).await;
            }
        };
        tokio::time::timeout(HELLO + Duration::from_secs(30), talk)
            .await
            .ok();
        assert!(closed_within(&mut chatty, Duration::from_secs(1)).await);
    }

    /// An authorized miner that says nothing for `IDLE` is closed then,
    /// though a job goes out to it every 10 s (each one restarted the
    /// timer), and not before.
    #[tokio::test(start_paused = true)]
    async fn jobs_sent_do_not_keep_a_silent_miner() {
        use tokio::io::AsyncWriteExt;
        let (addr, _dir) = a_pool(16).await;
        let mut miner = TcpStream::connect(addr).await.unwrap();
        let worker = crate::protocol::hex(&[5; 32]);
        let hello = format!(
            "{{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": []}}\n\
             {{\"id\": 2, \"method\": \"mining.authorize\", \"params\": [\"{worker}\", \"x\"]}}\n"
        );
        miner.write_all(hello.as_bytes()).await.unwrap();
        assert!(
            !closed_within(&mut miner, IDLE - Duration::from_secs(30)).await,
            "closed before its idle time (the authorization deadline is for others)"
        );
        assert!(closed_within(&mut miner, Duration::from_secs(60)).await);
    }

    /// One address holds at most its share of the pool's places: past it
    /// a connection is closed at once, and the places left are others'.
    #[tokio::test]
    async fn one_address_cannot_take_every_place() {
        let (addr, _dir) = a_pool(8).await;
        let most = crate::mirror::listen::per_peer(8);
        assert!(most < 8);
        let mut held = Vec::new();
        for _ in 0..most {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut over = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut over, Duration::from_secs(10)).await,
            "a connection past the address's share was kept"
        );
        // Its place comes back once the pool has seen it close.
        drop(held.pop());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut again = TcpStream::connect(addr).await.unwrap();
            if !closed_within(&mut again, Duration::from_millis(500)).await {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no place once one of its own closed"
            );
        }
    }

    /// Two-byte parts (proxy mode): a counter that wrapped gave a live
    /// connection's part to the 65,537th; held parts are skipped, three
    /// quarters in use means no more, and a part given back is free again.
    #[test]
    fn no_two_live_connections_share_an_extranonce_part() {
        let parts = Arc::new(SessionParts::new(false));
        let bound = (1 << 16) - (1 << 14);
        let first = parts.take(2, &[]).unwrap();
        let mut held: Vec<SessionPart> = (1..bound).map(|_| parts.take(2, &[]).unwrap()).collect();
        let mut values: Vec<u32> = held.iter().map(SessionPart::value).collect();
        values.push(first.value());
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), bound, "all distinct");
        assert!(values.iter().all(|&v| v < 1 << 16));
        assert!(parts.take(2, &[]).is_none(), "three quarters held: no more");
        drop(held.swap_remove(1234));
        let again = parts.take(2, &[]).expect("one given back");
        assert!(!held.iter().any(|h| h.value() == again.value()));
        assert!(parts.take(2, &[]).is_none());
        drop(first);
        assert!(parts.take(2, &[]).is_some());
    }

    /// Behind a proxy a part's prices go to the next connection that gets
    /// the part; with four-byte parts nothing is kept.
    #[test]
    fn a_parts_prices_are_handed_on_behind_a_proxy() {
        let price = ([7; 32], Difficulty::from_micro(5));
        let parts = Arc::new(SessionParts::new(true));
        let part = parts.take(2, &[]).unwrap();
        assert!(part.inherited().is_empty());
        parts.hand_on(&part, &[], vec![price]);
        let value = part.value();
        drop(part);
        assert_eq!(
            parts.state.lock().unwrap().prices.get(&value),
            Some(&(Vec::new(), vec![price]))
        );
        // Whichever part comes next, it brings its own prices with it, if
        // they were set under the same extranonce prefix.
        let own_price = |v: u32| ([7; 32], Difficulty::from_micro(u64::from(v) + 1));
        for v in 0..1u32 << 16 {
            let prefix = vec![(v % 2) as u8];
            parts
                .state
                .lock()
                .unwrap()
                .prices
                .insert(v, (prefix, vec![own_price(v)]));
        }
        let mut kept = Vec::new();
        for _ in 0..16 {
            let part = parts.take(2, &[1]).unwrap();
            let v = part.value();
            match v % 2 {
                1 => assert_eq!(part.inherited(), &[own_price(v)]),
                _ => assert!(part.inherited().is_empty(), "another prefix's"),
            }
            kept.push(part);
        }
        // A connection that priced nothing leaves nothing to hand on.
        let part = parts.take(2, &[1]).unwrap();
        parts.hand_on(&part, &[1], Vec::new());
        assert!(
            !parts
                .state
                .lock()
                .unwrap()
                .prices
                .contains_key(&part.value())
        );

        let own = Arc::new(SessionParts::new(false));
        let part = own.take(4, &[]).unwrap();
        own.hand_on(&part, &[], vec![price]);
        assert!(own.state.lock().unwrap().prices.is_empty());
    }

    /// The part a connection gets is not the one after the last: a miner
    /// cannot tell its next connection's part ahead.
    #[test]
    fn the_next_part_cannot_be_told() {
        let parts = Arc::new(SessionParts::new(false));
        let taken: Vec<SessionPart> = (0..4).map(|_| parts.take(4, &[]).unwrap()).collect();
        let steps: Vec<u32> = taken
            .windows(2)
            .map(|w| w[1].value().wrapping_sub(w[0].value()))
            .collect();
        assert!(steps.iter().any(|&d| d != 1), "{steps:?}");
    }
}
