//! What `meterflow run` tells its operators (contract §6): Prometheus metrics on `/metrics`,
//! liveness on `/healthz` (the service loop goes round), readiness on `/readyz`.
//!
//! Counters carry the totals of the checkpoint prefix (restored at start), so a restart does
//! not reset them and they agree with the summary a drained run prints.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::reading::reason::Reason;
use crate::summary::Summary;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    topic: String,
    partition: i32,
}

/// The service's metrics; cheap to clone (every metric is shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    messages: Counter,
    readings: Counter,
    accepted: Counter,
    rows: Counter,
    dead_letters: Family<ReasonLabel, Counter>,
    duplicates: Counter,
    resets: Counter,
    evicted: Counter,
    files: Counter,
    bytes: Counter,
    skipped_offsets: Counter,
    offset_gaps: Family<PartitionLabel, Counter>,
    devices: Gauge,
    last_epoch: Gauge,
    lag: Family<PartitionLabel, Gauge>,
    epoch_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meterflow");
        let metrics = Metrics {
            registry: Arc::new(Registry::default()),
            messages: Counter::default(),
            readings: Counter::default(),
            accepted: Counter::default(),
            rows: Counter::default(),
            dead_letters: Family::default(),
            duplicates: Counter::default(),
            resets: Counter::default(),
            evicted: Counter::default(),
            files: Counter::default(),
            bytes: Counter::default(),
            skipped_offsets: Counter::default(),
            offset_gaps: Family::default(),
            devices: Gauge::default(),
            last_epoch: Gauge::default(),
            lag: Family::default(),
            // 10 ms … ~80 s: a small test epoch up to a minute-long production epoch.
            epoch_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 14),
            ),
        };
        let m = &metrics;
        registry.register("messages", "Kafka messages processed", m.messages.clone());
        registry.register(
            "readings",
            "Readings seen, valid or not",
            m.readings.clone(),
        );
        registry.register(
            "readings_accepted",
            "Readings taken into the per-device state",
            m.accepted.clone(),
        );
        registry.register("rows_written", "Rows written to Parquet", m.rows.clone());
        registry.register(
            "dead_letters",
            "Dead letters by reason (late readings are reason=\"late\")",
            m.dead_letters.clone(),
        );
        registry.register(
            "duplicates",
            "Exact duplicate readings dropped",
            m.duplicates.clone(),
        );
        registry.register(
            "counter_resets",
            "Rows whose cumulative energy went down",
            m.resets.clone(),
        );
        registry.register(
            "devices_evicted",
            "Devices dropped from the state by the state TTL",
            m.evicted.clone(),
        );
        registry.register("files_written", "Parquet files written", m.files.clone());
        registry.register(
            "bytes_written",
            "Bytes uploaded (Parquet and dead letters)",
            m.bytes.clone(),
        );
        registry.register(
            "skipped_offsets",
            "Offsets the broker skipped (compaction, transaction markers, or a broker fault)",
            m.skipped_offsets.clone(),
        );
        registry.register(
            "offset_gaps",
            "Read positions found outside a partition's log (offsets deleted before they were \
             read, or the topic recreated)",
            m.offset_gaps.clone(),
        );
        registry.register("devices", "Devices in state", m.devices.clone());
        registry.register(
            "last_committed_epoch",
            "Epoch of the last committed checkpoint",
            m.last_epoch.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages in the partition after the committed offset",
            m.lag.clone(),
        );
        registry.register(
            "epoch_duration_seconds",
            "Time to process, write and commit one epoch",
            m.epoch_seconds.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// Brings the counters up to `totals` (totals only grow).
    pub fn observe_totals(&self, totals: &Summary) {
        raise(&self.messages, totals.messages);
        raise(&self.readings, totals.readings);
        raise(&self.accepted, totals.accepted);
        raise(&self.rows, totals.rows);
        raise(&self.duplicates, totals.duplicates);
        raise(&self.resets, totals.counter_resets);
        raise(&self.evicted, totals.devices_evicted);
        raise(&self.files, totals.files);
        raise(&self.bytes, totals.bytes);
        for reason in Reason::ALL {
            let counter = self.dead_letters.get_or_create(&ReasonLabel {
                reason: reason.code(),
            });
            raise(&counter, totals.dead_letters_for(reason));
        }
        self.devices.set(totals.devices as i64);
    }

    pub fn observe_epoch(&self, epoch: u64, seconds: f64) {
        self.last_epoch.set(epoch as i64);
        self.epoch_seconds.observe(seconds);
    }

    pub fn observe_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.lag
            .get_or_create(&PartitionLabel {
                topic: topic.to_string(),
                partition,
            })
            .set(lag.max(0));
    }

    pub fn observe_skipped_offsets(&self, skipped: u64) {
        self.skipped_offsets.inc_by(skipped);
    }

    pub fn observe_offset_gap(&self, topic: &str, partition: i32) {
        self.offset_gaps
            .get_or_create(&PartitionLabel {
                topic: topic.to_string(),
                partition,
            })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

fn raise(counter: &Counter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

/// By default, a store call pending for longer than this makes the service unready (a hanging
/// store answers nothing, so no error would ever say so).
pub const STORE_SLOW: Duration = Duration::from_secs(60);

/// What `/readyz` reports: the checkpoint is loaded, the last contact with Kafka and the
/// object store succeeded, and no store call has been pending for too long.
#[derive(Debug)]
pub struct Readiness {
    checkpoint_loaded: AtomicBool,
    kafka: AtomicBool,
    store: AtomicBool,
    /// Milliseconds since `clock` (plus one) when the pending store call began; 0: none is.
    store_pending_since: AtomicU64,
    store_slow: Duration,
    clock: Instant,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new(STORE_SLOW)
    }
}

impl Readiness {
    /// Unready while a store call has been pending for `store_slow`.
    pub fn new(store_slow: Duration) -> Self {
        Readiness {
            checkpoint_loaded: AtomicBool::new(false),
            kafka: AtomicBool::new(false),
            store: AtomicBool::new(false),
            store_pending_since: AtomicU64::new(0),
            store_slow,
            clock: Instant::now(),
        }
    }

    /// Runs a store call, tracking that it is pending and whether it succeeded.
    pub fn store_call<T, E>(&self, call: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let since = self.clock.elapsed().as_millis() as u64 + 1;
        self.store_pending_since.store(since, Ordering::Relaxed);
        let result = call();
        self.store_pending_since.store(0, Ordering::Relaxed);
        self.set_store(result.is_ok());
        result
    }

    pub fn set_checkpoint_loaded(&self) {
        self.checkpoint_loaded.store(true, Ordering::Relaxed);
    }

    pub fn set_kafka(&self, reachable: bool) {
        self.kafka.store(reachable, Ordering::Relaxed);
    }

    pub fn set_store(&self, reachable: bool) {
        self.store.store(reachable, Ordering::Relaxed);
    }

    /// Ready, or the first reason it is not.
    pub fn check(&self) -> Result<(), &'static str> {
        if !self.checkpoint_loaded.load(Ordering::Relaxed) {
            return Err("checkpoint not loaded yet");
        }
        if !self.kafka.load(Ordering::Relaxed) {
            return Err("Kafka not reachable");
        }
        if !self.store.load(Ordering::Relaxed) {
            return Err("object store not reachable");
        }
        let since = self.store_pending_since.load(Ordering::Relaxed);
        let now = self.clock.elapsed().as_millis() as u64 + 1;
        if since != 0 && now.saturating_sub(since) >= self.store_slow.as_millis() as u64 {
            return Err("object store not answering");
        }
        Ok(())
    }
}

