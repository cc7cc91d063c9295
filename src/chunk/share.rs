//! Shares: the unit a mirror stores.
//!
//! A chunk is sealed with its convergent key, and the ciphertext is
//! erasure-coded (Reed-Solomon, `reed-solomon-simd`) into n shares, any k of
//! which rebuild it. A share is a fixed 16-byte header plus one shard, and is
//! addressed by the hash of those bytes (BLAKE3; SHA-256 for the format-1
//! shares of earlier releases, see [`share_id`]): a mirror or a repairer
//! checks a share against its id without any key.
//!
//! ```text
//! offset size
//!      0    4  magic "LDSH"
//!      4    1  format version (SHARE_VERSION)
//!      5    1  k
//!      6    1  n
//!      7    1  index (0..k data shards, k..n parity shards)
//!      8    8  payload length, big-endian (ciphertext bytes before padding)
//!     16    -  shard bytes (every share of a chunk has the same length)
//! ```

use bytes::{Buf, Bytes, BytesMut};

use sha2::Digest;

use crate::crypto::{ChunkKey, ConvergenceSecret, Hash, sha256};

use super::{Error, Result};

/// The share header format this code writes. It also reads format 1, the
/// same layout named by SHA-256 instead of BLAKE3.
pub const SHARE_VERSION: u8 = 2;
/// The share format named by SHA-256, and the oldest this code reads.
const SHA256_VERSION: u8 = 1;
const OLDEST_VERSION: u8 = SHA256_VERSION;
/// The most shares a chunk may be coded into.
pub const MAX_SHARES: u8 = 64;
/// Bytes of header before the shard.
pub const HEADER_LEN: usize = 16;
const MAGIC: &[u8; 4] = b"LDSH";
/// The context every chunk is sealed under (AES-SIV's associated data).
const CHUNK_DOMAIN: &[u8] = b"lode chunk v1";
/// Domain of chunk keys. Version 2 hashes the plaintext with BLAKE3,
/// where version 1 (same context, same format) used SHA-256: a reader
/// never derives a key, so both read alike, and the new domain keeps the
/// two hashes' keys apart.
const CHUNK_KEY_DOMAIN: &[u8] = b"lode chunk v2";

/// A share's id: the hash of its bytes, see [`share_id`].
pub type ShareId = Hash;

/// Bytes that settle which hash names a blob: the magic and the version.
const ID_HEAD: usize = 5;

fn named_by_sha256(head: &[u8]) -> bool {
    head.len() >= ID_HEAD && &head[..4] == MAGIC && head[4] == SHA256_VERSION
}

/// The id of a blob a mirror stores: SHA-256 if it starts as a format-1
/// share does, BLAKE3 otherwise (format-2 shares, and any other bytes).
/// Either hash is collision resistant, so a blob cannot answer for an id
/// made by the other one.
pub fn share_id(bytes: &[u8]) -> ShareId {
    if named_by_sha256(bytes) {
        sha256(bytes)
    } else {
        crate::crypto::blake3(bytes)
    }
}

/// [`share_id`] of bytes that arrive in pieces.
#[derive(Default)]
pub struct IdHasher {
    head: Vec<u8>,
    state: Option<IdState>,
}

enum IdState {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl IdState {
    fn update(&mut self, piece: &[u8]) {
        match self {
            IdState::Sha256(h) => h.update(piece),
            IdState::Blake3(h) => {
                h.update(piece);
            }
        }
    }
}

impl IdHasher {
    pub fn new() -> IdHasher {
        IdHasher::default()
    }

    pub fn update(&mut self, mut piece: &[u8]) {
        if self.state.is_none() {
            let take = (ID_HEAD - self.head.len()).min(piece.len());
            self.head.extend_from_slice(&piece[..take]);
            piece = &piece[take..];
            if self.head.len() < ID_HEAD {
                return;
            }
            let mut state = if named_by_sha256(&self.head) {
                IdState::Sha256(sha2::Sha256::new())
            } else {
                IdState::Blake3(Box::default())
            };
            state.update(&self.head);
            self.state = Some(state);
        }
        if let Some(state) = &mut self.state {
            state.update(piece);
        }
    }

