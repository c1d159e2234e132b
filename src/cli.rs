//! Command-line interface: flags (with `MF_*` environment variables) → typed options → runs.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Int32Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::Int32Type;
use arrow::util::pretty::pretty_format_batches;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::deltas::{StateSettings, DEFAULT_WATERMARK_QUORUM};
use crate::generate::{self, GenerateOptions, GenerateStats};
use crate::inspect::{self, InspectError, Inspection};
use crate::kafka::{KafkaSettings, KafkaSetupError, SaslMechanism, SecurityProtocol};
use crate::pipeline::{self, PipelineError, PipelineOptions};
use crate::publish::{KafkaLines, Tee};
use crate::query::{self, QueryError};
use crate::reading::Limits;
use crate::service::{self, RunOptions};
use crate::sink::{ParquetSink, SinkError, SinkOptions};
use crate::source::Input;
use crate::store::{self, StoreError, StoreOptions};
use crate::summary::Summary;
use crate::telemetry::{self, Telemetry};
use crate::timestamp;

/// Errors a command reports; the binary prints the cause chain and exits non-zero.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
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
    Run(#[from] service::RunError),
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

#[derive(Debug, Parser)]
#[command(
    name = "meterflow",
    version,
    about = "Energy-meter batches → exact-schema Parquet"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `meterflow=debug`.
    #[arg(long, global = true, env = "MF_LOG", default_value = "warn", value_parser = parse_log_filter)]
    pub log: String,
    /// Log format: `text` for terminals, `json` (one object per line) for log collectors.
    #[arg(
        long,
        global = true,
        env = "MF_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// A filter that does not parse is an error at start-up: falling back to another level would
/// hide the very logs that were asked for.
fn parse_log_filter(filter: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| filter.to_owned())
        .map_err(|error| format!("not a tracing filter ({error})"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// JSON-lines files → date-partitioned Parquet (local directory or s3://bucket/prefix).
    Transform(TransformArgs),
    /// Write a synthetic fleet's messages as JSON lines.
    Generate(GenerateArgs),
    /// Show schema, files, row count and first rows of an output.
    Inspect(InspectArgs),
    /// Zero-setup tour: generate, transform into ./meterflow-demo/, show the result.
    Demo(DemoArgs),
    /// Kafka → date-partitioned Parquet in object storage, continuously and exactly once.
    Run(RunArgs),
    /// SQL over an output with embedded DataFusion: table `readings`, partition column `date`.
    Query(QueryArgs),
}

/// Kafka connection settings; SASL credentials come from MF_KAFKA_SASL_USERNAME and
/// MF_KAFKA_SASL_PASSWORD only.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated.
    #[arg(long, env = "MF_KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    #[command(flatten)]
    pub client: KafkaClientArgs,
}

/// How to talk to the brokers: security and extra librdkafka settings.
#[derive(Debug, Clone, Args)]
pub struct KafkaClientArgs {
    #[arg(
        long,
        env = "MF_KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value = "plaintext"
    )]
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism when the protocol uses SASL (AWS MSK: SCRAM-SHA-512).
    #[arg(
        long,
        env = "MF_KAFKA_SASL_MECHANISM",
        value_enum,
        default_value = "SCRAM-SHA-512"
    )]
    pub sasl_mechanism: SaslMechanism,
    /// CA bundle for TLS (default: the system's).
    #[arg(long, env = "MF_KAFKA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Extra librdkafka setting KEY=VALUE (repeatable; env: comma-separated), e.g.
    /// `fetch.max.bytes=104857600`. Applied last, so it can override meterflow's own.
    #[arg(long = "kafka-option", env = "MF_KAFKA_OPTIONS", value_delimiter = ',', value_parser = parse_option)]
    pub options: Vec<(String, String)>,
}

fn parse_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

impl KafkaClientArgs {
    fn settings(&self, brokers: &str) -> KafkaSettings {
        KafkaSettings {
            brokers: brokers.to_string(),
            security_protocol: self.security_protocol,
            sasl_mechanism: self.sasl_mechanism,
            ca_file: self.ca_file.clone(),
            options: self.options.clone(),
        }
    }
}

