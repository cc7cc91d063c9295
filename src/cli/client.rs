//! The client commands: init, mirrors, put, get, ls, share, check, renew.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};

use lode::caps::{Cap, DirWriteCap};
use lode::dir::{Entry, EntryKind};
use lode::store::{Grid, HttpMirror, Storage, Vault};

use super::{Command, Config, Home, MirrorsCommand};

/// An opened identity: its home, config and vault.
pub(super) struct Session {
    pub(super) home: Home,
    pub(super) vault: Vault,
}

impl Session {
    pub(super) fn open() -> Result<Session> {
        let home = Home::locate()?;
        let config = Config::load(&home)?;
        let secret = home.secret()?;
        if config.mirrors.is_empty() {
            bail!("no mirrors configured: add one with `lode mirrors add URL`");
        }
        let account = secret.account_key();
        let mirrors = config
            .mirrors
            .iter()
            .map(|url| {
                let mirror = HttpMirror::new(url, account.clone())?
                    .placed_as(config.placed_as.get(url).map(String::as_str));
                Ok(Arc::new(mirror) as Arc<dyn Storage>)
            })
            .collect::<Result<Vec<_>>>()?;
        let grid = Grid::new(mirrors, config.grid())?;
        let seen = home.load_seen()?;
        for (pk, &seq) in &seen {
            if let Ok(pk) = lode::protocol::parse_hex::<32>(pk) {
                grid.note_seen(&pk, seq);
            }
        }
        let vault =
            Vault::new(&secret, grid).with_cache_bytes(super::home::cache_bytes(config.cache_mib)?);
        // A new identity's root, until this home has seen it published.
        let root = vault.root().read_cap().public_key;
        let marker = home.root_unpublished();
        if marker.exists() {
            if seen.contains_key(&lode::protocol::hex(&root)) {
                let _ = std::fs::remove_file(&marker);
            } else {
                vault.grid().note_fresh(&root);
            }
        }
        Ok(Session { home, vault })
    }

    /// Persist the slot seqs seen, so a later run refuses rollbacks too.
    pub(super) fn close(self) -> Result<()> {
        let seen: BTreeMap<String, u64> = self
            .vault
            .grid()
            .seen_seqs()
            .into_iter()
            .map(|(pk, seq)| (lode::protocol::hex(&pk), seq))
            .collect();
        self.home.save_seen(&seen)
    }

    fn root(&self) -> Cap {
        Cap::DirWrite(self.vault.root().clone())
    }

    /// A cap string, or a path in the root tree.
    async fn target(&self, target: &str) -> Result<Cap> {
        if lode::caps::is_cap_text(target) {
            // Named by its kind only: a mistyped write-cap is still most
            // of one, and errors go to logs and mail.
            let kind = match target.split(':').nth(1) {
                Some(k)
                    if k.len() <= 16 && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') =>
                {
                    format!("lode:{k}")
                }
                _ => "lode".to_string(),
            };
            return target
                .parse::<Cap>()
                .with_context(|| format!("bad cap ({kind}:…, {} characters)", target.len()));
        }
        self.resolve(target).await
    }

