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
//!
//! Version 3 added pages: a listing too large to go whole into its slot is
//! split by a hash of each name (and of each link id) into a power-of-two
//! number of pages, each stored as an ordinary immutable file, and the slot
//! holds only an index `{v: 3, pages: [file cap]}`. A listing read from an
//! index is *pending* until its pages are fetched and [`Listing::fill`]ed;
//! fetching is the store layer's job (this layer does no I/O). See
//! docs/ARCHITECTURE.md, "Large directories are paged".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{Error, Result};
use crate::caps::{Access, Cap, DirReadCap, DirWriteCap, FileReadCap};
use crate::crypto::{PlaceKey, SlotSeed};

/// The listing format this code writes and reads.
pub const LISTING_VERSION: u8 = 3;
/// Listings that need no pages are still written as version 2, which every
/// earlier reader of this format opens.
const WHOLE_LISTING_VERSION: u8 = 2;
/// The oldest listing format this code still reads.
const OLDEST_LISTING_VERSION: u8 = 1;
const WCAP_CONTEXT: &[u8] = b"lode child write-cap v1";
const PAGE_HASH_DOMAIN: &[u8] = b"lode listing page v1\0";
/// The largest listing page a reader accepts, and so a writer makes.
pub const MAX_PAGE_BYTES: usize = super::MAX_SLOT_BYTES;
/// Pages a writer goes up to when names crowd a page: an index of this
/// many is already over a slot's size.
const MAX_PAGES: usize = 1 << 18;

/// The most plaintext a paged listing's pages may hold together: about
/// four million entries. A reader holds all of them at once.
pub const MAX_LISTING_BYTES: u64 = 1 << 30;
/// The largest page an index may name more than once. Only empty pages
/// repeat (their plaintext, and so their convergent cap, is the same);
/// one is a few dozen bytes.
const REPEATED_PAGE_BYTES: u64 = 64;

/// Refuse an index's pages that no writer makes and that would have a
/// reader fetch or hold far more than the listing could be: a count not
/// a power of two up to `MAX_PAGES`, a page over `MAX_PAGE_BYTES`, more
/// than `MAX_LISTING_BYTES` in all, or a page with entries named twice.
/// A friend's index naming one 16 MiB page 120,000 times (it fits in a
/// slot) had a reader fetch and hold each copy: about 1.9 TiB.
fn check_pages(pages: &[FileReadCap]) -> Result<()> {
    if !pages.len().is_power_of_two() || pages.len() > MAX_PAGES {
        return Err(Error::Malformed(format!(
            "a listing index of {} pages (a power of two up to {MAX_PAGES})",
            pages.len()
        )));
    }
    let mut seen = std::collections::HashMap::with_capacity(pages.len());
    let mut total = 0u64;
    for cap in pages {
        if cap.size > MAX_PAGE_BYTES as u64 {
            return Err(Error::Malformed(format!(
                "a listing page of {} bytes, over the {MAX_PAGE_BYTES} a reader accepts",
                cap.size
            )));
        }
        match seen.entry((cap.root, cap.size)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(cap);
                total += cap.size;
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                if *o.get() != cap || cap.size > REPEATED_PAGE_BYTES {
                    return Err(Error::Malformed(
                        "a listing index names a page with entries twice".into(),
                    ));
                }
            }
        }
    }
    if total > MAX_LISTING_BYTES {
        return Err(Error::Malformed(format!(
            "listing pages of {total} bytes in all, over the {MAX_LISTING_BYTES} a reader holds"
        )));
    }
    Ok(())
}

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
    /// A name the file was renamed away from (or, for a hard-linked file,
    /// a name another file took), listed only until a listing naming the
    /// file where it is now is published: not the file's own place. After
    /// a crash, recovery puts nothing over such an entry; a file it brings
    /// back to the name goes beside it.
    pub kept: bool,
    /// For a kept entry, where the file went ([`Place`]): once a listing
    /// naming the same version there is on `happy` mirrors, the kept name
    /// can go, even after a crash ended the mount that kept it.
    pub moved_to: Option<Place>,
    /// For a file renamed here from another directory, that place and the
    /// newest version of that directory's listing from before the move: a
    /// listing of it no newer still names the file there, a name the move
    /// left that the mount may drop once this entry is on `happy` mirrors.
    pub moved_from: Option<(Place, u64)>,
}

