//! CPU mining: SHA-256d proof of work over Bitcoin block headers.
//!
//! This layer owns the hash function ([`hasher`]), the threads that run it
//! ([`workers`]) and the Stratum client that feeds them ([`client`]). The
//! threads know a header, a target and an opaque tag, nothing of Stratum:
//! the client builds headers from pool jobs (with `pool`'s sans-IO code),
//! publishes them with [`Miners::set_work`], and submits what comes back as
//! [`Found`]. The miner reaches a pool only over the wire, and never the
//! store or the mount.

pub mod client;
pub mod hasher;
pub mod workers;

pub use client::MinerStats;

pub use hasher::{HEADER_LEN, Midstate, meets_target, sha256d};
pub use workers::{BenchReport, Found, MinerConfig, Miners, Priority, Work, bench};

/// Why the miner could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The duty cycle must lie in (0, 1].
    #[error("miner duty must be in (0, 1], got {0}")]
    Duty(f64),
    /// The OS refused a mining thread.
    #[error("cannot spawn mining thread")]
    Spawn(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