    pub fn finalize(self) -> ShareId {
        match self.state {
            None => share_id(&self.head),
            Some(IdState::Sha256(h)) => h.finalize().into(),
            Some(IdState::Blake3(h)) => *h.finalize().as_bytes(),
        }
    }
}

/// Erasure parameters: any `k` of `n` shares rebuild a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    k: u8,
    n: u8,
}

impl Params {
    pub fn new(k: u8, n: u8) -> Result<Self> {
        if k == 0 || k > n || n > MAX_SHARES {
            return Err(Error::BadParams { k, n });
        }
        Ok(Self { k, n })
    }

    /// One share, stored whole on every mirror: used for manifest roots, so
    /// that a cap names a single id.
    pub const REPLICA: Params = Params { k: 1, n: 1 };

    pub fn k(&self) -> u8 {
        self.k
    }
    pub fn n(&self) -> u8 {
        self.n
    }

    /// The bytes mixed into convergent keys: everything that changes how a
    /// chunk is stored.
    pub(crate) fn key_params(&self) -> [u8; 3] {
        [SHARE_VERSION, self.k, self.n]
    }
}

/// The parsed header of a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareHeader {
    pub params: Params,
    pub index: u8,
    pub payload_len: u64,
}

/// One share: header plus shard, as stored on a mirror. Its id is
/// computed once, when the share is made or checked; the bytes are shared,
/// so handing a share to several uploads copies nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Share {
    bytes: Bytes,
    header: ShareHeader,
    id: ShareId,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("header", &self.header)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Share {
    /// Parse share bytes, checking the header is well formed. This does not
    /// check the id; use [`Share::verify`] for bytes from a mirror.
    pub fn parse(bytes: impl Into<Bytes>) -> Result<Share> {
        let bytes = bytes.into();
        let id = share_id(&bytes);
        Share::parse_with_id(bytes, id)
    }

    fn parse_with_id(bytes: Bytes, id: ShareId) -> Result<Share> {
        if bytes.len() < HEADER_LEN + 2 {
            return Err(Error::MalformedShare("shorter than a header"));
        }
        if &bytes[..4] != MAGIC {
            return Err(Error::MalformedShare("bad magic"));
        }
        if !(OLDEST_VERSION..=SHARE_VERSION).contains(&bytes[4]) {
            return Err(Error::ShareVersion(bytes[4]));
        }
        let params =
            Params::new(bytes[5], bytes[6]).map_err(|_| Error::MalformedShare("invalid k/n"))?;
        let index = bytes[7];
        if index >= params.n {
            return Err(Error::MalformedShare("index out of range"));
        }
        let payload_len = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let shard_len = (bytes.len() - HEADER_LEN) as u64;
        if shard_len != shard_len_for(params, payload_len) as u64 {
            return Err(Error::MalformedShare(
                "shard length does not match payload length",
            ));
        }
        Ok(Share {
            header: ShareHeader {
                params,
                index,
                payload_len,
            },
            bytes,
            id,
        })
    }

    /// Check `bytes` against the id they were asked for, then parse them.
    /// This is the boundary where a hostile mirror's answer is judged.
    pub fn verify(bytes: impl Into<Bytes>, id: &ShareId) -> Result<Share> {
        let bytes = bytes.into();
        if &share_id(&bytes) != id {
            return Err(Error::Corrupt(*id));
        }
        Share::parse_with_id(bytes, *id)
    }

    pub fn id(&self) -> ShareId {
        self.id
    }
    pub fn header(&self) -> &ShareHeader {
        &self.header
    }
    /// The share format its header names (1 or [`SHARE_VERSION`]).
    pub fn version(&self) -> u8 {
        self.bytes[4]
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes.into()
    }
    /// The bytes, shared rather than copied.
    pub fn shared_bytes(&self) -> Bytes {
        self.bytes.clone()
    }
    fn shard(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }
}

/// Shard length for a payload: ceil(len / k), rounded up to even (the codec
/// works on 16-bit symbols), at least 2.
fn shard_len_for(params: Params, payload_len: u64) -> usize {
    let k = params.k as u64;
    let per = payload_len.div_ceil(k).max(1);
    usize::try_from(per.saturating_add(per & 1)).unwrap_or(usize::MAX)
}

