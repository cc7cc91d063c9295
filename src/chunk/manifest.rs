//! The manifest: a file's chunk list, as an encrypted tree of nodes.
//!
//! A node lists up to [`FANOUT`] children: chunks (in a leaf, depth 0) or
//! other nodes. Each node is CBOR with two sealed sections:
//! - `locs`, sealed under the node's verify key: per child, its plaintext
//!   length, its share ids and (for child nodes) the child's verify key.
//!   A verify-cap holder can walk every share of the file with this alone.
//! - `keys`, sealed under the node's read key: per child, the key that
//!   decrypts it. Only a read-cap reaches these. The `locs` section binds
//!   the SHA-256 of the `keys` ciphertext as associated data, so a verifier
//!   detects a change to either.
//!
//! A node's read key is convergent in its own contents, so the tree is built
//! bottom-up while the file streams in, holding at most `FANOUT` entries per
//! level in memory, and the same file always yields the same root. Inner
//! nodes are erasure-coded like chunks; the root is one replicated share, so
//! that a cap names a single id. The root's read key is the file's read key.
//!
//! A file of at most [`INLINE_MAX`] bytes has no chunks: its root holds
//! the bytes themselves, sealed in the `keys` section (format 2). Storing
//! it is one replicated share instead of a coded chunk plus a root, and
//! reading it is one fetch instead of two.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::share::{self, Params, Share, ShareId};
use super::{Error, Result};
use crate::caps::FileReadCap;
use crate::crypto::{ChunkKey, ConvergenceSecret, ReadKey, VerifyKey, sha256};

/// The manifest node format of a node with children (and of an empty
/// file's root).
pub const MANIFEST_VERSION: u8 = 1;
/// The format of a root that holds its file's bytes. Readers take both;
/// nodes with children keep format 1, so their bytes (and their
/// deduplication against older uploads) do not change.
pub const INLINE_VERSION: u8 = 2;
/// Files up to this many bytes are kept inside their root. The root is
/// replicated rather than erasure-coded, so such a file costs up to
/// `max(n, happy)` times its size in storage instead of `n / k`; at this
/// size the per-share overhead (a request, a ledger row, a lease each)
/// matters more than the bytes.
pub const INLINE_MAX: usize = 16 * 1024;
/// Children per node: 512 chunks of 4 MiB on average is 2 GiB per leaf,
/// 1 TiB per two levels.
pub const FANOUT: usize = 512;
const NODE_DOMAIN: &[u8] = b"lode manifest v1";
const LOCS_CONTEXT: &[u8] = b"lode manifest v1 locs";
const KEYS_CONTEXT: &[u8] = b"lode manifest v1 keys";

#[derive(Serialize, Deserialize)]
struct Blob {
    v: u8,
    locs: ByteBuf,
    keys: ByteBuf,
}

// The sequences below are refused as they run past what a writer makes,
// not counted once decoded: an empty byte string is one byte of CBOR and
// 24 in memory, so a node its author padded with them (a friend's file)
// held about 24 times its size before any check. No writer makes a node
// wider than FANOUT, and a reader caches nodes by count.
#[derive(Serialize, Deserialize)]
struct Locs {
    depth: u8,
    k: u8,
    n: u8,
    size: u64,
    #[serde(deserialize_with = "at_most::<FANOUT, _, _>")]
    entries: Vec<LocEntry>,
}

#[derive(Serialize, Deserialize, Clone)]
struct LocEntry {
    len: u64,
    #[serde(deserialize_with = "at_most::<{ u8::MAX as usize }, _, _>")]
    shares: Vec<ByteBuf>,
    vkey: Option<ByteBuf>,
}

#[derive(Serialize, Deserialize)]
struct Keys {
    #[serde(deserialize_with = "at_most::<FANOUT, _, _>")]
    keys: Vec<ByteBuf>,
    /// Format 2 only: the file's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<ByteBuf>,
}

/// One child of a decoded node.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    /// Plaintext bytes this child covers.
    pub len: u64,
    /// The child's share ids, in index order.
    pub shares: Vec<ShareId>,
    /// For a child node: its verify key. `None` for a chunk.
    pub verify_key: Option<VerifyKey>,
    /// The key that decrypts the child (a chunk key, or a child node's read
    /// key). `None` when the node was opened with a verify key.
    pub key: Option<ChunkKey>,
}

