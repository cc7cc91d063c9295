//! The FUSE operations over the inode table and the vault.
//!
//! Locking: one mutex over the inode table, never held across network I/O
//! (fetches and uploads run on the tokio runtime with the lock released).
//! Every handler runs inside `catch_unwind`: a panic becomes EIO for that
//! request, is logged, and the mount lives on.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::early::{Earlies, Growing};
use super::notes;
use super::partial::{self, Partial};
use super::tree::{Body, FRIENDS, FRIENDS_NAME, MAX_REPLACES, Node, ROOT, Sent, Tree};
use super::{Error, Result, errno};
use crate::caps::{DirReadCap, FileReadCap};
use crate::dir::{EntryKind, Listing, check_name};
use crate::store::{Pieces, Space, Vault, now};

/// How long a refresh of a listed read-only directory (a friend's) waits
/// for a version before keeping the listing it has, until the next
/// interval. Slot reads answer in milliseconds, and with one mirror of
/// three hung, within the 2 s grace after the first answer.
const REFRESH_WAIT: Duration = Duration::from_secs(5);

/// How long the kernel may cache attributes and names. Our own tree changes
/// only through this mount, so the cache stays coherent; friends' trees
/// change remotely and are re-listed every `refresh`.
const TTL: Duration = Duration::from_secs(1);
/// How far ahead of a sequential reader chunks are fetched, at most.
const READAHEAD_BYTES: u64 = 32 << 20;
/// The first window, doubled at each top-up up to `READAHEAD_BYTES`: a
/// reader that stops after a few reads costs little.
const READAHEAD_FIRST: u64 = 8 << 20;
/// How far the reader may eat into the readahead before it is topped up.
const READAHEAD_STEP: u64 = 4 << 20;
/// Readahead fetches running at once, over all files: past it a reader
/// fetches what it reads, and tries again at its next read. A thumbnailer
/// reading the head of 200 large files must not start 200 fetches. A
/// sequential reader keeps several going (each top-up is about a chunk):
/// at 4, a cold 1 GiB read took 1.16-1.35 s against 1.07-1.16 s before
/// the bound; at 16, 1.07-1.33 s against 1.25-1.47 s (`/tmp/prof/rd.sh`,
/// alternating).
const READAHEAD_TASKS: usize = 16;
/// Files of any size uploaded side by side by one flush. Each may hold up
/// to the vault's upload window of shares in memory.
const UPLOAD_THREADS: usize = 8;
/// More uploads side by side for small files only, in a background
/// pass. A small file costs a few KiB and a round trip, and its shares go
/// to each mirror in batches with those of the others in flight: the more
/// in flight, the larger the batches (3,000 small files and a sync:
/// 4.2–4.5 s with 8 uploads in all, 2.7–2.9 s with 32; docs/PERFORMANCE.md,
/// run 12). The background keeps to these: it runs beside the writes
/// themselves and takes the CPU from them (with 96 in the background too,
/// the untar alone ran 8-9 % longer in two alternated bench runs, about
/// this host's noise).
const SMALL_UPLOAD_THREADS: usize = 24;
/// The same for a flush someone waits on (`lode sync`, fsync of a
/// directory, the unmount): 10,000 files of up to 8 KiB untarred and
/// synced took 6.8–7.3 s against 7.4–8.5 s with 32 uploads in all, and
/// the mirrors 15-18 % less CPU, committing fewer, larger batches
/// (docs/PERFORMANCE.md, "More small uploads side by side"). Batched
/// shares go to a mirror one batch at a time, but the requests that are
/// not batched (a failed batch's shares, resent alone; the placement
/// checks of a file over the inline size; every share, to a mirror that
/// takes no batches) can reach one per upload thread at once, and more
/// if a background pass runs beside: a mirror must take that many
/// connections from one address (its default takes 256).
const SYNC_SMALL_UPLOAD_THREADS: usize = 88;
/// Largest file those extra uploads take: every share of it fits a batch.
const SMALL_UPLOAD_BYTES: u64 = crate::protocol::MAX_BATCH_SHARE_BYTES as u64;
/// Uploads of one file a sync makes before it gives up on a file that
/// keeps changing under them (see `LodeFs::upload`).
const UPLOAD_TRIES: usize = 3;
/// Block size `statfs` counts in when the mirrors report limits.
const STATFS_BLOCK: u64 = 4096;
/// The most one `pwrite` puts into a staged copy: a FUSE write of 1 MiB
/// goes in as eight. The kernel sizes a file's page-cache folios by the
/// write, and on a VM whose balloon reports free memory back to its host
/// (free page reporting, which hands back free blocks of 2 MiB and more)
/// a 1 MiB folio is usually carved from memory the host must back anew:
/// copying into it cost 3.9-4.3 s of system time per GiB on this
/// project's test VMs, against 0.19 s in writes of 128 or 256 KiB
/// (docs/PERFORMANCE.md, "Large folios on a ballooned VM"). The extra
/// calls cost nothing measurable elsewhere.
const STAGE_WRITE_MAX: usize = 128 << 10;
/// The kernel's `__FMODE_EXEC`, which it leaves in the flags of a file
/// opened to run a program (`open_exec`); FUSE passes them on in open and
/// release.
const FMODE_EXEC: i32 = 0x20;

/// How the mount is set up.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Directory for staged file contents.
    pub staging: PathBuf,
    /// Friends' shares, by name.
    pub friends: Vec<(String, DirReadCap)>,
    /// How often friends' directories are re-listed.
    pub refresh: Duration,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of published files whose local copies are kept for reading.
    pub keep_bytes: u64,
    /// Inodes the table may hold before idle directories' entries are
    /// forgotten (see [`Tree::shed`]).
    pub max_inodes: usize,
}

/// An inode counted as open while a change without an open handle is
/// made (see `LodeFs::pin`). Dropped, the count goes (not under the tree's
/// lock: dropping takes it).
struct Pinned<'a> {
    fs: &'a LodeFs,
    ino: u64,
}

impl Pinned<'_> {
    /// Keep the count: the open it was taken for succeeded and owns it now
    /// (its release takes it back).
    fn into_open(self) {
        std::mem::forget(self);
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        let mut tree = self.fs.lock();
        if let Some(node) = tree.nodes.get_mut(&self.ino) {
            node.opens = node.opens.saturating_sub(1);
        }
        tree.drop_if_unused(self.ino);
    }
}

/// One file's readahead: where its last read ended, how far fetches have
/// been started, the window of the next, and the fetches running.
#[derive(Default)]
struct Stream {
    last_end: u64,
    fetched_to: u64,
    window: u64,
    fetches: Vec<tokio::task::AbortHandle>,
    /// Where the reader was at the last top-up.
    topped_at: u64,
    /// When it was last read.
    read_at: Option<Instant>,
    /// Its last read reached the end of the file.
    at_end: bool,
}

impl Stream {
    /// The range to fetch after a read of `len` at `offset` in a file of
    /// `size`, if any, counted as started. A read at 0 starts the stream
    /// afresh and fetches nothing: one read alone (`file`, a thumbnailer)
    /// is no stream. Each read where the last ended is sequential; the
    /// first of those fetches `READAHEAD_FIRST` ahead, and each top-up
    /// (once the reader is within the window less `READAHEAD_STEP` of its
    /// end) doubles it.
    fn plan(&mut self, size: u64, offset: u64, len: u64) -> Option<(u64, u64)> {
        let end = offset.saturating_add(len);
        let sequential = offset == self.last_end && offset > 0;
        self.pass(offset, len, size);
        if !sequential || self.at_end {
            return None;
        }
        self.window = self.window.clamp(READAHEAD_FIRST, READAHEAD_BYTES);
        if self.fetched_to >= end + self.window - READAHEAD_STEP {
            return None;
        }
        let from = self.fetched_to.max(end);
        // The file may have shrunk since the last fetch.
        let to = (end + self.window).min(size);
        if from >= to {
            return None;
        }
        self.fetched_to = to;
        self.window = (self.window * 2).min(READAHEAD_BYTES);
        Some((from, to))
    }

    /// Count a read of `len` at `offset` in a file of `size` and plan
    /// nothing.
    fn pass(&mut self, offset: u64, len: u64, size: u64) {
        self.at_end = offset.saturating_add(len) >= size;
        if offset == 0 {
            self.fetched_to = 0;
            self.topped_at = 0;
            self.window = READAHEAD_FIRST;
        }
        self.last_end = offset.saturating_add(len);
    }

    /// Being read in sequence now: topped up, read within `READING_SPAN`
    /// of `now`, and not to the end. Each such reader gets an even part
    /// of the chunk cache for its readahead.
    fn reading(&self, now: Instant) -> bool {
        self.fetched_to > 0
            && !self.at_end
            && self
                .read_at
                .is_some_and(|t| now.saturating_duration_since(t) < READING_SPAN)
    }
}

/// How recently a stream was read for its reader to count as reading
/// (see `Stream::reading`): a file read once in sequence and then left
/// open, or paused, took part of the cache from the others for good.
const READING_SPAN: Duration = Duration::from_secs(2);

/// The filesystem.
pub struct LodeFs {
    vault: Arc<Vault>,
    rt: tokio::runtime::Handle,
    tree: Arc<Mutex<Tree>>,
    /// Friends' directories under friends/, by name (changed by
    /// [`LodeFs::set_friends`]; locked after the tree, never before).
    friends: Mutex<BTreeMap<String, u64>>,
    config: MountConfig,
    next_fh: AtomicU64,
    stop: Arc<AtomicBool>,
    /// Staged files of an earlier mount that could not be put back in the
    /// tree at the start (their directories were unreadable): the flusher
    /// tries them again. A file leaves the list only once it is in the
    /// tree, so that `lode sync` and the backlog never miss one that a
    /// retry is placing.
    unadopted: Mutex<Vec<PathBuf>>,
    /// Held by the one retry of `unadopted` running at a time.
    retrying: Mutex<()>,
    /// Set once the first pass of recovery is over: kept names go
    /// (`Self::settle_kept`) only after, and only with nothing left to
    /// adopt, since recovery places staged files by the names it finds.
    recovered: AtomicBool,
    /// Kept local copies of published files, oldest first, and their bytes.
    kept: Mutex<Kept>,
    /// Unlinks the kept copies the budget evicts, off the evicting path.
    remover: Arc<super::remover::Remover>,
    /// Signalled whenever a directory publish ends.
    published: std::sync::Condvar,
    /// Per inode read from the mirrors: its readahead.
    readahead: Mutex<std::collections::HashMap<u64, Stream>>,
    /// Room for [`READAHEAD_TASKS`] fetches.
    readahead_room: Arc<tokio::sync::Semaphore>,
    /// Files being uploaded while they are written (see [`super::early`]).
    early: Earlies,
    /// Held by a write from its bytes landing in the staged copy to its
    /// size counted, and by an `O_TRUNC` open over its truncation and its
    /// size set: by inode (see [`LodeFs::staged_data`]).
    staged_data: super::locks::InodeLocks,
    /// Inodes (or directories above them) whose recovery notes could not
    /// be written: the flusher writes them again. A staged file with no
    /// note is taken by recovery for a cache, and removed.
    unnoted: Mutex<HashSet<u64>>,
    /// Files the background gave up uploading because they kept changing
    /// (opened for writing again meanwhile), with until when it leaves
    /// them be: each pass uploaded them whole again, to no end.
    kept_changing: Mutex<std::collections::HashMap<u64, Instant>>,
    /// The grid's room as last reported by the mirrors (`statfs`).
    space: Mutex<Option<Space>>,
    /// Held while recovery notes are written (see `note_staged`).
    noting: Mutex<()>,
    /// How the final flush at unmount (`destroy`) went, once it ran: its
    /// error's text, if any.
    final_flush: Mutex<Option<std::result::Result<(), String>>>,
    /// The background flusher's failures in a row, if its last try failed
    /// (for `lode status`).
    flush_failing: Mutex<Option<FlushFailing>>,
    /// Tells the kernel to forget names (a friend removed), once mounted.
    notifier: std::sync::OnceLock<fuser::Notifier>,
    /// Each open directory's names as its scan began (see [`Self::scan`]).
    scans: Mutex<std::collections::HashMap<u64, Scan>>,
    /// The partly staged copies (see [`super::partial`]), by path.
    partials: Mutex<std::collections::HashMap<PathBuf, Arc<Partial>>>,
}

/// Why the background flusher is not getting changes up, for `lode status`.
#[derive(Clone)]
pub struct FlushFailing {
    /// Failed tries in a row.
    pub tries: u32,
    /// The last one's error.
    pub error: String,
    /// When the first of them failed.
    pub since: std::time::SystemTime,
    /// When it tries next.
    pub next: Instant,
}

/// Kept local copies of published files: (inode, path, bytes), oldest
/// first, and their total.
#[derive(Default)]
struct Kept {
    queue: std::collections::VecDeque<(u64, PathBuf, u64)>,
    bytes: u64,
    /// When the staging disk was last found full and copies were dropped.
    made_room: Option<Instant>,
}

/// glibc keeps freed memory in its arenas: hand it back to the system, or
/// the mount's footprint stays at the peak of whatever it last did (shed
/// inodes, a read's buffers). The flusher calls this once a second: by
/// hand, the mount's RSS after a cold 1 GiB read and an untar of 10,000
/// files went from 186 to 135 MiB (docs/PERFORMANCE.md, run 13).
#[allow(unsafe_code)]
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only returns free heap pages
    // to the kernel, under the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A time as (seconds, nanoseconds) since the epoch, as a `timespec`
/// holds it: the seconds rounded down, the nanoseconds added (so half a
/// second before 1970 is (-1, 500,000,000)).
fn system_time((s, ns): (i64, u32)) -> SystemTime {
    let ns = Duration::from_nanos(u64::from(ns.min(999_999_999)));
    if s >= 0 {
        UNIX_EPOCH + Duration::from_secs(s as u64) + ns
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + ns
    }
}

/// A time the kernel set (utimensat), as fuser 0.18 hands it over, back
/// to (seconds, nanoseconds). fuser builds the `SystemTime` of a time
/// before 1970 as the epoch less |seconds| less the nanoseconds (its
/// `system_time_from_time`, marked TODO there), so -0.5 s, which the
/// kernel sends as (-1, 500,000,000), arrives as 1.5 s before the epoch.
/// Read the same way back, it gives the kernel's pair. (Its conversion the
/// other way, for replies, is right; [`system_time`] matches it.)
fn from_fuser_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let before = e.duration();
            (
                // 2^63 s before is i64::MIN; cast first, it wrapped, and
                // negated it saturated to the latest time there is.
                0i64.saturating_sub_unsigned(before.as_secs()),
                before.subsec_nanos(),
            )
        }
    }
}

fn name_of(name: &OsStr) -> Result<&str> {
    if name.len() > 255 {
        return Err(Error::NameTooLong);
    }
    let name = name.to_str().ok_or(Error::NotUtf8)?;
    check_name(name).map_err(|_| Error::BadName)?;
    Ok(name)
}

/// A name to look up: too long is ENAMETOOLONG, not UTF-8 cannot exist.
fn lookup_name(name: &OsStr) -> Result<&str> {
    if name.len() > 255 {
        return Err(Error::NameTooLong);
    }
    name.to_str().ok_or(Error::NotFound)
}

