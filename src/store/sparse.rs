//! The holes of a sparse file, as the file system reports them
//! (`SEEK_DATA` / `SEEK_HOLE`).
//!
//! A file made by `truncate -s 1T`, `dd seek=` or a virtual machine's disk
//! image has holes that read as zeros and occupy nothing. Reading a hole
//! only to chunk, hash and seal its zeros costs a pass over every byte:
//! hours for a terabyte. An upload instead asks the file system where the
//! holes are and stores each large one as a run of identical zero chunks,
//! sealed once (`Vault::put_path`). Nothing in the stored format marks a
//! hole: the file reads back exactly as before, zeros included.

use std::fs::File;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

/// A stretch of a file: bytes to read, or a hole that reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Extent {
    Data { start: u64, len: u64 },
    Hole { len: u64 },
}

/// The stretches of `file`'s first `len` bytes, in order, together
/// covering all of them. Holes shorter than `min_hole` are left inside
/// the data around them (they read as zeros, cheaply), so the data keeps
/// its content-defined chunk boundaries. A file system that reports no
/// holes gives one data stretch. Moves `file`'s offset.
pub(super) fn extents(file: &File, len: u64, min_hole: u64) -> std::io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    // The data stretch not yet pushed starts here.
    let mut data_start = 0u64;
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(file, pos, Whence::SeekData) {
            Ok(d) => d.min(len),
            // No data after `pos`: a hole to the end.
            Err(Errno::ENXIO) => len,
            // Holes not reported here: all of it is data.
            Err(Errno::EINVAL) => return Ok(vec![Extent::Data { start: 0, len }]),
            Err(e) => return Err(e.into()),
        };
        if data - pos >= min_hole {
            if pos > data_start {
                out.push(Extent::Data {
                    start: data_start,
                    len: pos - data_start,
                });
            }
            out.push(Extent::Hole { len: data - pos });
            data_start = data;
        }
        if data >= len {
            break;
        }
        // Every file ends in a hole, the implicit one at its end.
        pos = seek(file, data, Whence::SeekHole)?.min(len);
        if pos <= data {
            // A file system that answers a hole where it just said data
            // begins (an old ZFS bug) cannot be trusted: read it all.
            return Ok(vec![Extent::Data { start: 0, len }]);
        }
    }
    if len > data_start {
        out.push(Extent::Data {
            start: data_start,
            len: len - data_start,
        });
    }
    Ok(out)
}

fn seek(file: &File, pos: u64, whence: Whence) -> Result<u64, Errno> {
    let pos = i64::try_from(pos).map_err(|_| Errno::EOVERFLOW)?;
    lseek(file, pos, whence).map(|p| p as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    const MIB: u64 = 1 << 20;

    /// Whether the file system under the temporary directory reports
    /// holes at all (tmpfs and ext4 do); where it does not, every file is
    /// one data stretch, which the tests accept.
    fn reports_holes(file: &File, len: u64) -> bool {
        extents(file, len, 1)
            .unwrap()
            .iter()
            .any(|e| matches!(e, Extent::Hole { .. }))
    }

    #[test]
    fn holes_are_found_between_data_and_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create_new(dir.path().join("sparse")).unwrap();
        file.set_len(100 * MIB).unwrap();
        file.write_all_at(b"head", 0).unwrap();
        file.write_all_at(b"middle", 40 * MIB).unwrap();
        let len = file.metadata().unwrap().len();
        if !reports_holes(&file, len) {
            eprintln!("skipped: this file system reports no holes");
            return;
        }
        let got = extents(&file, len, 8 * MIB).unwrap();
        // Data stretches are whole blocks around what was written.
        let [
            Extent::Data { start: 0, len: a },
            Extent::Hole { len: h1 },
            Extent::Data { start: s2, len: b },
            Extent::Hole { len: h2 },
        ] = got[..]
        else {
            panic!("two data stretches, each followed by a hole: {got:?}")
        };
        assert!((4..MIB).contains(&a), "{got:?}");
        assert_eq!(s2, a + h1);
        assert!(s2 <= 40 * MIB && s2 + b >= 40 * MIB + 6, "{got:?}");
        assert_eq!(s2 + b + h2, len, "the stretches cover the file");
    }

    #[test]
    fn short_holes_stay_inside_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create_new(dir.path().join("sparse")).unwrap();
        file.set_len(14 * MIB).unwrap();
        file.write_all_at(b"a", 0).unwrap();
        file.write_all_at(b"b", 6 * MIB).unwrap();
        file.write_all_at(b"c", 12 * MIB).unwrap();
        let len = file.metadata().unwrap().len();
        assert_eq!(
            extents(&file, len, 8 * MIB).unwrap(),
            [Extent::Data { start: 0, len }],
            "holes under 8 MiB are read as data"
        );
        // With no data at all, the file is one hole.
        let empty = File::create_new(dir.path().join("empty")).unwrap();
        empty.set_len(64 * MIB).unwrap();
        if reports_holes(&empty, 64 * MIB) {
            assert_eq!(
                extents(&empty, 64 * MIB, 8 * MIB).unwrap(),
                [Extent::Hole { len: 64 * MIB }]
            );
        }
        assert_eq!(extents(&empty, 0, 8 * MIB).unwrap(), []);
    }
}
