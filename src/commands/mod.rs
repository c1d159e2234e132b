//! The commands' bodies: each turns its parsed flags ([`crate::cli`]) into library calls and
//! prints what the user sees.

pub mod demo;
pub mod generate;
pub mod inspect;
pub mod run;
pub mod transform;

use std::io;
use std::time::Instant;

use crate::cli::{Cli, Command, QueryArgs};
use crate::inspect::InspectError;
use crate::kafka::KafkaSetupError;
use crate::pipeline::PipelineError;
use crate::query::{self as sql, QueryError};
use crate::sink::store::StoreError;
use crate::sink::SinkError;

/// Errors a command reports; the binary prints the cause chain and exits non-zero.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("cannot write {path}")]
    Output {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the demo's own command line does not parse")]
    DemoFlags(#[source] clap::Error),
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    #[error(
        "{location} already holds {count} meterflow output objects (e.g. {example}); \
         pass --overwrite to replace them"
    )]
    OutputNotEmpty {
        location: String,
        count: usize,
        example: String,
    },
    #[error("invalid --{flag} {text:?}: {why}")]
    InvalidTime {
        flag: &'static str,
        text: String,
        why: &'static str,
    },
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("cannot serve metrics on {address}")]
    MetricsAddress {
        address: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot format output rows")]
    Format(#[source] arrow::error::ArrowError),
}

/// Runs a parsed command line. A command's result (a summary, a table) goes to stdout; logs
/// go to stderr, so `--log-format json` leaves stderr all JSON.
pub fn run(cli: Cli) -> Result<(), CommandError> {
    let runtime = tokio::runtime::Runtime::new().map_err(CommandError::Runtime)?;
    match cli.command {
        Command::Transform(args) => {
            let summary = transform::transform(&args, &runtime)?;
            println!("meterflow transform → {}\n{summary}", args.sink.output);
            Ok(())
        }
        Command::Generate(args) => {
            let started = Instant::now();
            let stats = generate::generate_file(&args)?;
            let line = format!(
                "generated {} messages, {} readings ({} faulty readings, {} faulty messages, {} re-sent) in {:.2} s → {}",
                stats.messages,
                stats.readings,
                stats.faulty_readings,
                stats.faulty_messages,
                stats.resent_messages,
                started.elapsed().as_secs_f64(),
                generate::generate_target(&args)
            );
            // The messages themselves may be on stdout.
            if args.output.as_deref() == Some("-") {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
            Ok(())
        }
        Command::Inspect(args) => {
            let (location, only) = inspect::inspect_target(&args)?;
            let inspection =
                runtime.block_on(crate::inspect::inspect(&location, only.as_ref(), args.rows))?;
            print!("{}", inspect::render_inspection(&inspection)?);
            Ok(())
        }
        Command::Demo(args) => demo::demo(&args, &runtime),
        Command::Query(args) => query(&args, &runtime),
        Command::Run(args) => {
            let report = run::run_service(&args, &runtime)?;
            println!(
                "meterflow run → {} stopped after {} epochs (next epoch {}); this process took \
                 {} readings in {:.3} s = {:.0} readings/s; totals since the first epoch:\n{}",
                args.sink.output,
                report.epochs,
                report.next_epoch,
                report.readings_here,
                report.elapsed.as_secs_f64(),
                report.readings_here as f64 / report.elapsed.as_secs_f64().max(1e-9),
                report.summary
            );
            Ok(())
        }
    }
}

/// `query`: SQL over an output, printed in the chosen format.
fn query(args: &QueryArgs, runtime: &tokio::runtime::Runtime) -> Result<(), CommandError> {
    let batches = runtime.block_on(sql::query(&args.data, &args.s3.options(), &args.sql))?;
    sql::write(&batches, args.format, &mut io::stdout().lock())?;
    Ok(())
}
