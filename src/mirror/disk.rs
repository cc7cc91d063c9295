//! Shares on local disk.
//!
//! Layout: `DATA/shares/ab/<64 hex>`, one level of 256 shard directories
//! made when the store is first opened (`layout.rs`, which also moves the
//! older two-level layout forward). Writes go to `DATA/tmp/`, are hashed
//! while they stream in, fsynced, renamed into place and the shard
//! directory fsynced: a share is either wholly present and durable or
//! absent, whatever the crash. A batch of staged shares is renamed into
//! place together and each directory it touched fsynced once (see
//! [`ShareStore::commit_batch`]), so concurrent uploads share that wait.
//!
//! Shares of at most [`SMALL_MAX`] bytes are not files: they are gathered
//! in memory and stored as rows of one SQLite file, a batch per
//! transaction (`small.rs`). Readers look for a file first, then a row.

use std::path::{Path, PathBuf};
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::small::{NewSmall, SMALL_MAX, SmallShares};
use super::{Error, Result};
use crate::chunk::ShareId;
use crate::protocol::hex;

/// A stream of body bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Where a mirror keeps share bytes. Implemented by local disk; an object
/// store (S3 via `object_store`) fits the same shape.
///
/// Contract: `stage` streams a body somewhere private and checks it hashes
/// to `id` (rejecting it otherwise, leaving nothing behind); `commit`
/// publishes a staged share under its id, atomically, and it is durable
/// when `commit` returns. A
/// share already held is kept (the staged copy dropped), unless
/// `replace_corrupt` is set and the held copy no longer matches its id.
/// Nothing is ever overwritten with different valid content, since ids are
/// content hashes. Staging takes no lock, so a slow upload holds up no one.
#[async_trait]
pub trait ShareStore: Send + Sync {
    async fn stage(&self, id: &ShareId, body: ByteStream, max_len: u64) -> Result<Staged>;
    /// Returns the stored length.
    async fn commit(&self, staged: Staged, replace_corrupt: bool) -> Result<u64>;
    /// `commit` for many staged shares at once, one result per share in
    /// order. Every `Ok` share is published and durable when this returns,
    /// as if each had been committed alone; a store may share the cost of
    /// making them durable between them.
    async fn commit_batch(&self, batch: Vec<(Staged, bool)>) -> Vec<Result<u64>> {
        let mut out = Vec::with_capacity(batch.len());
        for (staged, replace_corrupt) in batch {
            out.push(self.commit(staged, replace_corrupt).await);
        }
        out
    }
    /// The share's length and a stream of its bytes, or `None`.
    async fn get(&self, id: &ShareId) -> Result<Option<(u64, ByteStream)>>;
    async fn contains(&self, id: &ShareId) -> Result<bool>;
    /// Remove a share; returns the bytes freed (0 if it was absent).
    async fn delete(&self, id: &ShareId) -> Result<u64>;
}

/// A verified share body not yet visible under its id: in a staging file,
/// already durable, or (a small one) in memory, durable once committed.
pub struct Staged {
    id: ShareId,
    body: StagedBody,
    len: u64,
}

/// Where a staged body waits.
enum StagedBody {
    /// In a staging file, written and fsynced.
    File(TmpFile),
    /// In memory: a small share, stored with its batch's transaction.
    Small(Vec<u8>),
}

/// A file under tmp/, removed when this is dropped unless it was renamed
/// into place. An upload given up at any step (its client gone, so hyper
/// dropped the request's future; a commit never reached) leaves nothing
/// behind: before, its file stayed until the mirror restarted, uncounted
/// by any quota, so a client could fill the disk by hanging up.
struct TmpFile {
    path: PathBuf,
    placed: bool,
}

