//! The `lode` binary: parse arguments, set up logging, dispatch.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    if args.command.ends_quietly_on_a_closed_pipe() {
        // `lode status | head -1`: end as cat and ls do when the reader
        // goes, instead of panicking in println!. Not for the mount, the
        // mirror or the miner, which talk over sockets.
        default_sigpipe();
    }
    let default = match args.verbose {
        0 => "warn",
        1 => "info,lode=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lode: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Let SIGPIPE end the process again (Rust's runtime ignores it).
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: called at the start of main, before any other thread exists;
    // SIG_DFL is a valid disposition and no handler code is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