/// Where a file renamed away went, as a kept entry records it (or where
/// one came from): the directory, and the name in it, each as a tag keyed
/// under the tree's root ([`crate::crypto::PlaceKey`]: the entry's
/// readers learn neither), 16 bytes apiece.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Place {
    /// The destination directory's tag ([`Place::dir_tag`]).
    pub dir: [u8; 16],
    /// The destination's tag: the directory and the name together.
    pub name: [u8; 16],
}

impl Place {
    /// The place `name` in the directory whose slot key is `dir`.
    pub fn of(key: &PlaceKey, dir: &[u8; 32], name: &str) -> Place {
        Place {
            dir: Self::dir_tag(key, dir),
            name: Self::name_tag(key, dir, name),
        }
    }

    /// The tag of the directory whose slot key is `dir`.
    pub fn dir_tag(key: &PlaceKey, dir: &[u8; 32]) -> [u8; 16] {
        key.tag(&[PLACE_DIR_DOMAIN, dir])
    }

    /// The tag of `name` in the directory whose slot key is `dir`.
    pub fn name_tag(key: &PlaceKey, dir: &[u8; 32], name: &str) -> [u8; 16] {
        key.tag(&[PLACE_NAME_DOMAIN, dir, name.as_bytes()])
    }

    fn to_bytes(self) -> Vec<u8> {
        [self.dir, self.name].concat()
    }

    fn from_bytes(b: &[u8]) -> Option<Place> {
        let (dir, name) = b.split_at_checked(16)?;
        Some(Place {
            dir: dir.try_into().ok()?,
            name: name.try_into().ok()?,
        })
    }
}

const PLACE_DIR_DOMAIN: &[u8] = b"lode moved-to dir v1\0";
const PLACE_NAME_DOMAIN: &[u8] = b"lode moved-to name v1\0";

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
            kept: false,
            moved_to: None,
            moved_from: None,
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
        if seed.len() != 32 {
            return Err(bad("sealed write-cap has the wrong length"));
        }
        // Wiped like the buffer it came from, not left in a plain array.
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&seed);
        let child = DirWriteCap {
            seed: SlotSeed::from_bytes(*bytes),
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
    /// The pages this listing was read from, in order (empty for a listing
    /// stored whole). Their shares are part of the directory: checks and
    /// lease renewals must reach them.
    pub pages: Vec<FileReadCap>,
    /// Read from an index and not yet filled from its pages: `entries` and
    /// `links` are empty, and must not be written back as they are.
    pending: bool,
    /// The directory's own attributes: only in the root listing of a
    /// tree, whose attributes no parent's entry holds. Every other
    /// directory's are in its entry in its parent.
    pub this: Option<DirAttrs>,
    /// Where this directory lives: its parent's read-cap, sealed under the
    /// tree's root (see [`Home`]). A name of this directory anywhere else
    /// is stale, left by a move that did not finish (docs/ARCHITECTURE.md,
    /// "A moved directory names its new parent"). `None` in listings
    /// written before the field, and in roots.
    pub home: Option<Home>,
}

/// A directory's parent, sealed so that only the tree's owner (a holder of
/// the root write-cap) can open it: a friend who reads one directory
/// learns nothing of the directories above it. The seal is bound to the
/// directory's own key, so it cannot be moved to another listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home(Vec<u8>);

const HOME_CONTEXT: &[u8] = b"lode directory home v1";
/// A sealed home is a read-cap string and a tag; anything longer is refused.
const HOME_MAX_BYTES: usize = 512;

impl Home {
    /// `parent`, as the home of the directory `child`, in the tree whose
    /// root is `root`.
    pub fn seal(root: &DirWriteCap, child: &DirReadCap, parent: &DirReadCap) -> Home {
        let parent = Cap::DirRead(parent.clone()).to_string();
        Home(
            root.seed
                .home_seal_key()
                .seal(&[HOME_CONTEXT, &child.public_key], parent.as_bytes()),
        )
    }

    /// The parent this home names, if it was sealed for `child` under
    /// `root` (`None` for another tree's, or a forged one).
    pub fn open(&self, root: &DirWriteCap, child: &DirReadCap) -> Option<DirReadCap> {
        let plain = root
            .seed
            .home_seal_key()
            .open(&[HOME_CONTEXT, &child.public_key], &self.0)
            .ok()?;
        match std::str::from_utf8(&plain).ok()?.parse::<Cap>().ok()? {
            Cap::DirRead(parent) => Some(parent),
            _ => None,
        }
    }
}

fn home_from_wire(bytes: Option<ByteBuf>) -> Result<Option<Home>> {
    match bytes {
        Some(b) if b.len() > HOME_MAX_BYTES => Err(Error::Malformed(format!(
            "a home is at most {HOME_MAX_BYTES} bytes"
        ))),
        b => Ok(b.map(|b| Home(b.into_vec()))),
    }
}

