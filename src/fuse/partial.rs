//! Partly staged files. A large stored file opened for writing is staged
//! without its content: the staged copy starts as a hole of the file's
//! length, and a block ([`BLOCK`] bytes) is fetched from the stored
//! version the copy began from (its base) only when a change covers part
//! of it. Reads of the blocks not fetched go to the mirrors, and the upload
//! takes the base's chunks that lie in them as they are, without reading
//! them (`Vault::put_path_over`). Opening a 1 GiB file to append a line no
//! longer downloads the gigabyte first.
//!
//! Which blocks the copy holds is recorded beside it, in `STAGED.fill`,
//! so that after a crash the next mount knows which bytes are the base's.
//! The log (docs/FORMATS.md, "Partly staged files") is a version record,
//! then records appended in order, each a kind byte and a little-endian
//! u64: a block the copy holds from then on, or a length the file was
//! truncated to (the base's bytes end there). A torn last record is
//! ignored. Two orderings keep a power cut from ever making a block taken
//! as the copy's hold zeros where the base had data:
//! - a block is recorded only once its bytes are on disk (`fdatasync`);
//! - a truncation is recorded once the copy's new length is on disk, and
//!   the record is synced before the truncate returns, so no growth of
//!   the file (which reads as zeros) can reach the disk before it.
//!
//! Recovery does not resume a partly staged file: it fetches every block
//! the log does not name and removes the log, and the file is then staged
//! as any other (`LodeFs::complete_partial`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::caps::FileReadCap;

/// The unit the copy is filled in.
pub const BLOCK: u64 = 1 << 20;
/// Stored files at least this large are staged partly; smaller ones are
/// fetched whole when opened for writing, as before.
pub const PARTLY_FROM: u64 = 8 << 20;

const VERSION: u8 = 0;
const HELD: u8 = 1;
const TRUNCATED: u8 = 2;
const LOG_VERSION: u64 = 1;
const RECORD: usize = 9;

/// Where the log of the staged copy `staged` is.
pub fn log_path(staged: &Path) -> PathBuf {
    staged.with_extension("fill")
}

/// Whether `file` in the staging directory is a fill log, not data.
pub fn is_log(file: &Path) -> bool {
    file.extension().is_some_and(|e| e == "fill")
}

/// Remove a staged copy and its log, if it has one.
pub fn remove_staged(staged: &Path) {
    let _ = std::fs::remove_file(staged);
    let _ = std::fs::remove_file(log_path(staged));
}

/// Which blocks of a copy are held: a bit per block.
#[derive(Default, Clone)]
struct Blocks(Vec<u64>);