fn header_bytes(params: Params, index: u8, payload_len: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(MAGIC);
    header[4..8].copy_from_slice(&[SHARE_VERSION, params.k, params.n, index]);
    header[8..].copy_from_slice(&payload_len.to_be_bytes());
    header
}

fn make_share(params: Params, index: u8, payload_len: u64, shard: &[u8]) -> Share {
    let mut bytes = Vec::with_capacity(HEADER_LEN + shard.len());
    bytes.extend_from_slice(&header_bytes(params, index, payload_len));
    bytes.extend_from_slice(shard);
    share_from_bytes(params, index, payload_len, bytes)
}

/// A share of bytes that begin with the header of `index`.
fn share_from_bytes(params: Params, index: u8, payload_len: u64, bytes: Vec<u8>) -> Share {
    Share {
        id: share_id(&bytes),
        bytes: bytes.into(),
        header: ShareHeader {
            params,
            index,
            payload_len,
        },
    }
}

/// Erasure-code `payload` into `params.n` shares, in index order.
pub fn encode(params: Params, payload: &[u8]) -> Vec<Share> {
    encode_parts(params, &[payload])
}

/// [`encode`] in the share format `version`: a repair rebuilds an
/// object's lost shares in the format its others have, or their ids
/// would not be the ones its parent lists (objects stored before BLAKE3,
/// format 1, were refused as inconsistent and never repaired).
pub fn encode_as(version: u8, params: Params, payload: &[u8]) -> Result<Vec<Share>> {
    let shares = encode(params, payload);
    match version {
        SHARE_VERSION => Ok(shares),
        SHA256_VERSION => shares
            .into_iter()
            .map(|share| {
                let mut bytes = share.into_bytes();
                bytes[4] = SHA256_VERSION;
                let id = share_id(&bytes);
                Share::parse_with_id(bytes.into(), id)
            })
            .collect(),
        other => Err(Error::ShareVersion(other)),
    }
}

/// [`encode`] of a payload that lies in several buffers, in order (a
/// chunk's tag and its body): each data share is cut straight from them
/// into its own buffer, which the Reed-Solomon coder then reads, so the
/// payload is never joined or padded in a buffer of its own.
pub fn encode_parts(params: Params, parts: &[&[u8]]) -> Vec<Share> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let shard_len = shard_len_for(params, len as u64);
    let k = params.k as usize;
    if params.n - params.k <= 1 {
        return encode_fused(params, parts, len, shard_len);
    }
    let data: Vec<Vec<u8>> = (0..k)
        .map(|index| {
            let mut bytes = Vec::with_capacity(HEADER_LEN + shard_len);
            bytes.extend_from_slice(&header_bytes(params, index as u8, len as u64));
            append_payload(parts, index * shard_len, shard_len, &mut bytes);
            bytes
        })
        .collect();
    let parity = (params.n - params.k) as usize;
    let recovery: Vec<Share> = with_encoder(k, parity, shard_len, |encoder| {
        for bytes in &data {
            encoder
                .add_original_shard(&bytes[HEADER_LEN..])
                .expect("k shards of the size set");
        }
        let result = encoder.encode().expect("all k shards were added");
        result
            .recovery_iter()
            .enumerate()
            .map(|(j, s)| make_share(params, params.k + j as u8, len as u64, s))
            .collect()
    });
    data.into_iter()
        .enumerate()
        .map(|(index, bytes)| share_from_bytes(params, index as u8, len as u64, bytes))
        .chain(recovery)
        .collect()
}

/// Bytes of each share a fused encode builds and hashes at a time.
const FUSED_BLOCK: usize = 64 << 10;

