//! Convergent encryption deduplicates within an identity and never across.

mod common;

use std::collections::HashSet;

use lode::chunk::share::seal_chunk;
use lode::chunk::{ChunkerParams, Params};

#[test]
fn same_file_twice_same_cap_no_new_shares() {
    let rt = common::runtime();
    rt.block_on(async {
        let data = common::seeded_bytes("dedup", 5 << 20);
        let (vault, store) = common::single(1);
        let first = vault.put_bytes(&data).await.unwrap();
        let ids: HashSet<_> = store.share_ids().into_iter().collect();
        let bytes = store.share_bytes();
        let second = vault.put_bytes(&data).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(store.share_ids().into_iter().collect::<HashSet<_>>(), ids);
        assert_eq!(store.share_bytes(), bytes);

        let (vault3, stores) = common::grid3(1);
        vault3.put_bytes(&data).await.unwrap();
        let before: Vec<usize> = stores.iter().map(|s| s.share_ids().len()).collect();
        vault3.put_bytes(&data).await.unwrap();
        let after: Vec<usize> = stores.iter().map(|s| s.share_ids().len()).collect();
        assert_eq!(before, after);
    });
}

#[test]
fn two_identities_share_no_ids() {
    let rt = common::runtime();
    rt.block_on(async {
        let data = common::seeded_bytes("two identities", 3 << 20);
        let (a, store_a) = common::single(1);
        let (b, store_b) = common::single(2);
        let cap_a = a.put_bytes(&data).await.unwrap();
        let cap_b = b.put_bytes(&data).await.unwrap();
        assert_ne!(cap_a.root, cap_b.root);
        let ids_a: HashSet<_> = store_a.share_ids().into_iter().collect();
        let ids_b: HashSet<_> = store_b.share_ids().into_iter().collect();
        assert!(ids_a.len() >= 2);
        assert!(
            ids_a.is_disjoint(&ids_b),
            "a share id is shared across identities"
        );
        assert_eq!(b.get_bytes(&cap_b).await.unwrap(), data);
    });
}

/// Chunk ids (the first share id of each chunk) of a whole input.
fn chunk_ids(data: &[u8], byte: u8) -> Vec<[u8; 32]> {
    let secret = common::secret(byte);
    let conv = secret.convergence();
    let params = Params::new(2, 3).unwrap();
    ChunkerParams::new(secret.chunker_seed())
        .chunks(std::io::Cursor::new(data))
        .map(|c| seal_chunk(&conv, params, &c.unwrap()).shares[0].id())
        .collect()
}

#[test]
fn ten_byte_insert_in_64mib_changes_at_most_3_chunks() {
    let data = common::seeded_bytes("edit", 64 << 20);
    let mut edited = data[..32 << 20].to_vec();
    edited.extend_from_slice(b"0123456789");
    edited.extend_from_slice(&data[32 << 20..]);
    let before: HashSet<_> = chunk_ids(&data, 3).into_iter().collect();
    let after = chunk_ids(&edited, 3);
    let new = after.iter().filter(|id| !before.contains(*id)).count();
    let avg = ChunkerParams::new(0).avg;
    assert!(
        after.len() > (64 << 20) / avg / 2,
        "64 MiB is many chunks ({})",
        after.len()
    );
    assert!((1..=3).contains(&new), "{new} chunks changed");

    // Through the whole pipeline: the second put stores only the changed
    // chunks' shares and the new manifest root.
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, store) = common::single(3);
        vault.put_bytes(&data).await.unwrap();
        let n0 = store.share_ids().len();
        let cap = vault.put_bytes(&edited).await.unwrap();
        let added = store.share_ids().len() - n0;
        assert!(added <= 3 + 1, "{added} new shares for a 10-byte insert");
        assert_eq!(
            vault.read_range(&cap, (32 << 20) - 5, 20).await.unwrap(),
            edited[(32 << 20) - 5..(32 << 20) + 15]
        );
    });
}

