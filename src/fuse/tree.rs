//! The mount's inode table: what the kernel has looked up, and what each
//! inode stands for. Pure data; the filesystem fills it from the vault.
//!
//! An inode whose last name is removed becomes an orphan and stays while
//! it is open or the kernel still holds lookups on it (`forget` lowers
//! them), so an unlinked open file reads and writes on, as POSIX wants.
//! Named inodes stay while their directory is loaded; once the table
//! outgrows its budget, the entries of directories nobody holds are
//! dropped and listed again when next needed ([`Tree::shed`]), so the
//! table follows what the kernel keeps rather than everything ever seen.
//!
//! Hard links: the names of a linked file share one inode, found through
//! its link id. In our own tree the root listing's link table is the
//! authoritative copy; see `dir::listing`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::caps::{DirReadCap, DirWriteCap, FileReadCap};
use crate::dir::{DirAttrs, Entry, EntryKind, Home, LinkId, Listing, Place, Time};
use crate::store::now;

pub const ROOT: u64 = 1;
pub const FRIENDS: u64 = 2;
/// The name of the virtual directory of friends' shares, at the root.
pub const FRIENDS_NAME: &str = "friends";
/// The root's mode when its listing does not say.
pub const ROOT_MODE: u32 = 0o755;

/// Directories with more entries than this report a link count of 1
/// ([`Tree::dir_nlink`]).
pub const NLINK_COUNTED_UP_TO: usize = 4096;

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
        /// The staged copy is published: it is only a local cache of the
        /// content, kept for fast reads and evicted under a byte budget.
        cached: bool,
        /// Bumped by every change of the content, so an upload knows
        /// whether what it read is still the latest.
        generation: u64,
    },
    Symlink(String),
    /// A FIFO, socket or device node: metadata only.
    Special {
        kind: EntryKind,
        rdev: u32,
    },
}

pub struct Node {
    /// Where the inode was last seen by name (one of its names, if linked).
    pub parent: u64,
    pub name: String,
    pub mode: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub uid: u32,
    pub gid: u32,
    pub link: Option<LinkId>,
    /// Names of a non-directory (1 unless hard-linked).
    pub nlink: u32,
    /// Lookups the kernel holds (raised by entry replies, lowered by forget).
    pub lookups: u64,
    /// Open file handles.
    pub opens: u32,
    /// Of those, the ones programs run from (exec opens): see
    /// `LodeFs::do_open` for why the mount counts them.
    pub execs: u32,
    /// No name refers to the inode any more.
    pub orphan: bool,
    /// A friend's: read-only for good. An orphan has no parent left to
    /// say so (a friend's file held open across the friend's update, or
    /// every inode of a friend removed), so the node carries it.
    pub foreign: bool,
    /// A listing brought this file's content from elsewhere (a friend's
    /// update) since the kernel last opened it, so the pages the kernel
    /// cached then are stale. Every other change of a file's bytes goes
    /// through the kernel, which keeps its own cache in step.
    pub stale_pages: bool,
    /// A second name of a directory another inode lists writably (see
    /// `Tree::listed_elsewhere`): it reads, but neither changes nor
    /// publishes the listing. Its write-cap stays, so the name keeps it
    /// wherever its parent publishes it.
    pub alias: bool,
    /// A file renamed over others: their versions, which the mirrors may
    /// still hold at its name until the rename is published (see
    /// `notes::Note::replaces`).
    pub replaces: Vec<crate::crypto::Hash>,
    /// The directory whose published (or loaded) listing last named this
    /// file, and the version it named: a recovery note may go only once
    /// a listing names the upload it stands for (see `publish_one`).
    pub listed: Option<(u64, crate::crypto::Hash)>,
    /// The directory whose listing last went up naming this entry, on
    /// `happy` mirrors, or was loaded naming it: once that is where the
    /// entry is, the directory it was renamed away from need not keep it
    /// ([`Tree::ghosts`]).
    pub named_in: Option<u64>,
    /// Loaded from an entry kept for a file that had left the name
    /// (`Entry::kept`): recovery puts nothing over it.
    pub kept: bool,
    /// Where that file went (`Entry::moved_to`): once it is named there
    /// on `happy` mirrors, this name goes ([`Tree::kept_found`]). Until
    /// then, or until the file here changes, its directory's listings
    /// keep the entry marked so.
    pub moved_to: Option<Place>,
    /// Where this file was renamed from, in another directory
    /// (`Entry::moved_from`): the name it left there stays on the mirrors
    /// until that directory goes up again, and after a crash before that
    /// it is let go once this entry is on `happy` mirrors
    /// ([`Tree::stale_found`]).
    pub moved_from: Option<MovedFrom>,
    pub body: Body,
}

/// Where a file was renamed from ([`Node::moved_from`]).
#[derive(Clone, Copy)]
pub struct MovedFrom {
    pub place: Place,
    /// The newest version of that directory's listing from before the
    /// move: a listing of it no newer names the file there.
    pub seq: u64,
    /// In this mount: the directory it left, and the count of names given
    /// up at the move (`Tree::vacates`). Once a listing of that directory
    /// taken after the move is published, the old name is gone and the
    /// entry need not say where it came from.
    pub left: Option<(u64, u64)>,
}

impl Node {
    /// This file's staged bytes changed: it is dirty, at a new write
    /// generation, and its staged copy is its data again, not a cache of
    /// its upload (a publish may have taken a fresh copy for one between
    /// `stage` and the change, and dropped its recovery note). Returns
    /// whether it had been taken so: the note must then be written again.
    pub fn data_changed(&mut self) -> bool {
        match &mut self.body {
            Body::File {
                dirty,
                generation,
                cached,
                ..
            } => {
                *dirty = true;
                *generation += 1;
                // Written to: the user's file now, not a name kept, and
                // a version no name it left holds.
                self.kept = false;
                self.moved_to = None;
                self.moved_from = None;
                std::mem::take(cached)
            }
            _ => false,
        }
    }

    /// A new inode named `name` in `parent`, owned by `owner`, all times now.
    pub fn new(parent: u64, name: &str, mode: u32, owner: (u32, u32), body: Body) -> Node {
        let t = now();
        Node {
            parent,
            name: name.to_string(),
            mode,
            size: 0,
            atime: t,
            mtime: t,
            ctime: t,
            uid: owner.0,
            gid: owner.1,
            link: None,
            nlink: 1,
            lookups: 0,
            opens: 0,
            execs: 0,
            orphan: false,
            foreign: false,
            stale_pages: false,
            alias: false,
            replaces: Vec::new(),
            listed: None,
            named_in: None,
            kept: false,
            moved_to: None,
            moved_from: None,
            body,
        }
    }

    /// The version of this file, if nobody is changing it: not written to
    /// since its last upload, no writer, still named.
    fn unchanging_root(&self) -> Option<crate::crypto::Hash> {
        match &self.body {
            Body::File {
                cap: Some(c),
                dirty: false,
                writers: 0,
                ..
            } if !self.orphan => Some(c.root),
            _ => None,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir { .. } | Body::Friends)
    }

    pub fn kind(&self) -> EntryKind {
        match self.body {
            Body::Dir { .. } | Body::Friends => EntryKind::Dir,
            Body::File { .. } => EntryKind::File,
            Body::Symlink(_) => EntryKind::Symlink,
            Body::Special { kind, .. } => kind,
        }
    }

    /// Whether this directory (or the directory holding this inode) may be
    /// changed.
    pub fn writable_dir(&self) -> Option<&DirWriteCap> {
        if self.alias {
            return None;
        }
        match &self.body {
            Body::Dir { write, .. } => write.as_ref(),
            _ => None,
        }
    }

    /// Whether the file has changes that a listing must not overwrite.
    fn busy(&self) -> bool {
        matches!(
            self.body,
            Body::File { dirty: true, .. } | Body::File { writers: 1.., .. }
        )
    }
}

/// All inodes, plus which directories have changes to publish.
pub struct Tree {
    pub nodes: HashMap<u64, Node>,
    next: u64,
    pub dirty: HashSet<u64>,
    /// Directories whose listing is being published right now.
    pub publishing: HashSet<u64>,
    /// Directories found too large to publish, with their entry count
    /// and when: the background flusher leaves them be until they have
    /// fewer entries, or a minute has passed (fsync, `lode sync` and
    /// unmount still try, and say why).
    pub too_large: HashMap<u64, (usize, std::time::Instant)>,
    /// Directories the background flusher publishes again no sooner than
    /// this: a large listing costs time to fetch, seal and send, and is
    /// republished at most a tenth of the time (fsync, `lode sync` and
    /// unmount do not wait).
    pub publish_after: HashMap<u64, std::time::Instant>,
    /// Directories that gained an entry another one lost (a rename
    /// across directories), by the one that lost it: those go up first
    /// (see `LodeFs::publish`).
    pub moved_into: HashMap<u64, HashSet<u64>>,
    /// Since when the flusher has held each directory back for a
    /// destination of its moves (see `LodeFs::publish_ordered`).
    pub held_back: HashMap<u64, std::time::Instant>,
    /// Inodes of hard-linked files in our own tree, by link id.
    pub links: HashMap<LinkId, u64>,
    /// Owner of entries that record none, and of friends' trees.
    pub owner: (u32, u32),
    /// The version each directory inode last loaded: a refresh of a
    /// read-only directory that finds the same version keeps what it has
    /// (a large friend's directory is pages to fetch and decode).
    pub listed_seq: HashMap<u64, u64>,
    /// Directories made by this mount and not yet published: removed
    /// before their first publish, they need none.
    pub unpublished: HashSet<u64>,
    /// Directories published while a directory above them was not (see
    /// [`Tree::anchored`]): their files' recovery notes stay until it is.
    pub unanchored: HashSet<u64>,
    /// The inode that lists each of our directories writably, by slot key
    /// (checked against `nodes` when read, so never cleaned).
    listed: HashMap<[u8; 32], u64>,
    /// Names of published files given up (unlinked, or renamed away) in
    /// each directory since it was last published, by directory and name:
    /// the mirrors still list those versions there. See [`Tree::vacate`].
    vacated: HashMap<u64, HashMap<String, Vec<Vacated>>>,
    /// Where each inode gave those up, with how many records it holds at
    /// each (directory, name): a file's recovery note finds its own
    /// without a walk of every record (a rename of many files before
    /// their directory published was quadratic).
    vacated_by: HashMap<u64, HashMap<(u64, String), u32>>,
    /// Counts the names given up, so a publish knows which of them the
    /// listing it sent no longer holds.
    vacates: u64,
    /// Directories whose last published listing kept files renamed away
    /// from them at their old names ([`Tree::ghosts`]): they are
    /// published again, without those, once the files are named where
    /// they are now.
    pub ghosted: HashSet<u64>,
    /// Our directories and hard-linked files renamed away from each
    /// directory since it was last published, by name: the inode, when
    /// (counted with `vacates`), and the directory it went to.
    entries_left: HashMap<u64, HashMap<String, Left>>,
    /// Where the count of names given up stood when each directory's
    /// listing that last went up (to `happy` mirrors) was taken.
    pub published_at: HashMap<u64, u64>,
    /// Nodes loaded from kept entries that record where their file went
    /// (`Node::moved_to`), some perhaps gone since.
    kept_moved: HashSet<u64>,
    /// Where the staged data of a node dropped for good goes: the mount's
    /// remover, which unlinks off the tree's lock (a large file's unlink
    /// waits for the device's trims, 250-290 ms per GiB on the disks of
    /// docs/PERFORMANCE.md, and every request waited with it). Without
    /// one (unit tests), at once.
    pub remover: Option<Arc<super::remover::Remover>>,
    /// Nodes loaded from entries that say where their file was renamed
    /// from (`Node::moved_from`), some perhaps gone or changed since.
    moved_in: HashSet<u64>,
    /// Directories by their tag (`Place::dir_tag`), for the places kept
    /// entries record: each inode a directory is known by (a second name
    /// is read-only, `Node::alias`, or stale), those gone dropped as
    /// another comes.
    dir_tags: HashMap<[u8; 16], Vec<u64>>,
    /// Keys those tags (`Place`), from the root's write-cap.
    place_key: crate::crypto::PlaceKey,
}

/// Versions a file renamed over others remembers replacing (see
/// `Node::replaces`): a chain of saves renamed over one name, unpublished.
pub const MAX_REPLACES: usize = 8;

/// A directory's listing taken to be published ([`Tree::take_listing`]),
/// with what its outcome settles ([`Tree::listing_sent`]).
pub struct Outgoing {
    pub dir: u64,
    pub write: DirWriteCap,
    /// Its entries when taken, for a refusal: entries may come and go
    /// while it is sealed and sent.
    pub entries: usize,
    /// The version of it this mount last saw.
    pub known: Option<u64>,
    /// Where the count of names given up stood when it was taken.
    pub vacates: u64,
    /// The versions of its files it names (not those a kept name stands
    /// in for: see [`Ghosts::displaced`]).
    named: Vec<(u64, crate::crypto::Hash)>,
    /// The directories it names, for those they left.
    dirs_named: Vec<u64>,
    /// The names it kept for entries that left them ([`Tree::ghosts`]).
    pub ghosts: Vec<String>,
}

