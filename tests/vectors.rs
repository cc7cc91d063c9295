//! Golden vectors: a format change must break one of these tests.
//!
//! Run with `LODE_UPDATE_VECTORS=1` to rewrite the files after a deliberate
//! format change (and bump the format's version constant). Where an expected
//! value can be computed without lode's own code (HKDF, ed25519, the cap
//! checksum), it is, so these are not just lode agreeing with itself.

mod common;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use hkdf::Hkdf;
use lode::caps::{Cap, DirWriteCap};
use lode::chunk::{ChunkerParams, Normalization};
use lode::crypto::SlotSeed;
use lode::dir::{DirAttrs, Encoded, Entry, EntryKind, Listing, SlotEnvelope};
use lode::store::{Grid, GridConfig, MemoryStorage, Storage, Vault};
use sha2::{Digest, Sha256};

fn vector_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
}

/// Compare `actual` with the stored vector, or store it when updating.
fn check_vector(name: &str, actual: &str) {
    let path = vector_path(name);
    if std::env::var_os("LODE_UPDATE_VECTORS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with LODE_UPDATE_VECTORS=1 once)",
            path.display()
        )
    });
    assert_eq!(
        actual, expected,
        "golden vector {name} changed: a format change must bump its version"
    );
}

const SECRET: [u8; 32] = [0x42; 32];

/// Independent HKDF with lode's documented salt and info strings.
fn hkdf(ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(b"lode v1 kdf"), ikm)
        .expand(info, &mut out)
        .unwrap();
    out
}

/// Independent cap encoder, from docs/FORMATS.md.
fn encode_cap(kind: &str, payload: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"lode cap");
    h.update(kind.as_bytes());
    h.update(b":1:");
    h.update(payload);
    let sum = h.finalize();
    let mut data = payload.to_vec();
    data.extend_from_slice(&sum[..4]);
    format!(
        "lode:{kind}:1:{}",
        data_encoding::BASE32_NOPAD
            .encode(&data)
            .to_ascii_lowercase()
    )
}

#[test]
fn chunk_boundaries_of_seeded_8mib() {
    let data = common::seeded_bytes("lode chunker vector", 8 << 20);
    let secret = lode::crypto::RootSecret::from_bytes(SECRET);
    let seed = secret.chunker_seed();
    // The chunker seed is the first 8 bytes (LE) of HKDF(secret, "chunker").
    assert_eq!(
        seed,
        u64::from_le_bytes(hkdf(&SECRET, b"chunker")[..8].try_into().unwrap())
    );
    // The sizes the vector was made with (the default until 2026-12-04):
    // it pins FastCDC and the keyed gear table. The sizes are not part of
    // any format (a reader never needs them), but a change of them moves
    // every file's chunks, and so its cap: the default is pinned here too.
    let defaults = ChunkerParams::new(seed);
    assert_eq!(
        (
            defaults.min,
            defaults.avg,
            defaults.max,
            defaults.normalization
        ),
        (1 << 20, 4 << 20, 8 << 20, Normalization::Level2)
    );
    let params = ChunkerParams {
        min: 256 << 10,
        avg: 1 << 20,
        max: 4 << 20,
        normalization: Normalization::Level1,
        seed,
    };
    let mut out = format!("# FastCDC 2020, 256K/1M/4M, seed {seed:#018x}; offset length sha256\n");
    let mut offset = 0usize;
    for chunk in params.chunks(std::io::Cursor::new(&data)) {
        let chunk = chunk.unwrap();
        assert_eq!(
            chunk,
            data[offset..offset + chunk.len()],
            "chunks are the input, in order"
        );
        assert!(chunk.len() <= 4 << 20);
        let digest = data_encoding::HEXLOWER.encode(&Sha256::digest(&chunk));
        out.push_str(&format!("{offset} {} {digest}\n", chunk.len()));
        offset += chunk.len();
    }
    assert_eq!(offset, data.len());
    check_vector("chunks-8mib.txt", &out);
}

