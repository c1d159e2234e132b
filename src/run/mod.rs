//! `meterflow run`: Kafka → Parquet in object storage, exactly once (contract §3–§6).
//!
//! The service owns every partition of its topics (explicit assignment, no group rebalances;
//! the group only receives committed offsets for lag monitoring). Messages are buffered per
//! partition; an epoch closes after an interval, a size bound, a drained stream or a stop
//! request, and then:
//!
//! 1. its [`Intent`] is created — the offset ranges, the processing time, idle partitions and
//!    the settings its bytes depend on;
//! 2. its messages are decoded and applied in a canonical order (round robin over the
//!    partitions in their checkpoint order), and its files written under deterministic names;
//! 3. a [`Checkpoint`] is created with the next offsets, the files and the per-device state;
//! 4. the offsets are committed to the consumer group.
//!
//! On start the latest checkpoint is restored and an intent recorded after it is replayed from
//! its ranges, partitions and settings, which writes the same bytes a crashed run may already
//! have written; partitions added and settings changed since apply from the next epoch.

pub mod checkpoint;
pub mod dead_letters;
pub mod epoch_policy;
pub mod telemetry;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use tokio::runtime::Handle;

use crate::deltas::{StateError, StateSettings};
use crate::kafka::dead_letter_topic::DeadLetterTopic;
use crate::kafka::source::KafkaSource;
use crate::kafka::{KafkaSettings, KafkaSetupError};
use crate::pipeline::{encode_epoch, PipelineOptions, Processor};
use crate::reading::{DecodedBlock, Limits};
use crate::run::checkpoint::{
    Checkpoint, CheckpointError, CheckpointStore, EpochSettings, Intent, PartitionRange,
    SkippedGap, MAX_RECORDED_GAPS,
};
use crate::run::dead_letters::{DeadLetterDestination, EpochFile};
use crate::run::epoch_policy::{CloseReason, EpochPolicy, LoopState};
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
        source: crate::kafka::dead_letter_topic::PublishError,
    },
    #[error(
        "the checkpoint's intent for epoch {epoch} names {topic}[{partition}] offsets \
         {start}..{end}, but the broker delivered only up to {reached} and then nothing for \
         {stalled:?} (--replay-stall-timeout; retention, or a different topic?)"
    )]
    ReplayIncomplete {
        epoch: u64,
        stalled: Duration,
        topic: String,
        partition: i32,
        start: i64,
        end: i64,
        reached: i64,
    },
    #[error(
        "epoch {epoch} was recorded with dead letters to topic {recorded}, and this run sends \
         them {current}: its replay must send them where the crashed attempt did. Restart \
         with --dead-letter-topic {recorded}; a new destination applies from the next epoch"
    )]
    DeadLetterTopicChanged {
        epoch: u64,
        recorded: String,
        current: String,
    },
    #[error(
        "{topic}[{partition}]: the next offset to read is {expected}, but the partition holds \
         offsets {low}..{high}: {why}. {what}"
    )]
    OffsetGap {
        topic: String,
        partition: i32,
        expected: i64,
        low: i64,
        high: i64,
        why: &'static str,
        what: &'static str,
    },
    #[error(
        "the intent of epoch {epoch} does not name {topic}[{partition}], which the last \
         checkpoint reads: the intent does not belong to this checkpoint prefix"
    )]
    IntentMismatch {
        epoch: u64,
        topic: String,
        partition: i32,
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
    /// A replay fails when no record arrived for this long (however long the whole replay
    /// takes).
    pub replay_stall_timeout: Duration,
    /// What a read position outside its partition's log does (offsets deleted before they
    /// were read, or the topic recreated).
    pub on_offset_gap: OffsetGapPolicy,
}

