//! Exactly-once bookkeeping in the output bucket (contract §4), under `PREFIX/_checkpoint/`.
//!
//! Per epoch, in this order: an [`Intent`] (the input ranges and every wall-clock decision
//! the epoch depends on) is created, the data files are written under deterministic names, then
//! a [`Checkpoint`] (next offsets, files, per-device state, totals) is created. Both are
//! created with a conditional put (`PutMode::Create`), so of two instances sharing a prefix only
//! one can own an epoch: the other gets [`CheckpointError::Fenced`] before it writes a file.
//!
//! Pruning removes old intents and checkpoints, so a conditional put alone cannot fence an
//! instance that was paused for longer than [`KEEP_EPOCHS`] epochs: its create would succeed.
//! Every claim is therefore also checked against the newest checkpoint, before the create and
//! after it (an epoch at or below a committed one is [`CheckpointError::Behind`], and an object
//! created that late is removed again). The newest checkpoint is never pruned, so the check
//! holds whatever was pruned.
//!
//! A create the store reports as failed, or as already existing, is read back: holding this
//! instance's own bytes, it is this instance's write (a reply lost after the write succeeded,
//! and the client's retry found the object), not another instance's.
//!
//! A crash between intent and checkpoint leaves files that a restart rewrites byte for byte by
//! replaying the intent: the intent fixes the messages, their order and the clock, and
//! everything else is a pure function of them and the previous checkpoint's state.

use std::num::NonZeroUsize;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::deltas::StateSettings;
use crate::sink::layout::CHECKPOINT_DIR;
use crate::sink::store::Location;
use crate::sink::SinkOptions;
use crate::summary::Summary;

/// Errors reading or writing checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error(
        "epoch {epoch} in {location} was already claimed by another instance sharing this \
         checkpoint prefix; this instance stops so that only one writes"
    )]
    Fenced { epoch: u64, location: String },
    #[error(
        "epoch {epoch} in {location} is at or below epoch {committed}, which another instance \
         already committed: this instance was paused or cut off, and stops without writing"
    )]
    Behind {
        epoch: u64,
        committed: u64,
        location: String,
    },
    #[error(
        "the object store at {location} does not enforce conditional creates (If-None-Match): \
         a second create of {probe} succeeded, so two instances could both commit an epoch; \
         run on a store that refuses it (AWS S3, MinIO)"
    )]
    ConditionalPutIgnored { location: String, probe: String },
    #[error("cannot read or write checkpoint object {path}")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("checkpoint object {path} is not readable: {why}")]
    Corrupt { path: String, why: String },
    #[error(
        "checkpoint object {path} is in format {found}, and this meterflow reads format \
         {supported}: it was written by {by} meterflow, which must keep running this prefix; \
         or start this one on a new output prefix (its devices then start without history)"
    )]
    Format {
        path: String,
        found: u32,
        supported: u32,
        by: &'static str,
    },
}

impl CheckpointError {
    /// Another instance owns the epoch or a later one: this instance must stop writing.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            CheckpointError::Fenced { .. } | CheckpointError::Behind { .. }
        )
    }
}

/// Format of checkpoint objects (and of the per-device state inside them). Format 0 had no
/// version mark: a zstd frame of the postcard encoding. Format 1 had no `offset_gaps`, and is
/// still read.
pub const CHECKPOINT_FORMAT: u32 = 2;

/// The oldest checkpoint format still read.
const OLDEST_CHECKPOINT_FORMAT: u32 = 1;

/// Format of intent objects written. Format 0 had no `format` field; format 1 had no
/// `settings`, and is still read (its replay takes the settings from the flags); format 2 had
/// no `offset_gaps`.
pub const INTENT_FORMAT: u32 = 3;

/// The oldest intent format still read.
const OLDEST_INTENT_FORMAT: u32 = 1;

/// First bytes of a versioned checkpoint object, followed by the format (u32, little endian)
/// and the zstd-compressed postcard encoding.
const CHECKPOINT_MAGIC: &[u8; 4] = b"MFCK";

/// One partition's messages of an epoch: offsets `start..end` (end exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRange {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
    /// Messages the epoch took from the range (fewer than `end - start` where the broker has
    /// gaps, e.g. compaction or transaction markers); a replay must find the same number.
    pub messages: u64,
}

