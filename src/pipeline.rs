//! The processing loop: decoded messages → deltas → epochs of rows and dead letters → sink.
//!
//! [`Processor`] is source-agnostic (file mode and Kafka mode drive the same one); [`transform`]
//! is the file-mode driver, three stages that overlap: a reader thread hands each block to the
//! rayon pool to decode (the expensive parsing uses every core); this thread applies decoded
//! messages in input order (the per-device logic stays sequential and deterministic); a
//! writer thread orders, encodes and uploads each finished epoch.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Instant;

use tokio::runtime::Handle;

use crate::deltas::{Deltas, EpochRows, Offer, Outcome, StateError, StateSettings};
use crate::reading::reason::Reason;
use crate::reading::{self, DecodedBlock, DecodedMessage, Limits};
use crate::sink::dead_letter::{DeadLetter, Detail, Origin, RecordText};
use crate::sink::{EncodedFile, EpochFiles, ParquetSink, SinkError};
use crate::source::files::{Block, BlockReader, Input, SourceError};
use crate::summary::Summary;

/// Errors that stop a run (bad records never do).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("the input reader thread could not start or stopped unexpectedly")]
    ReaderThread,
    #[error("the output writer thread could not start or stopped unexpectedly")]
    WriterThread,
}

/// Settings that decide rows; the same for every source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Lateness, watermark quorum and state TTL.
    pub state: StateSettings,
    /// Validation limits (the future-time guard), decided once per run.
    pub limits: Limits,
    /// An epoch ends at the first message boundary after this many readings.
    pub epoch_readings: u64,
}

/// The rows and dead letters of one epoch.
#[derive(Debug)]
pub struct EpochContent {
    /// The rows, to be grouped by UTC day and sorted by (device_id, time) by the writer.
    pub rows: EpochRows,
    pub dead_letters: Vec<DeadLetter>,
}

/// Applies decoded messages to the delta state, collecting the current epoch.
#[derive(Debug)]
pub struct Processor {
    deltas: Deltas,
    dead_letters: Vec<DeadLetter>,
    readings_in_epoch: u64,
    epoch_readings: u64,
    /// Counters so far; rows/files/bytes are added by whoever uploads the epoch.
    pub summary: Summary,
}

impl Processor {
    pub fn new(options: &PipelineOptions) -> Self {
        Processor {
            deltas: Deltas::with_settings(options.state),
            dead_letters: Vec::new(),
            readings_in_epoch: 0,
            epoch_readings: options.epoch_readings,
            summary: Summary::default(),
        }
    }