    /// A path in the root tree, as the running mount of this identity has
    /// it, if there is one: what it has not published yet (a directory
    /// made a moment ago, a file just written) goes up first, as an fsync
    /// of the path through the mount makes it. Best effort: with no mount,
    /// or the mirrors away, the path resolves as the mirrors have it.
    async fn resolve(&self, path: &str) -> Result<Cap> {
        let named = self.named(path);
        let path = match &named {
            Named::Mount(rel) => rel.as_str(),
            _ => path,
        };
        if names_friends(path) {
            bail!(
                "{path} is where the mount shows the friends you added, not a directory with \
                 a cap: name one of them (friends/NAME), or see `lode friend list`"
            );
        }
        if let Some(cap) = self.friend_entry(path).await? {
            return Ok(cap);
        }
        // In the mount, but not all on the mirrors yet: what they hold is
        // older or partial (a directory whose files did not go up reads as
        // empty), and reading it would pass that off as the content.
        if let Some(why) = self.settle(path) {
            bail!(
                "{path}: the mount could not upload it yet, so the mirrors do not hold it as \
                 the mount shows it ({why}); `lode status` says why"
            );
        }
        match self.vault.resolve(&self.root(), path).await {
            Ok(cap) => Ok(cap),
            // A path on this machine, outside any mount of this identity:
            // say how paths are meant.
            Err(e @ lode::store::Error::NotFound(_)) if matches!(named, Named::Machine) => {
                Err(anyhow!(
                    "{e} in your tree ({path} is a path on this machine, and not in \
                     the running mount of this identity; name the entry as the mount \
                     shows it, from its top: `docs/report.pdf`)"
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `friends/NAME/...`, as the mount shows it, for a friend in the
    /// config: the entry in that friend's shared directory. `None` for any
    /// other path (and for a name that is no friend, which may be a
    /// directory of the tree itself).
    async fn friend_entry(&self, path: &str) -> Result<Option<Cap>> {
        let path = path.trim_start_matches('/');
        let mut parts = path.splitn(3, '/');
        let (Some("friends"), Some(name)) = (parts.next(), parts.next()) else {
            return Ok(None);
        };
        let rest = parts.next().unwrap_or("");
        let config = Config::load(&self.home)?;
        let Some(cap) = config.friends.get(name) else {
            return Ok(None);
        };
        let cap: Cap = cap
            .parse()
            .with_context(|| format!("friend {name}'s cap in the config"))?;
        Ok(Some(self.vault.resolve(&cap, rest).await?))
    }

    /// Whether `target` names the top's `friends`, where the mount shows
    /// the friends added (an entry of that name in the tree is hidden
    /// there, and cannot be made).
    fn is_friends_dir(&self, target: &str) -> bool {
        if lode::caps::is_cap_text(target) {
            return false;
        }
        match self.named(target) {
            Named::Mount(rel) => names_friends(&rel),
            _ => names_friends(target),
        }
    }

    /// The entry a path in the tree (not a cap, not under `friends/`)
    /// names, from its directory's listing; `None` where there is none.
    async fn entry_of(&self, target: &str) -> Option<Entry> {
        if lode::caps::is_cap_text(target) {
            return None;
        }
        let path = match self.named(target) {
            Named::Mount(rel) => rel,
            _ => target.to_string(),
        };
        let path = path.trim_matches('/');
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        if matches!(name, "" | "." | "..") || path.starts_with("friends/") {
            return None;
        }
        let dir = self.vault.resolve(&self.root(), parent).await.ok()?;
        let listing = self.vault.list(&dir.into_dir_read().ok()?).await.ok()?;
        listing.entries.get(name).cloned()
    }

    /// What a path argument names. Outside the mount, only a path that is
    /// absolute or starts with `.` can be one on this machine: `docs` means
    /// the tree's `docs`, as the README has it. From a directory inside the
    /// mount, any relative path is one. A path on this machine into the
    /// running mount of this identity (`~/lode/docs`, `./f` or `f` from
    /// inside it) names the entry the mount shows there. The look at the
    /// local path is bounded in time, as `settle` is, for a mount that
    /// hangs.
    fn named(&self, path: &str) -> Named {
        /// How long a command waits for the local path to be looked up.
        const LOOKUP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
        let at = super::mount::mounted_at(&self.home);
        // From a directory inside the mount, a relative path is taken from
        // there, as every other tool takes it: `cd ~/lode/docs; lode share
        // a.txt` is docs/a.txt, not the top's a.txt.
        let inside = at.as_deref().is_some_and(|at| {
            std::env::current_dir().is_ok_and(|cwd| cwd.starts_with(at) && cwd != Path::new(at))
        });
        let from_here = inside && !path.is_empty();
        if !(looks_local(path) || from_here) {
            return Named::Tree;
        }
        let local = PathBuf::from(path);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(look_up(&local, at.as_deref()));
        });
        finished.recv_timeout(LOOKUP_WAIT).unwrap_or(Named::Tree)
    }

    fn settle(&self, path: &str) -> Option<String> {
        use std::path::{Component, Path};
        /// How long a command waits for the mount to publish the path; a
        /// mount that takes longer (or hangs) is not waited for.
        const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
        let rel = Path::new(path.trim_start_matches('/'));
        if !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return None;
        }
        let at = super::mount::mounted_at(&self.home)?;
        let full = Path::new(&at).join(rel);
        let home = self.home.clone();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
            // A file or a directory on the mount itself: not one a symlink
            // on the way leads out to, and not a FIFO (opening one waits
            // for a writer).
            let dev = std::fs::metadata(&at).map(|m| m.dev()).ok();
            let failed = match std::fs::symlink_metadata(&full) {
                // A directory's whole subtree: its fsync stores only the
                // directory, and the files in its subdirectories were left
                // out of `get`, `share` and `check` made right after they
                // were written. The mount's sync stores everything.
                Ok(m) if m.is_dir() && Some(m.dev()) == dev => {
                    // Only a sync that reports failing counts; one not
                    // done within the wait is a mount still at work.
                    match super::mount::ask_mount(&home, "sync", Some(SETTLE_WAIT)) {
                        Ok(reply) if reply["synced"].as_bool() == Some(false) => {
                            Some(reply["error"].as_str().unwrap_or("no reason given").into())
                        }
                        _ => None,
                    }
                }
                Ok(m) if m.is_file() && Some(m.dev()) == dev => std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&full)
                    .and_then(|f| f.sync_all())
                    .err()
                    .map(|e| format!("fsync: {e}")),
                // A symlink or a special file is a name only: its
                // directory's fsync stores it.
                Ok(m) if Some(m.dev()) == dev => full.parent().and_then(|parent| {
                    std::fs::File::open(parent)
                        .and_then(|d| d.sync_all())
                        .err()
                        .map(|e| format!("fsync of its directory: {e}"))
                }),
                _ => None,
            };
            let _ = done.send(failed);
        });
        // A mount still busy after the wait (a large upload) is not taken
        // as failing: the command goes on with what the mirrors hold.
        finished.recv_timeout(SETTLE_WAIT).unwrap_or(None)
    }
}

/// What a path argument names (see `Session::named`).
enum Named {
    /// A path in the tree.
    Tree,
    /// The entry at this path in the tree, named by its path on this
    /// machine through the running mount.
    Mount(String),
    /// Something on this machine outside the mount.
    Machine,
}

/// [`Named`] for `local`, a path on this machine, with the running mount
/// at `mount`, if any.
fn look_up(local: &Path, mount: Option<&str>) -> Named {
    // The entry itself is not followed if it is a symlink: its parent is
    // resolved, and the name kept.
    let full = match (local.parent(), local.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            std::fs::canonicalize(parent).map(|p| p.join(name))
        }
        _ => std::fs::canonicalize(local),
    };
    let in_mount = |full: &Path| Some(full.strip_prefix(mount?).ok()?.to_str()?.to_string());
    match full {
        Ok(full) => match in_mount(&full) {
            Some(rel) => Named::Mount(rel),
            // A symlink out here that leads into the mount is followed.
            None => match std::fs::canonicalize(&full).ok().and_then(|f| in_mount(&f)) {
                Some(rel) => Named::Mount(rel),
                None if full.symlink_metadata().is_ok() => Named::Machine,
                None => Named::Tree,
            },
        },
        Err(_) => Named::Tree,
    }
}

