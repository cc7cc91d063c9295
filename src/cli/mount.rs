//! `lode mount` and `lode friend`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};

use lode::caps::Cap;
use lode::fuse::{LodeFs, Mount, MountConfig};
use lode::store::Vault;

use super::client::Session;
use super::{Config, Home};

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Where to mount.
    mountpoint: PathBuf,
    /// Stay in the foreground (for debugging and service managers).
    #[arg(long)]
    foreground: bool,
    /// Mount options, comma-separated: allow_other, allow_root, ro,
    /// cache=MiB, keep=MiB, inodes=N, nominer, miner_threads=N,
    /// miner_duty=F, miner_idle=0 (see the README).
    #[arg(short = 'o', value_name = "OPTS")]
    options: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum FriendCommand {
    /// Show a friend's shared directory at friends/NAME in the mount.
    Add {
        name: String,
        /// The friend's read-cap, or `-` to read it from standard input
        /// (an argument shows to every local user in the process list).
        cap: String,
    },
    /// List friends.
    List,
    /// Stop showing a friend's directory.
    Remove { name: String },
}

/// `lode sync`: wait until everything written to the running mount is on
/// the mirrors (files still open included). syncfs(2) does not reach a FUSE
/// server, so this is the way to make sure before, say, shutting down.
pub fn sync() -> Result<()> {
    let home = Home::locate()?;
    let reply = ask_mount(&home, "sync", None)?;
    match reply["synced"].as_bool() {
        Some(true) => {
            println!("synced: every change is on the mirrors");
            Ok(())
        }
        _ => bail!(
            "not synced: {} (the changes stay staged and are retried)",
            reply["error"].as_str().unwrap_or("no answer")
        ),
    }
}

