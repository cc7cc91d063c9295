//! The `lode` binary: parse arguments, set up logging, dispatch.

mod cli;

use std::io::Write as _;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    quiet_on_a_closed_stdout();
    let default = match args.verbose {
        // fuser unmounts again when its session ends, after `umount` or
        // lode's own unmount (which reports its failures) already did,
        // and warned "Unmount failed: Invalid argument" every time.
        0 => "warn,fuser::mnt=error",
        1 => "info,lode=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A line that cannot be written is dropped. By default the
        // subscriber reports that with `eprintln!`, which panics when
        // standard error is what failed: a background mount's log on a
        // full disk, so any warning there ended a FUSE handler.
        .log_internal_errors(false)
        // Colour codes only for a person at a terminal, not in a log file
        // or a script's captured output.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!, which panics if standard error cannot be
            // written (a background mount's log, on a full disk).
            let _ = writeln!(std::io::stderr(), "lode: {}", chain_text(&e));
            match e.downcast_ref::<cli::LeftStaged>() {
                Some(_) => std::process::ExitCode::from(75),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}

/// An error and its causes on one line, as `{:#}` has them, less any
/// cause whose text its error already ends with: the library's errors
/// name their source in their own message ("chunk failed authentication:
/// {0}"), and printing the chain said it twice.
fn chain_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if text.ends_with(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// `lode status | head -1`: when the reader goes, end quietly with the
/// status a shell gives a process SIGPIPE ended (141), as cat and ls do,
/// instead of println!'s panic. SIGPIPE itself stays ignored, as Rust
/// sets it: a write to a mirror's closed connection (hyper's `writev`
/// sends without MSG_NOSIGNAL) must be an error to retry, not the end.
fn quiet_on_a_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