/// What an epoch will consume and the wall-clock decisions it depends on, recorded before any
/// of its files is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub epoch: u64,
    /// Per partition (in the checkpoint's partition order), the offsets read; empty ranges
    /// included.
    pub ranges: Vec<PartitionRange>,
    /// Processing time for the future-time guard, UTC µs.
    pub processing_time: i64,
    /// Per partition, whether it was idle (not holding the watermark back) for this epoch.
    pub idle: Vec<bool>,
    /// The stream was drained (tests, backfills): every waiting reading is emitted.
    pub end_of_input: bool,
    /// The settings the epoch was processed with; `None` in an intent of format 1.
    #[serde(default)]
    pub settings: Option<EpochSettings>,
    /// Offset gaps skipped (`--on-offset-gap skip-and-record`) since the previous checkpoint:
    /// a replay repositions those partitions first, as the recorded epoch did.
    #[serde(default)]
    pub offset_gaps: Vec<SkippedGap>,
}

/// Offsets a partition lost that the service skipped by the operator's choice
/// (`--on-offset-gap skip-and-record`), recorded in the intent and the checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedGap {
    pub topic: String,
    pub partition: i32,
    /// The next offset the service was to read.
    pub expected: i64,
    /// The partition's log when the gap was found: offsets `low..high`.
    pub low: i64,
    pub high: i64,
    /// Where reading went on (the log's start).
    pub resumed_at: i64,
    /// The epoch whose checkpoint first records the gap: one without messages committed
    /// as soon as the gap is skipped, or the replayed epoch when it was found at a restart.
    pub epoch: u64,
}

/// Every setting an epoch's bytes depend on besides its messages and its clock, recorded in
/// its intent so that a replay writes the same bytes whatever the flags are on the restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochSettings {
    /// `--allowed-lateness`, µs.
    pub allowed_lateness: i64,
    /// `--watermark-quorum`.
    pub watermark_quorum: usize,
    /// `--state-ttl`, µs.
    pub state_ttl: Option<i64>,
    /// `--max-future`, µs.
    pub max_future: i64,
    /// `--rows-per-file`.
    pub rows_per_file: NonZeroUsize,
    /// `--zstd-level`.
    pub zstd_level: i32,
    /// `--dead-letter-topic`; `None` writes the epoch's `_dead_letter/` file.
    pub dead_letter_topic: Option<String>,
}

impl EpochSettings {
    /// The settings of the per-device state.
    pub fn state(&self) -> StateSettings {
        StateSettings {
            allowed_lateness: self.allowed_lateness,
            watermark_quorum: self.watermark_quorum,
            state_ttl: self.state_ttl,
        }
    }

    /// The settings of the Parquet files.
    pub fn sink(&self) -> SinkOptions {
        SinkOptions {
            rows_per_file: self.rows_per_file,
            zstd_level: self.zstd_level,
        }
    }

    /// The settings that differ from `earlier`, as `flag: earlier → self`.
    pub fn changes_since(&self, earlier: &EpochSettings) -> Vec<String> {
        let mut changes = Vec::new();
        let mut note = |flag: &str, before: String, now: String| {
            if before != now {
                changes.push(format!("{flag}: {before} → {now}"));
            }
        };
        note(
            "--allowed-lateness (µs)",
            earlier.allowed_lateness.to_string(),
            self.allowed_lateness.to_string(),
        );
        note(
            "--watermark-quorum",
            earlier.watermark_quorum.to_string(),
            self.watermark_quorum.to_string(),
        );
        note(
            "--state-ttl (µs)",
            format!("{:?}", earlier.state_ttl),
            format!("{:?}", self.state_ttl),
        );
        note(
            "--max-future (µs)",
            earlier.max_future.to_string(),
            self.max_future.to_string(),
        );
        note(
            "--rows-per-file",
            earlier.rows_per_file.to_string(),
            self.rows_per_file.to_string(),
        );
        note(
            "--zstd-level",
            earlier.zstd_level.to_string(),
            self.zstd_level.to_string(),
        );
        note(
            "--dead-letter-topic",
            format!("{:?}", earlier.dead_letter_topic),
            format!("{:?}", self.dead_letter_topic),
        );
        changes
    }
}

