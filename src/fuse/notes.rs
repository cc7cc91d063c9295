//! Recovery notes: where each staged file belongs (its path under the
//! root and its mode), so that staged data survives a crash of the mount
//! and is uploaded and linked by the next one.
//!
//! A note is an extended attribute of the staged file itself
//! (`user.lode.note`, JSON `{"path", "mode", "uid", "gid", "base",
//! "replaces", "left", "partial"}`; notes written before the owner was
//! recorded lack `uid` and `gid`, and their files go to the mounting user
//! as before; `base`, `replaces` and `left` are in [`Base`],
//! [`Note::replaces`] and [`Note::left`];
//! `partial`, the read-cap of the version a partly staged copy lacks the
//! bytes of, is in [`super::partial`]): writing it replaces the old one
//! atomically, and it goes away with the file. Where the staging
//! file system has no user xattrs, or the note is too large for one, the
//! note is a file beside the data (`<staged>.note`), replaced by rename.
//! The attribute saves two inode allocations per note (a temporary file,
//! then the replaced note), which an untar of many files pays on every
//! create and chmod.

use std::path::{Path, PathBuf};

const ATTR: &str = "user.lode.note";

/// Where a note lives when it cannot be an attribute.
pub fn note_file(staged: &Path) -> PathBuf {
    staged.with_extension("note")
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM))
}

/// Where a staged file belongs, and what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Its path under the root.
    pub path: String,
    pub mode: u32,
    /// Its owner (uid, gid), if the note records one.
    pub owner: Option<(u32, u32)>,
    pub base: Base,
    /// Published versions of other files that a rename put this one in
    /// place of, at `path` (JSON: a list of manifest roots in hex, absent
    /// when empty). Until the rename is published, one of them is what the
    /// mirrors hold at `path`, and it is no sign of a change made
    /// elsewhere: recovery replaces it as it replaces `base`. A program
    /// that saves by writing a new file and renaming it over the old one
    /// depends on this.
    pub replaces: Vec<crate::crypto::Hash>,
    /// Names this file was renamed away from, with the version the mirrors
    /// still list there until those directories are published (JSON: a
    /// list of `{"path", "root"}`, absent when empty). Recovery removes
    /// such a name if it still holds that version, as the crashed mount's
    /// publish would have: the rename is the user's, and without it the
    /// old name came back beside the new one.
    pub left: Vec<(String, crate::crypto::Hash)>,
    /// For a partly staged copy: the version whose bytes it lacks.
    pub partial: Option<crate::caps::FileReadCap>,
}

/// Which published version of the file the staged copy began from: what
/// recovery may replace with it. A file at the path that is another
/// version was changed elsewhere (the same identity mounted on another
/// machine) since, and recovery keeps both rather than lose that change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// A note written before bases were recorded: it replaces what it
    /// finds, as it always did.
    Unknown,
    /// No published version: a file made here.
    New,
    /// The published version with this manifest root (JSON: its hex).
    /// The root share id names one content, and is no key.
    Version(crate::crypto::Hash),
}

