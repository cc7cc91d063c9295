//! The `lode` binary: parse arguments, set up logging, dispatch.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
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