impl KafkaArgs {
    fn settings(&self) -> KafkaSettings {
        self.client.settings(&self.brokers)
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topics to consume, comma-separated; the service reads all their partitions.
    #[arg(
        long,
        env = "MF_TOPICS",
        value_delimiter = ',',
        default_value = "meter-readings"
    )]
    pub topics: Vec<String>,
    /// Consumer group that receives committed offsets (lag monitoring).
    #[arg(long, env = "MF_GROUP", default_value = "meterflow")]
    pub group: String,
    #[command(flatten)]
    pub lateness: LatenessArgs,
    /// An epoch (one set of files and one checkpoint) closes this long after it started.
    #[arg(long, env = "MF_EPOCH_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub epoch_interval: Duration,
    /// An epoch also closes when this many message bytes are buffered (bounds memory).
    #[arg(long, env = "MF_EPOCH_MAX_BYTES", default_value_t = 256 << 20)]
    pub epoch_max_bytes: usize,
    /// A partition without messages for this long stops holding the watermark back.
    #[arg(long, env = "MF_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Stop once every partition is read to its end, emitting every waiting reading
    /// (backfills and tests).
    #[arg(long, env = "MF_STOP_WHEN_DRAINED")]
    pub stop_when_drained: bool,
    /// Publish dead letters to this topic (at least once, keyed by source record) instead of
    /// writing `_dead_letter/` files.
    #[arg(long, env = "MF_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,
    /// Where `/metrics` (Prometheus), `/healthz` and `/readyz` are served (port 0: any).
    #[arg(long, env = "MF_METRICS_ADDR", default_value = "0.0.0.0:9898")]
    pub metrics_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub sink: SinkArgs,
}

/// Settings for S3-compatible locations (credentials come from the usual AWS_* variables).
#[derive(Debug, Clone, Args)]
pub struct S3Args {
    /// S3 endpoint for MinIO and the like; AWS_ENDPOINT_URL works too.
    #[arg(long, env = "MF_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Retries of a failed S3 request.
    #[arg(long, env = "MF_S3_MAX_RETRIES", default_value_t = StoreOptions::DEFAULT_MAX_RETRIES)]
    pub s3_max_retries: usize,
    /// Give up retrying one S3 request after this long.
    #[arg(long, env = "MF_S3_RETRY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub s3_retry_timeout: Duration,
}