/// Counts the share bytes sent to an in-memory store, and keeps the ids
/// of each claim it is asked.
struct Counting {
    inner: lode::store::MemoryStorage,
    sent: std::sync::atomic::AtomicUsize,
    claims: std::sync::Mutex<Vec<Vec<[u8; 32]>>>,
    /// Claims fail, as from a mirror that does not answer them.
    silent: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl lode::store::Storage for Counting {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn put_share(&self, id: &[u8; 32], bytes: bytes::Bytes) -> lode::store::Result<()> {
        self.sent
            .fetch_add(bytes.len(), std::sync::atomic::Ordering::Relaxed);
        self.inner.put_share(id, bytes).await
    }
    async fn get_share(&self, id: &[u8; 32]) -> lode::store::Result<Option<bytes::Bytes>> {
        self.inner.get_share(id).await
    }
    async fn has_share(&self, id: &[u8; 32]) -> lode::store::Result<bool> {
        self.inner.has_share(id).await
    }
    async fn put_slot(&self, envelope: &[u8]) -> lode::store::Result<()> {
        self.inner.put_slot(envelope).await
    }
    async fn get_slot(&self, key: &[u8; 32]) -> lode::store::Result<Option<Vec<u8>>> {
        self.inner.get_slot(key).await
    }
    async fn claim(&self, ids: &[[u8; 32]]) -> lode::store::Result<Vec<[u8; 32]>> {
        self.claims.lock().unwrap().push(ids.to_vec());
        if self.silent.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(lode::store::Error::Unavailable {
                mirror: "silent".into(),
                reason: "does not answer".into(),
            });
        }
        self.inner.claim(ids).await
    }
}

/// Three counting in-memory stores behind a grid, and a vault on it.
fn counting_vault(secret: u8) -> (lode::store::Vault, Vec<std::sync::Arc<Counting>>) {
    counting_vault_holding(secret, Some(std::time::Duration::from_secs(31 * 86_400)))
}

/// [`counting_vault`] whose grid remembers shares placed for `lease / 8`
/// (with `None`, not at all: every share a put makes is sent).
fn counting_vault_holding(
    secret: u8,
    lease: Option<std::time::Duration>,
) -> (lode::store::Vault, Vec<std::sync::Arc<Counting>>) {
    counting_vault_with(secret, lease, lode::store::GridConfig::default())
}

/// [`counting_vault_holding`] on a grid set up as `config`.
fn counting_vault_with(
    secret: u8,
    lease: Option<std::time::Duration>,
    config: lode::store::GridConfig,
) -> (lode::store::Vault, Vec<std::sync::Arc<Counting>>) {
    use lode::store::Storage;
    let stores: Vec<std::sync::Arc<Counting>> = (0..3)
        .map(|i| {
            std::sync::Arc::new(Counting {
                inner: lode::store::MemoryStorage::named(&format!("m{i}")),
                sent: Default::default(),
                claims: Default::default(),
                silent: Default::default(),
            })
        })
        .collect();
    let dyns: Vec<std::sync::Arc<dyn Storage>> = stores
        .iter()
        .map(|s| s.clone() as std::sync::Arc<dyn Storage>)
        .collect();
    let grid = lode::store::Grid::new(dyns, config).unwrap();
    // In-memory stores hold forever; a mirror's lease is days.
    if let Some(lease) = lease {
        grid.set_lease_floor(lease);
    }
    (
        lode::store::Vault::new(&common::secret(secret), grid),
        stores,
    )
}

/// Share bytes sent to all of `stores` so far.
fn sent(stores: &[std::sync::Arc<Counting>]) -> usize {
    stores
        .iter()
        .map(|s| s.sent.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

#[test]
fn editing_a_large_file_sends_only_the_changed_chunks() {
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, stores) = counting_vault(5);
        let sent = || sent(&stores);
        let mut data = common::seeded_bytes("edit me", 24 << 20);
        vault.put_bytes(&data).await.unwrap();
        let first = sent();
        assert!(first >= data.len(), "2-of-3 sends 1.5x the file: {first}");
        // Overwrite 100 bytes in the middle, as an editor saving in place.
        data[12 << 20..(12 << 20) + 100].fill(b'x');
        let cap = vault.put_bytes(&data).await.unwrap();
        let second = sent() - first;
        // The changed chunk (at most 4 MiB, times 1.5) and the manifest.
        assert!(
            second < 7 << 20,
            "an edit sent {second} bytes (the first upload sent {first})"
        );
        assert_eq!(vault.get_bytes(&cap).await.unwrap(), data);
    });
}