/// [`encode_parts`] for codes with at most one recovery share, which is
/// then the xor of the originals (what Reed-Solomon gives for one parity
/// shard, tested against `reed_solomon_simd` below), made straight into
/// its share. The shares are built and hashed `FUSED_BLOCK` at a time, so
/// that the bytes just copied in are still in cache when the parity xors
/// them and when each share's id hashes them: one pass over the chunk
/// where copying, the parity and the ids took three (docs/PERFORMANCE.md,
/// "Shares built and hashed a block at a time"). Blocks start at multiples
/// of `FUSED_BLOCK` in the share's bytes, header included, so each hash
/// update covers whole BLAKE3 chunks. The ids are BLAKE3's, as
/// [`share_id`] gives for this format.
fn encode_fused(params: Params, parts: &[&[u8]], len: usize, shard_len: usize) -> Vec<Share> {
    let (k, n) = (params.k as usize, params.n as usize);
    let total = HEADER_LEN + shard_len;
    let mut bufs: Vec<Vec<u8>> = (0..n)
        .map(|index| {
            let mut bytes = Vec::with_capacity(total);
            bytes.extend_from_slice(&header_bytes(params, index as u8, len as u64));
            bytes
        })
        .collect();
    let mut hashers: Vec<blake3::Hasher> = (0..n).map(|_| blake3::Hasher::new()).collect();
    let mut start = 0;
    while start < total {
        let end = (start + FUSED_BLOCK).min(total);
        // The block's range in each shard (past the header).
        let (from, to) = (start.max(HEADER_LEN) - HEADER_LEN, end - HEADER_LEN);
        for (index, bytes) in bufs[..k].iter_mut().enumerate() {
            append_payload(parts, index * shard_len + from, to - from, bytes);
        }
        if let Some((parity, data)) = bufs.split_last_mut().filter(|_| n > k) {
            let at = parity.len();
            let range = HEADER_LEN + from..HEADER_LEN + to;
            parity.extend_from_slice(&data[0][range.clone()]);
            for other in &data[1..] {
                for (out, b) in parity[at..].iter_mut().zip(&other[range.clone()]) {
                    *out ^= b;
                }
            }
        }
        for (hasher, bytes) in hashers.iter_mut().zip(&bufs) {
            hasher.update(&bytes[start..end]);
        }
        start = end;
    }
    bufs.into_iter()
        .zip(hashers)
        .enumerate()
        .map(|(index, (bytes, hasher))| Share {
            id: (*hasher.finalize().as_bytes()),
            bytes: bytes.into(),
            header: ShareHeader {
                params,
                index: index as u8,
                payload_len: len as u64,
            },
        })
        .collect()
}

/// Append `n` bytes of the payload that `parts` hold in order, from
/// `pos`, zeros past its end.
fn append_payload(parts: &[&[u8]], mut pos: usize, mut n: usize, out: &mut Vec<u8>) {
    for part in parts {
        if n == 0 {
            return;
        }
        if pos >= part.len() {
            pos -= part.len();
            continue;
        }
        let take = (part.len() - pos).min(n);
        out.extend_from_slice(&part[pos..pos + take]);
        (pos, n) = (0, n - take);
    }
    out.resize(out.len() + n, 0);
}

/// Reed-Solomon encoders kept for reuse: about as many as chunks are
/// sealed at once (the mount's sealers and early uploads).
const KEPT_ENCODERS: usize = 4;

/// Run `f` with a Reed-Solomon encoder set up for `k` originals and
/// `parity` recovery shards of `shard_len` bytes. Reusing encoders spares
/// each chunk a fresh, zeroed work area and the copy of its recovery
/// shards out of it (`reed_solomon_simd::encode` does both: 3 % of the
/// mount's CPU in a 1 GiB write). At most `KEPT_ENCODERS` are kept, so
/// the work areas held (a few MiB each for the largest chunks) stay
/// bounded however many threads seal.
fn with_encoder<T>(
    k: usize,
    parity: usize,
    shard_len: usize,
    f: impl FnOnce(&mut reed_solomon_simd::ReedSolomonEncoder) -> T,
) -> T {
    use reed_solomon_simd::ReedSolomonEncoder;
    static KEPT: std::sync::Mutex<Vec<ReedSolomonEncoder>> = std::sync::Mutex::new(Vec::new());
    const VALID: &str = "parameters were validated by Params::new";
    let kept = KEPT.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let mut encoder = match kept {
        Some(mut e) => {
            e.reset(k, parity, shard_len).expect(VALID);
            e
        }
        None => ReedSolomonEncoder::new(k, parity, shard_len).expect(VALID),
    };
    let out = f(&mut encoder);
    let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    if kept.len() < KEPT_ENCODERS {
        kept.push(encoder);
    }
    out
}

/// Rebuild the payload from any `k` shares of one chunk. The shares must
/// already be verified against their ids; this checks they agree with each
/// other and with `params`.
pub fn decode(params: Params, shares: &[Share]) -> Result<Vec<u8>> {
    decode_split(params, shares, &mut [])
}