impl TmpFile {
    fn new(path: PathBuf) -> TmpFile {
        TmpFile {
            path,
            placed: false,
        }
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.placed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Staged {
    /// The id the body hashes to.
    pub fn id(&self) -> &ShareId {
        &self.id
    }
}

/// Most body bytes gathered in memory between writes. A share up to this
/// size (most: an average 4 MiB chunk makes 2 MiB shares at k = 2) is
/// created, written and fsynced in one blocking call, not one per piece
/// (1 MiB here cost the three mirrors about 10 % more CPU storing a GiB);
/// an upload's buffer is no larger than its declared length, so a small
/// share costs a page, not the whole buffer.
pub(super) const WRITE_BUFFER: usize = 4 * 1024 * 1024;

/// How long an upload may stall between two pieces of its body.
pub(super) const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The slowest upload a mirror waits for, in bytes per second, beyond
/// [`BODY_IDLE`]: 256 kbit/s. Bounding only the wait between pieces let a
/// client trickle one byte a minute and hold a write buffer and a
/// staging file for good.
const SLOWEST_BODY: u64 = 32 * 1024;

/// When an upload of at most `max_len` bytes begun now must be in.
pub(super) fn body_deadline(max_len: u64) -> tokio::time::Instant {
    let allowed = BODY_IDLE + std::time::Duration::from_secs(max_len / SLOWEST_BODY);
    tokio::time::Instant::now() + allowed
}

/// The next piece of `body`, within [`BODY_IDLE`] and before `deadline`.
async fn next_piece(
    body: &mut ByteStream,
    deadline: tokio::time::Instant,
) -> Result<Option<Bytes>> {
    let by = deadline.min(tokio::time::Instant::now() + BODY_IDLE);
    match tokio::time::timeout_at(by, body.next()).await {
        Err(_) if by == deadline => Err(Error::BadRequest("upload too slow".into())),
        Err(_) => Err(Error::BadRequest("upload stalled".into())),
        Ok(None) => Ok(None),
        Ok(Some(piece)) => Ok(Some(piece?)),
    }
}

/// Shares as files under a data directory.
pub struct DiskShares {
    root: PathBuf,
    small: std::sync::Arc<SmallShares>,
}

impl DiskShares {
    pub fn open(data: &Path) -> Result<DiskShares> {
        super::layout::prepare(&data.join("shares"))?;
        let tmp = data.join("tmp");
        // Leftovers of writes cut short by a crash are never valid shares.
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(DiskShares {
            root: data.to_path_buf(),
            small: std::sync::Arc::new(SmallShares::open(data)?),
        })
    }

    /// [`ShareStore::delete`] but for the unlink, for GC, which holds the
    /// lock uploads finalize under while it deletes: a share file is moved
    /// into `tmp/`, and returned for the caller to unlink once it has let
    /// go of the lock (`delete` unlinks it at once). On ext4 mounted with `discard` and no
    /// journal, the unlink waits for the device to trim the file's blocks
    /// (a GiB took 250-290 ms, docs/PERFORMANCE.md), and every upload
    /// waited for each of a thousand at a time. A crash before the unlink
    /// leaves the file in `tmp/`, which the next start empties.
    pub async fn retire(&self, id: &ShareId) -> Result<(u64, Option<PathBuf>)> {
        let path = self.path_of(id);
        let trash = self.root.join("tmp").join(format!(
            "gc-{}-{:016x}",
            crate::protocol::hex(id),
            rand::random::<u64>()
        ));
        let (from_file, moved) = match tokio::fs::metadata(&path).await {
            Ok(meta) => match tokio::fs::rename(&path, &trash).await {
                Ok(()) => (meta.len(), Some(trash)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, None),
                Err(e) => return Err(e.into()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, None),
            Err(e) => return Err(e.into()),
        };
        let (small, id) = (self.small.clone(), *id);
        let from_row = tokio::task::spawn_blocking(move || small.delete(&id))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        Ok((from_file + from_row, moved))
    }

    /// The ids of the share files in the shard directory of ids starting
    /// with `first` (blocking). Names that are not a share id's are left
    /// out: nothing this mirror writes, and not its to judge.
    pub(super) fn files_in_shard(&self, first: u8) -> Result<Vec<ShareId>> {
        let dir = self
            .root
            .join("shares")
            .join(crate::protocol::hex(&[first]));
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            // The one spelling `path_of` gives: lowercase, in its shard.
            let spelled = |n: &str| n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if let Some(id) = name
                .to_str()
                .filter(|n| spelled(n))
                .and_then(|n| crate::protocol::parse_hex::<32>(n).ok())
                .filter(|id| id[0] == first && entry.file_type().is_ok_and(|t| t.is_file()))
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Whether share `id` is held, as a file or a row (blocking).
    pub fn holds(&self, id: &ShareId) -> Result<bool> {
        Ok(self.path_of(id).try_exists()? || self.small.contains(id)?)
    }

    /// Stage a small body: gather it in memory and check its hash.
    async fn stage_small(
        &self,
        id: &ShareId,
        mut body: ByteStream,
        max_len: u64,
    ) -> Result<Staged> {
        let mut data = Vec::with_capacity(max_len as usize);
        let deadline = body_deadline(max_len);
        loop {
            let Some(piece) = next_piece(&mut body, deadline).await? else {
                break;
            };
            if (data.len() + piece.len()) as u64 > max_len {
                return Err(Error::TooLarge { limit: max_len });
            }
            data.extend_from_slice(&piece);
        }
        if crate::chunk::share_id(&data) != *id {
            return Err(Error::Mismatch(*id));
        }
        Ok(Staged {
            id: *id,
            len: data.len() as u64,
            body: StagedBody::Small(data),
        })
    }

    /// Store small staged shares in one transaction; one result per share.
    /// A share already held as a file is kept as that file.
    async fn commit_small(&self, batch: Vec<(Staged, bool)>) -> Vec<Result<u64>> {
        let n = batch.len();
        if n == 0 {
            return Vec::new();
        }
        let files: Vec<PathBuf> = batch.iter().map(|(s, _)| self.path_of(&s.id)).collect();
        let small = self.small.clone();
        let done = tokio::task::spawn_blocking(move || -> Result<Vec<u64>> {
            let mut out = vec![0u64; batch.len()];
            let mut rows = Vec::new();
            let mut at = Vec::new();
            // Corrupt share files a repair replaces with a row: removed once
            // the row is durable, since readers look at files first.
            let mut corrupt = Vec::new();
            for (i, ((staged, replace), file)) in batch.iter().zip(&files).enumerate() {
                let held = match std::fs::metadata(file) {
                    Ok(meta) if !*replace => Some(meta.len()),
                    Ok(meta) => match matches(file, &staged.id) {
                        Ok(true) => Some(meta.len()),
                        Ok(false) => {
                            corrupt.push(file.clone());
                            None
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(e) => return Err(e.into()),
                    },
                    Err(_) => None,
                };
                match (held, &staged.body) {
                    (Some(len), _) => out[i] = len,
                    (None, StagedBody::Small(data)) => {
                        rows.push(NewSmall {
                            id: &staged.id,
                            data,
                            replace_corrupt: *replace,
                        });
                        at.push(i);
                    }
                    (None, StagedBody::File(_)) => unreachable!("only small bodies come here"),
                }
            }
            for (i, len) in at.into_iter().zip(small.put_all(&rows)?) {
                out[i] = len;
            }
            for file in corrupt {
                std::fs::remove_file(&file)?;
                fsync_dir(file.parent().expect("share paths have a parent"))?;
            }
            Ok(out)
        })
        .await;
        match done {
            Ok(Ok(lens)) => lens.into_iter().map(Ok).collect(),
            Ok(Err(e)) => {
                let reason = e.to_string();
                (0..n).map(|_| Err(Error::Commit(reason.clone()))).collect()
            }
            Err(e) => (0..n).map(|_| Err(Error::Task(e.to_string()))).collect(),
        }
    }

    /// The file that holds share `id`.
    pub fn path_of(&self, id: &ShareId) -> PathBuf {
        super::layout::share_path(&self.root.join("shares"), id)
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(test)]
    if faults::failing(dir) {
        return Err(std::io::Error::other("injected directory fsync failure"));
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Injected failures, for tests of what a failing disk leaves behind.
#[cfg(test)]
pub(super) mod faults {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// Directories under these fail their fsync. By path, so tests that
    /// run side by side, each in its own directory, are not touched.
    static FAILING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub fn fail_dir_syncs_under(root: &Path, fail: bool) {
        let mut failing = FAILING.lock().unwrap();
        failing.retain(|p| p != root);
        if fail {
            failing.push(root.to_path_buf());
        }
    }

    pub(super) fn failing(dir: &Path) -> bool {
        FAILING
            .lock()
            .unwrap()
            .iter()
            .any(|root| dir.starts_with(root))
    }
}

/// Alignment of direct writes and reads: the largest logical block size
/// in use.
const DIRECT_ALIGN: usize = 4096;

/// An empty buffer for `O_DIRECT`: its length is a few bytes of padding
/// that bring it to a block boundary, and it has room for `len` bytes more
/// after them, so it never moves while they are appended. Nothing in the
/// room is zeroed: a share is at most a few MiB and arrives once per
/// upload or read, and zeroing it first cost 4 % of a mirror's CPU while
/// storing, 10 % while serving a cold read (docs/PERFORMANCE.md).
fn aligned_buffer(len: usize) -> Vec<u8> {
    let mut raw: Vec<u8> = Vec::with_capacity(len + DIRECT_ALIGN);
    let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
    raw.resize(start, 0);
    raw
}

/// Read at most `max` bytes of `file` from `offset` onto the end of `buf`,
/// into its spare room, which must hold them, without zeroing that room
/// first; returns how many came (0 at the end of the file).
#[allow(unsafe_code)]
fn read_appending(
    file: &std::fs::File,
    buf: &mut Vec<u8>,
    max: usize,
    offset: u64,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let spare = buf.spare_capacity_mut();
    assert!(spare.len() >= max, "read past the buffer's room");
    let offset = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
    loop {
        // SAFETY: the kernel writes at most `max` bytes from the pointer,
        // all inside `spare`, the buffer's allocated but unused room.
        let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), max, offset) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: the `n` bytes after the old length were just written
            // by the kernel, and are within the capacity (`n <= max`).
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Write buffers of finished uploads, ready for the next ones: each is
/// block-aligned after its padding and has room for `WRITE_BUFFER` bytes.
/// A fresh buffer for each share cost a page fault per 4 KiB of it, and
/// the unmap after: about an eighth of the mirrors' samples while a 1 GiB
/// file was stored, and 104,092 faults against 38,678 with spares
/// (docs/PERFORMANCE.md, "Where a written GiB's CPU goes, by process"). At most
/// `SPARE_MAX` are kept, so an idle mirror holds no more than 16 MiB.
static SPARE: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Spare write buffers kept at most.
const SPARE_MAX: usize = 4;

/// Bodies of at least this many bytes are gathered in a spare buffer;
/// smaller ones, in one of their own size. Every share of a chunk cut
/// from a large file (at least 1 MiB, so at least 512 KiB at k = 2) is
/// above it.
const SPARE_MIN: usize = 256 * 1024;

/// A share body being written to its staging file.
///
/// The file is opened with `O_DIRECT` where the file system allows it: a
/// share is fsynced as soon as it is written and not read back soon, so
/// passing it through the page cache only costs a copy per byte. On the
/// 2-core VM of docs/PERFORMANCE.md, `dd` of 1 GiB with fsync takes 2.3 s
/// of system time buffered and 0.6-1.2 s direct. Body bytes gather in a
/// block-aligned buffer and go out `WRITE_BUFFER` at a time; the last
/// write is padded to a block and the file then cut to its true length.
/// Where `O_DIRECT` is refused (tmpfs, some FUSE file systems), writes
/// are ordinary ones. Shares up to `SMALL_MAX` are not files at all
/// (`small.rs`).
struct ShareFile {
    /// Also dropped with it when a writing ends halfway, once the blocking
    /// write it may be in is over (so no write makes the file again).
    tmp: TmpFile,
    /// Created on the first write.
    file: Option<std::fs::File>,
    direct: bool,
    /// The bytes from `start` (a block boundary) on are the body not yet
    /// written; there is room for `capacity` of them.
    raw: Vec<u8>,
    start: usize,
    capacity: usize,
    /// Bytes already in the file.
    written: u64,
}

impl ShareFile {
    /// A share file for a body of at most `max_len` bytes.
    fn new(tmp: TmpFile, max_len: u64) -> ShareFile {
        let capacity = usize::try_from(max_len)
            .unwrap_or(usize::MAX)
            .clamp(1, WRITE_BUFFER)
            .next_multiple_of(DIRECT_ALIGN);
        // A large body takes a spare full-size buffer, or makes one that
        // can be kept once this upload is done.
        let raw = if capacity >= SPARE_MIN {
            let spare = SPARE.lock().unwrap_or_else(|p| p.into_inner()).pop();
            spare.unwrap_or_else(|| aligned_buffer(WRITE_BUFFER))
        } else {
            aligned_buffer(capacity)
        };
        ShareFile {
            tmp,
            file: None,
            direct: true,
            start: raw.len(),
            raw,
            capacity,
            written: 0,
        }
    }

    /// Body bytes in the buffer.
    fn filled(&self) -> usize {
        self.raw.len() - self.start
    }

    /// Copy as much of `bytes` into the buffer as fits; returns how much.
    fn fill(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.capacity - self.filled());
        self.raw.extend_from_slice(&bytes[..n]);
        n
    }

    fn is_full(&self) -> bool {
        self.filled() == self.capacity
    }

    /// Open the staging file, direct if `self.direct` and allowed.
    fn open(&mut self) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(false);
        if self.direct {
            match options
                .clone()
                .custom_flags(libc::O_DIRECT)
                .open(&self.tmp.path)
            {
                Ok(file) => return Ok(file),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = false,
                Err(e) => return Err(e),
            }
        }
        options.open(&self.tmp.path)
    }

    /// The written file, to be placed: the share file is done with it.
    fn into_tmp(mut self) -> TmpFile {
        self.file = None;
        let none = TmpFile {
            path: PathBuf::new(),
            placed: true,
        };
        std::mem::replace(&mut self.tmp, none)
    }

    fn is_einval(e: &std::io::Error) -> bool {
        e.raw_os_error() == Some(libc::EINVAL)
    }

    /// Write the buffer out (blocking); if `last`, the body is complete:
    /// cut the file to its length and fsync it.
    fn flush(&mut self, last: bool) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let file = match self.file.take() {
            Some(f) => f,
            None => self.open()?,
        };
        let data = self.filled();
        let padded = if self.direct {
            data.next_multiple_of(DIRECT_ALIGN)
        } else {
            data
        };
        let (from, at) = (self.start, self.written);
        // Within the room reserved: the buffer does not move.
        self.raw.resize(from + padded, 0);
        let file = match file.write_all_at(&self.raw[from..from + padded], at) {
            Ok(()) => file,
            Err(e) if self.direct && Self::is_einval(&e) => {
                // Opened direct, but this write was refused: go on without.
                self.direct = false;
                drop(file);
                let file = self.open()?;
                file.write_all_at(&self.raw[from..from + data], at)?;
                file
            }
            Err(e) => return Err(e),
        };
        self.written += data as u64;
        self.raw.truncate(from);
        if last {
            if file.metadata()?.len() != self.written {
                file.set_len(self.written)?;
            }
            file.sync_all()?;
        }
        self.file = Some(file);
        Ok(())
    }
}

impl Drop for ShareFile {
    /// A full-size buffer goes back to the spares, if there is room.
    fn drop(&mut self) {
        if self.raw.capacity() - self.start < WRITE_BUFFER {
            return;
        }
        let mut raw = std::mem::take(&mut self.raw);
        raw.truncate(self.start);
        let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < SPARE_MAX {
            spare.push(raw);
        }
    }
}

/// [`ShareFile::flush`] on the blocking pool.
async fn flush_out(mut out: ShareFile, last: bool) -> Result<ShareFile> {
    tokio::task::spawn_blocking(move || out.flush(last).map(|()| out))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(Error::from)
}

/// Shares up to this size are read whole, in one trip to the blocking
/// pool; larger files (none a client uploads, see `MAX_SHARE_BYTES`) are
/// streamed. Reading a share piece by piece through `tokio::fs` cost one
/// blocking-pool round trip per piece, plus the open and the stat: during
/// a cold 1 GiB read through the mount, about a third of each mirror's CPU
/// went to the context switches.
const READ_WHOLE: u64 = crate::protocol::MAX_SHARE_BYTES;

/// A share file opened for reading.
enum Opened {
    Whole(Bytes),
    Large(std::fs::File, u64),
}

/// Open a share and, if it is not over `READ_WHOLE`, read all of it
/// (blocking).
fn read_share(path: &Path) -> std::io::Result<Opened> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > READ_WHOLE {
        return Ok(Opened::Large(file, len));
    }
    if len >= DIRECT_READ_MIN
        && let Some(bytes) = read_direct(&file, len as usize)?
    {
        return Ok(Opened::Whole(bytes));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    (&file).read_to_end(&mut bytes)?;
    Ok(Opened::Whole(bytes.into()))
}

/// Shares at least this big are read with `O_DIRECT`.
const DIRECT_READ_MIN: u64 = 64 * 1024;

/// Read all `len` bytes of `file` with `O_DIRECT`, straight from the disk
/// into a block-aligned buffer; `None` (and `file` as it was) where the
/// file system refuses it. Shares are written around the page cache (see
/// [`ShareFile`]), so a read through it finds nothing there and only fills
/// pages that no one reads twice: on this project's VM, taking fresh pages
/// is a real part of a cold read's kernel time. Small shares (manifest
/// nodes, which readers come back to) still go through the cache.
fn read_direct(file: &std::fs::File, len: usize) -> std::io::Result<Option<Bytes>> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let is_einval = |e: &std::io::Error| e.raw_os_error() == Some(libc::EINVAL);
    let flags = OFlag::from_bits_truncate(fcntl(file, FcntlArg::F_GETFL)?);
    match fcntl(file, FcntlArg::F_SETFL(flags | OFlag::O_DIRECT)) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINVAL) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let padded = len.next_multiple_of(DIRECT_ALIGN);
    let mut raw = aligned_buffer(padded);
    let start = raw.len();
    let mut got = 0;
    while got < len {
        match read_appending(file, &mut raw, padded - got, got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            // A file system that takes the flag but not the read.
            Err(e) if is_einval(&e) => {
                fcntl(file, FcntlArg::F_SETFL(flags))?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
    if got != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("share file is {got} bytes, not {len}"),
        ));
    }
    Ok(Some(Bytes::from(raw).slice(start..start + len)))
}

/// Whether the file at `path` still hashes to `id`.
fn matches(path: &Path, id: &ShareId) -> std::io::Result<bool> {
    Ok(crate::chunk::share_id(&std::fs::read(path)?) == *id)
}

/// Rename a staged share into place (blocking), unless a good copy is
/// already held. Returns the stored length and the directories that must
/// be fsynced before the share counts as durable: the shard directory (and
/// its parent, if the shard directory had gone missing and was made
/// again). A copy already held counts only after that fsync too: it may be
/// one an earlier batch renamed into place and then failed to make durable
/// (its directory's fsync failed, or the mirror stopped before it), which
/// no ledger row records.
fn place(
    dest: &Path,
    mut staged: Staged,
    replace_corrupt: bool,
) -> std::io::Result<(u64, Vec<PathBuf>)> {
    let StagedBody::File(staged_file) = &mut staged.body else {
        unreachable!("small bodies are committed by `commit_small`")
    };
    let tmp = &staged_file.path;
    // The staged file goes however this ends, unless renamed into place.
    let shard = dest.parent().expect("share paths have a parent");
    if let Ok(meta) = std::fs::metadata(dest)
        && (!replace_corrupt || matches(dest, &staged.id)?)
    {
        return Ok((meta.len(), vec![shard.to_path_buf()]));
    }
    let mut to_sync = vec![shard.to_path_buf()];
    match std::fs::rename(tmp, dest) {
        // Every shard directory is made when the store opens; one removed
        // by hand since is made again.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !shard.is_dir() => {
            match std::fs::create_dir(shard) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => to_sync.push(shard.parent().expect("has a parent").to_path_buf()),
            }
            std::fs::rename(tmp, dest)?;
        }
        other => other?,
    }
    staged_file.placed = true;
    Ok((staged.len, to_sync))
}

