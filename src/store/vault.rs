//! The vault: an identity's keys plus a grid, and the pipelines that turn
//! files and directory trees into shares and slots, and back.

use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use super::cache::Plain;
use super::sparse::{self, Extent};
use super::{ChunkCache, Error, Grid, GridConfig, Result, Storage};
use crate::caps::{Cap, DirReadCap, DirWriteCap, FileReadCap};
use crate::chunk::{self, ChunkerParams, FileEncoder, Node, Params, Share, share};
use crate::crypto::{ConvergenceSecret, ReadKey, RootSecret, SlotSeed};
use crate::dir::{Encoded, Entry, EntryKind, Listing, MAX_SLOT_BYTES, SlotEnvelope, check_name};

/// Share bytes a vault's puts keep in flight to the mirrors, all of them
/// together. Each upload waits for a mirror's fsync, so the window must
/// cover that latency; it also bounds the memory of uploads. It was per
/// put: four files written at once through the mount held four windows,
/// and with 4 MiB chunks the mount went past 400 MiB (a sweep, 4 × `dd`
/// of 500 MiB each). 48 MiB since a put seals a second batch only while
/// half the window is free: a larger window lets it do so more often (a
/// 1 GiB write 3-5 % faster with 48 or 64 MiB than with 32), and each
/// 16 MiB more is about 16 MiB more of the mount's peak while the mirrors
/// lag (docs/PERFORMANCE.md, "A larger upload window").
const UPLOAD_WINDOW_BYTES: usize = 48 << 20;
/// The unit the window is counted in.
const WINDOW_PERMIT_BYTES: usize = 64 << 10;
const WINDOW_PERMITS: usize = UPLOAD_WINDOW_BYTES / WINDOW_PERMIT_BYTES;
/// A hole of at least this many maximum chunks is not read on upload
/// (see [`Vault::put_path`]); shorter ones are read as zeros.
const HOLE_MIN_CHUNKS: u64 = 2;
/// A downloaded stretch of zeros at least this long is left as a hole
/// (see [`Vault::get_to_file`]).
pub const HOLE_WRITE_MIN: usize = 4096;
/// Chunks one walk (a read, or a readahead top-up) keeps in flight.
const READAHEAD: usize = 16;
/// A listing whose plaintext is larger than this is stored as pages of
/// about this size (docs/ARCHITECTURE.md, "Large directories are paged").
pub const PAGE_BYTES: usize = 1 << 20;
/// Listing pages stored or fetched at once.
const PAGES_IN_FLIGHT: usize = 4;
/// Pages remembered as stored, by the hash of their plaintext.
const PAGE_MEMO: usize = 4096;

/// Whether `bytes` are all zeros: compared with a block of zeros, a
/// block at a time (libc's `memcmp`, fast in every build).
fn all_zeros(bytes: &[u8]) -> bool {
    static ZEROS: [u8; 4096] = [0; 4096];
    bytes.chunks(ZEROS.len()).all(|b| b == &ZEROS[..b.len()])
}

/// What an upload's chunking stage hands its sealers, in file order.
enum Piece {
    /// A chunk's bytes, as the chunker cut them (keyed by its sealer).
    Data(Vec<u8>),
    /// A chunk's bytes and their convergent key, hashed on the chunking
    /// thread (see [`Vault::put_pieces`]).
    Keyed(crate::crypto::ChunkKey, Vec<u8>),
    /// A chunk of this many zeros, part of a hole: not read, and sealed
    /// once per length.
    Zeros(usize),
    /// A chunk of an earlier version of the file, found unchanged and
    /// confirmed on the mirrors: its key and shares are taken as they are.
    Stored(chunk::NodeEntry, crate::crypto::ChunkKey),
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::Data(d) | Piece::Keyed(_, d) => d.len(),
            Piece::Zeros(n) => *n,
            Piece::Stored(entry, ..) => entry.len as usize,
        }
    }
}

/// The bytes a partly staged file's local copy lacks
/// ([`Vault::put_partial`]): its last version's own, at the same places.
pub struct Absent {
    /// Ranges `[from, to)`, in order, apart.
    pub ranges: Vec<(u64, u64)>,
    /// Fill a buffer with the last version's bytes at an offset. Called on
    /// a blocking thread.
    pub read: ReadAt,
}

/// Fills a buffer with bytes from an offset.
pub type ReadAt = Arc<dyn Fn(u64, &mut [u8]) -> std::io::Result<()> + Send + Sync>;

/// A local file, with [`Absent`]'s ranges read from elsewhere.
struct Patched {
    file: std::fs::File,
    absent: Option<Absent>,
}

impl Patched {
    /// The absent ranges meeting `[from, to)`, clipped to it.
    fn absent_in(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let ranges = self.absent.as_ref().map_or(&[][..], |a| &a.ranges[..]);
        let first = ranges.partition_point(|&(_, hi)| hi <= from);
        ranges[first..]
            .iter()
            .take_while(move |&&(lo, _)| lo < to)
            .map(move |&(lo, hi)| (lo.max(from), hi.min(to)))
    }

    /// Whether the local copy lacks all of `[from, to)`.
    fn lacks(&self, from: u64, to: u64) -> bool {
        self.absent_in(from, to).next() == Some((from, to))
    }

    /// Fill `buf` from `at`, all of it or an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, at)?;
        self.patch(buf, at)
    }

    /// Put the absent bytes into `buf`, read from the file at `at`.
    fn patch(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        if let Some(absent) = &self.absent {
            for (lo, hi) in self.absent_in(at, at + buf.len() as u64) {
                (absent.read)(lo, &mut buf[(lo - at) as usize..(hi - at) as usize])?;
            }
        }
        Ok(())
    }
}

/// [`Patched`] read in order from `pos`.
struct PatchedReader {
    source: Arc<Patched>,
    pos: u64,
}

impl Read for PatchedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.source.file.read_at(buf, self.pos)?;
        self.source.patch(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Chunks of a file's last version a new version may take as they are,
/// by key, each with whether the mirrors confirmed it ([`Vault::known`]).
type Known = Arc<HashMap<[u8; 32], (chunk::NodeEntry, bool)>>;

/// A piece after its key is known: sealed or taken, or one of the last
/// version's chunks still to be confirmed on the mirrors.
enum Checked {
    Done(Sealed),
    Confirm(chunk::NodeEntry, crate::crypto::ChunkKey, Vec<u8>),
}

/// A piece out of the sealing stage, in file order.
enum Sealed {
    New(u64, share::SealedChunk),
    Stored(chunk::NodeEntry, crate::crypto::ChunkKey),
}

/// Chunks sealed together by one put ([`share::seal_chunks_keyed`]).
const SEAL_BATCH: usize = 4;

/// Batches one put seals at once, each on its own blocking thread (within
/// the vault's `sealing` limit of one per core), the second only while
/// `SECOND_SEALER_ROOM` of the window is free (`store::adaptive`). With
/// one, a single file's upload sealed on one core: sealing was its
/// slowest stage, and the other core idled whenever the mirrors and the
/// chunker left it free (docs/PERFORMANCE.md, "Where a written GiB's CPU
/// goes, by process").
const SEALING_PER_PUT: usize = 2;

/// Window permits free for a put to start sealing a batch beside the one
/// it is sealing: half the window.
const SECOND_SEALER_ROOM: usize = WINDOW_PERMITS / 2;

/// The blocking half of sealing a batch of pieces, in order: each chunk's
/// convergent key, then every chunk not already stored sealed together.
/// A chunk `known` from the file's last version is taken as stored there
/// (or left to confirm); a run of zeros is sealed once per length.
fn seal_pieces(
    pieces: Vec<Piece>,
    conv: &ConvergenceSecret,
    params: Params,
    known: Option<Known>,
    zeros: &std::sync::Mutex<HashMap<usize, share::SealedChunk>>,
    chunks_sealed: &std::sync::atomic::AtomicU64,
) -> Vec<Checked> {
    let mut out: Vec<Option<Checked>> = Vec::with_capacity(pieces.len());
    let mut to_seal = Vec::new();
    for piece in pieces {
        let len = piece.len() as u64;
        let (key, chunk) = match piece {
            Piece::Stored(entry, key) => {
                out.push(Some(Checked::Done(Sealed::Stored(entry, key))));
                continue;
            }
            Piece::Zeros(n) => {
                let mut zeros = zeros.lock().expect("zeros lock");
                let sealed = zeros.entry(n).or_insert_with(|| {
                    chunks_sealed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    share::seal_chunk_owned(conv, params, vec![0; n])
                });
                out.push(Some(Checked::Done(Sealed::New(len, sealed.clone()))));
                continue;
            }
            Piece::Keyed(key, chunk) => (key, chunk),
            Piece::Data(chunk) => (share::chunk_key(conv, params, &chunk), chunk),
        };
        let stored = known.as_ref().and_then(|k| k.get(key.expose()));
        out.push(match stored.filter(|(e, _)| e.len == len) {
            Some((entry, true)) => Some(Checked::Done(Sealed::Stored(entry.clone(), key))),
            Some((entry, false)) => Some(Checked::Confirm(entry.clone(), key, chunk)),
            None => {
                to_seal.push((out.len(), key, chunk));
                None
            }
        });
    }
    for (at, sealed) in seal_new(params, chunks_sealed, to_seal) {
        out[at] = Some(Checked::Done(sealed));
    }
    out.into_iter()
        .map(|c| c.expect("every piece checked or sealed"))
        .collect()
}

/// Seal chunks together and count them, each handed back beside the
/// place it came with.
fn seal_new(
    params: Params,
    chunks_sealed: &std::sync::atomic::AtomicU64,
    chunks: Vec<(usize, crate::crypto::ChunkKey, Vec<u8>)>,
) -> Vec<(usize, Sealed)> {
    chunks_sealed.fetch_add(chunks.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let at: Vec<(usize, u64)> = chunks
        .iter()
        .map(|(i, _, c)| (*i, c.len() as u64))
        .collect();
    let chunks = chunks.into_iter().map(|(_, k, c)| (k, c)).collect();
    at.into_iter()
        .zip(share::seal_chunks_keyed(params, chunks))
        .map(|((i, len), sealed)| (i, Sealed::New(len, sealed)))
        .collect()
}

/// The longest chain of homes [`Vault::lives_in`] follows to the root.
const HOME_DEPTH_MAX: usize = 256;

/// The read buffer of a file upload, at most.
const READ_BUFFER: usize = 1 << 20;

/// Told how many bytes of a file an upload has just covered.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// A reader that reports what it reads to a [`Progress`].
struct Counted<R> {
    inner: R,
    progress: Progress,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
}

/// One identity's view of the grid.
pub struct Vault {
    grid: Arc<Grid>,
    conv: ConvergenceSecret,
    chunker: ChunkerParams,
    root: DirWriteCap,
    /// Verified plaintext chunks, bounded in bytes (or by the two newest).
    cache: std::sync::Mutex<ChunkCache>,
    /// Opened manifest nodes, keyed by SHA-256(share ids ‖ read key) so a
    /// hit needs the same shares and key the node was opened with.
    nodes: std::sync::Mutex<lru::LruCache<[u8; 32], Arc<Node>>>,
    /// Chunks being fetched now, by cache slot: a reader and the
    /// readahead asking for the same chunk share one fetch and one
    /// decryption.
    fetching: std::sync::Mutex<HashMap<[u8; 32], Arc<Fetching>>>,
    /// Listings larger than this go into pages of about this size.
    page_bytes: usize,
    /// The largest slot this vault publishes: the mirrors' limit.
    slot_limit: usize,
    /// Listing pages this vault stored, by SHA-256 of their plaintext, and
    /// when: an unchanged page of a large directory is not sealed again
    /// within the grid's placed window (after that its shares may have
    /// lapsed, and it is stored again).
    stored_pages: std::sync::Mutex<lru::LruCache<[u8; 32], (FileReadCap, std::time::Instant)>>,
    /// The upload window shared by every put, in `WINDOW_PERMIT_BYTES`.
    window: Arc<tokio::sync::Semaphore>,
    /// Batches of chunks being sealed at once by every put together: one
    /// per core, and one per put. Each chunk in sealing holds its
    /// plaintext, ciphertext and shares.
    sealing: Arc<tokio::sync::Semaphore>,
    /// Chunks sealed by every put so far (a hole's zeros once per length).
    chunks_sealed: Arc<std::sync::atomic::AtomicU64>,
}

/// Batches sealed at once: one per core (at least 2, at most 8).
fn sealers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

/// One chunk fetch that several readers may wait on.
type Fetching = tokio::sync::OnceCell<Plain>;

/// Takes a chunk's fetch cell out of `Vault::fetching` when dropped, if it
/// is still the one there.
struct Retire<'a> {
    fetching: &'a std::sync::Mutex<HashMap<[u8; 32], Arc<Fetching>>>,
    slot: [u8; 32],
    cell: Arc<Fetching>,
}

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        if fetching
            .get(&self.slot)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            fetching.remove(&self.slot);
        }
    }
}