/// Whether a path argument reads as one on this machine rather than in
/// the tree: absolute, or relative to the working directory by a leading
/// `.` (`./x`, `../x`, `.`).
fn looks_local(path: &str) -> bool {
    path.starts_with('/')
        || path == "."
        || path == ".."
        || path.starts_with("./")
        || path.starts_with("../")
}

pub fn run(command: Command) -> Result<()> {
    if let Command::Init = command {
        return init();
    }
    if let Command::Mirrors(m) = command {
        return mirrors(m);
    }
    // `-` for a target: the cap, from standard input, before anything
    // else; from here on it is a cap given as any other.
    let from_stdin = |target: String| -> Result<String> {
        let cap = super::cap_or_stdin(&target)?;
        if target == "-" && !lode::caps::is_cap_text(&cap) {
            bail!("standard input holds no cap (a line starting lode:)");
        }
        Ok(cap)
    };
    let command = match command {
        Command::Get { target, output } => Command::Get {
            target: from_stdin(target)?,
            output,
        },
        Command::Ls { target } => Command::Ls {
            target: from_stdin(target)?,
        },
        Command::Renew { target } => Command::Renew {
            target: target.map(from_stdin).transpose()?,
        },
        Command::Check {
            target,
            verify,
            repair,
            accept_rollback,
        } => Command::Check {
            target: from_stdin(target)?,
            verify,
            repair,
            accept_rollback,
        },
        other => other,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let session = Session::open()?;
    let result = rt.block_on(async {
        match command {
            Command::Put { files, to } => put(&session, &files, to.as_deref()).await,
            Command::Get { target, output } => get(&session, &target, output.as_deref()).await,
            Command::Ls { target } => ls(&session, &target).await,
            Command::Share { path, verify } => share(&session, &path, verify).await,
            Command::Check {
                target,
                verify,
                repair,
                accept_rollback,
            } => {
                let options = lode::store::CheckOptions {
                    verify,
                    repair,
                    accept_rollback,
                };
                check(&session, &target, options).await
            }
            Command::Renew { target } => renew(&session, target.as_deref()).await,
            Command::Init
            | Command::Mirrors(_)
            | Command::Mirror(_)
            | Command::Mine(_)
            | Command::Status(_)
            | Command::Mount(_)
            | Command::Friend(_)
            | Command::Sync
            | Command::Completions { .. }
            | Command::Man => {
                unreachable!("dispatched above")
            }
        }
    });
    // The command's own outcome decides the exit: an upload done and its
    // cap printed is not reported as failed because the floor of versions
    // seen could not be saved after it, and a failed command's error is
    // not hidden behind that one.
    if let Err(e) = session.close() {
        eprintln!(
            "warning: the directory versions seen were not saved ({e:#}); \
             a rollback to versions older than this command saw goes unnoticed"
        );
    }
    result
}

fn init() -> Result<()> {
    let home = Home::locate()?;
    let secret = match home.init()? {
        super::home::Initialized::Created(secret) => {
            println!("created identity in {}", home.data.display());
            secret
        }
        super::home::Initialized::ConfigRestored(secret) => {
            println!(
                "kept the identity in {}; its config was missing, so {} now has the defaults \
                 (no mirrors, k, n and happy as lode ships them)",
                home.data.display(),
                home.config_file().display()
            );
            secret
        }
    };
    println!(
        "account {}",
        lode::protocol::hex(&secret.account_key().public_key())
    );
    println!("next: lode mirrors add URL");
    Ok(())
}

fn mirrors(command: MirrorsCommand) -> Result<()> {
    let home = Home::locate()?;
    let _held = match command {
        MirrorsCommand::List => None,
        _ => Some(home.lock_config()?),
    };
    let mut config = Config::load(&home)?;
    match command {
        MirrorsCommand::Add { url } => {
            let url = super::home::mirror_url(&url)?;
            if config.mirrors.contains(&url) {
                bail!("{url} is already a mirror");
            }
            let account = home.secret()?.account_key();
            let rt = tokio::runtime::Runtime::new()?;
            match rt.block_on(HttpMirror::new(&url, account.clone())?.info()) {
                Err(e) => eprintln!("warning: {url} does not answer yet ({e}); adding it anyway"),
                // Shares count toward `happy` once per mirror: the same
                // mirror under a second address would be counted twice.
                Ok(info) => {
                    if let Some(id) = info.mirror_id {
                        for other in &config.mirrors {
                            let theirs =
                                rt.block_on(HttpMirror::new(other, account.clone())?.info());
                            if theirs.is_ok_and(|o| o.mirror_id.as_ref() == Some(&id)) {
                                bail!(
                                    "{url} is the mirror already configured as {other}: \
                                     one mirror under two addresses would count twice toward \
                                     happy (if it moved: `lode mirrors move {other} {url}`)"
                                );
                            }
                        }
                    }
                }
            }
            // Its address may be the name a moved mirror is still placed
            // as: then it is placed under a name of its own.
            if config
                .mirrors
                .iter()
                .any(|m| config.placement_name(m) == url)
            {
                let name = (2..)
                    .map(|n| format!("{url}#{n}"))
                    .find(|name| {
                        config
                            .mirrors
                            .iter()
                            .all(|m| config.placement_name(m) != name)
                    })
                    .expect("an unused name");
                config.placed_as.insert(url.clone(), name);
            }
            config.mirrors.push(url.clone());
            config.save(&home)?;
            let have = config.mirrors.len();
            match have < config.happy {
                true => println!(
                    "added {url} ({have} mirrors; uploads need {} for happy={})",
                    config.happy, config.happy
                ),
                false => println!("added {url} ({have} mirrors)"),
            }
        }
        MirrorsCommand::Remove { url } => {
            let Some(at) = configured(&config, &url) else {
                bail!("{url} is not a configured mirror");
            };
            let url = config.mirrors.remove(at);
            config.placed_as.remove(&url);
            config.save(&home)?;
            println!("removed {url}");
        }
        MirrorsCommand::Move { from, to } => move_mirror(&home, &mut config, &from, &to)?,
        MirrorsCommand::List => {
            let account = home.secret()?.account_key();
            let rt = tokio::runtime::Runtime::new()?;
            for url in &config.mirrors {
                let mirror = HttpMirror::new(url, account.clone())?;
                let placed = config
                    .placed_as
                    .get(url)
                    .map(|name| format!("  (placed as {name})"))
                    .unwrap_or_default();
                match rt.block_on(mirror.account()) {
                    Ok(a) => println!(
                        "{url}  up  {} bytes leased in {} leases{placed}",
                        a.usage_bytes, a.leases
                    ),
                    Err(e) => println!("{url}  down  ({e}){placed}"),
                }
            }
            println!("k={} n={} happy={}", config.k, config.n, config.happy);
        }
    }
    Ok(())
}

/// `lode mirrors move FROM TO`: the mirror configured as `from` answers at
/// `to` now. It takes `from`'s place in the list and keeps the name the
/// placement ranks it under, so every share stays where it is looked for.
/// Where `url` is in the config's mirrors: spelled as there, or as the
/// same URL once both are normalised (`HTTP://Host:8080/` is
/// `http://host:8080`, as `add` stores it).
fn configured(config: &Config, url: &str) -> Option<usize> {
    let plain = |u: &str| super::home::mirror_url(u).unwrap_or_else(|_| u.to_string());
    let wanted = plain(url.trim_end_matches('/'));
    config
        .mirrors
        .iter()
        .position(|m| m == url.trim_end_matches('/'))
        .or_else(|| config.mirrors.iter().position(|m| plain(m) == wanted))
}

fn move_mirror(home: &Home, config: &mut Config, from: &str, to: &str) -> Result<()> {
    let Some(at) = configured(config, from) else {
        bail!("{from} is not a configured mirror (`lode mirrors list` shows them)");
    };
    let from = config.mirrors[at].clone();
    let from = from.as_str();
    let to = super::home::mirror_url(to)?;
    if config.mirrors.contains(&to) {
        bail!("{to} is already a mirror");
    }
    let account = home.secret()?.account_key();
    let rt = tokio::runtime::Runtime::new()?;
    let info = |url: &str| -> Result<lode::protocol::Info> {
        Ok(rt.block_on(HttpMirror::new(url, account.clone())?.info())?)
    };
    // Only an answering mirror that says which it is: a move to a typo, or
    // to some other mirror, would send every read and edit looking for
    // shares where there are none.
    let id = info(&to)
        .with_context(|| format!("{to} does not answer; a mirror is moved to where it answers"))?
        .mirror_id
        .with_context(|| {
            format!("{to} does not say which mirror it is (it runs a lode from before 2026-12-03)")
        })?;
    match info(from) {
        Ok(old) if old.mirror_id.as_ref() != Some(&id) => bail!(
            "{from} still answers, and is another mirror than {to}: \
             `lode mirrors add {to}` adds that one as a mirror of its own"
        ),
        Ok(_) => {}
        // The usual case: the old address is gone. What holds the shares
        // is what tells: a mirror that moved keeps this account's leases.
        Err(_) => {
            let leases = rt
                .block_on(HttpMirror::new(&to, account.clone())?.account())
                .map(|a| a.leases)
                .unwrap_or(0);
            if leases == 0 {
                eprintln!(
                    "warning: {to} holds no leases of this account; if it is not {from} moved, \
                     the shares placed there are missing (`lode check --repair` puts them back)"
                );
            }
        }
    }
    for other in config.mirrors.iter().filter(|m| *m != from) {
        if info(other).is_ok_and(|o| o.mirror_id.as_ref() == Some(&id)) {
            bail!("{to} is the mirror already configured as {other}");
        }
    }
    let name = config
        .placed_as
        .remove(from)
        .unwrap_or_else(|| from.to_string());
    if name != to {
        config.placed_as.insert(to.clone(), name);
    }
    config.mirrors[at] = to.clone();
    config.save(home)?;
    println!(
        "moved {from} to {to}; its shares stay placed as they were (a running mount uses the new address once mounted again)"
    );
    Ok(())
}

async fn put(s: &Session, files: &[std::path::PathBuf], to: Option<&str>) -> Result<()> {
    // Known before a byte is sent: fewer mirrors than `happy` can never
    // hold an upload (it used to upload everything, then fail).
    let (have, happy) = (s.vault.grid().mirrors().len(), s.vault.grid().happy());
    if have < happy {
        bail!(
            "happy={happy} needs {happy} mirrors and {have} are configured: add mirrors with \
             `lode mirrors add URL`, or lower happy in {}",
            s.home.config_file().display()
        );
    }
    // The mount shows friends' shares at the top's `friends`, over any
    // entry of that name: one linked there would be out of sight.
    if let Some(to) = to {
        let named_friends = match top_name(to) {
            Some(top) => top == FRIENDS,
            None => files
                .iter()
                .any(|f| f.file_name().is_some_and(|n| n == FRIENDS)),
        };
        if named_friends {
            bail!(
                "{FRIENDS} at the top of your tree is where the mount shows your friends' \
                 shares: put it under another name"
            );
        }
    }
    // The running mount publishes each directory from its own listing, so
    // an entry linked beside it would be dropped at its next change.
    if let (Some(to), Some(at)) = (to, super::mount::mounted_at(&s.home)) {
        bail!(
            "this identity is mounted at {at}, which would overwrite a directory \
             changed beside it: copy into the mount instead (cp -a FILE {at}/{}), \
             or unmount first",
            to.trim_start_matches('/')
        );
    }
    let into_dir = match to {
        Some(t) => {
            t.ends_with('/')
                || files.len() > 1
                || matches!(s.vault.resolve(&s.root(), t).await, Ok(Cap::DirWrite(_)))
        }
        None => false,
    };
    for path in files {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("{}: not a usable file name", path.display()))?
            .to_string();
        let mtime = {
            use std::os::unix::fs::MetadataExt;
            (meta.mtime(), meta.mtime_nsec() as u32)
        };
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        // Where it goes, and that the name can be one, before a byte is
        // sent (a bad name failed after the upload, its cap unshown).
        let place = to.map(|to| {
            if into_dir {
                (to.to_string(), name.clone())
            } else {
                match to.trim_end_matches('/').rsplit_once('/') {
                    Some((d, l)) => (d.to_string(), l.to_string()),
                    None => (String::new(), to.to_string()),
                }
            }
        });
        if let Some((dir_path, leaf)) = &place {
            let names = dir_path.split('/').filter(|p| !p.is_empty() && *p != ".");
            for part in names.chain([leaf.as_str()]) {
                lode::dir::check_name(part)
                    .map_err(|reason| anyhow!("cannot name it {part:?} in your tree: {reason}"))?;
            }
        }
        let uploaded = if meta.is_dir() {
            let tree = s
                .vault
                .put_tree(path)
                .await
                .with_context(|| format!("uploading {}", path.display()))?;
            Uploaded::Dir(tree)
        } else if meta.is_file() {
            Uploaded::File(upload_file(s, path, meta.len()).await?)
        } else {
            // A FIFO would wait for a writer, a device never end; inside a
            // directory they are skipped with a warning.
            bail!(
                "{}: not a regular file or a directory (a FIFO, socket or device)",
                path.display()
            );
        };
        if let Some((dir_path, leaf)) = place {
            let linked = async {
                let dir = s.vault.walk_dirs(s.vault.root(), &dir_path, true).await?;
                s.vault
                    .link(&dir, &leaf, uploaded.entry(&dir, &leaf, mode, mtime))
                    .await
            };
            // Stored all the same: its cap is what reaches it now.
            linked.await.with_context(|| {
                format!(
                    "{} was uploaded ({}) but not linked into your tree",
                    path.display(),
                    uploaded.read_cap()
                )
            })?;
        }
        println!("{}", uploaded.read_cap());
    }
    Ok(())
}

