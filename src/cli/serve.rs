//! `lode mirror serve`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use lode::mirror::{MirrorConfig, PoolConfig, bind, serve};

/// The highest `--price`: difficulty-1 shares per GiB-day.
const MAX_PRICE: f64 = 1e9;
/// The longest `--grace-days`: a century.
const MAX_GRACE_DAYS: f64 = 36_500.0;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory for shares and the ledger.
    #[arg(long)]
    data: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free one).
    #[arg(long)]
    listen: String,
    /// Lease duration in days.
    #[arg(long, default_value_t = 31.0)]
    lease_days: f64,
    /// Lease duration in seconds (overrides --lease-days; for tests).
    #[arg(long)]
    lease_secs: Option<i64>,
    /// Bytes each account may lease, e.g. 10G.
    #[arg(long, value_parser = parse_size)]
    quota: Option<u64>,
    /// Bytes this mirror may hold in all, e.g. 2T.
    #[arg(long, value_parser = parse_size)]
    capacity: Option<u64>,
    /// Seconds between garbage-collection passes.
    #[arg(long, default_value_t = 3600)]
    gc_interval: u64,
    /// Bytes of stored shares read back and checked against their ids on
    /// each GC pass, e.g. 1G (0: never); a damaged share is removed, for
    /// the next upload or repair to store it again.
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    scrub: u64,
    /// Address of the Stratum v1 pool endpoint, e.g. 0.0.0.0:3333.
    #[arg(long)]
    stratum: Option<String>,
    /// Price of storage in difficulty-1 shares per GiB-day (0: free).
    #[arg(long, default_value_t = 0.0)]
    price: f64,
    /// Days an unfunded account may still renew leases.
    #[arg(long, default_value_t = 7.0)]
    grace_days: f64,
    /// Bytes per account that cost nothing, e.g. 1G.
    #[arg(long, value_parser = parse_size, default_value = "0")]
    free: u64,
    /// Starting share difficulty (fractional allowed).
    #[arg(long, default_value_t = 1.0)]
    difficulty: f64,
    /// Lowest difficulty vardiff may set [default: 0.000001, or the
    /// starting difficulty if that is lower].
    #[arg(long)]
    min_difficulty: Option<f64>,
    /// Seconds per share vardiff aims for, per connection.
    #[arg(long, default_value_t = 10.0)]
    share_interval: f64,
    /// Seconds between new jobs from the built-in job source.
    #[arg(long, default_value_t = 30)]
    job_interval: u64,
    /// Proxy mode: relay jobs from this upstream Stratum pool (host:port).
    #[arg(long)]
    upstream: Option<String>,
    /// Worker name for the upstream pool.
    #[arg(long, requires = "upstream")]
    upstream_user: Option<String>,
    /// Password for the upstream pool.
    #[arg(long, requires = "upstream", default_value = "x")]
    upstream_password: String,
    /// Seconds the upstream may stay silent before the link is taken for
    /// dead and made again (its jobs stop counting meanwhile).
    #[arg(long, requires = "upstream", default_value_t = 900)]
    upstream_silence: u64,
    /// Connections open at once, to the HTTP server and to the Stratum
    /// pool each; past it, new ones wait for one to close. One peer
    /// address may hold a quarter of the HTTP ones (at least 128, but never
    /// the last eighth).
    #[arg(long, default_value_t = lode::mirror::listen::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds an HTTP connection may send and receive nothing, with no
    /// request being answered, before it is closed (below 90, lode's
    /// client may send on a pooled connection just as it closes).
    #[arg(long, default_value_t = lode::mirror::listen::IDLE.as_secs())]
    idle_timeout: u64,
    /// Seconds a request's head (its request line and header fields) may
    /// take from its first byte; a slower one has its connection closed.
    #[arg(long, default_value_t = lode::mirror::listen::HEAD.as_secs())]
    head_timeout: u64,
    /// Memory for request and answer bodies held whole (slots, batches,
    /// shares being read out or gathered for writing), e.g. 512M or 4G;
    /// one peer address may hold a quarter of it. Past it a request is
    /// answered 503, and clients try again or use other mirrors.
    #[arg(long, value_parser = parse_size, default_value = "2G")]
    body_memory: u64,
}