/// `--on-offset-gap`: what the service does when the next offset to read is no longer in its
/// partition's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OffsetGapPolicy {
    /// Stop with an error naming the gap; nothing is written for it.
    #[default]
    Fail,
    /// Commit what was read before the gap, go on at the log's start, and record the gap in
    /// the intent and the checkpoints (and the log and the metric).
    SkipAndRecord,
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
            let topic = DeadLetterTopic::new(config, topic, options.request_timeout)
                .map_err(|source| options.kafka.client_error(source))?;
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
    let latest = telemetry
        .readiness
        .store_call(|| runtime.block_on(checkpoints.latest()))?;
    telemetry
        .readiness
        .store_call(|| runtime.block_on(checkpoints.verify_conditional_create()))?;
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
                    // 0: nothing read yet; the partition starts at its beginning, wherever
                    // retention has moved that.
                    let next = Some(next).filter(|&next| next > 0);
                    new_partition(topic, *partition, next, now)
                })
                .collect();
            (processor, partitions, checkpoint.epoch + 1)
        }
        None => (Processor::new(&pipeline), Vec::new(), 0),
    };
    let pending = telemetry
        .readiness
        .store_call(|| runtime.block_on(checkpoints.intent(epoch)))?;
    // An epoch to replay keeps the partitions it was recorded with, whatever was added to the
    // topics since: a partition it did not read must not hold its watermark back. Partitions
    // found since join after it.
    if let Some(intent) = &pending {
        if let Some(missing) = partitions.iter().find(|p| {
            !intent
                .ranges
                .iter()
                .any(|r| *r.topic == *p.topic && r.partition == p.partition)
        }) {
            return Err(RunError::IntentMismatch {
                epoch,
                topic: missing.topic.to_string(),
                partition: missing.partition,
            });
        }
        for range in &intent.ranges {
            if position(&partitions, &range.topic, range.partition).is_none() {
                let start = (range.messages > 0).then_some(range.start);
                partitions.push(new_partition(&range.topic, range.partition, start, now));
            }
        }
    }
    // The recorded epoch read after the gaps it skipped: so does its replay.
    let recorded_gaps = pending.as_ref().map_or(&[][..], |i| &i.offset_gaps[..]);
    for gap in recorded_gaps {
        if let Some(index) = position(&partitions, &gap.topic, gap.partition) {
            partitions[index].next_offset = Some(gap.resumed_at);
            partitions[index].received_upto = Some(gap.resumed_at);
        }
    }
    let mut offset_gaps = latest
        .as_ref()
        .map_or_else(Vec::new, |checkpoint| checkpoint.offset_gaps.clone());
    offset_gaps.extend(recorded_gaps.iter().cloned());
    keep_last_gaps(&mut offset_gaps);
    let in_replay = partitions.len();
    for (topic, partition) in discovered {
        if position(&partitions, &topic, partition).is_none() {
            partitions.push(new_partition(&topic, partition, None, now));
        }
    }
    let registered = if pending.is_some() {
        in_replay
    } else {
        partitions.len()
    };
    for index in 0..registered {
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
    // Where each partition resumes, `topic:partition@offset` (`@start` without a position).
    let resume_at: Vec<String> = partitions
        .iter()
        .map(|p| match p.next_offset {
            Some(offset) => format!("{}:{}@{offset}", p.topic, p.partition),
            None => format!("{}:{}@start", p.topic, p.partition),
        })
        .collect();
    tracing::info!(
        epoch,
        partitions = partitions.len(),
        restored = latest.is_some(),
        resume_at = %resume_at.join(" "),
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
        replay_ends: None,
        unexplained_refusals: 0,
        offset_gaps,
        unrecorded_gaps: Vec::new(),
        found_gaps: Vec::new(),
    };
    // Only for the log line below: an unreadable old intent does not stop the start.
    let mut previous = match &latest {
        Some(checkpoint) => runtime
            .block_on(service.checkpoints.intent(checkpoint.epoch))
            .ok()
            .flatten()
            .and_then(|intent| intent.settings),
        None => None,
    };
    // Nothing is buffered yet: a gap skipped now needs no epoch closed first. A replay needs
    // its ranges' records, which a gap there has lost.
    if service.check_positions(epoch)? {
        if let Some(lost) = service.found_gaps.iter().find(|gap| {
            pending.as_ref().is_some_and(|intent| {
                intent.ranges.iter().any(|r| {
                    r.topic == gap.topic && r.partition == gap.partition && r.end > r.start
                })
            })
        }) {
            return Err(lost.error("the offsets the epoch to replay read are gone"));
        }
        service.apply_found_gaps()?;
        // A replay's checkpoint records the skip; without one it gets an epoch of its own.
        if pending.is_none() {
            epoch = service.close_epoch(epoch, CloseReason::OffsetGap, false)?;
        }
    }
    if let Some(intent) = pending {
        tracing::info!(epoch, "replaying the epoch recorded before the last stop");
        service.replay(&intent)?;
        for index in registered..service.partitions.len() {
            service.processor.add_partition(index);
        }
        previous = intent.settings;
        epoch += 1;
    }
    if let Some(previous) = previous {
        for change in service.settings().changes_since(&previous) {
            tracing::warn!(epoch, %change, "a setting changed; it applies from this epoch on");
        }
    }
    telemetry.readiness.set_checkpoint_loaded();
    service.live(epoch, &stop)?;
    report.readings_here = report.summary.readings - restored_readings;
    report.elapsed = now.elapsed();
    report.summary.elapsed = report.elapsed;
    Ok(report)
}

