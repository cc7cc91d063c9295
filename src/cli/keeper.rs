//! Inside `lode mount`: the lease keeper, the background miner, and the
//! control socket `lode status` asks.
//!
//! Every 10 s the mount asks each mirror for its room (quota, capacity),
//! which `statfs` reports. Every minute the keeper asks each mirror for the
//! account's standing and mines (at idle priority) for the least-funded mirror whose
//! `funded_until` is short of the horizon; it renews the leases of
//! everything reachable from the root four times per shortest lease the
//! mirrors grant (once a day at most, once a minute at least), and within
//! ten minutes after a pass that failed.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use lode::caps::Cap;
use lode::miner::{Found, MinerConfig, MinerStats, Miners, client};
use lode::protocol::unix_now;
use lode::store::{HttpMirror, Room, Space, Vault};

/// How the mount mines.
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// `None`: never mine (`-o nominer`).
    pub miner: Option<MinerConfig>,
    pub horizon: Duration,
    pub account: lode::crypto::AccountKey,
    pub mirrors: Vec<String>,
}

/// What the keeper reports over the control socket.
#[derive(Default)]
pub struct KeeperState {
    pub mining_for: Option<String>,
    pub funded: Vec<(String, Option<i64>)>,
    pub last_renewal: Option<LastRenewal>,
}

/// The keeper's last pass over the tree's leases.
pub struct LastRenewal {
    /// What it renewed, and what not.
    pub summary: String,
    /// When it ended (Unix seconds).
    pub at: i64,
    /// Something was not renewed: a mirror failed, leases were refused,
    /// or part of the tree could not be read or is on no mirror.
    pub short: bool,
}

pub struct Keeper {
    pub stats: Arc<MinerStats>,
    pub miners: Option<Arc<Miners>>,
    pub state: Arc<Mutex<KeeperState>>,
    /// Turns true when the mount ends: mining stops.
    ending: watch::Sender<bool>,
}

impl Keeper {
    /// Start the keeper on `rt`. Mining threads exist only when mining is
    /// allowed; they sit paused until a mirror needs funding.
    pub fn start(
        config: KeeperConfig,
        vault: Arc<Vault>,
        rt: &tokio::runtime::Handle,
    ) -> std::io::Result<Keeper> {
        let stats = Arc::new(MinerStats::default());
        let state = Arc::new(Mutex::new(KeeperState::default()));
        let (ending, ended) = watch::channel(false);
        let miners = match &config.miner {
            Some(mc) => {
                let (tx, rx) = std::sync::mpsc::channel();
                let miners =
                    Arc::new(Miners::start(mc.clone(), tx).map_err(std::io::Error::other)?);
                let (found_tx, found_rx) = mpsc::unbounded_channel();
                std::thread::spawn(move || {
                    while let Ok(f) = rx.recv() {
                        if found_tx.send(f).is_err() {
                            break;
                        }
                    }
                });
                rt.spawn(mine_loop(
                    config.clone(),
                    miners.clone(),
                    found_rx,
                    stats.clone(),
                    state.clone(),
                    ended,
                ));
                Some(miners)
            }
            None => None,
        };
        rt.spawn(renew_loop(config.clone(), vault, state.clone()));
        Ok(Keeper {
            stats,
            miners,
            state,
            ending,
        })
    }

    /// The mount is ending: stop mining now, not once the process exits
    /// (the final uploads may take minutes). Shares already sent are
    /// still answered, for a few seconds.
    pub fn stop_mining(&self) {
        let _ = self.ending.send(true);
        if let Some(miners) = &self.miners {
            miners.set_work(None);
        }
    }

    /// The status line the control socket serves.
    pub fn status(&self, backlog: (usize, u64)) -> serde_json::Value {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "staged_files": backlog.0,
            "staged_bytes": backlog.1,
            "mining_for": state.mining_for,
            // Whether the pool took the miner's login: a mirror whose
            // Stratum port does not answer showed as mined for, at 0.
            "pool_connected": self.stats.connected.load(Ordering::Relaxed),
            "miner": self.miners.is_some(),
            "hashrate": self.miners.as_ref().map_or(0.0, |m| m.hashrate()),
            "accepted": self.stats.accepted.load(Ordering::Relaxed),
            "rejected": self.stats.rejected.load(Ordering::Relaxed),
            "funded_until": state.funded.iter().map(|(u, f)| json!({"url": u, "funded_until": f, "funded_indefinitely": f.is_none()})).collect::<Vec<_>>(),
            "last_renewal": state.last_renewal.as_ref().map(|r| format!("{} at {}", r.summary, r.at)),
            "last_renewal_at": state.last_renewal.as_ref().map(|r| r.at),
            "renewal_short": state.last_renewal.as_ref().map(|r| r.short),
        })
    }
}