/// A chunk is sealed as docs/FORMATS.md says, checked with none of
/// lode's own crypto: the key is `HMAC-SHA256(convergence secret,
/// "lode chunk v2" ‖ BLAKE3(plaintext) ‖ [share version, k, n])`, and the
/// data shares, joined, are its AES-256-SIV tag and ciphertext under
/// context `["lode chunk v1"]`, zero-padded.
#[test]
fn a_chunk_is_sealed_under_its_documented_key() {
    use aes_siv::{KeyInit, siv::Aes256Siv};
    use hmac::{Hmac, Mac};
    let secret = lode::crypto::RootSecret::from_bytes(SECRET);
    let conv = hkdf(&SECRET, b"convergence");
    for (k, n, len) in [(1u8, 1u8, 1000usize), (2, 3, 70_001), (3, 5, 5)] {
        let params = lode::chunk::Params::new(k, n).unwrap();
        let plain = common::seeded_bytes("chunk key vector", len);
        let sealed = lode::chunk::share::seal_chunk(&secret.convergence(), params, &plain);
        assert_eq!(sealed.shares.len(), n as usize);

        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&conv).unwrap();
        mac.update(b"lode chunk v2");
        mac.update(blake3::hash(&plain).as_bytes());
        mac.update(&[2, k, n]);
        let key: [u8; 32] = mac.finalize().into_bytes().into();
        let mut siv_key = hkdf(&key, b"aes-siv mac").to_vec();
        siv_key.extend_from_slice(&hkdf(&key, b"aes-siv ctr"));
        let expected = Aes256Siv::new_from_slice(&siv_key)
            .unwrap()
            .encrypt([b"lode chunk v1"], &plain)
            .unwrap();

        let mut joined = Vec::new();
        for (i, share) in sealed.shares.iter().take(k as usize).enumerate() {
            let bytes = share.as_bytes();
            assert_eq!(&bytes[..4], b"LDSH");
            assert_eq!(bytes[4..8], [2, k, n, i as u8]);
            assert_eq!(bytes[8..16], (expected.len() as u64).to_be_bytes());
            joined.extend_from_slice(&bytes[16..]);
        }
        assert_eq!(joined[..expected.len()], expected[..], "{k}-of-{n}");
        assert!(joined[expected.len()..].iter().all(|&b| b == 0), "padding");
    }
}

#[test]
fn cap_strings_for_fixed_secret() {
    let secret = lode::crypto::RootSecret::from_bytes(SECRET);
    let root = DirWriteCap {
        seed: secret.root_dir_seed(),
    };
    // Independent derivation of the root write-cap and read-cap.
    let seed = hkdf(&SECRET, b"root dir");
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    let read_key = hkdf(&seed, b"dir read");
    let mut ro = public.to_vec();
    ro.extend_from_slice(&read_key);
    assert_eq!(
        Cap::DirWrite(root.clone()).to_string(),
        encode_cap("dir-rw", &seed)
    );
    assert_eq!(
        Cap::DirRead(root.read_cap()).to_string(),
        encode_cap("dir-ro", &ro)
    );
    assert_eq!(
        Cap::DirRead(root.read_cap()).verify_cap().to_string(),
        encode_cap("dir-v", &public)
    );

    // File caps run the whole pipeline: chunking, sealing, shares,
    // manifest. They changed on 2026-12-04 with the chunker's default
    // sizes alone, and on 2026-12-05 with the chunk key's hash (SHA-256 to
    // BLAKE3, a new key domain), neither of which readers depend on: no
    // format version moved.
    let rt = common::runtime();
    let (single, grid) = rt.block_on(async {
        let v1 = Vault::single(&secret, Arc::new(MemoryStorage::new()));
        let stores: Vec<Arc<dyn Storage>> = (0..3)
            .map(|i| Arc::new(MemoryStorage::named(&format!("m{i}"))) as Arc<dyn Storage>)
            .collect();
        let v3 = Vault::new(&secret, Grid::new(stores, GridConfig::default()).unwrap());
        let data = common::seeded_bytes("lode file vector", 3 << 20);
        (
            v1.put_bytes(&data).await.unwrap(),
            v3.put_bytes(&data).await.unwrap(),
        )
    });
    let file1 = Cap::FileRead(single);
    let file3 = Cap::FileRead(grid);
    let text = format!(
        "dir-rw {}\ndir-ro {}\ndir-v {}\nfile-1of1 {}\nfile-v-1of1 {}\nfile-2of3 {}\nfile-v-2of3 {}\n",
        Cap::DirWrite(root.clone()),
        Cap::DirRead(root.read_cap()),
        Cap::DirRead(root.read_cap()).verify_cap(),
        file1,
        file1.verify_cap(),
        file3,
        file3.verify_cap(),
    );
    for line in text.lines() {
        let cap = line.split(' ').nth(1).unwrap();
        assert_eq!(Cap::from_str(cap).unwrap().to_string(), cap);
    }
    check_vector("caps.txt", &text);
}