#[async_trait]
impl ShareStore for DiskShares {
    async fn stage(&self, id: &ShareId, mut body: ByteStream, max_len: u64) -> Result<Staged> {
        if max_len <= SMALL_MAX {
            return self.stage_small(id, body, max_len).await;
        }
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{}", hex(id), rand::random::<u64>()));
        let mut out = Some(ShareFile::new(TmpFile::new(tmp), max_len));
        let mut hasher = crate::chunk::IdHasher::new();
        let mut len = 0u64;
        let deadline = body_deadline(max_len);
        let result: Result<TmpFile> = async {
            loop {
                let Some(piece) = next_piece(&mut body, deadline).await? else {
                    break;
                };
                len += piece.len() as u64;
                if len > max_len {
                    return Err(Error::TooLarge { limit: max_len });
                }
                hasher.update(&piece);
                let mut rest = &piece[..];
                while !rest.is_empty() {
                    let sink = out.as_mut().expect("put back after each flush");
                    rest = &rest[sink.fill(rest)..];
                    if sink.is_full() {
                        let full = out.take().expect("just used");
                        out = Some(flush_out(full, false).await?);
                    }
                }
            }
            if hasher.finalize() != *id {
                return Err(Error::Mismatch(*id));
            }
            let done = flush_out(out.take().expect("put back after each flush"), true).await?;
            Ok(done.into_tmp())
        }
        .await;
        // On an error, the file went with the share file.
        Ok(Staged {
            id: *id,
            body: StagedBody::File(result?),
            len,
        })
    }