/// The committed state after an epoch: the source of truth on restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub epoch: u64,
    /// Every partition ever read, as (topic, partition); the index is the watermark's
    /// partition number.
    pub partitions: Vec<(String, i32)>,
    /// Per partition, the next offset to read.
    pub next_offsets: Vec<i64>,
    /// Data files this epoch wrote (relative paths).
    pub files: Vec<String>,
    /// Counters since the first epoch, so metrics and summaries survive restarts.
    pub totals: Summary,
    /// The per-device state (`Deltas::encode_state`).
    pub state: Vec<u8>,
    /// Every offset gap skipped on this prefix, oldest first (the last
    /// [`MAX_RECORDED_GAPS`]): what the output lacks, for an audit.
    pub offset_gaps: Vec<SkippedGap>,
}

/// Skipped gaps a checkpoint keeps; older ones stay in the logs and the metric only.
pub const MAX_RECORDED_GAPS: usize = 1000;

/// A checkpoint of format 1 (no `offset_gaps`), read and converted.
#[derive(Deserialize)]
struct CheckpointFormat1 {
    epoch: u64,
    partitions: Vec<(String, i32)>,
    next_offsets: Vec<i64>,
    files: Vec<String>,
    totals: Summary,
    state: Vec<u8>,
}

impl From<CheckpointFormat1> for Checkpoint {
    fn from(old: CheckpointFormat1) -> Self {
        Checkpoint {
            epoch: old.epoch,
            partitions: old.partitions,
            next_offsets: old.next_offsets,
            files: old.files,
            totals: old.totals,
            state: old.state,
            offset_gaps: Vec::new(),
        }
    }
}

/// Checkpoints and intents of one output location.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    location: Location,
}

/// How many committed epochs stay in the bucket; older intents and checkpoints are removed.
const KEEP_EPOCHS: u64 = 3;

fn intent_name(epoch: u64) -> String {
    format!("{CHECKPOINT_DIR}/intent-{epoch:020}.json")
}

fn checkpoint_name(epoch: u64) -> String {
    format!("{CHECKPOINT_DIR}/checkpoint-{epoch:020}.bin")
}

impl CheckpointStore {
    pub fn new(location: Location) -> Self {
        CheckpointStore { location }
    }