/// Content written moments ago is not sent again: the grid remembers which
/// mirrors acknowledged which shares. A repair does not trust that memory:
/// a share a mirror lost after acknowledging it is put back.
#[test]
fn recently_placed_shares_are_not_sent_again_but_repair_asks() {
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, stores) = counting_vault(6);
        let sent = || sent(&stores);
        // Small files (each inside its root) and a larger one.
        let files: Vec<Vec<u8>> = (0..20)
            .map(|i| common::seeded_bytes(&format!("small {i}"), 100 + 300 * i))
            .chain([common::seeded_bytes("larger", 3 << 20)])
            .collect();
        let mut caps = Vec::new();
        for f in &files {
            caps.push(vault.put_bytes(f).await.unwrap());
        }
        let first = sent();
        assert!(first > files.iter().map(Vec::len).sum::<usize>());
        for (f, cap) in files.iter().zip(&caps) {
            assert_eq!(&vault.put_bytes(f).await.unwrap(), cap);
        }
        assert_eq!(sent(), first, "writing the same content again sent bytes");

        // One mirror loses every share it holds; a repair puts them back.
        let lost = stores[0].inner.share_ids();
        assert!(!lost.is_empty());
        for id in &lost {
            stores[0].inner.lose(id);
        }
        for cap in &caps {
            let cap = lode::caps::Cap::FileRead(cap.clone());
            let report = vault.check(&cap, false, true).await.unwrap();
            assert!(report.errors.is_empty(), "{:?}", report.errors);
        }
        let mut back = stores[0].inner.share_ids();
        let mut lost = lost;
        back.sort();
        lost.sort();
        assert_eq!(back, lost, "the repair restored what the mirror lost");
        assert!(sent() > first);
    });
}

/// A file written anew from its start over its stored version (`cp`
/// over it) seals only the chunks that version lacks.
#[test]
fn a_file_written_anew_reseals_only_what_changed() {
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, stores) = counting_vault_holding(8, None);
        let mut data = common::seeded_bytes("written anew", 40 << 20);
        let cap = vault.put_bytes(&data).await.unwrap();
        let old: HashSet<_> = chunk_ids(&data, 8).into_iter().collect();
        data[20 << 20..(20 << 20) + 10].fill(b'x');
        let tail = data.split_off(33 << 20);
        data.extend_from_slice(b"inserted");
        data.extend_from_slice(&tail);
        let new = chunk_ids(&data, 8)
            .iter()
            .filter(|id| !old.contains(*id))
            .count();
        let before = vault.chunks_sealed();
        stores.iter().for_each(|s| s.claims.lock().unwrap().clear());
        let next = vault
            .put_reader_over(std::io::Cursor::new(data.clone()), &cap)
            .await
            .unwrap();
        let sealed = vault.chunks_sealed() - before;
        // The old chunks that do not come up again are not claimed: their
        // leases are left to lapse.
        let fresh: HashSet<_> = chunk_ids(&data, 8).into_iter().collect();
        let dropped: HashSet<_> = old.difference(&fresh).collect();
        let claimed = stores
            .iter()
            .flat_map(|s| s.claims.lock().unwrap().clone())
            .flatten()
            .filter(|id| dropped.contains(id))
            .count();
        assert_eq!(claimed, 0, "{} replaced chunks claimed", claimed);
        assert_eq!(vault.get_bytes(&next).await.unwrap(), data);
        assert_eq!(
            next,
            vault.put_bytes(&data).await.unwrap(),
            "as a fresh seal"
        );
        assert!(
            sealed as usize == new && new < old.len(),
            "{sealed} chunks sealed, {new} new, {} before",
            old.len()
        );
    });
}

/// A file written anew over a version whose shares a mirror has lost:
/// none of the old chunks is taken as stored (each lacks its share
/// there), so each is sealed again (together, in the batch that found
/// it) and placed afresh, and the new version is whole on every mirror.
#[test]
fn a_file_written_anew_over_lost_shares_places_them_again() {
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, stores) = counting_vault_holding(9, None);
        let mut data = common::seeded_bytes("over lost shares", 40 << 20);
        let cap = vault.put_bytes(&data).await.unwrap();
        for id in stores[0].inner.share_ids() {
            stores[0].inner.lose(&id);
        }
        data[5 << 20] ^= 1;
        let chunks = chunk_ids(&data, 9).len() as u64;
        let before = vault.chunks_sealed();
        let next = vault
            .put_reader_over(std::io::Cursor::new(data.clone()), &cap)
            .await
            .unwrap();
        assert_eq!(
            vault.chunks_sealed() - before,
            chunks,
            "every chunk sealed again, none taken as stored"
        );
        assert_eq!(vault.get_bytes(&next).await.unwrap(), data);
        assert_eq!(
            next,
            vault.put_bytes(&data).await.unwrap(),
            "as a fresh seal"
        );
        let report = vault
            .check(&lode::caps::Cap::FileRead(next), false, false)
            .await
            .unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(
            report.healthy(),
            "the new version is not whole on every mirror"
        );
    });
}

