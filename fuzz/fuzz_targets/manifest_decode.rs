//! Manifest nodes and shares arrive from mirrors, which may be hostile.
//! Parsing them with the right or wrong keys must give an error, never a
//! panic.
//!
//! Random bytes never pass AES-SIV, so besides feeding the input as a whole
//! node blob, the target also seals the input under the fixed keys, the way
//! a writer would, so that the fuzzer reaches the decoding of the node's
//! plaintext sections (`locs` and `keys`). The input is split as
//! `split (u16 BE) ‖ locs plaintext ‖ keys plaintext`, and the split's top
//! bit picks the node format: 1 (children) or 2 (a root holding its file's
//! bytes).

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use lode::chunk::Node;
use lode::chunk::share::{self, Share};
use lode::crypto::{ChunkKey, ReadKey, VerifyKey};

/// Associated data of the two sealed sections. These mirror
/// src/chunk/manifest.rs (the locs section also binds the SHA-256 of the
/// sealed keys section); `KEYS` checks at start-up that a hand-sealed node
/// still opens, and turns the sealed path off, loudly, if the format moved.
const LOCS_CONTEXT: &[u8] = b"lode manifest v1 locs";
const KEYS_CONTEXT: &[u8] = b"lode manifest v1 keys";

struct Keys {
    read: ReadKey,
    verify: VerifyKey,
    chunk: ChunkKey,
    /// Whether hand-sealed nodes open, i.e. this file knows the format.
    sealing_works: bool,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let read = ReadKey::from_bytes([2; 32]);
    let mut keys = Keys {
        verify: read.verify_key(),
        read,
        chunk: ChunkKey::from_bytes([3; 32]),
        sealing_works: false,
    };
    // An empty leaf, sealed by hand, must open: otherwise the sealed path
    // below only ever exercises the authentication failure.
    let mut locs = Vec::new();
    map(&mut locs, 5);
    text(&mut locs, "depth");
    head(&mut locs, 0, 0);
    text(&mut locs, "k");
    head(&mut locs, 0, 1);
    text(&mut locs, "n");
    head(&mut locs, 0, 1);
    text(&mut locs, "size");
    head(&mut locs, 0, 0);
    text(&mut locs, "entries");
    head(&mut locs, 4, 0);
    let mut node_keys = Vec::new();
    map(&mut node_keys, 1);
    text(&mut node_keys, "keys");
    head(&mut node_keys, 4, 0);
    match Node::open_read(&seal_blob(&keys, 1, &locs, &node_keys), &keys.read) {
        Ok(node) if (node.depth, node.size, node.entries.len()) == (0, 0, 0) => {
            keys.sealing_works = true;
        }
        other => eprintln!(
            "manifest_decode: WARNING: a hand-sealed empty node does not open ({:?}); \
             the manifest format changed, update this target. Fuzzing raw blobs only.",
            other.map(|n| (n.depth, n.size, n.entries.len()))
        ),
    }
    keys
});

/// A CBOR item head: major type and argument.
fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    match arg {
        0..=23 => out.push(m | arg as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
}

fn map(out: &mut Vec<u8>, len: u64) {
    head(out, 5, len);
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

/// The node blob `{v, locs, keys}` with both sections sealed.
fn seal_blob(keys: &Keys, version: u8, locs: &[u8], node_keys: &[u8]) -> Vec<u8> {
    let node_keys = keys.read.seal(&[KEYS_CONTEXT], node_keys);
    let locs = keys
        .verify
        .seal(&[LOCS_CONTEXT, &lode::crypto::sha256(&node_keys)], locs);
    let mut blob = Vec::with_capacity(locs.len() + node_keys.len() + 64);
    map(&mut blob, 3);
    text(&mut blob, "v");
    head(&mut blob, 0, version.into());
    text(&mut blob, "locs");
    bytes(&mut blob, &locs);
    text(&mut blob, "keys");
    bytes(&mut blob, &node_keys);
    blob
}

fuzz_target!(|data: &[u8]| {
    let keys = &*KEYS;

    // The input as a node blob, as a mirror would serve it.
    let _ = Node::open_read(data, &keys.read);
    let _ = Node::open_verify(data, &keys.verify);

    // The input as the plaintext of a correctly sealed node.
    if let (true, [a, b, rest @ ..]) = (keys.sealing_works, data) {
        let split = u16::from_be_bytes([*a, *b]);
        let version = if split & 0x8000 == 0 { 1 } else { 2 };
        let split = usize::from(split & 0x7fff) % (rest.len() + 1);
        let (locs, node_keys) = rest.split_at(split);
        let blob = seal_blob(keys, version, locs, node_keys);
        let read = Node::open_read(&blob, &keys.read);
        let verify = Node::open_verify(&blob, &keys.verify);
        // The read path sees everything the verify path sees, and more, so
        // it never succeeds where the verify path fails.
        if let Ok(read) = read {
            let verify = verify.expect("the verify path opens what the read path opens");
            assert_eq!(
                (read.depth, read.params, read.size, read.entries.len()),
                (
                    verify.depth,
                    verify.params,
                    verify.size,
                    verify.entries.len()
                )
            );
            // Bytes only come with the read key, and then exactly `size`.
            assert!(verify.data.is_none());
            if let Some(data) = &read.data {
                assert_eq!(data.len() as u64, read.size);
                assert!(read.entries.is_empty());
            }
        }
    }

    // The input as a share, and the share as the only one of its chunk.
    if let Ok(share) = Share::parse(data.to_vec()) {
        let params = share.header().params;
        let _ = share::decode(params, std::slice::from_ref(&share));
        let _ = share::open_chunk(&keys.chunk, params, std::slice::from_ref(&share));
    }
});