/// Send `request` to the running mount's control socket and return its
/// JSON answer (waiting at most `timeout` for it, if given). An error if
/// no mount answers.
pub(super) fn ask_mount(
    home: &Home,
    request: &str,
    timeout: Option<Duration>,
) -> Result<serde_json::Value> {
    use std::io::{Read, Write};
    let socket = home.data.join("mount.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket)
        .with_context(|| format!("no running mount ({} does not answer)", socket.display()))?;
    stream.set_read_timeout(timeout)?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    serde_json::from_str(reply.trim()).context("the mount's answer is not JSON")
}

/// Where this identity is mounted now, if a live mount answers on its
/// control socket and its mountpoint is still mounted (a mount that is
/// only finishing its final flush after `umount` is not).
pub(super) fn mounted_at(home: &Home) -> Option<String> {
    running_mount(home).map(|(at, _)| at)
}

/// Where this identity's running mount is, and its process (`None` from
/// a mount older than the field).
fn running_mount(home: &Home) -> Option<(String, Option<u32>)> {
    let status = ask_mount(home, "status", Some(Duration::from_secs(5))).ok()?;
    let at = status["mountpoint"].as_str()?.to_string();
    let pid = status["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
    // Already canonical: compared as it is, since resolving it again
    // would go through that mount, which may be hung.
    in_mount_table(Path::new(&at)).then_some((at, pid))
}

/// Tell a running mount that the friends in the config changed, and say
/// where they show.
fn tell_mount_friends(home: &Home, done: &str) {
    match ask_mount(home, "friends", Some(Duration::from_secs(10))) {
        Ok(reply) if reply["friends"].is_u64() => match reply["mountpoint"].as_str() {
            Some(at) => println!("{done} (the mount at {at} shows it now)"),
            None => println!("{done}"),
        },
        Ok(reply) => {
            println!("{done} (shown from the next mount)");
            say!(
                "the running mount did not take the change: {}",
                reply["error"].as_str().unwrap_or("no answer")
            );
        }
        Err(_) => println!("{done} (shown from the next mount)"),
    }
}

/// Read a friend's directory once, within [`LOOK_WAIT`].
fn look_at(read: &lode::caps::DirReadCap) -> Result<bool> {
    /// How long `friend add` waits for the mirrors.
    const LOOK_WAIT: Duration = Duration::from_secs(20);
    let session = super::client::Session::open()?;
    let rt = tokio::runtime::Runtime::new()?;
    let listed = rt
        .block_on(async {
            tokio::time::timeout(LOOK_WAIT, session.vault.list_unless(read, None)).await
        })
        .map_err(|_| anyhow!("no answer in {} s", LOOK_WAIT.as_secs()))??;
    // Version 0: no mirror holds it.
    Ok(listed.is_some_and(|(seq, _)| seq > 0))
}

pub fn friend(command: FriendCommand) -> Result<()> {
    let home = Home::locate()?;
    // Held over the look at the mirrors too: a second `friend add` waits
    // for this one rather than saving over it.
    let _held = match command {
        FriendCommand::List => None,
        _ => Some(home.lock_config()?),
    };
    let mut config = Config::load(&home)?;
    match command {
        FriendCommand::Add { name, cap } => {
            check_friend_name(&name).map_err(|r| anyhow!("bad friend name {name:?}: {r}"))?;
            let cap = super::cap_or_stdin(&cap)?;
            let parsed: Cap = cap.parse().with_context(|| format!("bad cap for {name}"))?;
            let read = parsed.clone().into_dir_read().map_err(|_| {
                anyhow!(
                    "a friend's cap must be a directory read-cap (lode:dir-ro:…), got {}",
                    parsed.kind()
                )
            })?;
            if config.friends.contains_key(&name) {
                bail!("{name} is already a friend; remove it first");
            }
            // A look at it on the mirrors: a cap whose key does not open
            // the directory is refused; one that cannot be read now (the
            // mirrors away, or not the friend's) is added with a warning.
            if matches!(parsed, Cap::DirWrite(_)) {
                say!(
                    "note: that is a write-cap; {name} is added read-only (friends/ is \
                     read-only; `lode share` prints the read-cap to give)"
                );
            }
            match look_at(&read) {
                Ok(true) => {}
                Ok(false) => say!(
                    "warning: no mirror of yours that answered holds {name}'s directory; added anyway, it \
                     shows once they do (is the cap complete, and are you on the same mirrors?)"
                ),
                Err(e)
                    if matches!(
                        e.downcast_ref::<lode::store::Error>(),
                        Some(lode::store::Error::WrongReadKey { .. })
                    ) =>
                {
                    return Err(e.context(format!("not adding {name}")));
                }
                Err(e) => say!(
                    "warning: {name}'s directory cannot be read now ({}); added anyway, \
                     it shows once the mirrors hold it",
                    format!("{e:#}").trim_end()
                ),
            }
            config
                .friends
                .insert(name.clone(), Cap::DirRead(read).to_string());
            config.save(&home)?;
            tell_mount_friends(&home, &format!("added {name}: friends/{name} in the mount"));
        }
        FriendCommand::List => {
            for (name, cap) in &config.friends {
                println!("{name}\t{cap}");
            }
        }
        FriendCommand::Remove { name } => {
            if config.friends.remove(&name).is_none() {
                bail!("{name} is not a friend");
            }
            config.save(&home)?;
            tell_mount_friends(&home, &format!("removed {name}"));
        }
    }
    Ok(())
}

/// A friend's name is an entry of friends/, a line of `friend list`
/// each, and a name a shell can show.
fn check_friend_name(name: &str) -> std::result::Result<(), &'static str> {
    lode::dir::check_name(name)?;
    match name.chars().any(char::is_control) {
        true => Err("it contains a control character"),
        false => Ok(()),
    }
}

/// The friends a config names, with their caps parsed, and a line for
/// each one left out because its name or cap (edited by hand) is bad: one
/// bad entry must not keep the user from their own tree. A name is held
/// to what `lode friend add` allows: it becomes a directory entry under
/// friends/, where "..", "a/b" or "" would be no name at all.
fn config_friends(config: &Config) -> (Vec<(String, lode::caps::DirReadCap)>, Vec<String>) {
    let mut friends = Vec::new();
    let mut skipped = Vec::new();
    for (name, cap) in &config.friends {
        if let Err(reason) = check_friend_name(name) {
            skipped.push(format!(
                "friend {name:?} is not shown: its name in config.toml is bad ({reason}); \
                 `lode friend remove {name:?}` and add it again under another"
            ));
            continue;
        }
        match cap
            .parse::<Cap>()
            .map_err(anyhow::Error::from)
            .and_then(|cap| Ok(cap.into_dir_read()?))
        {
            Ok(cap) => friends.push((name.clone(), cap)),
            Err(e) => skipped.push(format!(
                "friend {name} is not shown: its cap in config.toml is bad ({e:#}); \
                 `lode friend remove {name}` and add it again"
            )),
        }
    }
    (friends, skipped)
}

/// Whether a lode mount is at `mountpoint`. Another file system there is
/// mounted over, as mount(8) does: systemd's automount puts autofs at the
/// path first, and mounts the real one on top.
fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(canon) = mountpoint.canonicalize() else {
        return false;
    };
    in_mount_table(&canon)
}

/// Whether the mount table lists a lode mount at this (canonical) path.
fn in_mount_table(path: &Path) -> bool {
    std::fs::read("/proc/self/mounts").is_ok_and(|table| table_lists(&table, path))
}

/// Whether the mount table `table` lists a lode mount at `path`. Bytes,
/// not text: the kernel writes a path's bytes as they are, so one mount
/// anywhere with a name that is not UTF-8 (a Latin-1 label) made the
/// whole table unreadable as text, and every lode mount looked absent; a
/// background `lode mount` then took its own live mount for one that
/// never came up, and killed it.
fn table_lists(table: &[u8], path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let path = path.as_os_str().as_bytes();
    table.split(|&b| b == b'\n').any(|line| {
        let mut fields = line.split(|&b| b == b' ');
        let at = fields.nth(1).map(unescape_mount_field);
        at.as_deref() == Some(path) && fields.next() == Some(&b"fuse.lode"[..])
    })
}