    /// Applies one decoded message of `partition`; `origin` names its source position for
    /// dead letters (called only when there is one).
    pub fn apply(
        &mut self,
        block: &DecodedBlock,
        message: &DecodedMessage,
        partition: usize,
        origin: impl Fn(u64) -> Origin,
    ) {
        let summary = &mut self.summary;
        let dead_letters = &mut self.dead_letters;
        summary.messages += 1;
        summary.readings += u64::from(message.measurement_count);
        self.readings_in_epoch += u64::from(message.measurement_count);
        for rejected in &block.rejected[message.rejected.clone()] {
            add_dead_letter(
                summary,
                dead_letters,
                DeadLetter {
                    reason: rejected.reason,
                    detail: Detail::Text(rejected.detail.clone()),
                    source: origin(message.position),
                    index: rejected.index,
                    record: rejected.record.as_str().into(),
                },
            );
        }
        let offers = offers(block, message);
        let device_ids = block.readings[message.readings.clone()]
            .iter()
            .map(|r| r.device_id);
        let first_late_letter = dead_letters.len();
        let mut refused = 0u64;
        self.deltas
            .apply_message_of(partition, device_ids, offers, |offer, outcome| {
                refused += 1;
                let (device_id, time) = (offer.device_id, offer.time);
                let (reason, detail) = match outcome {
                    Outcome::Accepted => return,
                    Outcome::Duplicate => {
                        summary.duplicates += 1;
                        return;
                    }
                    Outcome::ConflictingDuplicate { accepted_energy } => (
                        Reason::ConflictingDuplicate,
                        Detail::ConflictingDuplicate {
                            device_id,
                            time,
                            accepted_energy,
                        },
                    ),
                    Outcome::Late { last_emitted } => (
                        Reason::Late,
                        Detail::Late {
                            device_id,
                            time,
                            last_emitted,
                        },
                    ),
                    Outcome::BeyondTtl { horizon } => (
                        Reason::Late,
                        Detail::BeyondTtl {
                            device_id,
                            time,
                            horizon,
                        },
                    ),
                };
                add_dead_letter(
                    summary,
                    dead_letters,
                    DeadLetter {
                        reason,
                        detail,
                        source: origin(message.position),
                        index: Some(offer.index),
                        // Filled in below, from one split of the message for all of them.
                        record: RecordText::Owned(String::new()),
                    },
                );
            });
        let late_letters = &mut dead_letters[first_late_letter..];
        if !late_letters.is_empty() {
            let text = &block.bytes()[message.bytes.clone()];
            let elements = reading::ElementTexts::of(text);
            // Most of the message refused: share one copy of it; a few: copy their elements.
            let shared = (late_letters.len() * 2 >= message.readings.len())
                .then(|| std::str::from_utf8(text).ok().map(Arc::<str>::from))
                .flatten();
            for letter in late_letters {
                let Some(index) = letter.index else { continue };
                letter.record = match (&shared, elements.span(index)) {
                    (Some(message), Some(span)) => RecordText::Shared {
                        message: message.clone(),
                        start: span.start as u32,
                        end: span.end as u32,
                    },
                    _ => elements.get(index).unwrap_or_default().into(),
                };
            }
        }
        let offered = message.readings.len() as u64;
        summary.accepted += offered - refused;
    }

    /// Continues from per-device state saved in a checkpoint, with the run's totals so far.
    pub fn restore(
        options: &PipelineOptions,
        state: &[u8],
        summary: Summary,
    ) -> Result<Self, StateError> {
        Ok(Processor {
            deltas: Deltas::decode_state(state, &options.state)?,
            summary,
            ..Processor::new(options)
        })
    }

    /// The per-device state for a checkpoint (between epochs).
    pub fn encode_state(&self) -> Result<Vec<u8>, StateError> {
        self.deltas.encode_state()
    }

    /// Lateness, quorum and state TTL for what is applied from now on.
    pub fn apply_settings(&mut self, settings: &StateSettings) {
        self.deltas.apply_settings(settings);
    }

    /// Registers a partition that holds the watermark back until it delivers.
    pub fn add_partition(&mut self, partition: usize) {
        self.deltas.watermark_mut().add_partition(partition);
    }

    /// Marks a partition idle (it stops holding the watermark back) or active.
    pub fn set_idle(&mut self, partition: usize, idle: bool) {
        self.deltas.watermark_mut().set_idle(partition, idle);
    }

    /// Per partition, whether the state treats it as idle.
    pub fn idle_flags(&self) -> Vec<bool> {
        self.deltas.watermark().idle_flags()
    }

    /// Whether some reading still waits to be emitted.
    pub fn has_pending(&self) -> bool {
        self.deltas.has_pending()
    }

    /// Whether the current epoch has taken its share of readings.
    pub fn epoch_full(&self) -> bool {
        self.readings_in_epoch >= self.epoch_readings
    }

    /// Closes the current epoch: everything the watermark has passed (or everything, at the
    /// end of a finite input) is emitted into it.
    pub fn take_epoch(&mut self, end_of_input: bool) -> EpochContent {
        if end_of_input {
            self.deltas.flush();
        } else {
            self.deltas.emit_ready();
        }
        self.readings_in_epoch = 0;
        // Taking the rows ends the epoch (evictions, name compaction): counters after it.
        let rows = self.deltas.take_epoch_rows();
        self.summary.counter_resets = self.deltas.counters().counter_resets;
        self.summary.devices = self.deltas.device_count() as u64;
        self.summary.devices_evicted = self.deltas.counters().devices_evicted;
        EpochContent {
            rows,
            dead_letters: std::mem::take(&mut self.dead_letters),
        }
    }
}

