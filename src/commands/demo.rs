//! `meterflow demo`: generate a small fleet, transform it, show the result.

use arrow::array::{AsArray, Int32Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::Int32Type;
use arrow::util::pretty::pretty_format_batches;
use clap::Parser;

use super::generate::generate_file;
use super::inspect::render_inspection;
use super::transform::transform;
use super::CommandError;
use crate::cli::{Cli, Command, DemoArgs};
use crate::inspect;
use crate::sink::store::{self, StoreOptions};

/// `demo`: generate, transform, show.
pub fn demo(args: &DemoArgs, runtime: &tokio::runtime::Runtime) -> Result<(), CommandError> {
    let input_text = args
        .dir
        .join("_input")
        .join("readings.jsonl")
        .to_string_lossy()
        .into_owned();
    let output = args.dir.to_string_lossy().into_owned();
    let hours = args.hours.to_string();
    let Command::Generate(generate) = parsed(&[
        "generate",
        "--devices",
        &args.devices.to_string(),
        "--hours",
        &hours,
        "--disorder",
        "3m",
        "--fault-rate",
        "0.002",
        "--duplicate-rate",
        "0.002",
        "--with-seed-example",
        "--output",
        &input_text,
    ])?
    else {
        unreachable!("parsed as generate");
    };
    let stats = generate_file(&generate)?;
    println!(
        "Generated {} devices × {} h: {} messages, {} readings (with the seed example) → {input_text}\n",
        args.devices, args.hours, stats.messages, stats.readings
    );

    let Command::Transform(transform_args) = parsed(&[
        "transform",
        "--input",
        &input_text,
        "--output",
        &output,
        "--overwrite",
    ])?
    else {
        unreachable!("parsed as transform");
    };
    let summary = transform(&transform_args, runtime)?;
    let location = store::open(&output, &StoreOptions::default())?;
    let inspection = runtime.block_on(inspect::inspect(&location, None, 5))?;
    print!("{}", render_inspection(&inspection)?);
    let all = runtime.block_on(inspect::read_all(&location))?;
    let seed_rows = all
        .iter()
        .map(|batch| {
            let ids = batch.column(0).as_primitive::<Int32Type>();
            let mask = arrow::compute::kernels::cmp::eq(ids, &Int32Array::new_scalar(123456))?;
            filter_record_batch(batch, &mask)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(CommandError::Format)?;
    println!(
        "\nThe seed example (device 123456):\n{}",
        pretty_format_batches(&seed_rows).map_err(CommandError::Format)?
    );
    println!("\nSummary:\n{summary}\n\nOutput in {output}/ (date=YYYY-MM-DD/part-*.parquet, _dead_letter/).");
    println!(
        "Query it with SQL: {} query \"SELECT date, sum(delta_energy) AS kwh FROM readings \
         GROUP BY date ORDER BY date\" --data {output}",
        this_binary()
    );
    Ok(())
}

/// How to call this binary from the current directory: `meterflow` when it is the one on the
/// `PATH`, else its path (relative when below the current directory, as after `cargo run`).
fn this_binary() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "meterflow".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| dir.join("meterflow").canonicalize().ok() == exe.canonicalize().ok())
    });
    if on_path {
        return "meterflow".into();
    }
    let relative = std::env::current_dir()
        .ok()
        .and_then(|dir| exe.strip_prefix(dir).ok().map(|p| p.to_path_buf()));
    match relative {
        Some(path) => format!("./{}", path.display()),
        None => exe.display().to_string(),
    }
}

/// One of the demo's commands, parsed as if typed: every default comes from the flags' one
/// definition in [`crate::cli`] (and `MF_*` variables apply as they do to the command itself).
fn parsed(args: &[&str]) -> Result<Command, CommandError> {
    Cli::try_parse_from(std::iter::once("meterflow").chain(args.iter().copied()))
        .map(|cli| cli.command)
        .map_err(CommandError::DemoFlags)
}
