//! Where share files live under a mirror's `shares/` directory, and the
//! move of an older layout to the current one.
//!
//! Version 2 (now): `shares/ab/<64 hex>`, one level of 256 shard
//! directories by the id's first byte, all made when the store is first
//! opened, so storing a share never makes a directory. The version is the
//! text of `shares/LAYOUT`.
//!
//! Version 1 (no `LAYOUT` file): `shares/ab/cd/<64 hex>`, two levels made
//! as shares arrived. On a young mirror nearly every share made one or two
//! directories, and each new directory's parent had to be fsynced too: on
//! the benchmark's disk, making them took about a ninth of the three
//! mirrors' CPU (docs/PERFORMANCE.md, "Shard directories made once").
//! One level holds enough: ext4 indexes a directory of millions of entries
//! (about 10 million without `large_dir`, so 2.5 billion shares over 256
//! directories), and XFS and btrfs have no such bound.
//!
//! Opening a version-1 store moves every share up a level and then writes
//! `LAYOUT`; a move cut short by a crash is finished by the next open, since
//! each rename is atomic and the version is written last. A version-2 store
//! that an older lode wrote to since (into `ab/cd/`, which it made) is moved
//! again: a shard directory holding directories has a link count above 2.

use std::path::{Path, PathBuf};

use super::{Error, Result};
use crate::chunk::ShareId;
use crate::protocol::hex;

/// The layout this code writes.
pub const LAYOUT_VERSION: u32 = 2;

/// The file under `shares/` that names the layout's version.
const LAYOUT_FILE: &str = "LAYOUT";

/// The file that holds share `id` under `shares`.
pub fn share_path(shares: &Path, id: &ShareId) -> PathBuf {
    let h = hex(id);
    shares.join(&h[..2]).join(h)
}

/// Make `shares` ready for the current layout: create it and its shard
/// directories, moving a version-1 store forward. Refuses a newer layout.
pub fn prepare(shares: &Path) -> Result<()> {
    std::fs::create_dir_all(shares).map_err(at(shares))?;
    let move_up = match read_version(shares)? {
        Some(LAYOUT_VERSION) => older_writes(shares)?,
        Some(v) if v > LAYOUT_VERSION => {
            return Err(Error::Layout(format!(
                "{}: version {v} is not supported (this mirror reads up to {LAYOUT_VERSION})",
                shares.display()
            )));
        }
        Some(v) => {
            return Err(Error::Layout(format!(
                "{}: unknown version {v} (version 1 has no LAYOUT file)",
                shares.display()
            )));
        }
        None => true,
    };
    if move_up {
        let moved = upgrade(shares)?;
        if moved > 0 {
            tracing::info!(
                shares = moved,
                "share files moved to layout {LAYOUT_VERSION}"
            );
        }
    }
    Ok(())
}

/// An I/O error with the path it concerns.
fn at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Layout(format!("{}: {e}", path.display()))
}

/// Whether a lode of layout 1 wrote to this version-2 store: some shard
/// directory holds a directory (its link count is above 2). Where link
/// counts do not count subdirectories (btrfs), this finds nothing.
fn older_writes(shares: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    for byte in 0..=255u8 {
        let shard = shares.join(format!("{byte:02x}"));
        match std::fs::metadata(&shard) {
            Ok(meta) if meta.nlink() > 2 => return Ok(true),
            Ok(_) => {}
            // Made again by the next share that needs it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(&shard)(e)),
        }
    }
    Ok(false)
}

fn read_version(shares: &Path) -> Result<Option<u32>> {
    let path = shares.join(LAYOUT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            Error::Layout(format!(
                "{}: not a version number: {text:?}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(at(&path)(e)),
    }
}

/// Whether `name` spells `N` bytes in hex, as a shard directory (1) or a
/// share file (32) is named.
fn is_hex<const N: usize>(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| crate::protocol::parse_hex::<N>(n).is_ok())
}

/// How many directories are under `dir`, at any depth.
#[cfg(test)]
pub(super) fn dirs_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| 1 + dirs_under(&e.path()))
        .sum()
}