/// Bytes of a file, as slices of shared buffers (verified chunks).
pub struct Pieces(Vec<Bytes>);

impl Pieces {
    /// Bytes already in memory, as one piece.
    pub fn owned(bytes: Vec<u8>) -> Pieces {
        Pieces(vec![Bytes::from(bytes)])
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes as one slice: borrowed if they are one piece, else joined.
    pub fn joined(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.0[..] {
            [] => std::borrow::Cow::Borrowed(&[]),
            [one] => std::borrow::Cow::Borrowed(one),
            many => {
                let mut out = Vec::with_capacity(self.len());
                for piece in many {
                    out.extend_from_slice(piece);
                }
                std::borrow::Cow::Owned(out)
            }
        }
    }
}

/// How far behind a reader [`Vault::prefetch`] looks, at most, for the
/// chunks it finished since its last top-up: past what it reads between
/// two top-ups (`READAHEAD_STEP` in the mount) and a chunk.
const FINISHED_SPAN: u64 = 16 << 20;

/// What [`Vault::walk_picked`] does with a chunk in its range.
enum Pick {
    /// Fetch it and hand it on.
    Take,
    /// Pass over it.
    Skip,
    /// Neither it nor any after it.
    Stop,
}

/// Manifest nodes kept open (a full leaf is about 100 KiB).
const NODE_CACHE: usize = 64;

/// Default bytes of verified chunks kept in memory: ten or so 4 MiB
/// chunks, room for the mount's 32 MiB of readahead and the chunk being
/// read. It was 64 MiB; with chunks four times larger that took the
/// mount to the edge of its 256 MiB budget while writing
/// (docs/PERFORMANCE.md, "Larger chunks").
pub const DEFAULT_CACHE_BYTES: usize = 48 << 20;

/// How long a cached chunk no one reads stays: a minute is long past any
/// readahead's use of it, and what is read again later is mostly in the
/// kernel's page cache. Without it, a mount kept the chunks of its last
/// large read (the whole budget) beside whatever it did next, for good:
/// 48 MiB of a 4 GiB write's memory in `scripts/bench-mount.sh`.
pub const CACHE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Seconds and nanoseconds since the Unix epoch, now.
pub fn now() -> (i64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

/// The seq to publish a directory at after `current` (`None`: no mirror
/// that answered holds it). A first publish starts at the microseconds
/// since the epoch rather than at 1: a directory taken as new while some
/// mirrors were away (`Grid::get_slot`) may have versions on them from a
/// publish that never reached `happy` mirrors (a session that crashed, or
/// another machine), and counting from 1 those could outnumber this
/// writer's once the mirrors are back, and hide its changes.
pub(crate) fn next_seq(current: Option<u64>) -> u64 {
    match current {
        Some(seq) => seq + 1,
        None => {
            let micros = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            u64::try_from(micros).unwrap_or(u64::MAX / 2).max(1)
        }
    }
}

impl Vault {
    pub fn new(secret: &RootSecret, grid: Grid) -> Vault {
        Vault {
            grid: Arc::new(grid),
            conv: secret.convergence(),
            chunker: ChunkerParams::new(secret.chunker_seed()),
            root: DirWriteCap {
                seed: secret.root_dir_seed(),
            },
            cache: std::sync::Mutex::new(ChunkCache::new(DEFAULT_CACHE_BYTES)),
            nodes: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(NODE_CACHE).expect("nonzero"),
            )),
            fetching: Default::default(),
            page_bytes: PAGE_BYTES,
            slot_limit: MAX_SLOT_BYTES,
            stored_pages: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(PAGE_MEMO).expect("nonzero"),
            )),
            window: Arc::new(tokio::sync::Semaphore::new(WINDOW_PERMITS)),
            sealing: Arc::new(tokio::sync::Semaphore::new(sealers())),
            chunks_sealed: Arc::default(),
        }
    }

    /// How many chunks this vault's puts have sealed so far (a chunk
    /// reused from a file's last version is not sealed).
    pub fn chunks_sealed(&self) -> u64 {
        self.chunks_sealed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Page listings over `page_bytes`, and refuse slots over `slot_limit`
    /// (the defaults are [`PAGE_BYTES`] and the mirrors' limit): for tests.
    pub fn with_directory_limits(mut self, page_bytes: usize, slot_limit: usize) -> Vault {
        self.page_bytes = page_bytes;
        self.slot_limit = slot_limit;
        self
    }

    /// Bound the chunk cache to `bytes`.
    pub fn with_cache_bytes(self, bytes: usize) -> Vault {
        *self.cache.lock().expect("cache lock") = ChunkCache::new(bytes);
        self
    }

    /// A vault over one store with 1-of-1 coding: for tests and examples.
    pub fn single(secret: &RootSecret, storage: Arc<dyn Storage>) -> Vault {
        let grid = Grid::new(
            vec![storage],
            GridConfig {
                k: 1,
                n: 1,
                happy: 1,
            },
        )
        .expect("one mirror and 1-of-1 are valid");
        Vault::new(secret, grid)
    }

    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// The write-cap of this identity's root directory.
    pub fn root(&self) -> &DirWriteCap {
        &self.root
    }

    // ---- files ----

    /// Chunk, seal and upload everything `reader` yields. Memory stays
    /// bounded: the chunker holds at most one maximum-size chunk, and at most
    /// `UPLOAD_WINDOW_BYTES` of shares are in flight.
    pub async fn put_reader<R: Read + Send + 'static>(&self, reader: R) -> Result<FileReadCap> {
        self.put_reader_known(reader, None).await
    }

    /// [`Self::put_reader`] of a new version of the file `base` names: a
    /// chunk whose key is one of `base`'s (the same bytes, cut the same
    /// way), once the mirrors confirm they hold it, is taken as it is
    /// stored, not sealed again. A file rewritten from its start (`cp`
    /// over it, a shell's `>`) costs a hash of each unchanged chunk, not
    /// its sealing. Only chunks that come up are confirmed (and so have
    /// their leases extended): a file overwritten with other content
    /// leaves the old chunks' leases to lapse. A `base` that cannot be
    /// read now only means sealing every chunk.
    pub async fn put_reader_over<R: Read + Send + 'static>(
        &self,
        reader: R,
        base: &FileReadCap,
    ) -> Result<FileReadCap> {
        let known = match self.leaves(base).await {
            Ok(leaves) => {
                let usable: Vec<bool> = leaves.iter().map(|l| self.well_formed(&l.0)).collect();
                Some(self.known(&leaves, &usable, false))
            }
            Err(e) => {
                tracing::debug!(error = %e, "the last version's chunks are not at hand; sealing every chunk");
                None
            }
        };
        self.put_reader_known(reader, known).await
    }

    async fn put_reader_known<R: Read + Send + 'static>(
        &self,
        reader: R,
        known: Option<Known>,
    ) -> Result<FileReadCap> {
        let chunker = self.chunker;
        self.put_pieces(
            move |emit| {
                for chunk in chunker.chunks(reader) {
                    if !emit(Piece::Data(chunk?)) {
                        break;
                    }
                }
                Ok(())
            },
            known,
        )
        .await
    }

    /// Whether a chunk of a file's last version may stand in a new one,
    /// as far as its manifest entry goes: no longer than the chunker's
    /// largest chunk, and exactly n shares.
    fn well_formed(&self, entry: &chunk::NodeEntry) -> bool {
        entry.len <= self.chunker.max as u64
            && entry.shares.len() == usize::from(self.grid.params().n())
    }

    /// The chunks of a file's last version that are `usable`, by key, for
    /// a new version's upload to take; `confirmed` if the mirrors said
    /// they hold them.
    fn known(
        &self,
        leaves: &[(chunk::NodeEntry, crate::crypto::ChunkKey)],
        usable: &[bool],
        confirmed: bool,
    ) -> Known {
        let known = leaves
            .iter()
            .zip(usable)
            .filter(|(_, usable)| **usable)
            .map(|((entry, key), _)| (*key.expose(), (entry.clone(), confirmed)))
            .collect();
        Arc::new(known)
    }

    /// [`Vault::put_reader`] over what `produce` emits, in file order, on
    /// a blocking thread: chunks, and runs of zeros for holes. `emit`
    /// returns false once the upload has failed; `produce` should stop.
    /// A chunk whose key is `known` is taken as stored there.
    async fn put_pieces<P>(&self, produce: P, known: Option<Known>) -> Result<FileReadCap>
    where
        P: FnOnce(&mut dyn FnMut(Piece) -> bool) -> Result<()> + Send + 'static,
    {
        // Three stages: one blocking thread cuts chunks and hashes their
        // keys; they are sealed in batches of `SEAL_BATCH`, up to
        // `SEALING_PER_PUT` batches at a time, on the blocking pool
        // (sealing is the costly part: AES-SIV, erasure coding and share
        // ids), and taken back in file order by the encoder; up to
        // `UPLOAD_WINDOW_BYTES` of shares are uploading at once. Four
        // chunks sealed together cost about 0.63x the CPU of four sealed
        // one by one (docs/PERFORMANCE.md, "Sealing four chunks at once").
        // One chunk waits for a sealer: the chunker keeps ahead of sealing
        // without a deeper queue, and each chunk queued is memory (a
        // writing mount's peak fell by about 10 MiB of 4 MiB chunks).
        let (tx, mut rx) = mpsc::channel::<Piece>(1);
        // Each chunk's convergent key is hashed here, as it is cut, while
        // its bytes are fresh in cache: a hash of every plaintext byte
        // taken off the sealing thread, which is the upload's bottleneck.
        // A piece of at most `INLINE_MAX` bytes may be a whole small file,
        // which goes up inline and needs no key: its sealer keys it if it
        // turns out to be a chunk.
        let (conv, params) = (self.conv.clone(), self.grid.params());
        let producer = tokio::task::spawn_blocking(move || -> Result<()> {
            produce(&mut |piece| {
                let piece = match piece {
                    Piece::Data(chunk) if chunk.len() > chunk::INLINE_MAX => {
                        Piece::Keyed(share::chunk_key(&conv, params, &chunk), chunk)
                    }
                    other => other,
                };
                tx.blocking_send(piece).is_ok()
            })
        });
        let mut encoder = FileEncoder::new(self.conv.clone(), self.grid.params());
        // A first chunk of at most `INLINE_MAX` bytes is the whole input
        // when no second one follows: the file goes up inside its root.
        let mut head = Vec::new();
        if let Some(first) = rx.recv().await {
            let small = first.len() <= chunk::INLINE_MAX && !matches!(first, Piece::Stored(..));
            head.push(first);
            if small {
                match rx.recv().await {
                    Some(next) => head.push(next),
                    None => {
                        producer.await.expect("chunker task")?;
                        let bytes = match head.remove(0) {
                            Piece::Data(d) | Piece::Keyed(_, d) => d,
                            Piece::Zeros(n) => vec![0; n],
                            Piece::Stored(..) => unreachable!("a stored chunk is never inline"),
                        };
                        let (cap, root) = encoder.seal_inline(&bytes);
                        self.grid.put_group(&root).await?;
                        return Ok(cap);
                    }
                }
            }
        }
        let (conv, params) = encoder.sealer();
        // Zero runs (holes) of one length all seal to the same chunk:
        // sealed once, by length.
        let zeros: Arc<std::sync::Mutex<HashMap<usize, share::SealedChunk>>> = Arc::default();
        let rest = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        let chunks = futures_util::stream::iter(head).chain(rest);
        // Chunks go to sealing in batches of up to `SEAL_BATCH`, up to
        // `SEALING_PER_PUT` batches at a time: each batch's AES-SIV runs
        // interleaved on one core (`share::seal_chunks_keyed`).
        let window = self.window.clone();
        let batches = chunks.chunks(SEAL_BATCH).map(|pieces| {
            let conv = conv.clone();
            let zeros = zeros.clone();
            let sealing = self.sealing.clone();
            let chunks_sealed = self.chunks_sealed.clone();
            let known = known.clone();
            let grid = self.grid.clone();
            async move {
                let _slot = sealing.acquire_owned().await.expect("never closed");
                let checked = {
                    let chunks_sealed = chunks_sealed.clone();
                    tokio::task::spawn_blocking(move || {
                        seal_pieces(pieces, &conv, params, known, &zeros, &chunks_sealed)
                    })
                    .await
                    .expect("sealing does not panic")
                };
                // Chunks of the last version not yet confirmed:
                // taken once the mirrors say they hold them (one
                // request per mirror for the batch), else sealed
                // and placed afresh, together.
                let asks: Vec<&[chunk::ShareId]> = checked
                    .iter()
                    .filter_map(|c| match c {
                        Checked::Confirm(entry, ..) => Some(&entry.shares[..]),
                        Checked::Done(_) => None,
                    })
                    .collect();
                let mut held = if asks.is_empty() {
                    Vec::new()
                } else {
                    grid.holding(&asks).await
                }
                .into_iter();
                let mut out = Vec::with_capacity(checked.len());
                let mut reseal = Vec::new();
                for checked in checked {
                    out.push(match checked {
                        Checked::Done(sealed) => Some(sealed),
                        Checked::Confirm(entry, key, chunk) => {
                            if held.next().expect("one answer per ask") {
                                Some(Sealed::Stored(entry, key))
                            } else {
                                reseal.push((out.len(), key, chunk));
                                None
                            }
                        }
                    });
                }
                if !reseal.is_empty() {
                    let resealed = tokio::task::spawn_blocking(move || {
                        seal_new(params, &chunks_sealed, reseal)
                    })
                    .await
                    .expect("sealing does not panic");
                    for (i, sealed) in resealed {
                        out[i] = Some(sealed);
                    }
                }
                let out: Vec<Sealed> = out
                    .into_iter()
                    .map(|s| s.expect("every piece sealed or taken"))
                    .collect();
                futures_util::stream::iter(out)
            }
        });
        let mut sealed = std::pin::pin!(
            super::adaptive::Adaptive::new(batches, SEALING_PER_PUT, move || {
                window.available_permits() >= SECOND_SEALER_ROOM
            })
            .flatten()
        );
        let mut uploads = tokio::task::JoinSet::new();
        // Groups already sent by this put, by their first share: a chunk or
        // a manifest node that repeats within the file (a hole's zeros, or
        // any repeated content) goes up once.
        let mut sent = std::collections::HashSet::new();
        // Start uploading one group once the window has room for it.
        let upload =
            async |group: Vec<Share>,
                   uploads: &mut tokio::task::JoinSet<Result<()>>,
                   sent: &mut std::collections::HashSet<chunk::ShareId>| {
                if group.first().is_some_and(|s| !sent.insert(s.id())) {
                    return;
                }
                let bytes: usize = group.iter().map(|s| s.as_bytes().len()).sum();
                let permits = bytes.div_ceil(WINDOW_PERMIT_BYTES).clamp(1, WINDOW_PERMITS);
                let room = self
                    .window
                    .clone()
                    .acquire_many_owned(permits as u32)
                    .await
                    .expect("never closed");
                let grid = self.grid.clone();
                uploads.spawn(async move {
                    let _room = room;
                    grid.put_group(&group).await
                });
            };
        while let Some(next) = sealed.next().await {
            let groups = match next {
                Sealed::New(len, chunk) => encoder.push_sealed(len, chunk),
                Sealed::Stored(entry, key) => encoder.push_stored(&entry, &key),
            };
            for group in groups {
                upload(group, &mut uploads, &mut sent).await;
            }
            // A failed upload ends the put now, not at the end.
            while let Some(done) = uploads.try_join_next() {
                done.expect("upload task")?;
            }
        }
        // The chunks ran out: either the reader ended or it failed.
        producer.await.expect("chunker task")?;
        let (cap, mut groups) = encoder.finish();
        // The root goes last, once everything it names is stored.
        let root = groups.pop().expect("finish yields the root's group");
        for group in groups {
            upload(group, &mut uploads, &mut sent).await;
        }
        while let Some(done) = uploads.join_next().await {
            done.expect("upload task")?;
        }
        self.grid.put_group(&root).await?;
        Ok(cap)
    }

    pub async fn put_bytes(&self, data: &[u8]) -> Result<FileReadCap> {
        self.put_reader(std::io::Cursor::new(data.to_vec())).await
    }

    /// Upload the file at `path`. Its holes (as the file system reports
    /// them: `SEEK_HOLE`) of [`HOLE_MIN_CHUNKS`] maximum chunks or more
    /// are not read: each becomes a run of maximum-size zero chunks,
    /// sealed once and stored once, so `truncate -s 1T` uploads in
    /// seconds. The bytes stored and read back are the same either way;
    /// only where chunks are cut around a hole differs.
    pub async fn put_path(&self, path: &Path) -> Result<FileReadCap> {
        self.put_path_with(path, None).await
    }

    /// [`Self::put_path`] of a new version of the file `base` names (its
    /// last upload): each chunk of `base` whose bytes are still there,
    /// unchanged and where it was (or moved by what was inserted or
    /// removed), is taken as it is stored, not
    /// sealed and sent again. An edit of a few bytes in a large file costs
    /// one read and hash of the file and the chunks around the edit, not a
    /// reseal of every byte (docs/ARCHITECTURE.md, "An edited file reuses
    /// its stored chunks").
    ///
    /// A chunk counts as unchanged only when the bytes at its place hash to
    /// its own convergent key again, so nothing but the content decides:
    /// whatever changed the file, and however (a write, a truncate, a
    /// crash and a recovery), a chunk is reused only for the bytes it
    /// holds. Every chunk of `base` is first confirmed on the mirrors, in
    /// one request per mirror ([`Grid::holding`], which extends their
    /// leases); one they lack is not reused but sealed again, which
    /// places it afresh. Short chunks (the old
    /// last one, or any under the chunker's least) are reused only where
    /// the file ends again, so appends do not leave them behind. From a
    /// changed chunk the file is cut afresh, until a cut falls where a
    /// chunk of `base` begins. A file with holes, or a
    /// `base` that is inline or cannot be read now, goes up as
    /// [`Self::put_path`] sends it.
    pub async fn put_path_over(
        &self,
        path: &Path,
        base: Option<&FileReadCap>,
    ) -> Result<FileReadCap> {
        let Some(base) = base else {
            return self.put_path(path).await;
        };
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let max = self.chunker.max as u64;
        if len <= chunk::INLINE_MAX as u64
            || sparse::extents(&file, len, max * HOLE_MIN_CHUNKS)?
                .iter()
                .any(|e| matches!(e, Extent::Hole { .. }))
        {
            return self.put_path(path).await;
        }
        let leaves = match self.leaves(base).await {
            Ok(leaves) if !leaves.is_empty() => leaves,
            Ok(_) => return self.put_path(path).await,
            Err(e) => {
                tracing::debug!(error = %e, "the last version's chunks are not at hand; sealing the whole file");
                return self.put_path(path).await;
            }
        };
        self.put_over(Arc::new(Patched { file, absent: None }), len, leaves)
            .await
    }

    /// [`Self::put_path_over`] of a partly staged file: the local copy at
    /// `path` lacks `absent`'s ranges, which hold `base`'s own bytes at
    /// the same places. The chunks of `base` that lie wholly in them (and
    /// where they were) are taken as they are without reading a byte;
    /// every other byte the walk needs there is read through
    /// `absent.read`. Unlike `put_path_over`, a `base` that cannot be read
    /// now is an error: its bytes are part of the file.
    pub async fn put_partial(
        &self,
        path: &Path,
        base: &FileReadCap,
        absent: Absent,
    ) -> Result<FileReadCap> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let source = Arc::new(Patched {
            file,
            absent: Some(absent),
        });
        if len <= chunk::INLINE_MAX as u64 {
            let mut bytes = vec![0; len as usize];
            source.read_exact_at(&mut bytes, 0)?;
            return self.put_bytes(&bytes).await;
        }
        let leaves = self.leaves(base).await?;
        if leaves.is_empty() {
            return self
                .put_reader(PatchedReader { source, pos: 0 }.take(len))
                .await;
        }
        self.put_over(source, len, leaves).await
    }

    /// The walk of [`Self::put_path_over`] over `source`, `len` bytes, and
    /// the chunks of its last version.
    async fn put_over(
        &self,
        source: Arc<Patched>,
        len: u64,
        leaves: Vec<(chunk::NodeEntry, crate::crypto::ChunkKey)>,
    ) -> Result<FileReadCap> {
        let shares: Vec<&[chunk::ShareId]> = leaves.iter().map(|l| &l.0.shares[..]).collect();
        let held = self.grid.holding(&shares).await;
        // Chunks that may stand in the new version: held, and well formed.
        let usable: Vec<bool> = (leaves.iter().zip(held))
            .map(|(leaf, held)| held && self.well_formed(&leaf.0))
            .collect();
        // Where each chunk of `base` begins, in order.
        let mut starts = Vec::with_capacity(leaves.len());
        let mut at = 0u64;
        for leaf in &leaves {
            starts.push(at);
            at += leaf.0.len;
        }
        // Bytes inserted (or, below zero, removed) in all: after a single
        // insertion, `base`'s later chunks lie this far from where they
        // were, and are found there.
        let delta = i128::from(len) - i128::from(at);
        let (conv, params, chunker) = (self.conv.clone(), self.grid.params(), self.chunker);
        // Fresh cuts that come out as one of `base`'s chunks (after
        // several insertions, say) are taken as stored too.
        let known = self.known(&leaves, &usable, true);
        self.put_pieces(
            move |emit| {
                // The chunk of `base` expected at `pos`, were the bytes there
                // moved by `shift` since.
                let base_at = |pos: u64, shift: i128| {
                    u64::try_from(i128::from(pos) - shift)
                        .ok()
                        .and_then(|old| starts.binary_search(&old).ok())
                };
                let mut shift = 0i128;
                let mut pos = 0u64;
                while pos < len {
                    if let Some(i) = base_at(pos, shift) {
                        let (entry, key) = &leaves[i];
                        let end = pos + entry.len;
                        // A chunk shorter than the chunker's least, or the
                        // last one (cut where the file ended, not by its
                        // content), is taken only where the file ends again:
                        // else every append would leave a short chunk behind.
                        let fits = end == len
                            || (end < len
                                && i + 1 < leaves.len()
                                && entry.len >= chunker.min as u64);
                        if fits && usable[i] {
                            // Where the copy lacks the chunk's bytes, they are
                            // its own: taken unread.
                            if shift == 0 && source.lacks(pos, end) {
                                if !emit(Piece::Stored(entry.clone(), key.clone())) {
                                    return Ok(());
                                }
                                pos = end;
                                continue;
                            }
                            let mut bytes = vec![0; entry.len as usize];
                            // Cut short, the file shrank meanwhile: what is
                            // there is cut afresh below, as `put_path` reads a
                            // file being changed, and the caller's change
                            // count decides whether the result stands.
                            let whole = match source.read_exact_at(&mut bytes, pos) {
                                Ok(()) => true,
                                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
                                Err(e) => return Err(e.into()),
                            };
                            if whole
                                && share::chunk_key(&conv, params, &bytes).expose() == key.expose()
                            {
                                if !emit(Piece::Stored(entry.clone(), key.clone())) {
                                    return Ok(());
                                }
                                pos = end;
                                continue;
                            }
                        }
                    }
                    // Changed, or no chunk began here: cut afresh until a cut
                    // lands where one of `base`'s begins (or begins moved by
                    // `delta`).
                    let from = PatchedReader {
                        source: source.clone(),
                        pos,
                    };
                    let reader =
                        std::io::BufReader::with_capacity(READ_BUFFER, from.take(len - pos));
                    let before = pos;
                    for chunk in chunker.chunks(reader) {
                        let chunk = chunk?;
                        pos += chunk.len() as u64;
                        if !emit(Piece::Data(chunk)) {
                            return Ok(());
                        }
                        if base_at(pos, shift).is_some() {
                            break;
                        }
                        if delta != shift && base_at(pos, delta).is_some() {
                            shift = delta;
                            break;
                        }
                    }
                    if pos == before {
                        // The file ends here now: truncated meanwhile.
                        return Ok(());
                    }
                }
                Ok(())
            },
            Some(known),
        )
        .await
    }

    /// The chunks of a file, in order, each with the key that opens it.
    /// An inline file has none, and neither has one coded under other
    /// erasure parameters than this grid's.
    async fn leaves(
        &self,
        cap: &FileReadCap,
    ) -> Result<Vec<(chunk::NodeEntry, crate::crypto::ChunkKey)>> {
        let root = self.fetch_file_root(cap).await?;
        if root.data.is_some() {
            return Ok(Vec::new());
        }
        // A level at a time, in file order (every node sits one level
        // above its children: `Node::fits_under`), a few nodes fetched at
        // once: one round trip per level rather than one per node.
        let mut level = vec![root];
        while level.first().is_some_and(|node| node.depth > 0) {
            let children: Vec<(Arc<Node>, chunk::NodeEntry)> = level
                .iter()
                .flat_map(|node| node.entries.iter().map(|e| (node.clone(), e.clone())))
                .collect();
            level = futures_util::stream::iter(children)
                .map(|(parent, entry)| async move { self.fetch_node(&parent, &entry).await })
                .buffered(READAHEAD)
                .try_collect()
                .await?;
        }
        // Chunks coded under other erasure parameters (`k` or `n` changed
        // in the config since) are none a new version may take: its
        // manifest records this grid's parameters for every chunk.
        if level.iter().any(|node| node.params != self.grid.params()) {
            return Ok(Vec::new());
        }
        let mut leaves = Vec::new();
        for entry in level.iter().flat_map(|node| &node.entries) {
            if entry.len > 0 {
                leaves.push((entry.clone(), Self::key_of(entry)?.clone()));
            }
        }
        Ok(leaves)
    }

    /// Whether the file at `path` holds exactly the bytes of the stored
    /// version `cap`, judged with nothing sent and no chunk fetched: each
    /// chunk of `cap` must hash to its own convergent key at its place,
    /// which is how [`Self::put_path_over`] finds a chunk unchanged, and
    /// an inline version is compared whole. Only its manifest is read. A
    /// version whose chunks were coded under other parameters, or keyed
    /// by an older chunk key, counts as different.
    pub async fn holds_same_bytes(&self, path: &Path, cap: &FileReadCap) -> Result<bool> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        if len != cap.size {
            return Ok(false);
        }
        if let Some(data) = self.fetch_file_root(cap).await?.data.clone() {
            let mut bytes = vec![0; data.len()];
            file.read_exact_at(&mut bytes, 0)?;
            return Ok(bytes == *data);
        }
        let leaves = self.leaves(cap).await?;
        if leaves.is_empty() {
            return Ok(len == 0);
        }
        let (conv, params) = (self.conv.clone(), self.grid.params());
        tokio::task::spawn_blocking(move || -> Result<bool> {
            let mut at = 0u64;
            for (entry, key) in &leaves {
                let mut bytes = vec![0; entry.len as usize];
                file.read_exact_at(&mut bytes, at)?;
                if share::chunk_key(&conv, params, &bytes).expose() != key.expose() {
                    return Ok(false);
                }
                at += entry.len;
            }
            Ok(at == len)
        })
        .await
        .expect("comparing chunk keys does not panic")
    }

    /// [`Self::put_path`], telling `progress` how many of the file's bytes
    /// each step covered, read or skipped as a hole (for a progress bar).
    pub async fn put_path_reporting(&self, path: &Path, progress: Progress) -> Result<FileReadCap> {
        self.put_path_with(path, Some(progress)).await
    }

    async fn put_path_with(&self, path: &Path, progress: Option<Progress>) -> Result<FileReadCap> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let max = self.chunker.max as u64;
        let extents = sparse::extents(&file, len, max * HOLE_MIN_CHUNKS)?;
        if !extents.iter().any(|e| matches!(e, Extent::Hole { .. })) {
            // Finding the holes moved the file's offset.
            file.rewind()?;
            // No larger than the file: a reader without `read_buf` (stable
            // Rust has no way to write one) has its buffer zeroed whole
            // first, which for a 4 KiB file in a 1 MiB buffer was most of
            // an untar's upload cost (docs/PERFORMANCE.md, "Untar").
            let buffer = (len as usize).clamp(8 << 10, READ_BUFFER);
            return match progress {
                // `File` fills the buffer without zeroing it.
                None => {
                    self.put_reader(std::io::BufReader::with_capacity(buffer, file))
                        .await
                }
                Some(progress) => {
                    let file = Counted {
                        inner: file,
                        progress,
                    };
                    self.put_reader(std::io::BufReader::with_capacity(buffer, file))
                        .await
                }
            };
        }
        let progress = progress.unwrap_or_else(|| Arc::new(|_| {}));
        let chunker = self.chunker;
        self.put_pieces(
            move |emit| {
                for extent in extents {
                    match extent {
                        Extent::Data { start, len } => {
                            let mut at = &file;
                            at.seek(std::io::SeekFrom::Start(start))?;
                            let at = Counted {
                                inner: at.take(len),
                                progress: progress.clone(),
                            };
                            let reader = std::io::BufReader::with_capacity(READ_BUFFER, at);
                            for chunk in chunker.chunks(reader) {
                                if !emit(Piece::Data(chunk?)) {
                                    return Ok(());
                                }
                            }
                        }
                        Extent::Hole { mut len } => {
                            while len > 0 {
                                let n = len.min(max);
                                if !emit(Piece::Zeros(n as usize)) {
                                    return Ok(());
                                }
                                progress(n);
                                len -= n;
                            }
                        }
                    }
                }
                Ok(())
            },
            None,
        )
        .await
    }

    /// Where something decoded from shares is cached: SHA-256 of every
    /// share id, the key that opened it and its plaintext length. Not the
    /// first share id alone: anyone who can read one of your files could
    /// then list its first share beside shares of their own in a manifest
    /// of theirs, and what your mount decoded from that would be cached,
    /// and served, as yours. Only an entry identical in all of this names
    /// the same slot, and it decodes to the same bytes.
    fn cache_slot(ids: &[chunk::ShareId], key: &[u8; 32], len: u64) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update((ids.len() as u64).to_be_bytes());
        for id in ids {
            h.update(id);
        }
        h.update(key);
        h.update(len.to_be_bytes());
        h.finalize().into()
    }

    /// An opened node's slot (see [`Self::cache_slot`]; a node's length is
    /// not known before it is opened, and its ids and key fix it).
    fn node_key(ids: &[chunk::ShareId], key: &ReadKey) -> [u8; 32] {
        Self::cache_slot(ids, key.expose(), 0)
    }

    fn cached_node(&self, slot: &[u8; 32]) -> Option<Arc<Node>> {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(slot)
            .cloned()
    }

    fn remember_node(&self, slot: [u8; 32], node: Node) -> Arc<Node> {
        let node = Arc::new(node);
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(slot, node.clone());
        node
    }

    /// A file's root node, checked to describe as many bytes as its cap.
    async fn fetch_file_root(&self, cap: &FileReadCap) -> Result<Arc<Node>> {
        let root = self.fetch_root(&cap.root, &cap.read_key).await?;
        if root.size != cap.size {
            return Err(chunk::Error::MalformedManifest(
                "manifest size differs from the cap".into(),
            )
            .into());
        }
        Ok(root)
    }

    async fn fetch_root(&self, root: &chunk::ShareId, key: &ReadKey) -> Result<Arc<Node>> {
        let slot = Self::node_key(std::slice::from_ref(root), key);
        if let Some(node) = self.cached_node(&slot) {
            return Ok(node);
        }
        let shares = self
            .grid
            .fetch(&[*root], Params::REPLICA, "manifest root")
            .await?;
        let blob = share::decode(Params::REPLICA, &shares)?;
        Ok(self.remember_node(slot, Node::open_read(&blob, key)?))
    }

    fn key_of(entry: &chunk::NodeEntry) -> Result<&crate::crypto::ChunkKey> {
        Ok(entry
            .key
            .as_ref()
            .ok_or_else(|| chunk::Error::MalformedManifest("node opened without keys".into()))?)
    }

    /// A chunk's slot in the cache (see [`Self::cache_slot`]).
    fn chunk_slot(entry: &chunk::NodeEntry) -> Result<[u8; 32]> {
        if entry.shares.is_empty() {
            return Err(chunk::Error::MalformedManifest("chunk without shares".into()).into());
        }
        Ok(Self::cache_slot(
            &entry.shares,
            Self::key_of(entry)?.expose(),
            entry.len,
        ))
    }

    /// A chunk's verified plaintext, from the cache or the mirrors (and
    /// then cached), under [`Self::chunk_slot`].
    async fn fetch_chunk(
        &self,
        leaf: &Node,
        entry: &chunk::NodeEntry,
        ahead: bool,
    ) -> Result<Plain> {
        let slot = Self::chunk_slot(entry)?;
        if let Some(plain) = self.cached_chunk(&slot) {
            return Ok(plain);
        }
        let cell = self
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(slot)
            .or_default()
            .clone();
        // Whoever gets past the fetch first, or is dropped during it,
        // retires the cell (a failed fetch leaves it empty, and a waiter
        // still holding it tries again).
        let _retire = Retire {
            fetching: &self.fetching,
            slot,
            cell: cell.clone(),
        };
        cell.get_or_try_init(|| self.fetch_chunk_now(leaf, entry, slot, ahead))
            .await
            .cloned()
    }

    /// Drop the cached chunks idle for [`CACHE_IDLE`]; the mount calls
    /// this once a second. Returns the bytes dropped.
    pub fn expire_idle_chunks(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expire_idle(CACHE_IDLE)
    }

    fn cached_chunk(&self, slot: &[u8; 32]) -> Option<Plain> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(slot)
    }

    /// Fetch, check and decrypt a chunk, and cache it.
    async fn fetch_chunk_now(
        &self,
        leaf: &Node,
        entry: &chunk::NodeEntry,
        slot: [u8; 32],
        ahead: bool,
    ) -> Result<Plain> {
        // Again: a fetch may have finished and retired its cell between
        // the caller's look and its making a new one.
        if let Some(plain) = self.cached_chunk(&slot) {
            return Ok(plain);
        }
        // Each share comes back only if it hashes to its id, and the ids
        // come from the leaf's authenticated `locs`: the chunk's bytes are
        // settled before it is decrypted.
        let shares = self.grid.fetch(&entry.shares, leaf.params, "chunk").await?;
        // Decrypting is the costly part of a read; on the blocking pool,
        // the chunks a reader has in flight open side by side.
        let (key, params) = (Self::key_of(entry)?.clone(), leaf.params);
        let plain = tokio::task::spawn_blocking(move || {
            share::open_verified_chunk_parts(&key, params, shares)
        })
        .await
        .expect("opening does not panic")?;
        let plain = Plain::new(plain);
        if plain.len() as u64 != entry.len {
            return Err(chunk::Error::MalformedManifest(
                "chunk length differs from the manifest".into(),
            )
            .into());
        }
        // Fetched ahead of its reader, it is not read yet (see
        // `ChunkCache::expire_idle`).
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match ahead {
            true => cache.insert(slot, plain.clone()),
            false => cache.insert_got(slot, plain.clone()),
        }
        drop(cache);
        Ok(plain)
    }

    async fn fetch_node(&self, parent: &Node, entry: &chunk::NodeEntry) -> Result<Arc<Node>> {
        let key = ReadKey::from(Self::key_of(entry)?.clone());
        if entry.shares.is_empty() {
            return Err(chunk::Error::MalformedManifest("node without shares".into()).into());
        }
        // Checked for a cached node too: the same node may have been
        // opened elsewhere (as a root, or at another depth).
        let slot = Self::node_key(&entry.shares, &key);
        if let Some(node) = self.cached_node(&slot) {
            node.fits_under(parent, entry)?;
            return Ok(node);
        }
        let shares = self
            .grid
            .fetch(&entry.shares, parent.params, "manifest node")
            .await?;
        let blob = share::decode(parent.params, &shares)?;
        let child = Node::open_read(&blob, &key)?;
        child.fits_under(parent, entry)?;
        Ok(self.remember_node(slot, child))
    }

    /// Visit the chunks overlapping `[offset, offset+len)` in order, handing
    /// each chunk's plaintext and its file offset to `visit`.
    async fn walk_range(
        &self,
        cap: &FileReadCap,
        offset: u64,
        len: u64,
        visit: &mut (dyn FnMut(u64, &Plain) -> Result<()> + Send),
    ) -> Result<()> {
        let mut take = |_: &chunk::NodeEntry, _| Ok(Pick::Take);
        self.walk_picked(cap, offset, len, false, &mut take, visit)
            .await
    }

    /// [`Self::walk_range`], fetching only the chunks `pick` takes (given
    /// each chunk's manifest entry and file offset, in order, before any
    /// is fetched) and none after the first it stops at; `ahead` for a
    /// reader that is not there yet (readahead).
    async fn walk_picked(
        &self,
        cap: &FileReadCap,
        offset: u64,
        len: u64,
        ahead: bool,
        pick: &mut (dyn FnMut(&chunk::NodeEntry, u64) -> Result<Pick> + Send),
        visit: &mut (dyn FnMut(u64, &Plain) -> Result<()> + Send),
    ) -> Result<()> {
        let root = self.fetch_file_root(cap).await?;
        let end = offset.saturating_add(len).min(cap.size);
        if let Some(data) = &root.data {
            if offset < end {
                visit(0, &Plain::from(data.to_vec()))?;
            }
            return Ok(());
        }
        // Explicit stack of (node, node start offset), children pushed in
        // reverse so chunks come out in file order.
        let mut stack = vec![(root, 0u64)];
        while let Some((node, start)) = stack.pop() {
            let mut children = Vec::new();
            let mut pos = start;
            for entry in &node.entries {
                let (lo, hi) = (pos, pos + entry.len);
                pos = hi;
                if hi <= offset || lo >= end || entry.len == 0 {
                    continue;
                }
                children.push((entry.clone(), lo));
            }
            if node.depth == 0 {
                let mut stopped = false;
                let mut taken = Vec::with_capacity(children.len());
                for (entry, lo) in children {
                    match pick(&entry, lo)? {
                        Pick::Take => taken.push((entry, lo)),
                        Pick::Skip => {}
                        Pick::Stop => {
                            stopped = true;
                            break;
                        }
                    }
                }
                // Readahead: up to READAHEAD chunks in flight, delivered in
                // file order.
                let node = &node;
                let mut chunks = futures_util::stream::iter(taken)
                    .map(|(entry, lo)| async move {
                        Ok::<_, Error>((lo, self.fetch_chunk(node, &entry, ahead).await?))
                    })
                    .buffered(READAHEAD);
                while let Some(next) = chunks.next().await {
                    let (lo, plain) = next?;
                    visit(lo, &plain)?;
                }
                if stopped {
                    break;
                }
            } else {
                for (entry, lo) in children.into_iter().rev() {
                    stack.push((self.fetch_node(&node, &entry).await?, lo));
                }
            }
        }
        Ok(())
    }

    /// Read `len` bytes at `offset` (fewer at the end of the file).
    pub async fn read_range(&self, cap: &FileReadCap, offset: u64, len: u64) -> Result<Vec<u8>> {
        Ok(self
            .read_pieces(cap, offset, len)
            .await?
            .joined()
            .into_owned())
    }

    /// Fill `buf` with the file's bytes from `offset`: all of them, or an
    /// `UnexpectedEof` error where the file ends first.
    pub async fn read_exact(&self, cap: &FileReadCap, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bytes = self.read_range(cap, offset, buf.len() as u64).await?;
        if bytes.len() != buf.len() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    /// [`Vault::read_range`] as slices of the verified chunks themselves:
    /// a read within one chunk (most of a FUSE reader's) copies nothing.
    pub async fn read_pieces(&self, cap: &FileReadCap, offset: u64, len: u64) -> Result<Pieces> {
        let end = offset.saturating_add(len).min(cap.size);
        let mut pieces = Vec::new();
        self.walk_range(cap, offset, len, &mut |lo, plain| {
            let from = offset.saturating_sub(lo) as usize;
            let to = (end - lo) as usize;
            pieces.extend(plain.slices(from..to));
            Ok(())
        })
        .await?;
        Ok(Pieces(pieces))
    }

    /// Fetch into the cache the chunks after a reader's, up to `to`, for
    /// it to reach soon: the reader's last read ended at `reader_at`, and
    /// at the last top-up it was at `finished_from`.
    ///
    /// Only as many as `room` bytes of cache (this reader's part of
    /// [`Vault::cache_budget`]) hold beside the chunk the reader is in:
    /// asked for more, the cache made room by evicting that chunk, and
    /// each of the reader's next reads fetched and decrypted it again (a
    /// friend's tree written with larger chunks, or a small `cache`). For
    /// a reader alone (`room` the whole budget), the first chunk after its
    /// own is always fetched, as the cache keeps its two newest whatever
    /// their size; readers side by side, each with its part, would take
    /// more than the cache holds that way, and evict each other's next
    /// chunk before it is read.
    ///
    /// Chunks ahead already held count towards the room, and move to the
    /// front of the cache's LRU order (`ChunkCache::touch`: not counted
    /// read, so an unread one keeps its longer stay). The chunks the
    /// reader finished since `finished_from` (at most `FINISHED_SPAN`
    /// back) move to the back. Got by each of the reader's reads until it
    /// moved on, they outranked the chunks fetched ahead (of this reader
    /// or another) at an earlier top-up, which were evicted for them and
    /// fetched again.
    pub async fn prefetch(
        &self,
        cap: &FileReadCap,
        finished_from: u64,
        reader_at: u64,
        to: u64,
        mut room: u64,
    ) -> Result<()> {
        let Some(last_read) = reader_at.checked_sub(1) else {
            return Ok(());
        };
        let finished_from = finished_from.clamp(reader_at.saturating_sub(FINISHED_SPAN), reader_at);
        let mut ahead = 0usize;
        // The cache's two newest chunks stay whatever their size, which
        // keeps the reader's beside one fetched ahead: for a reader alone.
        let alone = room >= self.cache_budget() as u64;
        let cache = || self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut pick = |entry: &chunk::NodeEntry, lo: u64| -> Result<Pick> {
            let slot = Self::chunk_slot(entry)?;
            if lo + entry.len <= reader_at {
                // Read to its end: the first to go.
                cache().demote(&slot);
                return Ok(Pick::Skip);
            }
            let fits = entry.len <= room;
            room = room.saturating_sub(entry.len);
            if lo < reader_at {
                // The reader's own chunk.
                return Ok(Pick::Skip);
            }
            ahead += 1;
            if !fits && (ahead > 1 || !alone) {
                return Ok(Pick::Stop);
            }
            Ok(if cache().touch(&slot) {
                Pick::Skip
            } else {
                Pick::Take
            })
        };
        let from = finished_from.min(last_read);
        let len = to.saturating_sub(from);
        self.walk_picked(cap, from, len, true, &mut pick, &mut |_, _| Ok(()))
            .await
    }

    /// The bytes of verified chunks the cache keeps.
    pub fn cache_budget(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .budget()
    }

    pub async fn get_bytes(&self, cap: &FileReadCap) -> Result<Vec<u8>> {
        self.read_range(cap, 0, cap.size).await
    }

    /// Stream a whole file into `out`, one verified chunk at a time.
    pub async fn get_to<W: Write + Send>(&self, cap: &FileReadCap, out: &mut W) -> Result<()> {
        self.walk_range(cap, 0, cap.size, &mut |_, plain| {
            for part in plain.parts() {
                out.write_all(part)?;
            }
            Ok(())
        })
        .await
    }

    /// [`Vault::get_to`] into `file` (emptied first), leaving a hole
    /// wherever a piece of the chunk as it came from the mirrors (about a
    /// chunk over k) of at least [`HOLE_WRITE_MIN`] bytes is all zeros: a sparse file stays sparse when it is
    /// staged for a change or downloaded, instead of filling the disk with
    /// its zeros.
    pub async fn get_to_file(&self, cap: &FileReadCap, file: &std::fs::File) -> Result<()> {
        use std::os::unix::fs::FileExt;
        // Skipped stretches must read as zeros: start from nothing.
        file.set_len(0)?;
        let mut pos = 0u64;
        self.walk_range(cap, 0, cap.size, &mut |_, plain| {
            for part in plain.parts() {
                if part.len() < HOLE_WRITE_MIN || !all_zeros(part) {
                    file.write_all_at(part, pos)?;
                }
                pos += part.len() as u64;
            }
            Ok(())
        })
        .await?;
        // Holes at the end, and the length.
        file.set_len(cap.size)?;
        Ok(())
    }

    // ---- directories ----

    /// The current listing of a directory, its pages fetched. An empty
    /// listing if no mirror has ever stored the slot.
    pub async fn list(&self, cap: &DirReadCap) -> Result<Listing> {
        let listed = self.list_unless(cap, None).await?;
        Ok(listed.map(|(_, listing)| listing).unwrap_or_default())
    }

    /// The newest version of a directory and its listing, pages fetched,
    /// or `None` if the newest version is `known` (nothing fetched but the
    /// slot). Version 0 is a directory no mirror has stored, listed empty.
    pub async fn list_unless(
        &self,
        cap: &DirReadCap,
        known: Option<u64>,
    ) -> Result<Option<(u64, Listing)>> {
        self.list_unless_within(cap, known, None).await
    }

    /// [`Self::list_unless`], giving up as unavailable if no version is
    /// known within `slot_wait`: for a refresh, which has a listing to
    /// fall back on, where a first listing waits for the mirrors.
    pub async fn list_unless_within(
        &self,
        cap: &DirReadCap,
        known: Option<u64>,
        slot_wait: Option<Duration>,
    ) -> Result<Option<(u64, Listing)>> {
        let slot = match slot_wait {
            None => self.grid.get_slot(cap).await?,
            Some(wait) => tokio::time::timeout(wait, self.grid.get_slot(cap))
                .await
                .map_err(|_| Error::ListingUnavailable {
                    failed: self.grid.mirrors().len(),
                    mirrors: self.grid.mirrors().len(),
                })??,
        };
        let (seq, mut listing) = slot.unwrap_or_default();
        if known == Some(seq) {
            return Ok(None);
        }
        self.fill(&mut listing).await?;
        Ok(Some((seq, listing)))
    }

    /// Fetch the pages of a listing read from an index.
    pub async fn fill(&self, listing: &mut Listing) -> Result<()> {
        if !listing.is_pending() {
            return Ok(());
        }
        let (distinct, at) = distinct_pages(&listing.pages);
        // Owned, not borrowed: a borrowed cap made the future not `Send`
        // for every lifetime (the keeper spawns it).
        let fetched: Vec<Vec<u8>> = futures_util::stream::iter(distinct)
            .map(|cap| async move { self.get_bytes(&cap).await })
            .buffered(PAGES_IN_FLIGHT)
            .try_collect()
            .await?;
        let pages: Vec<&[u8]> = at.iter().map(|&i| &fetched[i][..]).collect();
        listing.fill(&pages)?;
        Ok(())
    }

    /// The entries of each page of a pending listing, page by page: one
    /// page that cannot be read or opened does not hide the others (for
    /// the lease keeper, which renews what it can reach). Each distinct
    /// page is fetched once, as in [`Self::fill`]. A page's error is
    /// given as text, since several pages can share one fetch.
    pub(super) async fn page_entries(
        &self,
        listing: &Listing,
    ) -> Vec<std::result::Result<Vec<Entry>, String>> {
        let (distinct, at) = distinct_pages(&listing.pages);
        let fetched: Vec<Result<Vec<u8>>> = futures_util::stream::iter(distinct)
            .map(|cap| async move { self.get_bytes(&cap).await })
            .buffered(PAGES_IN_FLIGHT)
            .collect()
            .await;
        at.iter()
            .enumerate()
            .map(|(i, &d)| match &fetched[d] {
                Ok(bytes) => listing.page_entries(i, bytes).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            })
            .collect()
    }

    /// Read-modify-write a directory: apply `change` to the newest listing
    /// and publish it with the next seq.
    pub async fn update_dir<F>(&self, cap: &DirWriteCap, change: F) -> Result<Listing>
    where
        F: FnOnce(&mut Listing) -> Result<()>,
    {
        let current = self.grid.get_slot(&cap.read_cap()).await?;
        let seq = next_seq(current.as_ref().map(|(seq, _)| *seq));
        let mut listing = current.map(|(_, l)| l).unwrap_or_default();
        self.fill(&mut listing).await?;
        change(&mut listing)?;
        self.publish_dir(cap, seq, &mut listing).await?;
        Ok(listing)
    }

    /// Publish `listing` as the directory's next version: for a writer that
    /// keeps the whole listing itself (the mount). `known` is the version
    /// that listing was built on (loaded, or last published; `None` for a
    /// directory it made): a newer one on the mirrors is someone else's,
    /// and is not overwritten ([`Error::ChangedElsewhere`]). Only the
    /// newest seq is read, not the pages. `attempt` is set to the seq sent,
    /// whether or not it reached `happy` mirrors: a failed publish may
    /// still have landed on some, and the next one must start above it.
    pub async fn replace_dir(
        &self,
        cap: &DirWriteCap,
        mut listing: Listing,
        known: Option<u64>,
        attempt: &mut Option<u64>,
    ) -> Result<()> {
        let read = cap.read_cap();
        let newest = self.grid.get_slot(&read).await?.map(|(seq, _)| seq);
        if let (Some(theirs), Some(ours)) = (newest, known)
            && theirs > ours
        {
            return Err(Error::ChangedElsewhere {
                slot: crate::store::hex(&read.public_key),
                theirs,
                ours,
            });
        }
        let seq = next_seq(newest.max(known));
        *attempt = Some(seq);
        self.publish_dir(cap, seq, &mut listing).await
    }

    /// Seal `listing` as version `seq`, storing its pages first if it needs
    /// them, and send it. `listing.pages` becomes the pages it now uses.
    pub(super) async fn publish_dir(
        &self,
        cap: &DirWriteCap,
        seq: u64,
        listing: &mut Listing,
    ) -> Result<()> {
        let plaintext = match listing.paginate(self.page_bytes)? {
            Encoded::Whole(bytes) => {
                listing.pages.clear();
                zeroize::Zeroizing::new(bytes)
            }
            Encoded::Pages(pages) => {
                // Past what a reader holds (`Listing::decode`), refused
                // here: published, it could not be read back, by anyone.
                let total: usize = pages.iter().map(Vec::len).sum();
                if total as u64 > crate::dir::MAX_LISTING_BYTES {
                    return Err(Error::DirectoryTooLarge {
                        entries: listing.entries.len(),
                        bytes: total,
                        limit: crate::dir::MAX_LISTING_BYTES as usize,
                    });
                }
                listing.pages = self.store_pages(pages).await?;
                zeroize::Zeroizing::new(Listing::encode_index(
                    &listing.pages,
                    listing.this.as_ref(),
                    listing.home.as_ref(),
                ))
            }
        };
        let envelope = SlotEnvelope::seal_plaintext(cap, seq, &plaintext);
        // Mirrors refuse a slot over the limit; say why here, and send
        // nothing, rather than collect a refusal from each of them.
        let encoded = envelope.encode();
        if encoded.len() > self.slot_limit {
            return Err(Error::DirectoryTooLarge {
                entries: listing.entries.len(),
                bytes: encoded.len(),
                limit: self.slot_limit,
            });
        }
        self.grid.put_encoded_slot(&envelope, encoded).await
    }

    /// Store listing pages as files (each durable on `happy` mirrors before
    /// the index that names it is sent). A page stored before by this vault
    /// is not sealed again.
    async fn store_pages(&self, pages: Vec<Vec<u8>>) -> Result<Vec<FileReadCap>> {
        use sha2::Digest;
        futures_util::stream::iter(pages)
            .map(|page| async move {
                let key: [u8; 32] = sha2::Sha256::digest(&page).into();
                let known = self
                    .stored_pages
                    .lock()
                    .expect("page memo")
                    .get(&key)
                    .cloned();
                if let Some((cap, at)) = known
                    && at.elapsed() < self.grid.placed_window()
                {
                    return Ok(cap);
                }
                let at = std::time::Instant::now();
                let cap = self.put_reader(std::io::Cursor::new(page)).await?;
                self.stored_pages
                    .lock()
                    .expect("page memo")
                    .put(key, (cap.clone(), at));
                Ok(cap)
            })
            .buffered(PAGES_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// A write-cap for a new directory, not yet stored anywhere: until its
    /// first listing is published, it reads as empty.
    pub fn fresh_dir() -> DirWriteCap {
        DirWriteCap {
            seed: SlotSeed::generate(&mut rand::rng()),
        }
    }

    /// Create an empty directory slot and return its write-cap.
    pub async fn new_dir(&self) -> Result<DirWriteCap> {
        let cap = Self::fresh_dir();
        self.grid
            .put_slot(&SlotEnvelope::seal(&cap, 1, &Listing::default()))
            .await?;
        Ok(cap)
    }

    /// Link `entry` as `name` in `parent`, replacing any entry of that name.
    pub async fn link(&self, parent: &DirWriteCap, name: &str, entry: Entry) -> Result<()> {
        check_name(name).map_err(|reason| Error::BadName {
            name: name.into(),
            reason,
        })?;
        self.update_dir(parent, |l| {
            l.entries.insert(name.to_string(), entry);
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Whether the directory `child`, found named in `named_in`, is stale
    /// there: its listing's `home` (opened: [`Home::open`]) is another
    /// directory, which names it and lives, by its own homes, under this
    /// vault's root ([`Self::lives_in`]). A name is judged stale only when
    /// the directory is known to be reachable elsewhere; anything that does
    /// not check out (a home that no longer names it, which an older lode
    /// that moved it without updating its home leaves; a listing read from
    /// a lagging mirror; a mirror that does not answer) keeps the name.
    pub async fn stale_name(
        &self,
        named_in: &DirReadCap,
        home: &DirReadCap,
        child: &DirReadCap,
    ) -> bool {
        home != named_in && self.lives_in(home, child).await.unwrap_or(false)
    }

    /// Whether `parent` names the directory `child` and is itself named,
    /// up its own homes, all the way to this vault's root.
    pub async fn lives_in(&self, parent: &DirReadCap, child: &DirReadCap) -> Result<bool> {
        let root = self.root.read_cap();
        let (mut parent, mut child) = (parent.clone(), child.clone());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..HOME_DEPTH_MAX {
            // Homes that go round in a circle reach no root.
            if !seen.insert(parent.public_key) {
                return Ok(false);
            }
            let listing = self.list(&parent).await?;
            let wanted = Cap::DirRead(child);
            let named = listing
                .entries
                .values()
                .any(|e| e.kind == EntryKind::Dir && e.cap.as_ref() == Some(&wanted));
            if !named {
                return Ok(false);
            }
            if parent == root {
                return Ok(true);
            }
            let Some(up) = listing
                .home
                .as_ref()
                .and_then(|h| h.open(&self.root, &parent))
            else {
                return Ok(false);
            };
            (parent, child) = (up, parent);
        }
        Ok(false)
    }

    /// Follow `path` (slash-separated, relative to `from`) to a write-cap
    /// directory, creating missing directories when `create` is set.
    pub async fn walk_dirs(
        &self,
        from: &DirWriteCap,
        path: &str,
        create: bool,
    ) -> Result<DirWriteCap> {
        let mut cur = from.clone();
        for name in path.split('/').filter(|s| !s.is_empty()) {
            let listing = self.list(&cur.read_cap()).await?;
            cur = match listing.entries.get(name) {
                Some(e) if e.kind == EntryKind::Dir => e
                    .write_cap(&cur, name)?
                    .ok_or_else(|| Error::ReadOnly(path.to_string()))?,
                Some(_) => return Err(Error::NotADirectory(path.to_string())),
                None if create => {
                    let child = self.new_dir().await?;
                    self.link(&cur, name, Entry::dir(&cur, name, &child, 0o755, now()))
                        .await?;
                    child
                }
                None => return Err(Error::NotFound(path.to_string())),
            };
        }
        Ok(cur)
    }

    /// The cap that `path` names under `from` (a read-level cap for files
    /// and read-only directories, the write-cap for writable directories).
    pub async fn resolve(&self, from: &Cap, path: &str) -> Result<Cap> {
        // The directories walked through, for `..`; one above `from` is
        // nothing this cap reaches.
        let mut above: Vec<Cap> = Vec::new();
        let mut cur = from.clone();
        // The path up to the name being looked at, for errors.
        let mut walked = String::new();
        for name in path.split('/').filter(|s| !s.is_empty() && *s != ".") {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(name);
            if name == ".." {
                cur = above.pop().ok_or_else(|| Error::NotFound(walked.clone()))?;
                continue;
            }
            let listing = match &cur {
                Cap::DirWrite(w) => self.list(&w.read_cap()).await?,
                Cap::DirRead(r) => self.list(r).await?,
                _ => return Err(Error::NotADirectory(path.to_string())),
            };
            let entry = listing
                .entries
                .get(name)
                .ok_or_else(|| Error::NotFound(path.to_string()))?;
            let write = match &cur {
                Cap::DirWrite(w) => entry.write_cap(w, name)?,
                _ => None,
            };
            let next = match (write, &entry.cap) {
                (Some(w), _) => Cap::DirWrite(w),
                (None, Some(c)) => c.clone(),
                (None, None) if entry.kind == EntryKind::Symlink => {
                    return Err(Error::Symlink {
                        path: walked,
                        target: entry.target.clone().unwrap_or_default(),
                    });
                }
                (None, None) => return Err(Error::NotAFile(path.to_string())),
            };
            above.push(std::mem::replace(&mut cur, next));
        }
        // `a.txt/` names a directory, as a path on disk does.
        if path.ends_with('/') && !cur.is_dir() {
            return Err(Error::NotADirectory(path.to_string()));
        }
        Ok(cur)
    }

    /// Download a directory tree into `dest`, which must not exist yet.
    pub async fn get_tree(&self, cap: &DirReadCap, dest: &Path) -> Result<()> {
        // Read before anything is made: a cap that cannot be read leaves
        // no empty directory behind.
        let mut top = Some(self.list(cap).await?);
        std::fs::create_dir(dest)?;
        let mut stack = vec![(cap.clone(), dest.to_path_buf())];
        // Directories get their mtimes once nothing more is made in them.
        let mut dir_times = Vec::new();
        while let Some((dir, path)) = stack.pop() {
            let listing = match top.take() {
                Some(listing) => listing,
                None => self.list(&dir).await?,
            };
            for (name, entry) in listing.entries {
                let target = path.join(&name);
                match (&entry.kind, &entry.cap) {
                    (EntryKind::Dir, Some(Cap::DirRead(child))) => {
                        std::fs::create_dir(&target)?;
                        dir_times.push((target.clone(), entry.mtime, entry.mode));
                        stack.push((child.clone(), target));
                    }
                    (EntryKind::File, Some(Cap::FileRead(file))) => {
                        let out = std::fs::File::create(&target)?;
                        self.get_to_file(file, &out).await?;
                        out.set_modified(system_time(entry.mtime))?;
                        set_mode(&target, entry.mode)?;
                    }
                    (EntryKind::Symlink, _) => {
                        std::os::unix::fs::symlink(entry.target.as_deref().unwrap_or(""), &target)?;
                        set_mtime(&target, entry.mtime)?;
                    }
                    (kind, _) if kind.is_special() => {
                        // FIFOs, sockets and device nodes are names only;
                        // like rsync without `--specials`, leave them out.
                        tracing::warn!(path = %target.display(), "skipped a special file");
                    }
                    _ => return Err(Error::NotAFile(target.display().to_string())),
                }
            }
        }
        // Modes last too: a directory without write permission (0555)
        // could not have been filled.
        for (path, mtime, mode) in dir_times.into_iter().rev() {
            set_mtime(&path, mtime)?;
            set_mode(&path, mode)?;
        }
        Ok(())
    }
}

/// Give `path` a listing entry's mtime and mode, as `get_tree` gives
/// every file and directory under its top: for what a command downloads
/// by its path, whose own entry is in its parent's listing.
pub fn restore_meta(path: &Path, mtime: (i64, u32), mode: u32) -> std::io::Result<()> {
    set_mtime(path, mtime)?;
    set_mode(path, mode)
}

/// Set the mtime of `path` itself (a symlink's own, not its target's),
/// leaving its atime.
fn set_mtime(path: &Path, (secs, nanos): (i64, u32)) -> std::io::Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let mtime = TimeSpec::new(secs, i64::from(nanos));
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(std::io::Error::from)
}

pub(super) fn mtime_of(meta: &std::fs::Metadata) -> (i64, u32) {
    use std::os::unix::fs::MetadataExt;
    (meta.mtime(), meta.mtime_nsec() as u32)
}

/// `(secs, nanos)` as stat has it: `secs` whole seconds from the epoch
/// (negative before it), then `nanos` on top, forward.
fn system_time((secs, nanos): (i64, u32)) -> SystemTime {
    let whole = Duration::from_secs(secs.unsigned_abs());
    let base = if secs >= 0 {
        UNIX_EPOCH + whole
    } else {
        UNIX_EPOCH - whole
    };
    base + std::time::Duration::from_nanos(u64::from(nanos))
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
}

/// A listing's pages, each distinct one once (by root and size;
/// `Listing::decode` refused two caps that share both but not their key:
/// only empty pages repeat, and the pages' sizes were bounded there), and
/// for each page the index of its fetch among them.
fn distinct_pages(pages: &[FileReadCap]) -> (Vec<FileReadCap>, Vec<usize>) {
    let mut distinct: Vec<FileReadCap> = Vec::new();
    let mut at: Vec<usize> = Vec::with_capacity(pages.len());
    let mut index = std::collections::HashMap::new();
    for cap in pages {
        at.push(*index.entry((cap.root, cap.size)).or_insert_with(|| {
            distinct.push(cap.clone());
            distinct.len() - 1
        }));
    }
    (distinct, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ChunkKey;

    fn entry(shares: &[[u8; 32]], key: u8, len: u64) -> chunk::NodeEntry {
        chunk::NodeEntry {
            len,
            shares: shares.to_vec(),
            verify_key: None,
            key: Some(ChunkKey::from_bytes([key; 32])),
        }
    }

    /// Two entries share a cache slot only if every share id, the key and
    /// the length agree: one that borrows your chunk's first share (and
    /// key) beside shares of its own does not land on your chunk's slot.
    #[test]
    fn a_chunk_slot_covers_every_share_the_key_and_the_length() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let mine = Vault::chunk_slot(&entry(&[a, b, c], 9, 100)).unwrap();
        assert_eq!(mine, Vault::chunk_slot(&entry(&[a, b, c], 9, 100)).unwrap());
        for other in [
            entry(&[a, b, [4; 32]], 9, 100),
            entry(&[a, [4; 32], c], 9, 100),
            entry(&[a, b], 9, 100),
            entry(&[a, b, c], 8, 100),
            entry(&[a, b, c], 9, 101),
        ] {
            assert_ne!(mine, Vault::chunk_slot(&other).unwrap());
        }
        assert!(Vault::chunk_slot(&entry(&[], 9, 100)).is_err());
        let key = ReadKey::from_bytes([5; 32]);
        assert_ne!(
            Vault::node_key(&[a, b], &key),
            Vault::node_key(&[a, c], &key)
        );
    }

    /// An index too large for a slot is refused before the slot is sent,
    /// with an error that says so; the last published listing stands.
    #[test]
    fn a_directory_too_large_for_a_slot_is_a_clear_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let secret = crate::crypto::RootSecret::from_bytes([5; 32]);
            let store = Arc::new(crate::store::MemoryStorage::new());
            // Pages of 4 KiB, slots of at most 16 KiB: an index of 256
            // pages (about 100 bytes a page cap) does not fit.
            let vault = Vault::single(&secret, store).with_directory_limits(4096, 16 << 10);
            let dir = vault.new_dir().await.unwrap();
            let target = &"t".repeat(4000);
            let fill = |n: usize| {
                move |l: &mut Listing| {
                    for i in 0..n {
                        l.entries
                            .insert(format!("link-{i}"), Entry::symlink(target, (0, 0)));
                    }
                    Ok(())
                }
            };
            vault.update_dir(&dir, fill(10)).await.unwrap();
            match vault.update_dir(&dir, fill(200)).await {
                Err(Error::DirectoryTooLarge {
                    entries: 200,
                    bytes,
                    limit,
                }) => assert!(bytes > limit && limit == 16 << 10),
                other => panic!("published, or failed otherwise: {:?}", other.err()),
            }
            assert_eq!(vault.list(&dir.read_cap()).await.unwrap().entries.len(), 10);
        });
    }

    /// A directory over the page size is stored as pages: it reads back
    /// whole, a change to one entry stores one new page, and its pages are
    /// reachable for checks and lease renewals.
    #[test]
    fn a_large_directory_is_paged_and_reads_back() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let secret = crate::crypto::RootSecret::from_bytes([6; 32]);
            let store = Arc::new(crate::store::MemoryStorage::new());
            let vault =
                Vault::single(&secret, store.clone()).with_directory_limits(4096, MAX_SLOT_BYTES);
            let root = vault.root().clone();
            let sub = vault.new_dir().await.unwrap();
            vault
                .update_dir(&root, |l| {
                    for i in 0..400 {
                        let target = format!("target {i} {}", "x".repeat(50));
                        l.entries
                            .insert(format!("entry-{i:04}"), Entry::symlink(&target, (i, 0)));
                    }
                    l.entries
                        .insert("sub".into(), Entry::dir(&root, "sub", &sub, 0o755, (0, 0)));
                    Ok(())
                })
                .await
                .unwrap();
            let fresh = Vault::single(&secret, store.clone());
            let listed = fresh.list(&root.read_cap()).await.unwrap();
            assert_eq!(listed.entries.len(), 401);
            assert!(listed.pages.len() >= 4, "{} pages", listed.pages.len());
            assert_eq!(
                listed.entries["entry-0123"].target.as_deref(),
                Some(&*format!("target 123 {}", "x".repeat(50)))
            );
            // The child's write-cap, sealed in a page, still unseals.
            let child = listed.entries["sub"].write_cap(&root, "sub").unwrap();
            assert_eq!(child.map(|c| c.read_cap()), Some(sub.read_cap()));

            // One entry changed: one page is new, the others are the same
            // files.
            let changed = vault
                .update_dir(&root, |l| {
                    l.entries
                        .insert("entry-0007".into(), Entry::symlink("moved", (9, 0)));
                    Ok(())
                })
                .await
                .unwrap();
            assert_eq!(changed.pages.len(), listed.pages.len());
            let new_pages = changed
                .pages
                .iter()
                .zip(&listed.pages)
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(new_pages, 1);
            let relisted = fresh.list(&root.read_cap()).await.unwrap();
            assert_eq!(
                relisted.entries["entry-0007"].target.as_deref(),
                Some("moved")
            );
            // A refresh that knows the newest version fetches no pages.
            let (seq, same) = fresh
                .list_unless(&root.read_cap(), None)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(same, relisted);
            let unchanged = fresh.list_unless(&root.read_cap(), Some(seq)).await;
            assert!(unchanged.unwrap().is_none());
            let older = fresh.list_unless(&root.read_cap(), Some(seq - 1)).await;
            assert_eq!(older.unwrap().map(|(s, _)| s), Some(seq));

            // Every page share is reachable from the root, and a check
            // sees the pages as objects of the tree.
            let reachable: std::collections::BTreeSet<_> = fresh
                .reachable_ids(&Cap::DirWrite(root.clone()))
                .await
                .unwrap()
                .ids
                .into_iter()
                .collect();
            for page in &relisted.pages {
                for object in fresh.grid().file_objects(&page.verify_cap()).await.unwrap() {
                    assert!(object.ids.iter().all(|id| reachable.contains(id)));
                }
            }
            // A check probes the pages' shares too (so a repair rebuilds
            // them), and a listing with a page gone cannot pass it. The
            // page lost is not the one that names `sub`.
            let count = relisted.pages.len();
            let kept = crate::dir::page_of("sub", count);
            let gone = (kept + 1) % count;
            let page_objects = fresh
                .grid()
                .file_objects(&relisted.pages[gone].verify_cap())
                .await
                .unwrap();
            let report = fresh
                .check(&Cap::DirWrite(root.clone()), false, false)
                .await
                .unwrap();
            assert!(
                report
                    .objects
                    .iter()
                    .any(|o| o.object.ids == page_objects[0].ids),
                "the check skipped a page"
            );
            for id in &page_objects[0].ids {
                assert!(store.lose(id));
            }
            // A vault without the page in its cache: the page file and the
            // directory it belongs to are both unreadable now.
            let cold = Vault::single(&secret, store.clone());
            let report = cold
                .check(&Cap::DirWrite(root.clone()), false, false)
                .await
                .unwrap();
            assert_eq!(report.unreadable.len(), 2, "{:?}", report.unreadable);
            assert!(!report.healthy());
            // Renewal still reaches what it can, the other pages and what
            // they name (here the directory `sub`, and so what is in it),
            // and says what it could not.
            let reach = cold
                .reachable_ids(&Cap::DirWrite(root.clone()))
                .await
                .unwrap();
            assert_eq!(reach.unreadable.len(), 2, "{:?}", reach.unreadable);
            let reachable = reach.ids;
            let other = fresh
                .grid()
                .file_objects(&relisted.pages[kept].verify_cap())
                .await
                .unwrap();
            assert!(other[0].ids.iter().all(|id| reachable.contains(id)));
            assert!(
                reachable.contains(&sub.read_cap().public_key),
                "a page lost kept the other pages' entries from renewal"
            );
        });
    }

    /// The root's link table holds the current cap of a hard-linked file,
    /// which its names may not hold yet: checks and renewals reach it.
    #[test]
    fn the_link_table_is_reached_by_checks_and_renewals() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let secret = crate::crypto::RootSecret::from_bytes([7; 32]);
            let store = Arc::new(crate::store::MemoryStorage::new());
            let vault = Vault::single(&secret, store.clone());
            let root = vault.root().clone();
            let old = vault.put_bytes(b"first version").await.unwrap();
            let new = vault.put_bytes(b"second version").await.unwrap();
            let id = [9; 16];
            let linked = |cap: &FileReadCap| {
                let mut e = Entry::file(cap.clone(), 0o644, (0, 0));
                e.link = Some(id);
                e.nlink = 2;
                e
            };
            vault
                .update_dir(&root, |l| {
                    l.entries.insert("name".into(), linked(&old));
                    l.links.insert(id, linked(&new));
                    Ok(())
                })
                .await
                .unwrap();
            let reachable = vault
                .reachable_ids(&Cap::DirWrite(root.clone()))
                .await
                .unwrap()
                .ids;
            let report = vault
                .check(&Cap::DirWrite(root.clone()), false, false)
                .await
                .unwrap();
            for cap in [&old, &new] {
                let objects = vault.grid().file_objects(&cap.verify_cap()).await.unwrap();
                for id in &objects[0].ids {
                    assert!(reachable.contains(id));
                    assert!(report.objects.iter().any(|o| o.object.ids.contains(id)));
                }
            }
        });
    }

    /// A node holding bytes is only ever a root. Listed below one, its
    /// bytes would be skipped and the file read short, so a read and a
    /// check refuse it.
    #[test]
    fn a_node_holding_bytes_below_the_root_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let secret = crate::crypto::RootSecret::from_bytes([4; 32]);
            let store = Arc::new(crate::store::MemoryStorage::new());
            let vault = Vault::single(&secret, store.clone());
            let data = b"bytes a parent must not hide".to_vec();
            let (inner, inner_shares) =
                FileEncoder::new(secret.convergence(), Params::REPLICA).seal_inline(&data);
            let (cap, root) = FileEncoder::new(secret.convergence(), Params::REPLICA)
                .seal_root_over(
                    &inner_shares[0],
                    *inner.read_key.expose(),
                    data.len() as u64,
                );
            for share in inner_shares.iter().chain(&root) {
                store
                    .put_share(&share.id(), share.shared_bytes())
                    .await
                    .unwrap();
            }
            // Fetched fresh, and again with the node cached from a read of
            // it as a root (which is fine).
            let fresh = Vault::single(&secret, store.clone());
            let refused = |r: Result<Vec<u8>>| match r {
                Err(Error::Chunk(chunk::Error::MalformedManifest(_))) => {}
                other => panic!(
                    "read through a misplaced node: {:?}",
                    other.map(|b| b.len())
                ),
            };
            refused(fresh.get_bytes(&cap).await);
            assert_eq!(vault.get_bytes(&inner).await.unwrap(), data);
            refused(vault.get_bytes(&cap).await);
            assert!(vault.grid().file_objects(&cap.verify_cap()).await.is_err());
        });
    }
}
