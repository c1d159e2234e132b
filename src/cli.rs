//! Command-line flags (each with its `MF_*` environment variable) and their conversion into
//! the typed options of the library; [`crate::commands`] runs them.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::commands::CommandError;
use crate::deltas::{StateSettings, DEFAULT_WATERMARK_QUORUM};
use crate::kafka::{KafkaSettings, SaslMechanism, SecurityProtocol};
use crate::query;
use crate::run::OffsetGapPolicy;
use crate::sink::store::{self, StoreOptions};
use crate::sink::{ParquetSink, SinkOptions};
use crate::timestamp::duration_micros;

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

/// A duration of at least one microsecond (the unit of event times).
fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.as_micros() == 0 {
        return Err("must be at least 1us".into());
    }
    Ok(duration)
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
        // Not quoted: the text may be part of a secret.
        _ => Err(
            "expected KEY=VALUE (in MF_KAFKA_OPTIONS, options are separated by commas, \
                  so a value cannot hold one: give it with --kafka-option)"
                .to_string(),
        ),
    }
}

impl KafkaClientArgs {
    pub(crate) fn settings(&self, brokers: &str) -> KafkaSettings {
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
    pub(crate) fn settings(&self) -> KafkaSettings {
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
    #[arg(long, env = "MF_EPOCH_MAX_BYTES", default_value_t = 256 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub epoch_max_bytes: u64,
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
    /// A replay of the epoch a crash left uncommitted fails only when no message arrived for
    /// this long, however long the whole replay takes.
    #[arg(long, env = "MF_REPLAY_STALL_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub replay_stall_timeout: Duration,
    /// When the next offset to read is no longer in its partition's log (deleted by
    /// retention before it was read, or the topic recreated): `fail` stops with an error;
    /// `skip-and-record` commits what was read before, goes on at the log's start and records
    /// the gap in the checkpoint.
    #[arg(long, env = "MF_ON_OFFSET_GAP", value_enum, default_value_t = OffsetGapPolicy::Fail)]
    pub on_offset_gap: OffsetGapPolicy,
    /// `/healthz` answers 503 when the service loop has not gone round for this long (a
    /// wedged store or broker call), so the orchestrator restarts it. Keep it above an
    /// epoch's processing and upload time.
    #[arg(long, env = "MF_STALL_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,
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
    pub(crate) fn options(&self) -> StoreOptions {
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
    #[arg(long, env = "MF_EPOCH_READINGS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
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
    #[arg(long, env = "MF_ROWS_PER_FILE", default_value_t = SinkOptions::DEFAULT_ROWS_PER_FILE)]
    pub rows_per_file: NonZeroUsize,
    /// zstd compression level of the Parquet pages.
    #[arg(long, env = "MF_ZSTD_LEVEL", default_value_t = SinkOptions::DEFAULT_ZSTD_LEVEL)]
    pub zstd_level: i32,
    #[command(flatten)]
    pub s3: S3Args,
}

impl SinkArgs {
    pub(crate) fn open_sink(&self) -> Result<ParquetSink, CommandError> {
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
            allowed_lateness: duration_micros(self.allowed_lateness),
            watermark_quorum: self.watermark_quorum as usize,
            state_ttl: self.state_ttl.map(duration_micros),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[arg(long, default_value_t = 100)]
    pub devices: u32,
    #[arg(long, default_value_t = 24.0)]
    pub hours: f64,
    #[arg(long, default_value = "5m", value_parser = positive_duration)]
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
    #[arg(long, default_value = "8")]
    pub devices_per_message: NonZeroU32,
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