/// Make the 256 shard directories, move version-1 shares into them, make
/// it all durable, then write the version. Returns how many shares moved.
fn upgrade(shares: &Path) -> Result<usize> {
    let mut moved = 0;
    for byte in 0..=255u8 {
        let shard = shares.join(format!("{byte:02x}"));
        match std::fs::create_dir(&shard) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(at(&shard)(e)),
            _ => {}
        }
        // Version 1's second level: `ab/cd/`, two hex digits. Version 2
        // holds only files named by 64 hex digits here.
        let mut old = Vec::new();
        for entry in std::fs::read_dir(&shard).map_err(at(&shard))? {
            let entry = entry.map_err(at(&shard))?;
            let is_dir = entry.file_type().map_err(at(&entry.path()))?.is_dir();
            if is_dir && is_hex::<1>(&entry.file_name()) {
                old.push(entry.path());
            }
        }
        if old.is_empty() {
            continue;
        }
        for dir in &old {
            for entry in std::fs::read_dir(dir).map_err(at(dir))? {
                let entry = entry.map_err(at(dir))?;
                let name = entry.file_name();
                if is_hex::<32>(&name) {
                    let from = entry.path();
                    std::fs::rename(&from, shard.join(&name)).map_err(at(&from))?;
                    moved += 1;
                }
            }
            // Its entries gone on disk too: a crash must not bring back a
            // second name for a share, which GC would later leave behind.
            sync_dir(dir)?;
        }
        // The shares' new names are durable before their old directories
        // go, and the directories' removal before the version is written.
        sync_dir(&shard)?;
        for dir in &old {
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "old shard directory kept");
            }
        }
        sync_dir(&shard)?;
    }
    let tmp = shares.join(format!("{LAYOUT_FILE}.tmp"));
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp).map_err(at(&tmp))?;
        writeln!(file, "{LAYOUT_VERSION}").map_err(at(&tmp))?;
        file.sync_all().map_err(at(&tmp))?;
    }
    std::fs::rename(&tmp, shares.join(LAYOUT_FILE)).map_err(at(&tmp))?;
    sync_dir(shares)?;
    Ok(moved)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A share file at its version-1 place, named by the id of `bytes`.
    fn old_share(shares: &Path, bytes: &[u8]) -> (ShareId, PathBuf) {
        let id = crate::chunk::share_id(bytes);
        let h = hex(&id);
        let dir = shares.join(&h[..2]).join(&h[2..4]);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(&h);
        std::fs::write(&path, bytes).unwrap();
        (id, path)
    }

    #[test]
    fn a_new_store_has_every_shard_directory_and_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let shares = dir.path().join("shares");
        prepare(&shares).unwrap();
        assert_eq!(dirs_under(&shares), 256);
        let text = std::fs::read_to_string(shares.join(LAYOUT_FILE)).unwrap();
        assert_eq!(text.trim(), LAYOUT_VERSION.to_string());
        let id = crate::chunk::share_id(b"x");
        let path = share_path(&shares, &id);
        assert!(path.parent().unwrap().is_dir());
        assert_eq!(path.parent().unwrap().parent().unwrap(), shares);
        // Opening again changes nothing.
        prepare(&shares).unwrap();
        assert_eq!(dirs_under(&shares), 256);
    }

    #[test]
    fn a_version_1_store_is_moved_up_a_level() {
        let dir = tempfile::tempdir().unwrap();
        let shares = dir.path().join("shares");
        let olds: Vec<_> = (0..40u32)
            .map(|i| old_share(&shares, format!("share {i}").as_bytes()))
            .collect();
        prepare(&shares).unwrap();
        for (i, (id, old)) in olds.iter().enumerate() {
            assert!(!old.exists());
            let bytes = std::fs::read(share_path(&shares, id)).unwrap();
            assert_eq!(bytes, format!("share {i}").as_bytes());
        }
        // Only the 256 shard directories are left.
        assert_eq!(dirs_under(&shares), 256);
        assert_eq!(read_version(&shares).unwrap(), Some(LAYOUT_VERSION));
    }

    #[test]
    fn a_move_cut_short_is_finished_by_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let shares = dir.path().join("shares");
        let (a, a_old) = old_share(&shares, b"moved before the crash");
        let (b, b_old) = old_share(&shares, b"still at its old place");
        // The crash came after `a` moved, before the version was written.
        let a_new = share_path(&shares, &a);
        std::fs::create_dir_all(a_new.parent().unwrap()).unwrap();
        std::fs::rename(&a_old, &a_new).unwrap();
        prepare(&shares).unwrap();
        assert_eq!(std::fs::read(&a_new).unwrap(), b"moved before the crash");
        assert!(!b_old.exists());
        let b_new = share_path(&shares, &b);
        assert_eq!(std::fs::read(b_new).unwrap(), b"still at its old place");
        assert_eq!(dirs_under(&shares), 256);
    }

    #[test]
    fn a_newer_or_unreadable_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shares = dir.path().join("shares");
        std::fs::create_dir_all(&shares).unwrap();
        std::fs::write(shares.join(LAYOUT_FILE), "3\n").unwrap();
        let err = prepare(&shares).unwrap_err().to_string();
        assert!(err.contains("version 3 is not supported"), "{err}");
        std::fs::write(shares.join(LAYOUT_FILE), "two\n").unwrap();
        let err = prepare(&shares).unwrap_err().to_string();
        assert!(err.contains("not a version number"), "{err}");
        std::fs::write(shares.join(LAYOUT_FILE), "1\n").unwrap();
        let err = prepare(&shares).unwrap_err().to_string();
        assert!(err.contains("unknown version 1"), "{err}");
    }

    /// An older lode run on a moved store writes shares two levels down
    /// again: the next open moves them up too.
    #[test]
    fn shares_an_older_lode_wrote_since_are_moved_up_as_well() {
        let dir = tempfile::tempdir().unwrap();
        let shares = dir.path().join("shares");
        prepare(&shares).unwrap();
        let (id, old) = old_share(&shares, b"written by an older lode");
        use std::os::unix::fs::MetadataExt;
        let shard = old.parent().unwrap().parent().unwrap();
        if std::fs::metadata(shard).unwrap().nlink() <= 2 {
            eprintln!("this file system's link counts do not count subdirectories");
            return;
        }
        // Opening again finds the shard holding a directory.
        prepare(&shares).unwrap();
        assert!(!old.exists());
        let bytes = std::fs::read(share_path(&shares, &id)).unwrap();
        assert_eq!(bytes, b"written by an older lode");
        assert_eq!(dirs_under(&shares), 256);
    }
}