    async fn commit(&self, staged: Staged, replace_corrupt: bool) -> Result<u64> {
        if let StagedBody::Small(_) = staged.body {
            let mut one = self.commit_small(vec![(staged, replace_corrupt)]).await;
            return one.pop().expect("one result per share");
        }
        let dest = self.path_of(&staged.id);
        tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let (len, dirs) = place(&dest, staged, replace_corrupt)?;
            dirs.iter().try_for_each(|dir| fsync_dir(dir))?;
            Ok(len)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(Error::from)
    }

    /// All renames first, then one fsync per directory touched: on a
    /// journaling file system the first fsync commits every rename of the
    /// batch, and the later ones have little or nothing left to write. If
    /// an fsync fails, every share of the batch is reported failed, since
    /// its durability (or that of a copy renamed earlier in the same batch)
    /// is unknown.
    async fn commit_batch(&self, batch: Vec<(Staged, bool)>) -> Vec<Result<u64>> {
        // Small shares in one transaction, then the files renamed: rows
        // first, not side by side, so a small upload that finds its share
        // held as a file finds one made durable by an earlier batch, never
        // one this batch renamed and has yet to fsync.
        let n = batch.len();
        let (mut small_at, mut small, mut file_at, mut files) = (vec![], vec![], vec![], vec![]);
        for (i, item) in batch.into_iter().enumerate() {
            if matches!(item.0.body, StagedBody::Small(_)) {
                small_at.push(i);
                small.push(item);
            } else {
                file_at.push(i);
                files.push(item);
            }
        }
        let small_done = self.commit_small(small).await;
        let file_done = self.commit_files(files).await;
        let mut out: Vec<Option<Result<u64>>> = (0..n).map(|_| None).collect();
        for (i, r) in small_at
            .into_iter()
            .chain(file_at)
            .zip(small_done.into_iter().chain(file_done))
        {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("one result per share"))
            .collect()
    }