/// A mirror that does not answer the confirmation leaves a kept chunk
/// on too few mirrors known to hold it when `happy` wants all three (it
/// is sealed again), not when `happy` is two (it is kept). With `happy`
/// one and two mirrors silent, the one that answered holds one share of
/// each 2-of-3 chunk, too few to read it from: sealed again too.
#[test]
fn an_unanswered_confirmation_keeps_chunks_only_if_happy_allows() {
    use std::os::unix::fs::FileExt;
    let rt = common::runtime();
    rt.block_on(async {
        for (happy, silent, kept) in [(3, &[1][..], false), (2, &[1], true), (1, &[1, 2], false)] {
            let config = lode::store::GridConfig {
                happy,
                ..Default::default()
            };
            let (vault, stores) = counting_vault_with(9, None, config);
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("file");
            let mut data = common::seeded_bytes("unanswered", 24 << 20);
            std::fs::write(&path, &data).unwrap();
            let cap = vault.put_path(&path).await.unwrap();
            let chunks = chunk_ids(&data, 9).len();
            data[5] ^= 1;
            std::fs::File::create(&path)
                .unwrap()
                .write_all_at(&data, 0)
                .unwrap();
            for &i in silent {
                stores[i]
                    .silent
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let before = vault.chunks_sealed();
            let next = vault.put_path_over(&path, Some(&cap)).await.unwrap();
            let sealed = (vault.chunks_sealed() - before) as usize;
            assert_eq!(vault.get_bytes(&next).await.unwrap(), data);
            let want = if kept { 1 } else { chunks };
            assert_eq!(
                sealed, want,
                "happy {happy}: {sealed} of {chunks} chunks sealed"
            );
        }
    });
}

/// A new version of a file put over its last one reseals only the chunks
/// whose bytes changed: an edit in place, an insertion (the later chunks
/// are found where they moved to), a deletion, an append and a
/// truncation; it is cut as a fresh seal would cut it; and the chunks it
/// reuses are confirmed on the mirrors, so a share a mirror lost is put
/// back as a full upload would.
#[test]
fn a_new_version_reseals_only_what_changed() {
    use std::os::unix::fs::FileExt;
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, stores) = counting_vault_holding(7, None);
        let sealed = || vault.chunks_sealed();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("file");
        let mut data = common::seeded_bytes("new version", 40 << 20);
        std::fs::write(&path, &data).unwrap();
        let mut cap = vault.put_path(&path).await.unwrap();
        // 40 MiB is about ten chunks.
        let whole = sealed();
        assert!(whole >= 6, "{whole} chunks sealed for the whole file");

        type Edit = Box<dyn Fn(&mut Vec<u8>)>;
        let edits: [(&str, Edit); 7] = [
            (
                "in place",
                Box::new(|d| d[20 << 20..(20 << 20) + 100].fill(b'x')),
            ),
            ("the first byte", Box::new(|d| d[0] ^= 1)),
            (
                "an insertion",
                Box::new(|d| {
                    let tail = d.split_off(30 << 20);
                    d.extend_from_slice(b"ten bytes!");
                    d.extend_from_slice(&tail);
                }),
            ),
            (
                "a deletion",
                Box::new(|d| {
                    d.drain(15 << 20..16 << 20);
                }),
            ),
            (
                "an append",
                Box::new(|d| d.extend_from_slice(&[7u8; 1 << 20])),
            ),
            (
                "two insertions apart",
                Box::new(|d| {
                    let tail = d.split_off(30 << 20);
                    d.extend_from_slice(b"second");
                    d.extend_from_slice(&tail);
                    let tail = d.split_off(8 << 20);
                    d.extend_from_slice(b"first insertion");
                    d.extend_from_slice(&tail);
                }),
            ),
            ("a truncation", Box::new(|d| d.truncate(10 << 20))),
        ];
        let write = |data: &[u8]| {
            let file = std::fs::File::create(&path).unwrap();
            file.write_all_at(data, 0).unwrap();
        };
        for (what, edit) in edits {
            let old: HashSet<_> = chunk_ids(&data, 7).into_iter().collect();
            edit(&mut data);
            write(&data);
            // Chunks a fresh cut of the new bytes has that the old had not.
            let new = chunk_ids(&data, 7)
                .iter()
                .filter(|id| !old.contains(*id))
                .count();
            let before = sealed();
            stores.iter().for_each(|s| s.claims.lock().unwrap().clear());
            let next = vault.put_path_over(&path, Some(&cap)).await.unwrap();
            let resealed = sealed() - before;
            // The chunks kept were confirmed on the mirrors in one claim
            // per mirror, not one per chunk.
            let fresh: HashSet<_> = chunk_ids(&data, 7).into_iter().collect();
            let kept: HashSet<_> = old.intersection(&fresh).collect();
            let asked = stores
                .iter()
                .flat_map(|s| s.claims.lock().unwrap().clone())
                .filter(|ids| ids.iter().any(|id| kept.contains(id)))
                .count();
            assert!(
                asked <= stores.len(),
                "{what}: {} chunks kept, confirmed in {asked} claims",
                kept.len()
            );
            assert_eq!(vault.get_bytes(&next).await.unwrap(), data, "{what}");
            // Cut as a fresh seal of the same bytes cuts them.
            assert_eq!(next, vault.put_path(&path).await.unwrap(), "{what}");
            // Those, and no others.
            assert!(
                resealed as usize == new && new < whole as usize,
                "{what}: {resealed} chunks sealed, {new} new, {whole} in the whole file"
            );
            cap = next;
        }

        // Small appends, each put over the last: no short chunk is left
        // behind each time, the result is what a fresh seal cuts.
        for _ in 0..5 {
            data.extend_from_slice(b"a log line\n");
            write(&data);
            cap = vault.put_path_over(&path, Some(&cap)).await.unwrap();
        }
        assert_eq!(cap, vault.put_path(&path).await.unwrap(), "appends");

        // A mirror that lost its shares gets back those of the chunks
        // reused, as a full upload would send them.
        for id in stores[0].inner.share_ids() {
            stores[0].inner.lose(&id);
        }
        data[100] ^= 1;
        write(&data);
        cap = vault.put_path_over(&path, Some(&cap)).await.unwrap();
        let report = vault
            .check(&lode::caps::Cap::FileRead(cap.clone()), false, true)
            .await
            .unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.repaired_shares, 0, "reused chunks left shares lost");
    });
}

