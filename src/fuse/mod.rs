//! The mount: lode as a POSIX filesystem, through FUSE (`fuser`).
//!
//! This layer owns the inode table ([`tree`]), the FUSE operations ([`fs`])
//! and the one mapping from errors to errno ([`errno`]). It reaches mirrors
//! only through `store` (the `Vault`); it never talks to a mirror itself.
//!
//! Model: the root is the user's root directory, read-write; `friends/NAME`
//! are friends' read-caps, read-only (EROFS). File changes go to a local
//! staging file and are uploaded when the last writer closes (or on fsync);
//! a file written front to back starts uploading while it is written
//! ([`early`]).
//! Directory changes are made in memory, marked dirty, and published by a
//! flusher once a second, so many changes to one directory coalesce into
//! one signed slot update; fsync and unmount publish at once.

mod early;
mod fs;
mod notes;
mod tree;

pub use fs::{LodeFs, Mount, MountConfig};

use fuser::Errno;

/// Errors of the mount's own making.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("read-only: friends' shares cannot be changed")]
    ReadOnly,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("directory not empty")]
    NotEmpty,
    #[error("already exists")]
    Exists,
    #[error("invalid name")]
    BadName,
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("operation not permitted")]
    Unsupported,
    #[error("invalid argument")]
    InvalidArgument,
    #[error(
        "{0} staged files of an earlier mount are not back in the tree yet (their directories cannot be read)"
    )]
    Unrecovered(usize),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The errno for an error: the only place the mount makes that choice.
pub fn errno(e: &Error) -> Errno {
    use crate::store::Error as S;
    match e {
        Error::NotFound => Errno::ENOENT,
        Error::ReadOnly => Errno::EROFS,
        Error::NotADirectory => Errno::ENOTDIR,
        Error::IsADirectory => Errno::EISDIR,
        Error::NotEmpty => Errno::ENOTEMPTY,
        Error::Exists => Errno::EEXIST,
        Error::BadName => Errno::EINVAL,
        Error::NameTooLong => Errno::ENAMETOOLONG,
        Error::Unsupported => Errno::EPERM,
        Error::InvalidArgument => Errno::EINVAL,
        Error::Unrecovered(_) => Errno::EIO,
        Error::Io(io) => Errno::from(io.kind()),
        Error::Store(s) => match s {
            // A directory too large to publish is full, as ext4 says of
            // one whose index has no room.
            S::NoSpace { .. } | S::DirectoryTooLarge { .. } => Errno::ENOSPC,
            S::NotFound(_) => Errno::ENOENT,
            S::NotADirectory(_) => Errno::ENOTDIR,
            S::NotAFile(_) => Errno::EISDIR,
            S::ReadOnly(_) => Errno::EROFS,
            S::Exists(_) => Errno::EEXIST,
            S::BadName { .. } => Errno::EINVAL,
            S::Io(io) => Errno::from(io.kind()),
            S::Unavailable { .. }
            | S::Rejected { .. }
            | S::NotHappy { .. }
            | S::Unrecoverable { .. }
            | S::NoSlot(_)
            | S::Rollback { .. }
            | S::NoMirrors
            | S::Chunk(_)
            | S::Dir(_)
            | S::Cap(_) => Errno::EIO,
        },
    }
}
