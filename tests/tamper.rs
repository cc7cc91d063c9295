//! Tampering with any byte of a share, a chunk ciphertext, a manifest node
//! or a directory slot is detected: the result is an error, never wrong data.

mod common;

use lode::caps::DirWriteCap;
use lode::chunk::share::{self, Share, seal_chunk};
use lode::chunk::{FileEncoder, Node, Params};
use lode::crypto::{ReadKey, RootSecret, SlotSeed};
use lode::dir::{Entry, Listing, SlotEnvelope};
use lode::store::{Grid, GridConfig, MemoryStorage, Storage, Vault};
use std::sync::Arc;

fn flip_each_byte(bytes: &[u8], mut check: impl FnMut(Vec<u8>, usize)) {
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80] {
            let mut t = bytes.to_vec();
            t[i] ^= mask;
            check(t, i);
        }
    }
}

#[test]
fn any_flipped_share_byte_is_detected() {
    let conv = RootSecret::from_bytes([5; 32]).convergence();
    let params = Params::new(2, 3).unwrap();
    let sealed = seal_chunk(&conv, params, &common::seeded_bytes("share", 1500));
    for s in &sealed.shares {
        let id = s.id();
        flip_each_byte(s.as_bytes(), |t, i| {
            let err = Share::verify(t, &id).unwrap_err();
            assert!(
                matches!(err, lode::chunk::Error::Corrupt(_)),
                "byte {i}: {err}"
            );
        });
    }
}

/// Shares are named by BLAKE3 now and by SHA-256 in format 1; each format
/// answers only to its own hash, and format-1 shares stay readable.
#[test]
fn each_share_format_answers_only_to_its_own_hash() {
    use sha2::Digest;
    let conv = RootSecret::from_bytes([6; 32]).convergence();
    let sealed = seal_chunk(&conv, Params::new(2, 3).unwrap(), b"two formats");
    let v2 = sealed.shares[0].as_bytes().to_vec();
    assert_eq!(v2[4], share::SHARE_VERSION);
    let blake: [u8; 32] = blake3::hash(&v2).into();
    let sha: [u8; 32] = sha2::Sha256::digest(&v2).into();
    assert_eq!(sealed.shares[0].id(), blake);
    assert!(Share::verify(v2.clone(), &blake).is_ok());
    assert!(matches!(
        Share::verify(v2.clone(), &sha),
        Err(lode::chunk::Error::Corrupt(_))
    ));

    // The same share as format 1 wrote it: version byte 1, named by SHA-256.
    let mut v1 = v2;
    v1[4] = 1;
    let sha: [u8; 32] = sha2::Sha256::digest(&v1).into();
    let blake: [u8; 32] = blake3::hash(&v1).into();
    let old = Share::verify(v1.clone(), &sha).unwrap();
    assert_eq!(old.header(), sealed.shares[0].header());
    assert!(matches!(
        Share::verify(v1.clone(), &blake),
        Err(lode::chunk::Error::Corrupt(_))
    ));

    // A version this code does not know is refused by name.
    let mut v9 = v1;
    v9[4] = 9;
    let id = lode::chunk::share_id(&v9);
    assert!(matches!(
        Share::verify(v9, &id),
        Err(lode::chunk::Error::ShareVersion(9))
    ));
}

#[test]
fn any_flipped_ciphertext_byte_is_detected() {
    let conv = RootSecret::from_bytes([6; 32]).convergence();
    let params = Params::new(2, 3).unwrap();
    let plain = common::seeded_bytes("ciphertext", 700);
    let sealed = seal_chunk(&conv, params, &plain);
    let ciphertext = share::decode(params, &sealed.shares).unwrap();
    flip_each_byte(&ciphertext, |t, i| {
        // Re-code the tampered ciphertext, as a mirror that also forged share
        // ids would have to: AES-SIV still refuses it.
        let forged = share::encode(params, &t);
        assert!(
            share::open_chunk(&sealed.key, params, &forged).is_err(),
            "byte {i}"
        );
    });
}