fn home_to_wire(home: Option<&Home>) -> Option<ByteBuf> {
    home.map(|h| ByteBuf::from(h.0.clone()))
}

/// A directory's own mode, owner and times (see [`Listing::this`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirAttrs {
    pub mode: u32,
    pub owner: (u32, u32),
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

#[derive(Serialize, Deserialize)]
struct WireAttrs {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: (i64, u32),
    mtime: (i64, u32),
    ctime: (i64, u32),
}

fn attrs_to_wire(a: &DirAttrs) -> WireAttrs {
    WireAttrs {
        mode: a.mode,
        uid: a.owner.0,
        gid: a.owner.1,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
    }
}

fn attrs_from_wire(w: WireAttrs) -> Result<DirAttrs> {
    if [w.atime, w.mtime, w.ctime]
        .iter()
        .any(|t| t.1 >= 1_000_000_000)
    {
        return Err(Error::Malformed(
            "directory attributes: nanoseconds out of range".into(),
        ));
    }
    if w.mode & !0o7777 != 0 {
        return Err(Error::Malformed(
            "directory attributes: mode has more than permission bits".into(),
        ));
    }
    Ok(DirAttrs {
        mode: w.mode,
        owner: (w.uid, w.gid),
        atime: w.atime,
        mtime: w.mtime,
        ctime: w.ctime,
    })
}

/// How a listing goes into its slot.
pub enum Encoded {
    /// The listing's plaintext, whole.
    Whole(Vec<u8>),
    /// The plaintexts of its pages, in order: store each as a file, then
    /// seal [`Listing::encode_index`] of their caps.
    Pages(Vec<Vec<u8>>),
}

#[derive(Serialize, Deserialize)]
struct WireListing {
    v: u8,
    #[serde(default)]
    entries: BTreeMap<String, WireEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    links: BTreeMap<String, WireEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pages: Vec<String>,
    /// Optional, added without a version bump: readers of every version
    /// ignore fields they do not know (docs/FORMATS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    this: Option<WireAttrs>,
    /// Optional, added without a version bump like `this`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    home: Option<ByteBuf>,
}

/// Which of `count` pages holds the entry named `key` (a name, or the hex
/// of a link id).
pub(crate) fn page_of(key: &str, count: usize) -> usize {
    use sha2::Digest;
    let h = sha2::Sha256::new()
        .chain_update(PAGE_HASH_DOMAIN)
        .chain_update(key.as_bytes())
        .finalize();
    let n = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    (n % count as u64) as usize
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
fn is_false(b: &bool) -> bool {
    !*b
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
    /// Optional, added without a version bump (see `WireListing::this`).
    #[serde(default, skip_serializing_if = "is_false")]
    kept: bool,
    /// Optional, as `kept`: a kept entry's `Place`, 32 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    moved_to: Option<ByteBuf>,
    /// Optional, as `kept`: `Place` then the version, big-endian: 40 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    moved_from: Option<ByteBuf>,
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
        kept: e.kept,
        moved_to: e.moved_to.map(|p| ByteBuf::from(p.to_bytes())),
        moved_from: e.moved_from.map(|(p, seq)| {
            let mut b = p.to_bytes();
            b.extend_from_slice(&seq.to_be_bytes());
            ByteBuf::from(b)
        }),
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
    // Only a kept file's counts; on anything else it is left out, not
    // refused: an entry refused makes its whole directory unreadable,
    // while a place lost only keeps a name longer.
    let moved_to = w
        .moved_to
        .filter(|_| w.kept && w.kind == EntryKind::File)
        .and_then(|b| Place::from_bytes(&b));
    let moved_from = w
        .moved_from
        .filter(|_| !w.kept && w.kind == EntryKind::File)
        .and_then(|b| {
            let (place, seq) = b.split_at_checked(32)?;
            Some((
                Place::from_bytes(place)?,
                u64::from_be_bytes(seq.try_into().ok()?),
            ))
        });
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
        kept: w.kept,
        moved_to,
        moved_from,
    })
}

impl Listing {
    /// The whole listing's plaintext (version 2: no pages).
    pub fn encode(&self) -> Vec<u8> {
        // Written back as it is, a pending listing would empty the
        // directory: a bug to stop here, loudly.
        assert!(
            !self.pending,
            "a listing waiting for its pages is never encoded"
        );
        let wire = WireListing {
            v: WHOLE_LISTING_VERSION,
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
            pages: Vec::new(),
            this: self.this.as_ref().map(attrs_to_wire),
            home: home_to_wire(self.home.as_ref()),
        };
        serde_cbor::to_vec(&wire).expect("listing always serializes")
    }

