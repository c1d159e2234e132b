//! The `meterflow` binary: parse flags, set up logging, run, map errors to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use meterflow::cli::{Cli, LogFormat};
use meterflow::commands;
use tracing_subscriber::EnvFilter;

/// Blocks, epoch buffers and Parquet pages are allocated and freed at a high rate; mimalloc
/// reuses them without returning pages to the kernel and faulting them in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `--log` was checked while parsing the flags.
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal; plain text for a file, a pipe or a log collector.
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {:#}", anyhow::Error::from(error));
            ExitCode::FAILURE
        }
    }
}