/// What `/healthz` reports: the service loop went round within the stall timeout. A loop
/// wedged anywhere (a store or broker call that never returns) stops beating, and the
/// orchestrator restarts the process.
#[derive(Debug)]
pub struct Liveness {
    stall_timeout: Duration,
    /// Milliseconds since `clock` of the last beat (the start counts as one).
    last_beat: AtomicU64,
    clock: Instant,
}

impl Liveness {
    pub fn new(stall_timeout: Duration) -> Self {
        Liveness {
            stall_timeout,
            last_beat: AtomicU64::new(0),
            clock: Instant::now(),
        }
    }

    /// The loop went round once.
    pub fn beat(&self) {
        let now = self.clock.elapsed().as_millis() as u64;
        self.last_beat.store(now, Ordering::Relaxed);
    }

    /// Alive, or how long the loop has been silent.
    pub fn check(&self) -> Result<(), Duration> {
        let now = self.clock.elapsed().as_millis() as u64;
        let silent =
            Duration::from_millis(now.saturating_sub(self.last_beat.load(Ordering::Relaxed)));
        if silent >= self.stall_timeout {
            Err(silent)
        } else {
            Ok(())
        }
    }
}

/// The `--stall-timeout` default: longer than any epoch's processing and store retries.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Metrics, readiness and liveness, shared by the service loop and the HTTP endpoint.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
    pub liveness: Arc<Liveness>,
}