    /// The listing whole if its plaintext is at most `page_bytes`, else
    /// split into pages of about `page_bytes` or less each. Entries go to
    /// pages by a hash of their names, and the page count is a power of
    /// two, so a change to one entry changes one page and the rest are
    /// stored again as the same files (convergent encryption), until the
    /// directory doubles in size.
    pub fn paginate(&self, page_bytes: usize) -> Result<Encoded> {
        self.paginate_within(page_bytes, MAX_PAGE_BYTES)
    }

    /// [`Self::paginate`], with pages of at most `max_page` bytes where
    /// names crowd one page.
    fn paginate_within(&self, page_bytes: usize, max_page: usize) -> Result<Encoded> {
        if self.pending {
            return Err(Error::Pending);
        }
        let whole = self.encode();
        if whole.len() <= page_bytes.max(1) {
            return Ok(Encoded::Whole(whole));
        }
        let mut count = whole.len().div_ceil(page_bytes.max(1)).next_power_of_two();
        loop {
            let pages = self.pages_of(count);
            // Names chosen to hash alike could crowd one page past what a
            // reader takes; more pages split them, as long as the index
            // can grow (past that, the index is too large to publish).
            let crowded = pages.iter().any(|p| p.len() > max_page);
            if !crowded || count >= MAX_PAGES {
                return Ok(Encoded::Pages(pages));
            }
            count *= 2;
        }
    }

    /// The listing's entries and links cut into `count` pages, encoded.
    fn pages_of(&self, count: usize) -> Vec<Vec<u8>> {
        let mut pages: Vec<WireListing> = (0..count)
            .map(|_| WireListing {
                v: LISTING_VERSION,
                entries: BTreeMap::new(),
                links: BTreeMap::new(),
                pages: Vec::new(),
                this: None,
                home: None,
            })
            .collect();
        for (name, e) in &self.entries {
            pages[page_of(name, count)]
                .entries
                .insert(name.clone(), to_wire(e));
        }
        for (id, e) in &self.links {
            let key = crate::protocol::hex(id);
            pages[page_of(&key, count)].links.insert(key, to_wire(e));
        }
        pages
            .iter()
            .map(|p| serde_cbor::to_vec(p).expect("listing page always serializes"))
            .collect()
    }

    /// The plaintext of an index naming `pages` (see [`Self::paginate`]),
    /// with the directory's own attributes and home, if it carries them.
    pub fn encode_index(
        pages: &[FileReadCap],
        this: Option<&DirAttrs>,
        home: Option<&Home>,
    ) -> Vec<u8> {
        let wire = WireListing {
            v: LISTING_VERSION,
            entries: BTreeMap::new(),
            links: BTreeMap::new(),
            pages: pages
                .iter()
                .map(|c| Cap::FileRead(c.clone()).to_string())
                .collect(),
            this: this.map(attrs_to_wire),
            home: home_to_wire(home),
        };
        serde_cbor::to_vec(&wire).expect("listing index always serializes")
    }

    /// Whether this listing still waits for its pages.
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// Decode and validate a listing. Rejects anything a well-behaved writer
    /// would not produce, including a plaintext write-cap. An index decodes
    /// to a pending listing, to be [`Self::fill`]ed.
    pub fn decode(bytes: &[u8]) -> Result<Listing> {
        let wire = decode_wire(bytes)?;
        if wire.pages.is_empty() {
            return from_wire_listing(wire);
        }
        if wire.v < 3 || !wire.entries.is_empty() || !wire.links.is_empty() {
            return Err(Error::Malformed(
                "a listing index holds pages and nothing else".into(),
            ));
        }
        let pages = wire
            .pages
            .iter()
            .map(|s| match s.parse::<Cap>()? {
                Cap::FileRead(f) => Ok(f),
                _ => Err(Error::Malformed("a listing page is a file read-cap".into())),
            })
            .collect::<Result<Vec<_>>>()?;
        check_pages(&pages)?;
        Ok(Listing {
            pages,
            pending: true,
            this: wire.this.map(attrs_from_wire).transpose()?,
            home: home_from_wire(wire.home)?,
            ..Listing::default()
        })
    }