/// A decoded manifest node.
#[derive(Debug, Clone)]
pub struct Node {
    /// 0 for a leaf (children are chunks), else the height above the leaves.
    pub depth: u8,
    /// Erasure parameters of the children.
    pub params: Params,
    /// Plaintext bytes under this node.
    pub size: u64,
    pub entries: Vec<NodeEntry>,
    /// Format 2: a root holding its file's bytes, with no entries. Only a
    /// root may be one; a reader refuses it anywhere else.
    pub inline: bool,
    /// The bytes of a format 2 root opened with its read key.
    pub data: Option<std::sync::Arc<Vec<u8>>>,
}

impl Node {
    /// Whether this node may be `entry`, a child of `parent`: one level
    /// down, covering the entry's length, and not a node holding bytes,
    /// which is only ever a root (below one, its bytes would be skipped
    /// and the file read short).
    pub fn fits_under(&self, parent: &Node, entry: &NodeEntry) -> Result<()> {
        // Not `self.depth + 1`: a hostile author's depth of 255 overflowed
        // (a panic in builds with overflow checks, the fuzzers' among them).
        if parent.depth.checked_sub(1) != Some(self.depth) || self.size != entry.len || self.inline
        {
            return Err(Error::MalformedManifest(
                "child node does not fit its parent".into(),
            ));
        }
        Ok(())
    }
}

fn arr32(b: &ByteBuf) -> Result<[u8; 32]> {
    b.as_slice()
        .try_into()
        .map_err(|_| Error::MalformedManifest("expected a 32-byte field".into()))
}

fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    serde_cbor::to_vec(v).expect("manifest structures always serialize")
}

/// Deserialize a sequence of at most `MAX` items, refused at the first
/// item past that.
fn at_most<'de, const MAX: usize, D, T>(d: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<const MAX: usize, T>(std::marker::PhantomData<T>);
    impl<'de, const MAX: usize, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<MAX, T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a sequence of at most {MAX} items")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX));
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(serde::de::Error::invalid_length(MAX + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded::<MAX, T>(std::marker::PhantomData))
}

fn uncbor<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T> {
    serde_cbor::from_slice(b).map_err(|e| Error::MalformedManifest(e.to_string()))
}

impl Node {
    /// Decode a node with a verify key: locations only.
    pub fn open_verify(blob: &[u8], vk: &VerifyKey) -> Result<Node> {
        Self::open(blob, vk, None)
    }

    /// Decode a node with its read key: locations and keys.
    pub fn open_read(blob: &[u8], rk: &ReadKey) -> Result<Node> {
        Self::open(blob, &rk.verify_key(), Some(rk))
    }