/// Record where `staged`'s data belongs.
pub fn write(staged: &Path, note: &Note) -> std::io::Result<()> {
    let mut json = serde_json::json!({"path": note.path, "mode": note.mode});
    if let Some((uid, gid)) = note.owner {
        json["uid"] = uid.into();
        json["gid"] = gid.into();
    }
    match note.base {
        Base::Unknown => {}
        Base::New => json["base"] = "new".into(),
        Base::Version(root) => json["base"] = crate::protocol::hex(&root).into(),
    }
    if !note.replaces.is_empty() {
        json["replaces"] = note
            .replaces
            .iter()
            .map(|root| crate::protocol::hex(root))
            .collect::<Vec<_>>()
            .into();
    }
    if !note.left.is_empty() {
        json["left"] = note
            .left
            .iter()
            .map(|(path, root)| serde_json::json!({"path": path, "root": crate::protocol::hex(root)}))
            .collect::<Vec<_>>()
            .into();
    }
    if let Some(cap) = &note.partial {
        json["partial"] = crate::caps::Cap::FileRead(cap.clone()).to_string().into();
    }
    let note = json.to_string();
    match xattr::set(staged, ATTR, note.as_bytes()) {
        Ok(()) => Ok(()),
        // No user attributes here, or a note too large for one (ext4
        // keeps an attribute within one block and answers ENOSPC, or
        // E2BIG past 64 KiB: a deep path with names it left): a file.
        Err(e) if unsupported(&e) || too_large(&e) => {
            write_file(staged, &note)?;
            // An older note in the attribute would be read first.
            match xattr::remove(staged, ATTR) {
                Err(e) if e.raw_os_error() != Some(libc::ENODATA) && !unsupported(&e) => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}

fn too_large(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::E2BIG))
}

/// The note as a file beside `staged`, replaced atomically and durably:
/// the new one synced before the rename, the directory after, so that a
/// power cut leaves the old note or the new one, never an empty one.
fn write_file(staged: &Path, note: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = note_file(staged).with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(note.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, note_file(staged))?;
    match staged.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Where `staged` belongs, if it has a note.
pub fn read(staged: &Path) -> Option<Note> {
    let bytes = match xattr::get(staged, ATTR) {
        Ok(Some(b)) => b,
        _ => std::fs::read(note_file(staged)).ok()?,
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let id = |key: &str| v[key].as_u64().and_then(|n| u32::try_from(n).ok());
    Some(Note {
        path: v["path"].as_str()?.to_string(),
        // Only the low 12 bits are used; an odd value must not make the
        // note unreadable (recovery drops a staged file without one).
        mode: v["mode"].as_u64()? as u32,
        owner: id("uid").zip(id("gid")),
        // One that cannot be read replaces nothing: both are kept.
        base: match v.get("base") {
            None => Base::Unknown,
            Some(b) if b == "new" => Base::New,
            Some(b) => b
                .as_str()
                .and_then(|h| crate::protocol::parse_hex::<32>(h).ok())
                .map_or(Base::New, Base::Version),
        },
        // One that cannot be read is left out: it is kept beside.
        replaces: v["replaces"].as_array().map_or_else(Vec::new, |roots| {
            roots
                .iter()
                .filter_map(|h| crate::protocol::parse_hex::<32>(h.as_str()?).ok())
                .collect()
        }),
        // One that cannot be read is left out: that name stays.
        left: v["left"].as_array().map_or_else(Vec::new, |left| {
            left.iter()
                .filter_map(|l| {
                    let root = crate::protocol::parse_hex::<32>(l["root"].as_str()?).ok()?;
                    Some((l["path"].as_str()?.to_string(), root))
                })
                .collect()
        }),
        // A partly staged copy whose base cannot be read is not to be
        // taken as whole: the note is unreadable.
        partial: match v.get("partial") {
            None => None,
            Some(cap) => Some(
                cap.as_str()?
                    .parse::<crate::caps::Cap>()
                    .ok()?
                    .into_file_read()
                    .ok()?,
            ),
        },
    })
}

/// Whether `staged` carries a note at all, readable or not.
pub fn exists(staged: &Path) -> bool {
    matches!(xattr::get(staged, ATTR), Ok(Some(_))) || note_file(staged).exists()
}

/// Forget where `staged` belongs: its data is now only a cache.
pub fn remove(staged: &Path) {
    let _ = xattr::remove(staged, ATTR);
    let _ = std::fs::remove_file(note_file(staged));
}

/// Whether `file` in the staging directory is a note file, not data.
pub fn is_note_file(file: &Path) -> bool {
    matches!(
        file.extension().and_then(|e| e.to_str()),
        Some("note") | Some("tmp")
    )
}

/// The staged data file a note file belongs to.
pub fn data_of(note: &Path) -> PathBuf {
    note.with_extension("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_written_replaced_read_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("0123abcd");
        std::fs::write(&staged, b"data").unwrap();
        assert_eq!(read(&staged), None);
        let note = |path: &str, mode, owner, base| Note {
            path: path.into(),
            mode,
            owner,
            base,
            replaces: Vec::new(),
            left: Vec::new(),
            partial: None,
        };
        write(&staged, &note("a/b", 0o644, None, Base::New)).unwrap();
        assert_eq!(read(&staged), Some(note("a/b", 0o644, None, Base::New)));
        let changed = Note {
            replaces: vec![[5; 32], [6; 32]],
            left: vec![("a/b".into(), [4; 32]), ("d/e f".into(), [3; 32])],
            ..note("a/c", 0o600, Some((1234, 5678)), Base::Version([7; 32]))
        };
        write(&staged, &changed).unwrap();
        assert_eq!(read(&staged), Some(changed.clone()));
        let partly = Note {
            partial: Some(crate::caps::FileReadCap {
                read_key: crate::crypto::ReadKey::from_bytes([9; 32]),
                root: [8; 32],
                size: 12 << 20,
            }),
            ..changed
        };
        write(&staged, &partly).unwrap();
        assert_eq!(read(&staged), Some(partly));
        remove(&staged);
        assert_eq!(read(&staged), None);
        // Nothing but the data file is left, whichever way the note went.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    /// A note too large for an attribute (ext4 keeps one within a block)
    /// goes to a file, and the smaller note before it in the attribute no
    /// longer answers. Its write failed, and recovery then took the file
    /// for a cache and removed it.
    #[test]
    fn a_note_too_large_for_an_attribute_is_written_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("beef");
        std::fs::write(&staged, b"data").unwrap();
        let small = Note {
            path: "a".into(),
            mode: 0o644,
            owner: None,
            base: Base::New,
            replaces: Vec::new(),
            left: Vec::new(),
            partial: None,
        };
        // Names it left, deep down: about 8 KiB of note (over ext4's
        // block) and 80 KiB (over any attribute's 64 KiB).
        let deep = "some directory/".repeat(60);
        for names in [8, 80] {
            write(&staged, &small).unwrap();
            let large = Note {
                left: (0..names)
                    .map(|i| (format!("{deep}{i}"), [i as u8; 32]))
                    .collect(),
                ..small.clone()
            };
            write(&staged, &large).unwrap();
            assert_eq!(read(&staged), Some(large), "{names} names");
            remove(&staged);
            assert_eq!(read(&staged), None);
        }
    }

    #[test]
    fn a_note_file_from_a_file_system_without_xattrs_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("feed");
        std::fs::write(&staged, b"data").unwrap();
        // As an earlier mount wrote it: no owner.
        std::fs::write(note_file(&staged), br#"{"path":"x/y","mode":420}"#).unwrap();
        let old = Note {
            path: "x/y".into(),
            mode: 420,
            owner: None,
            base: Base::Unknown,
            replaces: Vec::new(),
            left: Vec::new(),
            partial: None,
        };
        assert_eq!(read(&staged), Some(old));
        assert!(is_note_file(&note_file(&staged)));
        assert_eq!(data_of(&note_file(&staged)), staged);
        remove(&staged);
        assert!(!note_file(&staged).exists());
    }
}