/// Answer a request that hands the kernel a new entry (and a lookup).
fn answer_entry(reply: ReplyEntry, result: Result<FileAttr>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Whether `e` is the staging disk being full (not a mirror's quota).
fn staging_full(e: &Error) -> bool {
    let io = match e {
        Error::Io(io) | Error::Store(crate::store::Error::Io(io)) => io,
        _ => return false,
    };
    io.raw_os_error() == Some(libc::ENOSPC) || io.kind() == std::io::ErrorKind::StorageFull
}

/// Run a handler, turning a panic into EIO.
fn guarded(op: &str, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        tracing::error!(op, "handler panicked; answered EIO");
    }
}

impl LodeFs {
    pub fn new(
        vault: Arc<Vault>,
        rt: tokio::runtime::Handle,
        config: MountConfig,
    ) -> std::io::Result<LodeFs> {
        std::fs::create_dir_all(&config.staging)?;
        let owner = (config.uid, config.gid);
        let mut tree = Tree::new(vault.root().clone(), owner);
        let remover = Arc::new(super::remover::Remover::default());
        tree.remover = Some(remover.clone());
        let mut friends = BTreeMap::new();
        for (name, cap) in &config.friends {
            friends.insert(name.clone(), Self::friend_node(&mut tree, name, cap, owner));
        }
        Ok(LodeFs {
            vault,
            rt,
            tree: Arc::new(Mutex::new(tree)),
            friends: Mutex::new(friends),
            config,
            next_fh: AtomicU64::new(1),
            stop: Arc::new(AtomicBool::new(false)),
            unadopted: Mutex::new(Vec::new()),
            retrying: Mutex::new(()),
            recovered: AtomicBool::new(false),
            kept: Mutex::new(Default::default()),
            remover,
            published: std::sync::Condvar::new(),
            readahead: Mutex::new(Default::default()),
            readahead_room: Arc::new(tokio::sync::Semaphore::new(READAHEAD_TASKS)),
            early: Earlies::default(),
            staged_data: Default::default(),
            unnoted: Mutex::new(HashSet::new()),
            kept_changing: Mutex::new(std::collections::HashMap::new()),
            space: Mutex::new(None),
            noting: Mutex::new(()),
            final_flush: Mutex::new(None),
            flush_failing: Mutex::new(None),
            notifier: std::sync::OnceLock::new(),
            scans: Mutex::new(Default::default()),
            partials: Mutex::new(Default::default()),
        })
    }

    /// List the root directory now (its own attributes come with it).
    pub fn load_root(&self) -> Result<()> {
        self.load(ROOT)
    }

    fn friend_node(tree: &mut Tree, name: &str, cap: &DirReadCap, owner: (u32, u32)) -> u64 {
        // Writable by its mode, as `friends/` (see `Tree::new`): writes
        // reach lode and get EROFS.
        let mut node = Node::new(
            FRIENDS,
            name,
            0o755,
            owner,
            Body::Dir {
                write: None,
                read: cap.clone(),
                children: None,
                loaded_at: None,
            },
        );
        node.foreign = true;
        tree.insert(node)
    }

    fn friends(&self) -> MutexGuard<'_, BTreeMap<String, u64>> {
        self.friends.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Show exactly `list` under friends/ from now on (`lode friend add`
    /// and `remove` tell a running mount through its control socket). A
    /// friend whose cap is unchanged keeps its inode and what was listed;
    /// a removed one (or one whose cap changed) leaves friends/ at once,
    /// and its inode goes once the kernel and open handles let go of it.
    /// Returns how many friends are shown.
    pub fn set_friends(&self, list: &[(String, DirReadCap)]) -> usize {
        let mut tree = self.lock();
        let mut friends = self.friends();
        let wanted: BTreeMap<&str, &DirReadCap> =
            list.iter().map(|(n, c)| (n.as_str(), c)).collect();
        let gone: Vec<(String, u64)> = friends
            .iter()
            .filter(|&(name, ino)| {
                let shown = tree.nodes.get(ino).and_then(|n| match &n.body {
                    Body::Dir { read, .. } => Some(read),
                    _ => None,
                });
                wanted.get(name.as_str()).copied() != shown
            })
            .map(|(n, &i)| (n.clone(), i))
            .collect();
        for &(ref name, ino) in &gone {
            friends.remove(name);
            // The friend's whole loaded tree goes: each inode now, or when
            // the kernel and open handles let go of it.
            let mut under = vec![ino];
            let mut i = 0;
            while let Some(&dir) = under.get(i) {
                under.extend(
                    tree.children(dir)
                        .into_iter()
                        .flat_map(|c| c.values().copied()),
                );
                i += 1;
            }
            for &ino in &under {
                if let Some(node) = tree.nodes.get_mut(&ino) {
                    node.orphan = true;
                }
            }
            for ino in under {
                tree.drop_if_unused(ino);
            }
        }
        let owner = (self.config.uid, self.config.gid);
        for (name, cap) in wanted {
            if !friends.contains_key(name) {
                let ino = Self::friend_node(&mut tree, name, cap, owner);
                friends.insert(name.to_string(), ino);
            }
        }
        let count = friends.len();
        drop((tree, friends));
        // The kernel would go on answering the old name from its cache
        // for the entry TTL.
        if let Some(notifier) = self.notifier.get() {
            for (name, _) in &gone {
                let _ = notifier.inval_entry(INodeNo(FRIENDS), OsStr::new(name));
            }
        }
        count
    }

    /// Hand the mount its session's notifier, once the kernel has it.
    pub fn set_notifier(&self, notifier: fuser::Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// What `statfs` reports from now on: the room the mirrors last
    /// reported, or `None` for no known bound.
    pub fn set_space(&self, space: Option<Space>) {
        *self.space.lock().unwrap_or_else(|p| p.into_inner()) = space;
    }

    fn lock(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unadopted(&self) -> MutexGuard<'_, Vec<PathBuf>> {
        self.unadopted.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attr(tree: &Tree, ino: u64, node: &Node) -> FileAttr {
        // A removed one, still held open or as a cwd: no name, no links
        // (a directory said 2).
        let nlink = if node.orphan {
            0
        } else if node.is_dir() {
            tree.dir_nlink(ino)
        } else {
            node.nlink
        };
        FileAttr {
            ino: INodeNo(ino),
            size: node.size,
            blocks: node.size.div_ceil(512),
            atime: system_time(node.atime),
            mtime: system_time(node.mtime),
            ctime: system_time(node.ctime),
            crtime: system_time(node.ctime),
            kind: file_type(node),
            perm: (node.mode & 0o7777) as u16,
            nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: match node.body {
                Body::Special { rdev, .. } => rdev,
                _ => 0,
            },
            blksize: 1 << 20,
            flags: 0,
        }
    }

    fn attr_of(&self, ino: u64) -> Result<FileAttr> {
        let (attr, local) = {
            let tree = self.lock();
            let node = tree.nodes.get(&ino).ok_or(Error::NotFound)?;
            (Self::attr(&tree, ino, node), local_copy(node))
        };
        Ok(self.local_blocks(attr, local))
    }

    /// The attributes of `ino` for an entry reply, which hands the kernel
    /// one more lookup on it.
    fn entry_attr(&self, ino: u64) -> Result<FileAttr> {
        let (attr, local) = {
            let mut tree = self.lock();
            let node = tree.nodes.get_mut(&ino).ok_or(Error::NotFound)?;
            node.lookups += 1;
            let node = &tree.nodes[&ino];
            (Self::attr(&tree, ino, node), local_copy(node))
        };
        Ok(self.local_blocks(attr, local))
    }

    /// List a directory if it has not been, or (read-only ones) if the
    /// listing is older than the refresh interval.
    fn load(&self, ino: u64) -> Result<()> {
        let (read, loaded, place) = {
            let tree = self.lock();
            let node = tree.nodes.get(&ino).ok_or(Error::NotFound)?;
            let place = (node.parent, node.name.clone());
            match &node.body {
                Body::Dir {
                    read,
                    children,
                    loaded_at,
                    ..
                } => {
                    // Read-only ones (friends', aliases) follow changes
                    // made elsewhere.
                    let stale = node.writable_dir().is_none()
                        && loaded_at.is_none_or(|t| t.elapsed() >= self.config.refresh);
                    if children.is_some() && !stale {
                        return Ok(());
                    }
                    (read.clone(), children.is_some(), place)
                }
                Body::Friends => return Ok(()),
                _ => return Err(Error::NotADirectory),
            }
        };
        // A refresh of a directory already listed fetches its pages only
        // if its version changed.
        let known = match loaded {
            true => self.lock().listed_seq.get(&ino).copied(),
            false => None,
        };
        // A refresh has a listing to fall back on: it does not wait for
        // mirrors that do not answer (all hung: the first `ls` after the
        // interval took 60-70 s, each level of a path 10 s more).
        let wait = loaded.then_some(REFRESH_WAIT);
        match self
            .rt
            .block_on(self.vault.list_unless_within(&read, known, wait))
        {
            Ok(Some((seq, listing))) => {
                // A name left by a move that did not finish (a crash between
                // its publishes): the directory lives where its listing
                // says, and this name goes, so that one directory never has
                // two (see docs/ARCHITECTURE.md, "A moved directory names
                // its new parent").
                let claimed = self.claimed_elsewhere(ino, &listing, &place);
                let stale = claimed.is_some_and(|(named_in, home)| {
                    self.rt
                        .block_on(self.vault.stale_name(&named_in, &home, &read))
                        // The mirrors may lag this mount's own changes: a
                        // home listed here must name it here too.
                        && !self.lock().listed_without(&home, &read)
                });
                let mut tree = self.lock();
                // Unless it was listed, or moved, meanwhile: the judgement
                // was about the name it had when its listing was read.
                if stale && Self::unlisted_at(&tree, ino, &place) {
                    let path = Self::path_in(&tree, ino).unwrap_or_default();
                    let (parent, name) = place;
                    tree.drop_stale(parent, &name, ino);
                    drop(tree);
                    tracing::warn!(
                        dir = %format!("/{path}"),
                        "dropped a stale name of a directory that moved elsewhere"
                    );
                    self.forget_name(parent, name);
                    return Err(Error::NotFound);
                }
                // Another thread may have listed it meanwhile: our own
                // directory, once listed, holds every change made since,
                // and a friend's may hold a newer version than this one.
                let ours_listed = tree.nodes.get(&ino).is_some_and(|n| {
                    n.writable_dir().is_some()
                        && matches!(
                            &n.body,
                            Body::Dir {
                                children: Some(_),
                                ..
                            }
                        )
                });
                let newer = tree.listed_seq.get(&ino).is_some_and(|&s| s > seq);
                if !ours_listed && !newer {
                    // Never two writable copies of one directory's listing
                    // (each publish would undo the other's changes): a
                    // second name of one already listed, which no home
                    // could settle, reads it but does not write.
                    let writes = tree.nodes.get(&ino).and_then(Node::writable_dir).is_some();
                    if let Some(other) = tree.listed_elsewhere(ino, &read).filter(|_| writes) {
                        let (here, there) = (
                            Self::path_in(&tree, ino).unwrap_or_default(),
                            Self::path_in(&tree, other).unwrap_or_default(),
                        );
                        tracing::warn!(
                            dir = %format!("/{here}"),
                            also = %format!("/{there}"),
                            "a directory named in two places is read-only under this name"
                        );
                        tree.make_alias(ino);
                    }
                    let replaced = tree.load(ino, listing);
                    if tree.nodes.contains_key(&ino) {
                        tree.listed_seq.insert(ino, seq);
                    }
                    drop(tree);
                    // New inodes for files open here in another version:
                    // the next lookup of those names must see them.
                    for name in replaced {
                        self.forget_name(ino, name);
                    }
                    self.settle_kept();
                }
            }
            Ok(None) => self.lock().still_current(ino),
            // A refresh that cannot reach the mirrors keeps what was
            // listed, and tries again a refresh interval later: each access
            // trying at once cost every `ls` of a friend's directory, and
            // every level of a path, the slot read's wait (10-30 s with
            // the mirrors hung).
            Err(e) if loaded => {
                tracing::debug!(ino, error = %e, "refresh failed");
                self.lock().still_current(ino);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// If `listing` (`ino`'s own, just read, and to be loaded) says the
    /// directory lives somewhere else than the directory it was reached
    /// through (`place`: that parent and the name there): the parent's
    /// read-cap and the home the listing names. Only for directories of
    /// our own tree not listed yet (a listed one holds every change since,
    /// including a move), still at `place`.
    fn claimed_elsewhere(
        &self,
        ino: u64,
        listing: &Listing,
        place: &(u64, String),
    ) -> Option<(DirReadCap, DirReadCap)> {
        if ino == ROOT {
            return None;
        }
        let tree = self.lock();
        if !Self::unlisted_at(&tree, ino, place) {
            return None;
        }
        let Body::Dir { read, .. } = &tree.nodes.get(&ino)?.body else {
            return None;
        };
        let Body::Dir { read: named_in, .. } = &tree.nodes.get(&place.0)?.body else {
            return None;
        };
        let home = listing.home.as_ref()?.open(self.vault.root(), read)?;
        (&home != named_in).then(|| (named_in.clone(), home))
    }

    /// Whether `ino` is a directory of our own, not listed yet, still named
    /// `place` (its parent and name).
    fn unlisted_at(tree: &Tree, ino: u64, place: &(u64, String)) -> bool {
        tree.nodes.get(&ino).is_some_and(|n| {
            n.parent == place.0
                && n.name == place.1
                && !n.orphan
                && matches!(
                    n.body,
                    Body::Dir {
                        write: Some(_),
                        children: None,
                        ..
                    }
                )
        })
    }

    /// Let go of names kept for files that went elsewhere (entries marked
    /// kept, left on the mirrors by a mount that crashed or unmounted
    /// before it republished their directories), once the file is named
    /// where it went, in the same version, by a listing on `happy` mirrors
    /// in a directory the root reaches through listings on `happy` mirrors
    /// too ([`Tree::kept_found`]). Of those, directories not known to be
    /// on `happy` mirrors (read from fewer: a mirror was away) are
    /// published again, which, once it reaches them all, lets the name go.
    /// Without this, a crash among renames left hundreds of files under
    /// two names for good (a crash sweep round: 40 to 150).
    fn settle_kept(&self) {
        if !self.recovered.load(Ordering::Acquire) || !self.unadopted().is_empty() {
            return;
        }
        let grid = self.vault.grid();
        let mut dropped = Vec::new();
        {
            let mut tree = self.lock();
            tree.stale_found();
            let found = tree.kept_found();
            if found.is_empty() {
                return;
            }
            let mut again = HashSet::new();
            for (dir, name, ino, there) in found {
                let mut settled = tree.reached(there);
                for d in tree.up_from(there) {
                    let Some(Body::Dir { read, .. }) = tree.nodes.get(&d).map(|n| &n.body) else {
                        settled = false;
                        continue;
                    };
                    if tree.dirty.contains(&d) || tree.publishing.contains(&d) {
                        settled = false;
                    } else if !grid.confirmed(&read.public_key) {
                        settled = false;
                        again.insert(d);
                    }
                }
                if settled {
                    dropped.push((dir, name, ino));
                }
            }
            for d in again {
                tree.dirty.insert(d);
            }
            for (dir, name, ino) in &dropped {
                tree.drop_kept(*dir, name, *ino);
            }
        }
        for (dir, name, _) in dropped {
            tracing::info!(
                dir,
                name,
                "dropped a name kept for a file now named where it went"
            );
            self.forget_name(dir, name);
        }
    }

    /// Drop the kernel's cached entry `name` in `parent`. From a thread of
    /// its own: the kernel takes the parent's lock for it, which the
    /// request being served may hold.
    fn forget_name(&self, parent: u64, name: String) {
        if let Some(notifier) = self.notifier.get().cloned() {
            std::thread::spawn(move || {
                let _ = notifier.inval_entry(INodeNo(parent), OsStr::new(&name));
            });
        }
    }

    fn child(&self, parent: u64, name: &str) -> Result<u64> {
        if parent == FRIENDS {
            return self.friends().get(name).copied().ok_or(Error::NotFound);
        }
        self.load(parent)?;
        if parent == ROOT && name == FRIENDS_NAME {
            return Ok(FRIENDS);
        }
        let tree = self.lock();
        tree.children(parent)
            .and_then(|c| c.get(name).copied())
            .ok_or(Error::NotFound)
    }

    /// [`Self::child`] for a lookup: a directory never listed is listed
    /// now, so that a stale name of one (see [`Self::claimed_elsewhere`]) is not
    /// found even once. Only that is an error here: a directory that cannot
    /// be listed now (the mirrors are away) is still found, as before.
    fn looked_up(&self, parent: u64, name: &str) -> Result<u64> {
        let ino = self.child(parent, name)?;
        let unlisted = matches!(
            self.lock().nodes.get(&ino).map(|n| &n.body),
            Some(Body::Dir { children: None, .. })
        );
        if unlisted && let Err(Error::NotFound) = self.load(ino) {
            return Err(Error::NotFound);
        }
        Ok(ino)
    }

    /// The directory `ino`, listed, or if it is an alias ([`Node::alias`])
    /// the inode that lists the same directory writably: where recovery
    /// puts what was staged under either name.
    fn unaliased(&self, ino: u64) -> Result<u64> {
        self.load(ino)?;
        let tree = self.lock();
        Ok(match tree.nodes.get(&ino) {
            Some(Node {
                alias: true,
                body: Body::Dir { read, .. },
                ..
            }) => tree.listed_elsewhere(ino, read).unwrap_or(ino),
            _ => ino,
        })
    }

    /// Check that `ino`, at `parent`, is a node this mount may change: an
    /// orphan by itself (no parent names it), anything else by its parent.
    ///
    /// An orphaned file no one holds open is reached only through a name
    /// the kernel still caches for up to its entry TTL, one lode dropped
    /// by itself (a kept name settled, a name a refresh removed): a write
    /// opened that way landed in a file nothing names and nothing uploads,
    /// and was lost at close. It is gone, as the name is.
    fn changeable(&self, ino: u64, parent: u64) -> Result<()> {
        let (orphan, foreign, unheld_file) = self
            .lock()
            .nodes
            .get(&ino)
            .map(|n| {
                let file = matches!(n.body, Body::File { .. });
                (n.orphan, n.foreign, file && n.opens == 0)
            })
            .ok_or(Error::NotFound)?;
        match (orphan, foreign) {
            (_, true) => Err(Error::ReadOnly),
            (true, false) if unheld_file => Err(Error::NotFound),
            (true, false) => Ok(()),
            (false, false) => self.writable(parent),
        }
    }

    /// Check that `parent` is a directory this mount may change, loaded.
    fn writable(&self, parent: u64) -> Result<()> {
        if parent == FRIENDS {
            return Err(Error::ReadOnly);
        }
        self.load(parent)?;
        let tree = self.lock();
        let node = tree.nodes.get(&parent).ok_or(Error::NotFound)?;
        match (&node.body, node.writable_dir()) {
            (Body::Dir { .. }, Some(_)) => Ok(()),
            (Body::Dir { .. }, None) => Err(Error::ReadOnly),
            _ => Err(Error::NotADirectory),
        }
    }

    fn staging_path(&self) -> PathBuf {
        self.config
            .staging
            .join(format!("{:016x}", rand::random::<u64>()))
    }

    /// Count `ino` as open until the returned pin is dropped.
    ///
    /// A change made with no open handle (a truncate by path, or the
    /// truncate of an opening `O_TRUNC`) stages the file, changes the copy,
    /// and only then counts the change under the tree's lock. A clean copy
    /// whose directory's publish completed in between became a kept cache,
    /// which the keep budget could evict (`evict_kept` passes over open
    /// files only): the change went to a removed file, the node was left
    /// with no copy, and the next change staged the old version again. The
    /// truncate was undone, silently, and stored (found by a black-box
    /// sweep with `-o keep=0` and `lode sync` in a loop).
    fn pin(&self, ino: u64) -> Result<Pinned<'_>> {
        let mut tree = self.lock();
        let node = tree.nodes.get_mut(&ino).ok_or(Error::NotFound)?;
        node.opens += 1;
        Ok(Pinned { fs: self, ino })
    }

    /// Make sure a file has a local staged copy, downloading its content
    /// unless it is about to be truncated.
    fn stage(&self, ino: u64, truncate: bool) -> Result<PathBuf> {
        let cap = {
            let mut tree = self.lock();
            match &mut tree.nodes.get_mut(&ino).ok_or(Error::NotFound)?.body {
                Body::File {
                    staged: Some(p),
                    cached,
                    ..
                } => {
                    let p = p.clone();
                    if !*cached {
                        return Ok(p);
                    }
                    drop(tree);
                    return self.reclaim_kept(ino, p, truncate);
                }
                Body::File { cap, .. } => cap.clone(),
                Body::Dir { .. } | Body::Friends => return Err(Error::IsADirectory),
                Body::Symlink(_) | Body::Special { .. } => return Err(Error::InvalidArgument),
            }
        };
        let path = self.staging_path();
        // A large file is staged partly: nothing is fetched now.
        if let (Some(cap), false) = (&cap, truncate)
            && cap.size >= partial::PARTLY_FROM
        {
            let started = (|| -> Result<Partial> {
                let file = std::fs::File::create(&path)?;
                file.set_len(cap.size)?;
                let partial = Partial::create(&path, cap.clone())?;
                // The length and the log's start must be on disk before
                // a note names the copy: recovery fills in what the log
                // says is missing, up to the copy's length.
                file.sync_all()?;
                partial.sync()?;
                Ok(partial)
            })();
            return match started {
                Ok(started) => self.staged_as(ino, path, Some(started)),
                Err(e) => {
                    partial::remove_staged(&path);
                    Err(e)
                }
            };
        }
        let fetched = self.with_room(|| {
            let file = std::fs::File::create(&path)?;
            if let (Some(cap), false) = (&cap, truncate) {
                // Holes stay holes: a sparse file is not filled in on disk.
                self.rt.block_on(self.vault.get_to_file(cap, &file))?;
                // The copy must be whole on disk before its note names it:
                // a power cut must not leave recovery a short copy to
                // publish over the good one. An empty start (a new or
                // truncated file) has nothing to lose, and an fsync per
                // create cost a device flush per file of an untar.
                file.sync_all()?;
            }
            Ok(())
        });
        if let Err(e) = fetched {
            // Nothing names it yet: it would sit there until the next
            // mount's recovery.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.staged_as(ino, path, None)
    }

    /// Make the new copy `path` (partly staged if `partial`) the staged
    /// copy of `ino`, unless another writer staged one meanwhile.
    fn staged_as(&self, ino: u64, path: PathBuf, partial: Option<Partial>) -> Result<PathBuf> {
        let mut tree = self.lock();
        match tree.nodes.get_mut(&ino).map(|n| &mut n.body) {
            Some(Body::File {
                staged: Some(existing),
                ..
            }) => {
                let existing = existing.clone();
                drop(tree);
                partial::remove_staged(&path);
                Ok(existing)
            }
            Some(Body::File { staged, .. }) => {
                *staged = Some(path.clone());
                if let Some(partial) = partial {
                    self.partials().insert(path.clone(), Arc::new(partial));
                }
                drop(tree);
                self.note_staged(ino);
                Ok(path)
            }
            _ => {
                partial::remove_staged(&path);
                Err(Error::NotFound)
            }
        }
    }

    /// [`with_local_blocks`], but not for a partly staged copy: what it
    /// lacks is no hole.
    fn local_blocks(&self, attr: FileAttr, local: Option<PathBuf>) -> FileAttr {
        with_local_blocks(attr, local.filter(|p| self.partial(p).is_none()))
    }

    fn partials(&self) -> MutexGuard<'_, std::collections::HashMap<PathBuf, Arc<Partial>>> {
        self.partials.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The staged copy `path`, if it is partly staged.
    fn partial(&self, path: &Path) -> Option<Arc<Partial>> {
        self.partials().get(path).cloned()
    }

    /// Remove a staged copy (a cache dropped, or data no longer wanted).
    fn remove_staged(&self, path: &Path) {
        self.partials().remove(path);
        partial::remove_staged(path);
    }

    /// `base`'s bytes in `[from, from + buf.len())`, into `buf`.
    fn fetch_base(&self, base: &FileReadCap, from: u64, buf: &mut [u8]) -> Result<()> {
        Ok(self.rt.block_on(self.vault.read_exact(base, from, buf))?)
    }

    /// Before a change of `[from, to)` to the partly staged copy `path`
    /// (under `partial.changing()`): fetch the blocks it covers only
    /// partly, and make them durable and held.
    fn fetch_for_change(&self, path: &Path, partial: &Partial, from: u64, to: u64) -> Result<()> {
        let wanted = partial.to_fetch(from, to);
        if wanted.is_empty() {
            return Ok(());
        }
        let base = partial.base();
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        for &(lo, hi) in &wanted {
            let mut buf = vec![0; (hi - lo) as usize];
            self.fetch_base(&base, lo, &mut buf)?;
            self.with_room(|| Ok(file.write_all_at(&buf, lo)?))?;
        }
        file.sync_data()?;
        for (lo, hi) in wanted {
            partial.hold(lo, hi)?;
        }
        Ok(())
    }

    /// After a change of `[from, to)` to the partly staged copy `path`:
    /// the blocks it covered wholly are the copy's now.
    fn changed_partly(&self, path: &Path, partial: &Partial, from: u64, to: u64) -> Result<()> {
        if partial.covers_absent(from, to) {
            std::fs::File::open(path)?.sync_data()?;
            partial.hold(from, to)?;
        }
        Ok(())
    }

    /// Set the staged copy `path`'s length (a truncate).
    fn set_staged_len(&self, path: &Path, len: u64) -> Result<()> {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        let Some(partial) = self.partial(path).filter(|p| len < p.base_len()) else {
            file.set_len(len)?;
            return Ok(());
        };
        let _changing = partial.changing();
        // The block the new end falls in keeps the base's bytes below it.
        self.fetch_for_change(path, &partial, len, len.next_multiple_of(partial::BLOCK))?;
        file.set_len(len)?;
        file.sync_all()?;
        partial.truncated(len)?;
        Ok(())
    }

    /// Make the kept copy `p` of `ino` (a cache of its published content)
    /// staged data again, about to change: it needs its recovery note, and
    /// first to be whole on disk. Its upload left it unsynced, and a power
    /// cut must not leave recovery a short copy to publish over the good
    /// one. If it was evicted or lost meanwhile, the file is staged afresh.
    fn reclaim_kept(&self, ino: u64, p: PathBuf, truncate: bool) -> Result<PathBuf> {
        let synced = std::fs::File::open(&p).and_then(|f| f.sync_all());
        let lost = match synced {
            Ok(()) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e.into()),
        };
        let mut tree = self.lock();
        if let Some(Body::File {
            staged: staged @ Some(_),
            cached,
            ..
        }) = tree.nodes.get_mut(&ino).map(|n| &mut n.body)
            && staged.as_ref() == Some(&p)
        {
            match (lost, std::mem::take(cached)) {
                // A lost cache: forget it.
                (true, true) => *staged = None,
                (false, note) => {
                    drop(tree);
                    if note {
                        self.note_staged(ino);
                    }
                    return Ok(p);
                }
                // Taken as staged data by another writer meanwhile.
                (true, false) => return Ok(p),
            }
        }
        drop(tree);
        self.stage(ino, truncate)
    }

    /// Upload a file's staged changes, then mark its directory for
    /// publishing. A no-op for clean files. When this returns Ok, the
    /// content the file had when it was called is on the mirrors, or a
    /// later one: an upload that a change overtook (a write while it read,
    /// by another handle, or a truncate by path) is made again, up to
    /// [`UPLOAD_TRIES`] times. It returned Ok with the file still dirty and
    /// nothing of it uploaded, so `lode sync` said synced while a file
    /// being appended to had none of its changes on the mirrors.
    fn upload(&self, ino: u64) -> Result<()> {
        for _ in 0..UPLOAD_TRIES {
            if self.upload_once(ino)? {
                return Ok(());
            }
        }
        let path = {
            let tree = self.lock();
            let staged = tree.nodes.get(&ino).and_then(local_copy);
            staged.map(|p| (Self::path_in(&tree, ino).unwrap_or_default(), p))
        };
        match path {
            Some((path, staged)) => {
                self.keep_staged(&staged);
                Err(Error::KeptChanging(path, UPLOAD_TRIES))
            }
            None => Ok(()), // gone meanwhile
        }
    }

    /// One upload of `ino`'s staged copy: false if a change overtook it
    /// (the file is still dirty, and this upload named nothing).
    fn upload_once(&self, ino: u64) -> Result<bool> {
        let (path, read_generation, early, base) = {
            let tree = self.lock();
            // Taken under the lock with the generation: a sealed early
            // upload holds every write that generation counts.
            let early = self.early.take(ino);
            // Unlinked and forgotten since the caller chose it: nothing
            // is left to upload.
            let Some(node) = tree.nodes.get(&ino) else {
                early.inspect(|e| e.spoil());
                return Ok(true);
            };
            match &node.body {
                // An orphan's data has no name left to publish it under.
                _ if node.orphan => {
                    early.inspect(|e| e.spoil());
                    return Ok(true);
                }
                Body::File {
                    staged: Some(p),
                    dirty: true,
                    generation,
                    cap,
                    ..
                } => {
                    let early = early.filter(|e| e.started());
                    early.as_ref().inspect(|e| {
                        e.seal();
                    });
                    (p.clone(), *generation, early, cap.clone())
                }
                _ => {
                    early.inspect(|e| e.spoil());
                    return Ok(true);
                }
            }
        };
        // The staged file is not fsynced first: once the upload below is
        // done its bytes are durable on the mirrors, and syncing a copy that
        // is about to be redundant wrote every byte to the local disk a
        // second time (a 1 GiB `dd conv=fsync` put 2.7 GB on the disk,
        // now 1.6). Only a file that stays staged, because its upload
        // failed, is made durable here (see `keep_staged` and `sync`).
        let early_cap = early
            .and_then(|e| e.take_task())
            .and_then(|task| match self.rt.block_on(task) {
                Ok(Ok(cap)) => Some(cap),
                Ok(Err(e)) => {
                    tracing::debug!(ino, error = %e, "early upload failed; uploading the whole file");
                    None
                }
                Err(e) => {
                    tracing::warn!(ino, error = %e, "early upload task failed");
                    None
                }
            });
        let cap = match early_cap {
            Some(cap) => cap,
            // The last upload's chunks that are still there go up as
            // they are: an edit reseals only what it touched.
            None => match self.put_staged(&path, base.as_ref()) {
                Ok(cap) => cap,
                // Unlinked while it was read (its staged copy may be gone
                // with it): no name is left to publish it under, so no
                // caller's sync waits for it.
                Err(_) if self.lock().nodes.get(&ino).is_none_or(|n| n.orphan) => return Ok(true),
                // Changed while it was read (a truncate moves the holes a
                // read of a sparse copy was taking): again, with what it
                // holds now.
                Err(_) if self.generation(ino) != Some(read_generation) => return Ok(false),
                Err(e) => {
                    self.keep_staged(&path);
                    return Err(e.into());
                }
            },
        };
        // A partly staged copy may take the upload for its base (below):
        // its log first says where the old base's bytes end, on disk, not
        // under the tree's lock.
        let partial = self.partial(&path);
        let rebasable = partial
            .as_ref()
            .is_some_and(|p| match p.bound_for(cap.size) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(ino, error = %e, "a partly staged copy keeps its base");
                    false
                }
            });
        let mut tree = self.lock();
        let Some(node) = tree.nodes.get_mut(&ino) else {
            return Ok(true); // unlinked meanwhile
        };
        if let Body::File {
            cap: c,
            dirty,
            generation,
            ..
        } = &mut node.body
        {
            // Only if nothing changed since the upload began reading: else
            // the file stays dirty, and `upload` makes it again. The
            // staged copy stays until the directory entry naming this
            // upload is published (see `publish`). (No write lands during
            // an fsync's upload: the kernel holds the inode's lock for
            // both.)
            if *generation != read_generation {
                tree.republish(ino);
                return Ok(false);
            }
            // What a partly staged copy lacks is the new version's too, at
            // the same places.
            if let Some(partial) = partial.filter(|_| rebasable) {
                partial.rebase(cap.clone());
            }
            node.size = cap.size;
            *c = Some(cap);
            *dirty = false;
        }
        tree.republish(ino);
        Ok(true)
    }

    /// The write generation of the file `ino`, if it is one.
    fn generation(&self, ino: u64) -> Option<u64> {
        match self.lock().nodes.get(&ino).map(|n| &n.body) {
            Some(Body::File { generation, .. }) => Some(*generation),
            _ => None,
        }
    }

    /// Upload the staged copy `path` of a file last uploaded as `base`:
    /// what a partly staged copy lacks is read from its own base.
    fn put_staged(
        &self,
        path: &Path,
        base: Option<&FileReadCap>,
    ) -> std::result::Result<FileReadCap, crate::store::Error> {
        let lacking = self
            .partial(path)
            .map(|p| (p.base(), p.absent(0, u64::MAX)))
            .filter(|(_, ranges)| !ranges.is_empty());
        let Some((from, ranges)) = lacking else {
            return self.rt.block_on(self.vault.put_path_over(path, base));
        };
        let (vault, rt, cap) = (self.vault.clone(), self.rt.clone(), from.clone());
        let read = Arc::new(move |at: u64, buf: &mut [u8]| -> std::io::Result<()> {
            rt.block_on(vault.read_exact(&cap, at, buf))
                .map_err(std::io::Error::other)
        });
        let absent = crate::store::Absent { ranges, read };
        self.rt
            .block_on(self.vault.put_partial(path, &from, absent))
    }

    /// Files with changes not yet safe on the mirrors, and their bytes.
    pub fn backlog(&self) -> (usize, u64) {
        let waiting = self.unadopted().iter().fold((0, 0), |(n, b), file| {
            (n + 1, b + std::fs::metadata(file).map_or(0, |m| m.len()))
        });
        let tree = self.lock();
        tree.nodes
            .values()
            .filter(|n| {
                matches!(
                    n.body,
                    Body::File {
                        staged: Some(_),
                        cached: false,
                        ..
                    }
                )
            })
            .fold(waiting, |(n, b), node| (n + 1, b + node.size))
    }

    /// Publish one directory's listing, after the listings of directories
    /// an entry of it moved into: each listing goes up whole, so were
    /// this one first, a crash (or a failed publish, then an unmount)
    /// between the two would leave the moved entry in neither.
    fn publish(&self, dir: u64) -> Result<()> {
        self.publish_ordered(dir, &mut Vec::new(), &mut HashSet::new(), false)?;
        // Only the old names' cleanup: this directory is safe either way.
        let _ = self.drop_ghosts(false);
        Ok(())
    }

    /// [`Self::publish`], with the directories on the way there in
    /// `visiting` (two directories that traded entries cannot both go
    /// first: a cycle is published in any order).
    /// In the `background`, a directory that must go first but waits its
    /// turn (too large, or paced: [`waits_its_turn`]) holds this one back
    /// until the next round, rather than being sent early.
    ///
    /// `owed`: directories on the way there that one published below had
    /// to go after (a cycle: it moved entries into them too). Such a
    /// directory is owed its publish at once: held back, by pacing or by
    /// a destination that kept changing, it left those entries in no
    /// listing (a helper's kill -9 sweep of moves among four directories
    /// lost files that way, about 1 round in 10).
    fn publish_ordered(
        &self,
        dir: u64,
        visiting: &mut Vec<u64>,
        owed: &mut HashSet<u64>,
        background: bool,
    ) -> Result<()> {
        visiting.push(dir);
        // How often each went up (or was tried) here. One still dirty after
        // that changed again meanwhile (an entry moved in while its listing
        // was on the way), or reached only some mirrors: it goes again, a
        // few times. Once only, this listing then went up without an
        // entry that the destination's published listing did not name
        // yet, and a crash before its next publish lost the entry (a
        // helper's kill -9 sweep of moves between four directories).
        let mut done: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        let mut held_back = false;
        // Held back for `HOLD_BACK_MAX` already: it goes up now, keeping
        // at their old names what moved out (`Tree::ghosts`).
        let mut overdue = false;
        loop {
            let first: Vec<u64> = {
                let mut guard = self.lock();
                let tree = &mut *guard;
                let Some(into) = tree.moved_into.get_mut(&dir) else {
                    break;
                };
                // Each destination, and the directories above it not yet
                // published since (a new one must be named before the
                // entry leaves its old place), deepest first.
                let mut first = Vec::new();
                into.retain(|&d| {
                    let mut chain = Vec::new();
                    let mut cur = d;
                    loop {
                        // This directory itself, reached from a
                        // destination below it (a new subdirectory): it
                        // goes after that one anyway. Taken for a cycle, it
                        // was owed its publish, so it was never held back,
                        // and the subdirectory stayed in `moved_into` for
                        // good, as a chain that never emptied.
                        if cur == dir && cur != d {
                            break;
                        }
                        // One dirty only to drop entries it kept
                        // (`Tree::ghosted`) holds nothing back: what left it
                        // stays listed there until named elsewhere. Counted
                        // as pending, every publish of it made it pending
                        // again, and a sync after a storm of renames spun
                        // for many minutes republishing directories.
                        let pending = (tree.dirty.contains(&cur) && !tree.ghosted.contains(&cur))
                            || tree.publishing.contains(&cur);
                        if pending {
                            chain.push(cur);
                        } else if cur != d {
                            break;
                        }
                        // One being published further up this call (a
                        // cycle) ends the chain: the directories above it
                        // go after it, not before this one. Climbing on
                        // published the root (which a directory had moved
                        // out of) before the directory it moved into.
                        if visiting.contains(&cur) {
                            break;
                        }
                        match tree.nodes.get(&cur) {
                            Some(n) if cur != ROOT => cur = n.parent,
                            _ => break,
                        }
                    }
                    let pending = !chain.is_empty();
                    for c in chain {
                        if visiting.contains(&c) {
                            owed.insert(c);
                            continue;
                        }
                        if done.get(&c).is_some_and(|&n| n >= PUBLISH_ROUNDS) {
                            held_back = true;
                        } else {
                            first.push(c);
                        }
                    }
                    pending
                });
                if into.is_empty() {
                    tree.moved_into.remove(&dir);
                }
                let now = Instant::now();
                if background
                    && !owed.contains(&dir)
                    && first.iter().any(|&d| waits_its_turn(tree, d, now))
                {
                    if !tree.hold_back(dir, now) {
                        overdue = true;
                        Vec::new()
                    } else {
                        visiting.pop();
                        return Ok(());
                    }
                } else {
                    first
                }
            };
            if first.is_empty() {
                break;
            }
            held_back = false;
            let mut seen = HashSet::new();
            for d in first {
                if !seen.insert(d) {
                    continue;
                }
                *done.entry(d).or_default() += 1;
                match self.publish_ordered(d, visiting, owed, background) {
                    // Short of `happy` but on some mirrors: this one may go
                    // up too, as it keeps what moved there until that
                    // reaches `happy` (`Tree::listing_sent`).
                    Ok(())
                    | Err(Error::Store(crate::store::Error::SlotNotHappy {
                        placed: 1.., ..
                    })) => {}
                    Err(e) => {
                        visiting.pop();
                        return Err(e);
                    }
                }
            }
        }
        visiting.pop();
        // A destination that kept changing: in the background this one
        // waits for the next round rather than go up without what moved
        // there; a sync publishes it, as the caller asked.
        // A destination busy for good (an untar into it) would hold this
        // one back as long, with its other changes: not past
        // `HOLD_BACK_MAX`.
        if held_back
            && background
            && !owed.contains(&dir)
            && !overdue
            && self.lock().hold_back(dir, Instant::now())
        {
            return Ok(());
        }
        self.lock().held_back.remove(&dir);
        self.publish_one(dir)
    }

    /// Publish again the directories that kept files renamed away at their
    /// old names (`Tree::ghosts`) whose new places are now published, so
    /// that the mirrors list those files under both names only briefly.
    /// The directories still waiting for that stay dirty for the flusher.
    /// In the `background`, as [`Self::publish_ordered`] there: a
    /// directory whose destinations wait their turn waits too.
    /// The first failure, if any: a sync reports it, as the mirrors still
    /// list a renamed file at its old name too.
    fn drop_ghosts(&self, background: bool) -> Option<Error> {
        let ready: Vec<u64> = {
            let tree = self.lock();
            let ready = |d: &&u64| tree.dirty.contains(*d) && !tree.ghosting(**d);
            tree.ghosted.iter().filter(ready).copied().collect()
        };
        let mut first = None;
        for dir in ready {
            // A failure leaves it dirty, for the next round.
            let walk = self.publish_ordered(dir, &mut Vec::new(), &mut HashSet::new(), background);
            if let Err(e) = walk {
                tracing::debug!(dir, error = %e, "a directory keeps files renamed away");
                first.get_or_insert(e);
            }
        }
        first
    }

    /// Publish one directory's listing.
    ///
    /// If another thread is publishing the same directory, wait for it
    /// first: a caller (fsync, `lode sync`) must not return while a listing
    /// with its change is still on the way.
    fn publish_one(&self, dir: u64) -> Result<()> {
        let (outgoing, listing) = {
            let mut tree = self.lock();
            while tree.publishing.contains(&dir) {
                tree = self.published.wait(tree).unwrap_or_else(|p| p.into_inner());
            }
            match tree.take_listing(dir) {
                Some(taken) => taken,
                None => return Ok(()),
            }
        };
        let started = Instant::now();
        let mut attempt = None;
        // A panic on the way must still reach `listing_sent` below: the
        // directory stayed marked as publishing, and every later sync,
        // fsync and final flush of it waited for good.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.rt.block_on(self.vault.replace_dir(
                &outgoing.write,
                listing,
                outgoing.known,
                &mut attempt,
            ))
        }))
        .unwrap_or_else(|_| {
            Err(crate::store::Error::Io(std::io::Error::other(
                "publishing the listing panicked (a bug: see the log)",
            )))
        });
        {
            let mut tree = self.lock();
            let sent = match &result {
                Ok(_) => Sent::Published,
                Err(crate::store::Error::SlotNotHappy { placed: 1.., .. }) => Sent::Partly,
                Err(crate::store::Error::DirectoryTooLarge { .. }) => Sent::Refused,
                Err(_) => Sent::Failed,
            };
            tree.listing_sent(&outgoing, attempt, sent);
            match &result {
                Ok(_) => {
                    // Nine times what this one took, before the background
                    // publishes it again: unpacking into a directory of
                    // 50,000 entries would otherwise spend most of a core
                    // republishing it every second.
                    let took = started.elapsed();
                    if took > PUBLISH_PACING_FROM {
                        let pause = (took * 9).min(PUBLISH_PAUSE_MAX);
                        tree.publish_after.insert(dir, Instant::now() + pause);
                    } else {
                        tree.publish_after.remove(&dir);
                    }
                }
                Err(e @ crate::store::Error::DirectoryTooLarge { .. }) => {
                    // Logged once for each size it is refused at.
                    let entries = outgoing.entries;
                    let refused = tree.too_large.insert(dir, (entries, Instant::now()));
                    if refused.map(|(n, _)| n) != Some(entries) {
                        let path = Self::path_in(&tree, dir).unwrap_or_default();
                        tracing::error!(dir = %format!("/{path}"), error = %e, "cannot publish");
                    }
                }
                Err(_) => {}
            }
        }
        self.published.notify_all();
        // Named by its path, which the user knows, not its slot key.
        let result = result.map_err(|e| match e {
            crate::store::Error::ChangedElsewhere { slot, theirs, ours } => {
                let path = Self::path_in(&self.lock(), dir);
                crate::store::Error::ChangedElsewhere {
                    slot: path.map_or(slot, |p| format!("/{p}")),
                    theirs,
                    ours,
                }
            }
            e => e,
        });
        result?;
        // Names given up before the listing was taken are gone from the
        // mirrors: the notes of files renamed away from them no longer
        // name them.
        let mut renamed = self
            .lock()
            .published_vacated(dir, outgoing.vacates, &outgoing.ghosts);
        renamed.sort_unstable();
        renamed.dedup();
        for ino in renamed {
            self.note_staged(ino);
        }
        // A removed directory stayed only for this publish.
        self.lock().drop_if_unused(dir);
        // Children whose upload this listing names are safe on the mirrors
        // now, if the directories above name this one (`Tree::anchored`);
        // and so are those of directories published earlier that waited
        // for this one. Their recovery notes go, and their staged copies
        // stay as a read cache within the keep budget.
        let mut tree = self.lock();
        let mut released = Vec::new();
        if tree.anchored(dir) {
            released.push(dir);
            let waited: Vec<u64> = tree.unanchored.iter().copied().collect();
            for d in waited {
                if !tree.nodes.contains_key(&d) {
                    tree.unanchored.remove(&d);
                } else if tree.anchored(d) {
                    tree.unanchored.remove(&d);
                    released.push(d);
                }
            }
        } else if tree.nodes.contains_key(&dir) {
            tree.unanchored.insert(dir);
        }
        // Only files whose current upload the directory's published
        // listing names: one uploaded since (while the listing was on its
        // way, or after an earlier publish of a directory that waited to
        // be anchored) is named by no listing yet. Its note went all the
        // same, and a kill -9 then lost the file (a helper's crash sweep:
        // tens of closed files in a round).
        let listed_here = |tree: &Tree, d: u64, ino: u64| {
            tree.nodes
                .get(&ino)
                .is_some_and(|n| match (&n.body, n.listed) {
                    (Body::File { cap: Some(c), .. }, Some((at, root))) => {
                        at == d && root == c.root
                    }
                    _ => false,
                })
        };
        let mut children: Vec<u64> = released
            .iter()
            .flat_map(|&d| {
                tree.children(d)
                    .map(|c| {
                        c.values()
                            .copied()
                            .filter(|&ino| listed_here(&tree, d, ino))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect();
        // A linked file is safe once both the root's link table (its
        // version) and a directory's listing (a name for it) are published:
        // whichever goes second releases it. It went with the root's table
        // alone, and a kill -9 before its directory went up left the file
        // in the table but under no name (a crash sweep of hard links and
        // renames lost several such files in every round).
        let linked = |tree: &Tree, ino: &u64| tree.nodes.get(ino).is_some_and(|n| n.link.is_some());
        let table_up = !tree.dirty.contains(&ROOT) && !tree.publishing.contains(&ROOT);
        children.retain(|i| !linked(&tree, i) || table_up);
        if released.contains(&ROOT) {
            let named = |ino: &u64| {
                tree.nodes
                    .get(ino)
                    .is_some_and(|n| match (&n.body, n.listed) {
                        (Body::File { cap: Some(c), .. }, Some((d, root))) => {
                            root == c.root && tree.anchored(d) && !tree.dirty.contains(&d)
                        }
                        _ => false,
                    })
            };
            children.extend(tree.links.values().copied().filter(named));
        }
        let mut kept = Vec::new();
        for ino in children {
            if let Some(Node {
                size,
                body:
                    // Open writers too (a file fsynced while open): their
                    // next write makes the copy staged data again, with
                    // a new note (see `stage`).
                    Body::File {
                        staged: Some(p),
                        dirty: false,
                        cap: Some(_),
                        cached: cached @ false,
                        ..
                    },
                ..
            }) = tree.nodes.get_mut(&ino)
            {
                *cached = true;
                notes::remove(p);
                kept.push((ino, p.clone(), *size));
            }
        }
        // Files changed again since the upload this listing names: their
        // notes now name it as the version their copies build on, so that
        // recovery after a crash takes the listing's entry for their own
        // (see `adopt`).
        let rebased: Vec<u64> = tree
            .children(dir)
            .into_iter()
            .flat_map(|c| c.values().copied())
            .filter(|ino| {
                tree.nodes.get(ino).is_some_and(|n| {
                    matches!(
                        n.body,
                        Body::File {
                            staged: Some(_),
                            dirty: true,
                            cap: Some(_),
                            cached: false,
                            ..
                        }
                    )
                })
            })
            .collect();
        drop(tree);
        for ino in rebased {
            self.note_staged(ino);
        }
        self.keep(kept);
        // Published on `happy` mirrors: a kept name that waited for this
        // one may go now.
        self.settle_kept();
        Ok(())
    }

    /// Remember kept copies, and evict the oldest beyond the budget.
    ///
    /// Each copy counts the room it takes on the staging disk, not its
    /// length: a partly staged copy (`partial.rs`) or a sparse file holds
    /// far less than it reads as, and counted at its length it pushed
    /// other copies out of the budget, and had the remover report room
    /// its removal would not free.
    fn keep(&self, copies: Vec<(u64, PathBuf, u64)>) {
        use std::os::unix::fs::MetadataExt;
        let copies: Vec<(u64, PathBuf, u64)> = copies
            .into_iter()
            .map(|(ino, path, len)| {
                let held = std::fs::metadata(&path).map_or(len, |m| m.blocks() * 512);
                (ino, path, held)
            })
            .collect();
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        {
            let tree = self.lock();
            for copy in copies {
                // Not one shed since it was published (`shed` removed it).
                let still = matches!(
                    tree.nodes.get(&copy.0),
                    Some(Node {
                        body: Body::File {
                            staged: Some(p),
                            cached: true,
                            ..
                        },
                        ..
                    }) if *p == copy.1
                );
                if still {
                    kept.bytes += copy.2;
                    kept.queue.push_back(copy);
                }
            }
        }
        let budget = self.keep_budget(&kept);
        // Unlinked later: this is the end of an upload, which an fsync
        // may be waiting for (see `remover.rs`).
        self.evict_kept(&mut kept, budget, false);
    }

    /// How many bytes of kept copies the staging disk can hold: the
    /// `keep` budget, less whatever would leave the disk with under a
    /// tenth of its size (at most [`KEEP_FREE_MAX`]) free. The copies are
    /// only a cache; new writes must not find the disk full of them.
    fn keep_budget(&self, kept: &Kept) -> u64 {
        let Ok(fs) = nix::sys::statvfs::statvfs(&self.config.staging) else {
            return self.config.keep_bytes;
        };
        let unit = fs.fragment_size();
        let size = fs.blocks() * unit;
        // Copies queued for removal free their room soon: counted free,
        // or a run of uploads each evicted again for the same shortfall.
        let free = (fs.blocks_available() * unit).saturating_add(self.remover.queued_bytes());
        let reserve = (size / 10).min(KEEP_FREE_MAX);
        let short = reserve.saturating_sub(free);
        self.config.keep_bytes.min(kept.bytes.saturating_sub(short))
    }

    /// The staging disk is full: drop every kept copy that is still only a
    /// cache. Returns the bytes freed.
    fn make_room(&self) -> u64 {
        // Copies the budget evicted are being removed: their room comes
        // first (the write that found the disk full while they were still
        // queued found nothing left to evict, and failed).
        let removed = self.remover.wait();
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        // Unlinked now: the write waiting for the room retries at once.
        let freed = self.evict_kept(&mut kept, 0, true);
        if freed > 0 || removed {
            kept.made_room = Some(Instant::now());
        }
        if freed > 0 {
            tracing::info!(
                bytes = freed,
                "staging disk full: dropped local copies of uploaded files"
            );
        }
        freed
    }

    /// Remove kept copies, oldest first, until they take at most `budget`
    /// bytes: `now`, or else by the remover. Returns the bytes of the files
    /// removed (or handed to the remover).
    fn evict_kept(&self, kept: &mut Kept, budget: u64, now: bool) -> u64 {
        let mut freed = 0;
        // Copies still a cache but open now: kept, and first in line once
        // closed. They left the queue for good, their files staying in
        // staging until unmount, uncounted by the budget and out of reach
        // of a write that found the disk full.
        let mut busy = Vec::new();
        while kept.bytes > budget {
            let Some((ino, path, size)) = kept.queue.pop_front() else {
                break;
            };
            kept.bytes = kept.bytes.saturating_sub(size);
            let mut tree = self.lock();
            let Some(node) = tree.nodes.get_mut(&ino) else {
                continue;
            };
            let idle = node.opens == 0 && node.execs == 0;
            match &mut node.body {
                Body::File {
                    staged: staged @ Some(_),
                    cached: true,
                    dirty: false,
                    writers,
                    ..
                } if staged.as_ref() == Some(&path) => {
                    if !idle || *writers > 0 {
                        busy.push((ino, path, size));
                        continue;
                    }
                    *staged = None;
                    drop(tree);
                    self.partials().remove(&path);
                    if !now {
                        self.remover.remove(path, size);
                        freed += size;
                    } else {
                        if std::fs::remove_file(&path).is_ok() {
                            freed += size;
                        }
                        let _ = std::fs::remove_file(partial::log_path(&path));
                    }
                }
                // Staged data again (changed since), or gone: no longer
                // this queue's.
                _ => {}
            }
        }
        for copy in busy.into_iter().rev() {
            kept.bytes += copy.2;
            kept.queue.push_front(copy);
        }
        freed
    }

    /// Run `write`, a write into the staging area; if the staging disk is
    /// full, make room by dropping kept copies, and try once more. (The
    /// kernel sends a large write as several requests at once: the first
    /// to find the disk full frees the room the others retry into.)
    fn with_room<T>(&self, write: impl Fn() -> Result<T>) -> Result<T> {
        match write() {
            Err(e) if staging_full(&e) => {
                self.make_room();
                // A removed copy's space comes back only once nothing has
                // it open (an upload of it may still be finishing): for a
                // while after room was made, here or by a write running
                // beside this one, wait for it. Otherwise, once more.
                let made_room = self
                    .kept
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .made_room
                    .is_some_and(|t| t.elapsed() < ROOM_WAIT);
                let deadline = Instant::now() + ROOM_WAIT;
                loop {
                    match write() {
                        Err(e) if staging_full(&e) && made_room && Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        done => return done,
                    }
                }
            }
            done => done,
        }
    }

    /// Remove every kept copy (at unmount: they are only a cache).
    pub fn drop_kept(&self) {
        // Evicted copies go first, and any evicted from here on go at once.
        self.remover.finish();
        let mut tree = self.lock();
        for node in tree.nodes.values_mut() {
            if let Body::File {
                staged: staged @ Some(_),
                cached: cached @ true,
                ..
            } = &mut node.body
                && let Some(p) = staged.take()
            {
                *cached = false;
                self.remove_staged(&p);
            }
        }
    }

    /// The path of an inode from the root, for recovery notes.
    fn path_in(tree: &Tree, mut ino: u64) -> Option<String> {
        let mut parts = Vec::new();
        while ino != ROOT {
            let node = tree.nodes.get(&ino)?;
            if node.parent == FRIENDS || ino == FRIENDS {
                return None;
            }
            parts.push(node.name.clone());
            ino = node.parent;
        }
        parts.reverse();
        Some(parts.join("/"))
    }

    /// Write (or refresh) the recovery note of every staged file under
    /// `top` (an inode, or a directory whose subtree moved): where the file
    /// belongs and its mode, so a crash cannot orphan staged data.
    fn note_staged(&self, top: u64) {
        self.note_staged_as(top, true);
    }

    /// [`Self::note_staged`] of a file just created, whose staged copy
    /// is new: it has no earlier note whose versions to carry
    /// (`carry_earlier_bases`), and looking cost every file of an untar
    /// a `getxattr` and an `open` that both failed.
    fn note_created(&self, ino: u64) {
        self.note_staged_as(ino, false);
    }

    fn note_staged_as(&self, top: u64, carry: bool) {
        // One writer at a time, from snapshot to disk: two racing writers
        // (a chown and a rename of the same file, say) could otherwise
        // land their notes in the other order, and recovery would follow
        // the older one.
        let _one = self.noting.lock().unwrap_or_else(|p| p.into_inner());
        let mut notes: Vec<(PathBuf, notes::Note)> = {
            let tree = self.lock();
            // Gone meanwhile (removed, or forgotten): no note to write.
            // It used to fall to the walk below, over every node.
            if !tree.nodes.contains_key(&top) {
                return;
            }
            // A kept copy of a published file is only a cache: a note on
            // it would have recovery publish it over newer content.
            let note_of = |ino: u64, node: &Node| match &node.body {
                Body::File {
                    staged: Some(p),
                    cached: false,
                    cap,
                    ..
                // A linked file with no home here (its name removed, the
                // others not listed: `Tree::unlink`) keeps the note it has:
                // a note with no path is one recovery cannot place.
                } if !node.orphan && !node.name.is_empty() => {
                    let path = Self::path_in(&tree, ino)?;
                    // Names it left that the mirrors may still list.
                    let left = tree
                        .left_by(ino)
                        .into_iter()
                        .filter_map(|(dir, name, root)| {
                            let dir = Self::path_in(&tree, dir)?;
                            let left = match dir.is_empty() {
                                true => name,
                                false => format!("{dir}/{name}"),
                            };
                            (left != path).then_some((left, root))
                        })
                        .collect();
                    let note = notes::Note {
                        path,
                        mode: node.mode,
                        owner: Some((node.uid, node.gid)),
                        base: cap
                            .as_ref()
                            .map_or(notes::Base::New, |c| notes::Base::Version(c.root)),
                        replaces: node.replaces.clone(),
                        left,
                        partial: self.partial(p).map(|partial| partial.base()),
                    };
                    Some((p.clone(), note))
                }
                _ => None,
            };
            match tree.nodes.get(&top) {
                // One file: just its note (the common case, on create).
                Some(node) if !node.is_dir() => note_of(top, node).into_iter().collect(),
                // A directory moved: every staged file below it (staged
                // first, which is cheap, then the walk up to `top`).
                _ => tree
                    .nodes
                    .iter()
                    .filter(|(_, node)| {
                        matches!(
                            node.body,
                            Body::File {
                                staged: Some(_),
                                ..
                            }
                        )
                    })
                    .filter(|&(&ino, _)| {
                        let mut cur = ino;
                        while cur != ROOT && cur != top {
                            cur = tree.nodes.get(&cur).map_or(ROOT, |n| n.parent);
                        }
                        cur == top || top == ROOT
                    })
                    .filter_map(|(&ino, node)| note_of(ino, node))
                    .collect(),
            }
        };
        // Written without the lock: this is disk I/O.
        let mut failed = false;
        for (staged, note) in &mut notes {
            if carry {
                carry_earlier_bases(staged, note);
            }
            if let Err(e) = notes::write(staged, note) {
                let path = &note.path;
                tracing::warn!(path, error = %e, "could not write a staging recovery note; will try again");
                failed = true;
            }
        }
        {
            let mut unnoted = self.unnoted.lock().unwrap_or_else(|p| p.into_inner());
            if failed {
                unnoted.insert(top);
            } else {
                unnoted.remove(&top);
            }
        }
        // A file unlinked (or uploaded and published) meanwhile must not
        // keep a note, or recovery would bring it back.
        let tree = self.lock();
        let candidates: Vec<&Node> = match tree.nodes.get(&top) {
            Some(node) if !node.is_dir() => vec![node],
            _ => tree.nodes.values().collect(),
        };
        let live: std::collections::HashSet<&PathBuf> = candidates
            .into_iter()
            .filter(|n| !n.orphan)
            .filter_map(|n| match &n.body {
                Body::File {
                    staged: Some(p),
                    cached: false,
                    ..
                } => Some(p),
                _ => None,
            })
            .collect();
        for (staged, _) in &notes {
            if !live.contains(staged) {
                notes::remove(staged);
            }
        }
    }

    /// What the staging directory holds now: call before the mount goes
    /// live, for [`Self::recover`].
    pub fn staged_before(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.config.staging)
            .map(|dir| dir.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Put staged files a previous mount left behind (it crashed, or the
    /// mirrors were down) back where they belong, as local changes: they
    /// show at once, read from staging, and the flusher uploads them and
    /// publishes their directories like any other write (many files, one
    /// publish per directory). Returns how many were adopted; a file that
    /// cannot be placed now (the mirrors hold its directory and are down)
    /// keeps its note, and the flusher tries it again (`retry_recovery`).
    /// `left` is what [`Self::staged_before`] found before the mount went
    /// live: this may run beside it, and a file it stages meanwhile is not
    /// an earlier mount's (taken for one, it would be put back beside
    /// itself as a copy).
    pub fn recover(&self, mut left: Vec<PathBuf>) -> Result<usize> {
        // The flusher's retries wait for this first pass.
        let _one = self.retrying.lock().unwrap_or_else(|p| p.into_inner());
        left_names_first(&mut left);
        let mut recovered = 0;
        let mut away = false;
        for file in left {
            // A partly staged copy's log goes with its data: adopted
            // with it, or dropped with a copy that was only a cache.
            if partial::is_log(&file) {
                let data = file.with_extension("");
                let whole = notes::read(&data).is_some_and(|n| n.partial.is_none());
                if !data.exists() || !notes::exists(&data) || whole {
                    let _ = std::fs::remove_file(&file);
                }
                continue;
            }
            if notes::is_note_file(&file) {
                // A note file half written, or whose data is gone.
                if file.extension().is_some_and(|e| e == "tmp") || !notes::data_of(&file).exists() {
                    let _ = std::fs::remove_file(&file);
                }
                continue;
            }
            // Without a note, a staged file is a kept copy of a published
            // file (or a copy never written to): only a cache, stale now.
            // With a note that cannot be read (damaged on disk: this mount
            // writes none such), the data may be someone's only copy: it
            // is set aside, not deleted.
            let Some(note) = notes::read(&file) else {
                if notes::exists(&file) {
                    self.set_aside(&file);
                } else {
                    let _ = std::fs::remove_file(&file);
                }
                continue;
            };
            // Once the mirrors are found away, the rest wait for the
            // flusher's next try: each would wait for them again (a mount
            // with two files staged and every mirror stopped took 70 s to
            // come up, past what `lode mount` waits for).
            if !away && self.adopted(&file, &note, &mut away) {
                recovered += 1;
            } else {
                self.unadopted().push(file);
            }
        }
        let left = self.unadopted().len();
        if left > 0 {
            tracing::warn!(
                left,
                "staged files stay staged until their directories can be read"
            );
        }
        self.recovered.store(true, Ordering::Release);
        self.settle_kept();
        Ok(recovered)
    }

    /// Move a staged file whose note cannot be read out of staging, into
    /// `unreadable-notes/` beside it, and say where.
    fn set_aside(&self, file: &Path) {
        let Some(name) = file.file_name() else { return };
        let aside = self.config.staging.with_file_name("unreadable-notes");
        let moved = std::fs::create_dir_all(&aside).and_then(|()| {
            let to = aside.join(name);
            std::fs::rename(file, &to)?;
            if let Ok(bytes) = std::fs::read(notes::note_file(file)) {
                std::fs::write(to.with_extension("note"), bytes)?;
                let _ = std::fs::remove_file(notes::note_file(file));
            }
            Ok(to)
        });
        match moved {
            Ok(to) => tracing::error!(
                kept = %to.display(),
                "a staged file's recovery note is unreadable; its data is set aside, not recovered"
            ),
            Err(e) => tracing::error!(
                file = %file.display(),
                error = %e,
                "a staged file's recovery note is unreadable, and it could not be set aside; left in staging"
            ),
        }
    }

    /// Try again to adopt what `recover` could not.
    /// One at a time: the flusher and `lode sync` both call this, and a
    /// second caller waits for the first to finish placing what it can.
    fn retry_recovery(&self) {
        let _one = self.retrying.lock().unwrap_or_else(|p| p.into_inner());
        let mut files = self.unadopted().clone();
        left_names_first(&mut files);
        let mut placed = std::collections::HashSet::new();
        let mut away = false;
        for file in files {
            let done = match notes::read(&file) {
                Some(_) if away => false,
                Some(note) => self.adopted(&file, &note, &mut away),
                // Its note went (the file was placed, or dropped).
                None => true,
            };
            if done {
                placed.insert(file);
            }
        }
        // Only now, once each is in the tree (after a crash there can be
        // thousands: one pass, not one per file).
        self.unadopted().retain(|f| !placed.contains(f));
        if !placed.is_empty() {
            drop(_one);
            self.settle_kept();
        }
    }

    /// Adopt the staged `file` noted for `note.path`; false if it cannot
    /// be placed yet (for the flusher to try again).
    /// (`away` is set if it failed because the mirrors did not answer.)
    fn adopted(&self, file: &Path, note: &notes::Note, away: &mut bool) -> bool {
        use crate::store::Error as S;
        let path = &note.path;
        let completed = match &note.partial {
            Some(base) => self.complete_partial(file, note, base),
            None => Ok(()),
        };
        if let Err(Error::Io(e)) = &completed
            && e.kind() == std::io::ErrorKind::InvalidData
        {
            tracing::error!(path, error = %e, "a partly staged file's log is damaged");
            self.set_aside(file);
            return true;
        }
        match completed.and_then(|()| self.adopt(file, note)) {
            Ok(ino) => {
                tracing::info!(path, "recovered a staged file");
                if !note.left.is_empty() {
                    self.drop_left_names(ino, note);
                }
                true
            }
            Err(e) => {
                tracing::debug!(path, error = %e, "a staged file cannot be placed yet");
                *away |= matches!(
                    e,
                    Error::Store(S::Unavailable { .. } | S::ListingUnavailable { .. })
                );
                false
            }
        }
    }

    /// Make the partly staged copy `staged` of `base`, left by a crashed
    /// mount, whole: fetch what its log says it lacks, make it durable,
    /// note it as whole, and only then drop the log. A note that says
    /// partly staged with no log beside it is damaged (the copy's holes
    /// would go up as zeros): an `InvalidData` error, for `adopted` to
    /// set the copy aside.
    fn complete_partial(
        &self,
        staged: &Path,
        note: &notes::Note,
        base: &FileReadCap,
    ) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let log = partial::log_path(staged);
        let lacking = Partial::open(staged, base.clone()).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "partly staged, and its fill log is gone",
            ),
            _ => e,
        })?;
        let file = std::fs::OpenOptions::new().write(true).open(staged)?;
        let meta = file.metadata()?;
        let len = meta.len();
        // What is fetched is made durable and held in the log every
        // `RECOVERY_CHECKPOINT`, and when a fetch fails: a copy of many
        // GiB whose recovery failed partway (a mirror away) started again
        // from its first byte at every try.
        let checkpoint = |from: u64, to: u64| -> Result<()> {
            file.sync_data()?;
            Ok(lacking.hold(from, to)?)
        };
        for (lo, hi) in lacking.absent(0, len) {
            let (mut at, mut held) = (lo, lo);
            while at < hi {
                let mut buf = vec![0; (hi - at).min(partial::BLOCK) as usize];
                let fetched = self
                    .fetch_base(base, at, &mut buf)
                    .and_then(|()| self.with_room(|| Ok(file.write_all_at(&buf, at)?)));
                if let Err(e) = fetched {
                    if at > held
                        && let Err(c) = checkpoint(held, at)
                    {
                        tracing::warn!(error = %c, "cannot keep the part of a recovery fetched");
                    }
                    return Err(e);
                }
                at += buf.len() as u64;
                if at - held >= RECOVERY_CHECKPOINT {
                    checkpoint(held, at)?;
                    held = at;
                }
            }
        }
        // Recovery takes the file's time from the copy's: the last
        // change's, not this fill's.
        let time = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
        nix::sys::stat::futimens(
            &file,
            &time(meta.atime(), meta.atime_nsec()),
            &time(meta.mtime(), meta.mtime_nsec()),
        )
        .map_err(std::io::Error::from)?;
        file.sync_all()?;
        let whole = notes::Note {
            partial: None,
            ..note.clone()
        };
        notes::write(staged, &whole)?;
        std::fs::remove_file(log)?;
        Ok(())
    }

    /// Link the staged file `staged` at `path` (making missing directories)
    /// as a file with unpublished changes. The published version the
    /// staged copy began from (`note.base`) is replaced there, as the
    /// crashed mount would have done: the staged data is the newer. If
    /// something else holds the name now (a directory, a symlink, another
    /// staged file, or another version of the file, published from
    /// another machine since), both are kept: the staged data goes beside
    /// it as `NAME.recovered-STAGED` (its staging file's name).
    fn adopt(&self, staged: &Path, note: &notes::Note) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let (path, mode) = (note.path.as_str(), note.mode);
        let (dirs, name) = path.rsplit_once('/').unwrap_or(("", path));
        check_name(name).map_err(|_| Error::BadName)?;
        // Directories made on the way belong to the mounting user; the
        // file to its owner when the note says (earlier notes do not).
        let owner = self.lock().owner;
        let file_owner = note.owner.unwrap_or(owner);
        let mut dir = ROOT;
        for part in dirs.split('/').filter(|p| !p.is_empty()) {
            check_name(part).map_err(|_| Error::BadName)?;
            let held = match self.child(dir, part) {
                Ok(ino) => self.unaliased(ino).map(Some),
                Err(Error::NotFound) => Ok(None),
                Err(e) => Err(e),
            };
            // A directory's name that holds a file or a symlink: the
            // crashed mount had removed it and made the directory there,
            // unpublished (the mirrors list only the old one). The file
            // goes under a directory beside it, `NAME.recovered`, one for
            // all the files recovered there (a file taken goes beside
            // itself as `NAME.recovered-STAGED`). Retried as it was, it
            // stayed staged and unseen for good, and every `lode sync`
            // failed.
            let part = match held {
                Err(Error::NotADirectory) => {
                    // Or, if that name is not a directory either, one of
                    // the file's own.
                    let shared = format!("{part}.recovered");
                    let taken = self
                        .child(dir, &shared)
                        .and_then(|ino| self.unaliased(ino))
                        .is_err_and(|e| matches!(e, Error::NotADirectory));
                    let aside = match taken {
                        false => shared,
                        true => format!(
                            "{shared}-{}",
                            staged.file_name().unwrap_or_default().to_string_lossy()
                        ),
                    };
                    tracing::warn!(
                        path,
                        kept_under = aside,
                        "a directory on the way is a file now; the staged file goes beside it"
                    );
                    std::borrow::Cow::Owned(aside)
                }
                Ok(Some(ino)) => {
                    dir = ino;
                    continue;
                }
                Ok(None) => std::borrow::Cow::Borrowed(part),
                Err(e) => return Err(e),
            };
            dir = match self.child(dir, &part) {
                Ok(ino) => self.unaliased(ino)?,
                Err(Error::NotFound) => {
                    // Never under a directory that does not publish (an
                    // alias, a friend's): the file would be named nowhere.
                    self.writable(dir)?;
                    // As a mkdir by the mounting user would be: a set-gid
                    // parent passes on its group and the bit.
                    let (owner, mode) = self.inherited(dir, owner, 0o755);
                    self.mkdir_local(dir, &part, mode, owner, 0)?.0
                }
                Err(e) => return Err(e),
            };
        }
        self.writable(dir)?;
        let own_upload = self.own_upload_at(dir, name, note, staged)?;
        let meta = std::fs::metadata(staged)?;
        let (mtime, ctime) = (
            (meta.mtime(), meta.mtime_nsec() as u32),
            (meta.ctime(), meta.ctime_nsec() as u32),
        );
        let mut tree = self.lock();
        // Shed since it was loaded above (see `Tree::shed`): try again
        // later rather than miss what it holds.
        let Some(children) = tree.children(dir) else {
            return Err(Error::NotFound);
        };
        let held = children.get(name).copied();
        // The published version the staged copy began from, at the path:
        // the staged data is its newer content. Anything else there (a
        // directory, a symlink, a file with unpublished changes of its
        // own, or another version: changed elsewhere since) is kept, and
        // so is the staged data, beside it.
        let changed_elsewhere = held.and_then(|ino| tree.nodes.get(&ino)).is_some_and(|n| {
            // A published file, unchanged here: which version is it?
            let Body::File {
                cap: Some(c),
                dirty: false,
                ..
            } = &n.body
            else {
                return false;
            };
            // Kept there for a file that had left the name (`Entry::kept`),
            // perhaps the only name of it the mirrors hold (a hard-linked
            // file's, see `Tree::giving_way`): both are kept. (A linked
            // file renamed over is never among the versions a note
            // replaces either: see `do_rename`.)
            (!replaceable(note, &c.root) || n.kept) && own_upload != Some(c.root)
        });
        if changed_elsewhere {
            tracing::warn!(
                path,
                "the name holds a version this staged copy did not begin from (changed on another machine, or a file renamed away unpublished before the crash): both are kept"
            );
        }
        if let Some(ino) = held
            && !changed_elsewhere
            && let Some(node) = tree.nodes.get_mut(&ino)
            && let Body::File {
                staged: held_copy,
                dirty: dirty @ false,
                cached,
                generation,
                writers: 0,
                ..
            } = &mut node.body
            // Its local copy only a cache, if any: one staged afresh for
            // a writer about to change it (opened since, by a retry's
            // time) is the writer's, and goes nowhere; both are kept.
            && (held_copy.is_none() || *cached)
        {
            if let Some(old) = held_copy.replace(staged.to_path_buf()) {
                self.remove_staged(&old); // a kept copy: a cache
            }
            *dirty = true;
            *cached = false;
            *generation += 1;
            // Bytes that came from elsewhere than the kernel: pages it
            // cached of the version read before (with the mirrors partly
            // away, say) are stale, at the same size and all.
            node.stale_pages = true;
            node.size = meta.len();
            node.mode = mode & 0o7777;
            if let Some(owner) = note.owner {
                (node.uid, node.gid) = owner;
            }
            node.mtime = mtime;
            node.ctime = ctime;
            tree.changed(ino);
            return Ok(ino);
        }
        let beside = held.is_some();
        let name = match beside {
            true => format!(
                "{name}.recovered-{}",
                staged.file_name().unwrap_or_default().to_string_lossy()
            ),
            false => name.to_string(),
        };
        if tree.children(dir).is_some_and(|c| c.contains_key(&name)) {
            return Err(Error::Exists);
        }
        let mut node = Node::new(
            dir,
            &name,
            mode & 0o7777,
            file_owner,
            Body::File {
                cap: None,
                staged: Some(staged.to_path_buf()),
                dirty: true,
                writers: 0,
                cached: false,
                generation: 0,
            },
        );
        node.size = meta.len();
        node.mtime = mtime;
        node.ctime = ctime;
        let ino = tree.insert(node);
        tree.children_mut(dir)
            .ok_or(Error::NotADirectory)?
            .insert(name.clone(), ino);
        tree.touch_dir(dir);
        drop(tree);
        if beside {
            tracing::warn!(
                path,
                kept_as = name,
                "the name was taken meanwhile; both kept"
            );
            // Its note must name where it lives now.
            self.note_staged(ino);
        }
        Ok(ino)
    }

    /// The version at `dir`/`name`, if it is a published file that the
    /// staged copy `staged` may not replace (see [`replaceable`]) and yet
    /// holds exactly its bytes: the crashed mount's own upload of it. A
    /// crash between the publish of a directory naming that upload and
    /// the removal of the copy's note leaves the note to recovery, still
    /// naming the version before; the copy is then no conflict, and must
    /// not come back beside itself as `NAME.recovered-…`.
    ///
    /// The comparison ([`Vault::holds_same_bytes`]) reads the version's
    /// manifest and hashes the copy; it sends nothing, so mirrors that
    /// refuse writes do not stop it. Mirrors out of reach are an error,
    /// for recovery to try again later (as when the directory cannot be
    /// read); any other failure keeps both, as before.
    fn own_upload_at(
        &self,
        dir: u64,
        name: &str,
        note: &notes::Note,
        staged: &Path,
    ) -> Result<Option<[u8; 32]>> {
        use crate::store::Error as S;
        let held = {
            let tree = self.lock();
            let ino = tree.children(dir).and_then(|c| c.get(name)).copied();
            match ino.and_then(|i| tree.nodes.get(&i)).map(|n| &n.body) {
                Some(Body::File {
                    cap: Some(c),
                    dirty: false,
                    ..
                }) if !replaceable(note, &c.root) => c.clone(),
                _ => return Ok(None),
            }
        };
        match self.rt.block_on(self.vault.holds_same_bytes(staged, &held)) {
            Ok(same) => Ok(same.then_some(held.root)),
            Err(e @ (S::Unavailable { .. } | S::ListingUnavailable { .. })) => Err(e.into()),
            // A manifest no mirror could serve because none answered (a
            // fetch says so as unrecoverable): as out of reach.
            Err(e @ S::Unrecoverable { .. })
                if self.vault.grid().mirrors().iter().all(|m| m.is_down()) =>
            {
                Err(e.into())
            }
            Err(e) => {
                tracing::debug!(path = note.path, error = %e, "cannot compare a staged copy with the version at its name");
                Ok(None)
            }
        }
    }

    /// After recovering a file renamed away from the names in `note.left`,
    /// remove each that still holds the version the file had there, or
    /// another of its own that the note names (its base, or a version it
    /// replaced: the upload a name recorded may be one the directory had
    /// not published yet, and the mirrors list the one before): the
    /// crashed mount had not published the rename. A name that holds
    /// anything else now (changed elsewhere, or since) stays.
    fn drop_left_names(&self, ino: u64, note: &notes::Note) {
        let its_own = |root: &[u8; 32]| {
            matches!(note.base, notes::Base::Version(b) if b == *root)
                || note.replaces.contains(root)
        };
        for (path, root) in &note.left {
            let (dirs, name) = path.rsplit_once('/').unwrap_or(("", path));
            let mut dir = ROOT;
            let mut found = true;
            for part in dirs.split('/').filter(|p| !p.is_empty()) {
                match self.child(dir, part).and_then(|d| self.unaliased(d)) {
                    Ok(d) => dir = d,
                    Err(_) => {
                        found = false;
                        break;
                    }
                }
            }
            if !found || self.writable(dir).is_err() || self.child(dir, name).is_err() {
                continue;
            }
            let mut tree = self.lock();
            let held = tree.children(dir).and_then(|c| c.get(name)).copied();
            let same = held.and_then(|h| tree.nodes.get(&h)).is_some_and(|n| {
                n.link.is_none()
                    && n.opens == 0
                    && matches!(&n.body, Body::File { cap: Some(c), dirty: false, .. }
                        if c.root == *root || its_own(&c.root))
            });
            if same && held != Some(ino) {
                tree.unlink(dir, name);
                // Still the recovered file's to remove, should this mount
                // crash too before the directory is published.
                tree.vacated_for(dir, name, ino);
                drop(tree);
                tracing::info!(
                    path,
                    "removed the name a recovered file was renamed away from"
                );
            }
        }
        self.note_staged(ino);
    }

    /// Why the background flusher is not getting changes up, if its last
    /// try failed.
    pub fn flush_failing(&self) -> Option<FlushFailing> {
        self.flush_failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Upload every closed dirty file and publish every dirty directory.
    pub fn flush_all(&self) -> Result<()> {
        self.flush(false, false)
    }

    /// The flush as the session ends: files still counted open too. None
    /// can be written to any more, but the kernel may end the session
    /// without their release (a lazy unmount while one was open); skipping
    /// them left them staged with no word until the next mount.
    fn flush_last(&self) -> Result<()> {
        self.flush(true, false)
    }

    /// The final flush: the one the unmount ran, if it did, else one now
    /// (a session that ended without `destroy`). Not twice: with a mirror
    /// down, each pass spends its retries again on every directory.
    pub fn final_flush(&self) -> std::result::Result<(), String> {
        let ran = self
            .final_flush
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ran.unwrap_or_else(|| self.flush_last().map_err(|e| e.to_string()))
    }

    /// Write again the recovery notes that could not be written (the
    /// staging disk full, say): until then a crash loses those files.
    fn renote_failed(&self) {
        let unnoted = std::mem::take(&mut *self.unnoted.lock().unwrap_or_else(|p| p.into_inner()));
        for ino in unnoted {
            self.note_staged(ino);
        }
    }

    /// Drop the early-upload records of files that will never be
    /// uploaded: removed from the tree (unlinked or renamed over once
    /// closed, before the flusher got to them) or orphans with no writer
    /// left. Without this, two such files took both early-upload places
    /// for the rest of the mount, and every large file after them went up
    /// only once closed.
    fn drop_stale_earlies(&self) {
        let tree = self.lock();
        self.early.retain(|ino| {
            tree.nodes.get(&ino).is_some_and(|n| {
                !n.orphan || matches!(n.body, Body::File { writers, .. } if writers > 0)
            })
        });
    }

    /// `flush_all` as the background flusher does it: directories too
    /// large to publish, or paced (`Tree::publish_after`), wait.
    fn flush_background(&self) -> Result<()> {
        self.flush(false, true)
    }

    /// Like `flush_all`, and files still open for writing too: when this
    /// returns Ok, every change made before it was called is on the
    /// mirrors (the mount's syncfs, asked for by `lode sync`).
    /// Staged files an earlier mount left that are not in the tree yet
    /// count as not synced.
    pub fn sync_all(&self) -> Result<()> {
        self.retry_recovery();
        self.flush(true, false)?;
        let left = self.unadopted().clone();
        match left.len() {
            0 => {
                // Everything went up: the background's last failure is
                // history (`lode status` showed it until its next try).
                *self.flush_failing.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(())
            }
            n => Err(Error::Unrecovered(
                n,
                left.iter()
                    .find_map(|f| notes::read(f))
                    .map_or_else(|| "?".into(), |note| note.path),
            )),
        }
    }

    fn flush(&self, open_too: bool, background: bool) -> Result<()> {
        self.drop_stale_earlies();
        self.renote_failed();
        let now = Instant::now();
        let pausing = {
            let mut pausing = self.kept_changing.lock().unwrap_or_else(|p| p.into_inner());
            pausing.retain(|_, until| *until > now);
            match background {
                true => pausing.keys().copied().collect(),
                false => HashSet::new(),
            }
        };
        let files: Vec<u64> = self
            .lock()
            .nodes
            .iter()
            .filter(|(ino, node)| {
                matches!(node.body, Body::File { dirty: true, writers, .. }
                    if open_too || writers == 0)
                    && !pausing.contains(ino)
            })
            .map(|(&ino, _)| ino)
            .collect();
        let mut first_err = self.upload_all(files, background);
        let dirs: Vec<u64> = {
            let tree = self.lock();
            // In the background, a directory too large to publish waits
            // until it has fewer entries than when it was refused (each
            // try fetches and seals megabytes only to be refused again),
            // or a while: a listing can also shrink at the same count
            // (shorter names, the root's link table). A paced one waits
            // its turn.
            let now = Instant::now();
            let waits = |dir: &u64| background && waits_its_turn(&tree, *dir, now);
            let mut dirs: Vec<u64> = tree.dirty.iter().copied().filter(|d| !waits(d)).collect();
            if !background {
                // Directories on their way up right now: `publish` waits
                // for that upload and tries again if it failed, so a sync
                // does not return before they are safe.
                dirs.extend(tree.publishing.iter().copied());
            }
            dirs
        };
        for dir in dirs {
            if let Err(e) =
                self.publish_ordered(dir, &mut Vec::new(), &mut HashSet::new(), background)
            {
                first_err.get_or_insert(e);
            }
        }
        // Those whose files renamed away went up after them.
        let ghosts = self.drop_ghosts(background);
        if !background && let Some(e) = ghosts {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Upload `files`, a few side by side; the first error, if any.
    ///
    /// In the `background`, a file that kept changing (opened for writing
    /// again meanwhile) is no failure: it stays dirty, and the background
    /// leaves it be for `FLUSH_RETRY_MAX`. It failed the pass, and the
    /// whole flusher paused up to half a minute with an error in `lode
    /// status`.
    fn upload_all(&self, files: Vec<u64>, background: bool) -> Option<Error> {
        let (mut small, mut large) = (Vec::new(), Vec::new());
        {
            let tree = self.lock();
            for ino in files {
                match tree.nodes.get(&ino).map(|n| n.size) {
                    Some(size) if size <= SMALL_UPLOAD_BYTES => small.push(ino),
                    Some(_) => large.push(ino),
                    None => {}
                }
            }
        }
        // Uploads are latency-bound (several round trips per file), so a
        // few run side by side, and more of them for small files. A file
        // that grows past the small size meanwhile is still uploaded whole
        // by whichever thread took it; only memory depends on the split.
        let any = UPLOAD_THREADS.min(small.len() + large.len());
        let small_threads = match background {
            true => SMALL_UPLOAD_THREADS,
            false => SYNC_SMALL_UPLOAD_THREADS,
        };
        let small_only = small_threads.min(small.len().saturating_sub(any));
        let (small, large) = (Mutex::new(small), Mutex::new(large));
        let errors = Mutex::new(None);
        let work = |queues: [Option<&Mutex<Vec<u64>>>; 2]| loop {
            let next = queues
                .iter()
                .flatten()
                .find_map(|q| q.lock().unwrap_or_else(|p| p.into_inner()).pop());
            let Some(ino) = next else {
                break;
            };
            match self.upload(ino) {
                Ok(()) => {}
                Err(Error::KeptChanging(..)) if background => {
                    self.kept_changing
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(ino, Instant::now() + FLUSH_RETRY_MAX);
                }
                Err(e) => {
                    errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                }
            }
        };
        std::thread::scope(|scope| {
            for thread in 0..any + small_only {
                let queues = if thread < any {
                    [Some(&large), Some(&small)]
                } else {
                    [Some(&small), None]
                };
                let spawned = std::thread::Builder::new()
                    .name("lode-upload".into())
                    .spawn_scoped(scope, move || work(queues));
                if let Err(e) = spawned {
                    // Out of threads (a tight pids limit): the ones running
                    // take the rest, or this one does, rather than the
                    // flush (the unmount's, too) panicking.
                    tracing::warn!(error = %e, threads = thread, "could not start another upload thread");
                    // Thread 0 takes both queues (`any` is at least 1).
                    if thread == 0 {
                        work(queues);
                    }
                    break;
                }
            }
        });
        errors.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// Make `ino` durable on the mirrors: its data, its entry, and the
    /// entries of every directory above it.
    fn sync(&self, ino: u64) -> Result<()> {
        self.sync_to_mirrors(ino).inspect_err(|_| {
            // Not durable on the mirrors: durable here, then, so that what
            // the caller asked to keep survives a power cut and goes up later.
            let staged = match self.lock().nodes.get(&ino).map(|n| &n.body) {
                Some(Body::File {
                    staged: Some(p), ..
                }) => Some(p.clone()),
                _ => None,
            };
            if let Some(path) = staged {
                self.keep_staged(&path);
            }
        })
    }

    fn sync_to_mirrors(&self, ino: u64) -> Result<()> {
        self.upload(ino)?;
        if self
            .lock()
            .nodes
            .get(&ino)
            .is_some_and(|n| n.link.is_some())
        {
            self.publish(ROOT)?;
        }
        self.publish_above(ino)
    }

    /// Publish the directories above `ino` that are not known to be on
    /// `happy` mirrors as they are, from its parent up. One whose last
    /// publish here succeeded, or which that many mirrors answered with,
    /// and which has not changed since, is not sent again: fsync of a file
    /// nothing changed returns at once, even with a mirror down; `publish`
    /// still waits for a listing on its way up.
    fn publish_above(&self, ino: u64) -> Result<()> {
        let mut cur = ino;
        loop {
            let parent = self
                .lock()
                .nodes
                .get(&cur)
                .map(|n| n.parent)
                .ok_or(Error::NotFound)?;
            self.publish_unconfirmed(parent)?;
            if parent == ROOT || parent == cur {
                return Ok(());
            }
            cur = parent;
        }
    }

    /// [`Self::publish`] of `dir` if it has changes, or if its listing is
    /// not known to be on `happy` mirrors ([`crate::store::Grid::confirmed`]:
    /// one read from fewer, left so by a session that ended before its
    /// publish reached them all).
    fn publish_unconfirmed(&self, dir: u64) -> Result<()> {
        {
            let mut tree = self.lock();
            // Not one of ours to publish (a friend's, an alias): as it is.
            let ours = match tree.nodes.get(&dir) {
                Some(
                    node @ Node {
                        body: Body::Dir { read, .. },
                        ..
                    },
                ) if node.writable_dir().is_some() => Some(read.public_key),
                _ => None,
            };
            let settled = tree.dirty.contains(&dir) || tree.publishing.contains(&dir);
            if let Some(slot) = ours
                && !settled
                && !self.vault.grid().confirmed(&slot)
            {
                tree.dirty.insert(dir);
            }
        }
        self.publish(dir)
    }

    /// fsync of a directory: its entries durable on the mirrors. The files
    /// it names that have changes are uploaded (an entry names a file's
    /// upload; of those still open for writing, the ones never uploaded,
    /// which have no entry yet), and the directories in it with changes
    /// are published (one moved in must name its new home before a crash
    /// can find its old one), then its listing and those above it go up.
    /// Changes elsewhere in the tree are not waited for, as on a local
    /// file system.
    fn sync_dir(&self, dir: u64) -> Result<()> {
        let (files, dirs): (Vec<u64>, Vec<u64>) = {
            let tree = self.lock();
            let children: Vec<u64> = tree
                .children(dir)
                .map(|c| c.values().copied().collect())
                .unwrap_or_default();
            let files = children
                .iter()
                .copied()
                .filter(|c| {
                    matches!(
                        tree.nodes.get(c).map(|n| &n.body),
                        Some(Body::File { dirty: true, writers, cap, .. })
                            if *writers == 0 || cap.is_none()
                    )
                })
                .collect();
            let dirs = children
                .into_iter()
                .filter(|c| tree.dirty.contains(c) || tree.publishing.contains(c))
                .collect();
            (files, dirs)
        };
        // A failed upload keeps the file's staged copy durable here.
        if let Some(e) = self.upload_all(files, false) {
            return Err(e);
        }
        for child in dirs {
            self.publish(child)?;
        }
        self.publish_unconfirmed(dir)?;
        if dir == ROOT {
            return Ok(());
        }
        self.publish_above(dir)
    }

    /// Start the background flusher: once a second, upload closed files and
    /// publish changed directories. Failures (mirrors down) stay staged and
    /// are retried, after a pause that doubles with each failure in a row
    /// up to [`FLUSH_RETRY_MAX`]: a mirror down for hours must not cost
    /// the others a new version of every changed directory each second.
    /// fsync, `lode sync` and the unmount flush regardless.
    pub fn start_flusher(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let fs = self.clone();
        std::thread::spawn(move || {
            std::thread::scope(|scope| {
                // Staged files an earlier mount left, placed on their own
                // thread: one that takes long (a large partly staged copy
                // to fill from the mirrors) held up every upload and
                // publish of new changes meanwhile.
                scope.spawn(|| {
                    while !fs.stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_secs(1));
                        if fs.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            fs.retry_recovery()
                        }));
                        if pass.is_err() {
                            tracing::error!("a recovery pass panicked");
                        }
                    }
                });
                fs.flush_in_background();
            })
        })
    }

    /// The flusher's loop (see [`Self::start_flusher`]), until stopped.
    fn flush_in_background(&self) {
        let mut next_try = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            // Stopped meanwhile: the final flush runs beside no pass.
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            // A sync that got everything up since the last failure
            // ends its pause.
            if self
                .flush_failing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none()
            {
                next_try = next_try.min(Instant::now());
            }
            // A panic in a pass is that pass's failure, not the end of
            // background flushing for the rest of the mount (unseen,
            // but for a log line: the join ignores it).
            let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (Instant::now() >= next_try).then(|| self.flush_background())
            }));
            let result = match pass {
                Ok(result) => result,
                Err(_) => {
                    tracing::error!("a background flush pass panicked");
                    Some(Err(Error::Store(crate::store::Error::Io(
                        std::io::Error::other(
                            "a background flush pass panicked (a bug: see the log)",
                        ),
                    ))))
                }
            };
            if let Some(result) = result {
                let mut failing = self.flush_failing.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    Ok(()) => *failing = None,
                    Err(e) => {
                        let tries = failing.as_ref().map_or(0, |f| f.tries) + 1;
                        let pause = Duration::from_secs(1 << tries.min(6)).min(FLUSH_RETRY_MAX);
                        next_try = Instant::now() + pause;
                        tracing::warn!(
                            error = %e,
                            "background flush failed; will retry in {} s",
                            pause.as_secs()
                        );
                        *failing = Some(FlushFailing {
                            tries,
                            error: e.to_string(),
                            since: failing
                                .as_ref()
                                .map_or_else(std::time::SystemTime::now, |f| f.since),
                            next: next_try,
                        });
                    }
                }
            }
            self.shed();
            // A partly staged copy dropped with its orphan (in the
            // tree, which does not see this table) leaves its entry.
            self.partials().retain(|path, _| path.exists());
            self.vault.expire_idle_chunks();
            // Once a second: the kernel zeroes what is faulted in
            // again, so not after every free.
            give_back_freed_memory();
        }
    }

    /// Once the inode table outgrows its budget, forget idle directories'
    /// entries down to three quarters of it (the margin keeps this from
    /// running on every pass of a tree walk that hovers at the bound).
    fn shed(&self) {
        let max = self.config.max_inodes;
        let mut tree = self.lock();
        if tree.nodes.len() <= max {
            return;
        }
        let (dropped, copies) = tree.shed(max - max / 4);
        let left = tree.nodes.len();
        drop(tree);
        if !copies.is_empty() {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            let gone: HashSet<&PathBuf> = copies.iter().collect();
            kept.queue.retain(|(_, path, _)| !gone.contains(path));
            kept.bytes = kept.queue.iter().map(|(_, _, size)| size).sum();
        }
        for path in &copies {
            self.remove_staged(path);
        }
        tracing::debug!(dropped, left, "forgot idle directories' entries");
    }

    /// Inodes in the table (for `lode status`).
    pub fn inodes(&self) -> usize {
        self.lock().nodes.len()
    }

    pub fn stop_flusher(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The owner of a new inode made by `req` in `parent`: the caller, or
    /// the directory's group under a set-gid directory. Also whether the
    /// directory is set-gid (new subdirectories inherit the bit).
    fn new_owner(&self, req: &Request, parent: u64) -> ((u32, u32), bool) {
        let (owner, mode) = self.inherited(parent, (req.uid(), req.gid()), 0);
        (owner, mode & libc::S_ISGID != 0)
    }

    /// Whether `ino` is a file that still has a name.
    fn still_named_file(&self, ino: u64) -> bool {
        self.lock()
            .nodes
            .get(&ino)
            .is_some_and(|n| !n.is_dir() && !n.orphan)
    }

    /// The owner and directory mode a new directory made by `owner` under
    /// `parent` gets: a set-gid parent passes on its group and the bit.
    fn inherited(&self, parent: u64, owner: (u32, u32), mode: u32) -> ((u32, u32), u32) {
        let tree = self.lock();
        match tree.nodes.get(&parent) {
            Some(p) if p.mode & libc::S_ISGID != 0 => ((owner.0, p.gid), mode | libc::S_ISGID),
            _ => (owner, mode),
        }
    }

    /// Link a new inode under `parent`, answering with its attributes (and
    /// one lookup handed to the kernel).
    fn new_child(&self, parent: u64, name: &str, node: Node) -> Result<(u64, FileAttr)> {
        Self::new_child_in(&mut self.lock(), parent, name, node)
    }

    /// [`Self::new_child`], under the tree's lock held by the caller.
    fn new_child_in(
        tree: &mut Tree,
        parent: u64,
        name: &str,
        mut node: Node,
    ) -> Result<(u64, FileAttr)> {
        let children = tree.children(parent).ok_or(Error::NotADirectory)?;
        if children.contains_key(name) || (parent == ROOT && name == FRIENDS_NAME) {
            return Err(Error::Exists);
        }
        node.lookups = 1;
        if matches!(node.body, Body::File { .. }) {
            // A name a published file gave up, not yet published: the
            // mirrors still list it here, which recovery may replace.
            node.replaces = tree.vacated_roots(parent, name);
            node.replaces.truncate(MAX_REPLACES);
        }
        let ino = tree.insert(node);
        tree.children_mut(parent)
            .expect("checked above")
            .insert(name.to_string(), ino);
        tree.touch_dir(parent);
        let attr = Self::attr(tree, ino, &tree.nodes[&ino]);
        Ok((ino, attr))
    }

    fn do_mkdir(&self, req: &Request, parent: u64, name: &OsStr, mode: u32) -> Result<FileAttr> {
        let name = name_of(name)?;
        self.writable(parent)?;
        if self.child(parent, name).is_ok() {
            return Err(Error::Exists);
        }
        let (owner, setgid) = self.new_owner(req, parent);
        let mode = (mode & 0o7777) | if setgid { libc::S_ISGID } else { 0 };
        Ok(self.mkdir_local(parent, name, mode, owner, 1)?.1)
    }

    /// A new, empty directory under `parent`, with `lookups` handed to the
    /// kernel. Made locally and published by the flusher like any change,
    /// so mkdir needs no round trip and works while the mirrors are down.
    fn mkdir_local(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        owner: (u32, u32),
        lookups: u64,
    ) -> Result<(u64, FileAttr)> {
        let write = Vault::fresh_dir();
        let read = write.read_cap();
        // Known to exist nowhere yet: its first publish must not wait for
        // every mirror to confirm that none holds it (with one mirror down
        // it never could, and a file moved into it was lost at unmount
        // while its old directory, published to the others, no longer
        // named it).
        self.vault.grid().note_seen(&read.public_key, 0);
        let body = Body::Dir {
            write: Some(write),
            read,
            children: Some(BTreeMap::new()),
            loaded_at: Some(Instant::now()),
        };
        let node = Node::new(parent, name, mode, owner, body);
        // All under one hold of the lock: the flusher must not see the new
        // name in its parent before the records below say its listing goes
        // up first (it could publish the parent naming a slot no mirror
        // holds, and a crash then leaves a directory that lists nothing).
        let mut tree = self.lock();
        let (ino, attr) = Self::new_child_in(&mut tree, parent, name, node)?;
        if let Some(node) = tree.nodes.get_mut(&ino) {
            // `new_child_in` counted the one lookup an entry reply hands
            // over.
            node.lookups = lookups;
        }
        tree.dirty.insert(ino);
        tree.unpublished.insert(ino);
        // Its listing goes up before its parent's names it: named first, a
        // crash in between left a name for a slot no mirror held, which
        // lists empty (a crash sweep lost files that had gone into a new
        // directory this way).
        tree.moved_into.entry(parent).or_default().insert(ino);
        Ok((ino, attr))
    }

    fn do_mknod(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<FileAttr> {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => None,
            libc::S_IFIFO => Some(EntryKind::Fifo),
            libc::S_IFSOCK => Some(EntryKind::Socket),
            libc::S_IFCHR => Some(EntryKind::CharDev),
            libc::S_IFBLK => Some(EntryKind::BlockDev),
            _ => return Err(Error::InvalidArgument),
        };
        let Some(kind) = kind else {
            let flags = libc::O_EXCL | libc::O_RDONLY;
            return self.do_create(req, parent, name, mode, flags, false);
        };
        let name = name_of(name)?;
        self.writable(parent)?;
        if self.child(parent, name).is_ok() {
            return Err(Error::Exists);
        }
        let (owner, _) = self.new_owner(req, parent);
        let rdev = if matches!(kind, EntryKind::CharDev | EntryKind::BlockDev) {
            rdev
        } else {
            0
        };
        let node = Node::new(
            parent,
            name,
            mode & 0o7777,
            owner,
            Body::Special { kind, rdev },
        );
        Ok(self.new_child(parent, name, node)?.1)
    }

    fn do_link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<FileAttr> {
        let newname = name_of(newname)?;
        self.writable(newparent)?;
        let parent = self
            .lock()
            .nodes
            .get(&ino)
            .map(|n| n.parent)
            .ok_or(Error::NotFound)?;
        // Only files of our own tree: a friend's file has no link table.
        // It lives in another store, as on another file system: EXDEV,
        // which `cp -l` and `ln` tell apart (EROFS says the new name's
        // directory is read-only, and it is not).
        self.writable(parent).map_err(|e| match e {
            Error::ReadOnly => Error::CrossDevice,
            e => e,
        })?;
        if self.child(newparent, newname).is_ok() {
            return Err(Error::Exists);
        }
        let mut tree = self.lock();
        let node = tree.nodes.get_mut(&ino).ok_or(Error::NotFound)?;
        if node.is_dir() {
            return Err(Error::Unsupported);
        }
        if node.orphan {
            return Err(Error::NotFound);
        }
        let id = *node.link.get_or_insert_with(rand::random);
        node.nlink += 1;
        node.lookups += 1;
        tree.links.insert(id, ino);
        tree.children_mut(newparent)
            .ok_or(Error::NotADirectory)?
            .insert(newname.to_string(), ino);
        tree.touch_dir(newparent);
        tree.changed(ino);
        Ok(Self::attr(&tree, ino, &tree.nodes[&ino]))
    }

    fn do_remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        let name = name_of(name)?;
        self.writable(parent)?;
        let ino = self.child(parent, name)?;
        if ino == FRIENDS {
            return Err(Error::FriendsBusy);
        }
        let is_dir = self.lock().nodes.get(&ino).is_some_and(Node::is_dir);
        match (dir, is_dir) {
            (true, false) => return Err(Error::NotADirectory),
            (false, true) => return Err(Error::IsADirectory),
            (true, true) => {
                self.load(ino)?;
                if self.lock().children(ino).is_some_and(|c| !c.is_empty()) {
                    return Err(Error::NotEmpty);
                }
            }
            (false, false) => {}
        }
        self.lock().unlink(parent, name);
        // A hard-linked file still named elsewhere may have moved its home:
        // its note must say where. (A file gone with its last name keeps
        // no note, and must not send `note_staged` walking the tree.)
        if self.still_named_file(ino) {
            self.note_staged(ino);
        }
        Ok(())
    }

    fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Error::InvalidArgument);
        }
        let (name, newname) = (name_of(name)?, name_of(newname)?);
        self.writable(parent)?;
        self.writable(newparent)?;
        let ino = self.child(parent, name)?;
        let target = self.child(newparent, newname).ok();
        // Neither moved (it would leave the root, or take a name the mount
        // does not publish) nor replaced (the directory put in its place
        // would be published and hidden).
        if ino == FRIENDS || target == Some(FRIENDS) {
            return Err(Error::FriendsBusy);
        }
        if let Some(t) = target {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Error::Exists);
            }
            if t == ino {
                // Two names of one file: POSIX says do nothing.
                return Ok(());
            }
            let (src_dir, dst_dir) = {
                let tree = self.lock();
                (
                    tree.nodes[&ino].is_dir(),
                    tree.nodes.get(&t).is_some_and(Node::is_dir),
                )
            };
            match (src_dir, dst_dir) {
                (true, false) => return Err(Error::NotADirectory),
                (false, true) => return Err(Error::IsADirectory),
                (true, true) => {
                    self.load(t)?;
                    if self.lock().children(t).is_some_and(|c| !c.is_empty()) {
                        return Err(Error::NotEmpty);
                    }
                }
                (false, false) => {}
            }
        }
        // A directory moving to another parent is republished, naming its
        // new home; that needs its listing, and the listing's own say on
        // where it lives (a stale name of it must not move). One that
        // cannot be listed now (the mirrors are away) does not move: its
        // home on the mirrors would still name the old parent, which they
        // may show naming it until that parent's change is up, and the
        // new name would be judged stale and dropped.
        let moving_dir =
            parent != newparent && self.lock().nodes.get(&ino).is_some_and(Node::is_dir);
        if moving_dir {
            self.load(ino)?;
        }
        // A directory may not move into itself, under this name or another
        // of the same directory (an alias: one slot, two inodes).
        {
            let tree = self.lock();
            let slot = |i: u64| match tree.nodes.get(&i).map(|n| &n.body) {
                Some(Body::Dir { read, .. }) => Some(read.public_key),
                _ => None,
            };
            let moving = slot(ino);
            let mut cur = newparent;
            while cur != ROOT {
                if cur == ino || (moving.is_some() && slot(cur) == moving) {
                    return Err(Error::InvalidArgument);
                }
                cur = tree.nodes.get(&cur).map_or(ROOT, |n| n.parent);
            }
        }
        let mut tree = self.lock();
        if !tree.rename_entry((parent, name), (newparent, newname), ino, target) {
            return Err(Error::NotADirectory);
        }
        drop(tree);
        self.note_staged(ino);
        // The file renamed over, if still named elsewhere (a hard link),
        // may have moved its home too.
        if let Some(t) = target
            && self.still_named_file(t)
        {
            self.note_staged(t);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        owner: (Option<u32>, Option<u32>),
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
    ) -> Result<FileAttr> {
        let parent = self
            .lock()
            .nodes
            .get(&ino)
            .map(|n| n.parent)
            .ok_or(Error::NotFound)?;
        if ino == FRIENDS {
            if mode.is_some()
                || size.is_some()
                || owner != (None, None)
                || atime.is_some()
                || mtime.is_some()
            {
                return Err(Error::ReadOnly);
            }
            return self.attr_of(ino);
        }
        self.changeable(ino, parent)?;
        // One clock reading for every time this call sets, as a local file
        // system gives `touch` (it gave atime < mtime < ctime, nanoseconds
        // apart).
        let t = now();
        if let Some(size) = size {
            self.early.spoil(ino);
            // A truncate by path holds no open handle: see `pin`.
            let pinned = self.pin(ino)?;
            let path = self.stage(ino, size == 0)?;
            let data = self.staged_data(ino);
            self.set_staged_len(&path, size)?;
            let renote = self.lock().nodes.get_mut(&ino).is_some_and(|node| {
                node.size = size;
                node.mtime = t;
                node.data_changed()
            });
            drop(data);
            drop(pinned);
            if renote {
                self.note_staged(ino);
            }
        }
        let mut tree = self.lock();
        let node = tree.nodes.get_mut(&ino).ok_or(Error::NotFound)?;
        if let Some(m) = mode {
            node.mode = m & 0o7777;
        }
        let was = (node.uid, node.gid);
        if let Some(uid) = owner.0 {
            node.uid = uid;
        }
        if let Some(gid) = owner.1 {
            node.gid = gid;
        }
        let owner_changed = (node.uid, node.gid) != was;
        let when = |given: TimeOrNow| match given {
            TimeOrNow::Now => t,
            TimeOrNow::SpecificTime(given) => from_fuser_time(given),
        };
        if let Some(given) = atime {
            node.atime = when(given);
        }
        if let Some(given) = mtime {
            node.mtime = when(given);
        }
        tree.changed(ino);
        if let Some(node) = tree.nodes.get_mut(&ino) {
            node.ctime = ctime.map_or(t, from_fuser_time);
        }
        let attr = Self::attr(&tree, ino, &tree.nodes[&ino]);
        let local = local_copy(&tree.nodes[&ino]);
        let is_dir = tree.nodes[&ino].is_dir();
        drop(tree);
        // A file's note records its mode and owner; a directory's are in
        // no note.
        if (mode.is_some() || owner_changed) && !is_dir {
            self.note_staged(ino);
        }
        // As getattr answers (a truncate to 1 GiB showed 1 GiB of blocks
        // until the attributes expired).
        Ok(self.local_blocks(attr, local))
    }

    /// Open `ino`; returns whether the kernel may keep the pages it has
    /// cached for the file (see `Node::stale_pages`).
    fn do_open(&self, ino: u64, flags: OpenFlags) -> Result<bool> {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        // Truncating is this file system's to do, even for a read-only
        // open (`FUSE_ATOMIC_O_TRUNC`, see `init`); the kernel checked the
        // caller may write.
        let trunc = flags.0 & libc::O_TRUNC != 0;
        let exec = flags.0 & FMODE_EXEC != 0;
        // Held from the staged copy's truncation to its size counted.
        let mut truncating = None;
        let (parent, execs) = self
            .lock()
            .nodes
            .get(&ino)
            .map(|n| (n.parent, n.execs))
            .ok_or(Error::NotFound)?;
        // A program running from the file: the kernel refuses to write it
        // (ETXTBSY), but for a read-only open with `O_TRUNC` it checks
        // only after this open has truncated, which emptied the program
        // under its feet (it died of SIGBUS; pjdfstest's open::etxtbsy).
        // Refuse first, as the kernel would.
        if trunc && execs > 0 {
            return Err(Error::TextBusy);
        }
        let pinned = match write || trunc {
            true => {
                self.changeable(ino, parent)?;
                // Open from before its copy is staged: see `pin`.
                let pinned = self.pin(ino)?;
                let path = self.stage(ino, trunc)?;
                // Before the change is counted under the lock, as a write's
                // bytes land before it: not under the lock, as a partly
                // staged copy's truncation waits for a change of it running.
                // The kernel holds no inode lock over an `O_TRUNC` open here
                // (no writeback cache), so a write on another descriptor
                // may land meanwhile: an early upload that read the old
                // bytes is stopped first, or it could take that write as
                // an append and be sealed (by an fsync) with the old bytes
                // in front of it. A write after this at the old end starts
                // no new one: only a write at 0 to an empty file does.
                if trunc {
                    self.early.spoil(ino);
                    truncating = Some(self.staged_data(ino));
                    self.set_staged_len(&path, 0)?;
                }
                Some(pinned)
            }
            false => None,
        };
        let mut tree = self.lock();
        let node = tree.nodes.get_mut(&ino).ok_or(Error::NotFound)?;
        match pinned {
            // The pin's count is this open's from here on.
            Some(pinned) => pinned.into_open(),
            None => node.opens += 1,
        }
        if exec {
            node.execs += 1;
        }
        let keep_cache = !std::mem::take(&mut node.stale_pages);
        if !write && !trunc {
            return Ok(keep_cache);
        }
        if trunc {
            node.size = 0;
            node.mtime = now();
        }
        if trunc {
            self.early.spoil(ino);
        }
        if let Body::File { writers, .. } = &mut node.body
            && write
        {
            *writers += 1;
        }
        let renote = trunc && node.data_changed();
        if trunc {
            tree.changed(ino);
        }
        drop(tree);
        drop(truncating);
        if renote {
            self.note_staged(ino);
        }
        Ok(keep_cache)
    }

    fn do_read(&self, ino: u64, offset: u64, size: u32) -> Result<Pieces> {
        let (staged, cap) = {
            let tree = self.lock();
            match &tree.nodes.get(&ino).ok_or(Error::NotFound)?.body {
                Body::File { staged, cap, .. } => (staged.clone(), cap.clone()),
                Body::Symlink(_) | Body::Special { .. } => return Err(Error::InvalidArgument),
                _ => return Err(Error::IsADirectory),
            }
        };
        if let Some(path) = staged {
            // What a partly staged copy lacks, taken before its bytes are
            // read: a block it comes to hold meanwhile is read from the
            // mirrors (as it was), never as the hole it was in the copy.
            let partial = self.partial(&path);
            let absent = partial
                .as_ref()
                .map(|p| p.absent(offset, offset + u64::from(size)));
            let file = std::fs::File::open(&path)?;
            let mut buf = vec![0; size as usize];
            let mut done = 0;
            while done < buf.len() {
                let n = file.read_at(&mut buf[done..], offset + done as u64)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            buf.truncate(done);
            // What a partly staged copy lacks is its base's.
            if let (Some(partial), Some(absent)) = (partial, absent) {
                let end = offset + done as u64;
                let absent: Vec<(u64, u64)> = absent
                    .into_iter()
                    .filter(|&(lo, _)| lo < end)
                    .map(|(lo, hi)| (lo, hi.min(end)))
                    .collect();
                if !absent.is_empty() {
                    let base = partial.base();
                    for (lo, hi) in absent {
                        let at = (lo - offset) as usize..(hi - offset) as usize;
                        self.fetch_base(&base, lo, &mut buf[at])?;
                    }
                    self.read_ahead(ino, &base, offset, done as u64);
                }
            }
            return Ok(Pieces::owned(buf));
        }
        match cap {
            Some(cap) => {
                let data = self
                    .rt
                    .block_on(self.vault.read_pieces(&cap, offset, size as u64))?;
                self.read_ahead(ino, &cap, offset, data.len() as u64);
                Ok(data)
            }
            None => Ok(Pieces::owned(Vec::new())),
        }
    }

    /// For a sequential reader, keep the next chunks of the file (up to
    /// `READAHEAD_BYTES`) being fetched into the chunk cache in the
    /// background. The fetches stop when the file's last handle closes.
    fn read_ahead(&self, ino: u64, cap: &FileReadCap, offset: u64, len: u64) {
        let mut streams = self.readahead.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let stream = streams.entry(ino).or_default();
        // Only a read in sequence keeps a stream counted as reading: a
        // file read at random after one sequential stretch (the kernel
        // cuts a large read into pieces that come in order) took part of
        // the cache from the readers for as long as it was read at all.
        if offset == stream.last_end && offset > 0 {
            stream.read_at = Some(now);
        }
        stream.fetches.retain(|f| !f.is_finished());
        let Ok(room) = self.readahead_room.clone().try_acquire_owned() else {
            // Only counted, so the next read plans from here.
            stream.pass(offset, len, cap.size);
            return;
        };
        let Some((_, to)) = stream.plan(cap.size, offset, len) else {
            return;
        };
        // Walked from the reader, not from where the last fetch ended: the
        // vault fetches only what this reader's part of the cache holds
        // beside its chunk, and what it left out then is fetched by a
        // later top-up. The cache is shared evenly by the files being
        // read in sequence: each reader asking for the whole, two side by
        // side evicted each other's chunks ahead, and each top-up fetched
        // them again (four times the chunks, two readers in a 16 MiB
        // cache).
        let reader_at = offset + len;
        let finished_from = std::mem::replace(&mut stream.topped_at, reader_at);
        let readers = streams.values().filter(|s| s.reading(now)).count().max(1);
        let share = (self.vault.cache_budget() / readers) as u64;
        let (vault, cap) = (self.vault.clone(), cap.clone());
        let fetch = self.rt.spawn(async move {
            let fetched = vault.prefetch(&cap, finished_from, reader_at, to, share);
            if let Err(e) = fetched.await {
                tracing::debug!(error = %e, "readahead failed; the reader will fetch");
            }
            drop(room);
        });
        if let Some(stream) = streams.get_mut(&ino) {
            stream.fetches.push(fetch.abort_handle());
        }
    }

    /// Make a staged copy durable here, for want of the mirrors (best
    /// effort: a failure is logged, and the caller's error stands): its
    /// bytes and, for a partly staged copy, the log of which blocks it
    /// holds. Without the log, recovery after a power cut took the blocks
    /// written since for the base's and fetched the base over them.
    fn keep_staged(&self, path: &std::path::Path) {
        if let Err(e) = std::fs::File::open(path).and_then(|f| f.sync_all()) {
            tracing::warn!(path = %path.display(), error = %e, "could not fsync a staged file");
        }
        if let Some(partial) = self.partial(path)
            && let Err(e) = partial.sync()
        {
            tracing::warn!(path = %path.display(), error = %e, "could not fsync a fill log");
        }
    }

    /// Serializes a change of `ino`'s staged bytes with the size it gives
    /// the node. The kernel runs writes, truncates by `setattr` and
    /// `fallocate` on one file one at a time, under the inode's lock; but
    /// not an `O_TRUNC` open here (no writeback cache), which empties the
    /// staged copy and then counts size 0. A write landing in between
    /// (`: > log` while a program appends to it) left the node at size 0
    /// over a copy holding the write; a truncate or an allocation, at its
    /// own size. Each takes this, and the open too. Taken before the
    /// tree's lock, never under it.
    fn staged_data(&self, ino: u64) -> super::locks::InodeGuard<'_> {
        self.staged_data.lock(ino)
    }

    /// `from_page_cache`: the kernel writes back pages of a shared
    /// mapping (`FUSE_WRITE_CACHE`). It takes no short count from such a
    /// write: a write cut short is an error, or the rest would be lost
    /// with `msync` told it was written.
    fn do_write(&self, ino: u64, offset: u64, data: &[u8], from_page_cache: bool) -> Result<u32> {
        let path = self.stage(ino, false)?;
        let _data = self.staged_data(ino);
        let end = offset + data.len() as u64;
        let partial = self.partial(&path);
        let (data, cut_short) = {
            // Held across the fetch, never under the tree's lock.
            let _changing = partial.as_ref().map(|p| p.changing());
            if let Some(partial) = &partial {
                self.fetch_for_change(&path, partial, offset, end)?;
            }
            // What reached the staged copy, counted across the retries
            // after room is made: a write the staging disk cuts short (it
            // filled) is a short write, as on a local file system, and
            // the file is as long as what it took. A write that failed
            // after taking part used to leave that part in the copy past
            // the file's end, where a later truncate up, or a recovery
            // (which takes the copy's length), brought it back.
            let done = std::cell::Cell::new(0usize);
            let wrote = self.with_room(|| {
                let file = std::fs::OpenOptions::new().write(true).open(&path)?;
                while done.get() < data.len() {
                    let at = offset + done.get() as u64;
                    let piece = (data.len() - done.get()).min(STAGE_WRITE_MAX);
                    match file.write_at(&data[done.get()..done.get() + piece], at) {
                        Ok(0) => {
                            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                        }
                        Ok(n) => done.set(done.get() + n),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            });
            let mut done = done.get();
            if let (Some(partial), Err(_)) = (&partial, &wrote) {
                done = (partial.cut_short_at(offset, offset + done as u64) - offset) as usize;
            }
            let data = &data[..done];
            let cut_short = match wrote {
                Err(e) if data.is_empty() => return Err(e),
                Err(e) => {
                    tracing::debug!(ino, offset, wrote = data.len(), error = %e, "a short write");
                    Some(e)
                }
                Ok(()) => None,
            };
            if let Some(partial) = &partial {
                // Its log grows too: on a full staging disk, room is made.
                let end = offset + data.len() as u64;
                self.with_room(|| self.changed_partly(&path, partial, offset, end))?;
            }
            (data, cut_short)
        };
        let mut tree = self.lock();
        let node = tree.nodes.get_mut(&ino).ok_or(Error::NotFound)?;
        let old_size = node.size;
        node.size = node.size.max(offset + data.len() as u64);
        let t = now();
        node.mtime = t;
        node.ctime = t;
        if let Body::File { cap, .. } = &node.body {
            // Before the generation moves: see `Earlies::wrote`.
            if let Some(early) = self.early.wrote(ino, offset, data.len() as u64, old_size) {
                match std::fs::File::open(&path) {
                    Ok(file) => {
                        let (vault, reader) =
                            (self.vault.clone(), Growing::new(file, early.clone()));
                        // A file written anew over its stored version
                        // (truncated, then written from the start) takes
                        // that version's chunks it repeats as they are.
                        let base = cap.clone();
                        early.start(self.rt.spawn(async move {
                            match base {
                                Some(base) => vault.put_reader_over(reader, &base).await,
                                None => vault.put_reader(reader).await,
                            }
                        }));
                    }
                    Err(e) => {
                        tracing::debug!(ino, error = %e, "no early upload");
                        self.early.spoil(ino);
                    }
                }
            }
        }
        let renote = node.data_changed();
        drop(tree);
        if renote {
            self.note_staged(ino);
        }
        match cut_short {
            // What did land is the file's (marked changed above).
            Some(e) if from_page_cache => Err(e),
            _ => Ok(data.len() as u32),
        }
    }

    /// `fallocate`, on the staged copy, where writes land. Plain allocation
    /// and `KEEP_SIZE` reserve room on the staging disk, so that writes
    /// there later do not fail for want of it (the mirrors' room is theirs
    /// to count), and without `KEEP_SIZE` the file grows to the range's
    /// end. `PUNCH_HOLE` and `ZERO_RANGE` zero the range, which stays a
    /// hole where the staging file system makes one. The kernel passes no
    /// other mode.
    fn do_fallocate(&self, ino: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        use nix::fcntl::FallocateFlags as F;
        let unsupported = || Error::Io(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        let flags = F::from_bits(mode).ok_or_else(unsupported)?;
        if !(F::FALLOC_FL_KEEP_SIZE | F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_ZERO_RANGE)
            .contains(flags)
        {
            return Err(unsupported());
        }
        let too_large = || Error::Io(std::io::Error::from_raw_os_error(libc::EFBIG));
        let end = offset.checked_add(len).ok_or_else(too_large)?;
        let (start, length) = (
            libc::off_t::try_from(offset).map_err(|_| too_large())?,
            libc::off_t::try_from(len).map_err(|_| too_large())?,
        );
        let path = self.stage(ino, false)?;
        let _data = self.staged_data(ino);
        // Zeroing part of a partly staged copy: as a write of zeros.
        let partial = self
            .partial(&path)
            .filter(|_| flags.intersects(F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_ZERO_RANGE));
        let _changing = partial.as_ref().map(|p| p.changing());
        if let Some(partial) = &partial {
            self.fetch_for_change(&path, partial, offset, end)?;
        }
        let before = std::fs::metadata(&path)?.len();
        let done = self.with_room(|| {
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            match nix::fcntl::fallocate(&file, flags, start, length) {
                // A staging file system without ZERO_RANGE (tmpfs): a
                // punched hole reads the same, then the length.
                Err(nix::errno::Errno::EOPNOTSUPP) if flags.contains(F::FALLOC_FL_ZERO_RANGE) => {
                    let punch = F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE;
                    nix::fcntl::fallocate(&file, punch, start, length)
                        .map_err(std::io::Error::from)?;
                    if !flags.contains(F::FALLOC_FL_KEEP_SIZE) && file.metadata()?.len() < end {
                        file.set_len(end)?;
                    }
                    Ok(())
                }
                other => Ok(other.map_err(std::io::Error::from)?),
            }
        });
        if let Err(e) = done {
            // ext4 grows the file by what it could allocate before the
            // room ran out, and the upload would take that as the file's
            // new length: a failed call leaves the length as it was.
            if !flags.contains(F::FALLOC_FL_KEEP_SIZE)
                && let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path)
                && file.metadata().is_ok_and(|m| m.len() > before)
                && let Err(undo) = file.set_len(before)
            {
                tracing::error!(ino, error = %undo, "a failed fallocate's growth stays staged");
            }
            return Err(e);
        }
        if let Some(partial) = &partial {
            self.changed_partly(&path, partial, offset, end)?;
        }
        let mut tree = self.lock();
        let node = tree.nodes.get_mut(&ino).ok_or(Error::NotFound)?;
        let grows = !flags.contains(F::FALLOC_FL_KEEP_SIZE) && end > node.size;
        let zeroes = flags.intersects(F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_ZERO_RANGE);
        if !grows && !zeroes {
            // Room reserved, nothing to read changed; the times move all
            // the same (both to one instant), as ext4's do.
            tree.changed(ino);
            if let Some(node) = tree.nodes.get_mut(&ino) {
                node.mtime = node.ctime;
            }
            return Ok(());
        }
        if grows {
            node.size = end;
        }
        let t = now();
        node.mtime = t;
        node.ctime = t;
        // An early upload streams appends only.
        self.early.spoil(ino);
        let renote = node.data_changed();
        drop(tree);
        if renote {
            self.note_staged(ino);
        }
        Ok(())
    }

    fn do_release(&self, ino: u64, flags: OpenFlags) -> Result<()> {
        let stream = self
            .readahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ino);
        // Nobody left to read what they fetch.
        for fetch in stream.iter().flat_map(|s| &s.fetches) {
            fetch.abort();
        }
        // The data is safe in staging already; the upload is write-back,
        // done by the flusher once no writer is left (or now, by fsync).
        let mut tree = self.lock();
        if let Some(node) = tree.nodes.get_mut(&ino) {
            node.opens = node.opens.saturating_sub(1);
            if flags.0 & FMODE_EXEC != 0 {
                node.execs = node.execs.saturating_sub(1);
            }
            if flags.0 & libc::O_ACCMODE != libc::O_RDONLY
                && let Body::File { writers, .. } = &mut node.body
            {
                *writers = writers.saturating_sub(1);
                if *writers == 0 && node.orphan {
                    self.early.spoil(ino);
                }
            }
        }
        tree.drop_if_unused(ino);
        Ok(())
    }

    fn do_create(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        open: bool,
    ) -> Result<FileAttr> {
        let name = name_of(name)?;
        self.writable(parent)?;
        if let Ok(existing) = self.child(parent, name) {
            if flags & libc::O_EXCL != 0 {
                return Err(Error::Exists);
            }
            self.do_open(existing, OpenFlags(flags))?;
            return self.entry_attr(existing);
        }
        let (owner, _) = self.new_owner(req, parent);
        let path = self.staging_path();
        std::fs::File::create(&path)?;
        let write = open && flags & libc::O_ACCMODE != libc::O_RDONLY;
        let body = Body::File {
            cap: None,
            staged: Some(path.clone()),
            dirty: true,
            writers: u32::from(write),
            cached: false,
            generation: 0,
        };
        let mut node = Node::new(parent, name, mode & 0o7777, owner, body);
        // mknod makes a file without opening it.
        node.opens = u32::from(open);
        let (ino, attr) = match self.new_child(parent, name, node) {
            Ok(made) => made,
            Err(e) => {
                // Nothing names the new copy: it sat in staging until the
                // next mount's recovery took it for a cache.
                let _ = std::fs::remove_file(&path);
                // Another create of the name got there between the look
                // above and here: without `O_EXCL`, this one opens it, as
                // it would have a moment earlier.
                if let (Error::Exists, false) = (&e, flags & libc::O_EXCL != 0)
                    && let Ok(existing) = self.child(parent, name)
                {
                    self.do_open(existing, OpenFlags(flags))?;
                    return self.entry_attr(existing);
                }
                return Err(e);
            }
        };
        self.note_created(ino);
        Ok(attr)
    }

    fn do_symlink(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> Result<FileAttr> {
        let name = name_of(name)?;
        self.writable(parent)?;
        // Kept as text, as names are: not UTF-8 is EILSEQ, as for a name.
        let target = target.to_str().ok_or(Error::NotUtf8)?.to_string();
        let (owner, _) = self.new_owner(req, parent);
        let mut node = Node::new(parent, name, 0o777, owner, Body::Symlink(String::new()));
        node.size = target.len() as u64;
        node.body = Body::Symlink(target);
        Ok(self.new_child(parent, name, node)?.1)
    }

    /// `SEEK_DATA` and `SEEK_HOLE` (the kernel handles the other kinds).
    /// A file with a local copy (staged, or kept after its upload) has the
    /// holes of that copy, which the staging file system keeps; one read
    /// from the mirrors is all data, as the stored format records no holes.
    /// So is a file open for writing: the kernel does not write back what
    /// a shared mapping changed before it asks, and a hole reported there
    /// would have `cp --sparse` copy zeros over data.
    fn do_lseek(&self, ino: u64, offset: i64, whence: i32) -> Result<i64> {
        let (staged, size) = {
            let tree = self.lock();
            match tree.nodes.get(&ino).ok_or(Error::NotFound)? {
                Node {
                    body:
                        Body::File {
                            staged, writers, ..
                        },
                    size,
                    ..
                } => (staged.clone().filter(|_| *writers == 0), *size),
                Node {
                    body: Body::Dir { .. } | Body::Friends,
                    ..
                } => return Err(Error::IsADirectory),
                _ => return Err(Error::InvalidArgument),
            }
        };
        let past_end = || Error::Io(std::io::Error::from_raw_os_error(libc::ENXIO));
        let Ok(at) = u64::try_from(offset) else {
            return Err(past_end());
        };
        let how = match whence {
            libc::SEEK_DATA => nix::unistd::Whence::SeekData,
            libc::SEEK_HOLE => nix::unistd::Whence::SeekHole,
            _ => return Err(Error::InvalidArgument),
        };
        // The copy may be dropped (evicted, or replaced by a new upload)
        // between the lock and the open: then the file is all data.
        // A partly staged copy's holes are mostly what it lacks: it too
        // is all data.
        if let Some(copy) = staged.filter(|p| self.partial(p).is_none())
            && let Ok(file) = std::fs::File::open(&copy)
        {
            return nix::unistd::lseek(&file, offset, how)
                .map_err(|e| Error::Io(std::io::Error::from_raw_os_error(e as i32)));
        }
        if at >= size {
            return Err(past_end());
        }
        Ok(if whence == libc::SEEK_DATA {
            offset
        } else {
            size as i64
        })
    }

    /// The names a scan of the directory `ino` through the handle `fh`
    /// walks, from `offset` on. Taken when the scan starts (offset 0: the
    /// first read after opendir, or a rewinddir) and kept with the handle
    /// until releasedir, so the offsets handed out name the same entries
    /// however the directory changes meanwhile. (They were positions in
    /// the live listing: a loop of readdir and unlink, as `find -delete`
    /// or a Perl cleanup runs, skipped every other name and left files
    /// behind.) POSIX leaves open whether a name added or removed during
    /// the scan shows; every other name shows exactly once, as on ext4.
    fn scan(&self, ino: u64, fh: u64, offset: u64) -> Result<Scan> {
        if offset > 0
            && let Some(names) = self.scans().get(&fh)
        {
            return Ok(names.clone());
        }
        let names = Arc::new(self.dir_names(ino)?);
        self.scans().insert(fh, names.clone());
        Ok(names)
    }

    fn scans(&self) -> MutexGuard<'_, std::collections::HashMap<u64, Scan>> {
        self.scans.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand the entries of the scan through `fh` of `ino`, from `offset`
    /// on, to `add` (the offset after the entry, its inode, name and
    /// attributes) until it says the reply is full.
    fn each_entry(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        blocks: bool,
        mut add: impl FnMut(u64, u64, &str, &FileAttr) -> bool,
    ) -> Result<()> {
        let names = self.scan(ino, fh, offset)?;
        let mut from = (offset as usize).min(names.len());
        while from < names.len() {
            let to = (from + READDIR_BATCH).min(names.len());
            for (at, child, name, attr) in self.dir_entries(ino, &names[from..to], blocks) {
                if add((from + at + 1) as u64, child, &name, &attr) {
                    return Ok(());
                }
            }
            from = to;
        }
        Ok(())
    }

    /// Every name in the directory `ino` now, `.` and `..` first.
    fn dir_names(&self, ino: u64) -> Result<Vec<(u64, String)>> {
        if ino != FRIENDS {
            self.load(ino)?;
        }
        let tree = self.lock();
        let node = tree.nodes.get(&ino).ok_or(Error::NotFound)?;
        let parent = if ino == FRIENDS { ROOT } else { node.parent };
        let mut out = vec![(ino, ".".to_string()), (parent, "..".to_string())];
        if ino == FRIENDS {
            out.extend(self.friends().iter().map(|(n, &i)| (i, n.clone())));
        } else {
            if ino == ROOT {
                out.push((FRIENDS, FRIENDS_NAME.into()));
            }
            let children = tree.children(ino).ok_or(Error::NotADirectory)?;
            out.extend(children.iter().map(|(n, &i)| (i, n.clone())));
        }
        Ok(out)
    }

    /// The entries of `names` (part of a scan of `ino`) still in the
    /// directory, with their attributes, each with its place in `names`.
    /// A name removed since the scan began is left out; one that another
    /// inode took meanwhile (an editor's or rsync's save: a temporary file
    /// renamed over the name) is listed with the inode it names now, as a
    /// local file system lists it. `blocks`: count the local copy's blocks
    /// (a stat each, for readdirplus; readdir needs only the kind).
    fn dir_entries(
        &self,
        ino: u64,
        names: &[(u64, String)],
        blocks: bool,
    ) -> Vec<(usize, u64, String, FileAttr)> {
        let tree = self.lock();
        let friends = (ino == FRIENDS).then(|| self.friends());
        let children = tree.children(ino);
        // The inode `name` holds now, if it is still there.
        let now_at = |child: u64, name: &str| match (&friends, children) {
            _ if name == "." || name == ".." => Some(child),
            (Some(friends), _) => friends.get(name).copied(),
            _ if ino == ROOT && child == FRIENDS => Some(FRIENDS),
            (None, Some(children)) => children.get(name).copied(),
            // Shed from memory meanwhile: nothing to tell by.
            (None, None) => Some(child),
        };
        let listed: Vec<_> = names
            .iter()
            .enumerate()
            .filter_map(|(at, (child, name))| {
                let child = now_at(*child, name)?;
                let node = tree.nodes.get(&child)?;
                let local = blocks.then(|| local_copy(node)).flatten();
                Some((
                    at,
                    child,
                    name.clone(),
                    Self::attr(&tree, child, node),
                    local,
                ))
            })
            .collect();
        drop(friends);
        drop(tree);
        listed
            .into_iter()
            .map(|(at, child, name, attr, local)| (at, child, name, self.local_blocks(attr, local)))
            .collect()
    }
}

/// A directory's names (and inodes) as a scan of it began.
type Scan = Arc<Vec<(u64, String)>>;

/// Entries of a directory looked up per batch of a readdir reply: the
/// reply holds a few dozen to a few hundred, and each batch takes the
/// tree's lock once.
const READDIR_BATCH: usize = 128;

/// A file's local copy (staged, or kept after its upload), whose blocks
/// are the file's: see [`with_local_blocks`].
fn local_copy(node: &Node) -> Option<PathBuf> {
    match &node.body {
        Body::File {
            staged: Some(path), ..
        } => Some(path.clone()),
        _ => None,
    }
}

/// `attr` with the blocks its local copy takes on the staging disk, where
/// it has one and that is fewer: a sparse file just written is as small
/// to `du` as on a local file system. One read only from the mirrors
/// counts its whole length (the stored format records no holes). The copy
/// is looked at outside the tree's lock.
fn with_local_blocks(mut attr: FileAttr, local: Option<PathBuf>) -> FileAttr {
    use std::os::unix::fs::MetadataExt;
    if let Some(meta) = local.and_then(|p| std::fs::metadata(p).ok()) {
        attr.blocks = attr.blocks.min(meta.blocks());
    }
    attr
}

/// Whether the background flusher leaves `dir` for now: refused as too
/// large and no smaller since (for a while), or paced after a slow publish.
fn waits_its_turn(tree: &Tree, dir: u64, now: Instant) -> bool {
    tree.too_large.get(&dir).is_some_and(|&(refused, at)| {
        tree.children(dir).map_or(0, |c| c.len()) >= refused
            && now.duration_since(at) < TOO_LARGE_RETRY
    }) || tree.publish_after.get(&dir).is_some_and(|&t| t > now)
}

/// Order staged files for recovery: those whose notes name names they
/// left first. Each removes its old name if that still holds what it
/// left there ([`LodeFs::drop_left_names`]); a file made at such a name
/// since, recovered before, found it taken and went beside it, and then
/// the name was removed: the new file survived only as
/// `NAME.recovered-…` (a review found it; the order was the staging
/// directory's).
fn left_names_first(files: &mut [PathBuf]) {
    files.sort_by_cached_key(|f| notes::read(f).is_none_or(|n| n.left.is_empty()));
}

/// Keep in `note` the versions the staged copy's last note named as its
/// base or as replaceable. A note's base is the file's last upload,
/// which its directory may not have published yet: rewritten in that
/// window (by a write after the upload, a chmod, a rename), it named
/// only the new upload, and a crash before the publish left recovery a
/// name holding the version before, which it took for another
/// machine's and kept both (a review found it). The versions carried
/// are this file's own, so recovery may replace them; they go once the
/// note does, when the file is published and clean.
fn carry_earlier_bases(staged: &Path, note: &mut notes::Note) {
    let Some(earlier) = notes::read(staged) else {
        return;
    };
    let base = match earlier.base {
        notes::Base::Version(root) => Some(root),
        notes::Base::New | notes::Base::Unknown => None,
    };
    for root in base.into_iter().chain(earlier.replaces) {
        if !replaceable(note, &root) {
            note.replaces.push(root);
        }
    }
    note.replaces.truncate(MAX_NOTED_VERSIONS);
}

/// How much of a partly staged copy's base a recovery fetches between
/// making it durable and recording it in the copy's fill log.
const RECOVERY_CHECKPOINT: u64 = 64 << 20;

/// How often one publish sends each directory an entry moved into
/// before it (see `LodeFs::publish_ordered`).
const PUBLISH_ROUNDS: usize = 4;

/// The longest the flusher holds a directory back for a destination of
/// its moves that keeps changing or waits its turn: then it goes up with
/// what moved out kept at the old names, until the destination names it.
pub(super) const HOLD_BACK_MAX: Duration = Duration::from_secs(10);

/// Most versions a recovery note names as replaceable: a rename chain's
/// (`MAX_REPLACES`) and the earlier bases carried over a few rewrites.
const MAX_NOTED_VERSIONS: usize = 2 * MAX_REPLACES;

/// Whether recovery may put the staged copy `note` describes in place of
/// the published version `root` at its name: the version the copy began
/// from, or one a rename put it in place of (a note from before bases
/// were recorded may replace any).
fn replaceable(note: &notes::Note, root: &[u8; 32]) -> bool {
    match note.base {
        notes::Base::Unknown => true,
        notes::Base::New => note.replaces.contains(root),
        notes::Base::Version(base) => base == *root || note.replaces.contains(root),
    }
}

/// The kernel's file type of an inode.
fn file_type(node: &Node) -> FileType {
    match node.body {
        Body::Dir { .. } | Body::Friends => FileType::Directory,
        Body::File { .. } => FileType::RegularFile,
        Body::Symlink(_) => FileType::Symlink,
        Body::Special { kind, .. } => match kind {
            EntryKind::Fifo => FileType::NamedPipe,
            EntryKind::Socket => FileType::Socket,
            EntryKind::CharDev => FileType::CharDevice,
            EntryKind::BlockDev => FileType::BlockDevice,
            EntryKind::File | EntryKind::Dir | EntryKind::Symlink => FileType::RegularFile,
        },
    }
}

/// The handle fuser owns; it shares the filesystem with the flusher.
pub struct Mount(pub Arc<LodeFs>);

impl std::ops::Deref for Mount {
    type Target = LodeFs;
    fn deref(&self) -> &LodeFs {
        &self.0
    }
}

/// A directory whose publishing takes longer than this is paced in the
/// background (`Tree::publish_after`); a quick one goes every second.
const PUBLISH_PACING_FROM: Duration = Duration::from_millis(100);
/// The longest such a directory waits: friends see changes within their
/// refresh interval plus this.
const PUBLISH_PAUSE_MAX: Duration = Duration::from_secs(10);
/// The most free space kept copies leave the staging disk (see
/// `LodeFs::keep_budget`): a tenth of it, up to this.
const KEEP_FREE_MAX: u64 = 1 << 30;
/// How long a write that found the staging disk full waits for the room
/// just made to come back (see `LodeFs::with_room`).
const ROOM_WAIT: Duration = Duration::from_secs(5);
/// The longest pause of the background flusher after failures in a row.
const FLUSH_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long the background flusher leaves a directory refused as too
/// large, if its entry count has not fallen meanwhile.
const TOO_LARGE_RETRY: Duration = Duration::from_secs(60);

impl Filesystem for Mount {
    fn destroy(&mut self) {
        self.stop_flusher();
        let flushed = self.flush_last();
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "final flush failed; changes stay staged");
        }
        *self.final_flush.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(flushed.map_err(|e| e.to_string()));
        self.early.spoil_all();
        self.drop_kept();
    }

    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Listing a directory answers lookups of its entries in one go.
        let plus = fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO;
        if config.add_capabilities(plus).is_err() {
            tracing::info!("kernel without readdirplus; plain readdir it is");
        }
        // `O_TRUNC` comes with the open, so that `> file` and `cp new old`
        // stage an empty file at once. Without it the kernel opens first and
        // truncates after, and the open must fetch the whole old content
        // (from the mirrors, needing room, and failing while they are away)
        // only to throw it away.
        if config
            .add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC)
            .is_err()
        {
            tracing::info!("kernel without atomic O_TRUNC; an open that truncates fetches first");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded("lookup", || {
            let r = lookup_name(name)
                .and_then(|n| self.looked_up(parent.0, n))
                .and_then(|i| self.entry_attr(i));
            answer_entry(reply, r)
        })
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        guarded("forget", || {
            let mut tree = self.lock();
            if let Some(node) = tree.nodes.get_mut(&ino.0) {
                node.lookups = node.lookups.saturating_sub(nlookup);
            }
            tree.drop_if_unused(ino.0);
        })
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded("getattr", || match self.attr_of(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guarded("setattr", || {
            match self.do_setattr(ino.0, mode, (uid, gid), size, atime, mtime, ctime) {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded("readlink", || {
            let tree = self.lock();
            match tree.nodes.get(&ino.0).map(|n| &n.body) {
                Some(Body::Symlink(t)) => reply.data(t.as_bytes()),
                Some(_) => reply.error(Errno::EINVAL),
                None => reply.error(Errno::ENOENT),
            }
        })
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        guarded("mkdir", || {
            answer_entry(reply, self.do_mkdir(req, parent.0, name, mode & !umask))
        })
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        guarded("mknod", || {
            let mode = (mode & libc::S_IFMT) | (mode & 0o7777 & !umask);
            answer_entry(reply, self.do_mknod(req, parent.0, name, mode, rdev))
        })
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        guarded("link", || {
            answer_entry(reply, self.do_link(ino.0, newparent.0, newname))
        })
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("unlink", || match self.do_remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("rmdir", || match self.do_remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        guarded("symlink", || {
            answer_entry(reply, self.do_symlink(req, parent.0, link_name, target))
        })
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        guarded("rename", || {
            match self.do_rename(parent.0, name, newparent.0, newname, flags) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded("open", || match self.do_open(ino.0, flags) {
            Ok(keep_cache) => reply.opened(
                FileHandle(self.next_fh.fetch_add(1, Ordering::Relaxed)),
                if keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                },
            ),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guarded("read", || match self.do_read(ino.0, offset, size) {
            Ok(data) => reply.data(&data.joined()),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let from_page_cache = write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        guarded("write", || {
            match self.do_write(ino.0, offset, data, from_page_cache) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Written data is already in the staging file.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        guarded("release", || match self.do_release(ino.0, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        guarded("fallocate", || {
            match self.do_fallocate(ino.0, offset, length, mode) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded("fsync", || match self.sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded("fsyncdir", || match self.sync_dir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.scans().remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guarded("readdir", || {
            let added = self.each_entry(ino.0, fh.0, offset, false, |next, child, name, attr| {
                reply.add(INodeNo(child), next, attr.kind, name)
            });
            match added {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        guarded("readdirplus", || {
            let mut handed = Vec::new();
            let added = self.each_entry(ino.0, fh.0, offset, true, |next, child, name, attr| {
                if reply.add(INodeNo(child), next, name, &TTL, attr, Generation(0)) {
                    return true;
                }
                // Every entry but `.` and `..` counts as a lookup.
                if name != "." && name != ".." {
                    handed.push(child);
                }
                false
            });
            match added {
                Ok(()) => {
                    let mut tree = self.lock();
                    for child in handed {
                        if let Some(n) = tree.nodes.get_mut(&child) {
                            n.lookups += 1;
                        }
                    }
                    drop(tree);
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // The room the mirrors report (quota and capacity, in bytes of
        // files after coding; see `Space::of`), refreshed by the mount's
        // keeper. Before any mirror answered: 4 PiB, all free.
        let space = *self.space.lock().unwrap_or_else(|p| p.into_inner());
        let (bsize, blocks, free) = match space {
            Some(s) => (STATFS_BLOCK, s.total / STATFS_BLOCK, s.free / STATFS_BLOCK),
            None => (1 << 20, 1 << 32, 1 << 32),
        };
        reply.statfs(
            blocks,
            free,
            free,
            1 << 32,
            1 << 32,
            bsize as u32,
            255,
            bsize as u32,
        );
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // No extended attributes. ENOSYS, not ENODATA: the kernel then
        // remembers that this file system has none and stops asking.
        // With ENODATA it asks again before every write(2), for
        // security.capability (FUSE mounts clear SB_NOSEC, so every write
        // checks for privileges to drop): a round trip per write.
        reply.error(Errno::ENOSYS);
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: fuser::FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // No ioctls: ENOTTY, as a local file system answers one it does
        // not know (and a regular file answers isatty's TCGETS). fuser's
        // default answers ENOSYS and logs a warning, one per call: Python
        // asks isatty of every file it opens.
        reply.error(Errno::ENOTTY);
    }

    // The next four answer ENOSYS, as fuser's defaults do, but without
    // their warning: ordinary tools call them (`cp -a` sets
    // system.posix_acl_access, `cp` tries copy_file_range, `SEEK_DATA`
    // reaches lseek), and the kernel, told ENOSYS once, stops asking and
    // does the generic thing (EOPNOTSUPP for xattrs, a copy through read
    // and write, the whole file as data).

    #[allow(clippy::too_many_arguments)]
    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        guarded("lseek", || match self.do_lseek(ino.0, offset, whence) {
            Ok(at) => reply.offset(at),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        guarded("create", || {
            match self.do_create(req, parent.0, name, mode & !umask, flags, true) {
                Ok(attr) => reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(self.next_fh.fetch_add(1, Ordering::Relaxed)),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `friends/` and a friend's root show the owner's write bit, so that
    /// the kernel's permission check passes the owner's writes on to lode,
    /// which refuses them with EROFS (at 0o555 they got EACCES).
    #[test]
    fn friends_let_the_owners_writes_through_to_erofs() {
        let mut tree = Tree::new(Vault::fresh_dir(), (1000, 1000));
        let cap = Vault::fresh_dir().read_cap();
        let friend = LodeFs::friend_node(&mut tree, "alice", &cap, (1000, 1000));
        for ino in [FRIENDS, friend] {
            let mode = tree.nodes[&ino].mode;
            assert_eq!(mode & 0o200, 0o200, "inode {ino}: mode {mode:o}");
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// A new file `name` in the root, staged at `copy` (which need not
    /// exist yet), open once for writing and not uploaded.
    fn open_for_writing(fs: &LodeFs, name: &str, copy: PathBuf) -> u64 {
        let mut tree = fs.lock();
        let body = Body::File {
            cap: None,
            staged: Some(copy),
            dirty: true,
            writers: 1,
            cached: false,
            generation: 0,
        };
        let mut node = Node::new(ROOT, name, 0o644, (0, 0), body);
        node.opens = 1;
        let ino = tree.insert(node);
        tree.children_mut(ROOT).unwrap().insert(name.into(), ino);
        ino
    }

    /// A file `name` in the root, staged at `copy`, clean and written by
    /// no one, with `opens` and `lookups` as given.
    fn closed_file(fs: &LodeFs, name: &str, copy: PathBuf, opens: u32, lookups: u64) -> u64 {
        let ino = open_for_writing(fs, name, copy);
        let mut tree = fs.lock();
        let node = tree.nodes.get_mut(&ino).unwrap();
        node.opens = opens;
        node.lookups = lookups;
        if let Body::File { writers, dirty, .. } = &mut node.body {
            *writers = 0;
            *dirty = false;
        }
        ino
    }

    /// Readahead starts with a file's second read in sequence, not its
    /// first (one read of each of 200 files fetched 32 MiB of each), grows
    /// to `READAHEAD_BYTES`, starts over at a reread from 0, and plans
    /// nothing past a file that shrank under a stream (it planned a range
    /// ending before it began, which overflowed).
    #[test]
    fn readahead_waits_for_a_stream_and_grows_with_it() {
        const K: u64 = 128 << 10;
        const M: u64 = 1 << 20;
        let size = 1 << 30;
        let mut s = Stream::default();
        assert_eq!(s.plan(size, 0, K), None, "one read is no stream");
        assert_eq!(s.plan(size, 5 * K, K), None, "not in sequence");
        assert_eq!(s.plan(size, 0, K), None);
        assert_eq!(s.plan(size, K, K), Some((2 * K, 2 * K + 8 * M)));
        let mut ahead = vec![];
        let mut at = 2 * K;
        while at < 64 * M {
            if let Some((from, to)) = s.plan(size, at, K) {
                assert_eq!(from, ahead.last().map_or(2 * K + 8 * M, |&(_, to)| to));
                assert!(to - at - K <= READAHEAD_BYTES, "{to} ahead of {at}");
                ahead.push((from, to));
            }
            at += K;
        }
        let widths: Vec<u64> = ahead.iter().map(|(from, to)| to - from).collect();
        assert!(widths.len() >= 3, "{widths:?}");
        assert!(s.fetched_to >= at + READAHEAD_BYTES - READAHEAD_STEP - K);
        assert_eq!(s.window, READAHEAD_BYTES);
        // Read again from the start: planned afresh.
        assert_eq!(s.plan(size, 0, K), None);
        assert_eq!(s.plan(size, K, K), Some((2 * K, 2 * K + 8 * M)));
        // Truncated to 6 MiB under the stream, then read on.
        let mut s = Stream::default();
        s.plan(size, 0, K);
        s.plan(size, K, K);
        assert_eq!(s.plan(6 * M, 2 * K, K), None);
        assert_eq!(s.plan(6 * M, 3 * K, K), None);
        // Nothing to plan past the end.
        let mut s = Stream::default();
        s.plan(3 * K, 0, K);
        assert_eq!(s.plan(3 * K, K, K), Some((2 * K, 3 * K)));
        assert_eq!(s.plan(3 * K, 2 * K, K), None);
    }

    /// A stream counts as reading (for its part of the chunk cache) once
    /// topped up, while read within `READING_SPAN`, and until its end.
    #[test]
    fn a_stream_reads_while_topped_up_recent_and_short_of_its_end() {
        const K: u64 = 128 << 10;
        let now = Instant::now();
        let mut s = Stream {
            read_at: Some(now),
            ..Stream::default()
        };
        assert!(!s.reading(now), "never topped up");
        s.plan(1 << 30, 0, K);
        assert!(s.plan(1 << 30, K, K).is_some());
        assert!(s.reading(now));
        assert!(!s.reading(now + READING_SPAN), "not read lately");
        s.plan(2 * K + 1, 2 * K, K);
        assert!(!s.reading(now), "at its end");
    }

    /// A mount over one in-memory store that keeps no published copies
    /// (`-o keep=0`), with its root listed empty.
    fn memory_mount(staging: &Path, rt: &tokio::runtime::Runtime) -> LodeFs {
        mount_on(staging, rt, Arc::new(crate::store::MemoryStorage::new()))
    }

    /// [`memory_mount`] over any store.
    fn mount_on(
        staging: &Path,
        rt: &tokio::runtime::Runtime,
        store: Arc<dyn crate::store::Storage>,
    ) -> LodeFs {
        let secret = crate::crypto::RootSecret::from_bytes([7; 32]);
        let vault = Arc::new(Vault::single(&secret, store));
        let config = MountConfig {
            staging: staging.to_path_buf(),
            friends: Vec::new(),
            refresh: Duration::from_secs(30),
            uid: 0,
            gid: 0,
            keep_bytes: 0,
            max_inodes: 1 << 20,
        };
        let fs = LodeFs::new(vault, rt.handle().clone(), config).unwrap();
        if let Some(Node {
            body: Body::Dir { children, .. },
            ..
        }) = fs.lock().nodes.get_mut(&ROOT)
        {
            *children = Some(BTreeMap::new());
        }
        fs
    }

    /// A file written front to back starts its early upload; closed and
    /// removed before the flusher uploads it, nothing seals its record.
    /// The next flush drops it: before, two such files held both early
    /// places for the rest of the mount, and no later file started one.
    #[test]
    fn an_early_upload_of_a_removed_file_gives_its_place_back() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let fs = memory_mount(dir.path(), &rt);
        let big = vec![3u8; (crate::fuse::early::START_BYTES + (1 << 20)) as usize];
        let written = |name: &str| -> u64 {
            let copy = fs.staging_path();
            std::fs::write(&copy, b"").unwrap();
            let ino = open_for_writing(&fs, name, copy);
            fs.do_write(ino, 0, &big, false).unwrap();
            ino
        };
        for name in ["a", "b"] {
            let ino = written(name);
            assert!(fs.early.started(ino), "{name}: its early upload started");
            fs.do_release(ino, OpenFlags(libc::O_WRONLY)).unwrap();
            fs.lock().unlink(ROOT, name);
            assert!(!fs.lock().nodes.contains_key(&ino), "{name} is gone");
        }
        fs.flush_background().unwrap();
        assert_eq!(fs.early.held(), 0, "records of removed files dropped");
        let ino = written("c");
        assert!(
            fs.early.started(ino),
            "a third file starts its early upload"
        );
        fs.early.spoil_all();
    }

    /// A directory whose moves' destination keeps waiting its turn (paced,
    /// as one an untar keeps changing is) is held back by the flusher, but
    /// not past `HOLD_BACK_MAX`: then it goes up with its other changes.
    /// It was held back for as long as the destination stayed busy.
    #[test]
    fn a_directory_held_back_by_a_busy_destination_goes_up_in_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let fs = memory_mount(dir.path(), &rt);
        let mkdir =
            |parent: u64, name: &str| fs.mkdir_local(parent, name, 0o755, (0, 0), 0).unwrap().0;
        let (s, d) = (mkdir(ROOT, "s"), mkdir(ROOT, "d"));
        mkdir(s, "f");
        mkdir(s, "h");
        fs.sync_all().unwrap();
        let rename = |from: u64, name: &str, to: u64, new: &str| {
            fs.do_rename(
                from,
                OsStr::new(name),
                to,
                OsStr::new(new),
                RenameFlags::empty(),
            )
            .unwrap()
        };
        rename(s, "f", d, "f");
        // A change of its own, that waits with it.
        rename(s, "h", s, "h2");
        fs.lock()
            .publish_after
            .insert(d, Instant::now() + Duration::from_secs(600));
        let background = || fs.publish_ordered(s, &mut Vec::new(), &mut HashSet::new(), true);
        background().unwrap();
        assert!(
            fs.lock().dirty.contains(&s),
            "held back for its destination"
        );
        background().unwrap();
        assert!(fs.lock().dirty.contains(&s), "still, within HOLD_BACK_MAX");
        *fs.lock().held_back.get_mut(&s).unwrap() -= HOLD_BACK_MAX;
        background().unwrap();
        let read = match &fs.lock().nodes[&s].body {
            Body::Dir { read, .. } => read.clone(),
            _ => unreachable!("a directory"),
        };
        let listed = rt.block_on(fs.vault.list(&read)).unwrap();
        assert!(
            listed.entries.contains_key("h2"),
            "published once held back too long"
        );
        // What moved out stays at its old name until the destination,
        // which keeps its turn, names it.
        assert!(listed.entries.contains_key("f"));
        let tree = fs.lock();
        assert!(tree.dirty.contains(&d), "its destination keeps its turn");
        assert!(!tree.held_back.contains_key(&s));
    }

    /// A recovery that fails partway through filling a partly staged copy
    /// (its base's later chunks unreachable) keeps what it fetched, held
    /// in the fill log: the next try goes on from there. It started again
    /// from the first byte at every try.
    #[test]
    fn a_recovery_that_fails_partway_keeps_what_it_fetched() {
        use rand::Rng;
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let store = Arc::new(crate::store::MemoryStorage::new());
        let fs = mount_on(dir.path(), &rt, store.clone());
        let mut bytes = vec![0u8; 40 << 20];
        rand::rng().fill_bytes(&mut bytes);
        // The first 24 MiB alone, then the whole: the chunks wholly in the
        // first part are the same (content-defined cuts, convergent keys).
        rt.block_on(fs.vault.put_bytes(&bytes[..24 << 20])).unwrap();
        let before: HashSet<_> = store.share_ids().into_iter().collect();
        let base = rt.block_on(fs.vault.put_bytes(&bytes)).unwrap();
        for id in store.share_ids() {
            if !before.contains(&id) && id != base.root {
                store.lose(&id);
            }
        }
        let copy = fs.staging_path();
        std::fs::File::create(&copy)
            .unwrap()
            .set_len(bytes.len() as u64)
            .unwrap();
        drop(Partial::create(&copy, base.clone()).unwrap());
        let note = notes::Note {
            path: "f".into(),
            mode: 0o644,
            owner: None,
            base: notes::Base::Version(base.root),
            replaces: Vec::new(),
            left: Vec::new(),
            partial: Some(base.clone()),
        };
        assert!(fs.complete_partial(&copy, &note, &base).is_err());
        let absent = Partial::open(&copy, base.clone())
            .unwrap()
            .absent(0, bytes.len() as u64);
        let first = absent.first().map_or(u64::MAX, |r| r.0);
        assert!(
            first >= 8 << 20,
            "the next try starts at {first}: what was fetched was not kept"
        );
        let copied = std::fs::read(&copy).unwrap();
        assert_eq!(copied[..first as usize], bytes[..first as usize]);
    }

    /// A recovery note that could not be written is written again by the
    /// flusher: before, the warning was all, and recovery after a crash
    /// took the staged file for a cache and removed it.
    #[test]
    fn a_note_that_could_not_be_written_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let fs = memory_mount(dir.path(), &rt);
        // The copy is not there when its note is written: the write fails.
        let copy = fs.staging_path();
        let ino = open_for_writing(&fs, "f", copy.clone());
        fs.note_staged(ino);
        assert_eq!(notes::read(&copy), None);
        std::fs::write(&copy, b"data").unwrap();
        fs.renote_failed();
        assert_eq!(notes::read(&copy).map(|n| n.path), Some("f".to_string()));
        // Written: not tried again.
        assert!(fs.unnoted.lock().unwrap().is_empty());
    }

    /// A file lode dropped the name of by itself (a kept name settled, a
    /// refresh) is reached only through the kernel's cached entry until it
    /// expires: opened for writing that way, it is gone (the write would
    /// land in a file nothing uploads). One still held open stays
    /// writable, as an unlinked file is through its descriptors.
    #[test]
    fn a_dropped_name_is_not_written_through_a_stale_entry() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let fs = memory_mount(dir.path(), &rt);
        for held in [false, true] {
            let name = format!("kept{held}");
            let copy = fs.staging_path();
            std::fs::write(&copy, b"old").unwrap();
            let ino = closed_file(&fs, &name, copy, u32::from(held), 1);
            {
                let mut tree = fs.lock();
                tree.unlink(ROOT, &name);
                assert!(tree.nodes[&ino].orphan);
            }
            let opened = fs.do_open(ino, OpenFlags(libc::O_WRONLY));
            match held {
                false => assert!(matches!(opened, Err(Error::NotFound)), "{opened:?}"),
                true => assert!(opened.is_ok(), "{opened:?}"),
            }
        }
        fs.early.spoil_all();
    }

    /// The staged data of a file dropped for good (its last name gone,
    /// nothing holding it) is unlinked by the remover, off the tree's lock:
    /// the unlink of a large file waits for the device's trims, and every
    /// request waited with it.
    #[test]
    fn a_dropped_files_data_goes_through_the_remover() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let fs = memory_mount(dir.path(), &rt);
        let before = fs.remover.queued();
        let copy = fs.staging_path();
        std::fs::write(&copy, vec![1u8; 1 << 20]).unwrap();
        let ino = closed_file(&fs, "big", copy.clone(), 0, 0);
        {
            let mut tree = fs.lock();
            tree.unlink(ROOT, "big");
            assert!(!tree.nodes.contains_key(&ino), "dropped");
        }
        assert_eq!(fs.remover.queued(), before + 1, "queued for the remover");
        fs.remover.wait();
        assert!(!copy.exists());
    }

    /// `: > log` while a program appends to it: an `O_TRUNC` open runs
    /// beside writes to the file (the kernel holds no inode lock over it
    /// here). Whatever the interleaving, the size the node has at the end
    /// is the staged copy's.
    #[test]
    fn a_truncating_open_beside_writes_keeps_size_and_copy_together() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let fs = memory_mount(dir.path(), &rt);
        let copy = fs.staging_path();
        std::fs::write(&copy, b"").unwrap();
        let ino = open_for_writing(&fs, "log", copy.clone());
        // Rounds of a few appends beside one truncating open, each round's
        // end checked with nothing running.
        let (line, mut pos, mut apart) = ([b'x'; 512], 0u64, 0);
        for _ in 0..2000 {
            let start = std::sync::Barrier::new(2);
            std::thread::scope(|scope| {
                let (fs, start) = (&fs, &start);
                let writer = scope.spawn(move || {
                    start.wait();
                    for _ in 0..4 {
                        fs.do_write(ino, pos, &line, false).unwrap();
                        pos += line.len() as u64;
                    }
                    pos
                });
                start.wait();
                fs.do_open(ino, OpenFlags(libc::O_WRONLY | libc::O_TRUNC))
                    .unwrap();
                fs.do_release(ino, OpenFlags(libc::O_WRONLY)).unwrap();
                pos = writer.join().unwrap();
            });
            let size = fs.lock().nodes[&ino].size;
            if size != std::fs::metadata(&copy).unwrap().len() {
                apart += 1;
            }
        }
        assert_eq!(apart, 0, "rounds that left size and staged copy apart");
        fs.early.spoil_all();
    }

    /// A truncate or an opening `O_TRUNC` stages the file and changes its
    /// copy before it counts the change. A publish completing in between
    /// made a clean copy a kept cache, which the keep budget evicted under
    /// the change (the truncate was then undone and stored). Pinned, the
    /// copy stays the file's.
    #[test]
    fn a_pinned_copy_is_not_evicted_by_a_publish() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let fs = memory_mount(dir.path(), &rt);
        for pin in [true, false] {
            let name = format!("f{pin}");
            let copy = fs.staging_path();
            std::fs::write(&copy, vec![5u8; 100_000]).unwrap();
            let ino = {
                let mut tree = fs.lock();
                let body = Body::File {
                    cap: None,
                    staged: Some(copy.clone()),
                    dirty: true,
                    writers: 0,
                    cached: false,
                    generation: 1,
                };
                let mut node = Node::new(ROOT, &name, 0o644, (0, 0), body);
                node.size = 100_000;
                let ino = tree.insert(node);
                tree.children_mut(ROOT).unwrap().insert(name.clone(), ino);
                tree.changed(ino);
                ino
            };
            // Uploaded: clean, its copy waiting for the listing to name it.
            fs.upload(ino).unwrap();
            let pinned = pin.then(|| fs.pin(ino).unwrap());
            assert_eq!(fs.stage(ino, false).unwrap(), copy);
            fs.publish(ROOT).unwrap();
            fs.remover.wait();
            let staged = match &fs.lock().nodes[&ino].body {
                Body::File { staged, .. } => staged.clone(),
                _ => unreachable!(),
            };
            match pin {
                true => {
                    assert_eq!(staged.as_ref(), Some(&copy), "the pinned copy was evicted");
                    assert!(copy.exists());
                }
                // What the pin prevents.
                false => assert!(staged.is_none() && !copy.exists(), "not evicted unpinned"),
            }
            drop(pinned);
            assert_eq!(fs.lock().nodes[&ino].opens, 0);
        }
    }

    /// A crashed mount's staged copy adopted over the published version
    /// it began from once the mount is live (a retry of recovery, its
    /// directory unreadable at the start): the kernel may hold pages of
    /// the version read meanwhile, at the same size, so the next open
    /// tells it to drop them; the one after lets it keep its cache again.
    #[test]
    fn a_copy_adopted_over_a_file_read_meanwhile_drops_its_pages() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let fs = memory_mount(dir.path(), &rt);
        let copy = fs.staging_path();
        std::fs::write(&copy, b"old!").unwrap();
        let ino = open_for_writing(&fs, "f", copy);
        fs.lock().nodes.get_mut(&ino).unwrap().size = 4;
        fs.do_release(ino, OpenFlags(libc::O_WRONLY)).unwrap();
        fs.sync_all().unwrap();
        let root = match &fs.lock().nodes[&ino].body {
            Body::File {
                cap: Some(cap),
                dirty: false,
                ..
            } => cap.root,
            _ => panic!("f is published"),
        };
        let read = |fs: &LodeFs| {
            let keep = fs.do_open(ino, OpenFlags(libc::O_RDONLY)).unwrap();
            let bytes = fs.do_read(ino, 0, 100).unwrap().joined().into_owned();
            fs.do_release(ino, OpenFlags(libc::O_RDONLY)).unwrap();
            (keep, bytes)
        };
        assert_eq!(read(&fs), (true, b"old!".to_vec()));
        let staged = fs.staging_path();
        std::fs::write(&staged, b"new!").unwrap();
        let note = notes::Note {
            path: "f".into(),
            mode: 0o644,
            owner: None,
            base: notes::Base::Version(root),
            replaces: Vec::new(),
            left: Vec::new(),
            partial: None,
        };
        notes::write(&staged, &note).unwrap();
        assert_eq!(fs.adopt(&staged, &note).unwrap(), ino, "adopted in place");
        assert_eq!(read(&fs), (false, b"new!".to_vec()), "its pages dropped");
        assert_eq!(read(&fs), (true, b"new!".to_vec()));
    }

    #[test]
    fn times_before_1970_keep_their_fraction() {
        // What fuser 0.18 makes of the kernel's (-1, 500,000,000).
        let from_kernel = UNIX_EPOCH - Duration::new(1, 500_000_000);
        assert_eq!(from_fuser_time(from_kernel), (-1, 500_000_000));
        assert_eq!(
            from_fuser_time(UNIX_EPOCH - Duration::from_secs(2)),
            (-2, 0)
        );
        assert_eq!(from_fuser_time(UNIX_EPOCH + Duration::new(5, 7)), (5, 7));
        // The earliest time there is stays the earliest.
        let earliest = system_time((i64::MIN, 0));
        assert_eq!(from_fuser_time(earliest), (i64::MIN, 0));
        // And what a reply hands fuser, which it turns back into the pair.
        assert_eq!(
            system_time((-1, 500_000_000)),
            UNIX_EPOCH - Duration::from_millis(500)
        );
        assert_eq!(
            system_time((-1, 999_999_999)),
            UNIX_EPOCH - Duration::from_nanos(1)
        );
        assert_eq!(system_time((5, 7)), UNIX_EPOCH + Duration::new(5, 7));
    }

    /// An in-memory store whose writes panic while armed, as a bug in the
    /// store's client would: each write path's panic, counted.
    #[derive(Default)]
    struct Panicky {
        inner: crate::store::MemoryStorage,
        shares_panic: AtomicBool,
        slots_panic: AtomicBool,
        panics: std::sync::atomic::AtomicUsize,
        slots_put: std::sync::atomic::AtomicUsize,
    }

    impl Panicky {
        fn maybe_panic(&self, armed: &AtomicBool, what: &str) {
            if armed.load(Ordering::SeqCst) {
                self.panics.fetch_add(1, Ordering::SeqCst);
                panic!("the test's store panics on {what}");
            }
        }
    }

    #[async_trait::async_trait]
    impl crate::store::Storage for Panicky {
        fn name(&self) -> &str {
            "panicky"
        }
        async fn put_share(
            &self,
            id: &crate::chunk::ShareId,
            bytes: bytes::Bytes,
        ) -> crate::store::Result<()> {
            self.maybe_panic(&self.shares_panic, "a share");
            self.inner.put_share(id, bytes).await
        }
        async fn get_share(
            &self,
            id: &crate::chunk::ShareId,
        ) -> crate::store::Result<Option<bytes::Bytes>> {
            self.inner.get_share(id).await
        }
        async fn has_share(&self, id: &crate::chunk::ShareId) -> crate::store::Result<bool> {
            self.inner.has_share(id).await
        }
        async fn put_slot(&self, envelope: &[u8]) -> crate::store::Result<()> {
            self.maybe_panic(&self.slots_panic, "a slot");
            self.inner.put_slot(envelope).await?;
            self.slots_put.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn get_slot(&self, public_key: &[u8; 32]) -> crate::store::Result<Option<Vec<u8>>> {
            self.inner.get_slot(public_key).await
        }
    }

    /// A publish that panics is that publish's failure: the sync says so,
    /// and the directory is not left marked as publishing (every later
    /// sync of it waited for good), so the next sync sends it.
    #[test]
    fn a_publish_that_panics_fails_and_the_next_sync_sends_it() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let store = Arc::new(Panicky::default());
        let fs = mount_on(dir.path(), &rt, store.clone());
        fs.mkdir_local(ROOT, "d", 0o755, (0, 0), 0).unwrap();
        store.slots_panic.store(true, Ordering::SeqCst);
        let (tx, rx) = std::sync::mpsc::channel();
        let fs = Arc::new(fs);
        let syncing = fs.clone();
        std::thread::spawn(move || tx.send(syncing.sync_all().is_ok()).unwrap());
        let ok = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a sync whose publish panicked did not return (or panicked)");
        assert!(!ok, "a sync whose publish panicked said all was sent");
        assert!(store.panics.load(Ordering::SeqCst) >= 1);
        assert_eq!(store.slots_put.load(Ordering::SeqCst), 0);
        store.slots_panic.store(false, Ordering::SeqCst);
        let (tx, rx) = std::sync::mpsc::channel();
        let syncing = fs.clone();
        std::thread::spawn(move || {
            tx.send(syncing.sync_all().map_err(|e| e.to_string()))
                .unwrap()
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the sync after a panicked publish did not return")
            .expect("the sync after a panicked publish failed");
        assert!(
            store.slots_put.load(Ordering::SeqCst) >= 1,
            "nothing published"
        );
    }

    /// A background flush pass that panics (an upload's task, here) is
    /// that pass's failure: the flusher goes on, and once the store works
    /// the file goes up with no sync asked for.
    #[test]
    fn the_flusher_outlives_a_pass_that_panics() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let store = Arc::new(Panicky::default());
        let fs = Arc::new(mount_on(dir.path(), &rt, store.clone()));
        let copy = fs.staging_path();
        std::fs::write(&copy, b"").unwrap();
        let ino = open_for_writing(&fs, "f", copy);
        fs.do_write(ino, 0, b"written before the store broke", false)
            .unwrap();
        fs.do_release(ino, OpenFlags(libc::O_WRONLY)).unwrap();
        store.shares_panic.store(true, Ordering::SeqCst);
        // Stopped and joined however the test ends.
        struct Flusher(Arc<LodeFs>, Option<std::thread::JoinHandle<()>>);
        impl Drop for Flusher {
            fn drop(&mut self) {
                self.0.stop.store(true, Ordering::SeqCst);
                if let Some(thread) = self.1.take() {
                    let _ = thread.join();
                }
            }
        }
        let _flusher = Flusher(fs.clone(), Some(fs.start_flusher()));
        // The pass's panic is taken for its failure, as `lode status`
        // shows a failing flush.
        let by = Instant::now() + Duration::from_secs(30);
        loop {
            let failing = fs.flush_failing().map(|f| f.error);
            if failing.as_deref().is_some_and(|e| e.contains("panicked")) {
                break;
            }
            assert!(Instant::now() < by, "no failed pass recorded: {failing:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(store.panics.load(Ordering::SeqCst) >= 1);
        store.shares_panic.store(false, Ordering::SeqCst);
        // The next pass (after its pause) sends the file, and then the
        // root's listing naming it.
        let by = Instant::now() + Duration::from_secs(60);
        while fs.backlog().0 > 0 || store.slots_put.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < by,
                "nothing sent after a pass panicked: the flusher stopped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
