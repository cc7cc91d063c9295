//! `lode mirror serve`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use lode::mirror::{MirrorConfig, serve};

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
    if lease_secs <= 0 {
        bail!("the lease duration must be positive");
    }
    if args.gc_interval == 0 {
        bail!("--gc-interval must be at least 1 second");
    }
    let config = MirrorConfig {
        data: args.data.clone(),
        lease_secs,
        quota: args.quota,
        capacity: args.capacity,
        gc_interval: Duration::from_secs(args.gc_interval),
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        // The first line on stdout is the address: scripts and tests read it.
        println!("lode mirror listening on http://{addr}");
        use std::io::Write;
        std::io::stdout().flush()?;
        serve(listener, config, shutdown_signal())
            .await
            .with_context(|| format!("mirror with data in {}", args.data.display()))
    })
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