impl SkippedGap {
    /// What the watermarks say happened.
    fn why(&self) -> &'static str {
        if self.expected < self.low {
            "the offsets before the partition's start were deleted before they were read \
             (retention ran ahead of the service)"
        } else {
            "the partition ends before what was already read (the topic was deleted and \
             recreated, or truncated)"
        }
    }

    /// The run's error for this gap; `what` says what the service does about it.
    fn error(&self, what: &'static str) -> RunError {
        RunError::OffsetGap {
            topic: self.topic.clone(),
            partition: self.partition,
            expected: self.expected,
            low: self.low,
            high: self.high,
            why: self.why(),
            what,
        }
    }
}

/// Drops all but the last [`MAX_RECORDED_GAPS`] gaps.
fn keep_last_gaps(gaps: &mut Vec<SkippedGap>) {
    let excess = gaps.len().saturating_sub(MAX_RECORDED_GAPS);
    gaps.drain(..excess);
}

/// Where (topic, partition) is in `partitions`.
fn position(partitions: &[Partition], topic: &str, partition: i32) -> Option<usize> {
    partitions
        .iter()
        .position(|p| *p.topic == *topic && p.partition == partition)
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
    /// While replaying: per partition, the offset from which records are not taken (`None`:
    /// none are), so only the replay's own messages are buffered; the rest is read again
    /// after it.
    replay_ends: Option<Vec<Option<i64>>>,
    /// Refusals of read positions in a row that the watermarks did not explain.
    unexplained_refusals: u32,
    /// Every offset gap skipped on this prefix (the checkpoints' record).
    offset_gaps: Vec<SkippedGap>,
    /// Gaps skipped since the last checkpoint, for the next intent.
    unrecorded_gaps: Vec<SkippedGap>,
    /// Gaps found and to be skipped once what was read before them is committed.
    found_gaps: Vec<SkippedGap>,
}

/// Refusals of read positions inside the logs after which the service gives up.
const MAX_UNEXPLAINED_REFUSALS: u32 = 3;

/// How long one poll waits; bounds how late a stop request or an epoch deadline is noticed.
const POLL: Duration = Duration::from_millis(100);