/// [`decode`], with the payload's first `head.len()` bytes put in `head`
/// and the rest returned: a chunk's AES-SIV tag and body, each where its
/// decryption wants it. A payload shorter than `head` is an error.
fn decode_split(params: Params, shares: &[Share], head: &mut [u8]) -> Result<Vec<u8>> {
    let k = params.k as usize;
    let mut by_index: Vec<Option<&Share>> = vec![None; params.n as usize];
    let mut payload_len = None;
    for s in shares {
        let h = s.header();
        if h.params != params || *payload_len.get_or_insert(h.payload_len) != h.payload_len {
            return Err(Error::Inconsistent);
        }
        by_index[h.index as usize] = Some(s);
    }
    let have = by_index.iter().flatten().count();
    if have < k {
        return Err(Error::TooFewShares { need: k, have });
    }
    let payload_len = payload_len.expect("have >= k >= 1 shares") as usize;
    if payload_len < head.len() {
        return Err(Error::MalformedShare("payload shorter than its header"));
    }
    let mut out = Payload {
        head,
        filled: 0,
        rest: Vec::with_capacity(shard_len_for(params, payload_len as u64) * k),
    };
    if by_index[..k].iter().all(Option::is_some) {
        for s in by_index[..k].iter().flatten() {
            out.push(s.shard());
        }
    } else {
        let originals = by_index[..k]
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s.shard())));
        let recovery = by_index[k..]
            .iter()
            .enumerate()
            .filter_map(|(j, s)| s.map(|s| (j, s.shard())));
        let restored = reed_solomon_simd::decode(k, params.n as usize - k, originals, recovery)
            .map_err(|e| Error::Erasure(e.to_string()))?;
        for (i, slot) in by_index[..k].iter().enumerate() {
            match slot {
                Some(s) => out.push(s.shard()),
                None => out.push(
                    restored
                        .get(&i)
                        .ok_or_else(|| Error::Erasure(format!("shard {i} not restored")))?,
                ),
            }
        }
    }
    let mut rest = out.rest;
    rest.truncate(payload_len - out.head.len());
    Ok(rest)
}

/// The decoder's output: `head` filled first, then `rest`.
struct Payload<'a> {
    head: &'a mut [u8],
    filled: usize,
    rest: Vec<u8>,
}

impl Payload<'_> {
    fn push(&mut self, mut bytes: &[u8]) {
        if self.filled < self.head.len() {
            let n = (self.head.len() - self.filled).min(bytes.len());
            self.head[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
        }
        self.rest.extend_from_slice(bytes);
    }
}

/// A chunk after sealing: its key (for the manifest) and its shares.
#[derive(Clone)]
pub struct SealedChunk {
    pub key: ChunkKey,
    pub shares: Vec<Share>,
}

/// Seal a plaintext chunk under its convergent key and erasure-code it.
pub fn seal_chunk(conv: &ConvergenceSecret, params: Params, plaintext: &[u8]) -> SealedChunk {
    seal_chunk_owned(conv, params, plaintext.to_vec())
}

/// [`seal_chunk`] of a chunk the caller gives up: it is encrypted where it
/// lies, and the shares are cut from its tag and its body.
pub fn seal_chunk_owned(conv: &ConvergenceSecret, params: Params, body: Vec<u8>) -> SealedChunk {
    let key = chunk_key(conv, params, &body);
    seal_chunk_keyed(key, params, body)
}

/// [`seal_chunk_owned`] with the chunk's key, [`chunk_key`], at hand.
pub fn seal_chunk_keyed(key: ChunkKey, params: Params, body: Vec<u8>) -> SealedChunk {
    let mut sealed = seal_chunks_keyed(params, vec![(key, body)]);
    sealed.pop().expect("one chunk in, one out")
}

