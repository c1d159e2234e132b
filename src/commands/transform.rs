//! `meterflow transform`: files to Parquet, with a progress spinner.

use indicatif::{ProgressBar, ProgressStyle};

use super::CommandError;
use crate::cli::TransformArgs;
use crate::pipeline::{self, PipelineOptions};
use crate::reading::Limits;
use crate::source::files::Input;
use crate::summary::Summary;
use crate::timestamp::{self, duration_micros};

/// `transform`: validates flags, prepares the output, runs the file pipeline.
pub fn transform(
    args: &TransformArgs,
    runtime: &tokio::runtime::Runtime,
) -> Result<Summary, CommandError> {
    let processing_time = match &args.processing_time {
        Some(text) => timestamp::parse_micros(text).map_err(|why| CommandError::InvalidTime {
            flag: "processing-time",
            text: text.clone(),
            why,
        })?,
        None => chrono::Utc::now().timestamp_micros(),
    };
    let options = PipelineOptions {
        state: args.lateness.state_settings(),
        limits: Limits {
            latest_time: processing_time.saturating_add(duration_micros(args.lateness.max_future)),
        },
        epoch_readings: args.epoch_readings,
    };
    let sink = args.sink.open_sink()?;
    let existing = runtime.block_on(sink.existing_outputs())?;
    if !existing.is_empty() {
        if !args.overwrite {
            return Err(CommandError::OutputNotEmpty {
                location: args.sink.output.clone(),
                count: existing.len(),
                example: existing[0].to_string(),
            });
        }
        tracing::info!(objects = existing.len(), "removing previous output");
        runtime.block_on(sink.delete(existing))?;
    }
    let inputs: Vec<Input> = args.input.iter().map(|i| Input::parse(i)).collect();
    let progress = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let summary = pipeline::transform(inputs, &sink, runtime.handle(), &options, |s| {
        progress.set_message(format!("{} messages, {} readings", s.messages, s.readings));
        progress.tick();
    })?;
    progress.finish_and_clear();
    Ok(summary)
}