/// A writer can list, beside a chunk's data shares, a parity share coded
/// from other bytes of the same length: each share matches its id, but
/// they do not match each other. Read from the data shares, the chunk is
/// what they hold; rebuilt from the parity, it must be an error, not
/// other bytes that depend on which mirror answered.
#[test]
fn a_parity_share_coded_from_other_bytes_is_an_error() {
    let conv = RootSecret::from_bytes([8; 32]).convergence();
    let params = Params::new(2, 3).unwrap();
    let plain = common::seeded_bytes("listed", 5000);
    let listed = seal_chunk(&conv, params, &plain);
    let other = seal_chunk(&conv, params, &common::seeded_bytes("other", 5000));
    let open = |shares: Vec<&Share>| {
        let shares = shares.into_iter().cloned().collect();
        share::open_verified_chunk_parts(&listed.key, params, shares).map(|p| p.concat())
    };
    let (data0, data1) = (&listed.shares[0], &listed.shares[1]);
    assert_eq!(open(vec![data0, data1]).unwrap(), plain);
    assert_eq!(open(vec![data0, &listed.shares[2]]).unwrap(), plain);
    for data in [data0, data1] {
        assert!(open(vec![data, &other.shares[2]]).is_err());
    }
}

#[test]
fn any_flipped_manifest_byte_is_detected() {
    let conv = RootSecret::from_bytes([7; 32]).convergence();
    let mut enc = FileEncoder::new(conv, Params::new(2, 3).unwrap());
    for i in 0..3 {
        enc.push_chunk(&common::seeded_bytes(&format!("m{i}"), 100));
    }
    let (cap, groups) = enc.finish();
    let root = groups.last().unwrap();
    let blob = share::decode(Params::REPLICA, root).unwrap();
    let node = Node::open_read(&blob, &cap.read_key).unwrap();
    assert_eq!(node.entries.len(), 3);
    assert_eq!(node.size, 300);
    let vk = cap.read_key.verify_key();
    flip_each_byte(&blob, |t, i| {
        assert!(
            Node::open_read(&t, &cap.read_key).is_err(),
            "byte {i} (read)"
        );
        assert!(Node::open_verify(&t, &vk).is_err(), "byte {i} (verify)");
    });
    // And the wrong key opens nothing.
    assert!(Node::open_read(&blob, &ReadKey::from_bytes([0; 32])).is_err());
}

#[test]
fn any_flipped_byte_of_a_root_holding_its_file_is_detected() {
    let conv = RootSecret::from_bytes([7; 32]).convergence();
    let data = common::seeded_bytes("inline", 700);
    let enc = FileEncoder::new(conv, Params::new(2, 3).unwrap());
    let (cap, root) = enc.seal_inline(&data);
    assert_eq!(root.len(), 1, "one replicated share");
    let blob = share::decode(Params::REPLICA, &root).unwrap();
    let node = Node::open_read(&blob, &cap.read_key).unwrap();
    assert!(node.entries.is_empty());
    assert_eq!(node.data.as_deref(), Some(&data));
    // A verifier learns the size, never the bytes.
    let vk = cap.read_key.verify_key();
    let seen = Node::open_verify(&blob, &vk).unwrap();
    assert_eq!((seen.size, seen.data.is_none()), (700, true));
    assert!(
        !common::contains(&blob, &data[..32]),
        "bytes stored in the clear"
    );
    flip_each_byte(&blob, |t, i| {
        assert!(
            Node::open_read(&t, &cap.read_key).is_err(),
            "byte {i} (read)"
        );
        assert!(Node::open_verify(&t, &vk).is_err(), "byte {i} (verify)");
    });
}

#[test]
fn any_flipped_slot_byte_is_detected() {
    let cap = DirWriteCap {
        seed: SlotSeed::from_bytes([8; 32]),
    };
    let child = DirWriteCap {
        seed: SlotSeed::from_bytes([9; 32]),
    };
    let mut listing = Listing::default();
    listing
        .entries
        .insert("d".into(), Entry::dir(&cap, "d", &child, 0o755, (1, 2)));
    listing
        .entries
        .insert("s".into(), Entry::symlink("d", (3, 4)));
    let bytes = SlotEnvelope::seal(&cap, 3, &listing).encode();
    let read = cap.read_cap();
    flip_each_byte(&bytes, |t, i| {
        // The mirror's path (no keys) and the reader's path both refuse it.
        let mirror = SlotEnvelope::decode(&t).and_then(|e| e.verify());
        assert!(mirror.is_err(), "byte {i} passed the mirror check");
        let reader = SlotEnvelope::decode(&t).and_then(|e| e.open(&read));
        assert!(reader.is_err(), "byte {i} passed the reader check");
    });
}

