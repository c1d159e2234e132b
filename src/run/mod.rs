//! `meterflow run`: Kafka → Parquet in object storage, exactly once (contract §3–§6).
//!
//! The service owns every partition of its topics (explicit assignment, no group rebalances;
//! the group only receives committed offsets for lag monitoring). Messages are buffered per
//! partition; an epoch closes after an interval, a size bound, a drained stream or a stop
//! request, and then:
//!
//! 1. its [`Intent`] is created — the offset ranges, the processing time, idle partitions;
//! 2. its messages are decoded and applied in a canonical order (round robin over the
//!    partitions in their checkpoint order), and its files written under deterministic names;
//! 3. a [`Checkpoint`] is created with the next offsets, the files and the per-device state;
//! 4. the offsets are committed to the consumer group.
//!
//! On start the latest checkpoint is restored and an intent recorded after it is replayed from
//! its ranges, which writes the same bytes a crashed run may already have written.

pub mod checkpoint;
pub mod dead_letters;
pub mod epoch_policy;
pub mod telemetry;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use tokio::runtime::Handle;

use crate::deltas::{StateError, StateSettings};
use crate::kafka::publish::DeadLetterTopic;
use crate::kafka::source::KafkaSource;
use crate::kafka::{KafkaSettings, KafkaSetupError};
use crate::pipeline::{write_epoch, PipelineOptions, Processor};
use crate::reading::{DecodedBlock, Limits};
use crate::run::checkpoint::{
    Checkpoint, CheckpointError, CheckpointStore, Intent, PartitionRange,
};
use crate::run::dead_letters::{DeadLetterDestination, EpochFile};
use crate::run::epoch_policy::{EpochPolicy, LoopState};
use crate::run::telemetry::Telemetry;
use crate::sink::dead_letter::Origin;
use crate::sink::{ParquetSink, SinkError};
use crate::source::files::BLOCK_BYTES;
use crate::source::{Assignment, Polled, Source, SourceFailure};
use crate::summary::Summary;

/// Errors that stop the service (bad records never do).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("reading the topics failed")]
    Source(#[source] SourceFailure),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot publish dead letters to topic {topic}")]
    DeadLetterTopic {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "the checkpoint's intent for epoch {epoch} names {topic}[{partition}] offsets \
         {start}..{end}, but the broker delivered only up to {reached} (retention, or a \
         different topic?)"
    )]
    ReplayIncomplete {
        epoch: u64,
        topic: String,
        partition: i32,
        start: i64,
        end: i64,
        reached: i64,
    },
    #[error(
        "the replay of epoch {epoch} found {found} messages in {topic}[{partition}] offsets \
         {start}..{end}, but the epoch took {recorded}: the broker no longer returns the same \
         messages (retention, compaction, or a broker that skips offsets), so the epoch cannot \
         be rewritten identically"
    )]
    ReplayMismatch {
        epoch: u64,
        topic: String,
        partition: i32,
        start: i64,
        end: i64,
        recorded: u64,
        found: u64,
    },
}

/// What decides the service's behaviour besides the sink.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub kafka: KafkaSettings,
    pub topics: Vec<String>,
    pub group: String,
    /// Lateness (µs), watermark quorum and state TTL; the future-time guard is taken per
    /// epoch.
    pub state: StateSettings,
    /// Readings later than processing time plus this (µs) are `future_time`.
    pub max_future: i64,
    /// When an epoch closes: after an interval (when it has messages) or when this many
    /// message bytes are buffered (backpressure: polling pauses), among other rules.
    pub epoch: EpochPolicy,
    /// A partition without messages for this long stops holding the watermark back.
    pub idle_timeout: Duration,
    /// Stop once every partition is read to its end, emitting every waiting reading
    /// (tests and backfills).
    pub stop_when_drained: bool,
    /// How long broker requests (metadata, end offsets) may take.
    pub request_timeout: Duration,
    /// Dead letters go to this topic instead of `_dead_letter/` files.
    pub dead_letter_topic: Option<String>,
}

