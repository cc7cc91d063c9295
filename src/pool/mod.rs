//! The proof-of-work pool, sans-IO: Stratum v1 messages, Bitcoin header
//! construction, difficulty and targets, share validation and vardiff.
//!
//! A mirror runs a Stratum v1 endpoint (the socket loop lives in
//! `mirror::stratum`); every share it accepts credits the sender's account.
//! This layer is the pure part: it parses and writes protocol lines, builds
//! the 80-byte header exactly as Bitcoin does, and decides whether a share
//! is valid. It holds no sockets and imports no tokio, so every rule here is
//! unit-tested and fuzzable.

mod difficulty;
mod header;
mod jobs;
mod session;
pub mod stratum;
mod vardiff;

pub use difficulty::{DIFF1_TARGET, Difficulty, hash_meets, hash_to_u256};
pub use header::{Job, build_header, coinbase, merkle_root, sha256d};
pub use jobs::{BuiltinJobs, EXTRANONCE1_SIZE, EXTRANONCE2_SIZE, JobBook};
pub use session::{
    Accepted, NTIME_SLACK, Outcome, Reject, Session, SessionConfig, VERSION_ROLLING_MASK,
    account_of,
};
pub use vardiff::Vardiff;

/// Errors in Stratum input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("malformed JSON-RPC line: {0}")]
    Json(String),
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    #[error("bad parameters for {method}: {reason}")]
    Params { method: String, reason: String },
    #[error("bad hex in {0}")]
    Hex(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
