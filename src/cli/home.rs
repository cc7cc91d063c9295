//! Where a lode identity lives on disk, and its configuration.
//!
//! `LODE_HOME=DIR` puts everything under one directory (`DIR/config`,
//! `DIR/data`, `DIR/cache`), for tests and multiple identities. Otherwise
//! the XDG base directories apply: `~/.config/lode`, `~/.local/share/lode`,
//! `~/.cache/lode`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use lode::crypto::RootSecret;
use lode::store::GridConfig;

/// The directories of one identity.
#[derive(Debug, Clone)]
pub struct Home {
    pub config: PathBuf,
    pub data: PathBuf,
    pub cache: PathBuf,
}

fn xdg(var: &str, fallback: &str) -> Result<PathBuf> {
    if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(v).join("lode"));
    }
    Ok(user_home()?.join(fallback).join("lode"))
}

/// `$HOME`, or else the user's home directory from the password database:
/// mount helpers run from fstab (by systemd or `mount -a`) get an
/// environment with no `HOME` in it.
fn user_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let uid = nix::unistd::Uid::effective();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) if !user.dir.as_os_str().is_empty() => Ok(user.dir),
        _ => bail!("neither LODE_HOME nor HOME is set, and user {uid} has no home directory"),
    }
}

impl Home {
    pub fn locate() -> Result<Home> {
        if let Some(dir) = std::env::var_os("LODE_HOME").filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            return Ok(Home {
                config: dir.join("config"),
                data: dir.join("data"),
                cache: dir.join("cache"),
            });
        }
        Ok(Home {
            config: xdg("XDG_CONFIG_HOME", ".config")?,
            data: xdg("XDG_DATA_HOME", ".local/share")?,
            cache: xdg("XDG_CACHE_HOME", ".cache")?,
        })
    }

    pub fn config_file(&self) -> PathBuf {
        self.config.join("config.toml")
    }
    pub fn secret_file(&self) -> PathBuf {
        self.data.join("secret")
    }
    fn seen_file(&self) -> PathBuf {
        self.data.join("seen-seqs.json")
    }

    /// Create a new identity, or, where one exists without its config (a
    /// config.toml deleted or lost), write a default config around it.
    /// Never touches an existing secret.
    pub fn init(&self) -> Result<Initialized> {
        let secret_path = self.secret_file();
        if secret_path.exists() {
            if !self.config_file().exists() {
                // Read first: a secret that does not parse is not given a
                // config as if it were an identity.
                let secret = self.secret()?;
                std::fs::create_dir_all(&self.config)
                    .with_context(|| format!("creating {}", self.config.display()))?;
                Config::default().save(self)?;
                return Ok(Initialized::ConfigRestored(secret));
            }
            bail!(
                "an identity already exists at {} (remove it first to start over)",
                secret_path.display()
            );
        }
        for dir in [&self.config, &self.data, &self.cache] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::set_permissions(&self.data, std::fs::Permissions::from_mode(0o700))?;
        let secret = RootSecret::generate(&mut rand::rng());
        let text = zeroize::Zeroizing::new(data_encoding::HEXLOWER.encode(secret.expose()));
        write_new(&secret_path, format!("{}\n", text.as_str()).as_bytes())?;
        if !self.config_file().exists() {
            Config::default().save(self)?;
        }
        // A new identity: its root has never been published (see
        // `Grid::note_fresh`). Not for a secret restored from elsewhere.
        std::fs::write(self.root_unpublished(), b"")?;
        Ok(Initialized::Created(secret))
    }

    /// Make the data directory 0700 if anyone else may enter it. It
    /// holds the secret, and a mount's staged plaintext, kept copies,
    /// recovery notes (paths, read-caps) and log, all made with the
    /// default modes: the directory is their guard. `lode init` makes it
    /// 0700, but one made by hand (an identity copied from another
    /// machine, as the README says) was 0755, and every staged file
    /// readable by all. Group bits go too: where users share a primary
    /// group, 0750 still let them all read it (and no one else could use
    /// the identity anyway: its secret is 0600). Only the owner's own
    /// commands change it; a directory that cannot be changed (another
    /// owner, a read-only file system) is warned about, not refused.
    fn keep_data_private(&self) {
        let Ok(meta) = std::fs::metadata(&self.data) else {
            return;
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 == 0 {
            return;
        }
        let owned = meta.uid() == nix::unistd::geteuid().as_raw();
        let private = std::fs::Permissions::from_mode(mode & 0o7700);
        match owned.then(|| std::fs::set_permissions(&self.data, private)) {
            Some(Ok(())) => {
                tracing::info!(dir = %self.data.display(), "made the data directory private (0700)");
            }
            _ => tracing::warn!(
                dir = %self.data.display(),
                "others may enter the data directory, which holds the secret and staged plaintext: chmod 700 it"
            ),
        }
    }

    pub fn secret(&self) -> Result<RootSecret> {
        let path = self.secret_file();
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).with_context(|| {
            match path.exists() {
                true => format!("reading {}", path.display()),
                false => format!("reading {} (run `lode init` first)", path.display()),
            }
        })?);
        let mode = std::fs::metadata(&path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "secret file is readable by others; chmod 600 it");
        }
        self.keep_data_private();
        let bytes = zeroize::Zeroizing::new(
            data_encoding::HEXLOWER_PERMISSIVE
                .decode(text.trim().as_bytes())
                .with_context(|| format!("{} is not a hex secret", path.display()))?,
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .with_context(|| format!("{} must hold 32 bytes of hex", path.display()))?;
        Ok(RootSecret::from_bytes(arr))
    }

    /// Present from `lode init` making a new secret until this home has
    /// seen its root published.
    pub fn root_unpublished(&self) -> PathBuf {
        self.data.join("root-unpublished")
    }

    /// Hold this home's config for a change: commands that load, change
    /// and save it (`friend add`, `mirrors add`, ...) take this first, so
    /// two at once cannot each save the copy they loaded and drop the
    /// other's change. Released when the file closes.
    pub fn lock_config(&self) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.config)
            .with_context(|| format!("creating {}", self.config.display()))?;
        let path = self.config.join("config.lock");
        let lock =
            std::fs::File::create(&path).with_context(|| format!("opening {}", path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(lock)
    }

    /// The highest seq seen per directory slot (hex key → seq).
    pub fn load_seen(&self) -> Result<BTreeMap<String, u64>> {
        match std::fs::read(self.seen_file()) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("parsing {}", self.seen_file().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Save `seen`, merged with what the file holds: a mount saves while
    /// CLI commands run beside it, and the floor must never go back to the
    /// older of two maps.
    pub fn save_seen(&self, seen: &BTreeMap<String, u64>) -> Result<()> {
        // One reader-writer at a time, or the later of two would drop the
        // other's raises. Released when the file closes.
        let lock_path = self.data.join("seen-seqs.lock");
        let lock = std::fs::File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        lock.lock()?;
        let mut merged = self.load_seen().unwrap_or_default();
        for (key, &seq) in seen {
            let at = merged.entry(key.clone()).or_insert(seq);
            *at = (*at).max(seq);
        }
        write_atomic(&self.seen_file(), &serde_json::to_vec_pretty(&merged)?)
    }
}

/// Write a file so that readers see the old or the new content, never a
/// mix, and a crash leaves one of the two. The file is the user's alone
/// (0600): the config holds friends' read-caps, each of which reads a
/// friend's whole shared tree.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    put_in_place(path, bytes, |tmp, path| std::fs::rename(tmp, path))
}

/// Write a file that must not exist yet (the secret), whole or not at all:
/// written and fsynced under a temporary name, then linked to its own,
/// which fails if something is there. Written in place, a crash between
/// its creation and its write left an empty secret that every later
/// `lode init` refused, until removed by hand.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    put_in_place(path, bytes, |tmp, path| {
        match std::fs::hard_link(tmp, path) {
            // A file system without hard links (vfat, some network
            // ones): a rename, after a look that nothing is there.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) => {
                if path.exists() {
                    return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
                }
                std::fs::rename(tmp, path)
            }
            linked => {
                linked?;
                std::fs::remove_file(tmp)
            }
        }
    })
}