impl Blocks {
    fn get(&self, b: u64) -> bool {
        let (word, bit) = ((b / 64) as usize, b % 64);
        self.0.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn set(&mut self, b: u64) {
        let (word, bit) = ((b / 64) as usize, b % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << bit;
    }
}

/// What a log says, replayed.
#[derive(Clone)]
struct State {
    /// Below this, a block not held is the base's; from here on the copy
    /// holds every byte (the file was truncated to it, then maybe grown).
    base_len: u64,
    held: Blocks,
}

impl State {
    /// Replay a log's bytes over a base of `base_len` bytes.
    fn replay(bytes: &[u8], base_len: u64) -> std::io::Result<State> {
        let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
        let mut records = bytes.chunks_exact(RECORD);
        match records.next() {
            Some(r) if r[0] == VERSION && r[1..] == LOG_VERSION.to_le_bytes() => {}
            _ => return Err(bad("not a fill log of a known version")),
        }
        let mut state = State {
            base_len,
            held: Blocks::default(),
        };
        // Blocks from here on are never the base's, so never consulted: a
        // damaged record naming one (2^40, say) would otherwise grow the
        // bitmap to fit it, and abort every recovery on the allocation.
        let base_blocks = base_len.div_ceil(BLOCK);
        // A torn last record (a crash mid-append) is not in `records`.
        for r in records {
            let value = u64::from_le_bytes(r[1..].try_into().expect("8 bytes"));
            match r[0] {
                HELD if value >= base_blocks => {}
                HELD => state.held.set(value),
                TRUNCATED => state.base_len = state.base_len.min(value),
                _ => return Err(bad("unknown fill log record")),
            }
        }
        Ok(state)
    }

    /// The blocks not held that lie wholly in `[from, to)` (a block the
    /// base ends in counts to where the base ends).
    fn absent_within(&self, from: u64, to: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut b = from.div_ceil(BLOCK);
        while b * BLOCK < self.base_len && ((b + 1) * BLOCK).min(self.base_len) <= to {
            if !self.held.get(b) {
                out.push(b);
            }
            b += 1;
        }
        out
    }

    /// The ranges in `[from, to)` that are the base's, in order.
    fn absent(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let to = to.min(self.base_len);
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut at = from;
        while at < to {
            let b = at / BLOCK;
            let end = ((b + 1) * BLOCK).min(to);
            if !self.held.get(b) {
                match out.last_mut() {
                    Some(last) if last.1 == at => last.1 = end,
                    _ => out.push((at, end)),
                }
            }
            at = end;
        }
        out
    }
}

/// A partly staged copy: its base, and which blocks it holds.
pub struct Partial {
    inner: Mutex<Inner>,
    /// Held across a change of the copy (fetching what it needs first,
    /// then writing): two changes must not both fetch a block, the later
    /// one writing the base's bytes over the earlier one's. Taken before
    /// the mount's tree lock, never while holding it (it is held across
    /// network fetches).
    changing: Mutex<()>,
}

struct Inner {
    base: FileReadCap,
    state: State,
    log: std::fs::File,
}

impl Partial {
    /// Start the log of `staged`, a copy of `base` holding nothing yet.
    pub fn create(staged: &Path, base: FileReadCap) -> std::io::Result<Partial> {
        let mut log = std::fs::File::create(log_path(staged))?;
        log.write_all(&record(VERSION, LOG_VERSION))?;
        let state = State {
            base_len: base.size,
            held: Blocks::default(),
        };
        Ok(Partial::with(base, state, log))
    }

    /// The log of `staged`, a copy of `base`, as a crashed mount left it.
    pub fn open(staged: &Path, base: FileReadCap) -> std::io::Result<Partial> {
        let bytes = std::fs::read(log_path(staged))?;
        let state = State::replay(&bytes, base.size)?;
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(log_path(staged))?;
        Ok(Partial::with(base, state, log))
    }

    fn with(base: FileReadCap, state: State, log: std::fs::File) -> Partial {
        Partial {
            inner: Mutex::new(Inner { base, state, log }),
            changing: Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hold while changing the copy.
    pub fn changing(&self) -> MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored version whose bytes the blocks not held are.
    pub fn base(&self) -> FileReadCap {
        self.lock().base.clone()
    }

    /// Before [`Self::rebase`] onto a version of `size` bytes: make the log
    /// say where the base's bytes end now, synced. A log is replayed over
    /// its note's base, taking the base's bytes to run to that version's
    /// end; over a version longer than the copy's base (the file grew
    /// before that upload), the grown blocks, which are the copy's and
    /// never logged, would be taken as the base's, and recovery after a
    /// crash filled them from the upload, over the writes made since
    /// (found by a helper's fuzzer). The record states what holds already
    /// (`base_len` never grows), so it is safe to write whether or not the
    /// rebase follows. An error leaves the copy on its old base.
    pub fn bound_for(&self, size: u64) -> std::io::Result<()> {
        let mut inner = self.lock();
        if size <= inner.state.base_len {
            return Ok(());
        }
        let len = inner.state.base_len;
        inner.log.write_all(&record(TRUNCATED, len))?;
        inner.log.sync_data()
    }

    /// The file was uploaded as `cap` with nothing changed meanwhile: the
    /// blocks not held are `cap`'s bytes too, at the same places (the old
    /// base's shares may lapse now). [`Self::bound_for`] `cap.size` first.
    pub fn rebase(&self, cap: FileReadCap) {
        self.lock().base = cap;
    }

    /// The ranges in `[from, to)` that the copy does not hold, in order.
    pub fn absent(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        self.lock().state.absent(from, to)
    }

    /// What a change of `[from, to)` must fetch first: the blocks it
    /// covers only partly that the copy does not hold, as byte ranges.
    pub fn to_fetch(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        if from >= to {
            return Vec::new();
        }
        let inner = self.lock();
        let mut out = Vec::new();
        for b in [from / BLOCK, to.saturating_sub(1) / BLOCK] {
            let (lo, hi) = (b * BLOCK, ((b + 1) * BLOCK).min(inner.state.base_len));
            let whole = from <= lo && hi <= to;
            if lo < hi && !whole && !inner.state.held.get(b) && out.last() != Some(&(lo, hi)) {
                out.push((lo, hi));
            }
        }
        out
    }

    /// Record that the copy now holds every block of the base's part that
    /// lies wholly in `[from, to)` (or ends there with the base). The
    /// caller has made those bytes durable (`fdatasync`) first.
    pub fn hold(&self, from: u64, to: u64) -> std::io::Result<()> {
        let mut inner = self.lock();
        let blocks = inner.state.absent_within(from, to);
        let records: Vec<u8> = blocks.iter().flat_map(|&b| record(HELD, b)).collect();
        // Logged first: a log that could not take them (a full disk) left
        // the blocks held here and not in the log, so the copy was read
        // as theirs now and a recovery took the base's back.
        if !records.is_empty() {
            inner.log.write_all(&records)?;
        }
        for b in blocks {
            inner.state.held.set(b);
        }
        Ok(())
    }

    /// Where a write from `from` that was cut short at `end` counts as
    /// ending: at `end`, unless `end` falls inside a block of the base the
    /// copy does not hold, which the write, asked to cover it whole, was
    /// to make the copy's without fetching it. Part of such a block is
    /// neither the copy's nor the base's, so the write counts as ending
    /// where the block begins (or at `from`: nothing of it stands), and
    /// the block stays the base's. Taken at `end`, the bytes the writer
    /// was told were written read back as the base's, and were uploaded
    /// and recovered as the base's.
    pub fn cut_short_at(&self, from: u64, end: u64) -> u64 {
        let inner = self.lock();
        let b = end / BLOCK;
        let (lo, hi) = (b * BLOCK, ((b + 1) * BLOCK).min(inner.state.base_len));
        match lo < end && end < hi && !inner.state.held.get(b) {
            true => lo.max(from),
            false => end,
        }
    }

    /// Whether a change of `[from, to)` leaves blocks to [`Self::hold`].
    pub fn covers_absent(&self, from: u64, to: u64) -> bool {
        !self.lock().state.absent_within(from, to).is_empty()
    }

    /// Make the log durable.
    pub fn sync(&self) -> std::io::Result<()> {
        self.lock().log.sync_data()
    }

    /// Where the base's bytes end now.
    pub fn base_len(&self) -> u64 {
        self.lock().state.base_len
    }

    /// Record that the file was truncated to `len` (the copy's new length
    /// is on disk), synced before returning.
    pub fn truncated(&self, len: u64) -> std::io::Result<()> {
        let mut inner = self.lock();
        if len >= inner.state.base_len {
            return Ok(());
        }
        inner.state.base_len = len;
        inner.log.write_all(&record(TRUNCATED, len))?;
        inner.log.sync_data()
    }
}

fn record(kind: u8, value: u64) -> [u8; RECORD] {
    let mut r = [0; RECORD];
    r[0] = kind;
    r[1..].copy_from_slice(&value.to_le_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(records: &[(u8, u64)]) -> Vec<u8> {
        let mut bytes = record(VERSION, LOG_VERSION).to_vec();
        for &(k, v) in records {
            bytes.extend_from_slice(&record(k, v));
        }
        bytes
    }

    #[test]
    fn a_log_replays_held_blocks_and_the_shortest_truncation() {
        let mut bytes = log(&[
            (HELD, 1),
            (TRUNCATED, 5 * BLOCK + 7),
            (HELD, 3),
            (TRUNCATED, 9 * BLOCK),
        ]);
        // A torn last record is ignored.
        bytes.extend_from_slice(&[HELD, 2, 0]);
        let s = State::replay(&bytes, 10 * BLOCK).unwrap();
        assert_eq!(s.base_len, 5 * BLOCK + 7);
        assert_eq!(
            s.absent(0, 20 * BLOCK),
            vec![
                (0, BLOCK),
                (2 * BLOCK, 3 * BLOCK),
                (4 * BLOCK, 5 * BLOCK + 7)
            ]
        );
        assert_eq!(s.absent(BLOCK / 2, BLOCK + 1), vec![(BLOCK / 2, BLOCK)]);
        assert!(
            State::replay(&log(&[(9, 0)]), BLOCK).is_err(),
            "unknown record"
        );
        assert!(
            State::replay(&[1, 2, 3], BLOCK).is_err(),
            "no version record"
        );
    }

    /// A damaged record naming a block far past the base (a flipped high
    /// bit) is ignored: such blocks are never the base's, and fitting the
    /// bitmap to it asked for up to 2^61 bytes, aborting every recovery.
    #[test]
    fn a_held_block_past_the_base_takes_no_room() {
        let bytes = log(&[(HELD, 1), (HELD, 1 << 40), (HELD, u64::MAX)]);
        let s = State::replay(&bytes, 4 * BLOCK).unwrap();
        assert!(s.held.0.len() <= 1, "{} words", s.held.0.len());
        assert_eq!(
            s.absent(0, 4 * BLOCK),
            vec![(0, BLOCK), (2 * BLOCK, 4 * BLOCK)]
        );
    }

    #[test]
    fn a_rebase_onto_a_longer_version_keeps_the_old_end() {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("copy");
        let cap = |size: u64| FileReadCap {
            read_key: crate::crypto::ReadKey::from_bytes([3; 32]),
            root: [size as u8; 32],
            size,
        };
        let partial = Partial::create(&staged, cap(10 * BLOCK)).unwrap();
        partial.hold(3 * BLOCK, 4 * BLOCK).unwrap();
        // Grown to 12 blocks, uploaded: the copy takes that for its base.
        partial.bound_for(12 * BLOCK).unwrap();
        partial.rebase(cap(12 * BLOCK));
        // As recovery replays it, over the note's (new) base.
        let replayed = Partial::open(&staged, cap(12 * BLOCK)).unwrap();
        assert_eq!(replayed.base_len(), 10 * BLOCK);
        assert_eq!(
            replayed.absent(0, 12 * BLOCK),
            vec![(0, 3 * BLOCK), (4 * BLOCK, 10 * BLOCK)]
        );
        // A shorter or equal version needs no record.
        let before = std::fs::metadata(log_path(&staged)).unwrap().len();
        replayed.bound_for(10 * BLOCK).unwrap();
        assert_eq!(std::fs::metadata(log_path(&staged)).unwrap().len(), before);
    }

    /// A write cut short inside a block it was to cover whole, never
    /// fetched, counts only up to that block; inside a block the copy
    /// holds, or past the base, where it stopped.
    #[test]
    fn a_write_cut_short_counts_only_whole_blocks_it_was_not_fetched_for() {
        let dir = tempfile::tempdir().unwrap();
        let cap = FileReadCap {
            read_key: crate::crypto::ReadKey::from_bytes([3; 32]),
            root: [1; 32],
            size: 10 * BLOCK + 5,
        };
        let partial = Partial::create(&dir.path().join("copy"), cap).unwrap();
        partial.hold(4 * BLOCK, 5 * BLOCK).unwrap();
        let k = 1 << 10;
        // Asked for [2, 4) MiB: stopped in block 2, then in block 3.
        assert_eq!(
            partial.cut_short_at(2 * BLOCK, 2 * BLOCK + 300 * k),
            2 * BLOCK
        );
        assert_eq!(partial.cut_short_at(2 * BLOCK, 3 * BLOCK + k), 3 * BLOCK);
        // At a block's end, or inside a held one: as it stopped.
        assert_eq!(partial.cut_short_at(2 * BLOCK, 3 * BLOCK), 3 * BLOCK);
        assert_eq!(
            partial.cut_short_at(4 * BLOCK, 4 * BLOCK + k),
            4 * BLOCK + k
        );
        // Begun inside a block not held: nothing of it stands.
        let from = 6 * BLOCK + 10;
        assert_eq!(partial.cut_short_at(from, 6 * BLOCK + 20), from);
        // The base's short last block, and past the base.
        assert_eq!(partial.cut_short_at(10 * BLOCK, 10 * BLOCK + 2), 10 * BLOCK);
        assert_eq!(
            partial.cut_short_at(11 * BLOCK, 11 * BLOCK + 7),
            11 * BLOCK + 7
        );
    }

    #[test]
    fn a_change_fetches_only_the_blocks_it_covers_partly() {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("copy");
        let cap = FileReadCap {
            read_key: crate::crypto::ReadKey::from_bytes([2; 32]),
            root: [1; 32],
            size: 4 * BLOCK + 100,
        };
        let p = Partial::create(&staged, cap.clone()).unwrap();
        // Within one block: that block.
        assert_eq!(p.to_fetch(10, 20), vec![(0, BLOCK)]);
        // Across two: both ends; a block covered wholly is not fetched.
        assert_eq!(
            p.to_fetch(BLOCK / 2, 3 * BLOCK + 1),
            vec![(0, BLOCK), (3 * BLOCK, 4 * BLOCK)]
        );
        assert_eq!(p.to_fetch(BLOCK, 3 * BLOCK), Vec::<(u64, u64)>::new());
        // The base's short last block, covered to its end: whole.
        assert_eq!(p.to_fetch(4 * BLOCK, 5 * BLOCK), Vec::<(u64, u64)>::new());
        assert_eq!(
            p.to_fetch(4 * BLOCK + 1, 5 * BLOCK),
            vec![(4 * BLOCK, 4 * BLOCK + 100)]
        );
        // Past the base: nothing.
        assert_eq!(
            p.to_fetch(6 * BLOCK, 6 * BLOCK + 5),
            Vec::<(u64, u64)>::new()
        );

        assert!(p.covers_absent(BLOCK / 2, 3 * BLOCK));
        p.hold(BLOCK / 2, 3 * BLOCK).unwrap();
        assert!(!p.covers_absent(BLOCK / 2, 3 * BLOCK));
        p.hold(0, BLOCK).unwrap();
        assert_eq!(p.absent(0, 5 * BLOCK), vec![(3 * BLOCK, 4 * BLOCK + 100)]);
        p.truncated(3 * BLOCK + 5).unwrap();
        assert_eq!(p.absent(0, 5 * BLOCK), vec![(3 * BLOCK, 3 * BLOCK + 5)]);

        // What the log says after a crash is what was recorded.
        drop(p);
        let again = Partial::open(&staged, cap).unwrap();
        assert_eq!(again.absent(0, 5 * BLOCK), vec![(3 * BLOCK, 3 * BLOCK + 5)]);
        assert_eq!(again.base_len(), 3 * BLOCK + 5);
    }
}
