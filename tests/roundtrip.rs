//! In-process put and get of files and directory trees through the Storage
//! trait, over 1-of-1 and 2-of-3 grids of in-memory stores.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use lode::caps::Cap;
use lode::chunk::manifest::FANOUT;
use lode::chunk::{FileEncoder, INLINE_MAX, Params};
use lode::store::{Storage, Vault};

#[test]
fn files_of_many_sizes_round_trip() {
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, stores) = common::grid3(1);
        for size in [0usize, 1, 2, 255, 4096, (1 << 20) + 1, 9 << 20] {
            let data = common::seeded_bytes(&format!("size {size}"), size);
            let cap = vault.put_bytes(&data).await.unwrap();
            assert_eq!(cap.size, size as u64);
            assert_eq!(vault.get_bytes(&cap).await.unwrap(), data, "size {size}");
            // Through the cap's string form, as a user would pass it.
            let parsed: Cap = Cap::FileRead(cap).to_string().parse().unwrap();
            let cap = parsed.into_file_read().unwrap();
            for (off, len) in [
                (0u64, 10u64),
                (size as u64 / 2, 5000),
                (size as u64, 1),
                (size as u64 / 3, u64::MAX),
            ] {
                let got = vault.read_range(&cap, off, len).await.unwrap();
                let lo = (off as usize).min(size);
                let hi = lo
                    .saturating_add(len.min(usize::MAX as u64) as usize)
                    .min(size);
                assert_eq!(got, data[lo..hi], "size {size} range {off}+{len}");
            }
        }
        // Every mirror holds shares: placement spread the data.
        for s in &stores {
            assert!(!s.share_ids().is_empty(), "{} holds nothing", s.name());
        }
    });
}

#[test]
fn one_store_lost_still_reads_two_of_three() {
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, stores) = common::grid3(2);
        let data = common::seeded_bytes("lost", 6 << 20);
        let cap = vault.put_bytes(&data).await.unwrap();
        for id in stores[1].share_ids() {
            stores[1].tamper(&id, |b| b.clear());
        }
        assert_eq!(vault.get_bytes(&cap).await.unwrap(), data);
    });
}

/// A file of at most `INLINE_MAX` bytes is one share, its root; one byte
/// more and it is a chunk plus a root. Both read back.
#[test]
fn small_files_live_in_their_root() {
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, store) = common::single(1);
        for (size, shares) in [(1usize, 1usize), (INLINE_MAX, 1), (INLINE_MAX + 1, 2)] {
            let before = store.share_ids().len();
            let data = common::seeded_bytes(&format!("inline {size}"), size);
            let cap = vault.put_bytes(&data).await.unwrap();
            let new = store.share_ids().len() - before;
            assert_eq!(new, shares, "size {size}");
            assert!(store.share_ids().contains(&cap.root));
            assert_eq!(vault.get_bytes(&cap).await.unwrap(), data, "size {size}");
            let tail = vault.read_range(&cap, size as u64 - 1, 10).await.unwrap();
            assert_eq!(tail, data[size - 1..], "size {size}");
            // The same bytes again: the same cap, nothing new stored.
            let again = vault.put_bytes(&data).await.unwrap();
            assert_eq!(again.root, cap.root);
            assert_eq!(store.share_ids().len() - before, shares);
        }
    });
}

/// A manifest deeper than one node: many tiny chunks force inner nodes.
#[test]
fn multi_level_manifest_reads_back() {
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, store) = common::single(4);
        let secret = common::secret(4);
        let mut enc = FileEncoder::new(secret.convergence(), Params::new(1, 1).unwrap());
        let mut expected = Vec::new();
        let count = FANOUT * 2 + 7;
        let mut groups = Vec::new();
        for i in 0..count {
            let chunk = format!("chunk {i:05};").into_bytes();
            expected.extend_from_slice(&chunk);
            groups.extend(enc.push_chunk(&chunk));
        }
        let (cap, tail) = enc.finish();
        groups.extend(tail);
        for g in &groups {
            for s in g {
                store.put_share(&s.id(), s.shared_bytes()).await.unwrap();
            }
        }
        assert_eq!(cap.size, expected.len() as u64);
        assert_eq!(vault.get_bytes(&cap).await.unwrap(), expected);
        let mid = expected.len() as u64 / 2;
        assert_eq!(
            vault.read_range(&cap, mid, 1000).await.unwrap(),
            expected[mid as usize..mid as usize + 1000]
        );
    });
}