#[test]
fn directory_slot_encoding() {
    let secret = lode::crypto::RootSecret::from_bytes(SECRET);
    let root = DirWriteCap {
        seed: secret.root_dir_seed(),
    };
    let child = DirWriteCap {
        seed: SlotSeed::from_bytes([0x17; 32]),
    };
    let file = lode::caps::FileReadCap {
        read_key: lode::crypto::ReadKey::from_bytes([0x21; 32]),
        root: [0x22; 32],
        size: 12345,
    };
    let mut listing = Listing::default();
    listing.entries.insert(
        "notes.txt".into(),
        Entry::file(file.clone(), 0o644, (1_700_000_000, 123_456_789)),
    );
    listing.entries.insert(
        "sub".into(),
        Entry::dir(&root, "sub", &child, 0o755, (1_700_000_001, 0)),
    );
    listing.entries.insert(
        "link".into(),
        Entry::symlink("notes.txt", (1_700_000_002, 5)),
    );

    // A slot written by the version 1 listing format still opens, to the
    // same entries (v1 had no owner, atime/ctime, links or special files).
    let v1 = std::fs::read_to_string(vector_path("slot-v1.hex")).unwrap();
    let v1 = data_encoding::HEXLOWER
        .decode(v1.trim().as_bytes())
        .unwrap();
    let old = SlotEnvelope::decode(&v1).unwrap();
    assert_eq!(old.seq, 7);
    assert_eq!(old.open(&root.read_cap()).unwrap(), listing);

    // Version 2: special files, owners, times and the link table.
    listing.entries.insert(
        "pipe".into(),
        Entry::special(EntryKind::Fifo, 0o600, 0, (1_700_000_003, 0)).with_meta(
            (1_700_000_004, 1),
            (1_700_000_005, 2),
            Some((1000, 100)),
            None,
        ),
    );
    let linked = Entry::file(file.clone(), 0o640, (1_700_000_006, 0)).with_meta(
        (1_700_000_006, 0),
        (1_700_000_007, 0),
        Some((0, 0)),
        Some(([0x33; 16], 2)),
    );
    listing.entries.insert("hard".into(), linked.clone());
    listing.links.insert([0x33; 16], linked);
    let env = SlotEnvelope::seal(&root, 7, &listing);
    let bytes = env.encode();

    // Independent checks: the signature verifies with ed25519-dalek over the
    // documented message, and the listing reads back.
    let decoded = SlotEnvelope::decode(&bytes).unwrap();
    assert_eq!(decoded.seq, 7);
    assert_eq!(decoded.open(&root.read_cap()).unwrap(), listing);
    let wire: serde_cbor::Value = serde_cbor::from_slice(&bytes).unwrap();
    let serde_cbor::Value::Map(map) = wire else {
        panic!("slot is a CBOR map")
    };
    let field = |k: &str| map.get(&serde_cbor::Value::Text(k.into())).unwrap().clone();
    let (serde_cbor::Value::Bytes(pk), serde_cbor::Value::Bytes(ct), serde_cbor::Value::Bytes(sig)) =
        (field("pk"), field("ct"), field("sig"))
    else {
        panic!("pk, ct and sig are byte strings")
    };
    let mut msg = b"lode slot v1\0".to_vec();
    msg.extend_from_slice(&pk);
    msg.extend_from_slice(&7u64.to_be_bytes());
    msg.extend_from_slice(&ct);
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk.try_into().unwrap()).unwrap();
    vk.verify_strict(
        &msg,
        &ed25519_dalek::Signature::from_bytes(&sig.try_into().unwrap()),
    )
    .unwrap();

    check_vector(
        "slot-listing-v2.hex",
        &(data_encoding::HEXLOWER.encode(&bytes) + "\n"),
    );

    // Version 3: the same listing in pages of at most 300 bytes each (in
    // practice 1 MiB), behind an index naming them.
    let Encoded::Pages(pages) = listing.paginate(300).unwrap() else {
        panic!("a listing over the page size is paged")
    };
    assert_eq!(pages.len(), 8, "a power of two, at least 1,700 / 300");
    // Independently: each name (and link id, in hex) sits in the page its
    // SHA-256 under the documented domain picks.
    for (i, page) in pages.iter().enumerate() {
        let serde_cbor::Value::Map(map) = serde_cbor::from_slice(page).unwrap() else {
            panic!("a page is a CBOR map")
        };
        for table in ["entries", "links"] {
            let Some(serde_cbor::Value::Map(names)) =
                map.get(&serde_cbor::Value::Text(table.into()))
            else {
                continue;
            };
            for name in names.keys() {
                let serde_cbor::Value::Text(name) = name else {
                    panic!("names are text")
                };
                let h = Sha256::new()
                    .chain_update(b"lode listing page v1\0")
                    .chain_update(name.as_bytes())
                    .finalize();
                let n = u64::from_be_bytes(h[..8].try_into().unwrap());
                assert_eq!(n % pages.len() as u64, i as u64, "{name} in page {i}");
            }
        }
    }
    let page_caps: Vec<_> = (0..pages.len() as u64)
        .map(|i| lode::caps::FileReadCap {
            size: i,
            ..file.clone()
        })
        .collect();
    let index =
        SlotEnvelope::seal_plaintext(&root, 8, &Listing::encode_index(&page_caps, None, None));
    let bytes = index.encode();
    let mut opened = SlotEnvelope::decode(&bytes)
        .unwrap()
        .open(&root.read_cap())
        .unwrap();
    assert!(opened.is_pending() && opened.entries.is_empty());
    assert_eq!(opened.pages, page_caps);
    opened.fill(&pages).unwrap();
    assert_eq!(opened.entries, listing.entries);
    assert_eq!(opened.links, listing.links);
    let mut text = data_encoding::HEXLOWER.encode(&bytes) + "\n";
    for page in &pages {
        text += &(data_encoding::HEXLOWER.encode(page) + "\n");
    }
    check_vector("slot-listing-v3.hex", &text);
}