/// A field of /proc/self/mounts as the path it names: the kernel writes a
/// space, tab, newline and backslash in a path as `\040`, `\011`, `\012`
/// and `\134`.
fn unescape_mount_field(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

pub fn mount(args: MountArgs) -> Result<()> {
    let meta = match std::fs::metadata(&args.mountpoint) {
        Ok(meta) => meta,
        // A FUSE mount whose process ended (a crash, kill -9) stays in
        // the mount table until someone unmounts it.
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "{} is a dead mount (the process behind it ended): run `umount {}` first",
            args.mountpoint.display(),
            args.mountpoint.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mountpoint {} does not exist", args.mountpoint.display())
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot reach mountpoint {}", args.mountpoint.display()));
        }
    };
    if !meta.is_dir() {
        bail!(
            "mountpoint {} is not a directory",
            args.mountpoint.display()
        );
    }
    if is_mounted(&args.mountpoint) {
        bail!("{} is already mounted", args.mountpoint.display());
    }
    // As mount(8) and fusermount3 do, mount over it anyway; but say so.
    if std::fs::read_dir(&args.mountpoint).is_ok_and(|mut d| d.next().is_some()) {
        say!(
            "lode: warning: {} is not empty; what it holds is hidden while lode is mounted there",
            args.mountpoint.display()
        );
    }
    let home = Home::locate()?;
    // Over the identity's own files (its staging, secret or cache), the
    // mount would wait on itself: the first write hung unkillably.
    if let Ok(mp) = args.mountpoint.canonicalize() {
        let own = [
            home.config.clone(),
            home.data.clone(),
            home.data.join("staging"),
            home.cache.clone(),
        ];
        for dir in own {
            if dir.canonicalize().unwrap_or(dir).starts_with(&mp) {
                bail!(
                    "{} holds this identity's own files ({}): mount somewhere else",
                    args.mountpoint.display(),
                    home.data.display()
                );
            }
        }
    }
    if let Some(at) = mounted_at(&home) {
        bail!(
            "this identity ({}) is already mounted at {at}; unmount it first",
            home.data.display()
        );
    }
    let mut options = vec![
        // The file system type `fuse.lode`, which is what fstab lines,
        // `mount -t` and `findmnt -t` name. fuser's own `Subtype` reaches
        // only fusermount3; when lode mounts directly (as root) it would be
        // dropped and the type left as plain `fuse`. As a kernel option it
        // is honoured on both paths (fusermount3 takes `subtype=` too).
        fuser::MountOption::CUSTOM("subtype=lode".into()),
        // The kernel checks permissions against each inode's mode and owner,
        // as on any local filesystem (and as gocryptfs and sshfs do with
        // allow_other): without it, allow_other would let anyone do anything.
        fuser::MountOption::DefaultPermissions,
    ];
    let mut cache_bytes = None;
    let mut fsname = "lode".to_string();
    // Local copies of files written here, kept after upload for reading
    // (like rclone's write cache); a budget in MiB.
    let mut keep_mib: u64 = 1024;
    // Inodes held before idle directories' entries are forgotten: about
    // 0.75 KiB each, so the default bounds the table near 75 MiB.
    let mut max_inodes: usize = 100_000;
    let mut miner = Some(lode::miner::MinerConfig::default());
    let mut acl = fuser::SessionACL::Owner;
    // (allow_other, allow_root) given: as libfuse, not both.
    let mut allowed = (false, false);
    // The kernel's generic flags, as mount(8) reads them: the last of a
    // pair wins (`ro,rw` is read-write).
    let mut flags: std::collections::BTreeMap<&str, fuser::MountOption> = Default::default();
    for opt in args
        .options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        match opt {
            // fuser filters requests by caller too: it must know.
            "allow_other" => {
                acl = fuser::SessionACL::All;
                allowed.0 = true;
            }
            "allow_root" => {
                acl = fuser::SessionACL::RootAndOwner;
                allowed.1 = true;
            }
            "default_permissions" => {} // always on
            "ro" | "rw" | "exec" | "noexec" | "suid" | "nosuid" | "dev" | "nodev" | "atime"
            | "noatime" | "sync" | "async" | "dirsync" => {
                use fuser::MountOption as M;
                let (pair, flag) = match opt {
                    "ro" => ("rw", M::RO),
                    "rw" => ("rw", M::RW),
                    "exec" => ("exec", M::Exec),
                    "noexec" => ("exec", M::NoExec),
                    "suid" => ("suid", M::Suid),
                    "nosuid" => ("suid", M::NoSuid),
                    "dev" => ("dev", M::Dev),
                    "nodev" => ("dev", M::NoDev),
                    "atime" => ("atime", M::Atime),
                    "noatime" => ("atime", M::NoAtime),
                    "sync" => ("sync", M::Sync),
                    "async" => ("sync", M::Async),
                    _ => ("dirsync", M::DirSync),
                };
                flags.insert(pair, flag);
            }
            // The mount's source in the mount table, as sshfs takes it:
            // the helper passes fstab's, so mount(8) sees the line mounted
            // (`mount -a` again mounted it a second time).
            o if o.starts_with("fsname=") => {
                let name = &o["fsname=".len()..];
                if name.is_empty() || name.chars().any(char::is_whitespace) {
                    bail!("{o}: a source name without spaces is needed");
                }
                fsname = name.to_string();
            }
            "nominer" => miner = None,
            o if o.starts_with("miner_threads=") => {
                let n: usize = option_value(o, "a number")?;
                let most = super::mine::max_miner_threads();
                if n > most {
                    bail!("miner_threads={n}: at most {most} on this machine (0: one per core)");
                }
                if let Some(m) = &mut miner {
                    m.threads = n;
                }
            }
            o if o.starts_with("miner_duty=") => {
                let d: f64 = option_value(o, "a fraction")?;
                if !(d > 0.0 && d <= 1.0) {
                    bail!("miner_duty must be in (0, 1]");
                }
                if let Some(m) = &mut miner {
                    m.duty = d;
                }
            }
            // Normal instead of idle priority, for dedicated machines.
            "miner_idle=0" => {
                if let Some(m) = &mut miner {
                    m.idle_priority = false;
                }
            }
            o if o.starts_with("cache=") => {
                let mib = option_value::<u64>(o, "a size in MiB")?;
                cache_bytes = Some(super::home::cache_bytes(mib).with_context(|| o.to_string())?);
            }
            o if o.starts_with("keep=") => {
                keep_mib = option_value(o, "a size in MiB")?;
                if keep_mib.checked_mul(1 << 20).is_none() {
                    bail!("{o}: too large");
                }
            }
            o if o.starts_with("inodes=") => {
                max_inodes = option_value(o, "a number of inodes")?;
                if max_inodes < MIN_INODES {
                    bail!("inodes={max_inodes}: at least {MIN_INODES}");
                }
            }
            // For mount(8) and systemd (`owner`, `user` and `users` say who
            // may mount, which fstab has settled by now), and the kernel's
            // default atime handling: nothing for lode to do.
            "defaults" | "auto" | "noauto" | "nofail" | "_netdev" | "user" | "users" | "nouser"
            | "owner" | "relatime" => {}
            // Times are never written lazily or otherwise by reads here;
            // fstab lines carry these, and `comment=` for other tools.
            "lazytime" | "nolazytime" => {}
            // Reads never update access times here (of files or of
            // directories), whatever is asked; `silent` and `loud` are
            // about the kernel's log.
            "diratime" | "nodiratime" | "strictatime" | "nostrictatime" | "silent" | "loud" => {}
            o if o.starts_with("x-") || o.starts_with("comment=") => {}
            "remount" => bail!(
                "remount: a lode mount's options cannot change while it runs; unmount it and mount it again"
            ),
            other => bail!("unknown mount option {other:?}"),
        }
    }
    if allowed.0 && allowed.1 {
        bail!("allow_other and allow_root cannot be given together");
    }
    // Reads never update atime here (docs/COMPAT.md): say so in the mount
    // table, which showed the kernel's default, `relatime`.
    flags.entry("atime").or_insert(fuser::MountOption::NoAtime);
    options.extend(flags.into_values());
    options.push(fuser::MountOption::FSName(fsname));
    // Reads work, and writes stage, but nothing can reach the mirrors:
    // said once, to whoever mounts, rather than only as failing fsyncs.
    let config = Config::load(&Home::locate()?)?;
    // (In the foreground the mount's log says it, on the same terminal.)
    if !args.foreground {
        for line in config_friends(&config).1 {
            say!("lode: warning: {line}");
        }
    }
    // (With none, the mount is refused below, saying so.)
    if !config.mirrors.is_empty() && config.mirrors.len() < config.happy {
        say!(
            "lode: warning: happy={} needs {} mirrors and {} are configured: what is written \
             here stays staged until there are enough (`lode mirrors add URL`)",
            config.happy,
            config.happy,
            config.mirrors.len()
        );
    }
    if !args.foreground {
        // Fail here, in one line, on a bad identity or config, rather than
        // in the detached child.
        Session::open()?;
        return spawn_background(&args);
    }
    let session = Session::open()?;
    // One mount per identity at a time, and a remount waits until the
    // previous mount has published everything it staged: the kernel lets
    // `umount` return before the filesystem's final flush is done.
    let lock_path = session.home.data.join("mount.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        say!("waiting for the previous mount of this identity to finish");
        lock.lock()?;
        // Its final flush raised versions and saved them: the floor read
        // before waiting is behind.
        for (pk, seq) in session.home.load_seen()? {
            if let Ok(pk) = lode::protocol::parse_hex::<32>(&pk) {
                session.vault.grid().note_seen(&pk, seq);
            }
        }
    }
    let config = Config::load(&session.home)?;
    let (friends, skipped) = config_friends(&config);
    for line in skipped {
        tracing::warn!("{line}");
    }
    let rt = tokio::runtime::Runtime::new()?;
    let Session { home, vault } = session;
    let vault = match cache_bytes {
        Some(bytes) => vault.with_cache_bytes(bytes),
        None => vault,
    };
    let vault = Arc::new(vault);
    let fs = Arc::new(
        LodeFs::new(
            vault.clone(),
            rt.handle().clone(),
            MountConfig {
                staging: home.data.join("staging"),
                friends,
                refresh: Duration::from_secs(config.refresh_secs.max(1)),
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                keep_bytes: keep_mib << 20,
                max_inodes,
            },
        )
        .with_context(|| format!("making {}", home.data.join("staging").display()))?,
    );
    // The root's mode and times are in its listing: read it before the
    // kernel asks. A mirror that never answers must not keep the mount
    // from coming up, so this waits 10 s at most; meanwhile the root shows
    // 0700 (see `Tree::load`), and the listing lands when it comes.
    let (done, listed) = std::sync::mpsc::channel();
    std::thread::spawn({
        let fs = fs.clone();
        move || {
            let _ = done.send(fs.load_root());
        }
    });
    let root_slow = match listed.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => false,
        Ok(Err(e)) => {
            say!("lode: the root directory could not be listed yet: {e}");
            false
        }
        Err(_) => {
            say!("lode: the root directory is slow to list; mounting meanwhile");
            true
        }
    };
    // Whatever an earlier mount staged but never published (it crashed,
    // or the mirrors were down) goes up first, so it shows in this mount.
    // Placing it needs its directories listed: with the mirrors not
    // answering that can take minutes, so the mount goes live meanwhile
    // (with every mirror stopped and files staged, it did not come up in
    // the minute `lode mount` waits).
    let (done, recovered) = std::sync::mpsc::channel();
    {
        let fs = fs.clone();
        let left = fs.staged_before();
        std::thread::spawn(move || {
            let _ = done.send(fs.recover(left));
        });
    }
    // (Not waited for at all if the root was slow to list: every file is
    // placed beneath it.)
    let wait = if root_slow { 0 } else { 10 };
    match recovered.recv_timeout(Duration::from_secs(wait)) {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => say!("lode: recovered {n} staged files from an earlier mount"),
        Ok(Err(e)) => {
            say!("lode: staged files from an earlier mount stay staged (will retry): {e}")
        }
        Err(_) => say!(
            "lode: staged files from an earlier mount are still being put back (the mirrors \
             are slow to answer); each shows once its directory can be read"
        ),
    }
    let flusher = fs.start_flusher();
    let seen_keeper = keep_seen(vault.clone(), home.clone());
    let keeper_config = super::keeper::KeeperConfig {
        miner,
        horizon: Duration::from_secs(30 * 86_400),
        account: home.secret()?.account_key(),
        mirrors: config.mirrors.clone(),
    };
    rt.spawn(super::keeper::space_loop(
        keeper_config.clone(),
        vault.grid().params(),
        {
            let fs = fs.clone();
            move |space| fs.set_space(space)
        },
        {
            let vault = vault.clone();
            move |lease| vault.grid().set_lease_floor(lease)
        },
    ));
    let keeper = super::keeper::Keeper::start(keeper_config, vault.clone(), rt.handle())?;
    let keeper = Arc::new(keeper);
    let socket = {
        let (fs, keeper) = (fs.clone(), keeper.clone());
        let shown = args
            .mountpoint
            .canonicalize()
            .unwrap_or_else(|_| args.mountpoint.clone());
        let shown = shown.display().to_string();
        let mountpoint = shown.clone();
        let syncing = fs.clone();
        let befriending = fs.clone();
        super::keeper::serve_control(
            &home.data.join("mount.sock"),
            rt.handle(),
            move || {
                let mut status = keeper.status(fs.backlog());
                status["mountpoint"] = serde_json::json!(shown);
                status["pid"] = serde_json::json!(std::process::id());
                status["inodes"] = serde_json::json!(fs.inodes());
                if let Some(f) = fs.flush_failing() {
                    let since = f
                        .since
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    status["uploads_failing"] = serde_json::json!({
                        "tries": f.tries,
                        "error": f.error,
                        "since": since,
                        "next_try_in_s": f.next.saturating_duration_since(Instant::now()).as_secs(),
                    });
                }
                status
            },
            move || syncing.sync_all().map_err(|e| e.to_string()),
            {
                let home = home.clone();
                move || {
                    let config = Config::load(&home).map_err(|e| format!("{e:#}"))?;
                    let (friends, skipped) = config_friends(&config);
                    for line in skipped {
                        tracing::warn!("{line}");
                    }
                    Ok(befriending.set_friends(&friends))
                }
            },
            mountpoint,
        )?
    };
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = options;
    fuse_config.n_threads = Some(4);
    fuse_config.acl = acl;
    // Taken before the mount is live: from then on a signal unmounts.
    // Set after, one in between killed the process and left a dead mount
    // (the background parent may have said it was mounted by then).
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            // The terminal of a mount in the foreground closing: unmount,
            // as sshfs and other libfuse tools do (it left a dead mount).
            signal(SignalKind::hangup())?,
        )
    };
    let mut background = fuser::spawn_mount(Mount(fs.clone()), &args.mountpoint, &fuse_config)
        .with_context(|| format!("cannot mount at {}", args.mountpoint.display()))?;
    fs.set_notifier(background.notifier());
    widen_readahead(&args.mountpoint);
    say!("lode mounted at {}", args.mountpoint.display());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The session ends once the kernel has let go of the mount. fuser
        // would then unmount the path again as its session is dropped,
        // taking down whatever is mounted there now: the autofs of a
        // systemd automount, or the file system lode was mounted over.
        // So the session is waited for, and not dropped.
        let serving = std::mem::replace(&mut background.guard, std::thread::spawn(|| Ok(())));
        let result = serving
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the FUSE session panicked")));
        std::mem::forget(background);
        let _ = done_tx.send(result);
    });
    let mountpoint = args.mountpoint.clone();
    // How the FUSE session ended, if with an error: said, and the exit
    // status, once the staged data is seen to (it was dropped, and a
    // mount that failed exited 0).
    let session = rt.block_on(async {
        let (mut term, mut int, mut hup) = signals;
        let ended = tokio::task::spawn_blocking(move || done_rx.recv());
        tokio::pin!(ended);
        let error = |r: std::result::Result<_, tokio::task::JoinError>| match r {
            Ok(Ok(Err(e))) => Some(e),
            _ => None,
        };
        tokio::select! {
            _ = term.recv() => unmount(&mountpoint),
            _ = int.recv() => unmount(&mountpoint),
            _ = hup.recv() => unmount(&mountpoint),
            r = &mut ended => {
                // Unmounted from outside (`umount`, `fusermount3 -u`): the
                // first SIGTERM or SIGINT now is the one a service manager
                // sends after its own unmount (`ExecStop=fusermount3 -u`,
                // then SIGTERM; systemd at shutdown), and it asks for the
                // clean end under way. A second cuts the upload short. The
                // first had cut it short, at every stop of such a unit.
                tokio::spawn(async move {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    say!("lode: unmounted already; finishing the final upload (a second signal stops now)");
                    cut_short_at_signal(term, int, hup).await
                });
                return anyhow::Ok(error(r));
            }
        }
        // Unmounted, perhaps lazily: the session ends once the kernel lets
        // go of it, when the last file open on it closes. Until then this
        // process serves those files, and keeps its lock, unless another
        // signal says to stop now.
        tokio::spawn(cut_short_at_signal(term, int, hup));
        anyhow::Ok(error((&mut ended).await))
    })?;
    keeper.stop_mining();
    // Wait for the session to end (the filesystem's destroy publishes
    // everything staged).
    let deadline = Instant::now() + Duration::from_secs(120);
    while is_mounted(&args.mountpoint) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    fs.stop_flusher();
    let _ = flusher.join();
    let unflushed = fs.final_flush().err();
    if let Some(e) = &unflushed {
        say!("lode: some changes could not be uploaded and stay staged: {e}");
    }
    seen_keeper.stop();
    let saved = save_seen(&vault, &home);
    let _ = std::fs::remove_file(socket);
    drop(lock);
    // A mount whose last changes did not reach the mirrors does not end
    // as if all went well: a service manager records the failure (they
    // stay staged, and the next mount uploads them). That status wins
    // over a failure to save the versions seen, which is said.
    match (session, unflushed) {
        (Some(e), _) => bail!("the FUSE session ended with an error: {e}"),
        (None, Some(_)) => {
            if let Err(e) = saved {
                say!("lode: {e:#}");
            }
            Err(LeftStaged.into())
        }
        (None, None) => saved,
    }
}

