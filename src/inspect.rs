//! Reading output back: files, schema, row counts and the first rows of a location.

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::schema::printer::print_schema;

use crate::sink::layout::DEAD_LETTER_DIR;
use crate::sink::store::Location;

/// Errors reading output back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{path} is not a readable Parquet file")]
    Parquet {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("no Parquet files under {location}")]
    Empty { location: String },
}

/// One Parquet file of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// What `meterflow inspect` shows.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub files: Vec<FileInfo>,
    /// The Parquet schema of the first file, in Parquet's own notation.
    pub parquet_schema: String,
    pub total_rows: u64,
    /// Lines in `_dead_letter/` files.
    pub dead_letters: u64,
    /// The first rows, in file order.
    pub first_rows: Vec<RecordBatch>,
}

/// Parquet files under the location (or the one file `only`), in name order.
async fn parquet_files(
    location: &Location,
    only: Option<&Path>,
) -> Result<Vec<(Path, u64)>, InspectError> {
    let listed: Vec<_> = location
        .store
        .list(Some(&location.prefix))
        .try_collect()
        .await
        .map_err(|source| InspectError::Read {
            path: location.display.clone(),
            source,
        })?;
    let mut files: Vec<(Path, u64)> = listed
        .into_iter()
        .filter(|meta| meta.location.as_ref().ends_with(".parquet"))
        .filter(|meta| only.is_none_or(|path| &meta.location == path))
        .map(|meta| (meta.location, meta.size))
        .collect();
    files.sort();
    Ok(files)
}

async fn get(location: &Location, path: &Path) -> Result<Bytes, InspectError> {
    let fail = |source| InspectError::Read {
        path: path.to_string(),
        source,
    };
    location
        .store
        .get(path)
        .await
        .map_err(fail)?
        .bytes()
        .await
        .map_err(fail)
}

fn reader(
    path: &Path,
    bytes: Bytes,
) -> Result<ParquetRecordBatchReaderBuilder<Bytes>, InspectError> {
    ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|source| InspectError::Parquet {
        path: path.to_string(),
        source,
    })
}

/// Looks at every Parquet file under `location` (or only `only`), keeping `rows` first rows.
pub async fn inspect(
    location: &Location,
    only: Option<&Path>,
    rows: usize,
) -> Result<Inspection, InspectError> {
    let files = parquet_files(location, only).await?;
    if files.is_empty() {
        return Err(InspectError::Empty {
            location: location.display.clone(),
        });
    }
    let mut inspection = Inspection {
        files: Vec::new(),
        parquet_schema: String::new(),
        total_rows: 0,
        dead_letters: count_dead_letters(location).await?,
        first_rows: Vec::new(),
    };
    let mut wanted = rows;
    for (path, size) in files {
        let builder = reader(&path, get(location, &path).await?)?;
        let file_rows = builder.metadata().file_metadata().num_rows() as u64;
        if inspection.parquet_schema.is_empty() {
            let mut text = Vec::new();
            print_schema(&mut text, builder.metadata().file_metadata().schema());
            inspection.parquet_schema = String::from_utf8_lossy(&text).into_owned();
        }
        if wanted > 0 {
            let batches = builder
                .with_limit(wanted)
                .build()
                .and_then(|r| r.collect::<Result<Vec<_>, _>>().map_err(Into::into))
                .map_err(|source| InspectError::Parquet {
                    path: path.to_string(),
                    source,
                })?;
            wanted -= batches
                .iter()
                .map(RecordBatch::num_rows)
                .sum::<usize>()
                .min(wanted);
            inspection.first_rows.extend(batches);
        }
        inspection.total_rows += file_rows;
        inspection.files.push(FileInfo {
            path: path.to_string(),
            rows: file_rows,
            bytes: size,
        });
    }
    Ok(inspection)
}

/// Every row under a location, file by file in name order (for tests and checks).
pub async fn read_all(location: &Location) -> Result<Vec<RecordBatch>, InspectError> {
    let mut batches = Vec::new();
    for (path, _) in parquet_files(location, None).await? {
        let builder = reader(&path, get(location, &path).await?)?;
        let fail = |source| InspectError::Parquet {
            path: path.to_string(),
            source,
        };
        for batch in builder.build().map_err(fail)? {
            batches.push(batch.map_err(|e| fail(e.into()))?);
        }
    }
    Ok(batches)
}

/// Dead-letter lines under the location.
pub async fn count_dead_letters(location: &Location) -> Result<u64, InspectError> {
    let prefix = location.child(DEAD_LETTER_DIR);
    let listed: Vec<_> = location
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|source| InspectError::Read {
            path: prefix.to_string(),
            source,
        })?;
    let mut lines = 0;
    for meta in listed {
        let bytes = get(location, &meta.location).await?;
        lines += memchr::memchr_iter(b'\n', &bytes).count() as u64;
    }
    Ok(lines)
}