/// `bytes` into a temporary file beside `path` (mode 0600, fsynced), then
/// `place` it at `path`, then fsync the directory so the name lasts.
fn put_in_place(
    path: &Path,
    bytes: &[u8],
    place: impl FnOnce(&Path, &Path) -> std::io::Result<()>,
) -> Result<()> {
    // A name of its own: two processes saving the same file at once must
    // not write into one temporary file.
    let tmp = path.with_extension(format!(
        "tmp.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        place(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Some file systems refuse an fsync of a directory: the
            // rename is as lasting as they make it.
            match std::fs::File::open(dir)?.sync_all() {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                synced => synced?,
            }
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Saving the seen versions never lowers one already saved: a mount
    /// and a CLI command save the same file.
    #[test]
    fn saved_versions_only_go_up() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home {
            config: dir.path().join("config"),
            data: dir.path().to_path_buf(),
            cache: dir.path().join("cache"),
        };
        let map = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
        };
        home.save_seen(&map(&[("a", 5), ("b", 1)])).unwrap();
        home.save_seen(&map(&[("a", 3), ("c", 2)])).unwrap();
        assert_eq!(
            home.load_seen().unwrap(),
            map(&[("a", 5), ("b", 1), ("c", 2)])
        );
        // No temporary file left beside it (the lock file stays).
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// The config (friends' read-caps) and the secret are the user's
    /// alone, whatever the umask; the secret is never written over.
    #[test]
    fn private_files_are_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home {
            config: dir.path().join("config"),
            data: dir.path().join("data"),
            cache: dir.path().join("cache"),
        };
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let secret = match home.init().unwrap() {
            Initialized::Created(secret) => secret,
            Initialized::ConfigRestored(_) => panic!("a new home"),
        };
        assert_eq!(mode(&home.config_file()), 0o600);
        assert_eq!(mode(&home.secret_file()), 0o600);
        assert_eq!(home.secret().unwrap().expose(), secret.expose());
        let mut config = Config::load(&home).unwrap();
        config.friends.insert("bob".into(), "lode:dir-ro:x".into());
        std::fs::set_permissions(home.config_file(), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        config.save(&home).unwrap();
        assert_eq!(mode(&home.config_file()), 0o600);
        let before = std::fs::read(home.secret_file()).unwrap();
        assert!(write_new(&home.secret_file(), b"other\n").is_err());
        assert_eq!(std::fs::read(home.secret_file()).unwrap(), before);
        // Nothing left beside them but the files themselves.
        for d in [&home.config, &home.data] {
            let names: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.contains(".tmp."))
                .collect();
            assert!(names.is_empty(), "{names:?}");
        }
    }
}

