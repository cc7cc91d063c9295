//! Sparse files: an upload takes a file's holes from the file system
//! instead of reading them, and the file reads back byte for byte.
//!
//! Alone in its test binary, because it reads this process's I/O count
//! (`rchar` in /proc/self/io): the holes must not be read.

mod common;

use std::os::unix::fs::FileExt;

const MIB: u64 = 1 << 20;

/// Bytes this process has read through read(2) and its relatives.
fn bytes_read() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn holes_are_not_read_and_read_back_as_zeros() {
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, stores) = common::grid3(7);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let file = std::fs::File::create_new(&path).unwrap();
        // Data, a 1 GiB hole, data, a 300 MiB hole (not a whole number of
        // chunks), data, and a hole to the end.
        let len = 2048 * MIB;
        file.set_len(len).unwrap();
        let head = common::seeded_bytes("head", 3 * MIB as usize);
        let middle = common::seeded_bytes("middle", 5 * MIB as usize);
        let late = common::seeded_bytes("late", 100_000);
        let (m_at, l_at) = (1027 * MIB, 1332 * MIB + 12345);
        file.write_all_at(&head, 0).unwrap();
        file.write_all_at(&middle, m_at).unwrap();
        file.write_all_at(&late, l_at).unwrap();
        drop(file);

        let before = bytes_read();
        let cap = vault.put_path(&path).await.unwrap();
        let read = bytes_read() - before;
        assert_eq!(cap.size, len);
        // Whether this file system reports holes decides what is read;
        // ext4 and tmpfs do, and there only the data is.
        let holes = {
            let f = std::fs::File::open(&path).unwrap();
            nix::unistd::lseek(&f, 0, nix::unistd::Whence::SeekHole).unwrap() < len as i64
        };
        if holes {
            assert!(
                read < 64 * MIB,
                "{read} bytes read from a file of {} MiB of data",
                (head.len() + middle.len() + late.len()) as u64 / MIB
            );
            // The zero chunks went up once: the mirrors hold the data at
            // 3/2 coding, plus at most a maximum chunk of zeros on either
            // side of each of its three runs and one whole zero chunk, not
            // a GiB of zeros.
            let max = lode::chunk::ChunkerParams::new(0).max;
            let stored: usize = stores.iter().map(|s| s.share_bytes()).sum();
            assert!(
                stored < (8 * MIB as usize + 7 * max) * 3 / 2,
                "{stored} bytes stored"
            );
        } else {
            eprintln!("this file system reports no holes: every byte was read");
        }

        // Every stretch reads back, holes as zeros, across each boundary.
        let expect = |at: u64, n: u64| -> Vec<u8> {
            let mut out = vec![0u8; n as usize];
            for (data, start) in [(&head, 0), (&middle, m_at), (&late, l_at)] {
                let (lo, hi) = (at.max(start), (at + n).min(start + data.len() as u64));
                if lo < hi {
                    out[(lo - at) as usize..(hi - at) as usize]
                        .copy_from_slice(&data[(lo - start) as usize..(hi - start) as usize]);
                }
            }
            out
        };
        for (at, n) in [
            (0, 4 * MIB),
            (3 * MIB - 100, 200),
            (512 * MIB, 4096),
            (m_at - 10, 100),
            (m_at + 5 * MIB - 50, 100),
            (1200 * MIB + 7, 9 * MIB),
            (l_at - 1, 100_002),
            (len - 4096, 4096),
        ] {
            let got = vault.read_range(&cap, at, n).await.unwrap();
            assert!(got == expect(at, n), "bytes {at}+{n} differ");
        }

        // Downloaded into a file, the holes are holes again.
        let back = std::fs::File::create_new(dir.path().join("back.img")).unwrap();
        vault.get_to_file(&cap, &back).await.unwrap();
        let meta = back.metadata().unwrap();
        assert_eq!(meta.len(), len);
        if holes {
            use std::os::unix::fs::MetadataExt;
            assert!(meta.blocks() * 512 < 64 * MIB, "{} blocks", meta.blocks());
        }
        for (at, n) in [(0, 4 * MIB), (m_at - 10, 5 * MIB + 20), (l_at - 1, 100_002)] {
            let mut got = vec![0xffu8; n as usize];
            back.read_exact_at(&mut got, at).unwrap();
            assert!(got == expect(at, n), "downloaded bytes {at}+{n} differ");
        }
    });
}

/// A file with no holes (or holes too short to skip) goes up whole, read
/// from its first byte: finding the holes must not move where it is read.
#[test]
fn files_without_long_holes_read_back_whole() {
    let rt = common::runtime();
    rt.block_on(async {
        let (vault, _stores) = common::grid3(8);
        let dir = tempfile::tempdir().unwrap();
        for (name, len, hole_at) in [
            ("dense", 9 * MIB + 5, None),
            ("short hole", 12 * MIB, Some(3 * MIB)),
        ] {
            let path = dir.path().join(name);
            let data = common::seeded_bytes(name, len as usize);
            let file = std::fs::File::create_new(&path).unwrap();
            file.set_len(len).unwrap();
            let mut want = data.clone();
            match hole_at {
                // 4 MiB of hole, under two maximum chunks: read as zeros.
                Some(at) => {
                    file.write_all_at(&data[..at as usize], 0).unwrap();
                    let end = at + 4 * MIB;
                    file.write_all_at(&data[end as usize..], end).unwrap();
                    want[at as usize..end as usize].fill(0);
                }
                None => file.write_all_at(&data, 0).unwrap(),
            }
            drop(file);
            let cap = vault.put_path(&path).await.unwrap();
            assert_eq!(cap.size, len, "{name}");
            assert!(vault.get_bytes(&cap).await.unwrap() == want, "{name}");
        }
    });
}

/// `lode put` takes the same hole search: 128 GiB of hole, which reading
/// would take the command most of an hour (past the test client's 300 s
/// bound), go up in seconds, and `lode get -o` writes them back as holes.
#[test]
fn the_cli_puts_a_sparse_file_without_reading_its_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("vm.img");
    let len = 128 << 30;
    let file = std::fs::File::create_new(&path).unwrap();
    file.set_len(len).unwrap();
    let tail = common::seeded_bytes("tail", 500_000);
    let at = len - MIB + 7;
    file.write_all_at(&tail, at).unwrap();
    if nix::unistd::lseek(&file, 0, nix::unistd::Whence::SeekHole).unwrap() == len as i64 {
        eprintln!("this file system reports no holes: skipped");
        return;
    }
    drop(file);
    let (_mirrors, client) = common::three_mirrors_and_client(tmp.path());
    let cap = client.ok(&["put", path.to_str().unwrap()]);
    let back = tmp.path().join("back.img");
    client.ok(&["get", cap.trim(), "-o", back.to_str().unwrap()]);
    let back = std::fs::File::open(&back).unwrap();
    let meta = back.metadata().unwrap();
    assert_eq!(meta.len(), len);
    {
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 64 * MIB, "{} blocks", meta.blocks());
    }
    let mut got = vec![0xffu8; tail.len() + 20];
    back.read_exact_at(&mut got, at - 10).unwrap();
    assert!(
        got[..10]
            .iter()
            .chain(&got[10 + tail.len()..])
            .all(|&b| b == 0)
    );
    assert!(
        got[10..10 + tail.len()] == tail[..],
        "the data after the hole"
    );
    let mut hole = vec![0xffu8; 4096];
    back.read_exact_at(&mut hole, len / 2).unwrap();
    assert!(hole.iter().all(|&b| b == 0));
}