/// The name a mount shows friends' shares under, at the top of the tree.
const FRIENDS: &str = "friends";

/// Whether a path in the tree is the top's `friends` itself.
fn names_friends(path: &str) -> bool {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .eq([FRIENDS])
}

/// The first name of a path in the tree (`./` and empty parts skipped);
/// `None` for the top itself.
fn top_name(path: &str) -> Option<&str> {
    path.split('/').find(|p| !p.is_empty() && *p != ".")
}

/// What `put` uploaded for one argument.
enum Uploaded {
    File(lode::caps::FileReadCap),
    Dir(DirWriteCap),
}

impl Uploaded {
    fn read_cap(&self) -> Cap {
        match self {
            Uploaded::File(f) => Cap::FileRead(f.clone()),
            Uploaded::Dir(d) => Cap::DirRead(d.read_cap()),
        }
    }

    fn entry(&self, parent: &DirWriteCap, name: &str, mode: u32, mtime: (i64, u32)) -> Entry {
        match self {
            Uploaded::File(f) => Entry::file(f.clone(), mode, mtime),
            Uploaded::Dir(d) => Entry::dir(parent, name, d, mode, mtime),
        }
    }
}

async fn upload_file(s: &Session, path: &Path, len: u64) -> Result<lode::caps::FileReadCap> {
    // Through `put_path`, which skips a sparse file's holes.
    let result = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(len).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("valid template"),
        );
        bar.set_message(path.display().to_string());
        let progress = bar.clone();
        let r = s
            .vault
            .put_path_reporting(path, std::sync::Arc::new(move |n| progress.inc(n)))
            .await;
        bar.finish_and_clear();
        r
    } else {
        s.vault.put_path(path).await
    };
    result.with_context(|| format!("uploading {}", path.display()))
}