/// Parse `123`, `10K`, `5M`, `2G`, `1T` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix {c:?} (use K, M, G or T)")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512M or 10G"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub fn run(args: ServeArgs) -> Result<()> {
    let lease_secs = match args.lease_secs {
        Some(s) => s,
        None => (args.lease_days * 86_400.0) as i64,
    };
    // Ten years at most: the ledger adds the lease to the time, and past
    // i64 a lease wrapped around to one born expired (GC then deleted
    // each share as it came).
    const LONGEST_LEASE: i64 = 3653 * 86_400;
    if !(1..=LONGEST_LEASE).contains(&lease_secs)
        || args.lease_secs.is_none() && !(args.lease_days.is_finite() && args.lease_days > 0.0)
    {
        bail!("the lease duration must be positive and at most ten years (3653 days)");
    }
    if args.gc_interval == 0 {
        bail!("--gc-interval must be at least 1 second");
    }
    if !(1..=1 << 20).contains(&args.max_connections) {
        bail!("--max-connections must be from 1 to 1048576");
    }
    if !(1..=86_400).contains(&args.idle_timeout) {
        bail!("--idle-timeout must be from 1 to 86400 seconds");
    }
    if !(1..=3600).contains(&args.head_timeout) {
        bail!("--head-timeout must be from 1 to 3600 seconds");
    }
    if args.body_memory < 64 << 20 {
        bail!("--body-memory must be at least 64M (a share alone may be 16M)");
    }
    let config = MirrorConfig {
        data: args.data.clone(),
        lease_secs,
        quota: args.quota,
        capacity: args.capacity,
        gc_interval: Duration::from_secs(args.gc_interval),
        scrub_bytes: args.scrub,
        price: args.price,
        grace_secs: (args.grace_days * 86_400.0) as i64,
        free_bytes: args.free,
        max_connections: args.max_connections,
        limits: lode::mirror::listen::Limits {
            idle: Duration::from_secs(args.idle_timeout),
            head: Duration::from_secs(args.head_timeout),
        },
        body_memory: args.body_memory,
    };
    // Bounded, so that what the ledger computes from them stays in range
    // (a price of 1e30 saturated, and its daily cost would have wrapped).
    if !(args.price.is_finite() && (0.0..=MAX_PRICE).contains(&args.price)) {
        bail!("--price must be a number from 0 to {MAX_PRICE:e}");
    }
    if !(args.grace_days.is_finite() && (0.0..=MAX_GRACE_DAYS).contains(&args.grace_days)) {
        bail!("--grace-days must be a number from 0 to {MAX_GRACE_DAYS}");
    }
    let diff = |d: f64, flag: &str| {
        lode::pool::Difficulty::from_f64(d)
            .ok_or_else(|| anyhow::anyhow!("{flag} must be a positive number"))
    };
    let (initial, min) = (
        diff(args.difficulty, "--difficulty")?,
        diff(
            args.min_difficulty.unwrap_or(args.difficulty.min(0.000001)),
            "--min-difficulty",
        )?,
    );
    // Said, not quietly lowered to the starting difficulty.
    if min > initial {
        bail!(
            "--min-difficulty {} is above the starting --difficulty {}",
            args.min_difficulty.unwrap_or_default(),
            args.difficulty
        );
    }
    // `!(x > 0)`, not `x <= 0`: NaN is neither, and was taken.
    if !(args.share_interval.is_finite() && args.share_interval > 0.0) || args.job_interval == 0 {
        bail!("--share-interval and --job-interval must be positive");
    }
    let upstream = match args.upstream {
        Some(addr) => Some(lode::mirror::UpstreamConfig {
            addr,
            user: args
                .upstream_user
                .ok_or_else(|| anyhow::anyhow!("--upstream needs --upstream-user"))?,
            password: args.upstream_password,
            silence: Duration::from_secs(args.upstream_silence.clamp(1, 86_400)),
        }),
        None => None,
    };
    let pool_config = PoolConfig {
        initial,
        min,
        max: lode::pool::Difficulty::from_f64(1e12).expect("valid"),
        share_interval: args.share_interval,
        job_interval: Duration::from_secs(args.job_interval),
        mirror_id: [0; 32],
        upstream,
        max_connections: args.max_connections,
    };
    // One mirror per data directory, checked before anything listens: a
    // second would share the first's ledger and clear its uploads in flight.
    let data = &args.data;
    if data.exists() && !data.is_dir() {
        bail!("--data {} is not a directory", data.display());
    }
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot make the data directory {}", data.display()))?;
    let lock = std::fs::File::create(data.join("mirror.lock"))
        .with_context(|| format!("cannot use the data directory {}", data.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is in use by another mirror (one mirror per data directory)",
            data.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", data.display()));
        }
    }
    let rt = tokio::runtime::Runtime::new()?;
    let _held = lock;
    rt.block_on(async move {
        // Bound now, so the address is known and held; it listens once
        // the store is open (see `serve`).
        let socket = bind_first(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = socket.local_addr()?;
        let stratum = match &args.stratum {
            Some(s) => {
                let l = tokio::net::TcpListener::bind(s)
                    .await
                    .with_context(|| format!("cannot listen on {s} for stratum"))?;
                let mut pool_config = pool_config.clone();
                pool_config.mirror_id = lode::mirror::mirror_id(&args.data)?;
                Some((l, pool_config))
            }
            None => None,
        };
        let pool_addr = match &stratum {
            Some((l, _)) => Some(l.local_addr()?),
            None => None,
        };
        // The first line on stdout is the address: scripts and tests read
        // it. It comes once the mirror answers, its store open.
        let announce = move || {
            use std::io::Write;
            println!("lode mirror listening on http://{addr}");
            if let Some(pool) = pool_addr {
                println!("lode pool listening on stratum+tcp://{pool}");
            }
            std::io::stdout().flush()
        };
        serve(socket, stratum, config, announce, shutdown_signal())
            .await
            .with_context(|| format!("mirror with data in {}", args.data.display()))
    })
}

/// A socket bound to the first address `listen` names that can be bound.
async fn bind_first(listen: &str) -> std::io::Result<tokio::net::TcpSocket> {
    let mut last = None;
    for addr in tokio::net::lookup_host(listen).await? {
        match bind(addr) {
            Ok(socket) => return Ok(socket),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "names no address")
    }))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("10K"), Ok(10 << 10));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("1X").unwrap_err().contains("suffix"));
        assert!(parse_size("abc").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
