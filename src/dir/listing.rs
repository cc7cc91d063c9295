//! The plaintext of a directory: name → entry.
//!
//! CBOR map `{v, entries: {name: {kind, cap, wcap, mode, size, mtime,
//! mtime_ns, target, atime…, ctime…, uid, gid, rdev, link, nlink}}, links}`.
//! `cap` is always a read-level cap string; a child directory's write-cap
//! travels only in `wcap`, sealed under the parent's write-seal key with the
//! entry name as context, so a read-cap holder sees read-caps only, all the
//! way down.
//!
//! Version 2 added special files (FIFOs, sockets, device nodes: metadata
//! only), owner, atime and ctime, and hard links: an entry with a `link` id
//! is one name of a file that has several. The authoritative copy of such a
//! file lives in the `links` table of the tree's root listing; each name
//! carries a snapshot so that a read-cap of any subdirectory still reads it
//! (see docs/ARCHITECTURE.md, "Hard links"). Version 1 listings still read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{Error, Result};
use crate::caps::{Access, Cap, DirReadCap, DirWriteCap, FileReadCap};
use crate::crypto::SlotSeed;

/// The listing format this code writes and reads.
pub const LISTING_VERSION: u8 = 2;
/// The oldest listing format this code still reads.
const OLDEST_LISTING_VERSION: u8 = 1;
const WCAP_CONTEXT: &[u8] = b"lode child write-cap v1";

/// What an entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl EntryKind {
    /// FIFOs, sockets and device nodes: names with metadata and no content.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            EntryKind::Fifo | EntryKind::Socket | EntryKind::CharDev | EntryKind::BlockDev
        )
    }
}

/// The id that ties together the names of a hard-linked file.
pub type LinkId = [u8; 16];
/// A time: seconds and nanoseconds since the Unix epoch.
pub type Time = (i64, u32);

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
    pub atime: Time,
    pub ctime: Time,
    /// Owner and group; `None` means "whoever mounts the tree".
    pub owner: Option<(u32, u32)>,
    /// Device number of a device node.
    pub rdev: u32,
    /// Set for a file with more than one name (or that had one).
    pub link: Option<LinkId>,
    /// How many names the file has (1 unless `link` is set).
    pub nlink: u32,
}

impl Entry {
    /// The fields every kind shares, at their defaults.
    fn bare(mtime: Time) -> Entry {
        Entry {
            kind: EntryKind::File,
            cap: None,
            sealed_write: None,
            mode: 0,
            size: 0,
            mtime,
            target: None,
            atime: mtime,
            ctime: mtime,
            owner: None,
            rdev: 0,
            link: None,
            nlink: 1,
        }
    }

    /// A FIFO, socket or device node.
    pub fn special(kind: EntryKind, mode: u32, rdev: u32, mtime: Time) -> Entry {
        debug_assert!(kind.is_special());
        Entry {
            kind,
            mode,
            rdev,
            ..Entry::bare(mtime)
        }
    }

    /// Set the times, owner and link fields that the constructors default.
    pub fn with_meta(
        mut self,
        atime: Time,
        ctime: Time,
        owner: Option<(u32, u32)>,
        link: Option<(LinkId, u32)>,
    ) -> Entry {
        self.atime = atime;
        self.ctime = ctime;
        self.owner = owner;
        if let Some((id, nlink)) = link {
            self.link = Some(id);
            self.nlink = nlink;
        }
        self
    }

