//! `meterflow generate`: a synthetic fleet to a file, stdout and/or Kafka.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path as FsPath;

use super::CommandError;
use crate::cli::GenerateArgs;
use crate::generate::{self, GenerateOptions, GenerateStats, SEED_EXAMPLE};
use crate::kafka::publish::{KafkaLines, Tee};
use crate::timestamp::{self, duration_micros};

/// `generate`: writes the fleet to a file or stdout, compressed by extension.
pub fn generate_file(args: &GenerateArgs) -> Result<GenerateStats, CommandError> {
    let start = timestamp::parse_micros(&args.start).map_err(|why| CommandError::InvalidTime {
        flag: "start",
        text: args.start.clone(),
        why,
    })?;
    let options = GenerateOptions {
        devices: args.devices,
        hours: args.hours,
        interval: duration_micros(args.interval),
        seed: args.seed,
        disorder: duration_micros(args.disorder),
        fault_rate: args.fault_rate,
        duplicate_rate: args.duplicate_rate,
        start,
        devices_per_message: args.devices_per_message,
    };
    let target = generate_target(args);
    let fail = |source| CommandError::Output {
        path: target.clone(),
        source,
    };
    let mut file = match &args.output {
        Some(path) => Some(open_output(path).map_err(fail)?),
        None => None,
    };
    let mut kafka = match &args.kafka_brokers {
        Some(brokers) => {
            let settings = args.kafka.settings(brokers);
            Some(
                KafkaLines::new(
                    settings.client_config()?,
                    &args.topic,
                    args.devices_per_message,
                    args.rate,
                )
                .map_err(|source| settings.client_error(source))?,
            )
        }
        None => None,
    };
    let mut out = Tee {
        file: file.as_mut().map(|f| f as &mut dyn Write),
        kafka: kafka.as_mut(),
    };
    let mut stats = generate::generate(&options, &mut out).map_err(fail)?;
    if args.with_seed_example {
        writeln!(out, "{SEED_EXAMPLE}").map_err(fail)?;
        stats.messages += 1;
        stats.readings += 2;
    }
    out.flush().map_err(fail)?;
    if let Some(kafka) = kafka {
        kafka.finish().map_err(fail)?;
    }
    Ok(stats)
}

/// Where `generate` writes, for messages.
pub(crate) fn generate_target(args: &GenerateArgs) -> String {
    let kafka = args
        .kafka_brokers
        .as_ref()
        .map(|brokers| format!("kafka {brokers} topic {}", args.topic));
    [args.output.clone(), kafka]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" and ")
}

/// A writer for `path` (`-` is stdout), compressing `.gz` and `.zst`.
fn open_output(path: &str) -> io::Result<Box<dyn Write>> {
    if path == "-" {
        return Ok(Box::new(BufWriter::new(io::stdout().lock())));
    }
    if let Some(parent) = FsPath::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)?;
    }
    let file = BufWriter::with_capacity(1 << 20, File::create(path)?);
    Ok(if path.ends_with(".gz") {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    } else if path.ends_with(".zst") {
        Box::new(zstd::Encoder::new(file, 3)?.auto_finish())
    } else {
        Box::new(file)
    })
}