/// [`seal_chunk_keyed`] of several chunks, in order. Their AES-SIV runs
/// interleaved ([`ChunkKey::seal_all_in_place`]): four 4 MiB chunks
/// seal, code and hash in about 0.63 of the time they take one by one
/// (docs/PERFORMANCE.md, "Sealing four chunks at once").
pub fn seal_chunks_keyed(params: Params, chunks: Vec<(ChunkKey, Vec<u8>)>) -> Vec<SealedChunk> {
    let (keys, mut bodies): (Vec<ChunkKey>, Vec<Vec<u8>>) = chunks.into_iter().unzip();
    let tags = {
        let key_refs: Vec<&ChunkKey> = keys.iter().collect();
        let mut views: Vec<&mut [u8]> = bodies.iter_mut().map(|b| &mut b[..]).collect();
        ChunkKey::seal_all_in_place(&key_refs, &[CHUNK_DOMAIN], &mut views)
    };
    keys.into_iter()
        .zip(bodies)
        .zip(tags)
        .map(|((key, body), tag)| SealedChunk {
            shares: encode_parts(params, &[&tag, &body]),
            key,
        })
        .collect()
}

/// A chunk's convergent key (docs/FORMATS.md): keyed by the identity's
/// convergence secret, over the BLAKE3 hash of the plaintext.
pub fn chunk_key(conv: &ConvergenceSecret, params: Params, plaintext: &[u8]) -> ChunkKey {
    conv.convergent_key(
        CHUNK_KEY_DOMAIN,
        &crate::crypto::blake3(plaintext),
        &params.key_params(),
    )
}

/// Rebuild and decrypt a chunk from verified shares. AES-SIV authenticates
/// the result, so a wrong key or a bad rebuild is an error, never bad data.
pub fn open_chunk(key: &ChunkKey, params: Params, shares: &[Share]) -> Result<Vec<u8>> {
    let mut tag = [0u8; crate::crypto::TAG_LEN];
    let mut body = decode_split(params, shares, &mut tag)?;
    key.open_in_place(&[CHUNK_DOMAIN], &tag, &mut body)?;
    Ok(body)
}

