//! The command line: argument parsing and one function per command.
//!
//! This is the edge where library errors become `anyhow` errors with
//! context for a person to read. It builds on `store` (and, for `lode
//! mirror serve`, on `mirror`); it holds no storage logic of its own.

/// `eprintln!` that shrugs off a failure to write. A background mount's
/// standard error is its log file: on a full disk `eprintln!` panicked,
/// and the mount ended with status 101 and an empty log before it had
/// mounted (found by a helper's sweep).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod client;
mod home;
mod keeper;
mod mine;
mod mount;
mod serve;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use home::{Config, Home};
pub use mount::LeftStaged;

/// `-` in place of a cap: one line of standard input, so that the cap
/// stays out of the process list (and the shell's history), where any
/// user of the machine can read it.
fn cap_or_stdin(arg: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    if arg != "-" {
        return Ok(arg.to_string());
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the cap from standard input")?;
    let line = line.trim();
    if line.is_empty() {
        anyhow::bail!("no cap on standard input (`-` reads one line)");
    }
    Ok(line.to_string())
}

/// lode: a private, encrypted file store.
#[derive(Debug, Parser)]
#[command(name = "lode", version, about, propagate_version = true)]
pub struct Cli {
    /// More logging (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an identity (root secret) and a config.
    Init,
    /// Manage the mirrors this identity stores to.
    #[command(subcommand)]
    Mirrors(MirrorsCommand),
    /// Upload files or directories; prints one read-cap per argument.
    Put {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also link them into your tree at PATH (a directory if it ends in
        /// "/" or already is one, else the new name of a single file).
        /// Refused while your tree is mounted: copy into the mount instead.
        #[arg(long)]
        to: Option<String>,
    },
    /// Download what a cap (or a path in your tree) names.
    Get {
        /// A cap, a path in your tree, or `-` for a cap on standard input.
        target: String,
        /// Where to write (a file, or a new directory for a directory cap).
        /// Files go to standard output without it.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List a directory (by cap, or by path in your tree).
    Ls {
        /// A cap, a path in your tree, or `-` for a cap on standard input.
        #[arg(default_value = "/")]
        target: String,
    },
    /// Print the read-cap of a path in your tree (or, with --verify, the
    /// verify-cap: it lets a repairer check and repair without reading).
    Share {
        path: String,
        #[arg(long)]
        verify: bool,
    },
    /// Count (or verify) the shares of a cap on every mirror.
    Check {
        /// A cap, a path in your tree, or `-` for a cap on standard input.
        target: String,
        /// Download and hash every share instead of asking whether it exists.
        #[arg(long)]
        verify: bool,
        /// Rebuild missing or corrupt shares from good ones.
        #[arg(long)]
        repair: bool,
        /// With --repair: take directories rolled back on every mirror as
        /// they now are (what the rollback lost stays lost), so they can be
        /// read and changed again.
        #[arg(long, requires = "repair")]
        accept_rollback: bool,
    },
    /// Renew the leases of everything reachable from your root, or from a
    /// cap (a friend's tree: friends keep their own, and this adds yours).
    Renew {
        /// A cap, a path in your tree, or `-` for a cap on standard input
        /// (default: your whole tree).
        target: Option<String>,
    },
    /// Mine for a mirror's pool until your account is funded.
    Mine(mine::MineArgs),
    /// Your standing on every mirror: reachable, balance, funded until.
    Status(mine::StatusArgs),
    /// Mount your tree as a filesystem.
    Mount(mount::MountArgs),
    /// Wait until everything written to the running mount is on the mirrors.
    Sync,
    /// Manage friends' shared directories shown under friends/.
    #[command(subcommand)]
    Friend(mount::FriendCommand),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to standard output.
    Man,
    /// Run a storage server.
    #[command(subcommand)]
    Mirror(MirrorCommand),
}

#[derive(Debug, Subcommand)]
pub enum MirrorsCommand {
    /// Add a mirror by its base URL.
    Add { url: String },
    /// List the configured mirrors and whether they answer.
    List,
    /// Remove a mirror.
    Remove { url: String },
    /// Give a mirror that moved its new address. Its shares stay where the
    /// placement looks for them: the mirror keeps the name it is ranked
    /// under (removing it and adding the new address would rank it anew,
    /// and the next edit of every file would send its chunks again).
    Move { from: String, to: String },
}

#[derive(Debug, Subcommand)]
pub enum MirrorCommand {
    /// Serve shares, slots and accounts over HTTP.
    Serve(Box<serve::ServeArgs>),
}

/// Raise the soft limit on open descriptors to the hard one, for the two
/// long-running servers. A mirror holds a descriptor per connection and
/// per share being written, a mount one per open file and per upload; the
/// usual soft limit of 1,024 is a leftover of `select`, which neither
/// uses, and a mirror that met it while starting exited. Go's runtime and
/// systemd's advice do the same. A failure leaves the limit as it was.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!(soft, hard, error = %e, "could not raise the descriptor limit");
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Mirror(MirrorCommand::Serve(args)) => {
            raise_descriptor_limit();
            serve::run(*args)
        }
        Command::Mine(args) => mine::mine(args),
        Command::Status(args) => mine::status(args),
        Command::Mount(args) => {
            raise_descriptor_limit();
            mount::mount(args)
        }
        Command::Friend(c) => mount::friend(c),
        Command::Sync => mount::sync(),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lode", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(())
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        other => client::run(other),
    }
}