fn build_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("top.txt"), b"top level\n").unwrap();
    std::fs::write(
        root.join("a/big.bin"),
        common::seeded_bytes("tree big", 2 << 20),
    )
    .unwrap();
    std::fs::write(root.join("a/b/c/deep.txt"), b"deep\n").unwrap();
    std::fs::write(root.join("a/b/empty.txt"), b"").unwrap();
    std::fs::set_permissions(root.join("top.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(root.join("a/b"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("../top.txt", root.join("a/link")).unwrap();
}

/// Compare two trees: names, kinds, contents, modes, symlink targets, and
/// file modification times.
fn assert_same_tree(a: &Path, b: &Path) {
    let mut names_a: Vec<_> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut names_b: Vec<_> = std::fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "{}", a.display());
    for name in names_a {
        let (pa, pb) = (a.join(&name), b.join(&name));
        let (ma, mb) = (
            std::fs::symlink_metadata(&pa).unwrap(),
            std::fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{}", pa.display());
        // Every kind keeps its mtime: files, directories (once filled) and
        // symlinks (their own).
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "mtime of {}",
            pa.display()
        );
        if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&pa).unwrap(),
                std::fs::read_link(&pb).unwrap()
            );
            continue;
        }
        assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "{}", pa.display());
        if ma.is_dir() {
            assert_same_tree(&pa, &pb);
        } else {
            assert_eq!(
                std::fs::read(&pa).unwrap(),
                std::fs::read(&pb).unwrap(),
                "{}",
                pa.display()
            );
            assert_eq!(
                (ma.mtime(), ma.mtime_nsec()),
                (mb.mtime(), mb.mtime_nsec()),
                "{}",
                pa.display()
            );
        }
    }
}

#[test]
fn directory_tree_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_tree(&src);
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, _) = common::grid3(5);
        let tree = vault.put_tree(&src).await.unwrap();
        // Link it into the root, then reach it by path from the root.
        vault
            .link(
                vault.root(),
                "imported",
                lode::dir::Entry::dir(vault.root(), "imported", &tree, 0o755, (0, 0)),
            )
            .await
            .unwrap();
        let found = vault
            .resolve(
                &Cap::DirWrite(vault.root().clone()),
                "imported/a/b/c/deep.txt",
            )
            .await
            .unwrap();
        let deep = vault
            .get_bytes(&found.into_file_read().unwrap())
            .await
            .unwrap();
        assert_eq!(deep, b"deep\n");

        // A read-cap holder gets the whole tree back.
        let read_cap = tree.read_cap();
        let dst = tmp.path().join("dst");
        vault.get_tree(&read_cap, &dst).await.unwrap();
        assert_same_tree(&src, &dst);

        // ...and sees no write-cap below it.
        let sub = vault.resolve(&Cap::DirRead(read_cap), "a/b").await.unwrap();
        assert!(matches!(sub, Cap::DirRead(_)));
    });
}

#[test]
fn slot_updates_bump_seq_and_refuse_rollback() {
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, store) = common::single(6);
        let dir = vault.new_dir().await.unwrap();
        let cap = vault.put_bytes(b"x").await.unwrap();
        let stale = store
            .get_slot(&dir.read_cap().public_key)
            .await
            .unwrap()
            .unwrap();
        vault
            .link(&dir, "x", lode::dir::Entry::file(cap, 0o644, (0, 0)))
            .await
            .unwrap();
        // The store refuses the old version...
        assert!(store.put_slot(&stale).await.is_err());
        // ...and if a store serves it anyway, this client refuses to go back.
        store.tamper_slot(&dir.read_cap().public_key, |b| *b = stale.clone());
        let err = vault.list(&dir.read_cap()).await.unwrap_err();
        assert!(err.to_string().contains("roll"), "{err}");
        // A fresh client (no memory of seq 2) sees seq 1: the reason the CLI
        // persists the seqs it has seen.
        let fresh = Vault::single(&common::secret(6), store.clone());
        assert!(
            fresh
                .list(&dir.read_cap())
                .await
                .unwrap()
                .entries
                .is_empty()
        );
    });
}

#[test]
fn reads_are_served_from_the_cache_only_with_the_right_key() {
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, stores) = common::grid3(2);
        let data = common::seeded_bytes("cached", 3 << 20);
        let cap = vault.put_bytes(&data).await.unwrap();
        assert_eq!(vault.get_bytes(&cap).await.unwrap(), data);
        // Every share on every store emptied: the next read is served
        // from the verified chunks and manifest the first one cached.
        for store in &stores {
            for id in store.share_ids() {
                assert!(store.tamper(&id, |b| b.clear()));
            }
        }
        let at = 1 << 20;
        assert_eq!(
            vault.read_range(&cap, at, 4096).await.unwrap(),
            &data[at as usize..at as usize + 4096]
        );
        // The same root with another key does not reach the cached manifest.
        let mut forged = cap.clone();
        forged.read_key = lode::crypto::ReadKey::from_bytes([9; 32]);
        assert!(vault.get_bytes(&forged).await.is_err());
        // A vault without the cache sees the damage.
        let dyns: Vec<std::sync::Arc<dyn Storage>> = stores
            .iter()
            .map(|s| s.clone() as std::sync::Arc<dyn Storage>)
            .collect();
        let grid = lode::store::Grid::new(dyns, lode::store::GridConfig::default()).unwrap();
        let fresh = Vault::new(&common::secret(2), grid);
        assert!(fresh.get_bytes(&cap).await.is_err());
    });
}