/// Write a file's content to `out` as `cp` would. A regular file (or the
/// one a symlink names) is written beside itself and renamed over, so a
/// failed download never leaves it cut short, and keeps its mode; a device
/// or FIFO (`/dev/stdout`, `/dev/full`) is written through, and its errors
/// are the command's; a dangling symlink is refused, as cp refuses it (it
/// would create a file wherever the link points).
async fn download_to(s: &Session, file: &lode::caps::FileReadCap, out: &Path) -> Result<()> {
    let target = std::fs::metadata(out).ok();
    let is_link = std::fs::symlink_metadata(out).is_ok_and(|m| m.file_type().is_symlink());
    if target.is_none() && out.as_os_str().to_string_lossy().ends_with('/') {
        bail!("{}: no such directory", out.display());
    }
    match &target {
        Some(m) if !m.is_file() => {
            let mut w = std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::OpenOptions::new().write(true).open(out)?,
            );
            s.vault.get_to(file, &mut w).await?;
            w.flush()?;
            return Ok(());
        }
        None if is_link => bail!("not writing through dangling symlink {}", out.display()),
        _ => {}
    }
    let real = match is_link {
        true => std::fs::canonicalize(out)?,
        false => out.to_path_buf(),
    };
    // A name no one can have made ready (a symlink planted in a shared
    // directory would have had the download truncate its target), and one
    // two downloads to the same place do not share.
    let tmp = real.with_file_name(format!(
        ".{}.{:08x}.part",
        real.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download"),
        rand::random::<u32>()
    ));
    let result = async {
        let w = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        if let Some(m) = &target {
            w.set_permissions(m.permissions())?;
        }
        s.vault.get_to_file(file, &w).await?;
        w.sync_all()?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, &real) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