impl Telemetry {
    /// `/healthz` fails once the loop has not gone round for `stall_timeout`.
    pub fn new(stall_timeout: Duration) -> Self {
        Telemetry {
            metrics: Metrics::new(),
            readiness: Arc::default(),
            liveness: Arc::new(Liveness::new(stall_timeout)),
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new(DEFAULT_STALL_TIMEOUT)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `address` until the runtime stops; returns
/// the bound address (port 0 picks a free one).
pub async fn serve(address: SocketAddr, telemetry: Telemetry) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .with_state(telemetry);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(telemetry): State<Telemetry>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        telemetry.metrics.render(),
    )
}

async fn health(State(telemetry): State<Telemetry>) -> impl IntoResponse {
    match telemetry.liveness.check() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(silent) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the service loop has not gone round for {} s\n",
                silent.as_secs()
            ),
        ),
    }
}

async fn ready(State(telemetry): State<Telemetry>) -> impl IntoResponse {
    match telemetry.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_the_totals_and_render_as_openmetrics() {
        let metrics = Metrics::new();
        let mut totals = Summary {
            messages: 10,
            readings: 80,
            accepted: 70,
            rows: 60,
            devices: 5,
            ..Summary::default()
        };
        totals.dead_letters[Reason::Late.index()] = 3;
        metrics.observe_totals(&totals);
        totals.messages = 12;
        metrics.observe_totals(&totals);
        metrics.observe_lag("meter-readings", 2, 7);
        metrics.observe_epoch(4, 0.25);
        let text = metrics.render();
        for line in [
            "meterflow_messages_total 12",
            "meterflow_readings_accepted_total 70",
            "meterflow_rows_written_total 60",
            "meterflow_dead_letters_total{reason=\"late\"} 3",
            "meterflow_dead_letters_total{reason=\"invalid_json\"} 0",
            "meterflow_devices 5",
            "meterflow_consumer_lag{topic=\"meter-readings\",partition=\"2\"} 7",
            "meterflow_last_committed_epoch 4",
            "meterflow_epoch_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn readiness_names_what_is_missing() {
        let readiness = Readiness::default();
        assert_eq!(readiness.check(), Err("checkpoint not loaded yet"));
        readiness.set_checkpoint_loaded();
        readiness.set_kafka(true);
        assert_eq!(readiness.check(), Err("object store not reachable"));
        readiness.set_store(true);
        assert_eq!(readiness.check(), Ok(()));
        readiness.set_kafka(false);
        assert_eq!(readiness.check(), Err("Kafka not reachable"));
    }

    #[test]
    fn a_pending_store_call_turns_readiness_false_and_a_silent_loop_liveness() {
        let readiness = Readiness::new(Duration::from_millis(30));
        readiness.set_checkpoint_loaded();
        readiness.set_kafka(true);
        readiness.set_store(true);
        let seen = readiness.store_call(|| {
            std::thread::sleep(Duration::from_millis(60));
            Ok::<_, ()>(readiness.check())
        });
        assert_eq!(seen, Ok(Err("object store not answering")));
        assert_eq!(readiness.check(), Ok(()), "answered: ready again");
        let _ = readiness.store_call(|| Err::<(), _>("refused"));
        assert_eq!(readiness.check(), Err("object store not reachable"));

        let liveness = Liveness::new(Duration::from_millis(30));
        assert_eq!(liveness.check(), Ok(()));
        std::thread::sleep(Duration::from_millis(60));
        assert!(liveness.check().is_err());
        liveness.beat();
        assert_eq!(liveness.check(), Ok(()));
    }
}