/// The client configuration, `config.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Mirror base URLs.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Shares needed to rebuild a chunk.
    #[serde(default = "default_k")]
    pub k: u8,
    /// Shares made of each chunk.
    #[serde(default = "default_n")]
    pub n: u8,
    /// Distinct mirrors an upload must reach.
    #[serde(default = "default_happy")]
    pub happy: usize,
    /// Bytes of verified chunks to cache in memory, in MiB.
    #[serde(default = "default_cache")]
    pub cache_mib: u64,
    /// Seconds between re-listings of friends' directories in the mount.
    #[serde(default = "default_refresh")]
    pub refresh_secs: u64,
    /// Friends' shared directories: name → read-cap.
    #[serde(default)]
    pub friends: std::collections::BTreeMap<String, String>,
    /// Mirrors that moved (`lode mirrors move`): URL → the name the
    /// placement ranks them under, the URL they were first added with.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub placed_as: std::collections::BTreeMap<String, String>,
}

fn default_k() -> u8 {
    GridConfig::default().k
}
fn default_n() -> u8 {
    GridConfig::default().n
}
fn default_happy() -> usize {
    GridConfig::default().happy
}
fn default_cache() -> u64 {
    (lode::store::DEFAULT_CACHE_BYTES >> 20) as u64
}
fn default_refresh() -> u64 {
    30
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mirrors: Vec::new(),
            k: default_k(),
            n: default_n(),
            happy: default_happy(),
            cache_mib: default_cache(),
            refresh_secs: default_refresh(),
            friends: Default::default(),
            placed_as: Default::default(),
        }
    }
}

