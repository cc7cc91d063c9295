//! Property tests of the object model: encryption, erasure coding, caps.

mod common;

use std::str::FromStr;

use lode::caps::{Access, Cap, DirReadCap, DirVerifyCap, DirWriteCap, FileReadCap, FileVerifyCap};
use lode::chunk::share::{self, seal_chunk};
use lode::chunk::{Error as ChunkError, Params, Share};
use lode::crypto::{ChunkKey, ReadKey, RootSecret, SlotSeed, VerifyKey};
use lode::dir::{Entry, SlotEnvelope};
use proptest::prelude::*;

fn params() -> impl Strategy<Value = Params> {
    (1u8..=8)
        .prop_flat_map(|n| (1u8..=n, Just(n)))
        .prop_map(|(k, n)| Params::new(k, n).unwrap())
}

fn any_cap() -> impl Strategy<Value = Cap> {
    let k32 = any::<[u8; 32]>();
    prop_oneof![
        k32.prop_map(|s| Cap::DirWrite(DirWriteCap {
            seed: SlotSeed::from_bytes(s)
        })),
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(s, r)| Cap::DirRead(DirReadCap {
            public_key: SlotSeed::from_bytes(s).public_key(),
            read_key: ReadKey::from_bytes(r),
        })),
        any::<[u8; 32]>().prop_map(|s| Cap::DirVerify(DirVerifyCap {
            public_key: SlotSeed::from_bytes(s).public_key(),
        })),
        (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<u64>()).prop_map(
            |(k, r, size)| Cap::FileRead(FileReadCap {
                read_key: ReadKey::from_bytes(k),
                root: r,
                size
            })
        ),
        (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<u64>()).prop_map(|(k, r, size)| {
            Cap::FileVerify(FileVerifyCap {
                verify_key: VerifyKey::from_bytes(k),
                root: r,
                size,
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Sealed together (the interleaved lanes), any chunks give exactly
    /// the shares each gives sealed alone (the `aes-siv` crate's pass),
    /// and each opens again.
    #[test]
    fn chunks_sealed_together_match_each_alone(
        chunks in prop::collection::vec(
            (any::<[u8; 32]>(), prop::collection::vec(any::<u8>(), 0..2000)),
            0..12,
        ),
        params in params(),
    ) {
        let together = share::seal_chunks_keyed(
            params,
            chunks.iter().map(|(k, c)| (ChunkKey::from_bytes(*k), c.clone())).collect(),
        );
        prop_assert_eq!(together.len(), chunks.len());
        for ((key, plain), sealed) in chunks.iter().zip(&together) {
            let alone = share::seal_chunk_keyed(ChunkKey::from_bytes(*key), params, plain.clone());
            prop_assert!(sealed.key == alone.key);
            let ids = |s: &share::SealedChunk| s.shares.iter().map(Share::id).collect::<Vec<_>>();
            prop_assert_eq!(ids(sealed), ids(&alone));
            prop_assert_eq!(&share::open_chunk(&sealed.key, params, &sealed.shares).unwrap(), plain);
        }
    }

    #[test]
    fn siv_round_trips(key in any::<[u8; 32]>(), ctx in any::<Vec<u8>>(), pt in prop::collection::vec(any::<u8>(), 0..4096)) {
        let key = ChunkKey::from_bytes(key);
        let ct = key.seal(&[&ctx], &pt);
        prop_assert_eq!(ct.len(), pt.len() + 16);
        prop_assert_eq!(key.open(&[&ctx], &ct).unwrap(), pt);
    }

    #[test]
    fn sealed_chunk_round_trips(secret in any::<[u8; 32]>(), p in params(), pt in prop::collection::vec(any::<u8>(), 0..20_000)) {
        let conv = RootSecret::from_bytes(secret).convergence();
        let sealed = seal_chunk(&conv, p, &pt);
        prop_assert_eq!(sealed.shares.len(), p.n() as usize);
        prop_assert_eq!(&share::open_chunk(&sealed.key, p, &sealed.shares).unwrap(), &pt);
        let last_k = &sealed.shares[(p.n() - p.k()) as usize..];
        prop_assert_eq!(&share::open_chunk(&sealed.key, p, last_k).unwrap(), &pt);
        // The read path's form, in parts: from the data shares, each in a buffer of its own
        // (decrypted where it lies) but one also held elsewhere (which
        // must be copied, and stay as it was), in any order; or from the
        // last k.
        let mut data: Vec<Share> = sealed.shares[..p.k() as usize]
            .iter()
            .map(|s| Share::parse(s.as_bytes().to_vec()).unwrap())
            .collect();
        data.reverse();
        let held = data[0].shared_bytes();
        let held_before = held.to_vec();
        for shares in [data, last_k.to_vec()] {
            let parts = share::open_verified_chunk_parts(&sealed.key, p, shares).unwrap();
            prop_assert_eq!(parts.concat(), pt.clone());
        }
        prop_assert_eq!(held.to_vec(), held_before);
    }

    /// Tiny payloads with many data shares: shards shorter than the tag.
    #[test]
    fn a_chunk_of_short_shards_opens_in_parts(secret in any::<[u8; 32]>(), pt in prop::collection::vec(any::<u8>(), 0..40), k in 2u8..10) {
        let p = Params::new(k, k + 1).unwrap();
        let conv = RootSecret::from_bytes(secret).convergence();
        let sealed = seal_chunk(&conv, p, &pt);
        let data: Vec<Share> = sealed.shares[..k as usize]
            .iter()
            .map(|s| Share::parse(s.as_bytes().to_vec()).unwrap())
            .collect();
        let parts = share::open_verified_chunk_parts(&sealed.key, p, data).unwrap();
        prop_assert_eq!(parts.concat(), pt);
    }

    /// Any k of the n shares rebuild the payload; any fewer fail clearly.
    #[test]
    fn any_k_of_n_rebuild(p in params(), payload in prop::collection::vec(any::<u8>(), 1..10_000), pick in any::<u64>()) {
        let shares = share::encode(p, &payload);
        let n = p.n() as usize;
        let k = p.k() as usize;
        // A pseudo-random subset of the shares, from the `pick` bits.
        let mut order: Vec<usize> = (0..n).collect();
        let mut bits = pick;
        for i in (1..n).rev() {
            order.swap(i, (bits % (i as u64 + 1)) as usize);
            bits /= i as u64 + 1;
        }
        let subset: Vec<_> = order[..k].iter().map(|&i| shares[i].clone()).collect();
        prop_assert_eq!(share::decode(p, &subset).unwrap(), payload.clone());
        let too_few: Vec<_> = order[..k - 1].iter().map(|&i| shares[i].clone()).collect();
        let err = share::decode(p, &too_few).unwrap_err();
        prop_assert!(matches!(err, ChunkError::TooFewShares { need, have } if need == k && have == k - 1), "{err}");
        let expected = format!("need {k} good shares");
        prop_assert!(err.to_string().contains(&expected));
    }

    /// A mirror hashes an upload as it arrives, in whatever pieces the
    /// network hands it; the id must not depend on where they split.
    #[test]
    fn id_hasher_is_split_blind(head in prop::sample::select(vec![&b"LDSH\x01"[..], b"LDSH\x02", b"LDS", b""]), body in prop::collection::vec(any::<u8>(), 0..3000), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(&body);
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut hasher = lode::chunk::IdHasher::new();
        let mut from = 0;
        for to in at.into_iter().chain([bytes.len()]) {
            hasher.update(&bytes[from..to]);
            from = to;
        }
        prop_assert_eq!(hasher.finalize(), lode::chunk::share_id(&bytes));
    }

    #[test]
    fn cap_string_round_trips(cap in any_cap()) {
        let s = cap.to_string();
        let prefix = format!("lode:{}:1:", cap.kind());
        prop_assert!(s.starts_with(&prefix));
        prop_assert_eq!(Cap::from_str(&s).unwrap(), cap.clone());
        prop_assert_eq!(Cap::from_str(&s.to_ascii_uppercase()).unwrap(), cap);
    }

    /// A single changed character in a cap string is caught.
    #[test]
    fn cap_typo_is_caught(cap in any_cap(), pos in any::<prop::sample::Index>(), c in "[a-z2-7]") {
        let s = cap.to_string();
        let data_start = s.rfind(':').unwrap() + 1;
        let i = data_start + pos.index(s.len() - data_start);
        let mut typo = s.clone().into_bytes();
        prop_assume!(typo[i] != c.as_bytes()[0]);
        typo[i] = c.as_bytes()[0];
        let typo = String::from_utf8(typo).unwrap();
        prop_assert!(Cap::from_str(&typo).is_err(), "typo accepted: {typo}");
    }

    /// A cap cut short anywhere in its data is reported as cut short, and
    /// a character outside base32 as mistyped, naming its place.
    #[test]
    fn cap_damage_is_named(cap in any_cap(), pos in any::<prop::sample::Index>(), bad in "[018!@.,;]") {
        let s = cap.to_string();
        let data_start = s.rfind(':').unwrap() + 1;
        let cut = data_start + 1 + pos.index(s.len() - data_start - 1);
        let err = Cap::from_str(&s[..cut]).unwrap_err().to_string();
        prop_assert!(err.contains("truncated"), "cut at {}: {}", cut, err);
        let mut typo = s.clone();
        typo.replace_range(cut..cut + 1, &bad);
        let err = Cap::from_str(&typo).unwrap_err().to_string();
        let at = format!("at character {}", cut - data_start + 1);
        prop_assert!(err.contains("mistyped") && err.contains(&at), "{}: {}", typo, err);
    }

    /// A character swapped for another of the alphabet, anywhere, the
    /// last one too (whose spare bits base32 wants zero), reads as a typo.
    #[test]
    fn a_swapped_character_is_a_typo(cap in any_cap(), pos in any::<prop::sample::Index>(), c in "[a-z2-7]") {
        let s = cap.to_string();
        let data_start = s.rfind(':').unwrap() + 1;
        let at = data_start + pos.index(s.len() - data_start);
        prop_assume!(s[at..at + 1] != c);
        let mut typo = s.clone();
        typo.replace_range(at..at + 1, &c);
        let err = Cap::from_str(&typo).unwrap_err().to_string();
        prop_assert!(err.contains("mistyped"), "{}: {}", typo, err);
    }

    #[test]
    fn cap_parse_never_panics(s in "\\PC{0,200}") {
        let _ = Cap::from_str(&s);
        let _ = Cap::from_str(&format!("lode:dir-ro:1:{s}"));
    }

    #[test]
    fn downgrade_is_total_and_monotone(cap in any_cap()) {
        for access in [Access::Write, Access::Read, Access::Verify] {
            let d = cap.downgrade(access);
            prop_assert!(d.access() >= cap.access(), "downgrade gained power");
            prop_assert!(d.access() >= access);
            prop_assert_eq!(d.is_dir(), cap.is_dir());
            // Downgrading in two steps equals downgrading in one.
            prop_assert_eq!(d.verify_cap(), cap.verify_cap());
        }
        prop_assert_eq!(cap.read_cap().verify_cap(), cap.verify_cap());
    }

    #[test]
    fn write_to_read_to_verify(seed in any::<[u8; 32]>()) {
        let w = DirWriteCap { seed: SlotSeed::from_bytes(seed) };
        let read = Cap::DirWrite(w.clone()).downgrade(Access::Read);
        prop_assert_eq!(&read, &Cap::DirRead(w.read_cap()));
        let verify = read.downgrade(Access::Verify);
        prop_assert_eq!(&verify, &Cap::DirVerify(w.read_cap().verify_cap()));
        prop_assert_eq!(read.access(), Access::Read);
        prop_assert_eq!(verify.access(), Access::Verify);
        // The read-cap opens the slot the write-cap sealed; the verify-cap
        // checks it.
        let listing = lode::dir::Listing::default();
        let env = SlotEnvelope::seal(&w, 1, &listing);
        prop_assert_eq!(env.open(&read.into_dir_read().unwrap()).unwrap(), listing);
        prop_assert!(env.verify().is_ok());
    }
}

/// A read-cap never reveals a write key: neither the read-cap string nor
/// anything a read-cap holder can decrypt contains the bytes of any write
/// key in the tree (slot seeds, or the seal key for child write-caps).
#[test]
fn read_cap_never_reveals_write_keys() {
    let rt = common::runtime();
    for byte in [1u8, 2, 3] {
        rt.block_on(async {
            let (vault, _) = common::single(byte);
            let root = vault.root().clone();
            let sub = vault.walk_dirs(&root, "a/b", true).await.unwrap();
            let file = vault.put_bytes(b"some content").await.unwrap();
            vault
                .link(&sub, "f", Entry::file(file, 0o644, (0, 0)))
                .await
                .unwrap();

            let a = vault
                .resolve(&Cap::DirWrite(root.clone()), "a")
                .await
                .unwrap();
            let Cap::DirWrite(a) = a else {
                panic!("a is writable via root")
            };
            let secrets: Vec<Vec<u8>> = [&root, &a, &sub]
                .iter()
                .flat_map(|w| {
                    [
                        w.seed.expose().to_vec(),
                        w.seed.write_seal_key().expose().to_vec(),
                    ]
                })
                .collect();

            // Everything the read-cap holder can see, walking down.
            let mut seen: Vec<Vec<u8>> = Vec::new();
            let mut stack = vec![root.read_cap()];
            while let Some(dir) = stack.pop() {
                seen.push(Cap::DirRead(dir.clone()).to_string().into_bytes());
                seen.push(dir.read_key.expose().to_vec());
                let listing = vault.list(&dir).await.unwrap();
                seen.push(listing.encode());
                for (_, entry) in listing.entries {
                    if let Some(Cap::DirRead(child)) = entry.cap {
                        stack.push(child);
                    }
                }
            }
            assert!(seen.len() >= 9, "walked root, a and a/b");
            for s in &secrets {
                for blob in &seen {
                    assert!(
                        !common::contains(blob, s),
                        "a write key leaked to a read-cap holder"
                    );
                }
            }
            // The read-cap cannot unseal child write-caps at all.
            let listing = vault.list(&root.read_cap()).await.unwrap();
            let entry = &listing.entries["a"];
            assert!(entry.has_write_cap());
            let impostor = DirWriteCap {
                seed: SlotSeed::from_bytes(*root.read_cap().read_key.expose()),
            };
            assert!(entry.write_cap(&impostor, "a").is_err());
        });
    }
}

fn any_batch() -> impl Strategy<Value = Vec<([u8; 32], Vec<u8>)>> {
    proptest::collection::vec(
        (
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        ),
        1..20,
    )
}

proptest! {
    /// A share batch decodes to exactly the shares encoded, and any body
    /// cut short, extended or with a byte changed either is refused or
    /// decodes to shares that re-encode to that very body (the fuzz target
    /// `batch_decode` asks the same of arbitrary bytes).
    #[test]
    fn share_batches_round_trip_and_mutations_never_misparse(
        batch in any_batch(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        use lode::protocol::{decode_batch, encode_batch};
        let body = encode_batch(batch.iter().map(|(id, b)| (id, &b[..])));
        let items = decode_batch(&body).unwrap();
        prop_assert_eq!(items.len(), batch.len());
        for (item, (id, bytes)) in items.iter().zip(&batch) {
            prop_assert_eq!(&item.id, id);
            prop_assert_eq!(item.bytes, &bytes[..]);
        }
        let mut changed = body.clone();
        changed[flip.index(body.len())] = byte;
        let mut longer = body.clone();
        longer.push(byte);
        for mutant in [&body[..cut.index(body.len())], &changed[..], &longer[..]] {
            if let Ok(items) = decode_batch(mutant) {
                let again = encode_batch(items.iter().map(|i| (&i.id, i.bytes)));
                prop_assert_eq!(&again[..], mutant);
            }
        }
    }
}
