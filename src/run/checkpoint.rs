//! Exactly-once bookkeeping in the output bucket (contract §4), under `PREFIX/_checkpoint/`.
//!
//! Per epoch, in this order: an [`Intent`] (the input ranges and every wall-clock decision
//! the epoch depends on) is created, the data files are written under deterministic names, then
//! a [`Checkpoint`] (next offsets, files, per-device state, totals) is created. Both are
//! created with a conditional put (`PutMode::Create`), so of two instances sharing a prefix only
//! one can own an epoch: the other gets [`CheckpointError::Fenced`] before it writes a file.
//!
//! A crash between intent and checkpoint leaves files that a restart rewrites byte for byte by
//! replaying the intent: the intent fixes the messages, their order and the clock, and
//! everything else is a pure function of them and the previous checkpoint's state.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::sink::layout::CHECKPOINT_DIR;
use crate::sink::store::Location;
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

/// Format of checkpoint objects (and of the per-device state inside them). Format 0 had no
/// version mark: a zstd frame of the postcard encoding.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// Format of intent objects. Format 0 had no `format` field.
pub const INTENT_FORMAT: u32 = 1;

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
        let latest = listed
            .iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                name.strip_prefix("checkpoint-")?
                    .strip_suffix(".bin")?
                    .parse::<u64>()
                    .ok()
            })
            .max();
        let Some(epoch) = latest else {
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

    /// The intent of `epoch`, if one was recorded.
    pub async fn intent(&self, epoch: u64) -> Result<Option<Intent>, CheckpointError> {
        let relative = intent_name(epoch);
        match self.get(&relative).await? {
            None => Ok(None),
            Some(bytes) => decode_intent(&relative, &bytes).map(Some),
        }
    }

    /// Records an epoch's intent; [`CheckpointError::Fenced`] if the epoch is taken.
    pub async fn record_intent(&self, intent: &Intent) -> Result<(), CheckpointError> {
        let versioned = Versioned {
            format: INTENT_FORMAT,
            body: intent,
        };
        let text = serde_json::to_vec_pretty(&versioned).map_err(|e| corrupt("intent", e))?;
        self.create(&intent_name(intent.epoch), intent.epoch, text)
            .await
    }

    /// Commits an epoch; [`CheckpointError::Fenced`] if another instance committed it first.
    /// Then removes what is older than the last [`KEEP_EPOCHS`] epochs.
    pub async fn commit(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let relative = checkpoint_name(checkpoint.epoch);
        let encoded = encode_checkpoint(checkpoint).map_err(|e| corrupt(&relative, e))?;
        self.create(&relative, checkpoint.epoch, encoded).await?;
        if let Some(old) = checkpoint.epoch.checked_sub(KEEP_EPOCHS) {
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

    async fn create(
        &self,
        relative: &str,
        epoch: u64,
        bytes: Vec<u8>,
    ) -> Result<(), CheckpointError> {
        let path = self.location.child(relative);
        let options = PutOptions::from(PutMode::Create);
        let put = self
            .location
            .store
            .put_opts(&path, PutPayload::from(Bytes::from(bytes)), options)
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Err(CheckpointError::Fenced {
                epoch,
                location: self.location.display.clone(),
            }),
            Err(source) => Err(CheckpointError::Store {
                path: path.to_string(),
                source,
            }),
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
    let encoded = postcard::to_stdvec(checkpoint).map_err(|e| e.to_string())?;
    let compressed = zstd::encode_all(&encoded[..], 3).map_err(|e| e.to_string())?;
    let mut bytes = Vec::with_capacity(8 + compressed.len());
    bytes.extend_from_slice(CHECKPOINT_MAGIC);
    bytes.extend_from_slice(&CHECKPOINT_FORMAT.to_le_bytes());
    bytes.extend_from_slice(&compressed);
    Ok(bytes)
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
    if found != CHECKPOINT_FORMAT {
        return Err(format_error(path, found, CHECKPOINT_FORMAT));
    }
    let decompressed = zstd::decode_all(&bytes[8..]).map_err(|e| corrupt(path, e))?;
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
    if format != INTENT_FORMAT {
        return Err(format_error(path, format, INTENT_FORMAT));
    }
    serde_json::from_slice(bytes).map_err(|e| corrupt(path, e))
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
        let again = store.record_intent(&intent(0)).await.unwrap_err();
        assert!(
            matches!(again, CheckpointError::Fenced { epoch: 0, .. }),
            "{again}"
        );
        store.commit(&checkpoint(0)).await.unwrap();
        let again = store.commit(&checkpoint(0)).await.unwrap_err();
        assert!(
            matches!(again, CheckpointError::Fenced { epoch: 0, .. }),
            "{again}"
        );
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
                    supported: 1,
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
}