/// A mirror URL as the config keeps it: checked, and written as the URL
/// parser writes it (`HTTP://Host/` is `http://host`).
pub fn mirror_url(url: &str) -> Result<String> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        bail!("{url:?}: a mirror URL looks like http://host:port");
    }
    // Requests are made by appending `/v1/...`: a query or a fragment
    // would end up in the middle of every one (or be dropped), and
    // credentials there would be sent in the clear and kept in the config.
    if parsed.query().is_some() || parsed.fragment().is_some() {
        bail!("{url:?}: a mirror URL has no query (?...) or fragment (#...)");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        bail!("{url:?}: a mirror URL carries no user name or password");
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// The least chunk cache: two of the largest chunks the chunker cuts
/// (8 MiB). A chunk larger than the whole cache is never kept, so with
/// less every 128 KiB read of the kernel's would fetch and decrypt its
/// whole chunk again, and readahead would be thrown away as it came.
pub const MIN_CACHE_MIB: u64 = 16;

/// The chunk cache's budget for `mib` MiB: at least [`MIN_CACHE_MIB`],
/// and no more than this machine's memory, since the cache lives in it (a
/// larger figure is surely a typo, and would have wrapped around to a
/// tiny one).
pub fn cache_bytes(mib: u64) -> Result<usize> {
    if mib < MIN_CACHE_MIB {
        bail!(
            "{mib} MiB of cache is too little: a read needs at least {MIN_CACHE_MIB} \
             (two of the largest chunks)"
        );
    }
    let total_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib = m.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
            kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        })
        .map_or(u64::MAX >> 20, |kib| kib >> 10);
    if mib > total_mib {
        bail!("{mib} MiB of cache is more than this machine's memory ({total_mib} MiB)");
    }
    usize::try_from(mib << 20).context("cache size does not fit in memory")
}

/// What `lode init` did.
pub enum Initialized {
    /// A new identity, with a default config.
    Created(RootSecret),
    /// The identity was there, its config was not: a default one now is.
    ConfigRestored(RootSecret),
}

impl Config {
    pub fn load(home: &Home) -> Result<Config> {
        let path = home.config_file();
        let hint = match home.secret_file().exists() {
            true => {
                "your identity is there: `lode init` writes a default config around it, \
                     then add the mirrors again with `lode mirrors add`"
            }
            false => "run `lode init` first",
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} ({hint})", path.display()))?;
        let config: Config = toml::from_str(&text).map_err(|e| {
            // One line, whatever the parser's message looks like.
            let at = e
                .span()
                .map(|s| format!(" at byte {}", s.start))
                .unwrap_or_default();
            anyhow::anyhow!("{}: {}{at}", path.display(), e.message().replace('\n', " "))
        })?;
        lode::chunk::Params::new(config.k, config.n)
            .with_context(|| format!("{}: invalid k/n", path.display()))?;
        // Stored on no mirror at all would count as stored (it behaved as
        // 1, silently); on more than n, never.
        if !(1..=usize::from(config.n)).contains(&config.happy) {
            bail!(
                "{}: happy = {} must be from 1 to n = {}",
                path.display(),
                config.happy,
                config.n
            );
        }
        cache_bytes(config.cache_mib).with_context(|| format!("{}: cache_mib", path.display()))?;
        // One mirror listed twice (`http://h:1` and `http://h:1/`, which
        // requests treat as one) would count twice towards `happy`.
        let mut urls = std::collections::HashSet::new();
        for url in &config.mirrors {
            let plain = mirror_url(url).with_context(|| format!("{}: mirrors", path.display()))?;
            if !urls.insert(plain) {
                bail!("{}: mirror {url} is listed twice", path.display());
            }
        }
        let mut names = std::collections::HashSet::new();
        for url in &config.mirrors {
            let name = config.placement_name(url);
            if !names.insert(name) {
                bail!(
                    "{}: two mirrors are placed as {name} (placed_as)",
                    path.display()
                );
            }
        }
        Ok(config)
    }

    /// The name the placement ranks the mirror `url` under.
    pub fn placement_name<'a>(&'a self, url: &'a str) -> &'a str {
        self.placed_as.get(url).map_or(url, String::as_str)
    }

    pub fn save(&self, home: &Home) -> Result<()> {
        let mut text = String::from("# lode client configuration\n");
        text.push_str(&toml::to_string_pretty(self)?);
        write_atomic(&home.config_file(), text.as_bytes())
    }

    pub fn grid(&self) -> GridConfig {
        GridConfig {
            k: self.k,
            n: self.n,
            happy: self.happy,
        }
    }
}