    /// Fill a pending listing from the plaintexts of its pages, in order.
    /// Each page must hold exactly the names that hash to it.
    pub fn fill<P: AsRef<[u8]>>(&mut self, pages: &[P]) -> Result<()> {
        if !self.pending {
            return Ok(());
        }
        if pages.len() != self.pages.len() {
            return Err(Error::Malformed(format!(
                "{} listing pages for an index of {}",
                pages.len(),
                self.pages.len()
            )));
        }
        let count = pages.len();
        let mut entries = BTreeMap::new();
        let mut links = BTreeMap::new();
        for (i, bytes) in pages.iter().enumerate() {
            let page = open_page(i, count, bytes.as_ref())?;
            entries.extend(page.entries);
            links.extend(page.links);
        }
        self.entries = entries;
        self.links = links;
        self.pending = false;
        Ok(())
    }

    /// The entries and links of page `i` of this pending listing alone,
    /// checked as [`Self::fill`] checks it: for a reader that must get
    /// what it can from the pages it has (the lease keeper, when one page
    /// cannot be read), not for a listing to write back.
    pub fn page_entries(&self, i: usize, bytes: &[u8]) -> Result<Vec<Entry>> {
        let page = open_page(i, self.pages.len(), bytes)?;
        Ok(page
            .entries
            .into_values()
            .chain(page.links.into_values())
            .collect())
    }
}

/// Page `i` of `count`, decoded and checked: a page, holding only the
/// names that belong on it.
fn open_page(i: usize, count: usize, bytes: &[u8]) -> Result<Listing> {
    let wire = decode_wire(bytes)?;
    if wire.v < 3 || !wire.pages.is_empty() || wire.this.is_some() || wire.home.is_some() {
        return Err(Error::Malformed(format!("listing page {i} is not a page")));
    }
    let misplaced = wire
        .entries
        .keys()
        .chain(wire.links.keys())
        .find(|k| page_of(k, count) != i);
    if let Some(key) = misplaced {
        return Err(Error::BadEntry {
            name: key.clone(),
            reason: format!("found in listing page {i}, where it does not belong"),
        });
    }
    from_wire_listing(wire)
}

fn decode_wire(bytes: &[u8]) -> Result<WireListing> {
    let wire: WireListing =
        serde_cbor::from_slice(bytes).map_err(|e| Error::Malformed(e.to_string()))?;
    if !(OLDEST_LISTING_VERSION..=LISTING_VERSION).contains(&wire.v) {
        return Err(Error::ListingVersion(wire.v));
    }
    Ok(wire)
}

