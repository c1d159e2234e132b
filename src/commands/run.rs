//! `meterflow run`: the Kafka service with its metrics endpoint and signal handling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::CommandError;
use crate::cli::RunArgs;
use crate::run::epoch_policy::EpochPolicy;
use crate::run::telemetry::{self, Telemetry};
use crate::run::{self, RunOptions};
use crate::timestamp::duration_micros;

/// `run`: prints the effective configuration (no secrets), then runs the service until it is
/// drained (if asked) or SIGTERM/SIGINT arrives; a signal finishes and commits the epoch.
pub fn run_service(
    args: &RunArgs,
    runtime: &tokio::runtime::Runtime,
) -> Result<run::RunReport, CommandError> {
    let options = RunOptions {
        kafka: args.kafka.settings(),
        topics: args.topics.clone(),
        group: args.group.clone(),
        state: args.lateness.state_settings(),
        max_future: duration_micros(args.lateness.max_future),
        epoch: EpochPolicy {
            interval: args.epoch_interval,
            max_bytes: usize::try_from(args.epoch_max_bytes).unwrap_or(usize::MAX),
        },
        idle_timeout: args.idle_timeout,
        stop_when_drained: args.stop_when_drained,
        request_timeout: Duration::from_secs(30),
        dead_letter_topic: args.dead_letter_topic.clone(),
        replay_stall_timeout: args.replay_stall_timeout,
        on_offset_gap: args.on_offset_gap,
    };
    tracing::info!(
        kafka = %options.kafka,
        topics = %options.topics.join(","),
        group = %options.group,
        output = %args.sink.output,
        epoch_interval = ?options.epoch.interval,
        epoch_max_bytes = options.epoch.max_bytes,
        allowed_lateness = ?args.lateness.allowed_lateness,
        watermark_quorum = args.lateness.watermark_quorum,
        state_ttl = ?args.lateness.state_ttl,
        idle_timeout = ?options.idle_timeout,
        stop_when_drained = options.stop_when_drained,
        replay_stall_timeout = ?options.replay_stall_timeout,
        on_offset_gap = ?options.on_offset_gap,
        stall_timeout = ?args.stall_timeout,
        dead_letter_topic = options.dead_letter_topic.as_deref().unwrap_or("(files)"),
        "meterflow run starting (dead letters to a topic are sent at least once)"
    );
    let sink = args.sink.open_sink()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    runtime.spawn(async move {
        shutdown_signal().await;
        tracing::info!("stop requested: finishing the current epoch");
        flag.store(true, Ordering::Relaxed);
    });
    let telemetry = Telemetry::new(args.stall_timeout);
    let bound = runtime
        .block_on(telemetry::serve(args.metrics_addr, telemetry.clone()))
        .map_err(|source| CommandError::MetricsAddress {
            address: args.metrics_addr,
            source,
        })?;
    tracing::info!("metrics on http://{bound}/metrics, health on /healthz and /readyz");
    Ok(run::run(
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