/// What a run did before it stopped.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Totals since the first epoch of this checkpoint prefix.
    pub summary: Summary,
    /// Epochs committed by this process (a replay included).
    pub epochs: u64,
    /// The next epoch number.
    pub next_epoch: u64,
    /// Readings this process took (the summary counts since the prefix's first epoch).
    pub readings_here: u64,
    /// Wall time of this process's run.
    pub elapsed: Duration,
}

/// A consumed message waiting for its epoch.
struct Record {
    offset: i64,
    payload: Vec<u8>,
}

/// One partition as the service tracks it.
struct Partition {
    /// Shared with the dead letters of the partition's records.
    topic: Arc<str>,
    partition: i32,
    /// The next offset no epoch has taken yet.
    next_offset: Option<i64>,
    buffered: VecDeque<Record>,
    /// Payload bytes in `buffered`, kept as messages come and go (summing them on every
    /// poll would cost time proportional to the buffer).
    buffered_bytes: usize,
    /// Offset after the last message received (what the consumer has read up to).
    received_upto: Option<i64>,
    last_message: Instant,
}

/// Runs on Kafka until drained (if asked), stopped by `stop`, or failed.
pub fn run(
    options: &RunOptions,
    sink: &ParquetSink,
    runtime: &Handle,
    telemetry: &Telemetry,
    stop: Arc<AtomicBool>,
) -> Result<RunReport, RunError> {
    let consumer = options
        .kafka
        .consumer(&options.group, telemetry.metrics.clone())?;
    let dead_letters = match &options.dead_letter_topic {
        Some(topic) => {
            // Fails clearly now rather than at the first bad record.
            options.kafka.partitions(
                &consumer,
                std::slice::from_ref(topic),
                options.request_timeout,
            )?;
            let config = options.kafka.client_config()?;
            let topic = DeadLetterTopic::new(config, topic).map_err(|source| {
                RunError::DeadLetterTopic {
                    topic: topic.clone(),
                    source,
                }
            })?;
            Box::new(topic) as Box<dyn DeadLetterDestination>
        }
        None => Box::new(EpochFile),
    };
    let mut source = KafkaSource::new(consumer, options.kafka.clone(), options.request_timeout);
    run_on(
        &mut source,
        dead_letters,
        options,
        sink,
        runtime,
        telemetry,
        stop,
    )
}