    fn open(blob: &[u8], vk: &VerifyKey, rk: Option<&ReadKey>) -> Result<Node> {
        let blob: Blob = uncbor(blob)?;
        let inline = match blob.v {
            MANIFEST_VERSION => false,
            INLINE_VERSION => true,
            v => return Err(Error::ManifestVersion(v)),
        };
        // The locs section binds the keys ciphertext, so a verifier, who
        // cannot open the keys, still detects any change to them.
        let keys_digest = sha256(&blob.keys);
        let locs: Locs = uncbor(&vk.open(&[LOCS_CONTEXT, &keys_digest], &blob.locs)?)?;
        let params = Params::new(locs.k, locs.n)
            .map_err(|_| Error::MalformedManifest("invalid k/n".into()))?;
        if inline && (locs.depth != 0 || !locs.entries.is_empty()) {
            return Err(Error::MalformedManifest(
                "a node holding its file's bytes has children".into(),
            ));
        }
        let (keys, data) = match rk {
            Some(rk) => {
                let keys: Keys = uncbor(&rk.open(&[KEYS_CONTEXT], &blob.keys)?)?;
                if keys.keys.len() != locs.entries.len() {
                    return Err(Error::MalformedManifest(
                        "key count differs from entry count".into(),
                    ));
                }
                let data = match (inline, keys.data) {
                    (false, None) => None,
                    (true, Some(d)) if d.len() as u64 == locs.size => {
                        Some(std::sync::Arc::new(d.into_vec()))
                    }
                    (true, Some(_)) => {
                        return Err(Error::MalformedManifest(
                            "inline bytes differ from the size".into(),
                        ));
                    }
                    (true, None) | (false, Some(_)) => {
                        return Err(Error::MalformedManifest(
                            "inline bytes missing, or present in format 1".into(),
                        ));
                    }
                };
                (Some(keys.keys), data)
            }
            None => (None, None),
        };
        let mut total = 0u64;
        let mut entries = Vec::with_capacity(locs.entries.len());
        for (i, e) in locs.entries.into_iter().enumerate() {
            if e.shares.len() != params.n() as usize {
                return Err(Error::MalformedManifest(
                    "share count differs from n".into(),
                ));
            }
            if (locs.depth == 0) == e.vkey.is_some() {
                return Err(Error::MalformedManifest(
                    "verify key on a chunk, or missing on a node".into(),
                ));
            }
            total = total
                .checked_add(e.len)
                .ok_or_else(|| Error::MalformedManifest("size overflows".into()))?;
            entries.push(NodeEntry {
                len: e.len,
                shares: e.shares.iter().map(arr32).collect::<Result<_>>()?,
                verify_key: e
                    .vkey
                    .as_ref()
                    .map(arr32)
                    .transpose()?
                    .map(VerifyKey::from_bytes),
                key: match &keys {
                    Some(k) => Some(ChunkKey::from_bytes(arr32(&k[i])?)),
                    None => None,
                },
            });
        }
        if !inline && total != locs.size {
            return Err(Error::MalformedManifest(
                "entry lengths do not add up to the size".into(),
            ));
        }
        Ok(Node {
            depth: locs.depth,
            params,
            size: locs.size,
            entries,
            inline,
            data,
        })
    }
}

/// The read-cap of a file whose root is `root`, stored as `shares` (one
/// replicated share).
fn root_cap(root: &Pending, shares: &[Share], size: u64) -> FileReadCap {
    FileReadCap {
        read_key: ReadKey::from_bytes(root.key),
        root: shares[0].id(),
        size,
    }
}

/// A sealed child waiting for its parent.
struct Pending {
    loc: LocEntry,
    key: [u8; 32],
}

impl Drop for Pending {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// Builds a file's shares and manifest from its chunks, in order.
///
/// Sans-IO: feed it chunk plaintexts, store the shares it hands back, and
/// call [`FileEncoder::finish`] for the cap and the manifest's shares.
pub struct FileEncoder {
    conv: ConvergenceSecret,
    params: Params,
    size: u64,
    /// `levels[d]` holds children waiting for a node at depth `d`.
    levels: Vec<Vec<Pending>>,
}

impl FileEncoder {
    pub fn new(conv: ConvergenceSecret, params: Params) -> Self {
        Self {
            conv,
            params,
            size: 0,
            levels: vec![Vec::new()],
        }
    }

    /// Seal one chunk. Returns the coded objects to store, each as its group
    /// of shares: the chunk's, then any manifest node that just filled up.
    pub fn push_chunk(&mut self, plaintext: &[u8]) -> Vec<Vec<Share>> {
        let sealed = share::seal_chunk(&self.conv, self.params, plaintext);
        self.push_sealed(plaintext.len() as u64, sealed)
    }

    /// The convergence secret and parameters chunks must be sealed with
    /// before [`FileEncoder::push_sealed`], for callers that seal chunks on
    /// several threads and hand them over in file order.
    pub fn sealer(&self) -> (ConvergenceSecret, Params) {
        (self.conv.clone(), self.params)
    }

    /// Take the next chunk (of `len` plaintext bytes), already sealed with
    /// [`FileEncoder::sealer`]'s secret and parameters. Chunks must come in
    /// file order. Returns what [`FileEncoder::push_chunk`] returns.
    pub fn push_sealed(&mut self, len: u64, sealed: share::SealedChunk) -> Vec<Vec<Share>> {
        let ids = sealed.shares.iter().map(Share::id).collect();
        let mut out = vec![sealed.shares];
        out.extend(self.push_leaf(len, ids, *sealed.key.expose()));
        out
    }

