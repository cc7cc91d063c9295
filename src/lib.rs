//! lode: a private, encrypted file store that mounts as a POSIX filesystem.
//!
//! # Layers
//!
//! Each folder under `src/` is a layer. A layer may import the layers below it,
//! never the ones above.
//!
//! ```text
//!   cli ──▶ store ──▶ dir ──▶ caps ──▶ crypto
//!             │                          ▲
//!             └──────▶ chunk ────────────┘
//! ```
//!
//! - [`crypto`]: key types, HKDF derivation from the root secret, convergent
//!   AES-SIV, SHA-256. No I/O.
//! - [`caps`]: capabilities (write, read, verify; for directories and files),
//!   their string form and downgrade. No I/O.
//! - [`chunk`]: content-defined chunking, erasure-coded shares and the file
//!   manifest tree. Pure transforms over bytes; no I/O beyond reading the
//!   caller's `Read`.
//! - [`dir`]: the signed, encrypted, versioned directory slot. No I/O.
//! - [`store`]: the client side. The [`store::Storage`] trait that mirrors,
//!   local disk and test doubles implement, and the put/get pipelines that
//!   turn files and directory trees into shares and slots and back.
//!
//! # End to end
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use lode::{crypto::RootSecret, store::{MemoryStorage, Vault}};
//! use std::sync::Arc;
//!
//! let secret = RootSecret::from_bytes([7; 32]);
//! let vault = Vault::single(&secret, Arc::new(MemoryStorage::new()));
//! let cap = vault.put_bytes(b"hello, lode").await.unwrap();
//! assert_eq!(vault.get_bytes(&cap).await.unwrap(), b"hello, lode");
//! # });
//! ```

pub mod caps;
pub mod chunk;
pub mod crypto;
pub mod dir;
pub mod error;
pub mod fuse;
pub mod miner;
pub mod mirror;
pub mod pool;
pub mod protocol;
pub mod store;

pub use error::{Error, Result};