/// End to end: a store that corrupts one share cannot change what a read
/// returns. With one copy, the read fails; with 2-of-3, it succeeds.
#[test]
fn corrupted_store_yields_error_or_right_data() {
    let rt = common::runtime();
    rt.block_on(async {
        let data = common::seeded_bytes("e2e", 3 << 20);
        let (vault, store) = common::single(10);
        let cap = vault.put_bytes(&data).await.unwrap();
        for id in store.share_ids() {
            let (vault2, store2) = common::single(10);
            vault2.put_bytes(&data).await.unwrap();
            store2.tamper(&id, |b| {
                let mid = b.len() / 2;
                b[mid] ^= 0x40;
            });
            let err = vault2.get_bytes(&cap).await.unwrap_err();
            assert!(err.to_string().contains("good shares"), "{err}");
        }

        let (vault, stores) = common::grid3(11);
        let cap = vault.put_bytes(&data).await.unwrap();
        for id in stores[0].share_ids() {
            stores[0].tamper(&id, |b| b[20] ^= 1);
        }
        assert_eq!(vault.get_bytes(&cap).await.unwrap(), data);
    });
}

/// A vault of identity `secret` over `stores`, coding k-of-(all of them),
/// an upload needing `happy` of them.
fn vault_over<S: Storage + 'static>(stores: &[Arc<S>], secret: u8, k: u8, happy: usize) -> Vault {
    let dyns: Vec<Arc<dyn Storage>> = stores.iter().map(|s| s.clone() as _).collect();
    let config = GridConfig {
        k,
        n: stores.len() as u8,
        happy,
    };
    Vault::new(&common::secret(secret), Grid::new(dyns, config).unwrap())
}

/// A mirror that refuses to have its corrupt copy rewritten (full, or
/// hostile) does not stop the rest of the repair: the share another
/// mirror lost is sent back all the same, and the check still fails,
/// naming what it could not fix.
#[test]
fn a_refused_repair_does_not_stop_the_others() {
    let rt = common::runtime();
    rt.block_on(async {
        // 2-of-4, so that the object stays recoverable with one share
        // corrupt and one lost.
        let stores = common::named_stores(4, MemoryStorage::named);
        let vault = vault_over(&stores, 41, 2, 4);
        let data = common::seeded_bytes("refused repair", 300_000);
        let cap = vault.put_bytes(&data).await.unwrap();
        let held: Vec<Vec<[u8; 32]>> = stores.iter().map(|s| s.share_ids()).collect();
        // Mirror 0 serves a corrupt copy and will not take a good one;
        // mirror 1 lost its share.
        let bad = held[0].iter().find(|id| !held[1].contains(id)).unwrap();
        assert!(stores[0].tamper(bad, |b| b[100] ^= 1));
        stores[0].refuse_repairs();
        let lost = held[1].iter().find(|id| !held[0].contains(id)).unwrap();
        assert!(stores[1].lose(lost));
        let options = lode::store::CheckOptions {
            verify: true,
            repair: true,
            accept_rollback: false,
        };
        let file = cap.clone();
        let cap = lode::caps::Cap::FileRead(cap);
        let report = vault.check_with(&cap, options).await.unwrap();
        let said: Vec<String> = report.objects.iter().map(|o| o.describe()).collect();
        assert!(
            !report.errors.is_empty(),
            "the refusal went unsaid: {said:?} {}",
            report.repaired_shares
        );
        assert!(
            stores.iter().any(|s| s.share_ids().contains(lost)),
            "the lost share was not sent back"
        );
        assert_eq!(vault.get_bytes(&file).await.unwrap(), data);
    });
}

/// An in-memory store that can fall silent: then every request fails
/// as one to a mirror that does not answer, and slot updates sent to it
/// are counted.
struct Silent {
    inner: MemoryStorage,
    silent: std::sync::atomic::AtomicBool,
    /// Only slot reads fail (the shares answer).
    slot_reads_fail: std::sync::atomic::AtomicBool,
    slots_sent_while_silent: std::sync::atomic::AtomicUsize,
}