/// Keeps a dead letter for the epoch and counts it by reason.
fn add_dead_letter(summary: &mut Summary, letters: &mut Vec<DeadLetter>, letter: DeadLetter) {
    summary.dead_letters[letter.reason.index()] += 1;
    letters.push(letter);
}

/// A decoded message's valid readings as offers to the state machine.
pub fn offers<'b>(
    block: &'b DecodedBlock,
    message: &DecodedMessage,
) -> impl Iterator<Item = Offer<'b>> + Clone + 'b {
    block.readings[message.readings.clone()]
        .iter()
        .map(|r| Offer {
            device_id: r.device_id,
            time: r.time,
            cumulative_energy: r.cumulative_energy,
            device_name: block.text(r.name),
            index: r.index,
        })
}

/// A decoded block and the input it came from.
struct DecodedInput {
    input: usize,
    block: DecodedBlock,
}

/// File mode: reads `inputs` in order as one partition and writes every epoch to `sink`.
/// `on_progress` is called with the counters after each block.
pub fn transform(
    inputs: Vec<Input>,
    sink: &ParquetSink,
    runtime: &Handle,
    options: &PipelineOptions,
    mut on_progress: impl FnMut(&Summary),
) -> Result<Summary, PipelineError> {
    let started = Instant::now();
    let names: Vec<Arc<str>> = inputs.iter().map(|input| Arc::from(input.name())).collect();
    // Deep enough (about 8 MiB of input) that decoding goes on while an epoch is handed to
    // the writer; deeper only adds memory to fault in (24 gave no speed, 60 MB more RSS).
    let (sender, receiver) = sync_channel(8);
    let limits = options.limits;
    let reader = std::thread::Builder::new()
        .name("meterflow-reader".into())
        .spawn(move || read_and_decode(inputs, limits, sender))
        .map_err(|_| PipelineError::ReaderThread)?;

    let mut processor = Processor::new(options);
    std::thread::scope(|scope| {
        let mut writer = EpochWriter::start(scope, sink, runtime)?;
        let mut epoch = 0u64;
        for decoding in receiver {
            let DecodedInput { input, block } =
                decoding?.recv().map_err(|_| PipelineError::ReaderThread)?;
            for message in &block.messages {
                processor.apply(&block, message, 0, |line| Origin::File {
                    file: names[input].clone(),
                    line,
                });
                if processor.epoch_full() {
                    writer.write(epoch, processor.take_epoch(false))?;
                    epoch += 1;
                }
            }
            on_progress(&processor.summary);
        }
        reader.join().map_err(|_| PipelineError::ReaderThread)?;
        writer.write(epoch, processor.take_epoch(true))?;
        let written = writer.finish()?;
        processor.summary.add_written(&written);
        Ok::<_, PipelineError>(())
    })?;
    processor.summary.elapsed = started.elapsed();
    Ok(processor.summary)
}

/// Encodes and uploads epochs on a thread of its own, so the next epoch's messages are
/// applied meanwhile. The hand-off is a rendezvous: an epoch is built while the previous one
/// is written, and none waits in between, so at most two epochs are in memory.
struct EpochWriter<'scope> {
    sender: Option<SyncSender<(u64, EpochContent)>>,
    thread: Option<ScopedJoinHandle<'scope, Result<EpochFiles, SinkError>>>,
}

