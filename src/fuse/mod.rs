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
mod locks;
#[cfg(test)]
mod moves_model;
mod notes;
mod partial;
mod remover;
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
    #[error("in another store (a friend's tree): no link across")]
    CrossDevice,
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
    #[error("name is not UTF-8")]
    NotUtf8,
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("operation not permitted")]
    Unsupported,
    #[error("invalid argument")]
    InvalidArgument,
    #[error("text file busy: a program running from this file")]
    TextBusy,
    #[error(
        "friends/ is where the mount shows friends' shares: it cannot be moved, replaced or removed"
    )]
    FriendsBusy,
    #[error(
        "{0} staged files of an earlier mount are not back in the tree yet, such as /{1} (its \
         directory cannot be read, or something not a directory now holds a name on its path)"
    )]
    Unrecovered(usize, String),
    #[error(
        "/{0} changed while each of {1} uploads read it; it stays staged, and goes up once it \
         rests"
    )]
    KeptChanging(String, usize),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The errno of an I/O error: the system's own where there is one (the
/// staging disk full is ENOSPC, a staged file past ext4's 16 TiB EFBIG),
/// else the nearest to its kind. fuser's `From<ErrorKind>` would make
/// every one of them EIO.
fn io_errno(io: &std::io::Error) -> Errno {
    use std::io::ErrorKind as K;
    if let Some(code) = io.raw_os_error() {
        return Errno::from_i32(code);
    }
    Errno::from_i32(match io.kind() {
        K::NotFound => libc::ENOENT,
        K::PermissionDenied => libc::EACCES,
        K::AlreadyExists => libc::EEXIST,
        K::InvalidInput => libc::EINVAL,
        K::StorageFull => libc::ENOSPC,
        K::FileTooLarge => libc::EFBIG,
        K::Unsupported => libc::EOPNOTSUPP,
        _ => libc::EIO,
    })
}

/// The errno for an error: the only place the mount makes that choice.
pub fn errno(e: &Error) -> Errno {
    use crate::store::Error as S;
    match e {
        Error::NotFound => Errno::ENOENT,
        Error::ReadOnly => Errno::EROFS,
        Error::CrossDevice => Errno::EXDEV,
        Error::NotADirectory => Errno::ENOTDIR,
        Error::IsADirectory => Errno::EISDIR,
        Error::NotEmpty => Errno::ENOTEMPTY,
        Error::Exists => Errno::EEXIST,
        Error::BadName => Errno::EINVAL,
        // Listings keep names as text; as ZFS with utf8only says.
        Error::NotUtf8 => Errno::from_i32(libc::EILSEQ),
        Error::NameTooLong => Errno::ENAMETOOLONG,
        Error::Unsupported => Errno::EPERM,
        Error::InvalidArgument => Errno::EINVAL,
        Error::TextBusy => Errno::from_i32(libc::ETXTBSY),
        // As for a mountpoint, which it is much like.
        Error::FriendsBusy => Errno::EBUSY,
        Error::Unrecovered(..) => Errno::EIO,
        // A sync that could not take a still copy: try again.
        Error::KeptChanging(..) => Errno::EAGAIN,
        Error::Io(io) => io_errno(io),
        Error::Store(s) => match s {
            // A directory too large to publish is full, as ext4 says of
            // one whose index has no room.
            S::NoSpace { .. } | S::DirectoryTooLarge { .. } => Errno::ENOSPC,
            S::NotFound(_) => Errno::ENOENT,
            S::Symlink { .. } => Errno::ELOOP,
            S::NotADirectory(_) => Errno::ENOTDIR,
            S::NotAFile(_) => Errno::EISDIR,
            S::ReadOnly(_) => Errno::EROFS,
            S::Exists(_) => Errno::EEXIST,
            S::BadName { .. } => Errno::EINVAL,
            S::BadTarget(_) => Errno::from_i32(libc::EILSEQ),
            S::Io(io) => io_errno(io),
            S::Unavailable { .. }
            | S::ListingUnavailable { .. }
            | S::Rejected { .. }
            | S::NotHappy { .. }
            | S::SlotNotHappy { .. }
            | S::Unrecoverable { .. }
            | S::NoSlot(_)
            | S::Rollback { .. }
            | S::ChangedElsewhere { .. }
            | S::WrongReadKey { .. }
            | S::NoMirrors
            | S::Chunk(_)
            | S::Dir(_)
            | S::Cap(_) => Errno::EIO,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_errno() {
        let io = |e: std::io::Error| errno(&Error::Io(e)).code();
        assert_eq!(
            io(std::io::Error::from_raw_os_error(libc::EFBIG)),
            libc::EFBIG
        );
        assert_eq!(
            io(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            libc::ENOSPC
        );
        assert_eq!(io(std::io::ErrorKind::StorageFull.into()), libc::ENOSPC);
        assert_eq!(io(std::io::ErrorKind::Other.into()), libc::EIO);
        assert_eq!(errno(&Error::NotUtf8).code(), libc::EILSEQ);
    }
}