/// How a listing's publish ended, as [`Tree::listing_sent`] needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// On `happy` mirrors.
    Published,
    /// On some mirrors, short of `happy`: readers may find it.
    Partly,
    /// Refused before it was sent (too large): on no mirror.
    Refused,
    /// Failed; it may still have landed on some mirror (a request that
    /// timed out).
    Failed,
}

/// What [`Tree::ghosts`] added to a listing: the names it kept for entries
/// that left them, and the children whose own entries those kept names
/// stand in place of (see `Tree::giving_way`): that listing does not name
/// them.
pub struct Ghosts {
    pub kept: Vec<String>,
    pub displaced: Vec<u64>,
}

/// An entry renamed away from a directory (see `Tree::entries_left`).
#[derive(Clone, Copy)]
struct Left {
    ino: u64,
    at: u64,
    to: u64,
}

/// A published file's name given up in a directory not published since.
struct Vacated {
    /// The version the file had when it gave the name up.
    root: crate::crypto::Hash,
    /// The inode that gave it up (a file renamed away names it in its
    /// recovery note, `notes::Note::left`).
    ino: u64,
    /// Renamed away, not unlinked.
    renamed: bool,
    at: u64,
}

impl Tree {
    /// Whether every directory above `dir` is published as it stands, so
    /// that a listing of `dir` just published is reached from the root:
    /// only then are its files safe on the mirrors. (A new directory's
    /// listing goes up before its parent's names it; if the parent's then
    /// fails, as when another machine changed it, the files are reached
    /// only through their recovery notes.)
    pub fn anchored(&self, dir: u64) -> bool {
        let mut cur = dir;
        while cur != ROOT {
            let Some(node) = self.nodes.get(&cur) else {
                return false;
            };
            cur = node.parent;
            if self.dirty.contains(&cur) || self.publishing.contains(&cur) {
                return false;
            }
        }
        true
    }

    pub fn new(root: DirWriteCap, owner: (u32, u32)) -> Tree {
        let place_key = root.seed.place_key();
        let mut nodes = HashMap::new();
        let read = root.read_cap();
        nodes.insert(
            ROOT,
            Node::new(
                ROOT,
                "",
                0o700,
                owner,
                Body::Dir {
                    write: Some(root),
                    read,
                    children: None,
                    loaded_at: None,
                },
            ),
        );
        nodes.insert(
            FRIENDS,
            // Writable by its mode, as every directory of a read-only
            // mount shows: the kernel's permission check (the mount runs
            // with default_permissions) then lets the owner's writes
            // through to lode, which refuses them with EROFS. At 0o555 the
            // owner got EACCES instead, for anything but root.
            Node::new(ROOT, FRIENDS_NAME, 0o755, owner, Body::Friends),
        );
        Tree {
            nodes,
            next: FRIENDS + 1,
            dirty: HashSet::new(),
            moved_into: HashMap::new(),
            held_back: HashMap::new(),
            listed_seq: HashMap::new(),
            unpublished: HashSet::new(),
            unanchored: HashSet::new(),
            listed: HashMap::new(),
            publishing: HashSet::new(),
            too_large: HashMap::new(),
            publish_after: HashMap::new(),
            links: HashMap::new(),
            owner,
            vacated: HashMap::new(),
            vacated_by: HashMap::new(),
            vacates: 0,
            ghosted: HashSet::new(),
            entries_left: HashMap::new(),
            published_at: HashMap::new(),
            kept_moved: HashSet::new(),
            remover: None,
            moved_in: HashSet::new(),
            dir_tags: HashMap::new(),
            place_key,
        }
    }

    /// `ino` gives up its name `name` in `dir` (an unlink, a rename away).
    /// Until `dir` is published again, the mirrors still list the file's
    /// version there: a file that takes the name replaces it on recovery
    /// ([`Tree::vacated_roots`]), and a file renamed away removes it
    /// ([`Tree::left_by`]). Only published files leave anything behind.
    pub fn vacate(&mut self, dir: u64, name: &str, ino: u64, renamed: bool) {
        let Some(Node {
            body: Body::File { cap: Some(c), .. },
            link: None,
            ..
        }) = self.nodes.get(&ino)
        else {
            return;
        };
        let root = c.root;
        self.vacates += 1;
        let at = self.vacates;
        let list = self
            .vacated
            .entry(dir)
            .or_default()
            .entry(name.to_string())
            .or_default();
        let mut gone = Vec::new();
        list.retain(|v| {
            let same = v.root == root;
            if same {
                gone.push(v.ino);
            }
            !same
        });
        list.push(Vacated {
            root,
            ino,
            renamed,
            at,
        });
        for by in gone {
            self.forget_vacated_by(by, dir, name);
        }
        self.vacated_by_add(ino, dir, name);
    }

    /// Of the names in `dir` that `ino` gave up on a rename since `dir`'s
    /// last publish, the first.
    fn first_left_in(&self, ino: u64, dir: u64) -> Option<String> {
        let names = self.vacated.get(&dir)?;
        self.vacated_by
            .get(&ino)?
            .keys()
            .filter(|(d, _)| *d == dir)
            .filter_map(|(_, name)| {
                let at = names
                    .get(name)?
                    .iter()
                    .filter(|v| v.ino == ino && v.renamed)
                    .map(|v| v.at)
                    .min()?;
                Some((at, name))
            })
            .min()
            .map(|(_, name)| name.clone())
    }

