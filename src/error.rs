//! The crate-wide error type, and the rules for errors in lode.
//!
//! 1. Each layer owns a `thiserror` enum and a `Result<T, E = Error>` alias.
//!    Its variants say what went wrong in that layer's words (a bad cap
//!    string, a share that fails its hash), never "something failed".
//! 2. A layer wraps the errors of the layers below it with `#[from]`, so the
//!    cause chain survives to the CLI, which prints it with `anyhow`.
//! 3. Integrity failures are errors, never silent: a share or slot that fails
//!    verification is `Corrupt`, and the caller decides whether another
//!    mirror can supply a good copy.
//! 4. `anyhow` appears only in `cli/`, `main.rs` and tests.
//! 5. The FUSE layer maps errors to errno in exactly one exhaustive function.

/// Any error lode's library can return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Crypto(#[from] crate::crypto::Error),
    #[error(transparent)]
    Cap(#[from] crate::caps::Error),
    #[error(transparent)]
    Chunk(#[from] crate::chunk::Error),
    #[error(transparent)]
    Dir(#[from] crate::dir::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