/// Where `lode get TARGET -o OUT` puts what it downloads: OUT itself, or,
/// when OUT is an existing directory, the name TARGET's path ends with
/// inside it, as cp does. A cap names nothing (nor does the root), so into
/// a directory that is an error.
fn destination(target: &str, out: &Path) -> Result<PathBuf> {
    if !out.is_dir() {
        return Ok(out.to_path_buf());
    }
    let dir = out;
    let leaf = target
        .parse::<Cap>()
        .is_err()
        .then(|| target.trim_end_matches('/').rsplit('/').next())
        .flatten()
        .filter(|l| !l.is_empty() && *l != "." && *l != "..");
    match leaf {
        Some(leaf) => Ok(dir.join(leaf)),
        None => bail!(
            "{} is a directory, and {} has no name to give what is downloaded into it: give -o {}/NAME",
            dir.display(),
            if target.parse::<Cap>().is_ok() {
                "a cap"
            } else {
                "the root"
            },
            dir.display()
        ),
    }
}

async fn get(s: &Session, target: &str, output: Option<&Path>) -> Result<()> {
    match s.target(target).await? {
        Cap::FileRead(file) => match output {
            Some(out) => {
                let out = &destination(target, out)?;
                download_to(s, &file, out)
                    .await
                    .with_context(|| format!("downloading to {}", out.display()))?;
                // Named by path, the file's entry gives its mode and mtime,
                // kept as `lode get` of a directory keeps them (a cap
                // carries neither).
                // Only on a regular file (through a symlink to one): `-o
                // /dev/null` or a FIFO keeps its own.
                let real = std::fs::canonicalize(out)?;
                if let Some(entry) = s.entry_of(target).await
                    && real.metadata()?.is_file()
                {
                    lode::store::restore_meta(&real, entry.mtime, entry.mode).with_context(
                        || format!("setting the mode and mtime of {}", out.display()),
                    )?;
                }
            }
            None => {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
                let written = s
                    .vault
                    .get_to(&file, &mut w)
                    .await
                    .map_err(anyhow::Error::from);
                // A reader that stopped early (`| head`) is not an error,
                // as for cat.
                let broken = |e: &anyhow::Error| {
                    e.chain().any(|c| {
                        c.downcast_ref::<std::io::Error>()
                            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                    })
                };
                match written.and_then(|()| Ok(w.flush()?)) {
                    Err(e) if broken(&e) => return Ok(()),
                    other => other?,
                }
            }
        },
        cap @ (Cap::DirRead(_) | Cap::DirWrite(_)) => {
            let out = output.ok_or_else(|| anyhow!("a directory needs -o DIR to download into"))?;
            let out = &destination(target, out)?;
            if out.symlink_metadata().is_ok() {
                bail!(
                    "{} already exists: lode get of a directory makes a new one, it does not \
                     overwrite or merge",
                    out.display()
                );
            }
            s.vault
                .get_tree(&cap.into_dir_read()?, out)
                .await
                .with_context(|| format!("downloading into {}", out.display()))?;
            // Named by path, the top directory's own entry gives its mode
            // and mtime, as every directory under it gets them.
            if let Some(entry) = s.entry_of(target).await {
                lode::store::restore_meta(out, entry.mtime, entry.mode)
                    .with_context(|| format!("setting the mode and mtime of {}", out.display()))?;
            }
        }
        other => bail!(
            "a {} cap cannot be read; it can only be checked",
            other.kind()
        ),
    }
    Ok(())
}

async fn ls(s: &Session, target: &str) -> Result<()> {
    // `friends` at the top is the mount's list of friends, not an entry.
    if s.is_friends_dir(target) {
        for name in Config::load(&s.home)?.friends.keys() {
            println!("d0555 {:>12} {:>20} {name}", "-", "-");
        }
        return Ok(());
    }
    let cap = s.target(target).await?;
    let dir = match cap {
        Cap::FileRead(f) => {
            println!("file {} bytes", f.size);
            return Ok(());
        }
        Cap::DirRead(_) | Cap::DirWrite(_) => cap.into_dir_read()?,
        other => bail!("a {} cap cannot be listed", other.kind()),
    };
    let to_terminal = std::io::stdout().is_terminal();
    for (name, e) in s.vault.list(&dir).await?.entries {
        let name = printable(&name, to_terminal);
        let kind = match e.kind {
            EntryKind::File => '-',
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
            EntryKind::Fifo => 'p',
            EntryKind::Socket => 's',
            EntryKind::CharDev => 'c',
            EntryKind::BlockDev => 'b',
        };
        let suffix = e
            .target
            .as_deref()
            .map(|t| format!(" -> {}", printable(t, to_terminal)))
            .unwrap_or_default();
        println!(
            "{kind}{:04o} {:>12} {:>20} {name}{suffix}",
            e.mode & 0o7777,
            e.size,
            listed_time(e.mtime.0)
        );
    }
    Ok(())
}