/// The mirror to mine for: the least funded one short of the horizon,
/// passing over those in `shunned` (their pool did not take the miner)
/// while another needs mining. The mirrors are asked side by side: one
/// that does not answer costs its timeout once, not once per mirror.
async fn pick(
    config: &KeeperConfig,
    state: &Mutex<KeeperState>,
    shunned: &std::collections::HashMap<String, tokio::time::Instant>,
) -> Option<(String, String)> {
    let horizon = unix_now() + config.horizon.as_secs() as i64;
    let mut asks = tokio::task::JoinSet::new();
    for (at, url) in config.mirrors.iter().enumerate() {
        let (url, account) = (url.clone(), config.account.clone());
        asks.spawn(async move {
            let mirror = HttpMirror::new(&url, account).ok()?;
            let (info, status) = tokio::join!(mirror.info(), mirror.account());
            Some((at, url, info.ok()?, status.ok()?))
        });
    }
    let mut answers: Vec<_> = asks.join_all().await.into_iter().flatten().collect();
    answers.sort_by_key(|(at, ..)| *at);
    let mut funded = Vec::new();
    let mut standings = Vec::new();
    for (_, url, info, status) in answers {
        funded.push((url.clone(), status.funded_until));
        let pool = info.stratum_port.and_then(|port| {
            let url = reqwest::Url::parse(&url).ok()?;
            Some(format!("{}:{port}", url.host_str()?))
        });
        standings.push(Standing {
            url,
            pool,
            funded_until: status.funded_until,
            daily_cost: status.daily_cost_micro,
        });
    }
    state.lock().unwrap_or_else(|p| p.into_inner()).funded = funded;
    choose(&standings, horizon, shunned)
}

/// A mirror's answer, as [`choose`] weighs it.
struct Standing {
    url: String,
    /// Its pool's `host:port`, if it runs one.
    pool: Option<String>,
    /// `None`: nothing is charged.
    funded_until: Option<i64>,
    daily_cost: u64,
}

/// The mirror to mine for, and its pool: of those with a pool and funded
/// short of `horizon`, the one whose storage is most at risk. A mirror in
/// `shunned` goes last, and so does one in debt that stores nothing
/// billable ("funded until now"), which loses nothing while it waits:
/// mining only for it let another's leases run out. Then the least
/// funded; ties go to the first.
fn choose(
    standings: &[Standing],
    horizon: i64,
    shunned: &std::collections::HashMap<String, tokio::time::Instant>,
) -> Option<(String, String)> {
    standings
        .iter()
        .filter_map(|s| {
            let until = s.funded_until.filter(|u| *u < horizon)?;
            let pool = s.pool.as_ref()?;
            let rank = (shunned.contains_key(&s.url), s.daily_cost == 0, until);
            Some((rank, s.url.clone(), pool.clone()))
        })
        .min_by_key(|(rank, ..)| *rank)
        .map(|(_, url, pool)| (url, pool))
}

/// How long the keeper mines for one mirror before it looks again.
const ROUND: Duration = Duration::from_secs(60);

/// How long a mirror whose pool has not taken the miner's login for a
/// round (its Stratum port blocked by a firewall, its pool down) is passed
/// over while another mirror needs mining.
const POOL_SHUN: Duration = Duration::from_secs(600);

/// After a round for the mirror `url` that began at `began`: a pool that
/// took the login (`connected`) clears its mirror from `shunned`; one that
/// has not in a whole round shuns it for [`POOL_SHUN`]. Returns whether it
/// was shunned now.
fn review(
    shunned: &mut std::collections::HashMap<String, tokio::time::Instant>,
    url: &str,
    began: tokio::time::Instant,
    connected: bool,
    now: tokio::time::Instant,
) -> bool {
    if connected {
        shunned.remove(url);
        return false;
    }
    if now.duration_since(began) < ROUND || shunned.contains_key(url) {
        return false;
    }
    shunned.insert(url.to_string(), now + POOL_SHUN);
    true
}