/// A root listing's own attributes (`this`): the CBOR form docs/FORMATS.md
/// gives, checked field by field with a generic CBOR reader, then pinned
/// both in a whole listing and in a paged root's index.
#[test]
fn a_roots_own_attributes_encoding() {
    let this = DirAttrs {
        mode: 0o750,
        owner: (1000, 100),
        atime: (1_700_000_010, 1),
        mtime: (-1, 500_000_000),
        ctime: (1_700_000_012, 999_999_999),
    };
    let mut listing = Listing::default();
    listing.this = Some(this);
    let whole = listing.encode();
    assert_eq!(Listing::decode(&whole).unwrap().this, Some(this));

    let serde_cbor::Value::Map(map) = serde_cbor::from_slice(&whole).unwrap() else {
        panic!("a listing is a CBOR map")
    };
    let Some(serde_cbor::Value::Map(wire)) = map.get(&serde_cbor::Value::Text("this".into()))
    else {
        panic!("`this` is a map")
    };
    let int = |k: &str| match wire.get(&serde_cbor::Value::Text(k.into())) {
        Some(serde_cbor::Value::Integer(i)) => *i,
        other => panic!("{k} is an integer, not {other:?}"),
    };
    let time = |k: &str| match wire.get(&serde_cbor::Value::Text(k.into())) {
        Some(serde_cbor::Value::Array(a)) => match a.as_slice() {
            [
                serde_cbor::Value::Integer(s),
                serde_cbor::Value::Integer(ns),
            ] => (*s, *ns),
            other => panic!("{k} is [seconds, nanoseconds], not {other:?}"),
        },
        other => panic!("{k} is an array, not {other:?}"),
    };
    assert_eq!(wire.len(), 6, "mode, uid, gid and three times: {wire:?}");
    assert_eq!((int("mode"), int("uid"), int("gid")), (0o750, 1000, 100));
    assert_eq!(time("atime"), (1_700_000_010, 1));
    assert_eq!(
        time("mtime"),
        (-1, 500_000_000),
        "half a second before 1970"
    );
    assert_eq!(time("ctime"), (1_700_000_012, 999_999_999));

    // A paged root carries it in its index; pages never do.
    let file = lode::caps::FileReadCap {
        read_key: lode::crypto::ReadKey::from_bytes([0x21; 32]),
        root: [0x22; 32],
        size: 1,
    };
    let index = Listing::encode_index(std::slice::from_ref(&file), Some(&this), None);
    let opened = Listing::decode(&index).unwrap();
    assert_eq!((opened.this, opened.pages), (Some(this), vec![file]));

    let text = format!(
        "{}\n{}\n",
        data_encoding::HEXLOWER.encode(&whole),
        data_encoding::HEXLOWER.encode(&index)
    );
    check_vector("listing-this.hex", &text);
}

/// Share format 1 as the last build that wrote it (`f0caf78`, before
/// `0c440b2` moved to BLAKE3) wrote it, for a fixed payload at 2-of-3 and
/// 3-of-5: `shares-format1.txt` came from that build's own `encode`, not
/// from this code. A repair rebuilds a format-1 object's lost shares with
/// `share::encode_as(1, ..)`; they must come out byte for byte, under the
/// same SHA-256 ids, or the repair is refused as inconsistent.
#[test]
fn format_1_shares_are_rebuilt_as_format_1_wrote_them() {
    let payload: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let text = std::fs::read_to_string(vector_path("shares-format1.txt")).unwrap();
    let mut seen = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (k, n, i): (u8, u8, usize) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        let (id, bytes) = (hex::decode(f[3]).unwrap(), hex::decode(f[4]).unwrap());
        let params = lode::chunk::Params::new(k, n).unwrap();
        let rebuilt = lode::chunk::share::encode_as(1, params, &payload).unwrap();
        assert_eq!(rebuilt[i].as_bytes(), &bytes[..], "{k}-of-{n} share {i}");
        assert_eq!(rebuilt[i].id().to_vec(), id, "{k}-of-{n} share {i}");
        // Named by SHA-256, independently of lode's hashing.
        assert_eq!(Sha256::digest(&bytes).to_vec(), id);
        seen += 1;
    }
    assert_eq!(seen, 8, "two sets of shares: 3 and 5");
}