/// A partly staged file whose last version was coded under other erasure
/// parameters (`k` changed in the config since) is coded afresh: its old
/// chunks are not taken unread into a manifest that would give them this
/// grid's `k` (the file then read back as EIO, for good).
#[test]
fn a_partial_upload_after_k_changed_reads_back() {
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;
    let rt = common::runtime();
    rt.block_on(async {
        let stores: Vec<Arc<dyn lode::store::Storage>> = (0..3)
            .map(|i| {
                Arc::new(lode::store::MemoryStorage::named(&format!("m{i}")))
                    as Arc<dyn lode::store::Storage>
            })
            .collect();
        let vault = |k| {
            let config = lode::store::GridConfig { k, n: 3, happy: 3 };
            let grid = lode::store::Grid::new(stores.clone(), config).unwrap();
            lode::store::Vault::new(&common::secret(10), grid)
        };
        let (two, three) = (vault(2), vault(3));
        let mut data = common::seeded_bytes("k changed", 20 << 20);
        let cap = two.put_bytes(&data).await.unwrap();
        // The staged copy holds only the block an edit touched; the rest
        // is read from the last version (the same bytes there).
        data[(4 << 20) + 5] ^= 1;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("copy");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(data.len() as u64).unwrap();
        file.write_all_at(&data[4 << 20..5 << 20], 4 << 20).unwrap();
        let bytes = Arc::new(data.clone());
        let absent = lode::store::Absent {
            ranges: vec![(0, 4 << 20), (5 << 20, 20 << 20)],
            read: Arc::new(move |at, buf: &mut [u8]| {
                buf.copy_from_slice(&bytes[at as usize..at as usize + buf.len()]);
                Ok(())
            }),
        };
        let next = three.put_partial(&path, &cap, absent).await.unwrap();
        assert!(three.get_bytes(&next).await.unwrap() == data, "read back");
        assert_eq!(
            next,
            three.put_bytes(&data).await.unwrap(),
            "as a fresh seal"
        );
    });
}