/// Sequential readers through `files`, side by side (a read of 128 KiB
/// of each in turn), as the mount's reads and readahead go: a top-up of
/// the readahead to 32 MiB ahead at the start and once each reader has
/// gone 4 MiB further, each in an even part of the cache. Checks every
/// byte read; returns the reads (after each reader's first) that waited
/// for a fetch of their own.
async fn read_side_by_side(
    vault: &Vault,
    store: &lode::store::MemoryStorage,
    files: &[(&lode::caps::FileReadCap, &[u8])],
) -> usize {
    const READ: u64 = 128 << 10;
    const AHEAD: u64 = 32 << 20;
    const STEP: u64 = 4 << 20;
    let mut at = vec![0u64; files.len()];
    let mut topped = vec![0u64; files.len()];
    let mut waits = 0;
    while at
        .iter()
        .zip(files)
        .any(|(&at, (_, data))| at < data.len() as u64)
    {
        for (i, &(cap, data)) in files.iter().enumerate() {
            let size = data.len() as u64;
            if at[i] >= size {
                continue;
            }
            let asked = store.gets();
            let got = vault.read_range(cap, at[i], READ).await.unwrap();
            assert_eq!(
                got,
                &data[at[i] as usize..(at[i] + READ).min(size) as usize]
            );
            if at[i] > 0 && store.gets() > asked {
                waits += 1;
            }
            let before = at[i];
            at[i] += got.len() as u64;
            if before == 0 || before / STEP != at[i] / STEP {
                // Shared by the readers not at their end, as the mount does.
                let reading = (at.iter().zip(files))
                    .filter(|(at, (_, data))| **at < data.len() as u64)
                    .count();
                let share = (vault.cache_budget() / reading.max(1)) as u64;
                let to = (at[i] + AHEAD).min(size);
                vault
                    .prefetch(cap, topped[i], at[i], to, share)
                    .await
                    .unwrap();
                topped[i] = at[i];
            }
        }
    }
    waits
}

/// Readers going through files as the mount's reads and readahead do,
/// with the smallest cache a mount allows (16 MiB, under the mount's 32
/// MiB of readahead) and with the default. One reader alone: readahead
/// fetches only what the cache holds beside the chunk being read, and
/// keeps the chunks it fetched ahead of the ones read, so every chunk
/// comes from the store once, as one plain read of the file asks. Two
/// side by side share the cache: neither evicts the chunk the other is
/// reading (a cache that evicted chunks already read first took those,
/// and each 128 KiB read fetched its whole chunk again), nor, much, the
/// chunks fetched ahead of it.
#[test]
fn readahead_keeps_the_chunk_being_read() {
    let rt = common::runtime();
    rt.block_on(async {
        let a = common::seeded_bytes("readahead a", 80 << 20);
        let b = common::seeded_bytes("readahead b", 64 << 20);
        let store = std::sync::Arc::new(lode::store::MemoryStorage::new());
        for cache in [16 << 20, lode::store::DEFAULT_CACHE_BYTES] {
            let fresh = || Vault::single(&common::secret(4), store.clone()).with_cache_bytes(cache);
            let (cap_a, cap_b) = (
                fresh().put_bytes(&a).await.unwrap(),
                fresh().put_bytes(&b).await.unwrap(),
            );
            let mut once = 0;
            for (cap, data) in [(&cap_a, &a), (&cap_b, &b)] {
                let before = store.gets();
                assert_eq!(&fresh().get_bytes(cap).await.unwrap(), data);
                once += store.gets() - before;
            }
            assert!(once >= 20, "144 MiB is many chunks ({once} gets)");

            let vault = fresh();
            let before = store.gets();
            for (cap, data) in [(&cap_a, &a), (&cap_b, &b)] {
                let waits = read_side_by_side(&vault, &store, &[(cap, data)]).await;
                assert_eq!(waits, 0, "cache {cache}: a read waited for a fetch");
            }
            assert_eq!(
                store.gets() - before,
                once,
                "cache {cache}: each share fetched once, as by one plain read"
            );

            let vault = fresh();
            let before = store.gets();
            let waits = read_side_by_side(&vault, &store, &[(&cap_a, &a), (&cap_b, &b)]).await;
            let fetched = store.gets() - before;
            // 43 for 36 at 16 MiB: the two readers' chunks, 4-8 MiB each,
            // do not all fit beside each other; a cache that evicted the
            // chunks being read fetched 89-145.
            assert!(
                fetched <= once + once / 4,
                "cache {cache}: two readers side by side fetched {fetched} shares for {once}"
            );
            if cache == lode::store::DEFAULT_CACHE_BYTES {
                assert_eq!(fetched, once, "each share fetched once");
                assert_eq!(waits, 0, "a read after the first waited for a fetch");
            }
        }
    });
}

