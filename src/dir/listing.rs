//! The plaintext of a directory: name → entry.
//!
//! CBOR map `{v, entries: {name: {kind, cap, wcap, mode, size, mtime,
//! mtime_ns, target}}}`. `cap` is always a read-level cap string; a child
//! directory's write-cap travels only in `wcap`, sealed under the parent's
//! write-seal key with the entry name as context, so a read-cap holder sees
//! read-caps only, all the way down.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{Error, Result};
use crate::caps::{Access, Cap, DirReadCap, DirWriteCap, FileReadCap};
use crate::crypto::SlotSeed;

/// The listing format this code writes and reads.
pub const LISTING_VERSION: u8 = 1;
const WCAP_CONTEXT: &[u8] = b"lode child write-cap v1";

/// What an entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One named child of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// Read-level cap of the child (`None` for a symlink).
    pub cap: Option<Cap>,
    /// The child's write-cap, sealed (directories created by this tree).
    sealed_write: Option<Vec<u8>>,
    /// Permission bits (e.g. 0o644).
    pub mode: u32,
    pub size: u64,
    /// Modification time: seconds and nanoseconds since the Unix epoch.
    pub mtime: (i64, u32),
    /// Target of a symlink.
    pub target: Option<String>,
}

impl Entry {
    pub fn file(cap: FileReadCap, mode: u32, mtime: (i64, u32)) -> Entry {
        Entry {
            kind: EntryKind::File,
            size: cap.size,
            cap: Some(Cap::FileRead(cap)),
            sealed_write: None,
            mode,
            mtime,
            target: None,
        }
    }

    /// A child directory that `parent`'s write-cap holders may change. The
    /// child's write-cap is sealed under `parent` and bound to `name`.
    pub fn dir(
        parent: &DirWriteCap,
        name: &str,
        child: &DirWriteCap,
        mode: u32,
        mtime: (i64, u32),
    ) -> Entry {
        let sealed = parent
            .seed
            .write_seal_key()
            .seal(&[WCAP_CONTEXT, name.as_bytes()], child.seed.expose());
        Entry {
            kind: EntryKind::Dir,
            cap: Some(Cap::DirRead(child.read_cap())),
            sealed_write: Some(sealed),
            mode,
            size: 0,
            mtime,
            target: None,
        }
    }

    /// A child directory linked read-only (for example, a friend's share).
    pub fn dir_read_only(child: DirReadCap, mode: u32, mtime: (i64, u32)) -> Entry {
        Entry {
            kind: EntryKind::Dir,
            cap: Some(Cap::DirRead(child)),
            sealed_write: None,
            mode,
            size: 0,
            mtime,
            target: None,
        }
    }

    pub fn symlink(target: &str, mtime: (i64, u32)) -> Entry {
        Entry {
            kind: EntryKind::Symlink,
            cap: None,
            sealed_write: None,
            mode: 0o777,
            size: target.len() as u64,
            mtime,
            target: Some(target.to_string()),
        }
    }

    /// Unseal the child's write-cap with the parent's write-cap. `None` if
    /// the child was linked read-only.
    pub fn write_cap(&self, parent: &DirWriteCap, name: &str) -> Result<Option<DirWriteCap>> {
        let Some(sealed) = &self.sealed_write else {
            return Ok(None);
        };
        let bad = |reason: &str| Error::BadEntry {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let seed = zeroize::Zeroizing::new(
            parent
                .seed
                .write_seal_key()
                .open(&[WCAP_CONTEXT, name.as_bytes()], sealed)
                .map_err(|_| bad("sealed write-cap failed authentication"))?,
        );
        let seed: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| bad("sealed write-cap has the wrong length"))?;
        let child = DirWriteCap {
            seed: SlotSeed::from_bytes(seed),
        };
        // The unsealed write-cap must match the read-cap beside it, or a
        // forged entry could pair one directory's name with another's key.
        if self.cap.as_ref() != Some(&Cap::DirRead(child.read_cap())) {
            return Err(bad("sealed write-cap does not match the entry's read-cap"));
        }
        Ok(Some(child))
    }

    /// Whether a write-cap is sealed in this entry.
    pub fn has_write_cap(&self) -> bool {
        self.sealed_write.is_some()
    }
}

/// The decrypted content of a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub entries: BTreeMap<String, Entry>,
}

#[derive(Serialize, Deserialize)]
struct WireListing {
    v: u8,
    entries: BTreeMap<String, WireEntry>,
}

#[derive(Serialize, Deserialize)]
struct WireEntry {
    kind: EntryKind,
    cap: Option<String>,
    wcap: Option<ByteBuf>,
    mode: u32,
    size: u64,
    mtime: i64,
    mtime_ns: u32,
    target: Option<String>,
}

/// A name is one path component: not empty, not `.` or `..`, no `/` or NUL,
/// at most 255 bytes (the POSIX NAME_MAX).
pub fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        Err("name is empty, \".\" or \"..\"")
    } else if name.contains('/') || name.contains('\0') {
        Err("name contains '/' or NUL")
    } else if name.len() > 255 {
        Err("name is longer than 255 bytes")
    } else {
        Ok(())
    }
}

impl Listing {
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireListing {
            v: LISTING_VERSION,
            entries: self
                .entries
                .iter()
                .map(|(name, e)| {
                    (
                        name.clone(),
                        WireEntry {
                            kind: e.kind,
                            cap: e.cap.as_ref().map(|c| c.to_string()),
                            wcap: e.sealed_write.clone().map(ByteBuf::from),
                            mode: e.mode,
                            size: e.size,
                            mtime: e.mtime.0,
                            mtime_ns: e.mtime.1,
                            target: e.target.clone(),
                        },
                    )
                })
                .collect(),
        };
        serde_cbor::to_vec(&wire).expect("listing always serializes")
    }

    /// Decode and validate a listing. Rejects anything a well-behaved writer
    /// would not produce, including a plaintext write-cap.
    pub fn decode(bytes: &[u8]) -> Result<Listing> {
        let wire: WireListing =
            serde_cbor::from_slice(bytes).map_err(|e| Error::Malformed(e.to_string()))?;
        if wire.v != LISTING_VERSION {
            return Err(Error::ListingVersion(wire.v));
        }
        let mut entries = BTreeMap::new();
        for (name, w) in wire.entries {
            let bad = |reason: &str| Error::BadEntry {
                name: name.clone(),
                reason: reason.to_string(),
            };
            check_name(&name).map_err(bad)?;
            let cap = w.cap.as_deref().map(str::parse::<Cap>).transpose()?;
            match (w.kind, &cap, &w.target) {
                (EntryKind::File, Some(Cap::FileRead(_)), None)
                | (EntryKind::Dir, Some(Cap::DirRead(_)), None)
                | (EntryKind::Symlink, None, Some(_)) => {}
                _ => return Err(bad("kind, cap and target do not agree")),
            }
            if cap.as_ref().is_some_and(|c| c.access() != Access::Read) {
                return Err(bad("entry cap must be a read-cap"));
            }
            if w.wcap.is_some() && w.kind != EntryKind::Dir {
                return Err(bad("only directories carry a write-cap"));
            }
            if w.mtime_ns >= 1_000_000_000 {
                return Err(bad("mtime nanoseconds out of range"));
            }
            entries.insert(
                name,
                Entry {
                    kind: w.kind,
                    cap,
                    sealed_write: w.wcap.map(ByteBuf::into_vec),
                    mode: w.mode,
                    size: w.size,
                    mtime: (w.mtime, w.mtime_ns),
                    target: w.target,
                },
            );
        }
        Ok(Listing { entries })
    }
}