impl S3Args {
    fn options(&self) -> StoreOptions {
        StoreOptions {
            s3_endpoint: self.s3_endpoint.clone(),
            max_retries: self.s3_max_retries,
            retry_timeout: self.s3_retry_timeout,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct TransformArgs {
    /// Input JSON-lines files (`.gz`/`.zst` decompressed; `-` is stdin), read in order.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<String>,
    #[command(flatten)]
    pub sink: SinkArgs,
    #[command(flatten)]
    pub lateness: LatenessArgs,
    /// Processing time for the future-time guard (RFC 3339); default: now. Fix it for
    /// reproducible runs.
    #[arg(long, env = "MF_PROCESSING_TIME")]
    pub processing_time: Option<String>,
    /// Readings per epoch; each epoch writes one set of files, so this bounds memory (an
    /// epoch's row buffers are most of a run's peak memory; 1 M matches `--rows-per-file`).
    #[arg(long, env = "MF_EPOCH_READINGS", default_value_t = 1_000_000)]
    pub epoch_readings: u64,
    /// Replace meterflow output already in the location (other objects are left alone).
    #[arg(long)]
    pub overwrite: bool,
}

/// Where rows go and how files are cut and compressed (`transform` and `run`).
#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Output: a local directory or s3://bucket/prefix (`run` keeps checkpoints under
    /// _checkpoint/ there).
    #[arg(long, env = "MF_OUTPUT")]
    pub output: String,
    /// Maximum rows per Parquet file.
    #[arg(long, env = "MF_ROWS_PER_FILE", default_value_t = 1_000_000)]
    pub rows_per_file: usize,
    /// zstd compression level of the Parquet pages.
    #[arg(long, env = "MF_ZSTD_LEVEL", default_value_t = 1)]
    pub zstd_level: i32,
    #[command(flatten)]
    pub s3: S3Args,
}

impl SinkArgs {
    fn open_sink(&self) -> Result<ParquetSink, CliError> {
        let location = store::open(&self.output, &self.s3.options())?;
        Ok(ParquetSink::new(
            location,
            SinkOptions {
                rows_per_file: self.rows_per_file,
                zstd_level: self.zstd_level,
            },
        )?)
    }
}

/// Event-time settings that decide rows (`transform` and `run`).
#[derive(Debug, Clone, Args)]
pub struct LatenessArgs {
    /// How far behind the newest event a reading may arrive and still be placed in order.
    #[arg(long, env = "MF_ALLOWED_LATENESS", default_value = "10m", value_parser = humantime::parse_duration)]
    pub allowed_lateness: Duration,
    /// Readings later than processing time plus this are refused as future_time.
    #[arg(long, env = "MF_MAX_FUTURE", default_value = "1day", value_parser = humantime::parse_duration)]
    pub max_future: Duration,
    /// Distinct devices of a partition that must reach an event time before it moves the
    /// watermark (1-64), so a few meters with clocks running ahead cannot make everyone else
    /// late; 1 follows the newest reading alone.
    #[arg(long, env = "MF_WATERMARK_QUORUM", default_value_t = DEFAULT_WATERMARK_QUORUM as u32, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub watermark_quorum: u32,
    /// Drop a device from the state once its newest reading is this much older than the
    /// watermark (off by default). Its next reading then gets null deltas, as a new device's,
    /// and readings older than the watermark minus this are refused as late for devices the
    /// state holds no history for.
    #[arg(long, env = "MF_STATE_TTL", value_parser = humantime::parse_duration)]
    pub state_ttl: Option<Duration>,
}

impl LatenessArgs {
    /// The settings of the per-device state.
    pub fn state_settings(&self) -> StateSettings {
        StateSettings {
            allowed_lateness: micros(self.allowed_lateness),
            watermark_quorum: self.watermark_quorum as usize,
            state_ttl: self.state_ttl.map(micros),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[arg(long, default_value_t = 100)]
    pub devices: u32,
    #[arg(long, default_value_t = 24.0)]
    pub hours: f64,
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Messages arrive up to this long after their newest reading (keep ≤ allowed lateness for
    /// order-independent output).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub disorder: Duration,
    /// Probability that a reading is faulty (a tenth of it: a whole message).
    #[arg(long, default_value_t = 0.001)]
    pub fault_rate: f64,
    /// Probability that a message is sent twice.
    #[arg(long, default_value_t = 0.001)]
    pub duplicate_rate: f64,
    /// First interval (RFC 3339).
    #[arg(long, default_value = "2022-07-11T00:00:00Z")]
    pub start: String,
    /// Devices per message (one gateway's meters).
    #[arg(long, default_value_t = 8)]
    pub devices_per_message: u32,
    /// Append the seed example (device 123456) as the last message.
    #[arg(long)]
    pub with_seed_example: bool,
    /// Output file (`.gz`/`.zst` compressed; `-` is stdout); optional when publishing.
    #[arg(long, required_unless_present = "kafka_brokers")]
    pub output: Option<String>,
    /// Publish the messages to Kafka too (keyed by gateway) to load-test `meterflow run`.
    #[arg(long)]
    pub kafka_brokers: Option<String>,
    /// Topic to publish to.
    #[arg(long, default_value = "meter-readings")]
    pub topic: String,
    /// Messages per second to publish (default: as fast as the brokers take them).
    #[arg(long)]
    pub rate: Option<f64>,
    #[command(flatten)]
    pub kafka: KafkaClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// Output location (directory or s3://bucket/prefix) or one local Parquet file.
    pub location: String,
    /// How many rows to show.
    #[arg(long, default_value_t = 10)]
    pub rows: usize,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// The SQL, e.g. "SELECT date, sum(delta_energy) FROM readings GROUP BY date".
    pub sql: String,
    /// Output location to query: a directory or s3://bucket/prefix (the `--output` of
    /// transform and run, hence the same variable).
    #[arg(long, env = "MF_OUTPUT", default_value = "meterflow-demo")]
    pub data: String,
    /// How to print the answer.
    #[arg(long, value_enum, default_value_t = query::Format::Table)]
    pub format: query::Format,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the demo writes its input and output.
    #[arg(long, default_value = "meterflow-demo")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 200)]
    pub devices: u32,
    #[arg(long, default_value_t = 24.0)]
    pub hours: f64,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let runtime = tokio::runtime::Runtime::new().map_err(CliError::Runtime)?;
    match cli.command {
        Command::Transform(args) => {
            let summary = transform(&args, &runtime)?;
            eprintln!("meterflow transform → {}\n{summary}", args.sink.output);
            Ok(())
        }
        Command::Generate(args) => {
            let started = Instant::now();
            let stats = generate_file(&args)?;
            eprintln!(
                "generated {} messages, {} readings ({} faulty readings, {} faulty messages, {} re-sent) in {:.2} s → {}",
                stats.messages,
                stats.readings,
                stats.faulty_readings,
                stats.faulty_messages,
                stats.resent_messages,
                started.elapsed().as_secs_f64(),
                generate_target(&args)
            );
            Ok(())
        }
        Command::Inspect(args) => {
            let (location, only) = inspect_target(&args)?;
            let inspection =
                runtime.block_on(inspect::inspect(&location, only.as_ref(), args.rows))?;
            print!("{}", render_inspection(&inspection)?);
            Ok(())
        }
        Command::Demo(args) => demo(&args, &runtime),
        Command::Query(args) => {
            let batches =
                runtime.block_on(query::query(&args.data, &args.s3.options(), &args.sql))?;
            query::write(&batches, args.format, &mut io::stdout().lock())?;
            Ok(())
        }
        Command::Run(args) => {
            let report = run_service(&args, &runtime)?;
            eprintln!(
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

/// `run`: prints the effective configuration (no secrets), then runs the service until it is
/// drained (if asked) or SIGTERM/SIGINT arrives; a signal finishes and commits the epoch.
pub fn run_service(
    args: &RunArgs,
    runtime: &tokio::runtime::Runtime,
) -> Result<service::RunReport, CliError> {
    let options = RunOptions {
        kafka: args.kafka.settings(),
        topics: args.topics.clone(),
        group: args.group.clone(),
        state: args.lateness.state_settings(),
        max_future: micros(args.lateness.max_future),
        epoch_interval: args.epoch_interval,
        epoch_max_bytes: args.epoch_max_bytes.max(1),
        idle_timeout: args.idle_timeout,
        stop_when_drained: args.stop_when_drained,
        request_timeout: Duration::from_secs(30),
        dead_letter_topic: args.dead_letter_topic.clone(),
    };
    eprintln!(
        "meterflow run: kafka {} topics={} group={} → {} (epoch {:?} or {} bytes, lateness {:?}, idle {:?}{})",
        options.kafka,
        options.topics.join(","),
        options.group,
        args.sink.output,
        options.epoch_interval,
        options.epoch_max_bytes,
        args.lateness.allowed_lateness,
        options.idle_timeout,
        if options.stop_when_drained { ", stop when drained" } else { "" }
    );
    if let Some(topic) = &options.dead_letter_topic {
        eprintln!("meterflow run: dead letters → Kafka topic {topic} (at least once)");
    }
    let sink = args.sink.open_sink()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    runtime.spawn(async move {
        shutdown_signal().await;
        tracing::info!("stop requested: finishing the current epoch");
        flag.store(true, Ordering::Relaxed);
    });
    let telemetry = Telemetry::default();
    let bound = runtime
        .block_on(telemetry::serve(args.metrics_addr, telemetry.clone()))
        .map_err(|source| CliError::MetricsAddress {
            address: args.metrics_addr,
            source,
        })?;
    tracing::info!("metrics on http://{bound}/metrics, health on /healthz and /readyz");
    Ok(service::run(
        &options,
        &sink,
        runtime.handle(),
        &telemetry,
        stop,
    )?)
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// `transform`: validates flags, prepares the output, runs the file pipeline.
pub fn transform(
    args: &TransformArgs,
    runtime: &tokio::runtime::Runtime,
) -> Result<Summary, CliError> {
    let processing_time = match &args.processing_time {
        Some(text) => timestamp::parse_micros(text).map_err(|why| CliError::InvalidTime {
            flag: "processing-time",
            text: text.clone(),
            why,
        })?,
        None => chrono::Utc::now().timestamp_micros(),
    };
    let options = PipelineOptions {
        state: args.lateness.state_settings(),
        limits: Limits {
            latest_time: processing_time.saturating_add(micros(args.lateness.max_future)),
        },
        epoch_readings: args.epoch_readings,
    };
    let sink = args.sink.open_sink()?;
    let existing = runtime.block_on(sink.existing_outputs())?;
    if !existing.is_empty() {
        if !args.overwrite {
            return Err(CliError::OutputNotEmpty {
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

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// `generate`: writes the fleet to a file or stdout, compressed by extension.
pub fn generate_file(args: &GenerateArgs) -> Result<GenerateStats, CliError> {
    let start = timestamp::parse_micros(&args.start).map_err(|why| CliError::InvalidTime {
        flag: "start",
        text: args.start.clone(),
        why,
    })?;
    let options = GenerateOptions {
        devices: args.devices,
        hours: args.hours,
        interval: micros(args.interval),
        seed: args.seed,
        disorder: micros(args.disorder),
        fault_rate: args.fault_rate,
        duplicate_rate: args.duplicate_rate,
        start,
        devices_per_message: args.devices_per_message,
    };
    let target = generate_target(args);
    let fail = |source| CliError::Output {
        path: target.clone(),
        source,
    };
    let mut file = match &args.output {
        Some(path) => Some(open_output(path).map_err(fail)?),
        None => None,
    };
    let mut kafka = match &args.kafka_brokers {
        Some(brokers) => Some(
            KafkaLines::new(
                args.kafka.settings(brokers).client_config()?,
                &args.topic,
                args.devices_per_message,
                args.rate,
            )
            .map_err(|source| KafkaSetupError::Client {
                brokers: brokers.clone(),
                source,
            })?,
        ),
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

/// A writer for `path` (`-` is stdout), compressing `.gz` and `.zst`.
/// Where `generate` writes, for messages.
fn generate_target(args: &GenerateArgs) -> String {
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

/// A location plus, for a single local file, that file.
fn inspect_target(
    args: &InspectArgs,
) -> Result<(store::Location, Option<object_store::path::Path>), CliError> {
    let path = FsPath::new(&args.location);
    if !args.location.contains("://") && path.is_file() {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(FsPath::new("."));
        let location = store::open(&parent.to_string_lossy(), &args.s3.options())?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let only = location.child(&name);
        return Ok((location, Some(only)));
    }
    Ok((store::open(&args.location, &args.s3.options())?, None))
}

/// The text `inspect` prints.
pub fn render_inspection(inspection: &Inspection) -> Result<String, CliError> {
    let mut text = String::new();
    text.push_str("Parquet schema:\n");
    text.push_str(&inspection.parquet_schema);
    text.push_str(&format!("\nFiles ({}):\n", inspection.files.len()));
    for file in &inspection.files {
        text.push_str(&format!(
            "  {:<56} {:>10} rows {:>12} bytes\n",
            file.path, file.rows, file.bytes
        ));
    }
    text.push_str(&format!(
        "Total rows: {}\nDead letters: {}\nFirst rows:\n{}\n",
        inspection.total_rows,
        inspection.dead_letters,
        pretty_format_batches(&inspection.first_rows).map_err(CliError::Format)?
    ));
    Ok(text)
}

/// The seed example, added to the demo's input so its rows can be shown.
pub const SEED_EXAMPLE: &str = r#"{"measurements": [{"device_id": 123456, "device_name": "Test Device", "time": "2022-07-11T02:15:00Z", "cumulative_energy": 120.12}, {"device_id": 123456, "device_name": "Test Device", "time": "2022-07-11T02:20:00Z", "cumulative_energy": 122.45}]}"#;

/// `demo`: generate, transform, show.
fn demo(args: &DemoArgs, runtime: &tokio::runtime::Runtime) -> Result<(), CliError> {
    let input_text = args
        .dir
        .join("_input")
        .join("readings.jsonl")
        .to_string_lossy()
        .into_owned();
    let output = args.dir.to_string_lossy().into_owned();
    let stats = generate_file(&GenerateArgs {
        devices: args.devices,
        hours: args.hours,
        interval: Duration::from_secs(300),
        seed: 1,
        disorder: Duration::from_secs(180),
        fault_rate: 0.002,
        duplicate_rate: 0.002,
        start: "2022-07-11T00:00:00Z".into(),
        devices_per_message: 8,
        with_seed_example: true,
        output: Some(input_text.clone()),
        kafka_brokers: None,
        topic: String::new(),
        rate: None,
        kafka: KafkaClientArgs {
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: SaslMechanism::ScramSha512,
            ca_file: None,
            options: Vec::new(),
        },
    })?;
    println!(
        "Generated {} devices × {} h: {} messages, {} readings (with the seed example) → {input_text}\n",
        args.devices, args.hours, stats.messages, stats.readings
    );

    let summary = transform(
        &TransformArgs {
            input: vec![input_text],
            sink: SinkArgs {
                output: output.clone(),
                rows_per_file: 1_000_000,
                zstd_level: 1,
                s3: S3Args {
                    s3_endpoint: None,
                    s3_max_retries: 3,
                    s3_retry_timeout: Duration::from_secs(30),
                },
            },
            lateness: LatenessArgs {
                allowed_lateness: Duration::from_secs(600),
                max_future: Duration::from_secs(86_400),
                watermark_quorum: DEFAULT_WATERMARK_QUORUM as u32,
                state_ttl: None,
            },
            processing_time: None,
            epoch_readings: 1_000_000,
            overwrite: true,
        },
        runtime,
    )?;
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
        .map_err(CliError::Format)?;
    println!(
        "\nThe seed example (device 123456):\n{}",
        pretty_format_batches(&seed_rows).map_err(CliError::Format)?
    );
    println!("\nSummary:\n{summary}\n\nOutput in {output}/ (date=YYYY-MM-DD/part-*.parquet, _dead_letter/).");
    println!(
        "Query it with SQL: meterflow query \"SELECT date, sum(delta_energy) AS kwh FROM readings \
         GROUP BY date ORDER BY date\" --data {output}"
    );
    Ok(())
}