/// A mount that ended with changes still staged (its final upload
/// failed): exit status 75, EX_TEMPFAIL, which the shipped systemd unit
/// lists in `RestartPreventExitStatus`. Not 1, which `Restart=on-failure`
/// took for a crash: a user's `umount` while offline was mounted again
/// ten seconds later, over and over.
#[derive(Debug)]
pub struct LeftStaged;

impl std::fmt::Display for LeftStaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the final upload did not finish: the changes stay staged for the next mount")
    }
}

impl std::error::Error for LeftStaged {}

/// After the unmount began: end the process at the next SIGTERM or
/// SIGINT, as sshfs and gocryptfs end at a second Ctrl-C. A mount
/// detached lazily waits for its last user, and the final upload for the
/// mirrors; a user or service manager that asks again means now. Nothing
/// is lost: what is staged is on disk, as after a crash, and the next
/// mount uploads it. Files still open on a detached mount then fail
/// (ENOTCONN), as they would at `umount -f`.
///
/// Not at a SIGHUP: a closing terminal may send two (the kernel's and the
/// shell's), and the second would cut short the final upload that the
/// first began. The stream is kept so that further ones are ignored.
async fn cut_short_at_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
    _hup: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    say!(
        "lode: stopping now, at a second signal; changes not yet uploaded stay staged, \
         and the next mount uploads them"
    );
    std::process::exit(1);
}

