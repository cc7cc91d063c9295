//! Direct I/O: reads and writes that go around the page cache, for bulk
//! bytes that are written once and not read back through the cache soon.
//! Two users: a mirror's share files (`mirror::disk`) and the mount's
//! staged copies of files being written (`fuse`).
//!
//! On the 2-core VM of docs/PERFORMANCE.md, most of what a buffered write
//! of new data costs is taking fresh page-cache pages: `dd` of 1 GiB with
//! fsync takes about 1.5 s of system time buffered and 0.15 s direct.
//!
//! `O_DIRECT` wants the file offset, the length and the buffer's address on
//! a block boundary ([`ALIGN`]). Everything here falls back to ordinary I/O
//! where the file system refuses it (tmpfs on older kernels, FUSE), which
//! it says with `EINVAL`, at open or at the first read or write.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Alignment of direct writes and reads: the largest logical block size
/// in use.
pub const ALIGN: usize = 4096;

/// An empty buffer for `O_DIRECT`: its length is a few bytes of padding
/// that bring it to a block boundary, and it has room for `len` bytes more
/// after them, so it never moves while they are appended. Nothing in the
/// room is zeroed: zeroing a share's buffer first cost a mirror 4 % of its
/// CPU while storing, 10 % while serving a cold read (docs/PERFORMANCE.md).
pub fn aligned_buffer(len: usize) -> Vec<u8> {
    let mut raw: Vec<u8> = Vec::with_capacity(len + ALIGN);
    let start = raw.as_ptr().align_offset(ALIGN);
    raw.resize(start, 0);
    raw
}

/// Whether `e` is the file system refusing direct I/O.
pub fn is_refusal(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// Open `path` with `options` plus `O_DIRECT`; `None` where the file system
/// refuses the flag.
pub fn open(options: &OpenOptions, path: &Path) -> std::io::Result<Option<File>> {
    match options.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if is_refusal(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Read at most `max` bytes of `file` from `offset` onto the end of `buf`,
/// into its spare room, which must hold them, without zeroing that room
/// first; returns how many came (0 at the end of the file).
#[allow(unsafe_code)]
pub fn read_appending(
    file: &File,
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

/// Writes of at least this many whole blocks' bytes go direct; smaller
/// ones (an untar's small files, an editor's save) stay buffered, where a
/// write does not wait for the disk.
pub const WRITE_MIN: usize = 128 * 1024;

thread_local! {
    /// Each thread's block-aligned buffer for [`write_at`].
    static WRITE_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Write all of `data` at `offset` of the file at `path`, which exists.
///
/// When `offset` is on a block boundary and `data` holds at least
/// [`WRITE_MIN`] bytes of whole blocks, those blocks go direct (copied
/// first into this thread's aligned buffer, since `data` need not be
/// aligned) and the rest buffered; otherwise all of it is buffered. The
/// kernel keeps the two coherent: a direct write first writes out and
/// drops the cached pages it covers. `direct` says whether to try: it is
/// cleared the first time the file system refuses, for every later call
/// that shares it; with `None` the write is buffered.
pub fn write_at(
    path: &Path,
    data: &[u8],
    offset: u64,
    direct: Option<&AtomicBool>,
) -> std::io::Result<()> {
    let blocks = data.len() / ALIGN * ALIGN;
    let mut done = 0;
    if let Some(direct) = direct.filter(|d| d.load(Ordering::Relaxed))
        && offset.is_multiple_of(ALIGN as u64)
        && blocks >= WRITE_MIN
    {
        match write_blocks(path, &data[..blocks], offset) {
            Ok(()) => done = blocks,
            Err(e) if is_refusal(&e) => {
                tracing::info!(path = %path.display(), "no direct I/O here; staging writes go through the page cache");
                direct.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    if done < data.len() {
        let file = OpenOptions::new().write(true).open(path)?;
        file.write_all_at(&data[done..], offset + done as u64)?;
    }
    Ok(())
}

/// Write whole blocks direct; `EINVAL` if the file system refuses.
fn write_blocks(path: &Path, blocks: &[u8], offset: u64) -> std::io::Result<()> {
    let file = open(OpenOptions::new().write(true), path)?
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    WRITE_BUFFER.with_borrow_mut(|raw| {
        let mut start = raw.as_ptr().align_offset(ALIGN);
        if raw.capacity() < start + blocks.len() {
            *raw = aligned_buffer(blocks.len());
            start = raw.len();
        }
        // Within the room: the buffer does not move.
        raw.resize(start, 0);
        raw.extend_from_slice(blocks);
        let written = file.write_all_at(&raw[start..], offset);
        raw.truncate(start);
        written
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_of_any_shape_land_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        let direct = AtomicBool::new(true);
        let mut want = vec![0u8; 0];
        let pattern = |n: usize, seed: u8| -> Vec<u8> {
            (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
        };
        // Aligned and long (direct), with a tail; unaligned; short; an
        // overwrite of direct blocks by a buffered write and back.
        let writes = [
            (0usize, WRITE_MIN + 100, 1u8),
            (WRITE_MIN + 100, 3 * ALIGN, 2),
            (0, 10, 3),
            (ALIGN, WRITE_MIN * 2, 4),
            (5, 7, 5),
            (8 * ALIGN, WRITE_MIN, 6),
        ];
        for (offset, len, seed) in writes {
            let data = pattern(len, seed);
            write_at(&path, &data, offset as u64, Some(&direct)).unwrap();
            if want.len() < offset + len {
                want.resize(offset + len, 0);
            }
            want[offset..offset + len].copy_from_slice(&data);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                want,
                "after write at {offset}"
            );
        }
    }

    #[test]
    fn writes_land_on_tmpfs_and_with_direct_off() {
        // /dev/shm is tmpfs, which refuses O_DIRECT on older kernels and
        // takes it on newer ones: either way the bytes land.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        let direct = AtomicBool::new(true);
        let data = vec![9u8; WRITE_MIN];
        write_at(&path, &data, 0, Some(&direct)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        write_at(&path, &data, WRITE_MIN as u64, None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 2 * WRITE_MIN);
    }
}