    /// The checkpoint with the highest epoch, if any.
    pub async fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let Some(epoch) = self.latest_epoch().await? else {
            return Ok(None);
        };
        let relative = checkpoint_name(epoch);
        let bytes = self
            .get(&relative)
            .await?
            .ok_or_else(|| corrupt(&relative, "vanished"))?;
        let checkpoint = decode_checkpoint(&relative, &bytes)?;
        if checkpoint.epoch != epoch {
            return Err(corrupt(&relative, "epoch does not match the name"));
        }
        Ok(Some(checkpoint))
    }

    /// The highest committed epoch, from a listing of the checkpoint directory.
    pub async fn latest_epoch(&self) -> Result<Option<u64>, CheckpointError> {
        let directory = self.location.child(CHECKPOINT_DIR);
        let listed: Vec<_> = self
            .location
            .store
            .list(Some(&directory))
            .try_collect()
            .await
            .map_err(|source| CheckpointError::Store {
                path: directory.to_string(),
                source,
            })?;
        Ok(listed
            .iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                name.strip_prefix("checkpoint-")?
                    .strip_suffix(".bin")?
                    .parse::<u64>()
                    .ok()
            })
            .max())
    }

    /// The intent of `epoch`, if one was recorded.
    pub async fn intent(&self, epoch: u64) -> Result<Option<Intent>, CheckpointError> {
        let relative = intent_name(epoch);
        match self.get(&relative).await? {
            None => Ok(None),
            Some(bytes) => decode_intent(&relative, &bytes).map(Some),
        }
    }

    /// Records an epoch's intent: [`CheckpointError::Fenced`] if another instance claimed
    /// the epoch, [`CheckpointError::Behind`] if one already committed it or a later one.
    pub async fn record_intent(&self, intent: &Intent) -> Result<(), CheckpointError> {
        let versioned = Versioned {
            format: INTENT_FORMAT,
            body: intent,
        };
        let text = serde_json::to_vec_pretty(&versioned).map_err(|e| corrupt("intent", e))?;
        let relative = intent_name(intent.epoch);
        self.refuse_committed(intent.epoch, intent.epoch).await?;
        self.create(&relative, intent.epoch, text.into()).await?;
        self.withdraw_if_committed(&relative, intent.epoch, intent.epoch)
            .await
    }

    /// Commits an epoch: [`CheckpointError::Fenced`] if another instance committed it first
    /// with other bytes, [`CheckpointError::Behind`] if a later epoch is committed. Then
    /// removes what is older than the last [`KEEP_EPOCHS`] epochs.
    pub async fn commit(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let epoch = checkpoint.epoch;
        let relative = checkpoint_name(epoch);
        let encoded = encode_checkpoint(checkpoint).map_err(|e| corrupt(&relative, e))?;
        self.refuse_committed(epoch, epoch).await?;
        self.create(&relative, epoch, encoded.into()).await?;
        self.withdraw_if_committed(&relative, epoch, epoch + 1)
            .await?;
        if let Some(old) = epoch.checked_sub(KEEP_EPOCHS) {
            for name in [intent_name(old), checkpoint_name(old)] {
                // Best effort: a leftover old object is harmless, `latest` takes the newest.
                let _ = self
                    .location
                    .store
                    .delete(&self.location.child(&name))
                    .await;
            }
        }
        Ok(())
    }

    /// Refuses to start the protocol on a store that does not enforce conditional creates:
    /// creates a probe object twice (the second must be refused), then removes it.
    pub async fn verify_conditional_create(&self) -> Result<(), CheckpointError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let relative = format!("{CHECKPOINT_DIR}/probe-{nanos}-{}", std::process::id());
        let path = self.location.child(&relative);
        // The first create reads back an ambiguous failure like any other create.
        self.create(&relative, 0, Bytes::from_static(b"probe"))
            .await?;
        let second = self
            .put_if_absent(&path, Bytes::from_static(b"probe"))
            .await;
        let _ = self.location.store.delete(&path).await;
        match second {
            Ok(false) => Ok(()),
            Ok(true) => Err(CheckpointError::ConditionalPutIgnored {
                location: self.location.display.clone(),
                probe: relative,
            }),
            Err(source) => Err(CheckpointError::Store {
                path: path.to_string(),
                source,
            }),
        }
    }

    /// [`CheckpointError::Behind`] if an epoch at or above `from` is committed.
    async fn refuse_committed(&self, epoch: u64, from: u64) -> Result<(), CheckpointError> {
        match self.latest_epoch().await? {
            Some(committed) if committed >= from => Err(CheckpointError::Behind {
                epoch,
                committed,
                location: self.location.display.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// After this instance created `relative`: if an epoch at or above `from` is committed,
    /// the create came too late (its fence had been pruned), so the object is removed again.
    async fn withdraw_if_committed(
        &self,
        relative: &str,
        epoch: u64,
        from: u64,
    ) -> Result<(), CheckpointError> {
        match self.refuse_committed(epoch, from).await {
            // Only a proven late create is withdrawn: after a failed listing the object may
            // be a live claim another instance is already replaying.
            Err(late @ CheckpointError::Behind { .. }) => {
                tracing::warn!(
                    epoch,
                    object = relative,
                    "created after a later epoch was committed; removing it"
                );
                let _ = self
                    .location
                    .store
                    .delete(&self.location.child(relative))
                    .await;
                Err(late)
            }
            other => other,
        }
    }

    /// Creates an object unless it exists. When the store reports a conflict or an error,
    /// the object is read back: holding these very bytes it is this instance's own write.
    async fn create(
        &self,
        relative: &str,
        epoch: u64,
        bytes: Bytes,
    ) -> Result<(), CheckpointError> {
        let path = self.location.child(relative);
        let conflict = match self.put_if_absent(&path, bytes.clone()).await {
            Ok(true) => return Ok(()),
            Ok(false) => None,
            Err(source) => Some(source),
        };
        let fenced = || CheckpointError::Fenced {
            epoch,
            location: self.location.display.clone(),
        };
        match (self.get(relative).await, conflict) {
            (Ok(Some(stored)), _) if stored == bytes => {
                tracing::warn!(
                    object = relative,
                    "the store reported a failed create, but the object holds this instance's \
                     bytes: the write succeeded"
                );
                Ok(())
            }
            (Ok(Some(_)), _) | (_, None) => Err(fenced()),
            (_, Some(source)) => Err(CheckpointError::Store {
                path: path.to_string(),
                source,
            }),
        }
    }

    /// A put that never overwrites: whether it created the object (false: it exists).
    async fn put_if_absent(&self, path: &Path, bytes: Bytes) -> Result<bool, object_store::Error> {
        let options = PutOptions::from(PutMode::Create);
        match self
            .location
            .store
            .put_opts(path, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(source) => Err(source),
        }
    }

    async fn get(&self, relative: &str) -> Result<Option<Bytes>, CheckpointError> {
        let path = self.location.child(relative);
        let fail = |source| CheckpointError::Store {
            path: path.to_string(),
            source,
        };
        match self.location.store.get(&path).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(fail)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(fail(source)),
        }
    }
}

/// A checkpoint object's bytes: magic, format, zstd-compressed postcard.
pub fn encode_checkpoint(checkpoint: &Checkpoint) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(CHECKPOINT_MAGIC);
    bytes.extend_from_slice(&CHECKPOINT_FORMAT.to_le_bytes());
    // Streamed into the compressor: the state (most of the checkpoint: hundreds of MB for
    // millions of devices) is not copied once more uncompressed.
    let encoder = zstd::Encoder::new(bytes, 3).map_err(|e| e.to_string())?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, encoder);
    postcard::to_io(checkpoint, &mut writer).map_err(|e| e.to_string())?;
    let encoder = writer.into_inner().map_err(|e| e.to_string())?;
    encoder.finish().map_err(|e| e.to_string())
}