/// Open a chunk whose shares each hashed to its id in an authenticated
/// manifest ([`Share::verify`] against the ids of a node whose `locs`
/// opened), leaving the plaintext where the shares' bytes arrived.
///
/// When the `k` data shares are all there (the usual case), the
/// ciphertext they hold is exactly what the manifest names, and each
/// share's buffer is decrypted in place under the stored tag, without
/// the serial S2V pass that would only confirm it; each becomes one part
/// of the result, so the chunk is never joined into a new buffer (that
/// join was 8 % of a cold read's CPU in the mount). A buffer shared with
/// someone else, or much larger than its share, is copied first.
///
/// A chunk rebuilt from parity is opened as [`open_chunk`] does, tag
/// checked, into one part: shares that each match their id need not
/// match each other (a manifest's writer can list a parity share coded
/// from other bytes), and then which bytes a rebuild gave would depend on
/// which mirrors answered. Checked, such a mix is an error, whichever
/// shares came.
pub fn open_verified_chunk_parts(
    key: &ChunkKey,
    params: Params,
    shares: Vec<Share>,
) -> Result<Vec<Bytes>> {
    let k = params.k as usize;
    let mut payload_len = None;
    for s in &shares {
        let h = s.header();
        if h.params != params || *payload_len.get_or_insert(h.payload_len) != h.payload_len {
            return Err(Error::Inconsistent);
        }
    }
    let payload_len = payload_len.unwrap_or(0) as usize;
    let tag_len = crate::crypto::TAG_LEN;
    let mut indexes: Vec<usize> = shares.iter().map(|s| s.header().index as usize).collect();
    indexes.sort_unstable();
    if indexes != (0..k).collect::<Vec<_>>() || payload_len < tag_len {
        return open_chunk(key, params, &shares).map(|plain| vec![Bytes::from(plain)]);
    }
    let mut data = shares;
    data.sort_unstable_by_key(|s| s.header().index);
    let mut parts: Vec<BytesMut> = data
        .into_iter()
        .map(|s| {
            let mut buf = match s.bytes.try_into_mut() {
                // A share alone in a buffer much larger than itself (a
                // body read whole into an HTTP client's read buffer) would
                // keep all of it alive in the chunk cache, which counts
                // only the plaintext: copy it out instead.
                Ok(buf) if buf.capacity() <= buf.len() + buf.len() / 8 + 4096 => buf,
                Ok(buf) => BytesMut::from(&buf[..]),
                Err(shared) => BytesMut::from(&shared[..]),
            };
            buf.advance(HEADER_LEN);
            buf
        })
        .collect();
    // The tag opens the payload (in the first shard, unless shards are
    // shorter than a tag).
    let mut tag = [0u8; crate::crypto::TAG_LEN];
    let mut got = 0;
    for part in &mut parts {
        let n = (tag_len - got).min(part.len());
        tag[got..got + n].copy_from_slice(&part[..n]);
        part.advance(n);
        got += n;
    }
    // The last shard carries the code's padding.
    let mut keep = payload_len - tag_len;
    for part in &mut parts {
        let n = part.len().min(keep);
        part.truncate(n);
        keep -= n;
    }
    parts.retain(|p| !p.is_empty());
    key.decrypt_verified_parts(&tag, parts.iter_mut().map(|p| &mut p[..]));
    Ok(parts.into_iter().map(BytesMut::freeze).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reused encoder gives the one-shot encoder's parity,
    /// whatever sizes and parameters came through it before.
    #[test]
    fn a_reused_encoder_codes_as_a_fresh_one() {
        let cases = [
            (2, 3, 1000),
            (2, 3, 70_001),
            (3, 5, 64),
            (2, 3, 1000),
            (4, 6, 300_000),
            // One recovery share, made by xor without the coder, and
            // shares built a block at a time: shards around the block's
            // size, and past several blocks.
            (1, 2, 777),
            (2, 3, 2 * 65_536 - 2 * HEADER_LEN),
            (2, 3, 2 * 65_536 - 2 * HEADER_LEN + 2),
            (1, 2, 65_536 * 3 + 5),
            (2, 3, 1),
            (2, 3, 4_194_319),
            (3, 4, 100_003),
            (5, 6, 64_000),
            (16, 17, 9_999),
        ];
        for (k, n, len) in cases {
            let params = Params::new(k, n).unwrap();
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let shares = encode(params, &payload);
            let shard_len = shard_len_for(params, len as u64);
            let mut padded = payload.clone();
            padded.resize(shard_len * k as usize, 0);
            let originals: Vec<&[u8]> = padded.chunks(shard_len).collect();
            let parity =
                reed_solomon_simd::encode(k as usize, (n - k) as usize, &originals).unwrap();
            for (j, want) in parity.iter().enumerate() {
                let got = &shares[k as usize + j].as_bytes()[HEADER_LEN..];
                assert_eq!(got, &want[..], "k {k} n {n} len {len} parity {j}");
            }
            for (i, share) in shares.iter().enumerate() {
                let bytes = share.as_bytes();
                assert_eq!(
                    share.id(),
                    share_id(bytes),
                    "k {k} n {n} len {len} share {i}"
                );
                assert_eq!(
                    bytes[..HEADER_LEN],
                    header_bytes(params, i as u8, len as u64)
                );
                if i < k as usize {
                    assert_eq!(&bytes[HEADER_LEN..], originals[i], "k {k} n {n} len {len}");
                }
            }
            assert_eq!(
                decode(params, &shares[n as usize - k as usize..]).unwrap(),
                payload
            );
        }
    }

    /// A payload in parts (a chunk's tag and body) is coded as the same
    /// payload in one buffer, however it is split, with and without a
    /// recovery share, by xor and by the coder.
    #[test]
    fn a_payload_in_parts_codes_as_one_buffer() {
        let payload: Vec<u8> = (0..300_007u32)
            .map(|i| ((i * 13) ^ (i >> 9)) as u8)
            .collect();
        for (k, n) in [(2, 3), (1, 1), (3, 3), (3, 4), (4, 6)] {
            let params = Params::new(k, n).unwrap();
            let whole = encode(params, &payload);
            for at in [0, 16, 65_530, 150_000, payload.len()] {
                let (a, b) = payload.split_at(at);
                let split = encode_parts(params, &[a, &[], b]);
                assert_eq!(split.len(), n as usize);
                for (x, y) in whole.iter().zip(&split) {
                    assert_eq!(x.as_bytes(), y.as_bytes(), "k {k} n {n} split at {at}");
                    assert_eq!(x.id(), y.id());
                    assert_eq!(y.id(), share_id(y.as_bytes()));
                }
            }
            assert_eq!(
                decode(params, &whole[n as usize - k as usize..]).unwrap(),
                payload
            );
        }
    }
}