/// A directory's home (where its listing says it lives) is believed only
/// where that directory names it and is itself reachable, up its own
/// homes, from the root: a name of it elsewhere is then stale. A home that
/// no longer names it (an older lode moved it without updating its home,
/// or the listing was read from a mirror that lags) is not believed, and
/// no name is judged stale by it.
#[test]
fn a_home_is_believed_only_where_it_names_the_directory() {
    use lode::dir::Home;
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, _store) = common::single(31);
        let root = vault.root().clone();
        let p = vault.walk_dirs(&root, "p", true).await.unwrap();
        let q = vault.walk_dirs(&root, "q", true).await.unwrap();
        let d = vault.walk_dirs(&root, "p/d", true).await.unwrap();
        let (top, pr, qr, dr) = (root.read_cap(), p.read_cap(), q.read_cap(), d.read_cap());
        let set_home = |dir: lode::caps::DirWriteCap, home: lode::caps::DirReadCap| {
            let vault = &vault;
            let root = root.clone();
            async move {
                vault
                    .update_dir(&dir, |l| {
                        l.home = Some(Home::seal(&root, &dir.read_cap(), &home));
                        Ok(())
                    })
                    .await
                    .unwrap();
            }
        };
        // Without homes up to the root, nothing can be believed.
        assert!(!vault.lives_in(&pr, &dr).await.unwrap());
        set_home(p.clone(), top.clone()).await;
        set_home(d.clone(), pr.clone()).await;
        assert!(vault.lives_in(&pr, &dr).await.unwrap());
        assert!(vault.lives_in(&top, &pr).await.unwrap());
        // d named in q too, its home p: the name in q is stale.
        assert!(vault.stale_name(&qr, &pr, &dr).await);
        assert!(!vault.stale_name(&pr, &pr, &dr).await);
        // A home that does not name it: not believed.
        assert!(!vault.lives_in(&qr, &dr).await.unwrap());
        assert!(!vault.stale_name(&pr, &qr, &dr).await);
        // p's own home moves to q, which does not name p: p no longer
        // reaches the root, so neither does d through it.
        set_home(p.clone(), qr.clone()).await;
        assert!(!vault.stale_name(&qr, &pr, &dr).await);
        set_home(p.clone(), top.clone()).await;
        // d gone from p (moved by a lode that did not update its home).
        vault
            .update_dir(&p, |l| {
                l.entries.remove("d");
                Ok(())
            })
            .await
            .unwrap();
        assert!(!vault.stale_name(&qr, &pr, &dr).await);
    });
}

/// A directory cap whose read key is not the directory's (put together
/// from two caps, with a valid checksum) is refused with that said: not
/// read as an empty directory by someone who never saw it, not called a
/// rollback by its owner, and `get_tree` makes nothing.
#[test]
fn a_directory_cap_with_another_read_key_is_refused() {
    let rt = common::runtime();
    let tmp = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let (owner, stores) = common::grid3(7);
        let dir = owner.new_dir().await.unwrap();
        let file = owner.put_bytes(b"kept").await.unwrap();
        owner
            .link(&dir, "f", lode::dir::Entry::file(file, 0o644, (0, 0)))
            .await
            .unwrap();
        let right = dir.read_cap();
        let forged = lode::caps::DirReadCap {
            public_key: right.public_key,
            read_key: lode::crypto::ReadKey::from_bytes([9; 32]),
        };
        let dyns: Vec<std::sync::Arc<dyn Storage>> = stores
            .iter()
            .map(|s| s.clone() as std::sync::Arc<dyn Storage>)
            .collect();
        let grid = lode::store::Grid::new(dyns, Default::default()).unwrap();
        let stranger = Vault::new(&lode::crypto::RootSecret::from_bytes([8; 32]), grid);
        for (who, vault) in [("the owner", &owner), ("a stranger", &stranger)] {
            let err = vault.list(&forged).await.map(|l| l.entries.len());
            assert!(
                matches!(err, Err(lode::store::Error::WrongReadKey { .. })),
                "{who}: {err:?}"
            );
            let dst = tmp.path().join(who);
            assert!(vault.get_tree(&forged, &dst).await.is_err(), "{who}");
            assert!(!dst.exists(), "{who}: get_tree left {}", dst.display());
            // The right cap still reads.
            assert_eq!(vault.list(&right).await.unwrap().entries.len(), 1, "{who}");
        }
    });
}