/// Reads a checkpoint object; an object of another format is refused as such, never as
/// corrupt.
pub fn decode_checkpoint(path: &str, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
    let found = match bytes {
        [m0, m1, m2, m3, f0, f1, f2, f3, ..] if [*m0, *m1, *m2, *m3] == *CHECKPOINT_MAGIC => {
            u32::from_le_bytes([*f0, *f1, *f2, *f3])
        }
        [z0, z1, z2, z3, ..] if [*z0, *z1, *z2, *z3] == ZSTD_MAGIC => 0,
        _ => return Err(corrupt(path, "not a meterflow checkpoint")),
    };
    if !(OLDEST_CHECKPOINT_FORMAT..=CHECKPOINT_FORMAT).contains(&found) {
        return Err(format_error(path, found, CHECKPOINT_FORMAT));
    }
    let decompressed = zstd::decode_all(&bytes[8..]).map_err(|e| corrupt(path, e))?;
    if found == 1 {
        let old: CheckpointFormat1 =
            postcard::from_bytes(&decompressed).map_err(|e| corrupt(path, e))?;
        return Ok(old.into());
    }
    postcard::from_bytes(&decompressed).map_err(|e| corrupt(path, e))
}

/// An intent object as stored: its format beside its fields.
#[derive(Serialize)]
struct Versioned<'a, T> {
    format: u32,
    #[serde(flatten)]
    body: &'a T,
}

/// Just the format of a stored intent (absent in format 0).
#[derive(Deserialize)]
struct FormatOnly {
    #[serde(default)]
    format: u32,
}

fn decode_intent(path: &str, bytes: &[u8]) -> Result<Intent, CheckpointError> {
    let FormatOnly { format } = serde_json::from_slice(bytes).map_err(|e| corrupt(path, e))?;
    if !(OLDEST_INTENT_FORMAT..=INTENT_FORMAT).contains(&format) {
        return Err(format_error(path, format, INTENT_FORMAT));
    }
    let intent: Intent = serde_json::from_slice(bytes).map_err(|e| corrupt(path, e))?;
    if format >= 2 && intent.settings.is_none() {
        return Err(corrupt(path, "settings missing"));
    }
    Ok(intent)
}