/// A name (or symlink target) as shown on a terminal: control characters
/// and backslashes escaped, as `ls -b` does. Names in a friend's listing
/// are the friend's to choose: raw, `\e]52;...` writes the clipboard on
/// some terminals, and `\n` forges lines. Piped, names go out as they are.
pub(super) fn printable(name: &str, to_terminal: bool) -> std::borrow::Cow<'_, str> {
    if !to_terminal || !name.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A listed mtime as `ls` users read one: UTC, to the second
/// (`2026-12-03T17:20:05Z`). One outside the years 0 to 9999 shows as
/// seconds since the epoch.
#[allow(unsafe_code)]
pub(super) fn listed_time(secs: i64) -> String {
    // The C library's calendar, as ls has it: it also takes times before
    // 1970, which humantime does not. Years outside 0..=9999 stay seconds.
    const YEAR_0: i64 = -62_167_219_200;
    const YEAR_10000: i64 = 253_402_300_800;
    if !(YEAR_0..YEAR_10000).contains(&secs) {
        return secs.to_string();
    }
    let t: libc::time_t = secs;
    // SAFETY: gmtime_r reads `t` and writes only into `tm`, which outlives
    // the call; a null return (out of range) leaves `tm` unused.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::gmtime_r(&t, &mut tm) }.is_null() {
        return secs.to_string();
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        i64::from(tm.tm_year) + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

async fn share(s: &Session, path: &str, verify: bool) -> Result<()> {
    let cap = s.resolve(path).await?;
    match verify {
        true => println!("{}", cap.verify_cap()),
        false => println!("{}", cap.read_cap()),
    }
    Ok(())
}

async fn check(s: &Session, target: &str, options: lode::store::CheckOptions) -> Result<()> {
    let (verify, repair) = (options.verify, options.repair);
    let cap = s.target(target).await?;
    let report = s.vault.check_with(&cap, options).await?;
    // "healthy" would otherwise read as if the whole tree were checked.
    if matches!(cap, Cap::DirVerify(_)) {
        println!(
            "a directory's verify-cap reaches its own listing only: what it lists is checked \
             with its read-cap or write-cap"
        );
    }
    // The report's paths are from the checked directory down; shown from
    // the top of the tree when a path was checked (`big/f2`, not `/f2`).
    let base = match lode::caps::is_cap_text(target) {
        true => String::new(),
        false => {
            let path = match s.named(target) {
                Named::Mount(rel) => rel,
                _ => target.to_string(),
            };
            // As the tree has it: no `.`, and `..` taken back.
            let mut parts: Vec<&str> = Vec::new();
            for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
                match part {
                    ".." => {
                        parts.pop();
                    }
                    part => parts.push(part),
                }
            }
            parts.join("/")
        }
    };
    let to_terminal = std::io::stdout().is_terminal();
    let shown = |text: &str| {
        let text = match (base.is_empty(), text.strip_prefix('/')) {
            (false, Some(rest)) => format!("{base}/{rest}"),
            _ => text.to_string(),
        };
        printable(&text, to_terminal).into_owned()
    };
    let verb = if verify { "verified" } else { "present" };
    for (url, t) in report.mirrors.iter().zip(&report.tallies) {
        let mut line = format!("mirror {url}: {} shares {verb}", t.good);
        if t.corrupt > 0 {
            line.push_str(&format!(", {} CORRUPT", t.corrupt));
        }
        if t.unreachable > 0 {
            line.push_str(&format!(", {} unreachable", t.unreachable));
        }
        if t.stale_slots > 0 {
            line.push_str(&format!(", {} directories missing or stale", t.stale_slots));
        }
        println!("{line}");
    }
    let unhealthy: Vec<_> = report.objects.iter().filter(|o| !o.healthy()).collect();
    for o in &unhealthy {
        let within = o
            .object
            .file
            .as_ref()
            .map(|f| format!("{}: ", shown(f)))
            .unwrap_or_default();
        println!("  {within}{}: {}", o.object.what, o.describe());
    }
    for line in &report.stale {
        println!("  STALE DIRECTORY {}", shown(line));
    }
    for line in &report.rolled_back {
        println!("  ROLLED BACK {}", shown(line));
    }
    for line in &report.accepted {
        println!("  ROLLBACK ACCEPTED {}", shown(line));
    }
    for e in &report.unreadable {
        println!("  UNREADABLE {}", printable(e, to_terminal));
    }
    for path in &report.twice {
        println!(
            "  NAMED TWICE {}: the same directory as another path (moves that a crash \
             interrupted); a change under either name shows under both",
            shown(path)
        );
    }
    for path in &report.misplaced {
        println!(
            "  STALE NAME {}: names a directory that moved elsewhere (a move that did not \
             finish); the mount drops this name when it next lists the directory",
            shown(path)
        );
    }
    for e in &report.errors {
        println!("  repair failed: {}", shown(e));
    }
    if repair {
        println!(
            "repaired {} shares and {} directory slots",
            report.repaired_shares, report.repaired_slots
        );
    }
    let roots = report
        .objects
        .iter()
        .filter(|o| o.object.what == "manifest root")
        .count() as u64;
    let pages = match report.pages {
        0 => String::new(),
        n => format!(" (with {n} listing pages)"),
    };
    println!(
        "{} objects in {} files and {} directories{pages}: {}",
        report.objects.len(),
        roots.saturating_sub(report.pages),
        report.slots,
        if report.healthy() {
            "healthy"
        } else {
            "NOT healthy"
        }
    );
    if !report.healthy() {
        let unreadable = match report.unreadable.len() {
            0 => String::new(),
            n => format!("{n} files or directories could not be read, "),
        };
        let misplaced = match report.misplaced.len() + report.twice.len() {
            0 => String::new(),
            n => format!("{n} directories named in two places, "),
        };
        let stale = match report.stale.len() {
            0 => String::new(),
            1 => "1 directory listing missing or old on a mirror, ".to_string(),
            n => format!("{n} directory listings missing or old on a mirror, "),
        };
        let rolled_back = match report.rolled_back.len() {
            0 => String::new(),
            n => format!(
                "{n} directories rolled back on every mirror (no repair can bring back \
                 what they lost; `--repair --accept-rollback` takes them as they are), "
            ),
        };
        bail!(
            "{rolled_back}{unreadable}{misplaced}{stale}{} objects need repair ({} unrecoverable)",
            unhealthy.len(),
            report.unrecoverable()
        );
    }
    Ok(())
}

