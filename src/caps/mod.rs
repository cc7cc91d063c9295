//! Capabilities: the unforgeable strings that carry access.
//!
//! This layer owns the cap types, their downgrade, and their string form
//! `lode:<kind>:<version>:<base32(payload ‖ checksum)>` (see docs/FORMATS.md).
//! It builds on `crypto` for the key types and does no I/O.
//!
//! | kind     | grants                                   | payload                      |
//! |----------|------------------------------------------|------------------------------|
//! | `dir-rw` | change a directory, and its subtree       | slot seed (32)               |
//! | `dir-ro` | read a directory, read-only, transitively | public key (32), read key (32) |
//! | `dir-v`  | check and repair a directory's slot       | public key (32)              |
//! | `file`   | read an immutable file                    | read key (32), root id (32), size (8) |
//! | `file-v` | check and repair a file's shares          | verify key (32), root id (32), size (8) |
//!
//! Files are immutable and content-addressed (Tahoe's CHK model), so a file
//! has no write-cap of its own: the power to change a file is the write-cap
//! of the directory that names it.

mod string;

use crate::crypto::{Hash, ReadKey, SlotSeed, VerifyKey};

pub use string::{CAP_VERSION, is_cap_text};

/// Errors from parsing a cap string. Each says what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("not a lode cap: it must start with \"lode:\"")]
    MissingPrefix,
    #[error("malformed cap: expected lode:<kind>:<version>:<data>")]
    Malformed,
    #[error("unknown cap kind {0:?} (expected dir-rw, dir-ro, dir-v, file or file-v)")]
    UnknownKind(String),
    #[error("unsupported cap version {found:?} (this lode reads version {supported})")]
    UnsupportedVersion { found: String, supported: u8 },
    #[error(
        "cap data has {found:?} at character {at}, which base32 does not use: the cap was mistyped"
    )]
    BadCharacter { found: char, at: usize },
    #[error(
        "cap data is {len} characters, a length base32 never has: the cap was truncated or run into other text"
    )]
    BadEncodedLength { len: usize },
    #[error("{kind} cap data has {got} bytes, expected {expected}")]
    BadLength {
        kind: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("cap checksum mismatch: the cap was mistyped or truncated")]
    Checksum,
    #[error("cap holds an invalid public key")]
    BadPublicKey,
    #[error("expected a {expected} cap, got a {got} cap")]
    WrongKind {
        expected: &'static str,
        got: &'static str,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Access levels, ordered from most to least power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Write,
    Read,
    Verify,
}

/// Write-cap of a directory: the seed of its slot's signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirWriteCap {
    pub seed: SlotSeed,
}

/// Read-cap of a directory: where its slot is, and how to decrypt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirReadCap {
    pub public_key: [u8; 32],
    pub read_key: ReadKey,
}

/// Verify-cap of a directory: names the slot, decrypts nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirVerifyCap {
    pub public_key: [u8; 32],
}

/// Read-cap of an immutable file: its manifest root share and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReadCap {
    pub read_key: ReadKey,
    pub root: Hash,
    pub size: u64,
}

/// Verify-cap of an immutable file: enough to find and check every share,
/// not enough to decrypt a byte of content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileVerifyCap {
    pub verify_key: VerifyKey,
    pub root: Hash,
    pub size: u64,
}

/// Any capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cap {
    DirWrite(DirWriteCap),
    DirRead(DirReadCap),
    DirVerify(DirVerifyCap),
    FileRead(FileReadCap),
    FileVerify(FileVerifyCap),
}

impl DirWriteCap {
    pub fn read_cap(&self) -> DirReadCap {
        DirReadCap {
            public_key: self.seed.public_key(),
            read_key: self.seed.read_key(),
        }
    }
}

impl DirReadCap {
    pub fn verify_cap(&self) -> DirVerifyCap {
        DirVerifyCap {
            public_key: self.public_key,
        }
    }
}

impl FileReadCap {
    pub fn verify_cap(&self) -> FileVerifyCap {
        FileVerifyCap {
            verify_key: self.read_key.verify_key(),
            root: self.root,
            size: self.size,
        }
    }
}

impl Cap {
    pub fn access(&self) -> Access {
        match self {
            Cap::DirWrite(_) => Access::Write,
            Cap::DirRead(_) | Cap::FileRead(_) => Access::Read,
            Cap::DirVerify(_) | Cap::FileVerify(_) => Access::Verify,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Cap::DirWrite(_) | Cap::DirRead(_) | Cap::DirVerify(_))
    }

    /// The cap at `access`, or this cap unchanged if it is already weaker.
    /// Total: every cap has every weaker form, and nothing gains power.
    pub fn downgrade(&self, access: Access) -> Cap {
        match (self, access) {
            (Cap::DirWrite(w), Access::Read) => Cap::DirRead(w.read_cap()),
            (Cap::DirWrite(w), Access::Verify) => Cap::DirVerify(w.read_cap().verify_cap()),
            (Cap::DirRead(r), Access::Verify) => Cap::DirVerify(r.verify_cap()),
            (Cap::FileRead(r), Access::Verify) => Cap::FileVerify(r.verify_cap()),
            (Cap::DirWrite(_), Access::Write)
            | (Cap::DirRead(_), Access::Write | Access::Read)
            | (Cap::DirVerify(_), _)
            | (Cap::FileRead(_), Access::Write | Access::Read)
            | (Cap::FileVerify(_), _) => self.clone(),
        }
    }

    /// The read-level form of this cap (the weaker form for verify-caps).
    pub fn read_cap(&self) -> Cap {
        self.downgrade(Access::Read)
    }

    pub fn verify_cap(&self) -> Cap {
        self.downgrade(Access::Verify)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Cap::DirWrite(_) => "dir-rw",
            Cap::DirRead(_) => "dir-ro",
            Cap::DirVerify(_) => "dir-v",
            Cap::FileRead(_) => "file",
            Cap::FileVerify(_) => "file-v",
        }
    }

    pub fn into_dir_read(self) -> Result<DirReadCap> {
        match self {
            Cap::DirWrite(w) => Ok(w.read_cap()),
            Cap::DirRead(r) => Ok(r),
            other => Err(Error::WrongKind {
                expected: "dir-ro",
                got: other.kind(),
            }),
        }
    }

    pub fn into_file_read(self) -> Result<FileReadCap> {
        match self {
            Cap::FileRead(r) => Ok(r),
            other => Err(Error::WrongKind {
                expected: "file",
                got: other.kind(),
            }),
        }
    }
}

impl From<DirWriteCap> for Cap {
    fn from(c: DirWriteCap) -> Self {
        Cap::DirWrite(c)
    }
}
impl From<DirReadCap> for Cap {
    fn from(c: DirReadCap) -> Self {
        Cap::DirRead(c)
    }
}
impl From<FileReadCap> for Cap {
    fn from(c: FileReadCap) -> Self {
        Cap::FileRead(c)
    }
}