    /// Take the next chunk as one already stored: a leaf `entry` of an
    /// earlier version of the file, whose plaintext the caller has found
    /// unchanged (its convergent key is `key` again). Nothing of the chunk
    /// is sealed or sent; returns the groups of any node that filled up.
    pub fn push_stored(&mut self, entry: &NodeEntry, key: &ChunkKey) -> Vec<Vec<Share>> {
        self.push_leaf(entry.len, entry.shares.clone(), *key.expose())
    }

    fn push_leaf(&mut self, len: u64, ids: Vec<ShareId>, key: [u8; 32]) -> Vec<Vec<Share>> {
        self.size += len;
        self.levels[0].push(Pending {
            loc: LocEntry {
                len,
                shares: ids.iter().map(|id| ByteBuf::from(id.to_vec())).collect(),
                vkey: None,
            },
            key,
        });
        let mut out = Vec::new();
        let mut depth = 0;
        while self.levels[depth].len() == FANOUT {
            let children = std::mem::take(&mut self.levels[depth]);
            let (pending, shares) = self.seal_node(depth as u8, children, self.params, None);
            out.push(shares);
            if self.levels.len() == depth + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[depth + 1].push(pending);
            depth += 1;
        }
        out
    }

    /// Seal the remaining nodes. Returns the file's read-cap and the share
    /// groups of the nodes sealed now; the root's single share comes last.
    pub fn finish(mut self) -> (FileReadCap, Vec<Vec<Share>>) {
        let mut out = Vec::new();
        let top = self.levels.iter().rposition(|l| !l.is_empty()).unwrap_or(0);
        for depth in 0..=top {
            let children = std::mem::take(&mut self.levels[depth]);
            let is_root = depth == top;
            if children.is_empty() && !is_root {
                continue;
            }
            let params = if is_root {
                Params::REPLICA
            } else {
                self.params
            };
            let (pending, shares) = self.seal_node(depth as u8, children, params, None);
            let cap = is_root.then(|| root_cap(&pending, &shares, self.size));
            out.push(shares);
            if let Some(cap) = cap {
                return (cap, out);
            }
            self.levels[depth + 1].push(pending);
        }
        unreachable!("the loop returns at the top level")
    }

    /// Seal a whole file of at most [`INLINE_MAX`] bytes as a root that
    /// holds them, instead of pushing it as a chunk. Returns the read-cap
    /// and the root's single share.
    pub fn seal_inline(self, data: &[u8]) -> (FileReadCap, Vec<Share>) {
        assert!(
            data.len() <= INLINE_MAX && self.size == 0,
            "inline files are small and have no chunks"
        );
        let (pending, shares) = self.seal_node(0, Vec::new(), Params::REPLICA, Some(data));
        (root_cap(&pending, &shares, data.len() as u64), shares)
    }

