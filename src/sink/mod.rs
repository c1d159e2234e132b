//! Writing an epoch's rows as Parquet (and its dead letters as JSON lines) to a [`Location`].
//!
//! Encoding is CPU work done in parallel per file with rayon; uploading is I/O done with
//! `object_store`. Each object is written with one `put`, which is atomic on S3 and on the local
//! file system (temp file + rename): a reader never sees a half-written file.

pub mod dead_letter;
pub mod layout;
pub mod schema;
pub mod store;

use std::num::NonZeroUsize;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_writer::compute_leaves;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use rayon::prelude::*;

use crate::deltas::DayRows;
use crate::sink::dead_letter::DeadLetter;
use crate::sink::store::Location;

/// Errors writing output; all are operational (the run cannot continue).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    #[error("cannot encode Parquet for {path}")]
    Encode {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("cannot write {path}")]
    Write {
        path: Path,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot list {location}")]
    List {
        location: String,
        #[source]
        source: object_store::Error,
    },
}

/// How files are cut and encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkOptions {
    /// A date's rows in one epoch are split into files of at most this many rows.
    pub rows_per_file: NonZeroUsize,
    /// zstd level: 1 is several times faster to write than 9 for a few percent in size.
    pub zstd_level: i32,
}

impl SinkOptions {
    /// The `--rows-per-file` default.
    pub const DEFAULT_ROWS_PER_FILE: NonZeroUsize = match NonZeroUsize::new(1_000_000) {
        Some(rows) => rows,
        None => NonZeroUsize::MIN,
    };
    /// The `--zstd-level` default.
    pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
}

/// The flags' defaults.
impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            rows_per_file: Self::DEFAULT_ROWS_PER_FILE,
            zstd_level: Self::DEFAULT_ZSTD_LEVEL,
        }
    }
}

/// An encoded object, ready to upload.
#[derive(Debug, Clone)]
pub struct EncodedFile {
    /// Path relative to the location's prefix.
    pub relative: String,
    pub bytes: Bytes,
    pub rows: usize,
}

/// Objects uploaded for one epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochFiles {
    pub data_files: Vec<String>,
    pub rows: usize,
    pub bytes: usize,
}

impl EpochFiles {
    /// Adds what another epoch wrote.
    pub fn absorb(&mut self, other: EpochFiles) {
        self.data_files.extend(other.data_files);
        self.rows += other.rows;
        self.bytes += other.bytes;
    }
}

/// Parquet writer over one output location.
#[derive(Debug, Clone)]
pub struct ParquetSink {
    location: Location,
    options: SinkOptions,
    properties: WriterProperties,
}