    async fn get(&self, id: &ShareId) -> Result<Option<(u64, ByteStream)>> {
        let path = self.path_of(id);
        let small = self.small.clone();
        let id = *id;
        let opened = tokio::task::spawn_blocking(move || match read_share(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match small.get(&id) {
                Ok(Some(data)) => Ok(Some(Opened::Whole(data.into()))),
                Ok(None) => Ok(None),
                Err(e) => Err(Error::from(e)),
            },
            other => other.map(Some).map_err(Error::from),
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        match opened {
            Some(Opened::Whole(bytes)) => {
                let len = bytes.len() as u64;
                Ok(Some((
                    len,
                    Box::pin(futures_util::stream::iter([Ok(bytes)])),
                )))
            }
            Some(Opened::Large(file, len)) => {
                let file = tokio::fs::File::from_std(file);
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
                Ok(Some((len, Box::pin(stream))))
            }
            None => Ok(None),
        }
    }

    async fn contains(&self, id: &ShareId) -> Result<bool> {
        if tokio::fs::try_exists(self.path_of(id)).await? {
            return Ok(true);
        }
        let (small, id) = (self.small.clone(), *id);
        tokio::task::spawn_blocking(move || small.contains(&id))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .map_err(Error::from)
    }

    /// Removes the file and the row: a share can be held as both (an
    /// upload without a declared length, or a repair, comes as a file
    /// whatever its size).
    async fn delete(&self, id: &ShareId) -> Result<u64> {
        let (freed, moved) = self.retire(id).await?;
        if let Some(path) = moved {
            tokio::fs::remove_file(&path).await?;
        }
        Ok(freed)
    }
}

impl DiskShares {
    /// [`ShareStore::commit_batch`] for share files: all renames first,
    /// then one fsync per directory touched.
    async fn commit_files(&self, batch: Vec<(Staged, bool)>) -> Vec<Result<u64>> {
        let n = batch.len();
        if n == 0 {
            return Vec::new();
        }
        let jobs: Vec<(PathBuf, Staged, bool)> = batch
            .into_iter()
            .map(|(staged, replace)| (self.path_of(&staged.id), staged, replace))
            .collect();
        let done = tokio::task::spawn_blocking(move || {
            let mut dirs = std::collections::BTreeSet::new();
            let placed: Vec<std::io::Result<u64>> = jobs
                .into_iter()
                .map(|(dest, staged, replace)| {
                    let (len, to_sync) = place(&dest, staged, replace)?;
                    dirs.extend(to_sync);
                    Ok(len)
                })
                .collect();
            let synced = dirs.iter().try_for_each(|dir| fsync_dir(dir));
            placed
                .into_iter()
                .map(|p| match &synced {
                    Ok(()) => p.map_err(Error::from),
                    Err(e) => Err(Error::Io(std::io::Error::new(e.kind(), e.to_string()))),
                })
                .collect::<Vec<Result<u64>>>()
        })
        .await;
        match done {
            Ok(results) => results,
            Err(e) => (0..n).map(|_| Err(Error::Task(e.to_string()))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a stream yields, and in how many pieces.
    async fn drain(mut stream: ByteStream) -> (Vec<u8>, usize) {
        let (mut all, mut pieces) = (Vec::new(), 0);
        while let Some(piece) = stream.next().await {
            all.extend_from_slice(&piece.unwrap());
            pieces += 1;
        }
        (all, pieces)
    }

    fn body(bytes: &[u8]) -> ByteStream {
        Box::pin(futures_util::stream::iter([Ok(Bytes::copy_from_slice(
            bytes,
        ))]))
    }

    /// Large shares one after another go through the same spare buffers,
    /// longest first, so each later body lands on bytes an earlier one
    /// left: every one still reads back as sent, with its own length. A
    /// body refused halfway (it does not hash to its id) leaves its buffer
    /// as dirty as any.
    #[tokio::test]
    async fn reused_write_buffers_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskShares::open(dir.path()).unwrap();
        let bad = vec![0xa5u8; WRITE_BUFFER - 7];
        let refused = store.stage(&[9; 32], body(&bad), bad.len() as u64).await;
        assert!(matches!(refused, Err(Error::Mismatch(_))));
        let lens = [
            WRITE_BUFFER + 5000,
            WRITE_BUFFER,
            3 * 1024 * 1024 + 1,
            SPARE_MIN,
            SPARE_MIN + 4095,
        ];
        for (round, len) in lens.into_iter().enumerate() {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + round) as u8).collect();
            let id = crate::chunk::share_id(&bytes);
            let staged = store.stage(&id, body(&bytes), len as u64).await.unwrap();
            assert_eq!(store.commit(staged, false).await.unwrap(), len as u64);
            let (got_len, stream) = store.get(&id).await.unwrap().unwrap();
            assert_eq!(got_len, len as u64);
            assert!(
                drain(stream).await.0 == bytes,
                "{len} bytes read back differ"
            );
        }
        let spare = SPARE.lock().unwrap();
        assert!(spare.len() <= SPARE_MAX);
        for raw in spare.iter() {
            assert_eq!(
                raw.as_ptr().wrapping_add(raw.len()) as usize % DIRECT_ALIGN,
                0
            );
            assert!(raw.capacity() - raw.len() >= WRITE_BUFFER);
        }
    }

    /// An upload given up halfway (its future dropped, as hyper drops a
    /// request's when the client hangs up), or staged and never
    /// committed, leaves no file in tmp/; a committed one is in place.
    #[tokio::test]
    async fn an_upload_given_up_leaves_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskShares::open(dir.path()).unwrap();
        let tmp_files = || std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
        // A first buffer's worth is written out, then the body stalls.
        let first = Bytes::from(vec![3u8; WRITE_BUFFER + 1]);
        let stalled: ByteStream = Box::pin(
            futures_util::stream::iter([Ok(first)]).chain(futures_util::stream::pending()),
        );
        let len = 2 * WRITE_BUFFER as u64;
        let cut = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            store.stage(&[1; 32], stalled, len),
        );
        assert!(cut.await.is_err(), "the stalled upload ended");
        // Gone once the write it was in is over.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tmp_files() > 0 {
            assert!(std::time::Instant::now() < deadline, "the file stayed");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Staged whole, then dropped before its commit.
        let bytes = vec![4u8; WRITE_BUFFER + 9];
        let id = crate::chunk::share_id(&bytes);
        let staged = store.stage(&id, body(&bytes), bytes.len() as u64);
        let staged = staged.await.unwrap();
        assert_eq!(tmp_files(), 1);
        drop(staged);
        assert_eq!(tmp_files(), 0);
        // Staged and committed: placed, nothing left.
        let staged = store.stage(&id, body(&bytes), bytes.len() as u64);
        let staged = staged.await.unwrap();
        assert_eq!(
            store.commit(staged, false).await.unwrap(),
            bytes.len() as u64
        );
        assert_eq!(tmp_files(), 0);
        assert!(store.contains(&id).await.unwrap());
    }