/// A pool session running for one mirror.
struct Round {
    url: String,
    addr: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    began: tokio::time::Instant,
}

impl Round {
    /// End the session (shares sent are answered for a few seconds). One
    /// that panicked is logged; the channel of finds is free again either
    /// way, for the next session.
    async fn end(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(pool = %self.addr, mirror = %self.url, error = %e, "the pool session failed; the next one starts afresh");
        }
    }
}

async fn mine_loop(
    config: KeeperConfig,
    miners: Arc<Miners>,
    found: mpsc::UnboundedReceiver<Found>,
    stats: Arc<MinerStats>,
    state: Arc<Mutex<KeeperState>>,
    mut ending: watch::Receiver<bool>,
) {
    let worker = lode::protocol::hex(&config.account.public_key());
    // Ended, or no one left to end it.
    let over = |e: &watch::Receiver<bool>| *e.borrow() || e.has_changed().is_err();
    let finds: client::Finds = Arc::new(tokio::sync::Mutex::new(found));
    let mut round: Option<Round> = None;
    let mut shunned = std::collections::HashMap::new();
    while !over(&ending) {
        // A session that has not had its login taken after a whole round
        // is mining nowhere: its mirror is passed over for a while. The
        // keeper stuck to it, a minute at a time, for as long as it was
        // the least funded. One the pool took is forgiven.
        let connected = stats.connected.load(Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        if let Some(r) = &round
            && review(&mut shunned, &r.url, r.began, connected, now)
        {
            tracing::warn!(pool = %r.addr, mirror = %r.url, "the pool has not taken the miner in a minute; mining for another mirror a while");
        }
        shunned.retain(|_, until| *until > now);
        // The session mines on while the mirrors are asked; it is ended
        // only for another target (each new session starts the pool's
        // difficulty over), or when the mount ends meanwhile (a hung
        // mirror can hold the asking for a while).
        let target = tokio::select! {
            target = pick(&config, &state, &shunned) => target,
            _ = ending.changed() => break,
        };
        // A session whose task ended (it panicked) is started again, even
        // for the same mirror: kept, nothing was sent while the threads
        // mined on its last work.
        let keep = matches!((&round, &target), (Some(r), Some((url, addr)))
            if r.url == *url && r.addr == *addr && !r.task.is_finished());
        if !keep {
            if let Some(r) = round.take() {
                r.end().await;
            }
            if let Some((url, addr)) = target
                && !over(&ending)
            {
                let (stop, stop_rx) = watch::channel(false);
                let task = tokio::spawn(client::run(
                    addr.clone(),
                    worker.clone(),
                    miners.clone(),
                    finds.clone(),
                    stats.clone(),
                    stop_rx,
                ));
                round = Some(Round {
                    url,
                    addr,
                    stop,
                    task,
                    began: tokio::time::Instant::now(),
                });
            }
        }
        state.lock().unwrap_or_else(|p| p.into_inner()).mining_for =
            round.as_ref().map(|r| r.url.clone());
        tokio::select! {
            _ = tokio::time::sleep(ROUND) => {}
            _ = ending.changed() => {}
        }
    }
    if let Some(r) = round.take() {
        r.end().await;
    }
    state.lock().unwrap_or_else(|p| p.into_inner()).mining_for = None;
}

/// How often the mount asks the mirrors for their room (`statfs`).
const SPACE_EVERY: Duration = Duration::from_secs(10);

/// Ask every mirror for its room now and then, and hand the grid's space
/// (see `Space::of`) to `set`. Mirrors that do not answer are left out;
/// if none answers, the last figure stands. Once every mirror has
/// answered, the shortest lease they grant goes to `lease_floor` (see
/// `Grid::set_lease_floor`).
pub async fn space_loop(
    config: KeeperConfig,
    params: lode::chunk::Params,
    set: impl Fn(Option<Space>) + Send + 'static,
    lease_floor: impl Fn(Duration) + Send + 'static,
) {
    loop {
        let mut asks = tokio::task::JoinSet::new();
        for url in &config.mirrors {
            let (url, account) = (url.clone(), config.account.clone());
            asks.spawn(async move {
                let mirror = HttpMirror::new(&url, account).ok()?;
                let (info, status) = tokio::try_join!(mirror.info(), mirror.account()).ok()?;
                Some((Room::from_reports(&info, &status), info.lease_seconds))
            });
        }
        let answers: Vec<(Room, u64)> = asks.join_all().await.into_iter().flatten().collect();
        if answers.len() == config.mirrors.len()
            && let Some(shortest) = answers.iter().map(|a| a.1).min()
        {
            lease_floor(Duration::from_secs(shortest));
        }
        let rooms: Vec<Room> = answers.into_iter().map(|a| a.0).collect();
        if !rooms.is_empty() {
            set(Space::of(params, config.mirrors.len(), &rooms));
        }
        tokio::time::sleep(SPACE_EVERY).await;
    }
}

/// How long the keeper waits between renewal passes: a quarter of the
/// shortest lease any mirror grants, between a minute and a day (a day
/// when no mirror answers). A pass that failed in any part is tried again
/// within `RENEW_RETRY`. The wait is counted in wall-clock time, which
/// goes on through a suspend where tokio's timers stop. It was a day,
/// whatever the leases: on a mirror granting half-day leases, a file
/// written once lost its shares to GC before the next pass.
fn renew_wait(shortest_lease: Option<u64>, failed: bool) -> Duration {
    let wait = shortest_lease.map_or(RENEW_MOST, |lease| {
        (Duration::from_secs(lease) / 4).clamp(RENEW_LEAST, RENEW_MOST)
    });
    match failed {
        true => wait.min(RENEW_RETRY),
        false => wait,
    }
}

const RENEW_LEAST: Duration = Duration::from_secs(60);
const RENEW_RETRY: Duration = Duration::from_secs(600);
const RENEW_MOST: Duration = Duration::from_secs(24 * 3600);

/// The shortest lease the mirrors that answer grant, if any answers.
async fn shortest_lease(config: &KeeperConfig) -> Option<u64> {
    let mut asks = tokio::task::JoinSet::new();
    for url in &config.mirrors {
        let (url, account) = (url.clone(), config.account.clone());
        asks.spawn(async move {
            let mirror = HttpMirror::new(&url, account).ok()?;
            Some(mirror.info().await.ok()?.lease_seconds)
        });
    }
    asks.join_all().await.into_iter().flatten().min()
}

/// Renewal passes in a row with leases refused that are tried again
/// within [`RENEW_RETRY`].
const REFUSED_RETRIES: u32 = 6;

/// After a renewal pass with `refused` leases refused, following
/// `passes` in a row with refusals: how many in a row there are now, and
/// whether this one is tried again within [`RENEW_RETRY`] (for the first
/// [`REFUSED_RETRIES`] of a run).
fn after_refusals(refused: usize, passes: u32) -> (u32, bool) {
    match refused {
        0 => (0, false),
        _ => {
            let passes = passes.saturating_add(1);
            (passes, passes <= REFUSED_RETRIES)
        }
    }
}

async fn renew_loop(config: KeeperConfig, vault: Arc<Vault>, state: Arc<Mutex<KeeperState>>) {
    let mut refused_passes = 0u32;
    loop {
        let root = Cap::DirWrite(vault.root().clone());
        let mut failed = true;
        let mut short = true;
        let summary = match vault.reachable_ids(&root).await {
            Ok(reach) => {
                let renewal = vault.grid().renew(&reach.ids).await;
                let results = renewal.per_mirror;
                let failed_on = results.iter().filter(|(_, r)| r.is_err()).count();
                failed = failed_on > 0 || !reach.unreadable.is_empty();
                let refused: usize = results
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().ok())
                    .map(|r| r.refused)
                    .sum();
                // Refused (unfunded, most likely): tried again within ten
                // minutes, once mining may have paid, not after a quarter
                // lease, by which time leases near their end had lapsed.
                // For an hour: a refusal that stays (over quota, or no
                // miner) is not worth a walk of the tree every ten minutes.
                let retry;
                (refused_passes, retry) = after_refusals(refused, refused_passes);
                failed |= retry;
                let refused_text = match refused {
                    0 => String::new(),
                    n => format!(", {n} leases refused (unfunded or over quota)"),
                };
                let lost = match (renewal.nowhere, failed_on) {
                    (0, _) => String::new(),
                    (n, 0) => format!(", {n} on no mirror"),
                    (n, _) => format!(", {n} on none of the mirrors that answered"),
                };
                let unreadable = match reach.unreadable.len() {
                    0 => String::new(),
                    n => format!(", {n} files or directories unreadable, not renewed"),
                };
                let objects = match reach.ids.len() {
                    1 => "1 object".to_string(),
                    n => format!("{n} objects"),
                };
                // From what happened, not from `failed`, which stops
                // counting refusals after a few passes (for the wait).
                short = failed_on > 0
                    || refused > 0
                    || !reach.unreadable.is_empty()
                    || renewal.nowhere > 0;
                format!(
                    "{objects} on {} mirrors ({} failed{refused_text}{unreadable}{lost})",
                    results.len(),
                    failed_on,
                )
            }
            Err(e) => format!("failed: {e}"),
        };
        state.lock().unwrap_or_else(|p| p.into_inner()).last_renewal = Some(LastRenewal {
            summary,
            at: unix_now(),
            short,
        });
        let wait = renew_wait(shortest_lease(&config).await, failed);
        let due = std::time::SystemTime::now() + wait;
        // Checked each minute against the wall clock.
        while std::time::SystemTime::now() < due {
            tokio::time::sleep(Duration::from_secs(60).min(wait)).await;
        }
    }
}