/// Runs on any [`Source`]: the service's protocol, whatever the log (`options.kafka` and
/// `options.dead_letter_topic` are not looked at; `dead_letters` says where letters go).
pub fn run_on(
    source: &mut dyn Source,
    dead_letters: Box<dyn DeadLetterDestination>,
    options: &RunOptions,
    sink: &ParquetSink,
    runtime: &Handle,
    telemetry: &Telemetry,
    stop: Arc<AtomicBool>,
) -> Result<RunReport, RunError> {
    let checkpoints = CheckpointStore::new(sink.location().clone());
    // Reading first: a missing bucket is reported as such (some stores create a bucket on
    // the probe's put).
    let latest = runtime.block_on(checkpoints.latest())?;
    runtime.block_on(checkpoints.verify_conditional_create())?;
    telemetry.readiness.set_store(true);
    let discovered = source
        .partitions(&options.topics)
        .map_err(RunError::Source)?;
    telemetry.readiness.set_kafka(true);

    let pipeline = PipelineOptions {
        state: options.state,
        limits: Limits {
            latest_time: i64::MAX,
        },
        epoch_readings: u64::MAX,
    };
    let now = Instant::now();
    let (mut processor, mut partitions, mut epoch) = match &latest {
        Some(checkpoint) => {
            let processor =
                Processor::restore(&pipeline, &checkpoint.state, checkpoint.totals.clone())?;
            let partitions: Vec<Partition> = checkpoint
                .partitions
                .iter()
                .zip(&checkpoint.next_offsets)
                .map(|((topic, partition), &next)| {
                    new_partition(topic, *partition, Some(next), now)
                })
                .collect();
            (processor, partitions, checkpoint.epoch + 1)
        }
        None => (Processor::new(&pipeline), Vec::new(), 0),
    };
    for (topic, partition) in discovered {
        if !partitions
            .iter()
            .any(|p| *p.topic == *topic && p.partition == partition)
        {
            partitions.push(new_partition(&topic, partition, None, now));
        }
    }
    for index in 0..partitions.len() {
        processor.add_partition(index);
    }
    let assignment: Vec<Assignment> = partitions
        .iter()
        .map(|p| Assignment {
            topic: p.topic.clone(),
            partition: p.partition,
            offset: p.next_offset,
        })
        .collect();
    source.assign(&assignment).map_err(RunError::Source)?;
    let restored: Vec<(usize, i64)> = partitions
        .iter()
        .enumerate()
        .filter_map(|(index, p)| Some((index, p.next_offset?)))
        .collect();
    source.committed(&restored, false);
    tracing::info!(
        epoch,
        partitions = partitions.len(),
        restored = latest.is_some(),
        "consuming"
    );

    let restored_readings = processor.summary.readings;
    let mut report = RunReport {
        readings_here: 0,
        elapsed: Duration::ZERO,
        summary: processor.summary.clone(),
        epochs: 0,
        next_epoch: epoch,
    };
    telemetry.metrics.observe_totals(&processor.summary);
    let mut service = Service {
        options,
        sink,
        runtime,
        telemetry,
        dead_letters,
        checkpoints,
        source,
        partitions,
        processor,
        report: &mut report,
    };
    if let Some(intent) = runtime.block_on(service.checkpoints.intent(epoch))? {
        tracing::info!(epoch, "replaying the epoch recorded before the last stop");
        service.replay(&intent)?;
        epoch += 1;
    }
    telemetry.readiness.set_checkpoint_loaded();
    service.live(epoch, &stop)?;
    report.readings_here = report.summary.readings - restored_readings;
    report.elapsed = now.elapsed();
    report.summary.elapsed = report.elapsed;
    Ok(report)
}

fn new_partition(topic: &str, partition: i32, next_offset: Option<i64>, now: Instant) -> Partition {
    Partition {
        topic: topic.into(),
        partition,
        next_offset,
        buffered: VecDeque::new(),
        buffered_bytes: 0,
        received_upto: next_offset,
        last_message: now,
    }
}

struct Service<'a> {
    options: &'a RunOptions,
    source: &'a mut dyn Source,
    sink: &'a ParquetSink,
    runtime: &'a Handle,
    telemetry: &'a Telemetry,
    dead_letters: Box<dyn DeadLetterDestination>,
    checkpoints: CheckpointStore,
    partitions: Vec<Partition>,
    processor: Processor,
    report: &'a mut RunReport,
}

/// How long one poll waits; bounds how late a stop request or an epoch deadline is noticed.
const POLL: Duration = Duration::from_millis(100);