    /// A body that keeps coming, but slower than the slowest upload
    /// waited for, is refused once its time is up, small or large; one
    /// at that pace in time is taken. (Virtual time: no test waits.)
    #[tokio::test(start_paused = true)]
    async fn a_trickled_upload_is_refused_when_its_time_is_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskShares::open(dir.path()).unwrap();
        // Pieces every 50 s: never idle for BODY_IDLE (60 s).
        let trickle = |bytes: Vec<u8>, piece: usize| -> ByteStream {
            let pieces: Vec<Bytes> = bytes.chunks(piece).map(Bytes::copy_from_slice).collect();
            Box::pin(futures_util::stream::iter(pieces).then(|p| async move {
                tokio::time::sleep(std::time::Duration::from_secs(50)).await;
                Ok(p)
            }))
        };
        for len in [1000usize, SMALL_MAX as usize + 1] {
            let bytes = vec![5u8; len];
            let id = crate::chunk::share_id(&bytes);
            let slow = store
                .stage(&id, trickle(bytes.clone(), len / 4), len as u64)
                .await;
            match slow {
                Err(Error::BadRequest(m)) => assert!(m.contains("too slow"), "{len}: {m}"),
                Err(e) => panic!("{len}: {e}"),
                Ok(_) => panic!("{len}: a body trickled over 200 s was taken"),
            }
        }
        // Two pieces, 100 s: within what a 2 MiB body gets (60 s plus 64).
        let len = 2 << 20;
        let bytes = vec![6u8; len];
        let id = crate::chunk::share_id(&bytes);
        let staged = store.stage(&id, trickle(bytes, len / 2), len as u64).await;
        assert!(staged.is_ok(), "a 2 MiB body in 100 s was refused");
    }

    /// Shares up to `SMALL_MAX` become rows, larger ones files, in one
    /// batch; both read back, count as held and delete.
    #[tokio::test]
    async fn small_shares_are_rows_and_large_ones_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskShares::open(dir.path()).unwrap();
        let mut batch = Vec::new();
        let mut all = Vec::new();
        for len in [1usize, 4096, SMALL_MAX as usize, SMALL_MAX as usize + 1] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
            let id = crate::chunk::share_id(&bytes);
            batch.push((
                store.stage(&id, body(&bytes), len as u64).await.unwrap(),
                false,
            ));
            all.push((id, bytes));
        }
        let lens: Vec<u64> = store
            .commit_batch(batch)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            lens,
            all.iter().map(|(_, b)| b.len() as u64).collect::<Vec<_>>()
        );
        for (id, bytes) in &all {
            let is_file = store.path_of(id).exists();
            assert_eq!(
                is_file,
                bytes.len() as u64 > SMALL_MAX,
                "{} bytes",
                bytes.len()
            );
            assert!(store.holds(id).unwrap() && store.contains(id).await.unwrap());
            let (len, stream) = store.get(id).await.unwrap().unwrap();
            assert_eq!(len, bytes.len() as u64);
            assert!(
                drain(stream).await.0 == *bytes,
                "{} bytes read back differ",
                len
            );
        }
        // A small body that does not hash to its id is refused at staging.
        let err = store
            .stage(&[7; 32], body(b"not it"), 6)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::Mismatch(_)), "{err}");
        // As is one longer than declared.
        let (id, bytes) = &all[1];
        let err = store.stage(id, body(bytes), 100).await.err().unwrap();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        for (id, bytes) in &all {
            assert_eq!(store.delete(id).await.unwrap(), bytes.len() as u64);
            assert!(!store.holds(id).unwrap());
            assert!(store.get(id).await.unwrap().is_none());
        }
    }

    /// Storing shares makes no directory: every shard directory exists
    /// from the start. One removed by hand is made again by the next
    /// share that needs it.
    #[tokio::test]
    async fn storing_a_share_makes_no_directory_unless_its_shard_was_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskShares::open(dir.path()).unwrap();
        let shares = dir.path().join("shares");
        assert_eq!(crate::mirror::layout::dirs_under(&shares), 256);
        let mut held = Vec::new();
        for i in 0..20u32 {
            let bytes = vec![i as u8; SMALL_MAX as usize + 1 + i as usize];
            let id = crate::chunk::share_id(&bytes);
            let staged = store.stage(&id, body(&bytes), bytes.len() as u64).await;
            store.commit(staged.unwrap(), false).await.unwrap();
            assert!(store.path_of(&id).is_file());
            held.push((id, bytes));
        }
        assert_eq!(crate::mirror::layout::dirs_under(&shares), 256);
        // A shard emptied and removed by hand.
        let (id, bytes) = held.pop().unwrap();
        let shard = store.path_of(&id).parent().unwrap().to_path_buf();
        std::fs::remove_dir_all(&shard).unwrap();
        let staged = store.stage(&id, body(&bytes), bytes.len() as u64).await;
        store.commit(staged.unwrap(), false).await.unwrap();
        let (_, stream) = store.get(&id).await.unwrap().unwrap();
        assert!(drain(stream).await.0 == bytes);
        assert!(shard.is_dir());
    }

    /// A corrupt share file (from before small shares were rows) is
    /// replaced by a repair, and the row is what readers then get.
    #[tokio::test]
    async fn a_repair_replaces_a_corrupt_small_share_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskShares::open(dir.path()).unwrap();
        let bytes = b"a small share".to_vec();
        let id = crate::chunk::share_id(&bytes);
        let path = store.path_of(&id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"rotten bytes!").unwrap();
        // Without the repair flag, the held copy stands.
        let staged = store
            .stage(&id, body(&bytes), bytes.len() as u64)
            .await
            .unwrap();
        store.commit(staged, false).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"rotten bytes!");
        let staged = store
            .stage(&id, body(&bytes), bytes.len() as u64)
            .await
            .unwrap();
        store.commit(staged, true).await.unwrap();
        assert!(!path.exists(), "the corrupt file is gone");
        let (_, stream) = store.get(&id).await.unwrap().unwrap();
        assert_eq!(drain(stream).await.0, bytes);
    }

    #[tokio::test]
    async fn a_share_in_odd_pieces_over_several_buffers_is_stored_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskShares::open(dir.path()).unwrap();
        for len in [
            WRITE_BUFFER - 1,
            WRITE_BUFFER,
            WRITE_BUFFER + 1,
            2 * WRITE_BUFFER + 4095,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 11 % 241) as u8).collect();
            let id = crate::chunk::share_id(&bytes);
            // Pieces of 1 byte up to 100,000, never on a block boundary.
            let mut pieces = Vec::new();
            let mut at = 0;
            for n in [1usize, 4095, 100_000, 77_777].into_iter().cycle() {
                if at == len {
                    break;
                }
                let n = n.min(len - at);
                pieces.push(Ok(Bytes::copy_from_slice(&bytes[at..at + n])));
                at += n;
            }
            let staged = store
                .stage(
                    &id,
                    Box::pin(futures_util::stream::iter(pieces)),
                    len as u64,
                )
                .await
                .unwrap();
            let stored = store.commit_batch(vec![(staged, false)]).await;
            assert_eq!(stored.into_iter().next().unwrap().unwrap(), len as u64);
            assert_eq!(
                std::fs::metadata(store.path_of(&id)).unwrap().len(),
                len as u64
            );
            let (_, stream) = store.get(&id).await.unwrap().unwrap();
            assert!(
                drain(stream).await.0 == bytes,
                "{len} bytes read back differ"
            );
        }
    }

    #[tokio::test]
    async fn shares_read_back_whole_and_oversized_files_stream() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskShares::open(dir.path()).unwrap();
        for (len, whole) in [
            (1usize, true),
            // Around the switch to direct reads, on and off a block.
            (DIRECT_READ_MIN as usize - 1, true),
            (DIRECT_READ_MIN as usize, true),
            (DIRECT_READ_MIN as usize + 1, true),
            (700_000, true),
            (READ_WHOLE as usize + 1, false),
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let id = crate::chunk::share_id(&bytes);
            // Placed by hand: no client uploads a share over the limit.
            let path = store.path_of(&id);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            let (got_len, stream) = store.get(&id).await.unwrap().unwrap();
            assert_eq!(got_len, len as u64);
            let (got, pieces) = drain(stream).await;
            assert!(got == bytes, "{len} bytes read back differ");
            assert_eq!(pieces == 1, whole, "{len} bytes came in {pieces} pieces");
        }
        assert!(store.get(&[0; 32]).await.unwrap().is_none());
    }
}