/// How often a mount saves the directory versions it has seen, when they
/// changed.
const SEEN_SAVE_EVERY: Duration = Duration::from_secs(5);

fn save_seen(vault: &Vault, home: &Home) -> Result<()> {
    // Not "seen at 0" (made here, stored nowhere): the floor is saved every
    // few seconds, so after a crash a saved 0 may belong to a directory
    // already published, and a read with the mirrors away would take it
    // for empty. Without it, such a read is unavailable until they answer.
    let seen: std::collections::BTreeMap<String, u64> = vault
        .grid()
        .seen_seqs()
        .into_iter()
        .filter(|&(_, seq)| seq > 0)
        .map(|(pk, seq)| (lode::protocol::hex(&pk), seq))
        .collect();
    home.save_seen(&seen)
}

/// The thread that keeps a mount's floor of directory versions on disk
/// while it runs ([`keep_seen`]).
struct SeenKeeper {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl SeenKeeper {
    /// Stop, after any save under way: the final save must not race it.
    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Save the directory versions seen (the floor below which a mirror's
/// answer is a rollback) every [`SEEN_SAVE_EVERY`] while they change, not
/// only at unmount: after a crash the next mount still refuses versions
/// older than this one saw, where it used to go back to the last clean
/// unmount's.
fn keep_seen(vault: Arc<Vault>, home: Home) -> SeenKeeper {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut saved = vault.grid().seen_changes();
        let mut last = Instant::now();
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let changes = vault.grid().seen_changes();
            if changes == saved || last.elapsed() < SEEN_SAVE_EVERY {
                continue;
            }
            match save_seen(&vault, &home) {
                Ok(()) => saved = changes,
                // Tried again at the next interval.
                Err(e) => tracing::warn!(error = %e, "cannot save the directory versions seen"),
            }
            last = Instant::now();
        }
    });
    SeenKeeper { stop, thread }
}