impl Service<'_> {
    /// Reads until every range of `intent` is buffered, then runs the epoch as recorded.
    fn replay(&mut self, intent: &Intent) -> Result<(), RunError> {
        let deadline = Instant::now() + self.options.request_timeout.max(Duration::from_secs(30));
        loop {
            let missing = intent.ranges.iter().enumerate().find(|(index, range)| {
                range.end > range.start
                    && self.partitions[*index].received_upto.unwrap_or(i64::MIN) < range.end
            });
            let Some((index, range)) = missing else {
                break;
            };
            if Instant::now() > deadline {
                return Err(RunError::ReplayIncomplete {
                    epoch: intent.epoch,
                    topic: range.topic.clone(),
                    partition: range.partition,
                    start: range.start,
                    end: range.end,
                    reached: self.partitions[index].received_upto.unwrap_or(range.start),
                });
            }
            self.poll_once()?;
        }
        self.run_epoch(intent)
    }

    /// Consumes and closes epochs until drained or stopped.
    fn live(&mut self, mut epoch: u64, stop: &AtomicBool) -> Result<(), RunError> {
        let mut started = Instant::now();
        let mut last_drain_check = Instant::now();
        let mut caught_up = false;
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let buffered_bytes = self.buffered_bytes();
            let has_messages = self.partitions.iter().any(|p| !p.buffered.is_empty());
            let full = buffered_bytes >= self.options.epoch.max_bytes;
            // Asking the broker for end offsets waits behind the consumer's long-poll fetches
            // on the same connection, so it is done only when a poll came back empty.
            let drained = self.options.stop_when_drained
                && caught_up
                && last_drain_check.elapsed() >= Duration::from_millis(500)
                && {
                    last_drain_check = Instant::now();
                    self.drained()?
                };
            let seen = LoopState {
                elapsed: started.elapsed(),
                buffered_bytes,
                has_messages,
                has_pending: self.processor.has_pending(),
                drained,
                // Only looked at without messages (two small vectors a poll otherwise).
                idle_changed: !has_messages && self.idle_now() != self.processor.idle_flags(),
                stopping,
            };
            if let Some(reason) = self.options.epoch.close(&seen) {
                tracing::info!(epoch, %reason, "closing epoch");
                let intent = self.intent(epoch, drained);
                self.checkpoints_record(&intent)?;
                self.run_epoch(&intent)?;
                epoch += 1;
                started = Instant::now();
            }
            if drained || stopping {
                self.report.next_epoch = epoch;
                return Ok(());
            }
            if !full {
                caught_up = !self.poll_once()?;
            }
        }
    }

    fn buffered_bytes(&self) -> usize {
        self.partitions.iter().map(|p| p.buffered_bytes).sum()
    }

    fn checkpoints_record(&self, intent: &Intent) -> Result<(), RunError> {
        Ok(self
            .runtime
            .block_on(self.checkpoints.record_intent(intent))?)
    }

    /// Whether every partition has been read to its current end (and nothing is buffered
    /// beyond what an epoch will take).
    fn drained(&self) -> Result<bool, RunError> {
        for (index, p) in self.partitions.iter().enumerate() {
            let (_, high) = self.source.watermarks(index).map_err(RunError::Source)?;
            if p.received_upto.unwrap_or(0) < high {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Polls once, buffering a message if one came; whether one came.
    fn poll_once(&mut self) -> Result<bool, RunError> {
        match self.source.poll(POLL) {
            Polled::Nothing => Ok(false),
            Polled::Record(record) => {
                self.telemetry.readiness.set_kafka(true);
                let Some(p) = self.partitions.get_mut(record.partition) else {
                    return Ok(true);
                };
                let offset = record.offset;
                if p.received_upto.is_some_and(|upto| offset < upto) {
                    // Delivered again (a broker resending a batch): already buffered or
                    // already committed, never a second time.
                    tracing::debug!(topic = %p.topic, partition = p.partition, offset, "message received twice");
                    return Ok(true);
                }
                if let Some(upto) = p.received_upto.filter(|&upto| offset > upto) {
                    // Normal for compacted or transactional topics; anywhere else the
                    // broker skipped messages.
                    tracing::warn!(topic = %p.topic, partition = p.partition, expected = upto, received = offset, "offsets skipped by the broker");
                    self.telemetry
                        .metrics
                        .observe_skipped_offsets((offset - upto) as u64);
                }
                if p.next_offset.is_none() {
                    p.next_offset = Some(offset);
                }
                p.received_upto = Some(offset + 1);
                p.last_message = Instant::now();
                p.buffered_bytes += record.payload.len();
                p.buffered.push_back(Record {
                    offset,
                    payload: record.payload,
                });
                Ok(true)
            }
            Polled::Transient(error) => {
                // The client retries connections itself; report and keep polling.
                tracing::warn!(%error, "source error");
                self.telemetry.readiness.set_kafka(false);
                Ok(false)
            }
        }
    }

    /// Per partition, whether it has been quiet for the idle timeout with nothing buffered.
    fn idle_now(&self) -> Vec<bool> {
        self.partitions
            .iter()
            .map(|p| p.buffered.is_empty() && p.last_message.elapsed() >= self.options.idle_timeout)
            .collect()
    }

    /// The intent of the epoch that takes everything buffered now.
    fn intent(&self, epoch: u64, end_of_input: bool) -> Intent {
        let ranges = self
            .partitions
            .iter()
            .map(|p| {
                let start = p
                    .buffered
                    .front()
                    .map_or(p.next_offset.unwrap_or(0), |r| r.offset);
                let end = p.buffered.back().map_or(start, |r| r.offset + 1);
                PartitionRange {
                    topic: p.topic.to_string(),
                    partition: p.partition,
                    start,
                    end,
                    messages: p.buffered.len() as u64,
                }
            })
            .collect();
        let idle = self.idle_now();
        Intent {
            epoch,
            ranges,
            processing_time: chrono::Utc::now().timestamp_micros(),
            idle,
            end_of_input,
        }
    }

    /// Applies the intent's messages, writes the epoch's files, commits the checkpoint and
    /// the group offsets.
    fn run_epoch(&mut self, intent: &Intent) -> Result<(), RunError> {
        let started = Instant::now();
        let messages = self.take_messages(intent);
        self.check_counts(intent, &messages)?;
        for (index, &idle) in intent.idle.iter().enumerate() {
            self.processor.set_idle(index, idle);
        }
        let limits = Limits {
            latest_time: intent
                .processing_time
                .saturating_add(self.options.max_future),
        };
        let blocks = decode(&messages, &limits);
        let partitions = &self.partitions;
        for block in &blocks {
            for message in &block.messages {
                let (index, offset) = messages.meta[message.position as usize];
                self.processor
                    .apply(block, message, index, |_| Origin::Kafka {
                        topic: partitions[index].topic.clone(),
                        partition: partitions[index].partition,
                        offset,
                    });
            }
        }
        let mut content = self.processor.take_epoch(intent.end_of_input);
        let letters = self.dead_letters.take(&mut content.dead_letters);
        let written = write_epoch(self.sink, self.runtime, intent.epoch, content)?;
        self.dead_letters.deliver(&letters)?;
        self.processor.summary.add_written(&written);

        for (p, range) in self.partitions.iter_mut().zip(&intent.ranges) {
            p.next_offset = Some(range.end.max(p.next_offset.unwrap_or(range.end)));
        }
        let checkpoint = Checkpoint {
            epoch: intent.epoch,
            partitions: self
                .partitions
                .iter()
                .map(|p| (p.topic.to_string(), p.partition))
                .collect(),
            next_offsets: self
                .partitions
                .iter()
                .map(|p| p.next_offset.unwrap_or(0))
                .collect(),
            files: written.data_files,
            totals: self.processor.summary.clone(),
            state: self.processor.encode_state()?,
        };
        self.runtime
            .block_on(self.checkpoints.commit(&checkpoint))?;
        self.telemetry.readiness.set_store(true);
        self.commit_offsets(&checkpoint);
        self.observe(intent.epoch, started);
        self.report.epochs += 1;
        self.report.summary = self.processor.summary.clone();
        tracing::info!(
            epoch = intent.epoch,
            ranges = ?intent.ranges.iter().map(|r| (r.partition, r.start, r.end)).collect::<Vec<_>>(),
            end_of_input = intent.end_of_input,
            messages = messages.meta.len(),
            rows = written.rows,
            ms = started.elapsed().as_millis() as u64,
            "epoch committed"
        );
        Ok(())
    }

    /// Removes the intent's messages from the buffers, in the canonical order.
    fn take_messages(&mut self, intent: &Intent) -> EpochMessages {
        let mut taken: Vec<Vec<Record>> = Vec::with_capacity(self.partitions.len());
        for (p, range) in self.partitions.iter_mut().zip(&intent.ranges) {
            // Anything before the range was taken by an earlier epoch (a replay's restart).
            let before = p
                .buffered
                .iter()
                .take_while(|r| r.offset < range.start)
                .count();
            let through = p
                .buffered
                .iter()
                .take_while(|r| r.offset < range.end)
                .count()
                .max(before);
            let drained: Vec<Record> = p.buffered.drain(..through).collect();
            p.buffered_bytes -= drained.iter().map(|r| r.payload.len()).sum::<usize>();
            taken.push(drained.into_iter().skip(before).collect());
        }
        let mut messages = EpochMessages::default();
        let longest = taken.iter().map(Vec::len).max().unwrap_or(0);
        let mut iters: Vec<_> = taken.into_iter().map(Vec::into_iter).collect();
        for _ in 0..longest {
            for (index, records) in iters.iter_mut().enumerate() {
                if let Some(record) = records.next() {
                    messages.meta.push((index, record.offset));
                    messages.payloads.push(record.payload);
                }
            }
        }
        messages
    }

    /// Metrics after a committed epoch; the lag uses the end offsets of the consumer's
    /// statistics (no broker round trip).
    fn observe(&self, epoch: u64, started: Instant) {
        let metrics = &self.telemetry.metrics;
        metrics.observe_totals(&self.processor.summary);
        metrics.observe_epoch(epoch, started.elapsed().as_secs_f64());
    }

    /// A replay must take as many messages per partition as the recorded epoch did, or its
    /// files would silently differ from the ones a crashed run may have written.
    fn check_counts(&self, intent: &Intent, messages: &EpochMessages) -> Result<(), RunError> {
        let mut found = vec![0u64; intent.ranges.len()];
        for &(index, _) in &messages.meta {
            found[index] += 1;
        }
        for (range, found) in intent.ranges.iter().zip(found) {
            if found != range.messages {
                return Err(RunError::ReplayMismatch {
                    epoch: intent.epoch,
                    topic: range.topic.clone(),
                    partition: range.partition,
                    start: range.start,
                    end: range.end,
                    recorded: range.messages,
                    found,
                });
            }
        }
        Ok(())
    }

    /// Group offsets and lag for monitoring; the checkpoint already holds the truth.
    fn commit_offsets(&self, checkpoint: &Checkpoint) {
        let next: Vec<(usize, i64)> = checkpoint
            .next_offsets
            .iter()
            .copied()
            .enumerate()
            .collect();
        self.source.committed(&next, true);
    }
}

/// An epoch's messages in processing order.
#[derive(Default)]
struct EpochMessages {
    /// (partition index, offset) of each message.
    meta: Vec<(usize, i64)>,
    payloads: Vec<Vec<u8>>,
}

/// Decodes the messages in blocks of about [`BLOCK_BYTES`], in parallel, in order; a
/// message's `position` is its index in `messages`.
fn decode(messages: &EpochMessages, limits: &Limits) -> Vec<DecodedBlock> {
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, payload) in messages.payloads.iter().enumerate() {
        bytes += payload.len();
        if bytes >= BLOCK_BYTES {
            groups.push((start, i + 1));
            start = i + 1;
            bytes = 0;
        }
    }
    if start < messages.payloads.len() {
        groups.push((start, messages.payloads.len()));
    }
    groups
        .into_par_iter()
        .map(|(first, end)| {
            let payloads = &messages.payloads[first..end];
            let mut text = Vec::with_capacity(payloads.iter().map(|p| p.len() + 1).sum());
            let mut ranges = Vec::with_capacity(payloads.len());
            for payload in payloads {
                let at = text.len();
                text.extend_from_slice(payload);
                ranges.push(at..text.len());
                text.push(b'\n');
            }
            let mut block = DecodedBlock::new(text);
            for (offset, range) in ranges.into_iter().enumerate() {
                block.decode(range, (first + offset) as u64, limits);
            }
            block
        })
        .collect()
}