impl Silent {
    fn new(name: &str) -> Silent {
        Silent {
            inner: MemoryStorage::named(name),
            silent: Default::default(),
            slot_reads_fail: Default::default(),
            slots_sent_while_silent: Default::default(),
        }
    }

    fn answer(&self) -> lode::store::Result<()> {
        match self.silent.load(std::sync::atomic::Ordering::SeqCst) {
            false => Ok(()),
            true => Err(lode::store::Error::Unavailable {
                mirror: self.inner.name().into(),
                reason: "does not answer".into(),
            }),
        }
    }
}

#[async_trait::async_trait]
impl Storage for Silent {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn put_share(&self, id: &[u8; 32], bytes: bytes::Bytes) -> lode::store::Result<()> {
        self.answer()?;
        self.inner.put_share(id, bytes).await
    }
    async fn get_share(&self, id: &[u8; 32]) -> lode::store::Result<Option<bytes::Bytes>> {
        self.answer()?;
        self.inner.get_share(id).await
    }
    async fn has_share(&self, id: &[u8; 32]) -> lode::store::Result<bool> {
        self.answer()?;
        self.inner.has_share(id).await
    }
    async fn put_slot(&self, envelope: &[u8]) -> lode::store::Result<()> {
        if self.silent.load(std::sync::atomic::Ordering::SeqCst)
            || self
                .slot_reads_fail
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.slots_sent_while_silent
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.answer()?;
        self.inner.put_slot(envelope).await
    }
    async fn get_slot(&self, key: &[u8; 32]) -> lode::store::Result<Option<Vec<u8>>> {
        self.answer()?;
        if self
            .slot_reads_fail
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(lode::store::Error::Unavailable {
                mirror: self.inner.name().into(),
                reason: "slot read timed out".into(),
            });
        }
        self.inner.get_slot(key).await
    }
    async fn claim(&self, ids: &[[u8; 32]]) -> lode::store::Result<Vec<[u8; 32]>> {
        self.answer()?;
        self.inner.claim(ids).await
    }
}

/// `check --repair` sends a directory's slot to the mirrors that answered
/// its read and lack it, and none to one that did not answer: over HTTP a
/// hung mirror cost each directory a write timeout. The slot stays
/// reported as not repaired there, and once the mirror answers again a
/// repair sends it.
#[test]
fn a_repair_sends_no_slot_to_a_mirror_that_did_not_answer() {
    let rt = common::runtime();
    rt.block_on(async {
        let stores = common::named_stores(3, Silent::new);
        let vault = vault_over(&stores, 43, 2, 2);
        // Published while mirror 2 is silent: mirrors 0 and 1 hold it.
        let quiet = &stores[2];
        quiet
            .silent
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let dir = vault.new_dir().await.unwrap();
        let cap = lode::caps::Cap::DirWrite(dir);
        let sent_before = quiet
            .slots_sent_while_silent
            .load(std::sync::atomic::Ordering::SeqCst);
        let options = lode::store::CheckOptions {
            verify: false,
            repair: true,
            accept_rollback: false,
        };
        let report = vault.check_with(&cap, options).await.unwrap();
        assert_eq!(
            quiet
                .slots_sent_while_silent
                .load(std::sync::atomic::Ordering::SeqCst),
            sent_before,
            "a repair sent a slot to a mirror that did not answer its read"
        );
        assert_eq!(report.tallies[2].stale_slots, 1, "{:?}", report.tallies);
        assert_eq!(report.repaired_slots, 0);
        // Answering share probes but not the slot's read: no slot either.
        quiet
            .silent
            .store(false, std::sync::atomic::Ordering::SeqCst);
        quiet
            .slot_reads_fail
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let report = vault.check_with(&cap, options).await.unwrap();
        assert_eq!(
            quiet
                .slots_sent_while_silent
                .load(std::sync::atomic::Ordering::SeqCst),
            sent_before,
            "a repair sent a slot to a mirror whose slot read failed"
        );
        assert_eq!(report.repaired_slots, 0);
        // Back: the next repair sends it there.
        quiet
            .slot_reads_fail
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let report = vault.check_with(&cap, options).await.unwrap();
        assert_eq!(report.repaired_slots, 1, "{:?}", report.tallies);
        assert_eq!(report.tallies[2].stale_slots, 0);
    });
}