/// Check the entries and links of a whole listing or of one page.
fn from_wire_listing(wire: WireListing) -> Result<Listing> {
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
    Ok(Listing {
        entries,
        links,
        this: wire.this.map(attrs_from_wire).transpose()?,
        home: home_from_wire(wire.home)?,
        ..Listing::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ReadKey;

    /// A listing of `n` symlinks with `target_len`-byte targets, and one
    /// hard-link table entry.
    fn listing(n: usize, target_len: usize) -> Listing {
        let mut l = Listing::default();
        for i in 0..n {
            let target = format!("{i}-{}", "t".repeat(target_len));
            l.entries
                .insert(format!("name-{i}"), Entry::symlink(&target, (i as i64, 0)));
        }
        let id = [7; 16];
        let cap = FileReadCap {
            read_key: ReadKey::from_bytes([1; 32]),
            root: [2; 32],
            size: 3,
        };
        let mut linked = Entry::file(cap, 0o644, (0, 0));
        linked.link = Some(id);
        linked.nlink = 2;
        l.links.insert(id, linked);
        l
    }

    /// Stand-in caps for pages: the index only names them.
    fn caps(count: usize) -> Vec<FileReadCap> {
        (0..count)
            .map(|i| FileReadCap {
                read_key: ReadKey::from_bytes([i as u8; 32]),
                root: [i as u8 ^ 0xff; 32],
                size: i as u64,
            })
            .collect()
    }

    fn pages_of(l: &Listing, page_bytes: usize) -> Vec<Vec<u8>> {
        match l.paginate(page_bytes).unwrap() {
            Encoded::Pages(p) => p,
            Encoded::Whole(_) => panic!("expected pages"),
        }
    }

    #[test]
    fn a_small_listing_stays_whole() {
        let l = listing(3, 10);
        match l.paginate(1 << 20).unwrap() {
            Encoded::Whole(bytes) => assert_eq!(Listing::decode(&bytes).unwrap(), l),
            Encoded::Pages(_) => panic!("a small listing was paged"),
        }
    }

    #[test]
    fn a_paged_listing_reads_back_from_its_index_and_pages() {
        let l = listing(500, 100);
        let whole = l.encode().len();
        let pages = pages_of(&l, 8192);
        assert!(pages.len().is_power_of_two());
        assert!(pages.len() >= whole / 8192, "{} pages", pages.len());
        // Hashing spreads names evenly: no page far over its share.
        let largest = pages.iter().map(Vec::len).max().unwrap();
        assert!(largest < 2 * 8192, "a page of {largest} bytes");
        let index = Listing::encode_index(&caps(pages.len()), None, None);
        let mut read = Listing::decode(&index).unwrap();
        assert!(read.is_pending());
        assert!(read.entries.is_empty());
        assert_eq!(read.pages, caps(pages.len()));
        assert!(matches!(read.paginate(8192), Err(Error::Pending)));
        read.fill(&pages).unwrap();
        assert!(!read.is_pending());
        assert_eq!(read.entries, l.entries);
        assert_eq!(read.links, l.links);
    }

    /// An index naming what no writer makes, which would have a reader
    /// fetch or hold far more than a listing can be, is refused; one with
    /// empty pages named many times (a small listing in many pages) reads.
    #[test]
    fn an_index_naming_more_than_a_listing_can_hold_is_refused() {
        let decode =
            |caps: &[FileReadCap]| Listing::decode(&Listing::encode_index(caps, None, None));
        let page = |i: u32, size: u64| FileReadCap {
            read_key: ReadKey::from_bytes([1; 32]),
            root: crate::crypto::sha256(&i.to_le_bytes()),
            size,
        };
        let full = MAX_PAGE_BYTES as u64;
        assert!(
            decode(&[page(0, 1), page(1, 1), page(2, 1)]).is_err(),
            "3 pages"
        );
        assert!(
            decode(&[page(0, full + 1), page(1, 1)]).is_err(),
            "a page too big"
        );
        assert!(
            decode(&vec![page(0, full); 1024]).is_err(),
            "one page 1024 times"
        );
        assert!(
            decode(&vec![page(0, 100); 2]).is_err(),
            "a page with entries twice"
        );
        let mut other_key = page(0, 10);
        other_key.read_key = ReadKey::from_bytes([2; 32]);
        assert!(
            decode(&[page(0, 10), other_key]).is_err(),
            "one root, two keys"
        );
        let many: Vec<FileReadCap> = (0..128).map(|i| page(i, full)).collect();
        assert!(decode(&many).is_err(), "2 GiB of pages");
        let fits: Vec<FileReadCap> = (0..64).map(|i| page(i, full)).collect();
        assert!(decode(&fits).is_ok(), "1 GiB of pages");

        let l = listing(2, 10);
        let pages = pages_of(&l, 16);
        assert!(pages.len() >= 16, "{} pages", pages.len());
        let caps: Vec<FileReadCap> = pages
            .iter()
            .map(|p| FileReadCap {
                read_key: ReadKey::from_bytes(crate::crypto::sha256(p)),
                root: crate::crypto::sha256(p),
                size: p.len() as u64,
            })
            .collect();
        let mut read = Listing::decode(&Listing::encode_index(&caps, None, None)).unwrap();
        read.fill(&pages).unwrap();
        assert_eq!(read.entries, l.entries);
    }

    /// An entry marked kept reads back kept; one without the mark (every
    /// listing written before it) reads back not kept, and its bytes do
    /// not carry the field.
    #[test]
    fn a_kept_entry_round_trips_and_the_mark_is_optional() {
        let mut l = listing(3, 10);
        let plain = l.encode();
        let name = l.entries.keys().next().unwrap().clone();
        l.entries.get_mut(&name).unwrap().kept = true;
        let marked = l.encode();
        let has = |bytes: &[u8]| bytes.windows(4).any(|w| w == b"kept");
        assert!(!has(&plain));
        assert!(has(&marked));
        let read = Listing::decode(&marked).unwrap();
        assert!(read.entries[&name].kept);
        assert_eq!(read.entries.values().filter(|e| e.kept).count(), 1);
        let read = Listing::decode(&plain).unwrap();
        assert!(read.entries.values().all(|e| !e.kept));
    }

    /// Where a kept file went reads back as written; the place is a
    /// different one for another name or another directory; on anything
    /// but a kept file it is dropped, not refused.
    #[test]
    fn a_kept_entry_carries_where_the_file_went() {
        let key = crate::store::Vault::fresh_dir().seed.place_key();
        let mut l = listing(3, 10);
        let name = "kept".to_string();
        let cap = FileReadCap {
            read_key: ReadKey::from_bytes([4; 32]),
            root: [5; 32],
            size: 6,
        };
        l.entries
            .insert(name.clone(), Entry::file(cap, 0o644, (0, 0)));
        let place = Place::of(&key, &[7; 32], "new name");
        assert_ne!(place, Place::of(&key, &[7; 32], "new name2"));
        assert_ne!(place, Place::of(&key, &[8; 32], "new name"));
        assert_eq!(place.dir, Place::of(&key, &[7; 32], "other").dir);
        let other = crate::store::Vault::fresh_dir().seed.place_key();
        assert_ne!(place, Place::of(&other, &[7; 32], "new name"), "keyed");
        let entry = l.entries.get_mut(&name).unwrap();
        entry.kept = true;
        entry.moved_to = Some(place);
        let read = Listing::decode(&l.encode()).unwrap();
        assert_eq!(read.entries[&name].moved_to, Some(place));
        // And where a file renamed here came from, on a plain entry.
        let entry = l.entries.get_mut(&name).unwrap();
        entry.kept = false;
        entry.moved_to = None;
        entry.moved_from = Some((place, 1 << 40 | 7));
        let read = Listing::decode(&l.encode()).unwrap();
        assert_eq!(read.entries[&name].moved_from, Some((place, 1 << 40 | 7)));
        let entry = l.entries.get_mut(&name).unwrap();
        entry.kept = true;
        entry.moved_to = Some(place);
        entry.moved_from = None;
        // On anything but a kept file it is left out, and the rest of the
        // listing reads as ever.
        l.entries.get_mut(&name).unwrap().kept = false;
        let symlink = l.entries.get_mut("name-0").unwrap();
        symlink.kept = true;
        symlink.moved_to = Some(place);
        let read = Listing::decode(&l.encode()).unwrap();
        assert_eq!(read.entries[&name].moved_to, None);
        assert_eq!(read.entries["name-0"].moved_to, None);
        assert!(read.entries["name-0"].kept);
        assert_eq!(read.entries.len(), l.entries.len());
    }

    /// The root's own attributes survive whole and paged listings, and a
    /// page that carries them is refused.
    #[test]
    fn a_directorys_own_attributes_round_trip() {
        let this = DirAttrs {
            mode: 0o700,
            owner: (1000, 100),
            atime: (-1, 500_000_000),
            mtime: (1_700_000_000, 5),
            ctime: (1_700_000_001, 0),
        };
        let mut l = listing(3, 10);
        l.this = Some(this);
        let Encoded::Whole(bytes) = l.paginate(1 << 20).unwrap() else {
            panic!("a small listing was paged")
        };
        assert_eq!(Listing::decode(&bytes).unwrap().this, Some(this));

        let mut l = listing(500, 100);
        l.this = Some(this);
        let pages = pages_of(&l, 8192);
        let index = Listing::encode_index(&caps(pages.len()), Some(&this), None);
        let mut read = Listing::decode(&index).unwrap();
        read.fill(&pages).unwrap();
        assert_eq!(
            read,
            Listing {
                pages: caps(pages.len()),
                ..l.clone()
            }
        );

        let mut odd = pages.clone();
        let mut wire: WireListing = serde_cbor::from_slice(&odd[0]).unwrap();
        wire.this = Some(attrs_to_wire(&this));
        odd[0] = serde_cbor::to_vec(&wire).unwrap();
        let err = Listing::decode(&index).unwrap().fill(&odd).unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{err}");

        let mut bad = attrs_to_wire(&this);
        bad.mtime.1 = 1_000_000_000;
        assert!(attrs_from_wire(bad).is_err());
    }

    #[test]
    fn one_changed_entry_changes_one_page() {
        let mut l = listing(500, 100);
        let before = pages_of(&l, 8192);
        l.entries
            .insert("name-17".into(), Entry::symlink("elsewhere", (1, 0)));
        let after = pages_of(&l, 8192);
        assert_eq!(before.len(), after.len());
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 1);
    }

    /// Names chosen to land in one page make more pages, until every page
    /// is within what a reader takes.
    #[test]
    fn names_crowding_one_page_make_more_pages() {
        let mut l = Listing::default();
        let crowded = (0..)
            .map(|i| format!("crowd-{i}"))
            .filter(|n| page_of(n, 4) == 0)
            .take(200);
        for name in crowded {
            l.entries
                .insert(name, Entry::symlink(&"x".repeat(100), (0, 0)));
        }
        let whole = l.encode().len();
        // Four pages by size, every name in the first: it needs splitting.
        let page_bytes = whole / 3;
        let Encoded::Pages(pages) = l.paginate_within(page_bytes, whole / 2).unwrap() else {
            panic!("expected pages")
        };
        assert!(pages.len() > 4, "{} pages", pages.len());
        assert!(pages.iter().all(|p| p.len() <= whole / 2));
        let mut read =
            Listing::decode(&Listing::encode_index(&caps(pages.len()), None, None)).unwrap();
        read.fill(&pages).unwrap();
        assert_eq!(read.entries, l.entries);
    }

    #[test]
    fn pages_out_of_place_or_missing_are_refused() {
        let l = listing(500, 100);
        let pages = pages_of(&l, 8192);
        let index = Listing::encode_index(&caps(pages.len()), None, None);
        let mut swapped = pages.clone();
        swapped.swap(0, 1);
        let err = Listing::decode(&index).unwrap().fill(&swapped).unwrap_err();
        assert!(matches!(err, Error::BadEntry { .. }), "{err}");
        let short = &pages[..pages.len() - 1];
        let err = Listing::decode(&index).unwrap().fill(short).unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{err}");
        // A page that is itself an index.
        let mut nested = pages.clone();
        nested[0] = Listing::encode_index(&caps(1), None, None);
        let err = Listing::decode(&index).unwrap().fill(&nested).unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{err}");
    }

    /// A listing's home survives whole and paged listings; only the tree's
    /// root opens it, and only for the directory it was sealed for; a page
    /// that carries one, or an oversized one, is refused.
    #[test]
    fn a_directorys_home_round_trips_and_opens_only_for_its_tree() {
        let dir = |b: u8| crate::caps::DirWriteCap {
            seed: SlotSeed::from_bytes([b; 32]),
        };
        let (root, other_root) = (dir(1), dir(2));
        let (child, parent) = (dir(3).read_cap(), dir(4).read_cap());
        let home = Home::seal(&root, &child, &parent);
        assert_eq!(home.open(&root, &child), Some(parent.clone()));
        assert_eq!(home.open(&other_root, &child), None);
        assert_eq!(home.open(&root, &dir(5).read_cap()), None);
        // Deterministic: republishing an unchanged directory changes nothing.
        assert_eq!(home, Home::seal(&root, &child, &parent));

        let mut l = listing(3, 10);
        l.home = Some(home.clone());
        let Encoded::Whole(bytes) = l.paginate(1 << 20).unwrap() else {
            panic!("a small listing was paged")
        };
        assert_eq!(Listing::decode(&bytes).unwrap().home, Some(home.clone()));
        assert_eq!(
            Listing::decode(&listing(3, 10).encode()).unwrap().home,
            None
        );

        let mut l = listing(500, 100);
        l.home = Some(home.clone());
        let pages = pages_of(&l, 8192);
        let index = Listing::encode_index(&caps(pages.len()), None, Some(&home));
        let mut read = Listing::decode(&index).unwrap();
        read.fill(&pages).unwrap();
        assert_eq!(read.home, Some(home.clone()));
        assert_eq!(read.entries, l.entries);

        let mut odd = pages.clone();
        let mut wire: WireListing = serde_cbor::from_slice(&odd[0]).unwrap();
        wire.home = home_to_wire(Some(&home));
        odd[0] = serde_cbor::to_vec(&wire).unwrap();
        let err = Listing::decode(&index).unwrap().fill(&odd).unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{err}");

        let mut wire: WireListing = serde_cbor::from_slice(&bytes).unwrap();
        wire.home = Some(ByteBuf::from(vec![7; HOME_MAX_BYTES + 1]));
        let long = serde_cbor::to_vec(&wire).unwrap();
        assert!(matches!(Listing::decode(&long), Err(Error::Malformed(_))));
    }

    #[test]
    fn an_index_holds_pages_and_nothing_else() {
        let wire = WireListing {
            v: LISTING_VERSION,
            entries: [("a".to_string(), to_wire(&Entry::symlink("b", (0, 0))))].into(),
            links: BTreeMap::new(),
            pages: vec![Cap::FileRead(caps(1).remove(0)).to_string()],
            this: None,
            home: None,
        };
        let bytes = serde_cbor::to_vec(&wire).unwrap();
        assert!(matches!(Listing::decode(&bytes), Err(Error::Malformed(_))));
        let wire = WireListing {
            v: 2,
            entries: BTreeMap::new(),
            links: BTreeMap::new(),
            pages: vec![Cap::FileRead(caps(1).remove(0)).to_string()],
            this: None,
            home: None,
        };
        let bytes = serde_cbor::to_vec(&wire).unwrap();
        assert!(matches!(Listing::decode(&bytes), Err(Error::Malformed(_))));
    }
}