    /// The directory or hard-linked file `ino` is renamed away from its
    /// name `name` in `dir` to directory `to`: `dir`'s listing keeps it
    /// there until its new place is published ([`Tree::ghosts`]).
    pub fn entry_left(&mut self, dir: u64, name: &str, ino: u64, to: u64) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        let linked = node.link.is_some() && matches!(node.body, Body::File { cap: Some(_), .. });
        if node.writable_dir().is_none() && !linked {
            return;
        }
        self.vacates += 1;
        let at = self.vacates;
        self.entries_left
            .entry(dir)
            .or_default()
            .insert(name.to_string(), Left { ino, at, to });
    }

    /// Take `dir`'s listing to publish, if it is dirty: its entries, and
    /// those it keeps for entries that left it ([`Tree::ghosts`]). It is
    /// `publishing` until [`Tree::listing_sent`]. None if there is nothing
    /// to send (clean, removed, or not ours).
    pub fn take_listing(&mut self, dir: u64) -> Option<(Outgoing, Listing)> {
        if !self.dirty.remove(&dir) {
            return None;
        }
        let writable = self.nodes.get(&dir).and_then(|n| n.writable_dir()).cloned();
        let (Some(mut listing), Some(write)) = (self.listing(dir), writable) else {
            self.too_large.remove(&dir);
            self.publish_after.remove(&dir);
            return None;
        };
        self.publishing.insert(dir);
        let entries = self.children(dir).map_or(0, |c| c.len());
        let known = self.listed_seq.get(&dir).copied();
        let children: Vec<u64> = self
            .children(dir)
            .into_iter()
            .flat_map(|c| c.values().copied())
            .collect();
        let named: Vec<(u64, crate::crypto::Hash)> = children
            .iter()
            .filter_map(|&ino| match &self.nodes.get(&ino)?.body {
                Body::File { cap: Some(c), .. } => Some((ino, c.root)),
                _ => None,
            })
            .collect();
        let dirs_named: Vec<u64> = children
            .into_iter()
            .filter(|ino| self.nodes.get(ino).is_some_and(Node::is_dir))
            .collect();
        let Ghosts { kept, displaced } = self.ghosts(dir, &mut listing);
        // A child a kept name stands in for is not in this listing: it is
        // not named by it, and its recovery note stays.
        let named = named
            .into_iter()
            .filter(|(ino, _)| !displaced.contains(ino))
            .collect();
        if tracing::enabled!(tracing::Level::TRACE) {
            let dirs: Vec<String> = listing
                .entries
                .iter()
                .filter(|(_, e)| e.kind == EntryKind::Dir)
                .map(|(n, e)| format!("{n}{}", if e.kept { " (kept)" } else { "" }))
                .collect();
            let name = self.nodes.get(&dir).map_or("", |n| n.name.as_str());
            tracing::trace!(
                dir,
                name,
                ?known,
                vacates = self.vacates,
                ?dirs,
                "listing taken"
            );
        }
        let outgoing = Outgoing {
            dir,
            write,
            entries,
            known,
            vacates: self.vacates,
            named,
            dirs_named,
            ghosts: kept,
        };
        Some((outgoing, listing))
    }

    /// The publish of `out` ended as `sent`, having tried version
    /// `attempt` (if it got as far as choosing one).
    pub fn listing_sent(&mut self, out: &Outgoing, attempt: Option<u64>, sent: Sent) {
        let dir = out.dir;
        tracing::trace!(dir, ?sent, ?attempt, dirs_named = ?out.dirs_named, "listing sent");
        self.publishing.remove(&dir);
        // The version this listing now is (or may be, on some mirrors):
        // the next publish builds on it.
        if let Some(seq) = attempt
            && self.nodes.contains_key(&dir)
        {
            let at = self.listed_seq.entry(dir).or_insert(seq);
            *at = (*at).max(seq);
        }
        match sent {
            Sent::Published => {
                // Only entries still here: one renamed away since the
                // listing was taken may be named where it is now by a
                // publish that ended first, and this older listing took
                // that back (its old directory then kept it, and went up
                // again every second).
                let here: HashSet<u64> = self
                    .children(dir)
                    .map(|c| c.values().copied().collect())
                    .unwrap_or_default();
                for (ino, root) in out.named.iter().filter(|(i, _)| here.contains(i)) {
                    if let Some(node) = self.nodes.get_mut(ino) {
                        node.listed = Some((dir, *root));
                        node.named_in = Some(dir);
                    }
                }
                for ino in out.dirs_named.iter().filter(|i| here.contains(i)) {
                    if let Some(node) = self.nodes.get_mut(ino) {
                        node.named_in = Some(dir);
                    }
                }
                self.published_at.insert(dir, out.vacates);
                self.too_large.remove(&dir);
                self.unpublished.remove(&dir);
                // Entries kept at names they left (`Tree::ghosts`): the
                // listing goes up again without them, once they are named
                // where they are.
                if out.ghosts.is_empty() {
                    self.ghosted.remove(&dir);
                } else {
                    self.ghosted.insert(dir);
                    self.dirty.insert(dir);
                }
            }
            Sent::Partly | Sent::Refused | Sent::Failed => {
                self.dirty.insert(dir);
                // On some mirrors but short of `happy`, it names nothing
                // for the listings entries left: a reader hears from
                // `mirrors - happy + 1` of them (one, with `happy` all of
                // them), perhaps only from those without it, so the old
                // places keep their entries (`Tree::ghosts`) until a
                // publish reaches `happy`. Taken for named here, an
                // entry's old parent let it go once this went up partly;
                // a reader that took this directory from a mirror without
                // it and the old parent from one with its new listing
                // found the entry nowhere (the model check, with each
                // mirror apart; once in 518 rounds of the crash sweep
                // beside disk load, a subdirectory and the files only it
                // named were lost). With a mirror down the cost is an
                // entry under both names after an unmount, not a loss.
                // Perhaps on some mirrors (a request that timed out may
                // still have landed): removed, it must now go up empty.
                // Only a listing refused before it was sent stayed nowhere.
                if sent != Sent::Refused {
                    self.unpublished.remove(&dir);
                }
            }
        }
    }

    /// Rename `ino` from `name` in `parent` to `newname` in `newparent`,
    /// over `target` (the child there, if any, which the caller checked
    /// may be replaced), recording what the mirrors still hold at both
    /// names until the two listings are published. Returns false, having
    /// changed nothing, if `newparent` is not a listed directory.
    pub fn rename_entry(
        &mut self,
        (parent, name): (u64, &str),
        (newparent, newname): (u64, &str),
        ino: u64,
        target: Option<u64>,
    ) -> bool {
        if self.children(newparent).is_none() {
            return false;
        }
        let moving_dir = parent != newparent && self.nodes.get(&ino).is_some_and(Node::is_dir);
        if moving_dir {
            let named_in = self.nodes.get(&ino).and_then(|n| n.named_in);
            tracing::trace!(ino, name, parent, newparent, ?named_in, "directory moved");
        }
        // What the mirrors may hold at the new name until this is
        // published: the replaced file's versions (nothing, as far as this
        // mount knows, if there was none).
        // Not a hard-linked file's own version: it lives on under its other
        // names, which may be in listings that never go up (made while
        // their directory could not be published), and the mirrors may
        // hold it at this name as a plain entry (listed before the link):
        // recovery keeps both rather than write over the only copy.
        let mut replaced: Vec<crate::crypto::Hash> = target
            .and_then(|t| self.nodes.get(&t))
            .map(|t| match &t.body {
                Body::File { cap, .. } => {
                    let published = cap.as_ref().map(|c| c.root).filter(|_| t.link.is_none());
                    published.into_iter().chain(t.replaces.clone()).collect()
                }
                _ => Vec::new(),
            })
            .unwrap_or_default();
        // And what files that gave the name up may have left there.
        replaced.extend(self.vacated_roots(newparent, newname));
        if let Some(node) = self.nodes.get_mut(&ino)
            && matches!(node.body, Body::File { .. })
        {
            node.replaces = replaced;
            node.replaces.dedup();
            node.replaces.truncate(MAX_REPLACES);
        }
        if target.is_some() {
            self.unlink(newparent, newname);
        }
        if let Some(c) = self.children_mut(parent) {
            c.remove(name);
        }
        self.vacate(parent, name, ino, true);
        if parent != newparent {
            self.entry_left(parent, name, ino, newparent);
        }
        if let Some(c) = self.children_mut(newparent) {
            c.insert(newname.to_string(), ino);
        }
        if let Some(node) = self.nodes.get_mut(&ino)
            && (node.link.is_none() || (node.parent == parent && node.name == name))
        {
            node.parent = newparent;
            node.name = newname.to_string();
        }
        self.touch_dir(parent);
        self.touch_dir(newparent);
        if parent != newparent {
            self.moved_into.entry(parent).or_default().insert(newparent);
        }
        if moving_dir {
            // Its listing names its new home: after a crash that left both
            // parents naming it, the one its listing names keeps it. In
            // no particular order with its parents: a home that does not
            // name it is not believed (`Vault::stale_name`).
            self.dirty.insert(ino);
        }
        // Like ext4 and most others, a rename changes the inode's ctime.
        self.changed(ino);
        // A published file from a directory with a listing on the mirrors
        // records the name it left there; from one never published, the
        // place it came from before that, if any, stands.
        if parent != newparent {
            // The name it had there first since that directory's last
            // publish: a rename through a name in the same directory
            // (`mv a/f a/t; mv a/t b/f`) left `f` on the mirrors, not `t`.
            let first = self.first_left_in(ino, parent);
            let name = first.as_deref().unwrap_or(name);
            let from = match &self.nodes.get(&parent).map(|n| &n.body) {
                Some(Body::Dir { read, .. }) => self
                    .listed_seq
                    .get(&parent)
                    .map(|&seq| (Place::of(&self.place_key, &read.public_key, name), seq)),
                _ => None,
            };
            let at = self.vacates;
            if let Some(node) = self.nodes.get_mut(&ino)
                && node.link.is_none()
                && matches!(node.body, Body::File { cap: Some(_), .. })
                && let Some((place, seq)) = from
            {
                node.moved_from = Some(MovedFrom {
                    place,
                    seq,
                    left: Some((parent, at)),
                });
            }
        }
        true
    }

    /// Whether `dir`'s listing keeps `left`: a directory as
    /// [`Tree::keeps_ino`] says; a hard-linked file (whose names are not
    /// one place) until its new directory is published from a listing
    /// taken after it moved there.
    fn keeps_left(&self, dir: u64, left: &Left) -> bool {
        match self.nodes.get(&left.ino) {
            Some(node) if node.link.is_some() => {
                let removed = self.nodes.get(&dir).is_none_or(|d| d.orphan);
                // Let go once the directory it went to went up from a
                // listing taken after the move, and the mirrors reach that
                // directory (the model check lost a linked file moved into
                // a new directory whose parent's publish had failed).
                !removed
                    && !node.orphan
                    && left.to != dir
                    && (!self.reached(left.to)
                        || self.published_at.get(&left.to).is_none_or(|&p| p < left.at))
            }
            Some(_) => self.keeps_ino(dir, left.ino),
            None => false,
        }
    }

    fn vacated_by_add(&mut self, ino: u64, dir: u64, name: &str) {
        *self
            .vacated_by
            .entry(ino)
            .or_default()
            .entry((dir, name.to_string()))
            .or_default() += 1;
    }

    /// `ino` holds one record fewer at `name` in `dir`.
    fn forget_vacated_by(&mut self, ino: u64, dir: u64, name: &str) {
        let Some(at) = self.vacated_by.get_mut(&ino) else {
            return;
        };
        let key = (dir, name.to_string());
        if let Some(n) = at.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                at.remove(&key);
            }
        }
        if at.is_empty() {
            self.vacated_by.remove(&ino);
        }
    }

    /// Whether `ino` is a file whose staged copy carries a recovery note
    /// (staged changes, not a cache, and still named).
    fn noted(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(|n| {
            !n.orphan
                && matches!(
                    n.body,
                    Body::File {
                        staged: Some(_),
                        cached: false,
                        ..
                    }
                )
        })
    }

    /// The versions the mirrors may still list at `name` in `dir`, given
    /// up there since its last publish, that recovery may replace: those
    /// of files removed, and of files renamed away that a recovery note
    /// brings back at their new names. A published file renamed away with
    /// no change staged is on the mirrors only under this name until the
    /// rename is published (the mount keeps no journal of renames): its
    /// version stays, and a file recovered here goes beside it.
    pub fn vacated_roots(&self, dir: u64, name: &str) -> Vec<crate::crypto::Hash> {
        let Some(list) = self.vacated.get(&dir).and_then(|names| names.get(name)) else {
            return Vec::new();
        };
        list.iter()
            .filter(|v| !v.renamed || self.noted(v.ino))
            .map(|v| v.root)
            .collect()
    }

    /// The names `ino` gave up that the mirrors may still list, as
    /// (directory, name, version).
    pub fn left_by(&self, ino: u64) -> Vec<(u64, String, crate::crypto::Hash)> {
        let Some(at) = self.vacated_by.get(&ino) else {
            return Vec::new();
        };
        let mut left = Vec::new();
        for (dir, name) in at.keys() {
            let list = self.vacated.get(dir).and_then(|names| names.get(name));
            for v in list.into_iter().flatten().filter(|v| v.ino == ino) {
                left.push((*dir, name.clone(), v.root));
            }
        }
        left
    }

    /// Hand a name given up to another inode: recovery removes an old name
    /// for the file that was renamed away from it.
    pub fn vacated_for(&mut self, dir: u64, name: &str, ino: u64) {
        let Some(v) = self
            .vacated
            .get_mut(&dir)
            .and_then(|names| names.get_mut(name))
            .and_then(|list| list.last_mut())
        else {
            return;
        };
        let by = std::mem::replace(&mut v.ino, ino);
        self.forget_vacated_by(by, dir, name);
        self.vacated_by_add(ino, dir, name);
    }

    /// Hold `dir` back from publishing for a destination of its moves:
    /// true while it has been held for less than `HOLD_BACK_MAX`, counted
    /// from the first time (cleared when it is published).
    pub fn hold_back(&mut self, dir: u64, now: std::time::Instant) -> bool {
        let since = *self.held_back.entry(dir).or_insert(now);
        now.duration_since(since) < super::fs::HOLD_BACK_MAX
    }

    /// Whether a published listing names `ino` where it is now, and so
    /// on up: each directory above it named by its parent's published
    /// listing, up to the root. A directory's own publish is not enough:
    /// new, or moved, it is reached only once its parent's listing names
    /// it there (a model check, `moves_model`, lost a directory moved into
    /// a new one whose parent's publish had failed: its old parent let it
    /// go as soon as the new directory went up).
    fn named_where_it_is(&self, ino: u64) -> bool {
        let mut cur = ino;
        while cur != ROOT {
            match self.nodes.get(&cur) {
                Some(node) if node.named_in == Some(node.parent) => cur = node.parent,
                _ => return false,
            }
        }
        true
    }

    /// Whether the mirrors reach `dir` from the root: the root, or a
    /// directory of ours named where it is ([`Tree::named_where_it_is`]).
    pub(super) fn reached(&self, dir: u64) -> bool {
        dir == ROOT
            || self.nodes.get(&dir).is_some_and(|d| !d.orphan) && self.named_where_it_is(dir)
    }

    /// Add to `listing`, the one about to be published for `dir`, the
    /// files renamed away from `dir` that no published listing names at
    /// their new place yet, each at the name it left (unless that name is
    /// taken again). Returns those names.
    ///
    /// Each listing goes up whole, and on its own: were `dir` published
    /// without such a file before the directory it moved to, a crash in
    /// between would leave it in neither. Publishing the destination first
    /// is not always possible: two directories that traded files (a cycle
    /// of renames) each wait for the other, and one that keeps changing
    /// may never be quiet. A crash sweep that swapped files between four
    /// directories lost tens of closed files in most rounds. Kept here
    /// instead, the file is on the mirrors at its old name, its new one,
    /// or both, until `dir` is published again without it (see
    /// `ghosted`): a rename not yet made durable may be undone by a crash,
    /// but never loses the file.
    pub fn ghosts(&self, dir: u64, listing: &mut Listing) -> Ghosts {
        let mut kept = Vec::new();
        let mut displaced = Vec::new();
        for (name, list) in self.vacated.get(&dir).into_iter().flatten() {
            if listing.entries.contains_key(name) {
                continue;
            }
            let ghost = list
                .iter()
                .rev()
                .filter(|v| self.keeps(dir, v))
                .find_map(|v| Some((v.ino, self.entry_of(v.ino, name, None)?)));
            if let Some((ino, mut entry)) = ghost {
                // Linked since it left: kept as a plain copy, as below.
                entry.link = None;
                entry.nlink = 1;
                entry.kept = true;
                entry.moved_to = self.place_of(ino);
                listing.entries.insert(name.clone(), entry);
                kept.push(name.clone());
            }
        }
        let write = self.nodes.get(&dir).and_then(Node::writable_dir);
        for (name, left) in self.entries_left.get(&dir).into_iter().flatten() {
            if !self.keeps_left(dir, left) {
                continue;
            }
            let occupant = match listing.entries.contains_key(name) {
                true => match self.giving_way(dir, name, left.ino) {
                    Some(ino) => Some(ino),
                    None => continue,
                },
                false => None,
            };
            if let Some(mut entry) = self.entry_of(left.ino, name, write) {
                // A linked file's name kept goes as a plain copy of it: an
                // extra name of the link would outnumber its link count.
                entry.link = None;
                entry.nlink = 1;
                entry.kept = true;
                entry.moved_to = self.place_of(left.ino);
                listing.entries.insert(name.clone(), entry);
                kept.push(name.clone());
                displaced.extend(occupant);
            }
        }
        Ghosts { kept, displaced }
    }

    /// The child at `name` in `dir`, if it gives way, in the listing about
    /// to be published, to the kept name of `kept`, a hard-linked file
    /// renamed over there whose other names are all in listings not
    /// published yet: were `dir` published with its new entry, the linked
    /// file would be named nowhere on the mirrors, and a crash lost it (a
    /// crash sweep: a linked name renamed over, the other name moved, then
    /// the kill). Only a file that carries a recovery note gives way:
    /// recovery brings it back at its name, finds there an entry marked
    /// kept (`Entry::kept`), and keeps both.
    fn giving_way(&self, dir: u64, name: &str, kept: u64) -> Option<u64> {
        let ino = *self.children(dir)?.get(name)?;
        (ino != kept && self.noted(ino)).then_some(ino)
    }

    /// Whether `dir`'s listing keeps the file that gave up the name `v`
    /// there: renamed away, to a place no published listing names it at,
    /// from here, the last place one did. (A file no listing has named yet
    /// is kept by its recovery note; one last named in a third directory,
    /// by that directory's listing, if the mirrors reach it: see
    /// [`Tree::reached`].)
    fn keeps(&self, dir: u64, v: &Vacated) -> bool {
        v.renamed && self.keeps_ino(dir, v.ino)
    }

    /// Whether `dir`'s listing keeps `ino` (a file or a directory of ours)
    /// renamed away from it: see [`Tree::keeps`].
    fn keeps_ino(&self, dir: u64, ino: u64) -> bool {
        // A removed directory's listing is reached from nowhere.
        let removed = self.nodes.get(&dir).is_none_or(|d| d.orphan);
        !removed
            && self.nodes.get(&ino).is_some_and(|node| {
                // A file hard-linked since it left is kept the same way:
                // its names may all be in listings not published yet (a
                // crash sweep lost files linked after a rename this way).
                !node.orphan
                    && node.parent != dir
                    && node
                        .named_in
                        .is_some_and(|at| at == dir || at == node.parent || !self.reached(at))
                    && !self.named_where_it_is(ino)
            })
    }

    /// Whether a listing of `dir` published now would still keep files
    /// renamed away from it ([`Tree::ghosts`]).
    pub fn ghosting(&self, dir: u64) -> bool {
        let files = self.vacated.get(&dir).into_iter().flatten();
        let mut left = self.entries_left.get(&dir).into_iter().flatten();
        files.flat_map(|(_, list)| list).any(|v| self.keeps(dir, v))
            || left.any(|(_, l)| self.keeps_left(dir, l))
    }

    /// `dir` was published from a listing taken when the count stood at
    /// `taken`: the names given up before are gone from the mirrors, but
    /// for those the listing `kept` ([`Tree::ghosts`]).
    /// Returns the inodes whose recovery notes named them: those that
    /// still have a note (files renamed away, or handed a name by
    /// [`Tree::vacated_for`]). Every inode, removed files' too, made a
    /// mass `rm` rewrite a note, or walk the whole tree, per file.
    pub fn published_vacated(&mut self, dir: u64, taken: u64, kept: &[String]) -> Vec<u64> {
        tracing::trace!(dir, taken, ?kept, "names given up settled");
        if let Some(left) = self.entries_left.get_mut(&dir) {
            left.retain(|name, l| l.at > taken || kept.contains(name));
            if left.is_empty() {
                self.entries_left.remove(&dir);
            }
        }
        let Some(names) = self.vacated.get_mut(&dir) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        names.retain(|name, list| {
            if kept.contains(name) {
                return true;
            }
            list.retain(|v| {
                let published = v.at <= taken;
                if published {
                    gone.push((v.ino, name.clone()));
                }
                !published
            });
            !list.is_empty()
        });
        if names.is_empty() {
            self.vacated.remove(&dir);
        }
        let mut noted = Vec::new();
        for (ino, name) in gone {
            self.forget_vacated_by(ino, dir, &name);
            if self.noted(ino) {
                noted.push(ino);
            }
        }
        noted
    }

    /// A directory is gone: so are the names it gave up.
    fn forget_vacated(&mut self, dir: u64) {
        self.entries_left.remove(&dir);
        for (name, list) in self.vacated.remove(&dir).into_iter().flatten() {
            for v in list {
                self.forget_vacated_by(v.ino, dir, &name);
            }
        }
    }

    pub fn insert(&mut self, node: Node) -> u64 {
        let ino = self.next;
        self.next += 1;
        if node.moved_to.is_some() {
            self.kept_moved.insert(ino);
        }
        if node.moved_from.is_some() {
            self.moved_in.insert(ino);
        }
        if let Body::Dir { read, .. } = &node.body {
            let tag = Place::dir_tag(&self.place_key, &read.public_key);
            let nodes = &self.nodes;
            let known = self.dir_tags.entry(tag).or_default();
            known.retain(|d| nodes.get(d).is_some_and(|n| !n.orphan));
            known.push(ino);
        }
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

    /// A directory's link count: itself, its `.`, and each subdirectory's
    /// `..` (the root's `friends/` included). Where that is not counted,
    /// 1: "not counted", as btrfs answers for every directory and ext4 for
    /// one of more than 65,000 subdirectories, and as `find` and `fts`
    /// understand. That is a directory not listed yet (its subdirectories
    /// are unknown until then; 2 would tell `find` it has none), and one
    /// of more than [`NLINK_COUNTED_UP_TO`] entries: counting walks every
    /// entry, and the kernel asks after each change, and creating 30,000
    /// files in one directory spent two thirds of the mount's CPU here.
    pub fn dir_nlink(&self, dir: u64) -> u32 {
        let subdirs = match self.children(dir) {
            None => return 1,
            Some(c) if c.len() > NLINK_COUNTED_UP_TO => return 1,
            Some(c) => c
                .values()
                .filter(|i| self.nodes.get(i).is_some_and(Node::is_dir))
                .count(),
        };
        2 + subdirs as u32 + u32::from(dir == ROOT)
    }

    /// Fill a directory from its listing, keeping the inode numbers of
    /// names already known (and any local, not yet published, children).
    /// Returns the names whose inode was replaced (see below): the kernel's
    /// cached entries for them must go.
    pub fn load(&mut self, dir: u64, listing: Listing) -> Vec<String> {
        let mut replaced = Vec::new();
        let Some(node) = self.nodes.get(&dir) else {
            return replaced;
        };
        let parent_write = node.writable_dir().cloned();
        let ours = parent_write.is_some();
        let node_parent = node.parent;
        if dir == ROOT {
            // The root's own attributes, unless a change of them is still
            // to be published. Until it is listed the root shows 0700, so
            // that a root made private is never shown open; a root listing
            // without attributes (never changed, or written by an older
            // lode) means 0755.
            if !self.dirty.contains(&ROOT)
                && !self.publishing.contains(&ROOT)
                && let Some(root) = self.nodes.get_mut(&ROOT)
            {
                match listing.this {
                    Some(this) => {
                        root.mode = this.mode;
                        (root.uid, root.gid) = this.owner;
                        root.atime = this.atime;
                        root.mtime = this.mtime;
                        root.ctime = this.ctime;
                    }
                    None => root.mode = ROOT_MODE,
                }
            }
        }
        // A friend's top directory: the root of their tree carries its own
        // attributes (a directory deeper in it does not; it keeps 0755 and
        // the time it was added). Its mode as theirs, like every entry
        // under friends/ (writes get EROFS whatever the bits say), and
        // owned by the mounting user as the rest of friends/ is.
        if node_parent == FRIENDS
            && let Some(this) = &listing.this
            && let Some(top) = self.nodes.get_mut(&dir)
        {
            top.mode = this.mode & 0o7777;
            top.atime = this.atime;
            top.mtime = this.mtime;
            top.ctime = this.ctime;
        }
        if dir == ROOT {
            for (id, entry) in &listing.links {
                let fresh = self.node_from_entry(ROOT, "", entry, parent_write.as_ref());
                let Some(fresh) = fresh else { continue };
                match self.links.get(id) {
                    Some(&ino) => self.refresh(ino, fresh),
                    None => {
                        let ino = self.insert(fresh);
                        self.links.insert(*id, ino);
                    }
                }
            }
        }
        let old = self.children(dir).cloned().unwrap_or_default();
        let mut children = BTreeMap::new();
        let mut stale_snapshot = false;
        for (name, entry) in &listing.entries {
            // In our tree, a linked name is the table's inode. (Link ids in
            // friends' trees are theirs, and never alias ours.)
            if let (true, Some(id)) = (ours, entry.link)
                && let Some(&ino) = self.links.get(&id)
                && self.nodes.get(&ino).is_some_and(|n| !n.orphan)
            {
                let homeless = self.home_is_gone(ino);
                let node = self.nodes.get_mut(&ino).expect("checked above");
                if homeless {
                    node.parent = dir;
                    node.name = name.clone();
                }
                stale_snapshot |= self.entry_of(ino, name, None).as_ref() != Some(entry);
                children.insert(name.clone(), ino);
                continue;
            }
            let node = self.node_from_entry(dir, name, entry, parent_write.as_ref());
            let Some(node) = node else { continue };
            // A name that now holds another directory (a friend removed
            // one and made another) is a new inode: the old one's listing,
            // children and version are the other directory's.
            let ino = match old.get(name) {
                // A file open here that is another version now (a friend
                // saved it anew) is a new inode, as if renamed over: those
                // who hold it open keep reading the version they opened,
                // with pages of their own in the kernel, and never a mix
                // of the two. The old inode goes once they close it.
                Some(&ino) if self.replaced_while_open(ino, &node) => {
                    if let Some(held) = self.nodes.get_mut(&ino) {
                        held.orphan = true;
                        held.nlink = 0;
                    }
                    replaced.push(name.clone());
                    self.insert(node)
                }
                Some(&ino)
                    if self
                        .nodes
                        .get(&ino)
                        .is_some_and(|n| n.kind() == node.kind() && same_slot(n, &node)) =>
                {
                    self.refresh(ino, node);
                    ino
                }
                _ => self.insert(node),
            };
            if let (true, Some(id)) = (ours, entry.link) {
                self.links.insert(id, ino);
            }
            children.insert(name.clone(), ino);
        }
        if stale_snapshot {
            // Another name of a linked file changed while this directory
            // was not loaded: republish its snapshot.
            self.dirty.insert(dir);
        }
        // A friend's names this listing no longer has (removed, or another
        // inode now): those inodes, and what is loaded under them, are
        // gone there, now or once the kernel and open handles let go. They
        // stayed in the table for the life of the mount, and a file held
        // open showed one link after its removal.
        if !ours {
            let mut under: Vec<u64> = old
                .iter()
                .filter(|&(name, ino)| children.get(name) != Some(ino))
                .map(|(_, &ino)| ino)
                .collect();
            let mut i = 0;
            while let Some(&d) = under.get(i) {
                under.extend(
                    self.children(d)
                        .into_iter()
                        .flat_map(|c| c.values().copied()),
                );
                i += 1;
            }
            for &ino in &under {
                if let Some(node) = self.nodes.get_mut(&ino) {
                    node.orphan = true;
                    node.nlink = 0;
                }
            }
            for ino in under {
                self.drop_if_unused(ino);
            }
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
        if let Some(
            node @ Node {
                body: Body::Dir { read, .. },
                ..
            },
        ) = self.nodes.get(&dir)
            && node.writable_dir().is_some()
        {
            self.listed.insert(read.public_key, dir);
        }
        replaced
    }

    /// Whether `ino`, a file open here with no change of ours, is another
    /// version in `fresh`.
    fn replaced_while_open(&self, ino: u64, fresh: &Node) -> bool {
        let Some(held) = self.nodes.get(&ino) else {
            return false;
        };
        match (&held.body, &fresh.body) {
            (Body::File { cap: Some(a), .. }, Body::File { cap: Some(b), .. }) => {
                held.opens > 0 && !held.busy() && held.link.is_none() && a.root != b.root
            }
            _ => false,
        }
    }

    /// Another inode listing the directory `read` writably, if one does
    /// (see `LodeFs::load`).
    pub fn listed_elsewhere(&self, ino: u64, read: &DirReadCap) -> Option<u64> {
        let &other = self.listed.get(&read.public_key)?;
        let node = self.nodes.get(&other)?;
        let same = matches!(
            &node.body,
            Body::Dir { read: r, children: Some(_), .. } if r == read
        );
        let writes = node.writable_dir().is_some();
        (other != ino && same && writes && !node.orphan).then_some(other)
    }

    /// Make `ino` an alias ([`Node::alias`]): it and what is listed under
    /// it from now on read, but never write.
    pub fn make_alias(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.alias = true;
        }
    }

    /// Whether a directory with read-cap `home` is listed here without
    /// naming the directory `child`: this mount's own view, which may be
    /// ahead of what the mirrors hold.
    pub fn listed_without(&self, home: &DirReadCap, child: &DirReadCap) -> bool {
        self.nodes.values().any(|n| match &n.body {
            Body::Dir {
                read,
                children: Some(c),
                ..
            } if read == home && !n.orphan => !c.values().any(|i| {
                matches!(
                    self.nodes.get(i).map(|n| &n.body),
                    Some(Body::Dir { read: r, .. }) if r == child
                )
            }),
            _ => false,
        })
    }

    /// A refresh of `dir` found its listing unchanged: it counts as loaded
    /// now.
    pub fn still_current(&mut self, dir: u64) {
        if let Some(Node {
            body: Body::Dir { loaded_at, .. },
            ..
        }) = self.nodes.get_mut(&dir)
        {
            *loaded_at = Some(Instant::now());
        }
    }

    /// Update a known inode from a fresh listing entry, unless it has local
    /// changes.
    fn refresh(&mut self, ino: u64, fresh: Node) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        if node.busy() {
            return;
        }
        node.mode = fresh.mode;
        node.size = fresh.size;
        node.atime = fresh.atime;
        node.mtime = fresh.mtime;
        node.ctime = fresh.ctime;
        node.uid = fresh.uid;
        node.gid = fresh.gid;
        node.nlink = fresh.nlink;
        node.kept = fresh.kept;
        node.moved_to = fresh.moved_to;
        node.moved_from = fresh.moved_from;
        if node.moved_to.is_some() {
            self.kept_moved.insert(ino);
        }
        if node.moved_from.is_some() {
            self.moved_in.insert(ino);
        }
        if let (Body::File { cap: held, .. }, Body::File { cap: new, .. }) =
            (&node.body, &fresh.body)
            && held != new
        {
            node.stale_pages = true;
        }
        match (&mut node.body, fresh.body) {
            (Body::Dir { .. }, Body::Dir { .. }) => {}
            (body, fresh) => *body = fresh,
        }
    }

    /// The listing entry for inode `ino` under `name`; `None` for what is
    /// not publishable (a file not uploaded yet, the friends directory).
    /// `parent_write` is needed to seal a child directory's write-cap.
    pub fn entry_of(
        &self,
        ino: u64,
        name: &str,
        parent_write: Option<&DirWriteCap>,
    ) -> Option<Entry> {
        let child = self.nodes.get(&ino)?;
        let entry = match &child.body {
            Body::File { cap: Some(cap), .. } => Entry::file(cap.clone(), child.mode, child.mtime),
            Body::File { cap: None, .. } | Body::Friends => return None,
            Body::Dir { write: Some(w), .. } => {
                Entry::dir(parent_write?, name, w, child.mode, child.mtime)
            }
            Body::Dir { read, .. } => Entry::dir_read_only(read.clone(), child.mode, child.mtime),
            Body::Symlink(target) => Entry::symlink(target, child.mtime),
            Body::Special { kind, rdev } => Entry::special(*kind, child.mode, *rdev, child.mtime),
        };
        Some(entry.with_meta(
            child.atime,
            child.ctime,
            Some((child.uid, child.gid)),
            child.link.map(|id| (id, child.nlink)),
        ))
    }

    /// The listing to publish for a directory: every child that has a cap,
    /// and for the root, the link table.
    pub fn listing(&self, dir: u64) -> Option<Listing> {
        // A removed directory is empty (or POSIX would not have let it
        // go): its last listing goes up like any other, so that a friend
        // holding its read-cap sees its entries gone, not the ones it had
        // at its last publish.
        let node = self.nodes.get(&dir)?;
        let write = node.writable_dir()?;
        let mut listing = Listing::default();
        for (name, &ino) in self.children(dir)? {
            if let Some(mut entry) = self.entry_of(ino, name, Some(write)) {
                // A name kept for a file that went elsewhere stays marked
                // so until it goes (`Tree::kept_found`).
                let node = &self.nodes[&ino];
                if let Some(place) = node.moved_to {
                    entry.kept = true;
                    entry.moved_to = Some(place);
                }
                // Where it was renamed from, while a listing there may
                // still name it.
                if let Some(from) = node.moved_from
                    && from.left.is_none_or(|(left, at)| {
                        self.published_at.get(&left).is_none_or(|&p| p < at)
                    })
                {
                    entry.moved_from = Some((from.place, from.seq));
                }
                listing.entries.insert(name.clone(), entry);
            }
        }
        // Every directory but the root says which directory names it, so a
        // name left elsewhere by an unfinished move is known for stale.
        if dir != ROOT
            && let Some(Node {
                body: Body::Dir { read: parent, .. },
                ..
            }) = self.nodes.get(&node.parent)
            && let Some(root) = self.nodes.get(&ROOT).and_then(Node::writable_dir)
            && let Body::Dir { read: own, .. } = &node.body
        {
            listing.home = Some(Home::seal(root, own, parent));
        }
        if dir == ROOT {
            listing.this = Some(DirAttrs {
                mode: node.mode,
                owner: (node.uid, node.gid),
                atime: node.atime,
                mtime: node.mtime,
                ctime: node.ctime,
            });
            for (id, &ino) in &self.links {
                if let Some(entry) = self
                    .nodes
                    .get(&ino)
                    .filter(|n| !n.orphan)
                    .and_then(|n| self.entry_of(ino, &n.name, None))
                {
                    listing.links.insert(*id, entry);
                }
            }
        }
        Some(listing)
    }

    /// The loaded directories that name `ino`.
    /// Whether the linked file `ino` has no home a loaded listing vouches
    /// for: none yet, or one whose directory is gone, or listed without
    /// it there. (A home in a directory not loaded is taken as good.)
    fn home_is_gone(&self, ino: u64) -> bool {
        let Some(node) = self.nodes.get(&ino) else {
            return false;
        };
        if node.name.is_empty() {
            return true;
        }
        match self.nodes.get(&node.parent) {
            None => true,
            Some(dir) if dir.orphan => true,
            Some(_) => self
                .children(node.parent)
                .is_some_and(|c| c.get(&node.name) != Some(&ino)),
        }
    }

    pub fn dirs_naming(&self, ino: u64) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| {
                matches!(&n.body, Body::Dir { children: Some(c), .. } if c.values().any(|&i| i == ino))
            })
            .map(|(&d, _)| d)
            .collect()
    }

    /// Record a change of `ino`'s content or metadata: its ctime moves and
    /// every listing that carries it is republished.
    pub fn changed(&mut self, ino: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.ctime = now();
        // Renamed, or its metadata changed: the user's file now.
        node.kept = false;
        node.moved_to = None;
        self.republish(ino);
    }

    /// Mark every listing that carries `ino` for publishing.
    pub fn republish(&mut self, ino: u64) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        if node.orphan {
            return;
        }
        if node.link.is_some() {
            self.dirty.insert(ROOT);
            for d in self.dirs_naming(ino) {
                self.dirty.insert(d);
            }
        } else {
            let parent = node.parent;
            self.dirty.insert(parent);
        }
    }

    /// A directory's entries changed: its mtime and ctime move, and both
    /// its own listing and its entry in its parent are republished.
    pub fn touch_dir(&mut self, dir: u64) {
        let Some(node) = self.nodes.get_mut(&dir) else {
            return;
        };
        let t = now();
        node.mtime = t;
        node.ctime = t;
        let parent = node.parent;
        self.dirty.insert(dir);
        if dir != ROOT {
            self.dirty.insert(parent);
        }
    }

    /// Remove the name `name` from `dir`. The inode loses a link; with none
    /// left it becomes an orphan, dropped once nothing holds it.
    pub fn unlink(&mut self, dir: u64, name: &str) {
        let Some(ino) = self.children_mut(dir).and_then(|c| c.remove(name)) else {
            return;
        };
        self.vacate(dir, name, ino, false);
        self.touch_dir(dir);
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.nlink = node.nlink.saturating_sub(1);
        let gone = node.nlink == 0 || node.is_dir();
        if !gone {
            // Still named elsewhere: move its home if this was it.
            if node.parent == dir && node.name == name {
                let other = self.dirs_naming(ino).into_iter().find_map(|d| {
                    let n = self.children(d)?.iter().find(|&(_, &i)| i == ino)?.0;
                    Some((d, n.clone()))
                });
                let node = self.nodes.get_mut(&ino).expect("still there");
                // None listed here: no home until a listing naming it is
                // loaded (`Tree::load` adopts it then). Kept at the removed
                // name, every write, chmod or link through another name
                // failed with ENOENT once this directory was gone.
                (node.parent, node.name) = other.unwrap_or((ROOT, String::new()));
            }
            // Its other names may be in listings not published yet: this
            // one stays in `dir`'s (as a plain copy) until its home's is.
            // A crash sweep lost linked files whose published name was
            // removed while the other was still unpublished.
            // Where a rename over it takes the name at once, its home's
            // listing goes up first instead (`LodeFs::publish_ordered`).
            let home = self.nodes.get(&ino).map_or(dir, |n| n.parent);
            if home != dir {
                self.entry_left(dir, name, ino, home);
                self.moved_into.entry(dir).or_default().insert(home);
            }
            self.changed(ino);
            return;
        }
        node.orphan = true;
        node.ctime = now();
        // A directory entries moved out of, removed: its parent's listing
        // now drops it, and with it the names it kept for them until
        // their new homes are published. So the parent waits for those
        // homes as the directory did. It published at once, and an entry
        // moved out then (`mv p/d/f q/; rmdir p/d`) was in no listing
        // reachable on the mirrors until `q` went up: a crash, or a `q`
        // that could not be published, lost it (a helper's review).
        if let Some(into) = self.moved_into.get(&ino).cloned() {
            let into = into.into_iter().filter(|&d| d != dir);
            self.moved_into.entry(dir).or_default().extend(into);
        }
        self.held_back.remove(&ino);
        if self.unpublished.remove(&ino) {
            // Named by no listing on the mirrors but its parent's, which
            // is republished without it.
            self.dirty.remove(&ino);
            self.moved_into.remove(&ino);
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        if let Some(id) = node.link.take() {
            self.links.remove(&id);
            self.dirty.insert(ROOT);
        }
        // Its staged data must not come back on recovery.
        if let Body::File {
            staged: Some(p), ..
        } = &node.body
        {
            super::notes::remove(p);
        }
        self.drop_if_unused(ino);
    }

    /// Drop an orphan nobody holds any more, with its staged data. A
    /// removed directory whose last change is still to be published stays
    /// until it is (see [`Tree::listing`]).
    pub fn drop_if_unused(&mut self, ino: u64) {
        let unused = self.nodes.get(&ino).is_some_and(|n| {
            n.orphan
                && n.opens == 0
                && n.lookups == 0
                && !self.dirty.contains(&ino)
                && !self.publishing.contains(&ino)
        });
        if !unused {
            return;
        }
        self.listed_seq.remove(&ino);
        self.published_at.remove(&ino);
        self.unpublished.remove(&ino);
        self.ghosted.remove(&ino);
        self.forget_vacated(ino);
        if let Some(Node {
            body: Body::File {
                staged: Some(p), ..
            },
            size,
            ..
        }) = self.nodes.remove(&ino)
        {
            // The note first, here: without it recovery removes the copy
            // too, should the remover not get to it.
            super::notes::remove(&p);
            match &self.remover {
                Some(remover) => remover.remove(p, size),
                None => super::partial::remove_staged(&p),
            }
        }
    }

    /// Remove `name` from `dir`, if it still names `ino`, because it is
    /// stale: a name of a directory
    /// that lives elsewhere. Unlike [`Tree::unlink`], nothing about the
    /// directory it named changes (it is still named where it lives), and
    /// neither do `dir`'s times; `dir` is republished without the name if
    /// it is ours.
    pub fn drop_stale(&mut self, dir: u64, name: &str, ino: u64) {
        let Some(children) = self.children_mut(dir) else {
            return;
        };
        if children.get(name) != Some(&ino) {
            return;
        }
        children.remove(name);
        if self
            .nodes
            .get(&dir)
            .is_some_and(|n| n.writable_dir().is_some())
        {
            self.dirty.insert(dir);
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.orphan = true;
            // What the kernel still holds of it reads the directory but
            // never writes: a second writable copy of one directory's
            // listing is what made a stale name dangerous.
            if let Body::Dir { write, .. } = &mut node.body {
                *write = None;
            }
        }
        self.drop_if_unused(ino);
    }

    /// Where the file `ino` is now, for a name it left (`Entry::moved_to`):
    /// its directory's slot and its name there. None for a hard-linked
    /// file (its names are several), one named nowhere, and a directory
    /// (whose own listing names its home: `Listing::home`).
    fn place_of(&self, ino: u64) -> Option<Place> {
        let node = self
            .nodes
            .get(&ino)
            .filter(|n| n.link.is_none() && !n.orphan && matches!(n.body, Body::File { .. }))?;
        self.place_in(node.parent, &node.name)
    }

    /// The place `name` in directory `dir` (`Place`), if `dir` is one.
    pub fn place_in(&self, dir: u64, name: &str) -> Option<Place> {
        match &self.nodes.get(&dir)?.body {
            Body::Dir { read, .. } => Some(Place::of(&self.place_key, &read.public_key, name)),
            _ => None,
        }
    }

    /// The listed directory of ours whose tag is `tag`: not removed, not a
    /// read-only second name of one listed elsewhere (`Node::alias`, whose
    /// entries are a copy that may be stale).
    fn listed_dir_by_tag(&self, tag: &[u8; 16]) -> Option<u64> {
        let ours = |dir: &u64| match self.nodes.get(dir) {
            Some(Node {
                orphan: false,
                alias: false,
                body:
                    Body::Dir {
                        read,
                        write: Some(_),
                        children: Some(_),
                        ..
                    },
                ..
            }) => Place::dir_tag(&self.place_key, &read.public_key) == *tag,
            _ => false,
        };
        self.dir_tags.get(tag)?.iter().copied().find(|d| ours(d))
    }

    /// The files of the listed directory `dir` by the tag of their name.
    fn files_by_tag(&self, dir: u64) -> HashMap<[u8; 16], u64> {
        let Some(Body::Dir {
            read,
            children: Some(children),
            ..
        }) = self.nodes.get(&dir).map(|n| &n.body)
        else {
            return HashMap::new();
        };
        children
            .iter()
            .map(|(name, &i)| (Place::name_tag(&self.place_key, &read.public_key, name), i))
            .collect()
    }

    /// The names kept for files that went elsewhere (loaded from entries
    /// marked kept, `Node::moved_to`, or marked by [`Tree::stale_found`])
    /// whose file is named, in the same version, at the place the entry
    /// records, in a listed directory of ours whose published listing
    /// names that version (`Node::listed`), the file there not being
    /// changed. Each as (its directory, its name, its inode, the directory
    /// where the file is): the caller lets it go once that directory, and
    /// each one above it, is on `happy` mirrors.
    ///
    /// Only a kept name nothing uses: not open, not written to since it
    /// was loaded (a write makes it the user's file). One whose place is
    /// listed and names something else is not looked at again in this
    /// mount; its mark stays.
    pub fn kept_found(&mut self) -> Vec<(u64, String, u64, u64)> {
        let nodes = &self.nodes;
        self.kept_moved.retain(|ino| {
            nodes.get(ino).is_some_and(|n| {
                n.moved_to.is_some() && n.opens == 0 && n.unchanging_root().is_some()
            })
        });
        if self.kept_moved.is_empty() {
            return Vec::new();
        }
        let mut files: HashMap<u64, HashMap<[u8; 16], u64>> = HashMap::new();
        let mut found = Vec::new();
        let mut done = Vec::new();
        for &ino in &self.kept_moved {
            let kept = &self.nodes[&ino];
            let (Some(mut place), Body::File { cap: Some(cap), .. }) = (kept.moved_to, &kept.body)
            else {
                continue;
            };
            // Where it went may be a name kept too (it moved on before
            // that directory went up again): followed a few steps, to the
            // file's own name.
            for _ in 0..MAX_KEPT_HOPS {
                let Some(dir) = self.listed_dir_by_tag(&place.dir) else {
                    break;
                };
                let there = files
                    .entry(dir)
                    .or_insert_with(|| self.files_by_tag(dir))
                    .get(&place.name)
                    .copied();
                let file = there.and_then(|t| Some((t, self.nodes.get(&t)?)));
                let Some((there, file)) =
                    file.filter(|(_, f)| f.unchanging_root() == Some(cap.root))
                else {
                    done.push(ino);
                    break;
                };
                match file.moved_to {
                    Some(next) if self.kept_moved.contains(&there) => place = next,
                    Some(_) => break,
                    None => {
                        if file.link.is_none() && file.listed == Some((file.parent, cap.root)) {
                            found.push((kept.parent, kept.name.clone(), ino, file.parent));
                        } else {
                            done.push(ino);
                        }
                        break;
                    }
                }
            }
        }
        for ino in done {
            self.kept_moved.remove(&ino);
        }
        found
    }

    /// Names a move left (`Node::moved_from`, loaded from the mirrors):
    /// for each file renamed here whose entry says where from, once that
    /// directory is listed here, the name there if the directory is ours,
    /// unchanged since it was listed (not dirty: any change of the user's
    /// there would make it so), from a version no newer than the one
    /// before the move, and names the same version of the file, nothing
    /// changing either. Such a name is marked kept, as if the crashed
    /// mount's listing had kept it (`Node::moved_to`, which a change of
    /// it clears, and which its directory's listings carry from then on),
    /// for [`Tree::kept_found`] to find. Each file's `moved_from` is
    /// settled once its old directory is listed.
    pub fn stale_found(&mut self) {
        let nodes = &self.nodes;
        self.moved_in.retain(|ino| {
            nodes.get(ino).is_some_and(|n| {
                n.moved_from.is_some()
                    && !n.orphan
                    && matches!(n.body, Body::File { cap: Some(_), .. })
            })
        });
        let mut marks = Vec::new();
        let mut settled = Vec::new();
        let mut files: HashMap<u64, HashMap<[u8; 16], u64>> = HashMap::new();
        for &ino in &self.moved_in {
            let file = &self.nodes[&ino];
            let (Some(from), Body::File { cap: Some(cap), .. }) = (file.moved_from, &file.body)
            else {
                continue;
            };
            let Some(dir) = self.listed_dir_by_tag(&from.place.dir) else {
                continue;
            };
            settled.push(ino);
            let unchanged = !self.dirty.contains(&dir) && !self.publishing.contains(&dir);
            let old_enough = self.listed_seq.get(&dir).is_some_and(|&s| s <= from.seq);
            if !unchanged || !old_enough || dir == file.parent {
                continue;
            }
            if file.listed != Some((file.parent, cap.root)) || file.unchanging_root().is_none() {
                continue;
            }
            let old = files
                .entry(dir)
                .or_insert_with(|| self.files_by_tag(dir))
                .get(&from.place.name)
                .copied();
            let stale = old.filter(|&old| {
                self.nodes.get(&old).is_some_and(|n| {
                    old != ino
                        && n.link.is_none()
                        && n.opens == 0
                        && n.moved_to.is_none()
                        && n.listed == Some((dir, cap.root))
                        && n.unchanging_root() == Some(cap.root)
                })
            });
            if let (Some(old), Some(place)) = (stale, self.place_in(file.parent, &file.name)) {
                marks.push((old, place));
            }
        }
        for (old, place) in marks {
            if let Some(node) = self.nodes.get_mut(&old) {
                node.kept = true;
                node.moved_to = Some(place);
                self.kept_moved.insert(old);
            }
        }
        for ino in settled {
            self.moved_in.remove(&ino);
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.moved_from = None;
            }
        }
    }

    /// Let go of the kept name `name` in `dir` (of `ino`, found by
    /// [`Tree::kept_found`]): `dir` is republished without it.
    pub fn drop_kept(&mut self, dir: u64, name: &str, ino: u64) {
        self.kept_moved.remove(&ino);
        self.drop_stale(dir, name, ino);
    }

    /// `dir` and every directory above it, up to the root.
    pub fn up_from(&self, dir: u64) -> Vec<u64> {
        let mut chain = vec![dir];
        let mut cur = dir;
        while cur != ROOT {
            match self.nodes.get(&cur) {
                Some(n) if !chain.contains(&n.parent) => {
                    cur = n.parent;
                    chain.push(cur);
                }
                _ => break,
            }
        }
        chain
    }

    /// Forget the entries of idle directories, oldest listing first, until
    /// at most `target` inodes are left (or nothing more is idle); returns
    /// how many inodes were dropped.
    ///
    /// A directory's entries go together, and only when nothing needs their
    /// inodes: the kernel holds no lookup on the directory or on any entry
    /// (so it can send no request that names them), none is open, changed
    /// and not yet published, or hard-linked, and an entry that is a
    /// directory has had its own entries dropped first. The listing on the
    /// mirrors then says all the nodes said, and the next lookup lists the
    /// directory again, under inode numbers the kernel has never seen
    /// (numbers are never reused). A file's kept copy (a cache of published
    /// content) goes with it: its path is returned for the caller to
    /// remove.
    pub fn shed(&mut self, target: usize) -> (usize, Vec<PathBuf>) {
        let before = self.nodes.len();
        let mut kept = Vec::new();
        while self.nodes.len() > target {
            let mut idle: Vec<(Option<Instant>, u64)> = self
                .nodes
                .iter()
                .filter_map(|(&ino, node)| match node.body {
                    Body::Dir { loaded_at, .. } if self.sheddable(ino) => Some((loaded_at, ino)),
                    _ => None,
                })
                .collect();
            if idle.is_empty() {
                break;
            }
            // A directory whose entries go may make its parent idle: the
            // next pass sees that. Each pass unloads at least one directory.
            idle.sort_unstable();
            for (_, dir) in idle {
                if self.nodes.len() <= target {
                    break;
                }
                self.unload(dir, &mut kept);
            }
        }
        debug_assert!(self.whole(), "shedding left a name without its inode");
        (before - self.nodes.len(), kept)
    }

    /// Every name in a loaded directory has its inode (checked in debug
    /// builds after shedding).
    fn whole(&self) -> bool {
        self.nodes.values().all(|node| match &node.body {
            Body::Dir {
                children: Some(c), ..
            } => c.values().all(|ino| self.nodes.contains_key(ino)),
            _ => true,
        }) && self.links.values().all(|ino| self.nodes.contains_key(ino))
    }

    /// Whether `dir`'s entries may be dropped (see [`Tree::shed`]).
    fn sheddable(&self, dir: u64) -> bool {
        let unheld = |ino: &u64, node: &Node| {
            node.lookups == 0
                && node.opens == 0
                && !node.orphan
                && !self.dirty.contains(ino)
                && !self.publishing.contains(ino)
        };
        if dir == ROOT || dir == FRIENDS {
            return false;
        }
        let Some(node) = self.nodes.get(&dir) else {
            return false;
        };
        let Body::Dir {
            children: Some(children),
            ..
        } = &node.body
        else {
            return false;
        };
        // One of ours the mirrors do not reach from the root yet (its name,
        // or one above it, is not published where it is) may hold files
        // another directory's listing keeps at their old names only while
        // their nodes are here (`keeps_ino`): shed, the next publish there
        // dropped them, and a crash before this one was named lost them.
        let reached = node.writable_dir().is_none() || self.reached(dir);
        reached
            && unheld(&dir, node)
            && children.values().all(|ino| {
                self.nodes.get(ino).is_some_and(|child| {
                    unheld(ino, child)
                        && child.link.is_none()
                        && match &child.body {
                            Body::Dir { children, .. } => children.is_none(),
                            Body::File {
                                staged,
                                cached,
                                dirty,
                                writers,
                                ..
                            } => (staged.is_none() || *cached) && !dirty && *writers == 0,
                            _ => true,
                        }
                })
            })
    }

    /// Drop a directory's entries (adding their kept copies to `kept`); it
    /// is listed again when next needed.
    fn unload(&mut self, dir: u64, kept: &mut Vec<PathBuf>) {
        let Some(Node {
            body:
                Body::Dir {
                    children,
                    loaded_at,
                    ..
                },
            ..
        }) = self.nodes.get_mut(&dir)
        else {
            return;
        };
        *loaded_at = None;
        for ino in children.take().into_iter().flat_map(BTreeMap::into_values) {
            self.listed_seq.remove(&ino);
            if let Some(Node {
                body: Body::File {
                    staged: Some(p), ..
                },
                ..
            }) = self.nodes.remove(&ino)
            {
                kept.push(p);
            }
        }
    }

    /// An inode for a listing entry.
    pub fn node_from_entry(
        &self,
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
                cached: false,
                generation: 0,
            },
            (EntryKind::Dir, Some(crate::caps::Cap::DirRead(read))) => Body::Dir {
                write: parent_write.and_then(|p| entry.write_cap(p, name).ok().flatten()),
                read: read.clone(),
                children: None,
                loaded_at: None,
            },
            (EntryKind::Symlink, _) => Body::Symlink(entry.target.clone().unwrap_or_default()),
            (kind, None) if kind.is_special() => Body::Special {
                kind,
                rdev: entry.rdev,
            },
            _ => return None,
        };
        // Friends' trees show as ours: their uids mean nothing here.
        let (uid, gid) = match parent_write {
            Some(_) => entry.owner.unwrap_or(self.owner),
            None => self.owner,
        };
        let ours = parent_write.is_some();
        // A friend's set-id bits and device numbers would act here with
        // the mount owner's authority (their owner is shown as ours), for
        // every local user where the mount allows others: a friend could
        // publish a set-uid shell, or a node for /dev/mem. Both are
        // dropped; a friend's device node shows as one with no device.
        let mode = match ours {
            true => entry.mode & 0o7777,
            false => entry.mode & 0o1777,
        };
        let body = match body {
            Body::Special { kind, .. } if !ours => Body::Special { kind, rdev: 0 },
            body => body,
        };
        // The size the content has, not the one the entry claims: a
        // friend's entry that said more than its file holds read short
        // (and the kernel shrank the file under an mmap, a SIGBUS), less
        // and it looked cut off.
        let size = match &body {
            Body::File { cap: Some(cap), .. } => cap.size,
            Body::Symlink(target) => target.len() as u64,
            _ => entry.size,
        };
        Some(Node {
            parent,
            name: name.to_string(),
            mode,
            size,
            atime: entry.atime,
            mtime: entry.mtime,
            ctime: entry.ctime,
            uid,
            gid,
            link: entry.link.filter(|_| ours),
            nlink: if ours { entry.nlink.max(1) } else { 1 },
            lookups: 0,
            opens: 0,
            execs: 0,
            orphan: false,
            foreign: !ours,
            stale_pages: false,
            alias: false,
            replaces: Vec::new(),
            listed: match (entry.kind, &entry.cap) {
                (EntryKind::File, Some(crate::caps::Cap::FileRead(cap))) => {
                    Some((parent, cap.root))
                }
                _ => None,
            },
            named_in: Some(parent)
                .filter(|_| matches!(entry.kind, EntryKind::File | EntryKind::Dir)),
            kept: entry.kept && ours,
            moved_to: entry.moved_to.filter(|_| entry.kept && ours),
            moved_from: entry
                .moved_from
                .filter(|_| ours)
                .map(|(place, seq)| MovedFrom {
                    place,
                    seq,
                    left: None,
                }),
            body,
        })
    }
}