impl Service<'_> {
    /// Reads until every range of `intent` is buffered, then runs the epoch as recorded.
    fn replay(&mut self, intent: &Intent) -> Result<(), RunError> {
        let indices = self.paired(intent)?;
        let mut ends = vec![None; self.partitions.len()];
        for (range, &index) in intent.ranges.iter().zip(&indices) {
            // An empty range takes nothing (its partition may have moved past a gap).
            ends[index] = (range.end > range.start).then_some(range.end);
        }
        self.replay_ends = Some(ends);
        let replayed = self.replay_ranges(intent, &indices);
        self.replay_ends = None;
        replayed?;
        // What was left unread during the replay is read from here on.
        self.reassign()?;
        self.run_epoch(intent)
    }

    /// Polls until every range of `intent` is buffered; fails when no record of a range came
    /// for the replay stall timeout.
    fn replay_ranges(&mut self, intent: &Intent, indices: &[usize]) -> Result<(), RunError> {
        let mut last_record = Instant::now();
        loop {
            self.telemetry.liveness.beat();
            let missing = intent.ranges.iter().zip(indices).find(|(range, &index)| {
                range.end > range.start
                    && self.partitions[index].received_upto.unwrap_or(i64::MIN) < range.end
            });
            let Some((range, &index)) = missing else {
                break;
            };
            if last_record.elapsed() >= self.options.replay_stall_timeout {
                return Err(RunError::ReplayIncomplete {
                    stalled: self.options.replay_stall_timeout,
                    epoch: intent.epoch,
                    topic: range.topic.clone(),
                    partition: range.partition,
                    start: range.start,
                    end: range.end,
                    reached: self.partitions[index].received_upto.unwrap_or(range.start),
                });
            }
            // Only the ranges' own records are taken while replaying: each is progress.
            if self.poll_once()? {
                last_record = Instant::now();
            }
        }
        Ok(())
    }

    /// Assigns every partition again at the offset after its last record received.
    fn reassign(&mut self) -> Result<(), RunError> {
        let assignment: Vec<Assignment> = self
            .partitions
            .iter()
            .map(|p| Assignment {
                topic: p.topic.clone(),
                partition: p.partition,
                offset: p.received_upto,
            })
            .collect();
        self.source.assign(&assignment).map_err(RunError::Source)
    }

    /// Consumes and closes epochs until drained or stopped.
    fn live(&mut self, mut epoch: u64, stop: &AtomicBool) -> Result<(), RunError> {
        let mut started = Instant::now();
        let mut last_drain_check = Instant::now();
        let mut caught_up = false;
        loop {
            self.telemetry.liveness.beat();
            let stopping = stop.load(Ordering::Relaxed);
            let buffered_bytes = self.buffered_bytes();
            let has_messages = self.partitions.iter().any(|p| !p.buffered.is_empty());
            let full = buffered_bytes >= self.options.epoch.max_bytes;
            // Asking the broker for end offsets waits behind the consumer's long-poll fetches
            // on the same connection, so it is done only when a poll came back empty.
            // A gap waiting to be skipped is not drained: the log after it is still unread.
            let drained = self.options.stop_when_drained
                && caught_up
                && self.found_gaps.is_empty()
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
                gap_found: !self.found_gaps.is_empty(),
            };
            if let Some(reason) = self.options.epoch.close(&seen) {
                epoch = self.close_epoch(epoch, reason, drained)?;
                started = Instant::now();
            }
            if !self.found_gaps.is_empty()
                && !self.partitions.iter().any(|p| !p.buffered.is_empty())
            {
                for gap in &mut self.found_gaps {
                    gap.epoch = epoch;
                }
                self.apply_found_gaps()?;
                // Recorded at once, not with the next messages: a restart before their intent
                // would go back to the position before the gap, which a refilled log no
                // longer shows as one.
                epoch = self.close_epoch(epoch, CloseReason::OffsetGap, false)?;
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
        Ok(self.telemetry.readiness.store_call(|| {
            self.runtime
                .block_on(self.checkpoints.record_intent(intent))
        })?)
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
                if let Some(ends) = &self.replay_ends {
                    if ends[record.partition].is_none_or(|end| offset >= end) {
                        return Ok(false);
                    }
                }
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
                self.unexplained_refusals = 0;
                Ok(true)
            }
            Polled::OutOfRange => {
                if self.check_positions(0)? {
                    if let Some(gap) = self
                        .found_gaps
                        .first()
                        .filter(|_| self.replay_ends.is_some())
                    {
                        return Err(gap.error("the epoch being replayed cannot skip it"));
                    }
                    return Ok(false);
                }
                // Every position lies inside its log (the client had fetched ahead, or a
                // never-read partition's start moved): read on from the positions received.
                self.unexplained_refusals += 1;
                if self.unexplained_refusals > MAX_UNEXPLAINED_REFUSALS {
                    return Err(RunError::Source(
                        "the broker keeps refusing read positions that lie inside the \
                         partitions' logs"
                            .into(),
                    ));
                }
                tracing::warn!(
                    "the broker refused a read position; reading on from the last record received"
                );
                self.reassign()?;
                Ok(false)
            }
            Polled::Transient(error) => {
                // The client retries connections itself; report and keep polling.
                tracing::warn!(%error, "source error");
                self.telemetry.readiness.set_kafka(false);
                Ok(false)
            }
        }
    }

    /// Compares every read position with its partition's log: offsets before the log's start
    /// were deleted before they were read, a position past its end means the log is shorter
    /// than what was read (the topic recreated or truncated). Such a gap fails the run, or
    /// with `skip-and-record` joins the gaps to skip (recorded as of `epoch`); whether any
    /// was found. Gaps inside the log (compaction, transaction markers) are not looked for
    /// here; they are counted as skipped offsets.
    fn check_positions(&mut self, epoch: u64) -> Result<bool, RunError> {
        let mut found = false;
        for (index, p) in self.partitions.iter().enumerate() {
            let Some(expected) = p.received_upto else {
                continue;
            };
            let (low, high) = self.source.watermarks(index).map_err(RunError::Source)?;
            if (low..=high).contains(&expected) {
                continue;
            }
            self.telemetry
                .metrics
                .observe_offset_gap(&p.topic, p.partition);
            let gap = SkippedGap {
                topic: p.topic.to_string(),
                partition: p.partition,
                expected,
                low,
                high,
                resumed_at: low,
                epoch,
            };
            if self.options.on_offset_gap == OffsetGapPolicy::Fail {
                return Err(gap.error(
                    "meterflow stops rather than skip or misread data; nothing was written for \
                     it. Restore the topic's data, run on a new output prefix, or skip the gap \
                     with --on-offset-gap skip-and-record",
                ));
            }
            found = true;
            if !self
                .found_gaps
                .iter()
                .any(|g| g.topic == gap.topic && g.partition == gap.partition)
            {
                self.found_gaps.push(gap);
            }
        }
        Ok(found)
    }

    /// Goes on after each found gap at its log's start, and records it (nothing may be
    /// buffered: a recreated log's offsets restart below what was read).
    fn apply_found_gaps(&mut self) -> Result<(), RunError> {
        for gap in std::mem::take(&mut self.found_gaps) {
            tracing::warn!(
                topic = %gap.topic,
                partition = gap.partition,
                expected = gap.expected,
                low = gap.low,
                high = gap.high,
                resumed_at = gap.resumed_at,
                why = gap.why(),
                "skipping an offset gap (--on-offset-gap skip-and-record); recorded in the checkpoint"
            );
            if let Some(index) = position(&self.partitions, &gap.topic, gap.partition) {
                let p = &mut self.partitions[index];
                p.next_offset = Some(gap.resumed_at);
                p.received_upto = Some(gap.resumed_at);
                // A new log to read, not a quiet one: it holds the watermark back until it
                // has been idle for the timeout itself, as a partition found at a start does.
                p.last_message = Instant::now();
            }
            self.unrecorded_gaps.push(gap.clone());
            self.offset_gaps.push(gap);
        }
        keep_last_gaps(&mut self.offset_gaps);
        self.unexplained_refusals = 0;
        self.reassign()
    }

    /// Records the intent of an epoch taking everything buffered (nothing, for a skipped
    /// gap's own epoch) and runs it; the next epoch.
    fn close_epoch(
        &mut self,
        epoch: u64,
        reason: CloseReason,
        end_of_input: bool,
    ) -> Result<u64, RunError> {
        tracing::info!(epoch, %reason, "closing epoch");
        let intent = self.intent(epoch, end_of_input);
        self.checkpoints_record(&intent)?;
        self.run_epoch(&intent)?;
        Ok(epoch + 1)
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
            settings: Some(self.settings()),
            offset_gaps: self.unrecorded_gaps.clone(),
        }
    }

    /// The settings of this run's flags.
    fn settings(&self) -> EpochSettings {
        let (state, sink) = (self.options.state, self.sink.options());
        EpochSettings {
            allowed_lateness: state.allowed_lateness,
            watermark_quorum: state.watermark_quorum,
            state_ttl: state.state_ttl,
            max_future: self.options.max_future,
            rows_per_file: sink.rows_per_file,
            zstd_level: sink.zstd_level,
            dead_letter_topic: self.dead_letters.topic().map(str::to_owned),
        }
    }

    /// Per range of `intent`, the index of its partition, found by topic and partition.
    fn paired(&self, intent: &Intent) -> Result<Vec<usize>, RunError> {
        intent
            .ranges
            .iter()
            .map(|range| {
                position(&self.partitions, &range.topic, range.partition).ok_or_else(|| {
                    RunError::IntentMismatch {
                        epoch: intent.epoch,
                        topic: range.topic.clone(),
                        partition: range.partition,
                    }
                })
            })
            .collect()
    }

    /// Whether the epoch's dead letters go to the topic (else to its file): where the
    /// recorded epoch sent them, which a replay must repeat.
    fn letters_to_topic(
        &self,
        intent: &Intent,
        settings: &EpochSettings,
    ) -> Result<bool, RunError> {
        match (&settings.dead_letter_topic, self.dead_letters.topic()) {
            (None, _) => Ok(false),
            (Some(recorded), Some(current)) if recorded == current => Ok(true),
            (Some(recorded), current) => Err(RunError::DeadLetterTopicChanged {
                epoch: intent.epoch,
                recorded: recorded.clone(),
                current: current
                    .map_or("to _dead_letter/ files".into(), |t| format!("to topic {t}")),
            }),
        }
    }

    /// Applies the intent's messages, writes the epoch's files, commits the checkpoint and
    /// the group offsets.
    fn run_epoch(&mut self, intent: &Intent) -> Result<(), RunError> {
        let started = Instant::now();
        let indices = self.paired(intent)?;
        // An intent of format 1 did not record its settings: this run's flags apply, and the
        // lateness saved in the state.
        let settings = intent.settings.clone().unwrap_or_else(|| self.settings());
        let to_topic = self.letters_to_topic(intent, &settings)?;
        if intent.settings.is_some() {
            self.processor.apply_settings(&settings.state());
        }
        let sink = if settings.sink() == self.sink.options() {
            Cow::Borrowed(self.sink)
        } else {
            Cow::Owned(ParquetSink::new(
                self.sink.location().clone(),
                settings.sink(),
            )?)
        };
        let messages = self.take_messages(intent, &indices);
        self.check_counts(intent, &indices, &messages)?;
        for (&index, &idle) in indices.iter().zip(&intent.idle) {
            self.processor.set_idle(index, idle);
        }
        let limits = Limits {
            latest_time: intent.processing_time.saturating_add(settings.max_future),
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
        let letters = if to_topic {
            self.dead_letters.take(&mut content.dead_letters)
        } else {
            Vec::new()
        };
        let files = encode_epoch(&sink, intent.epoch, content)?;
        let written = self
            .telemetry
            .readiness
            .store_call(|| self.runtime.block_on(sink.upload(files)))?;
        if to_topic {
            self.dead_letters.deliver(&letters)?;
        }
        self.processor.summary.add_written(&written);

        for (&index, range) in indices.iter().zip(&intent.ranges) {
            let p = &mut self.partitions[index];
            // An empty range moves nothing (its partition may have skipped a gap since).
            if range.end > range.start {
                p.next_offset = Some(range.end.max(p.next_offset.unwrap_or(range.end)));
            }
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
            offset_gaps: self.offset_gaps.clone(),
        };
        self.telemetry
            .readiness
            .store_call(|| self.runtime.block_on(self.checkpoints.commit(&checkpoint)))?;
        self.unrecorded_gaps.clear();
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
    fn take_messages(&mut self, intent: &Intent, indices: &[usize]) -> EpochMessages {
        let mut taken: Vec<(usize, Vec<Record>)> = Vec::with_capacity(indices.len());
        for (&index, range) in indices.iter().zip(&intent.ranges) {
            let p = &mut self.partitions[index];
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
            taken.push((index, drained.into_iter().skip(before).collect()));
        }
        let mut messages = EpochMessages::default();
        let longest = taken.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
        let mut iters: Vec<_> = taken
            .into_iter()
            .map(|(index, t)| (index, t.into_iter()))
            .collect();
        for _ in 0..longest {
            for (index, records) in iters.iter_mut() {
                if let Some(record) = records.next() {
                    messages.meta.push((*index, record.offset));
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
    fn check_counts(
        &self,
        intent: &Intent,
        indices: &[usize],
        messages: &EpochMessages,
    ) -> Result<(), RunError> {
        let mut by_partition = vec![0u64; self.partitions.len()];
        for &(index, _) in &messages.meta {
            by_partition[index] += 1;
        }
        for (range, &index) in intent.ranges.iter().zip(indices) {
            let found = by_partition[index];
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