    pub fn file(cap: FileReadCap, mode: u32, mtime: (i64, u32)) -> Entry {
        Entry {
            kind: EntryKind::File,
            size: cap.size,
            cap: Some(Cap::FileRead(cap)),
            sealed_write: None,
            mode,
            mtime,
            target: None,
            ..Entry::bare(mtime)
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
            ..Entry::bare(mtime)
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
            ..Entry::bare(mtime)
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
            ..Entry::bare(mtime)
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
    /// Hard-linked files, by link id: only in the root listing of a tree.
    pub links: BTreeMap<LinkId, Entry>,
}

#[derive(Serialize, Deserialize)]
struct WireListing {
    v: u8,
    entries: BTreeMap<String, WireEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    links: BTreeMap<String, WireEntry>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
fn is_one(n: &u32) -> bool {
    *n == 1
}
fn one() -> u32 {
    1
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
    // Version 2 fields; absent in version 1 listings.
    #[serde(default)]
    atime: Option<(i64, u32)>,
    #[serde(default)]
    ctime: Option<(i64, u32)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gid: Option<u32>,
    #[serde(default, skip_serializing_if = "is_zero")]
    rdev: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<ByteBuf>,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    nlink: u32,
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

fn to_wire(e: &Entry) -> WireEntry {
    WireEntry {
        kind: e.kind,
        cap: e.cap.as_ref().map(|c| c.to_string()),
        wcap: e.sealed_write.clone().map(ByteBuf::from),
        mode: e.mode,
        size: e.size,
        mtime: e.mtime.0,
        mtime_ns: e.mtime.1,
        target: e.target.clone(),
        atime: Some(e.atime),
        ctime: Some(e.ctime),
        uid: e.owner.map(|o| o.0),
        gid: e.owner.map(|o| o.1),
        rdev: e.rdev,
        link: e.link.map(|l| ByteBuf::from(l.to_vec())),
        nlink: e.nlink,
    }
}

/// Check one wire entry and turn it into an [`Entry`].
fn from_wire(name: &str, w: WireEntry) -> Result<Entry> {
    let bad = |reason: &str| Error::BadEntry {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let cap = w.cap.as_deref().map(str::parse::<Cap>).transpose()?;
    match (w.kind, &cap, &w.target) {
        (EntryKind::File, Some(Cap::FileRead(_)), None)
        | (EntryKind::Dir, Some(Cap::DirRead(_)), None)
        | (EntryKind::Symlink, None, Some(_)) => {}
        (k, None, None) if k.is_special() => {}
        _ => return Err(bad("kind, cap and target do not agree")),
    }
    if cap.as_ref().is_some_and(|c| c.access() != Access::Read) {
        return Err(bad("entry cap must be a read-cap"));
    }
    if w.wcap.is_some() && w.kind != EntryKind::Dir {
        return Err(bad("only directories carry a write-cap"));
    }
    let mtime = (w.mtime, w.mtime_ns);
    let (atime, ctime) = (w.atime.unwrap_or(mtime), w.ctime.unwrap_or(mtime));
    if [mtime, atime, ctime].iter().any(|t| t.1 >= 1_000_000_000) {
        return Err(bad("nanoseconds out of range"));
    }
    let owner = match (w.uid, w.gid) {
        (Some(u), Some(g)) => Some((u, g)),
        (None, None) => None,
        _ => return Err(bad("uid and gid come together")),
    };
    let link = match w.link {
        None => None,
        Some(id) => {
            Some(LinkId::try_from(id.as_slice()).map_err(|_| bad("a link id is 16 bytes"))?)
        }
    };
    if link.is_some() && w.kind == EntryKind::Dir {
        return Err(bad("directories cannot be hard-linked"));
    }
    if link.is_none() && w.nlink != 1 {
        return Err(bad("only linked files have a link count"));
    }
    Ok(Entry {
        kind: w.kind,
        cap,
        sealed_write: w.wcap.map(ByteBuf::into_vec),
        mode: w.mode,
        size: w.size,
        mtime,
        target: w.target,
        atime,
        ctime,
        owner,
        rdev: w.rdev,
        link,
        nlink: w.nlink,
    })
}

impl Listing {
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireListing {
            v: LISTING_VERSION,
            entries: self
                .entries
                .iter()
                .map(|(name, e)| (name.clone(), to_wire(e)))
                .collect(),
            links: self
                .links
                .iter()
                .map(|(id, e)| (crate::protocol::hex(id), to_wire(e)))
                .collect(),
        };
        serde_cbor::to_vec(&wire).expect("listing always serializes")
    }

    /// Decode and validate a listing. Rejects anything a well-behaved writer
    /// would not produce, including a plaintext write-cap.
    pub fn decode(bytes: &[u8]) -> Result<Listing> {
        let wire: WireListing =
            serde_cbor::from_slice(bytes).map_err(|e| Error::Malformed(e.to_string()))?;
        if !(OLDEST_LISTING_VERSION..=LISTING_VERSION).contains(&wire.v) {
            return Err(Error::ListingVersion(wire.v));
        }
        let mut entries = BTreeMap::new();
        for (name, w) in wire.entries {
            check_name(&name).map_err(|reason| Error::BadEntry {
                name: name.clone(),
                reason: reason.to_string(),
            })?;
            let entry = from_wire(&name, w)?;
            entries.insert(name, entry);
        }
        let mut links = BTreeMap::new();
        for (id, w) in wire.links {
            let entry = from_wire(&id, w)?;
            let key = crate::protocol::parse_hex::<16>(&id).map_err(|_| Error::BadEntry {
                name: id.clone(),
                reason: "a link table key is 32 hex digits".into(),
            })?;
            if entry.link != Some(key) || entry.kind == EntryKind::Dir {
                return Err(Error::BadEntry {
                    name: id,
                    reason: "link table entry does not match its key".into(),
                });
            }
            links.insert(key, entry);
        }
        Ok(Listing { entries, links })
    }
}