/// Serve the control socket at `path` (mode 0600). A client sends one
/// request line, `status` or `sync`, and gets one JSON line back: the
/// state, or `{"synced": true}` / `{"synced": false, "error": …}` once
/// every change is on the mirrors (syncfs(2) cannot reach a FUSE server,
/// so this is how to wait for the write-back to drain).
pub fn serve_control(
    path: &Path,
    rt: &tokio::runtime::Handle,
    status: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    sync: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    friends: impl Fn() -> Result<usize, String> + Send + Sync + 'static,
    mountpoint: String,
) -> std::io::Result<PathBuf> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let _ = std::fs::remove_file(path);
    let listener = {
        let _guard = rt.enter();
        tokio::net::UnixListener::bind(path)?
    };
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let (status, sync, friends) = (Arc::new(status), Arc::new(sync), Arc::new(friends));
    let mountpoint: Arc<str> = mountpoint.into();
    rt.spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // Out of file descriptors, most likely. The socket stays:
                // ending here left the mount with no `status` or `sync`,
                // and `lode put` then took it for no mount at all.
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed; trying again shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (status, sync, friends) = (status.clone(), sync.clone(), friends.clone());
            let mountpoint = mountpoint.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut request = String::new();
                let mut read = tokio::io::BufReader::new(read.take(64));
                let got =
                    tokio::time::timeout(Duration::from_secs(5), read.read_line(&mut request))
                        .await;
                let reply = match (got, request.trim()) {
                    (Ok(Ok(_)), "status") => status(),
                    (Ok(Ok(_)), "sync") => {
                        match tokio::task::spawn_blocking(move || sync()).await {
                            Ok(Ok(())) => json!({"synced": true}),
                            Ok(Err(e)) => json!({"synced": false, "error": e}),
                            Err(e) => json!({"synced": false, "error": e.to_string()}),
                        }
                    }
                    // The config's friends changed: show them.
                    (Ok(Ok(_)), "friends") => {
                        match tokio::task::spawn_blocking(move || friends()).await {
                            Ok(Ok(n)) => json!({"friends": n, "mountpoint": &*mountpoint}),
                            Ok(Err(e)) => json!({"error": e}),
                            Err(e) => json!({"error": e.to_string()}),
                        }
                    }
                    (_, other) => json!({"error": format!("unknown request {other:?}")}),
                };
                let _ = write.write_all((reply.to_string() + "\n").as_bytes()).await;
            });
        }
    });
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leases are renewed four times per shortest lease, within bounds,
    /// and a failed pass comes back within ten minutes.
    #[test]
    fn renewals_come_four_times_a_lease() {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(renew_wait(Some(31 * 86_400), false), hours(24));
        assert_eq!(renew_wait(Some(12 * 3600), false), hours(3));
        assert_eq!(renew_wait(Some(12 * 3600), true), RENEW_RETRY);
        assert_eq!(renew_wait(Some(20), false), RENEW_LEAST);
        assert_eq!(renew_wait(Some(20), true), RENEW_LEAST);
        assert_eq!(renew_wait(None, false), hours(24));
        assert_eq!(renew_wait(None, true), RENEW_RETRY);
    }

    /// A pass with leases refused is tried again soon for six passes in a
    /// row, then at the ordinary wait; one with none refused starts the
    /// count over.
    #[test]
    fn refused_renewals_are_retried_for_six_passes() {
        let mut passes = 0;
        let mut retried = Vec::new();
        for _ in 0..8 {
            let retry;
            (passes, retry) = after_refusals(3, passes);
            retried.push(retry);
        }
        assert_eq!(retried, [true, true, true, true, true, true, false, false]);
        assert_eq!(after_refusals(0, passes), (0, false));
        assert_eq!(after_refusals(1, 0), (1, true));
        assert_eq!(after_refusals(1, u32::MAX), (u32::MAX, false));
    }

    fn standing(url: &str, until: Option<i64>, cost: u64) -> Standing {
        Standing {
            url: url.into(),
            pool: Some(format!("{url}:3333")),
            funded_until: until,
            daily_cost: cost,
        }
    }

    /// The least funded mirror short of the horizon is mined for; one whose
    /// pool is shunned, or that stores nothing billable, only when no other
    /// needs it; one with no pool, funded past the horizon, or charging
    /// nothing, never.
    #[test]
    fn the_mirror_most_at_risk_is_mined_for() {
        let horizon = 1_000;
        let none = std::collections::HashMap::new();
        let mut all = vec![
            standing("far", Some(5_000), 10),
            standing("free", None, 0),
            standing("late", Some(900), 10),
            standing("soon", Some(100), 10),
        ];
        all.push(Standing {
            pool: None,
            ..standing("poolless", Some(1), 10)
        });
        let pick = |s: &[Standing], shunned| choose(s, horizon, shunned).map(|(url, _)| url);
        assert_eq!(pick(&all, &none).as_deref(), Some("soon"));
        assert_eq!(
            choose(&all, horizon, &none).unwrap().1,
            "soon:3333",
            "the pool's address"
        );
        let mut shunned = std::collections::HashMap::new();
        shunned.insert("soon".to_string(), tokio::time::Instant::now());
        assert_eq!(pick(&all, &shunned).as_deref(), Some("late"));
        // In debt, storing nothing billable: after every mirror at risk.
        all.push(standing("idle", Some(50), 0));
        assert_eq!(pick(&all, &none).as_deref(), Some("soon"));
        // Shunned, but the only one short of the horizon: mined for.
        let only = [
            standing("far", Some(5_000), 10),
            standing("soon", Some(100), 10),
        ];
        assert_eq!(pick(&only, &shunned).as_deref(), Some("soon"));
        let funded = [standing("far", Some(5_000), 10), standing("free", None, 0)];
        assert_eq!(pick(&funded, &none), None);
        // Equal standing: the first.
        let tie = [standing("a", Some(100), 10), standing("b", Some(100), 10)];
        assert_eq!(pick(&tie, &none).as_deref(), Some("a"));
    }

    /// A round whose pool never took the login shuns its mirror once a
    /// round has passed, and not again while shunned; a login taken
    /// clears it.
    #[test]
    fn a_pool_that_never_takes_the_login_is_shunned_for_a_while() {
        let began = tokio::time::Instant::now();
        let mut shunned = std::collections::HashMap::new();
        let early = began + ROUND / 2;
        assert!(!review(&mut shunned, "m", began, false, early));
        assert!(shunned.is_empty(), "shunned before a round passed");
        let late = began + ROUND;
        assert!(review(&mut shunned, "m", began, false, late));
        assert_eq!(shunned.get("m"), Some(&(late + POOL_SHUN)));
        // Already shunned: the time is not pushed out.
        assert!(!review(&mut shunned, "m", began, false, late + ROUND));
        assert_eq!(shunned.get("m"), Some(&(late + POOL_SHUN)));
        assert!(!review(&mut shunned, "m", began, true, late + ROUND));
        assert!(shunned.is_empty(), "a login taken did not clear it");
    }
}