fn format_error(path: &str, found: u32, supported: u32) -> CheckpointError {
    CheckpointError::Format {
        path: path.into(),
        found,
        supported,
        by: if found < supported {
            "an older"
        } else {
            "a newer"
        },
    }
}

fn corrupt(path: &str, why: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.into(),
        why: why.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::store::{self, StoreOptions};

    fn local() -> (tempfile::TempDir, CheckpointStore) {
        let dir = tempfile::tempdir().unwrap();
        let location = store::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
        (dir, CheckpointStore::new(location))
    }

    fn checkpoint(epoch: u64) -> Checkpoint {
        let mut totals = Summary {
            messages: epoch,
            ..Summary::default()
        };
        totals.dead_letters[..2].copy_from_slice(&[1, 2]);
        Checkpoint {
            epoch,
            partitions: vec![("meter-readings".into(), 0), ("meter-readings".into(), 1)],
            next_offsets: vec![10 * epoch as i64, 7],
            files: vec![format!("date=2022-07-11/part-{epoch:08}-0000.parquet")],
            totals,
            state: vec![1, 2, 3, epoch as u8],
            offset_gaps: vec![SkippedGap {
                topic: "meter-readings".into(),
                partition: 1,
                expected: 9,
                low: 0,
                high: 3,
                resumed_at: 0,
                epoch: 1,
            }],
        }
    }

    fn intent(epoch: u64) -> Intent {
        Intent {
            epoch,
            ranges: vec![PartitionRange {
                topic: "t".into(),
                partition: 0,
                start: 0,
                end: 5,
                messages: 5,
            }],
            processing_time: 1_700_000_000_000_000,
            idle: vec![false],
            end_of_input: false,
            settings: Some(EpochSettings {
                allowed_lateness: 600_000_000,
                watermark_quorum: 3,
                state_ttl: None,
                max_future: 86_400_000_000,
                rows_per_file: NonZeroUsize::new(1000).unwrap(),
                zstd_level: 1,
                dead_letter_topic: None,
            }),
            offset_gaps: Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_latest_commit_is_read_back_and_old_epochs_are_pruned() {
        let (dir, store) = local();
        assert_eq!(store.latest().await.unwrap(), None);
        for epoch in 0..6 {
            store.record_intent(&intent(epoch)).await.unwrap();
            store.commit(&checkpoint(epoch)).await.unwrap();
        }
        assert_eq!(store.latest().await.unwrap(), Some(checkpoint(5)));
        assert_eq!(store.intent(5).await.unwrap(), Some(intent(5)));
        assert_eq!(store.intent(6).await.unwrap(), None);
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join(CHECKPOINT_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 6, "three epochs kept: {names:?}");
        assert!(names[0].ends_with("00003.bin"), "{names:?}");
    }

    #[tokio::test]
    async fn a_second_claim_on_an_epoch_is_fenced() {
        let (_dir, store) = local();
        store.record_intent(&intent(0)).await.unwrap();
        let other = Intent {
            processing_time: intent(0).processing_time + 1,
            ..intent(0)
        };
        let again = store.record_intent(&other).await.unwrap_err();
        assert!(
            matches!(again, CheckpointError::Fenced { epoch: 0, .. }),
            "{again}"
        );
        // The same bytes again are this instance's own write (a retry after a lost reply).
        store.record_intent(&intent(0)).await.unwrap();
        store.commit(&checkpoint(0)).await.unwrap();
        let again = store.commit(&checkpoint(0)).await.unwrap_err();
        assert!(
            matches!(
                again,
                CheckpointError::Behind {
                    epoch: 0,
                    committed: 0,
                    ..
                }
            ),
            "{again}"
        );
    }

    #[tokio::test]
    async fn an_epoch_whose_objects_were_pruned_cannot_be_claimed_again() {
        let (dir, store) = local();
        for epoch in 0..7 {
            store.record_intent(&intent(epoch)).await.unwrap();
            store.commit(&checkpoint(epoch)).await.unwrap();
        }
        let names = || {
            let mut names: Vec<_> = std::fs::read_dir(dir.path().join(CHECKPOINT_DIR))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        let before = names();
        assert!(!before.iter().any(|n| n.contains("00001.")), "{before:?}");
        for epoch in [1, 3, 6] {
            let error = store.record_intent(&intent(epoch)).await.unwrap_err();
            assert!(
                matches!(error, CheckpointError::Behind { committed: 6, .. }),
                "{error}"
            );
            let error = store.commit(&checkpoint(epoch)).await.unwrap_err();
            assert!(
                matches!(error, CheckpointError::Behind { committed: 6, .. }),
                "{error}"
            );
        }
        assert_eq!(names(), before, "nothing created");
        store.verify_conditional_create().await.unwrap();
        assert_eq!(names(), before, "the probe leaves nothing behind");
    }

    #[tokio::test]
    async fn a_damaged_checkpoint_is_an_error_not_a_fresh_start() {
        let (dir, store) = local();
        let directory = dir.path().join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&directory).unwrap();
        std::fs::write(
            directory.join("checkpoint-00000000000000000004.bin"),
            b"garbage",
        )
        .unwrap();
        let error = store.latest().await.unwrap_err();
        assert!(matches!(error, CheckpointError::Corrupt { .. }), "{error}");
    }

    #[tokio::test]
    async fn objects_of_another_format_are_refused_by_format_not_as_corrupt() {
        let (dir, store) = local();
        let directory = dir.path().join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&directory).unwrap();
        // Format 0: the postcard encoding in a bare zstd frame, no version mark.
        let unversioned = zstd::encode_all(&postcard::to_stdvec(&checkpoint(4)).unwrap()[..], 3);
        let path = directory.join("checkpoint-00000000000000000004.bin");
        std::fs::write(&path, unversioned.unwrap()).unwrap();
        let error = store.latest().await.unwrap_err();
        assert!(
            matches!(
                error,
                CheckpointError::Format {
                    found: 0,
                    supported: CHECKPOINT_FORMAT,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("an older meterflow"), "{error}");
        // A newer format.
        let mut newer = encode_checkpoint(&checkpoint(4)).unwrap();
        newer[4..8].copy_from_slice(&(CHECKPOINT_FORMAT + 1).to_le_bytes());
        std::fs::write(&path, newer).unwrap();
        let error = store.latest().await.unwrap_err();
        assert!(error.to_string().contains("a newer meterflow"), "{error}");
        // An intent without a format field.
        let old_intent = serde_json::to_vec(&intent(7)).unwrap();
        std::fs::write(
            directory.join("intent-00000000000000000007.json"),
            old_intent,
        )
        .unwrap();
        let error = store.intent(7).await.unwrap_err();
        assert!(
            matches!(error, CheckpointError::Format { found: 0, .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_intent_of_format_1_is_read_without_settings_and_format_2_needs_them() {
        let (dir, store) = local();
        let directory = dir.path().join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&directory).unwrap();
        let format_1 = r#"{"format": 1, "epoch": 3, "ranges": [{"topic": "t", "partition": 0,
            "start": 0, "end": 5, "messages": 5}], "processing_time": 1700000000000000,
            "idle": [false], "end_of_input": false}"#;
        std::fs::write(directory.join("intent-00000000000000000003.json"), format_1).unwrap();
        let read = store.intent(3).await.unwrap().unwrap();
        assert_eq!(
            read,
            Intent {
                settings: None,
                ..intent(3)
            }
        );
        let format_2 = format_1.replace(r#""format": 1"#, r#""format": 2"#);
        std::fs::write(directory.join("intent-00000000000000000004.json"), format_2).unwrap();
        let error = store.intent(4).await.unwrap_err();
        assert!(matches!(error, CheckpointError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn changed_settings_are_named_by_their_flags() {
        let before = intent(0).settings.unwrap();
        assert!(before.changes_since(&before).is_empty());
        let after = EpochSettings {
            rows_per_file: NonZeroUsize::new(50).unwrap(),
            dead_letter_topic: Some("letters".into()),
            ..before.clone()
        };
        assert_eq!(
            after.changes_since(&before),
            vec![
                "--rows-per-file: 1000 → 50".to_string(),
                "--dead-letter-topic: None → Some(\"letters\")".to_string(),
            ]
        );
    }
}
