//! The mount's inode table: what the kernel has looked up, and what each
//! inode stands for. Pure data; the filesystem fills it from the vault.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use crate::caps::{DirReadCap, DirWriteCap, FileReadCap};
use crate::dir::{Entry, EntryKind, Listing};

pub const ROOT: u64 = 1;
pub const FRIENDS: u64 = 2;
/// The name of the virtual directory of friends' shares, at the root.
pub const FRIENDS_NAME: &str = "friends";

/// What an inode is.
pub enum Body {
    Dir {
        /// `None` for read-only directories (friends').
        write: Option<DirWriteCap>,
        read: DirReadCap,
        /// `None` until listed.
        children: Option<BTreeMap<String, u64>>,
        loaded_at: Option<Instant>,
    },
    /// The virtual `friends/` directory.
    Friends,
    File {
        cap: Option<FileReadCap>,
        /// Local copy holding changes not yet uploaded.
        staged: Option<PathBuf>,
        /// Changed since the last upload.
        dirty: bool,
        writers: u32,
    },
    Symlink(String),
}

pub struct Node {
    pub parent: u64,
    pub name: String,
    pub mode: u32,
    pub size: u64,
    pub mtime: (i64, u32),
    pub body: Body,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir { .. } | Body::Friends)
    }

    pub fn kind(&self) -> EntryKind {
        match self.body {
            Body::Dir { .. } | Body::Friends => EntryKind::Dir,
            Body::File { .. } => EntryKind::File,
            Body::Symlink(_) => EntryKind::Symlink,
        }
    }

    /// Whether this directory (or the directory holding this inode) may be
    /// changed.
    pub fn writable_dir(&self) -> Option<&DirWriteCap> {
        match &self.body {
            Body::Dir { write, .. } => write.as_ref(),
            _ => None,
        }
    }
}

/// All inodes, plus which directories have changes to publish.
pub struct Tree {
    pub nodes: HashMap<u64, Node>,
    next: u64,
    pub dirty: HashSet<u64>,
}

impl Tree {
    pub fn new(root: DirWriteCap) -> Tree {
        let mut nodes = HashMap::new();
        let read = root.read_cap();
        nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: String::new(),
                mode: 0o755,
                size: 0,
                mtime: crate::store::now(),
                body: Body::Dir {
                    write: Some(root),
                    read,
                    children: None,
                    loaded_at: None,
                },
            },
        );
        nodes.insert(
            FRIENDS,
            Node {
                parent: ROOT,
                name: FRIENDS_NAME.into(),
                mode: 0o555,
                size: 0,
                mtime: crate::store::now(),
                body: Body::Friends,
            },
        );
        Tree {
            nodes,
            next: FRIENDS + 1,
            dirty: HashSet::new(),
        }
    }

    pub fn insert(&mut self, node: Node) -> u64 {
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, node);
        ino
    }

    pub fn children(&self, dir: u64) -> Option<&BTreeMap<String, u64>> {
        match &self.nodes.get(&dir)?.body {
            Body::Dir { children, .. } => children.as_ref(),
            _ => None,
        }
    }

    pub fn children_mut(&mut self, dir: u64) -> Option<&mut BTreeMap<String, u64>> {
        match &mut self.nodes.get_mut(&dir)?.body {
            Body::Dir { children, .. } => children.as_mut(),
            _ => None,
        }
    }

    /// Fill a directory from its listing, keeping the inode numbers of
    /// names already known (and any local, not yet published, children).
    pub fn load(&mut self, dir: u64, listing: Listing) {
        let Some(node) = self.nodes.get(&dir) else {
            return;
        };
        let parent_write = node.writable_dir().cloned();
        let old = self.children(dir).cloned().unwrap_or_default();
        let mut children = BTreeMap::new();
        for (name, entry) in listing.entries {
            let node = node_from_entry(dir, &name, &entry, parent_write.as_ref());
            let Some(node) = node else { continue };
            let ino = match old.get(&name) {
                Some(&ino)
                    if self
                        .nodes
                        .get(&ino)
                        .is_some_and(|n| n.kind() == node.kind()) =>
                {
                    self.refresh(ino, node);
                    ino
                }
                _ => self.insert(node),
            };
            children.insert(name, ino);
        }
        if let Some(Node {
            body:
                Body::Dir {
                    children: c,
                    loaded_at,
                    ..
                },
            ..
        }) = self.nodes.get_mut(&dir)
        {
            *c = Some(children);
            *loaded_at = Some(Instant::now());
        }
    }

    /// Update a known inode from a fresh listing entry, unless it has local
    /// changes.
    fn refresh(&mut self, ino: u64, fresh: Node) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        if let Body::File { dirty: true, .. } | Body::File { writers: 1.., .. } = node.body {
            return;
        }
        node.mode = fresh.mode;
        node.size = fresh.size;
        node.mtime = fresh.mtime;
        match (&mut node.body, fresh.body) {
            (Body::Dir { .. }, Body::Dir { .. }) => {}
            (body, fresh) => *body = fresh,
        }
    }

    /// The listing to publish for a directory: every child that has a cap.
    pub fn listing(&self, dir: u64) -> Option<Listing> {
        let node = self.nodes.get(&dir)?;
        let write = node.writable_dir()?;
        let mut listing = Listing::default();
        for (name, &ino) in self.children(dir)? {
            let Some(child) = self.nodes.get(&ino) else {
                continue;
            };
            let entry = match &child.body {
                Body::File { cap: Some(cap), .. } => {
                    Entry::file(cap.clone(), child.mode, child.mtime)
                }
                Body::File { cap: None, .. } => continue, // not uploaded yet
                Body::Dir { write: Some(w), .. } => {
                    Entry::dir(write, name, w, child.mode, child.mtime)
                }
                Body::Dir { read, .. } => {
                    Entry::dir_read_only(read.clone(), child.mode, child.mtime)
                }
                Body::Symlink(target) => Entry::symlink(target, child.mtime),
                Body::Friends => continue,
            };
            listing.entries.insert(name.clone(), entry);
        }
        Some(listing)
    }
}

/// An inode for a listing entry.
pub fn node_from_entry(
    parent: u64,
    name: &str,
    entry: &Entry,
    parent_write: Option<&DirWriteCap>,
) -> Option<Node> {
    let body = match (entry.kind, &entry.cap) {
        (EntryKind::File, Some(crate::caps::Cap::FileRead(cap))) => Body::File {
            cap: Some(cap.clone()),
            staged: None,
            dirty: false,
            writers: 0,
        },
        (EntryKind::Dir, Some(crate::caps::Cap::DirRead(read))) => Body::Dir {
            write: parent_write.and_then(|p| entry.write_cap(p, name).ok().flatten()),
            read: read.clone(),
            children: None,
            loaded_at: None,
        },
        (EntryKind::Symlink, _) => Body::Symlink(entry.target.clone().unwrap_or_default()),
        _ => return None,
    };
    Some(Node {
        parent,
        name: name.to_string(),
        mode: entry.mode & 0o7777,
        size: entry.size,
        mtime: entry.mtime,
        body,
    })
}