/// The kernel's readahead for the mount, in KiB. A FUSE mount starts with
/// 128 KiB, so a sequential reader's requests come 128 KiB at a time, each
/// a trip through the FUSE queue and a thread switch; at 1 MiB (the most
/// one request carries, FUSE's 256 pages) the kernel asks for a quarter to
/// a whole chunk at once. The mount's own readahead (`fuse::fs`) keeps the
/// chunks themselves coming.
const KERNEL_READAHEAD_KIB: u32 = 1024;

/// Raise the mount's readahead through sysfs, as JuiceFS does; the kernel
/// offers no mount option for it. Only root may: for anyone else, and on a
/// kernel without the file, reads keep the default.
fn widen_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(mountpoint) {
        Ok(meta) => meta.dev(),
        Err(e) => {
            tracing::debug!(error = %e, "no stat of the mount; default readahead");
            return;
        }
    };
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&knob, KERNEL_READAHEAD_KIB.to_string()) {
        tracing::debug!(%knob, error = %e, "default readahead");
    }
}

/// Unmount on SIGTERM or SIGINT. A mount in use (a shell's working
/// directory, an open file) cannot go at once: it is detached lazily, as
/// gocryptfs does, so that it leaves the namespace now and ends when its
/// last user lets go. Failing outright left a process whose final flush
/// had run beside a mount still in use.
fn unmount(mountpoint: &Path) {
    let ok = |cmd: &mut std::process::Command| {
        cmd.stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let fusermount = || std::process::Command::new("fusermount3");
    if ok(fusermount().arg("-u").arg(mountpoint))
        || ok(std::process::Command::new("umount").arg(mountpoint))
    {
        return;
    }
    say!(
        "lode: {} is in use: detached, and ends when its last user lets go",
        mountpoint.display()
    );
    if !ok(fusermount().args(["-u", "-z"]).arg(mountpoint))
        && !ok(std::process::Command::new("umount")
            .arg("-l")
            .arg(mountpoint))
    {
        say!("lode: could not unmount {}", mountpoint.display());
    }
}

/// Smallest `inodes=` budget: room for what the kernel holds at once.
const MIN_INODES: usize = 100;

/// The value of a `name=value` mount option, parsed.
fn option_value<T: std::str::FromStr>(option: &str, wants: &str) -> Result<T> {
    let (name, value) = option.split_once('=').unwrap_or((option, ""));
    value
        .parse()
        .map_err(|_| anyhow!("{name}= wants {wants}, got {option:?}"))
}

/// Run the mount as a detached child, and return once it is live (or
/// report why it failed).
/// Have the daemon about to be started close, at its exec, every
/// descriptor above stderr that its caller left open: it must not keep
/// the caller's files open for as long as the mount lasts (one held on an
/// older lode mount kept that mount alive, and the new mount then waited
/// on it forever).
#[allow(unsafe_code)]
fn close_inherited_fds(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs between fork and exec, where only async-signal-safe
    // calls are allowed: close_range is a raw system call that touches no
    // memory of this process. On a kernel without it (before 5.11) it
    // fails and nothing changes.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
}

fn spawn_background(args: &MountArgs) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let home = Home::locate()?;
    std::fs::create_dir_all(&home.data)
        .with_context(|| format!("creating {}", home.data.display()))?;
    let log_path = home.data.join("mount.log");
    // Another mount process of this identity holds the lock: one starting
    // up at this moment, or one finishing its final upload after its
    // unmount. The new one waits for it, and its log goes on after that
    // one's rather than replacing it.
    let busy = std::fs::File::open(home.data.join("mount.lock"))
        .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
    let log = if busy {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?
    } else {
        // The last mount's log (its final flush's report, say) stays one
        // mount longer, as mount.log.1.
        if log_path.exists() {
            std::fs::rename(&log_path, home.data.join("mount.log.1"))
                .with_context(|| format!("keeping {} as mount.log.1", log_path.display()))?;
        }
        std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?
    };
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    // The child runs in `/`, as a daemon does: in the caller's directory
    // it would keep that file system busy (a USB disk could not be
    // unmounted, nor a lode mount the command was run from) for as long
    // as the mount lasts. So paths it is given must not be relative.
    let mountpoint = std::path::absolute(&args.mountpoint)?;
    for var in [
        "LODE_HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_CACHE_HOME",
        "HOME",
    ] {
        if let Some(dir) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            cmd.env(var, std::path::absolute(dir)?);
        }
    }
    cmd.current_dir("/");
    cmd.arg("mount").arg(&mountpoint).arg("--foreground");
    if let Some(o) = &args.options {
        cmd.arg("-o").arg(o);
    }
    // glibc gives every thread that allocates its own arena, and the
    // mount has many (FUSE, uploads, tokio): one arena keeps freed memory
    // from piling up per thread (tens of MiB after a big untar), and lets
    // the flusher's trim hand it all back. Its allocations are few and
    // large, so threads do not queue for it: writing 4 GiB after a cold
    // read peaked at 209 MiB with one arena against 234 MiB with two, at
    // the same speed (docs/PERFORMANCE.md, "Larger chunks"). A value the
    // user set wins.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        cmd.env("MALLOC_ARENA_MAX", "1");
    }
    close_inherited_fds(&mut cmd);
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let mut child = cmd.spawn()?;
    note_interrupts();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut checked = Instant::now();
    loop {
        if let Some(signal) = interrupted() {
            // The child is in its own process group, so a Ctrl-C at the
            // terminal reached only this process: left alone, the child
            // would go on and mount after all. It is asked to stop as a
            // mount is (a live one unmounts), and waited for.
            stop_child(&mut child);
            bail!("interrupted ({signal}) before the mount came up; it was stopped");
        }
        if is_mounted(&args.mountpoint) {
            println!(
                "lode mounted at {} (pid {}, log {})",
                args.mountpoint.display(),
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("mount failed ({status}): {}", log.trim());
        }
        // Another mount of this identity is up elsewhere (two `lode mount`
        // at once): this one would wait for as long as that one lasts,
        // then mount.
        // Not this one's own child: it answers on the socket before its
        // mount is live, and may go live between the two checks (it was
        // taken for another mount and killed).
        if checked.elapsed() > Duration::from_secs(1) {
            checked = Instant::now();
            if let Some((at, pid)) = running_mount(&home)
                && pid != Some(child.id())
            {
                // SIGTERM, not SIGKILL: had the child gone live since the
                // last look, it unmounts cleanly instead of leaving a dead
                // mount behind.
                stop_child(&mut child);
                bail!(
                    "this identity ({}) is already mounted at {at}",
                    home.data.display()
                );
            }
        }
        if Instant::now() > deadline {
            stop_child(&mut child);
            if busy {
                bail!(
                    "mount did not come up within 60 s: another mount of this identity is still \
                     running (starting, or finishing its final upload); see {}",
                    log_path.display()
                );
            }
            bail!(
                "mount did not come up within 60 s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The signal that interrupted a background `lode mount` waiting for its
/// mount to come up, 0 for none.
static INTERRUPTED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn note_interrupt(signal: libc::c_int) {
    INTERRUPTED.store(signal, std::sync::atomic::Ordering::Relaxed);
}

/// Note SIGINT, SIGTERM and SIGHUP in [`INTERRUPTED`] instead of dying at
/// them, for [`interrupted`] to find.
#[allow(unsafe_code)]
fn note_interrupts() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(note_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe, and no other handler is replaced: this
        // process set none.
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            tracing::debug!(%signal, error = %e, "signal not noted");
        }
    }
}

/// The signal noted by [`note_interrupts`], if one came.
fn interrupted() -> Option<nix::sys::signal::Signal> {
    match INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        n => nix::sys::signal::Signal::try_from(n).ok(),
    }
}

/// Ask a mount process still starting to stop (SIGTERM: a live mount
/// unmounts, one not yet live ends), and wait for it; at last, kill it.
fn stop_child(child: &mut std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_paths_are_unescaped() {
        let un = |f: &str| String::from_utf8(unescape_mount_field(f.as_bytes())).unwrap();
        assert_eq!(un("/tmp/plain"), "/tmp/plain");
        assert_eq!(un("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(un("/x\\011y\\012z\\134w"), "/x\ty\nz\\w");
        // Not an escape: left as it is.
        assert_eq!(un("/a\\9b\\04"), "/a\\9b\\04");
    }

    /// A mount named in bytes that are not UTF-8, ours or another's,
    /// leaves the table readable (it read as no mounts at all).
    #[test]
    fn a_mount_table_with_bytes_not_utf8_is_read() {
        use std::os::unix::ffi::OsStrExt;
        let mut table = b"/dev/sdb1 /media/caf\xe9 vfat rw 0 0\n".to_vec();
        table.extend_from_slice(b"lode /tmp/m\xe9 fuse.lode rw 0 0\n");
        table.extend_from_slice(b"lode /tmp/a\\040b fuse.lode rw 0 0\n");
        let ours = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/m\xe9"));
        assert!(table_lists(&table, ours));
        assert!(table_lists(&table, Path::new("/tmp/a b")));
        assert!(!table_lists(&table, Path::new("/media/caf")));
        assert!(!table_lists(&table, Path::new("/tmp/m")));
    }
}