/// How many kept names in a row [`Tree::kept_found`] follows to a file.
const MAX_KEPT_HOPS: usize = 8;

/// Whether two nodes name the same directory slot (true for anything but
/// two directories).
fn same_slot(a: &Node, b: &Node) -> bool {
    match (&a.body, &b.body) {
        (Body::Dir { read: x, .. }, Body::Dir { read: y, .. }) => x.public_key == y.public_key,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ReadKey;
    use crate::store::Vault;

    /// A friend's entry is shown at the size its content has: the file's
    /// cap's, a symlink's target's, whatever the entry claims.
    #[test]
    fn a_friends_entry_shows_the_size_its_content_has() {
        let (mut tree, friend) = with_friend();
        let mut listing = Listing::default();
        let mut big = file_entry(7);
        big.size = 1 << 40;
        listing.entries.insert("big".into(), big);
        let mut link = Entry::symlink("target", (1, 0));
        link.size = 3;
        listing.entries.insert("link".into(), link);
        tree.load(friend, listing);
        let size = |name: &str| tree.nodes[&child(&tree, friend, name)].size;
        assert_eq!((size("big"), size("link")), (7, 6));
    }

    /// A friend's names gone from a refreshed listing take their inodes
    /// with them: dropped at once if nothing holds them, else orphaned
    /// with no link left. They stayed in the table for good, and a file
    /// held open showed one link.
    #[test]
    fn a_friends_removed_entries_leave_the_table() {
        let (mut tree, friend) = with_friend();
        tree.load(friend, files(3));
        let (held, idle) = (child(&tree, friend, "f0"), child(&tree, friend, "f1"));
        tree.nodes.get_mut(&held).unwrap().opens = 1;
        let mut fewer = files(3);
        fewer.entries.remove("f0");
        fewer.entries.remove("f1");
        tree.load(friend, fewer);
        let node = &tree.nodes[&held];
        assert!(
            node.orphan && node.nlink == 0,
            "held open: orphaned, unlinked"
        );
        assert!(!tree.nodes.contains_key(&idle), "nothing holds it: gone");
        assert!(tree.nodes.contains_key(&child(&tree, friend, "f2")));
    }

    /// A tree with its root listed empty and a friend, alice, not yet
    /// listed.
    fn with_friend() -> (Tree, u64) {
        let mut tree = Tree::new(Vault::fresh_dir(), (0, 0));
        tree.load(ROOT, Listing::default());
        let friend = tree.insert(Node::new(
            FRIENDS,
            "alice",
            0o555,
            (0, 0),
            Body::Dir {
                write: None,
                read: Vault::fresh_dir().read_cap(),
                children: None,
                loaded_at: None,
            },
        ));
        (tree, friend)
    }

    fn file_entry(n: u8) -> Entry {
        let cap = FileReadCap {
            read_key: ReadKey::from_bytes([n; 32]),
            root: [n; 32],
            size: u64::from(n),
        };
        Entry::file(cap, 0o644, (1, 0))
    }

    /// A listing of `files` files named f0, f1, ...
    fn files(files: u8) -> Listing {
        let mut listing = Listing::default();
        for n in 0..files {
            listing.entries.insert(format!("f{n}"), file_entry(n));
        }
        listing
    }

    /// The inode named `name` in `dir`.
    fn child(tree: &Tree, dir: u64, name: &str) -> u64 {
        tree.children(dir).expect("loaded")[name]
    }

    /// A tree with root/a/b, b holding 10 files and a 5; all loaded.
    fn loaded() -> (Tree, u64, u64) {
        let root = Vault::fresh_dir();
        let (a_cap, b_cap) = (Vault::fresh_dir(), Vault::fresh_dir());
        let mut tree = Tree::new(root.clone(), (0, 0));
        let mut top = Listing::default();
        top.entries
            .insert("a".into(), Entry::dir(&root, "a", &a_cap, 0o755, (1, 0)));
        tree.load(ROOT, top);
        let a = child(&tree, ROOT, "a");
        let mut in_a = files(5);
        in_a.entries
            .insert("b".into(), Entry::dir(&a_cap, "b", &b_cap, 0o755, (1, 0)));
        tree.load(a, in_a);
        let b = child(&tree, a, "b");
        tree.load(b, files(10));
        (tree, a, b)
    }

    /// A friend's listing cannot make set-id programs or device nodes
    /// act with the mount owner's authority (their owner shows as the
    /// mount's); our own listing keeps both as stored. The nodes it
    /// loads stay read-only once orphaned.
    #[test]
    fn a_friends_set_id_bits_and_device_numbers_are_dropped() {
        let (mut tree, friend) = with_friend();
        let mem = 1 << 8 | 1; // makedev(1, 1), /dev/mem
        let listing = || {
            let mut listing = Listing::default();
            let mut sh = file_entry(1);
            sh.mode = 0o6755;
            listing.entries.insert("sh".into(), sh);
            let dev = Entry::special(EntryKind::CharDev, 0o666, mem, (1, 0));
            listing.entries.insert("mem".into(), dev);
            let sticky = Entry::special(EntryKind::Fifo, 0o1644, 0, (1, 0));
            listing.entries.insert("fifo".into(), sticky);
            listing
        };
        tree.load(friend, listing());
        tree.load(ROOT, listing());
        let shown = |dir: u64, name: &str| {
            let node = &tree.nodes[&child(&tree, dir, name)];
            let rdev = match node.body {
                Body::Special { rdev, .. } => rdev,
                _ => 0,
            };
            (node.mode, rdev, node.foreign)
        };
        assert_eq!(shown(friend, "sh"), (0o755, 0, true));
        assert_eq!(shown(friend, "mem"), (0o666, 0, true));
        assert_eq!(shown(friend, "fifo"), (0o1644, 0, true));
        assert_eq!(shown(ROOT, "sh"), (0o6755, 0, false));
        assert_eq!(shown(ROOT, "mem"), (0o666, mem, false));
    }

    /// A listing taken before an entry was renamed away, published after
    /// the entry's new home was, does not take the entry back.
    #[test]
    fn an_older_listing_does_not_take_back_an_entry_named_elsewhere() {
        let (mut tree, a, b) = loaded();
        let f0 = child(&tree, a, "f0");
        tree.dirty.insert(a);
        let (old, _) = tree.take_listing(a).unwrap();
        assert!(tree.rename_entry((a, "f0"), (b, "x"), f0, None));
        let (new, _) = tree.take_listing(b).unwrap();
        tree.listing_sent(&new, Some(2), Sent::Published);
        assert_eq!(tree.nodes[&f0].named_in, Some(b));
        tree.listing_sent(&old, Some(2), Sent::Published);
        assert_eq!(tree.nodes[&f0].named_in, Some(b), "taken back");
        // Still listed at its old name in `a` until `a` goes up again.
        assert!(tree.dirty.contains(&a));
    }

    /// A directory an entry moved out of, then removed: its parent waits
    /// for the entry's new home as the directory did, since dropping the
    /// directory drops the name it kept for the entry.
    #[test]
    fn a_removed_directory_hands_its_parent_the_homes_it_waited_for() {
        let (mut tree, a, b) = loaded();
        let f0 = child(&tree, b, "f0");
        assert!(tree.rename_entry((b, "f0"), (ROOT, "x"), f0, None));
        assert!(tree.moved_into[&b].contains(&ROOT));
        for n in 1..10 {
            tree.unlink(b, &format!("f{n}"));
        }
        tree.unlink(a, "b");
        let waits = tree.moved_into.get(&a).cloned().unwrap_or_default();
        assert!(waits.contains(&ROOT), "{waits:?}");
        // Not itself, where the entry moved into the parent.
        let (mut tree, a, b) = loaded();
        let f0 = child(&tree, b, "f0");
        assert!(tree.rename_entry((b, "f0"), (a, "x"), f0, None));
        for n in 1..10 {
            tree.unlink(b, &format!("f{n}"));
        }
        tree.unlink(a, "b");
        assert!(!tree.moved_into.get(&a).is_some_and(|w| w.contains(&a)));
    }

    /// Names given up are kept by directory and name until a listing
    /// taken after them is published; a file renamed away unchanged
    /// leaves nothing a new file may replace, one with a staged change
    /// does.
    #[test]
    fn names_given_up_last_until_their_directory_is_published() {
        let (mut tree, a, b) = loaded();
        let (f0, f1, f2) = (
            child(&tree, a, "f0"),
            child(&tree, a, "f1"),
            child(&tree, a, "f2"),
        );
        tree.unlink(a, "f0");
        tree.children_mut(a).unwrap().remove("f1");
        tree.vacate(a, "f1", f1, true);
        let taken = tree.vacates;
        tree.children_mut(a).unwrap().remove("f2");
        tree.vacate(a, "f2", f2, true);
        assert_eq!(tree.vacated_roots(a, "f0"), vec![[0; 32]], "removed");
        assert!(tree.vacated_roots(a, "f1").is_empty(), "renamed unchanged");
        if let Body::File { staged, .. } = &mut tree.nodes.get_mut(&f1).unwrap().body {
            *staged = Some(PathBuf::from("/nonexistent/staged"));
        }
        assert_eq!(tree.vacated_roots(a, "f1"), vec![[1; 32]], "renamed, noted");
        assert_eq!(tree.left_by(f1), vec![(a, "f1".to_string(), [1; 32])]);
        assert!(tree.left_by(child(&tree, b, "f3")).is_empty());
        tree.vacated_for(a, "f0", f1);
        assert_eq!(tree.left_by(f1).len(), 2);
        assert!(tree.left_by(f0).is_empty());
        // Published from a listing taken before f2 left: f0 and f1 go.
        let mut gone = tree.published_vacated(a, taken, &[]);
        gone.sort_unstable();
        assert_eq!(gone, vec![f1, f1]);
        assert!(tree.vacated_roots(a, "f0").is_empty());
        assert!(tree.left_by(f1).is_empty());
        assert_eq!(tree.left_by(f2), vec![(a, "f2".to_string(), [2; 32])]);
        // f2 has no note to rewrite (nothing staged).
        assert!(tree.published_vacated(a, tree.vacates, &[]).is_empty());
        assert!(tree.vacated.is_empty() && tree.vacated_by.is_empty());
    }

    /// A file renamed away stays in its old directory's listing, at its
    /// old name, until a published listing names it where it is; not if
    /// the name is taken again, nor once the file is removed.
    #[test]
    fn a_file_renamed_away_stays_listed_until_named_where_it_is() {
        let (mut tree, a, b) = loaded();
        let moved = |tree: &mut Tree, from: &str, to: &str| {
            let ino = tree.children_mut(a).unwrap().remove(from).unwrap();
            tree.vacate(a, from, ino, true);
            tree.children_mut(b).unwrap().insert(to.into(), ino);
            tree.nodes.get_mut(&ino).unwrap().parent = b;
            ino
        };
        let listing = |tree: &Tree| {
            let mut listing = tree.listing(a).unwrap();
            let kept = tree.ghosts(a, &mut listing).kept;
            (listing.entries.keys().cloned().collect::<Vec<_>>(), kept)
        };
        let f1 = moved(&mut tree, "f1", "x");
        let f2 = moved(&mut tree, "f2", "y");
        // b's f3 takes f2's old name.
        let f3 = tree.children_mut(b).unwrap().remove("f3").unwrap();
        tree.children_mut(a).unwrap().insert("f2".into(), f3);
        tree.nodes.get_mut(&f3).unwrap().parent = a;
        let (names, kept) = listing(&tree);
        assert_eq!(names, ["b", "f0", "f1", "f2", "f3", "f4"]);
        assert_eq!(kept, ["f1"]);
        assert!(tree.ghosting(a));
        // Published kept: the record stays, and so does the ghost.
        let taken = tree.vacates;
        tree.published_vacated(a, taken, &kept);
        assert_eq!(listing(&tree).1, ["f1"]);
        // b's listing named f1 at x: a lets it go.
        tree.nodes.get_mut(&f1).unwrap().named_in = Some(b);
        assert!(listing(&tree).1.is_empty());
        assert!(!tree.ghosting(a));
        // Renamed away, then removed: nothing to keep.
        let f4 = moved(&mut tree, "f4", "z");
        assert_eq!(listing(&tree).1, ["f4"]);
        tree.unlink(b, "z");
        assert!(listing(&tree).1.is_empty(), "f4 removed");
        assert!(!tree.nodes.contains_key(&f4));
        // Never named by a published listing: its recovery note keeps it.
        let f0 = moved(&mut tree, "f0", "w");
        tree.nodes.get_mut(&f0).unwrap().named_in = None;
        assert!(listing(&tree).1.is_empty(), "f0 never listed");
        assert_eq!(tree.children(a).unwrap()["f2"], f3);
        assert!(tree.children(b).unwrap().contains_key("y") && f2 != f3);
    }

    /// A reloaded listing whose name now holds another directory gives
    /// that name a new inode, unloaded; the same directory keeps its inode
    /// and its entries.
    #[test]
    fn a_name_that_holds_another_directory_is_a_new_inode() {
        let (mut tree, a, b) = loaded();
        let a_cap = match &tree.nodes[&a].body {
            Body::Dir { write: Some(w), .. } => w.clone(),
            _ => unreachable!("a is ours"),
        };
        let b_cap = match &tree.nodes[&b].body {
            Body::Dir { write: Some(w), .. } => w.clone(),
            _ => unreachable!("b is ours"),
        };
        let listing_of_a = |b_cap: &DirWriteCap| {
            let mut l = files(5);
            l.entries
                .insert("b".into(), Entry::dir(&a_cap, "b", b_cap, 0o755, (2, 0)));
            l
        };
        tree.load(a, listing_of_a(&b_cap));
        assert_eq!(child(&tree, a, "b"), b);
        assert_eq!(tree.children(b).map(|c| c.len()), Some(10));
        let other = Vault::fresh_dir();
        tree.load(a, listing_of_a(&other));
        let now = child(&tree, a, "b");
        assert_ne!(now, b);
        assert!(
            tree.children(now).is_none(),
            "the new directory is listed afresh"
        );
        match &tree.nodes[&now].body {
            Body::Dir { read, .. } => assert_eq!(read.public_key, other.read_cap().public_key),
            _ => panic!("b is a directory"),
        }
    }

    #[test]
    fn a_directory_counts_its_subdirectories_up_to_a_bound() {
        let (mut tree, a, b) = loaded();
        assert_eq!(tree.dir_nlink(a), 3, "a holds b and 5 files");
        assert_eq!(tree.dir_nlink(b), 2);
        assert_eq!(tree.dir_nlink(ROOT), 4, "a, friends/, and the root's own");
        let unlisted = tree.insert(Node::new(
            b,
            "unlisted",
            0o755,
            (1, 0),
            Body::Dir {
                write: None,
                read: Vault::fresh_dir().read_cap(),
                children: None,
                loaded_at: None,
            },
        ));
        assert_eq!(tree.dir_nlink(unlisted), 1, "not listed: not counted");
        let b_cap = match &tree.nodes[&b].body {
            Body::Dir { write: Some(w), .. } => w.clone(),
            _ => unreachable!("b is ours"),
        };
        let mut wide = Listing::default();
        for n in 0..=NLINK_COUNTED_UP_TO {
            let sub = Vault::fresh_dir();
            let name = format!("d{n}");
            wide.entries
                .insert(name.clone(), Entry::dir(&b_cap, &name, &sub, 0o755, (1, 0)));
        }
        tree.load(b, wide);
        assert_eq!(tree.dir_nlink(b), 1, "past the bound: not counted");
    }

    #[test]
    fn idle_directories_go_deepest_first_and_list_again_fresh() {
        let (mut tree, a, b) = loaded();
        // root, friends, a, its 5 files and b, b's 10 files.
        assert_eq!(tree.nodes.len(), 19);
        let old_f0 = child(&tree, b, "f0");
        let (dropped, kept) = tree.shed(0);
        assert_eq!((dropped, kept.len()), (16, 0));
        assert!(tree.children(a).is_none());
        assert!(!tree.nodes.contains_key(&b), "b went with a's entries");
        assert!(tree.whole());
        // Listed again: the same names under numbers never used before.
        tree.load(a, files(5));
        let f0 = child(&tree, a, "f0");
        assert!(f0 > old_f0, "inode numbers are never reused");
    }

    #[test]
    fn what_is_held_keeps_its_directory() {
        // A lookup the kernel holds, on an entry or on the directory.
        let (mut tree, _, b) = loaded();
        let f3 = child(&tree, b, "f3");
        tree.nodes.get_mut(&f3).unwrap().lookups = 1;
        assert_eq!(tree.shed(0).0, 0, "nor can a go while b is loaded");
        tree.nodes.get_mut(&f3).unwrap().lookups = 0;
        tree.nodes.get_mut(&b).unwrap().lookups = 1;
        assert_eq!(tree.shed(0).0, 0);
        tree.nodes.get_mut(&b).unwrap().lookups = 0;

        // An open file, an unpublished change, a hard link, a directory
        // waiting to be published.
        let holds: [fn(&mut Tree, u64, u64); 4] = [
            |t, _, f| t.nodes.get_mut(&f).unwrap().opens = 1,
            |t, _, f| {
                if let Body::File { dirty, .. } = &mut t.nodes.get_mut(&f).unwrap().body {
                    *dirty = true;
                }
            },
            |t, _, f| t.nodes.get_mut(&f).unwrap().link = Some([7; 16]),
            |t, b, _| {
                t.dirty.insert(b);
            },
        ];
        for hold in holds {
            let (mut tree, _, b) = loaded();
            let f3 = child(&tree, b, "f3");
            hold(&mut tree, b, f3);
            assert_eq!(tree.shed(0).0, 0);
            assert!(tree.nodes.contains_key(&f3));
        }

        // A file's kept copy (published) does not hold it: its path comes
        // back for removal. Unpublished staged data does.
        let (mut tree, _, b) = loaded();
        let f3 = child(&tree, b, "f3");
        let copy = PathBuf::from("/staging/f3");
        if let Body::File { staged, cached, .. } = &mut tree.nodes.get_mut(&f3).unwrap().body {
            *staged = Some(copy.clone());
            *cached = false;
        }
        assert_eq!(tree.shed(0).0, 0, "unpublished staged data holds");
        if let Body::File { cached, .. } = &mut tree.nodes.get_mut(&f3).unwrap().body {
            *cached = true;
        }
        let (dropped, kept) = tree.shed(0);
        assert_eq!((dropped, kept), (16, vec![copy]));
    }

    /// A directory of ours the mirrors do not reach yet (its parent's
    /// listing naming it not published) keeps its entries: a listing
    /// elsewhere may keep one of its files at an old name only while the
    /// file's node is here. A friend's directory is shed as before.
    #[test]
    fn a_directory_not_reached_from_the_root_is_not_shed() {
        let (mut tree, a, b) = loaded();
        tree.nodes.get_mut(&b).unwrap().named_in = None;
        tree.shed(0);
        assert!(tree.children(b).is_some(), "b's files stay");
        assert!(tree.children(a).is_some(), "a holds b, loaded");
        tree.nodes.get_mut(&b).unwrap().named_in = Some(a);
        tree.shed(0);
        assert!(tree.children(b).is_none(), "reached again: shed");
        assert!(tree.whole());

        let (mut tree, friend) = with_friend();
        tree.load(friend, files(3));
        tree.shed(0);
        assert!(
            tree.children(friend).is_none(),
            "a friend's listing is shed"
        );
    }

    #[test]
    fn shedding_stops_at_the_target() {
        let (mut tree, a, b) = loaded();
        // b's 10 entries are enough to get to 10 inodes left.
        let (dropped, _) = tree.shed(10);
        assert_eq!(dropped, 10);
        assert!(tree.children(b).is_none());
        assert!(tree.children(a).is_some(), "a stays loaded");
        assert!(tree.whole());
    }

    /// A name kept for a file that went elsewhere is found once its
    /// directory and the one it went to are listed, and the file is named
    /// at the place the entry records in the same version, also through a
    /// kept name in between; not for another version, nor while the
    /// place is not listed.
    #[test]
    fn a_kept_name_is_found_where_its_file_went() {
        let root = Vault::fresh_dir();
        let (a_cap, b_cap) = (Vault::fresh_dir(), Vault::fresh_dir());
        let (pa, pb) = (a_cap.read_cap().public_key, b_cap.read_cap().public_key);
        let mut tree = Tree::new(root.clone(), (0, 0));
        let key = root.seed.place_key();
        let mut top = Listing::default();
        top.entries
            .insert("a".into(), Entry::dir(&root, "a", &a_cap, 0o755, (1, 0)));
        top.entries
            .insert("b".into(), Entry::dir(&root, "b", &b_cap, 0o755, (1, 0)));
        tree.load(ROOT, top);
        let kept = |n: u8, place: Place| {
            let mut e = file_entry(n);
            e.kept = true;
            e.moved_to = Some(place);
            e
        };
        let mut in_a = Listing::default();
        for (name, entry) in [
            ("k1", kept(1, Place::of(&key, &pb, "n1"))),
            ("k2", kept(2, Place::of(&key, &pb, "n2"))),
            ("k3", kept(3, Place::of(&key, &pa, "k4"))),
            ("k4", kept(3, Place::of(&key, &pb, "n3"))),
            ("k5", kept(5, Place::of(&key, &pb, "none"))),
        ] {
            in_a.entries.insert(name.into(), entry);
        }
        let mut in_b = Listing::default();
        in_b.entries.insert("n1".into(), file_entry(1));
        in_b.entries.insert("n2".into(), file_entry(7));
        in_b.entries.insert("n3".into(), file_entry(3));
        let (a, b) = (child(&tree, ROOT, "a"), child(&tree, ROOT, "b"));
        tree.load(a, in_a);
        assert!(tree.kept_found().is_empty(), "b is not listed yet");
        tree.load(b, in_b);
        let mut found: Vec<(String, u64)> = tree
            .kept_found()
            .into_iter()
            .map(|(dir, name, ino, there)| {
                assert_eq!((dir, ino), (a, child(&tree, a, &name)));
                (name, there)
            })
            .collect();
        found.sort();
        let want: Vec<(String, u64)> = ["k1", "k3", "k4"].map(|n| (n.to_string(), b)).into();
        assert_eq!(found, want);
        // Never through a read-only second name of the directory (its
        // entries are a copy that may be stale).
        tree.nodes.get_mut(&b).unwrap().alias = true;
        assert!(tree.kept_found().is_empty(), "through an alias");
        tree.nodes.get_mut(&b).unwrap().alias = false;
        assert_eq!(tree.kept_found().len(), 3);
        // Dropped, it is found no more; written to, a kept name is the
        // user's file and stays, and so does the name kept for it while
        // it changes.
        tree.drop_kept(a, "k1", child(&tree, a, "k1"));
        let k4 = child(&tree, a, "k4");
        tree.nodes.get_mut(&k4).unwrap().data_changed();
        let names: Vec<String> = tree.kept_found().into_iter().map(|f| f.1).collect();
        assert!(names.is_empty(), "{names:?}");
        assert!(tree.children(a).unwrap().contains_key("k4"));
        assert!(!tree.children(a).unwrap().contains_key("k1"));
    }

    /// The name a move left in a listing from before the move is found
    /// for the file's entry that says so, in the same version; not once
    /// that directory's listing is newer than the move, nor for another
    /// version.
    #[test]
    fn a_name_a_move_left_is_found_from_where_the_file_went() {
        let setup = |a_seq: u64, version: u8| {
            let root = Vault::fresh_dir();
            let (a_cap, b_cap) = (Vault::fresh_dir(), Vault::fresh_dir());
            let pa = a_cap.read_cap().public_key;
            let mut tree = Tree::new(root.clone(), (0, 0));
            let mut top = Listing::default();
            top.entries
                .insert("a".into(), Entry::dir(&root, "a", &a_cap, 0o755, (1, 0)));
            top.entries
                .insert("b".into(), Entry::dir(&root, "b", &b_cap, 0o755, (1, 0)));
            tree.load(ROOT, top);
            let (a, b) = (child(&tree, ROOT, "a"), child(&tree, ROOT, "b"));
            tree.load(a, files(3));
            tree.listed_seq.insert(a, a_seq);
            let mut moved = file_entry(version);
            moved.moved_from = Some((Place::of(&root.seed.place_key(), &pa, "f1"), 5));
            let mut in_b = Listing::default();
            in_b.entries.insert("g".into(), moved);
            tree.load(b, in_b);
            (tree, a, b)
        };
        let found = |tree: &mut Tree| {
            tree.stale_found();
            tree.kept_found()
        };
        let (mut tree, a, b) = setup(5, 1);
        let f1 = child(&tree, a, "f1");
        assert_eq!(found(&mut tree), [(a, "f1".to_string(), f1, b)]);
        tree.drop_kept(a, "f1", f1);
        assert!(found(&mut tree).is_empty());
        assert!(tree.children(a).unwrap().contains_key("f0"));
        let (mut tree, ..) = setup(6, 1);
        assert!(found(&mut tree).is_empty(), "a went up after the move");
        let (mut tree, ..) = setup(5, 2);
        assert!(found(&mut tree).is_empty(), "another version");
        // A change of the user's in a (here a rename of an identical copy
        // over the name) makes it dirty: nothing there is stale.
        let (mut tree, a, _) = setup(5, 1);
        tree.dirty.insert(a);
        assert!(found(&mut tree).is_empty(), "a changed");
        // Once marked, a change of the name itself clears the mark.
        let (mut tree, a, _) = setup(5, 1);
        tree.stale_found();
        tree.changed(child(&tree, a, "f1"));
        assert!(tree.kept_found().is_empty(), "f1 changed");
    }
}