impl<'scope> EpochWriter<'scope> {
    fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        sink: &'env ParquetSink,
        runtime: &'env Handle,
    ) -> Result<Self, PipelineError> {
        let (sender, receiver) = sync_channel::<(u64, EpochContent)>(0);
        let thread = std::thread::Builder::new()
            .name("meterflow-writer".into())
            .spawn_scoped(scope, move || {
                let mut written = EpochFiles::default();
                for (epoch, content) in receiver {
                    written.absorb(write_epoch(sink, runtime, epoch, content)?);
                }
                Ok(written)
            })
            .map_err(|_| PipelineError::WriterThread)?;
        Ok(EpochWriter {
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    /// Queues an epoch; if the writer has stopped, returns the error that stopped it.
    fn write(&mut self, epoch: u64, content: EpochContent) -> Result<(), PipelineError> {
        match &self.sender {
            Some(sender) if sender.send((epoch, content)).is_ok() => Ok(()),
            // The writer hangs up only when it failed: joining it tells why.
            _ => Err(self.join().err().unwrap_or(PipelineError::WriterThread)),
        }
    }

    /// Waits until every queued epoch is written.
    fn finish(mut self) -> Result<EpochFiles, PipelineError> {
        self.join()
    }

    fn join(&mut self) -> Result<EpochFiles, PipelineError> {
        self.sender = None;
        match self.thread.take().map(ScopedJoinHandle::join) {
            Some(Ok(result)) => Ok(result?),
            _ => Err(PipelineError::WriterThread),
        }
    }
}

/// Encodes an epoch and uploads its files.
pub fn write_epoch(
    sink: &ParquetSink,
    runtime: &Handle,
    epoch: u64,
    content: EpochContent,
) -> Result<EpochFiles, SinkError> {
    let _span = tracing::info_span!("epoch", epoch).entered();
    let started = Instant::now();
    let files = encode_epoch(sink, epoch, content)?;
    let encoded = started.elapsed();
    let written = runtime.block_on(sink.upload(files))?;
    tracing::info!(
        rows = written.rows,
        files = written.data_files.len(),
        bytes = written.bytes,
        encode_ms = encoded.as_millis() as u64,
        upload_ms = (started.elapsed() - encoded).as_millis() as u64,
        "epoch written"
    );
    Ok(written)
}

/// An epoch's Parquet and dead-letter files, encoded and ready to upload.
pub fn encode_epoch(
    sink: &ParquetSink,
    epoch: u64,
    content: EpochContent,
) -> Result<Vec<EncodedFile>, SinkError> {
    let days = content.rows.into_days();
    let mut files = sink.encode_epoch(epoch, days)?;
    files.extend(ParquetSink::encode_dead_letters(
        epoch,
        &content.dead_letters,
    ));
    Ok(files)
}

/// A block being decoded on the rayon pool; its result arrives on this receiver.
type Decoding = Receiver<DecodedInput>;

/// Reader thread: reads blocks in order and hands each to the rayon pool to decode, queueing
/// the pending results in input order, so reading, decoding and applying all overlap.
fn read_and_decode(
    inputs: Vec<Input>,
    limits: Limits,
    sender: SyncSender<Result<Decoding, SourceError>>,
) {
    let mut reader = BlockReader::new(inputs);
    loop {
        let block = match reader.next_block() {
            Ok(Some(block)) => block,
            Ok(None) => return,
            Err(error) => {
                let _ = sender.send(Err(error));
                return;
            }
        };
        let (done, decoding) = sync_channel(1);
        rayon::spawn(move || {
            let _ = done.send(decode_block(block, &limits));
        });
        if sender.send(Ok(decoding)).is_err() {
            return;
        }
    }
}

fn decode_block(block: Block, limits: &Limits) -> DecodedInput {
    let lines: Vec<_> = block.lines().collect();
    let mut decoded = DecodedBlock::new(block.bytes);
    // A reading takes about 100 bytes of JSON; reserving avoids regrowing the vector.
    decoded.readings.reserve(decoded.bytes().len() / 96);
    for (line, range) in lines {
        decoded.decode(range, line, limits);
    }
    DecodedInput {
        input: block.input,
        block: decoded,
    }
}