    /// Seal one node over `children`, or over a file's bytes (`data`, a
    /// format 2 root), and code it with `params`.
    fn seal_node(
        &self,
        depth: u8,
        children: Vec<Pending>,
        params: Params,
        data: Option<&[u8]>,
    ) -> (Pending, Vec<Share>) {
        let size = match data {
            Some(d) => d.len() as u64,
            None => children.iter().map(|c| c.loc.len).sum(),
        };
        let locs = cbor(&Locs {
            depth,
            k: self.params.k(),
            n: self.params.n(),
            size,
            entries: children.iter().map(|c| c.loc.clone()).collect(),
        });
        let keys = zeroize::Zeroizing::new(cbor(&Keys {
            keys: children
                .iter()
                .map(|c| ByteBuf::from(c.key.to_vec()))
                .collect(),
            data: data.map(|d| ByteBuf::from(d.to_vec())),
        }));
        let mut material = sha256(&locs).to_vec();
        material.extend_from_slice(&sha256(&keys));
        let read_key: ReadKey = self
            .conv
            .convergent_key(NODE_DOMAIN, &sha256(&material), &params.key_params())
            .into();
        let verify_key = read_key.verify_key();
        let keys = read_key.seal(&[KEYS_CONTEXT], &keys);
        let locs = verify_key.seal(&[LOCS_CONTEXT, &sha256(&keys)], &locs);
        let blob = cbor(&Blob {
            v: if data.is_some() {
                INLINE_VERSION
            } else {
                MANIFEST_VERSION
            },
            locs: ByteBuf::from(locs),
            keys: ByteBuf::from(keys),
        });
        let shares = share::encode(params, &blob);
        let pending = Pending {
            loc: LocEntry {
                len: size,
                shares: shares
                    .iter()
                    .map(|s| ByteBuf::from(s.id().to_vec()))
                    .collect(),
                vkey: Some(ByteBuf::from(verify_key.expose().to_vec())),
            },
            key: *read_key.expose(),
        };
        (pending, shares)
    }
}

#[cfg(test)]
impl FileEncoder {
    /// A depth-1 root over one child node, given by its single share (the
    /// encoder's parameters must be 1-of-1) and read key: for tests of
    /// readers that must refuse a node in the wrong place.
    pub(crate) fn seal_root_over(
        self,
        child: &Share,
        child_key: [u8; 32],
        len: u64,
    ) -> (FileReadCap, Vec<Share>) {
        let vk = ReadKey::from_bytes(child_key).verify_key();
        let pending = Pending {
            loc: LocEntry {
                len,
                shares: vec![ByteBuf::from(child.id().to_vec())],
                vkey: Some(ByteBuf::from(vk.expose().to_vec())),
            },
            key: child_key,
        };
        let (root, shares) = self.seal_node(1, vec![pending], Params::REPLICA, None);
        (root_cap(&root, &shares, len), shares)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::RootSecret;

    fn inline_blob() -> (FileReadCap, Vec<u8>) {
        let conv = RootSecret::from_bytes([5; 32]).convergence();
        let enc = FileEncoder::new(conv, Params::new(2, 3).unwrap());
        let (cap, root) = enc.seal_inline(b"a small file");
        (cap, share::decode(Params::REPLICA, &root).unwrap())
    }

    fn with_version(blob: &[u8], v: u8) -> Vec<u8> {
        let mut b: Blob = uncbor(blob).unwrap();
        b.v = v;
        cbor(&b)
    }

    #[test]
    fn a_root_holding_bytes_opens_only_as_format_2() {
        let (cap, blob) = inline_blob();
        let node = Node::open_read(&blob, &cap.read_key).unwrap();
        assert_eq!(
            node.data.as_deref().map(Vec::as_slice),
            Some(&b"a small file"[..])
        );
        // Read as format 1, its bytes would not add up to its size.
        let v1 = with_version(&blob, MANIFEST_VERSION);
        assert!(Node::open_read(&v1, &cap.read_key).is_err());
        assert!(Node::open_verify(&v1, &cap.read_key.verify_key()).is_err());
        match Node::open_read(&with_version(&blob, 3), &cap.read_key) {
            Err(Error::ManifestVersion(3)) => {}
            other => panic!("format 3 opened: {:?}", other.map(|n| n.size)),
        }
    }

    /// A node sealed by hand under a fixed read key.
    fn craft(v: u8, locs: Locs, keys: Keys) -> (ReadKey, Vec<u8>) {
        let rk = ReadKey::from_bytes([9; 32]);
        let keys = rk.seal(&[KEYS_CONTEXT], &cbor(&keys));
        let locs = rk
            .verify_key()
            .seal(&[LOCS_CONTEXT, &sha256(&keys)], &cbor(&locs));
        let blob = cbor(&Blob {
            v,
            locs: ByteBuf::from(locs),
            keys: ByteBuf::from(keys),
        });
        (rk, blob)
    }

    fn locs(depth: u8, size: u64, entries: Vec<LocEntry>) -> Locs {
        Locs {
            depth,
            k: 1,
            n: 1,
            size,
            entries,
        }
    }

    /// Each rule of format 2, broken alone in a correctly sealed node.
    #[test]
    fn malformed_inline_nodes_are_refused() {
        let chunk = LocEntry {
            len: 4,
            shares: vec![ByteBuf::from(vec![1; 32])],
            vkey: None,
        };
        let key = || vec![ByteBuf::from(vec![2; 32])];
        let data = |n: usize| Some(ByteBuf::from(vec![7; n]));
        let refused = |v, l, k, verify_too: bool| {
            let (rk, blob) = craft(v, l, k);
            assert!(Node::open_read(&blob, &rk).is_err());
            assert_eq!(
                Node::open_verify(&blob, &rk.verify_key()).is_err(),
                verify_too
            );
        };
        // The well-formed one opens.
        let (rk, blob) = craft(
            INLINE_VERSION,
            locs(0, 4, vec![]),
            Keys {
                keys: vec![],
                data: data(4),
            },
        );
        assert_eq!(Node::open_read(&blob, &rk).unwrap().data.unwrap().len(), 4);
        // Format 2 with a child, or above the leaves.
        refused(
            INLINE_VERSION,
            locs(0, 8, vec![chunk.clone()]),
            Keys {
                keys: key(),
                data: data(4),
            },
            true,
        );
        refused(
            INLINE_VERSION,
            locs(1, 4, vec![]),
            Keys {
                keys: vec![],
                data: data(4),
            },
            true,
        );
        // Bytes that are not the size (a verifier sees only the size).
        refused(
            INLINE_VERSION,
            locs(0, 5, vec![]),
            Keys {
                keys: vec![],
                data: data(4),
            },
            false,
        );
        // Format 2 without bytes; format 1 with them.
        refused(
            INLINE_VERSION,
            locs(0, 4, vec![]),
            Keys {
                keys: vec![],
                data: None,
            },
            false,
        );
        refused(
            MANIFEST_VERSION,
            locs(0, 4, vec![chunk.clone()]),
            Keys {
                keys: key(),
                data: data(4),
            },
            false,
        );
        // Wider than any writer makes a node; as wide opens.
        for (width, opens) in [(FANOUT, true), (FANOUT + 1, false)] {
            let (rk, blob) = craft(
                MANIFEST_VERSION,
                locs(0, 4 * width as u64, vec![chunk.clone(); width]),
                Keys {
                    keys: vec![ByteBuf::from(vec![2; 32]); width],
                    data: None,
                },
            );
            assert_eq!(Node::open_read(&blob, &rk).is_ok(), opens, "{width}");
            assert_eq!(Node::open_verify(&blob, &rk.verify_key()).is_ok(), opens);
        }
    }

    #[test]
    fn nodes_with_children_keep_format_1() {
        let conv = RootSecret::from_bytes([5; 32]).convergence();
        let mut enc = FileEncoder::new(conv, Params::new(2, 3).unwrap());
        enc.push_chunk(b"one chunk");
        let (cap, groups) = enc.finish();
        let blob = share::decode(Params::REPLICA, groups.last().unwrap()).unwrap();
        let raw: Blob = uncbor(&blob).unwrap();
        assert_eq!(raw.v, MANIFEST_VERSION);
        let node = Node::open_read(&blob, &cap.read_key).unwrap();
        assert!(node.data.is_none());
        // Claiming format 2 with children is refused.
        assert!(Node::open_read(&with_version(&blob, INLINE_VERSION), &cap.read_key).is_err());
    }
}

#[cfg(test)]
mod depth_tests {
    use super::*;

    fn node(depth: u8) -> Node {
        Node {
            depth,
            params: Params::new(2, 3).unwrap(),
            size: 10,
            entries: Vec::new(),
            inline: false,
            data: None,
        }
    }

    /// A child exactly one level down fits; a hostile depth of 255 under a
    /// leaf is refused, not an overflow (which panicked with overflow
    /// checks on).
    #[test]
    fn a_child_fits_one_level_down_and_no_depth_overflows() {
        let entry = NodeEntry {
            len: 10,
            shares: Vec::new(),
            verify_key: None,
            key: None,
        };
        assert!(node(0).fits_under(&node(1), &entry).is_ok());
        assert!(node(1).fits_under(&node(1), &entry).is_err());
        assert!(node(255).fits_under(&node(0), &entry).is_err());
        assert!(node(255).fits_under(&node(255), &entry).is_err());
        assert!(node(0).fits_under(&node(0), &entry).is_err());
    }
}