impl ParquetSink {
    pub fn new(location: Location, options: SinkOptions) -> Result<Self, SinkError> {
        let zstd = ZstdLevel::try_new(options.zstd_level).map_err(|source| SinkError::Encode {
            path: "(writer properties)".into(),
            source,
        })?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(zstd))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(options.rows_per_file.get()))
            // Readers may use the declared order (device_id, time) to skip sorting.
            .set_sorting_columns(Some(vec![
                SortingColumn {
                    column_idx: 0,
                    descending: false,
                    nulls_first: false,
                },
                SortingColumn {
                    column_idx: 2,
                    descending: false,
                    nulls_first: false,
                },
            ]))
            .build();
        Ok(ParquetSink {
            location,
            options,
            properties,
        })
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn options(&self) -> SinkOptions {
        self.options
    }

    /// Encodes an epoch's rows (already grouped by day and sorted by (device_id, time)) as
    /// one Parquet file per day and `rows_per_file` rows, in parallel.
    pub fn encode_epoch(
        &self,
        epoch: u64,
        days: Vec<DayRows>,
    ) -> Result<Vec<EncodedFile>, SinkError> {
        let mut plan = Vec::new();
        for rows in days {
            let day = rows.day;
            let whole = schema::to_record_batch(rows).map_err(|e| SinkError::Encode {
                path: layout::data_file(day, epoch, 0),
                source: e.into(),
            })?;
            let per_file = self.options.rows_per_file.get();
            for (writer, offset) in (0..whole.num_rows()).step_by(per_file).enumerate() {
                let part = whole.slice(offset, per_file.min(whole.num_rows() - offset));
                plan.push((layout::data_file(day, epoch, writer), part));
            }
        }
        plan.into_par_iter()
            .map(|(relative, part)| self.encode(relative, &part))
            .collect()
    }

    fn encode(&self, relative: String, part: &RecordBatch) -> Result<EncodedFile, SinkError> {
        let fail = |source| SinkError::Encode {
            path: relative.clone(),
            source,
        };
        let mut buffer = Vec::with_capacity(part.num_rows() * 4);
        let schema = schema::schema();
        let writer =
            ArrowWriter::try_new(&mut buffer, schema.clone(), Some(self.properties.clone()))
                .map_err(fail)?;
        // The file is one row group whose five columns are encoded in parallel: an epoch of
        // one day is one file, and encoding it column after column left a core idle.
        let (mut file, row_groups) = writer.into_serialized_writer().map_err(fail)?;
        let chunks = row_groups
            .create_column_writers(0)
            .map_err(fail)?
            .into_par_iter()
            .zip(schema.fields().par_iter().zip(part.columns()))
            .map(|(mut writer, (field, column))| {
                for leaf in compute_leaves(field, column)? {
                    writer.write(&leaf)?;
                }
                writer.close()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        let mut row_group = file.next_row_group().map_err(fail)?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut row_group).map_err(fail)?;
        }
        row_group.close().map_err(fail)?;
        file.close().map_err(fail)?;
        Ok(EncodedFile {
            relative,
            bytes: Bytes::from(buffer),
            rows: part.num_rows(),
        })
    }

    /// The dead-letter file of an epoch, if it has any.
    pub fn encode_dead_letters(epoch: u64, letters: &[DeadLetter]) -> Option<EncodedFile> {
        if letters.is_empty() {
            return None;
        }
        // Sized once (a record plus about 200 bytes of fields and escapes a line): growing a
        // buffer of a message refused in full copied it several times over.
        let mut text =
            Vec::with_capacity(letters.iter().map(|l| l.record.as_str().len() + 200).sum());
        for letter in letters {
            letter.write_json_line(&mut text);
        }
        Some(EncodedFile {
            relative: layout::dead_letter_file(epoch),
            bytes: Bytes::from(text),
            rows: letters.len(),
        })
    }

    /// Uploads encoded files, a few at a time; returns what was written.
    pub async fn upload(&self, files: Vec<EncodedFile>) -> Result<EpochFiles, SinkError> {
        let mut written = EpochFiles::default();
        for file in &files {
            if file.relative.ends_with(".parquet") {
                written.data_files.push(file.relative.clone());
                written.rows += file.rows;
            }
            written.bytes += file.bytes.len();
        }
        stream::iter(files)
            .map(|file| async move {
                let path = self.location.child(&file.relative);
                let put = self
                    .location
                    .store
                    .put(&path, PutPayload::from_bytes(file.bytes))
                    .await;
                put.map(drop)
                    .map_err(|source| SinkError::Write { path, source })
            })
            .buffer_unordered(4)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(written)
    }

    /// Output objects already in the location (paths relative to the prefix).
    pub async fn existing_outputs(&self) -> Result<Vec<Path>, SinkError> {
        let listed: Vec<_> = self
            .location
            .store
            .list(Some(&self.location.prefix))
            .try_collect()
            .await
            .map_err(|source| SinkError::List {
                location: self.location.display.clone(),
                source,
            })?;
        Ok(listed
            .into_iter()
            .map(|meta| meta.location)
            .filter(|path| {
                let relative = path.prefix_match(&self.location.prefix).map(|parts| {
                    parts
                        .map(|p| p.as_ref().to_owned())
                        .collect::<Vec<_>>()
                        .join("/")
                });
                relative.is_some_and(|r| layout::is_output(&r))
            })
            .collect())
    }

    /// Deletes the given objects (used by `--overwrite`).
    pub async fn delete(&self, paths: Vec<Path>) -> Result<(), SinkError> {
        for path in paths {
            self.location
                .store
                .delete(&path)
                .await
                .map_err(|source| SinkError::Write { path, source })?;
        }
        Ok(())
    }
}