async fn renew(s: &Session, target: Option<&str>) -> Result<()> {
    let cap = match target {
        Some(t) => s.target(t).await?,
        None => s.root(),
    };
    let reach = s.vault.reachable_ids(&cap).await?;
    let ids = reach.ids;
    // A new identity's root, never published: nothing is stored to renew
    // (it said the root was lost, and failed).
    let root = s.vault.root().read_cap().public_key;
    if ids == [root] && s.vault.grid().is_fresh(&root) {
        println!("nothing stored yet: the tree's root was never published");
        return Ok(());
    }
    let (mut failed, mut refusing) = (0, 0);
    let renewal = s.vault.grid().renew(&ids).await;
    for (mirror, result) in renewal.per_mirror {
        match result {
            Ok(r) => {
                let renewed = ids.len().saturating_sub(r.missing + r.refused);
                println!("{mirror}: renewed {renewed} leases");
                if r.refused > 0 {
                    refusing += 1;
                    println!(
                        "  REFUSED {} leases, which run out as they are: {}",
                        r.refused,
                        r.reason.as_deref().unwrap_or("no reason given")
                    );
                }
            }
            Err(e) => {
                failed += 1;
                println!("{mirror}: FAILED: {e}");
            }
        }
    }
    let from = match target {
        Some(t) if lode::caps::is_cap_text(t) => "the cap",
        Some(t) => t,
        None => "the root",
    };
    println!("{} objects reachable from {from}", ids.len());
    // A friend's listing chooses the names its errors may quote.
    let to_terminal = std::io::stdout().is_terminal();
    for e in &reach.unreadable {
        println!("  UNREADABLE {}", printable(e, to_terminal));
    }
    if renewal.nowhere > 0 {
        println!(
            "  LOST {} of them are on no mirror that answered",
            renewal.nowhere
        );
    }
    if failed > 0 {
        bail!("renewal failed on {failed} mirrors");
    }
    if refusing > 0 {
        bail!(
            "{refusing} mirrors refused leases: `lode status` shows each account's balance, \
             and `lode mine` earns credit"
        );
    }
    if renewal.nowhere > 0 {
        bail!(
            "{} shares or directories are on no mirror: `lode check {} --repair` rebuilds \
             what can be, and names what cannot",
            renewal.nowhere,
            // Not the cap itself, which errors carry to logs and mail.
            match target {
                Some(t) if lode::caps::is_cap_text(t) => "CAP".to_string(),
                Some(t) => printable(t, to_terminal).into_owned(),
                None => "/".to_string(),
            }
        );
    }
    if !reach.unreadable.is_empty() {
        bail!(
            "{} files or directories could not be read: what they hold was not renewed",
            reach.unreadable.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a terminal, a name cannot move the cursor, start an escape
    /// sequence or forge a line; piped, it goes out as it is.
    #[test]
    fn names_shown_on_a_terminal_are_escaped() {
        assert_eq!(printable("plain name.txt", true), "plain name.txt");
        assert_eq!(
            printable("x\u{1b}]52;c;aGk=\u{7}", true),
            "x\\u{1b}]52;c;aGk=\\u{7}"
        );
        assert_eq!(printable("a\nb\tc\\d", true), "a\\nb\\tc\\\\d");
        assert_eq!(printable("\u{9b}31m", true), "\\u{9b}31m");
        assert_eq!(printable("a\nb", false), "a\nb");
    }

    /// Known instants, and the ones RFC 3339 cannot write.
    #[test]
    fn listed_times_read_as_dates() {
        assert_eq!(listed_time(0), "1970-01-01T00:00:00Z");
        // The billennium: 10^9 seconds after the epoch.
        assert_eq!(listed_time(1_000_000_000), "2001-09-09T01:46:40Z");
        // Before 1970, as ls shows it.
        assert_eq!(listed_time(-1), "1969-12-31T23:59:59Z");
        assert_eq!(listed_time(-86_400 * 365), "1969-01-01T00:00:00Z");
        assert_eq!(listed_time(-62_167_219_200), "0000-01-01T00:00:00Z");
        assert_eq!(listed_time(-62_167_219_201), "-62167219201");
        assert_eq!(listed_time(i64::MAX), i64::MAX.to_string());
        assert_eq!(listed_time(253_402_300_799), "9999-12-31T23:59:59Z");
    }
}
