//! `meterflow query`: SQL over an output location with an embedded DataFusion engine.
//!
//! The location (a directory or `s3://bucket/prefix`, opened like every other command's) is
//! registered as table `readings`: the exact output schema plus the Hive partition column
//! `date` (DATE), so filters on `date` skip whole directories before a file is opened.
//! Dead letters and the checkpoint are not Parquet and stay out of the table.

use std::io::Write;
use std::sync::Arc;

use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use url::Url;

use crate::sink::schema;
use crate::sink::store::{self, StoreError, StoreOptions};

/// Name of the table the output is registered as.
pub const TABLE: &str = "readings";

/// Errors of a query: the SQL, the location, or writing the answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    #[error("{location} is not a location DataFusion can list")]
    Location {
        location: String,
        #[source]
        source: DataFusionError,
    },
    #[error("no output at {location}")]
    Missing {
        location: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("query failed")]
    Sql(#[source] DataFusionError),
    #[error("cannot write the result")]
    Write(#[source] arrow::error::ArrowError),
    #[error("cannot write the result")]
    Io(#[source] std::io::Error),
}

/// How the answer is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table for people.
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON object per row.
    Json,
}

/// Runs `sql` against the output at `data` (a directory or `s3://bucket/prefix`); returns the
/// result batches.
pub async fn query(
    data: &str,
    options: &StoreOptions,
    sql: &str,
) -> Result<Vec<RecordBatch>, QueryError> {
    let context = SessionContext::new();
    let table_url = register_store(&context, data, options)?;
    let listing = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("date".to_owned(), DataType::Date32)]);
    let config = ListingTableConfig::new(table_url)
        .with_listing_options(listing)
        .with_schema(schema::schema());
    let table = ListingTable::try_new(config).map_err(|source| QueryError::Location {
        location: data.to_owned(),
        source,
    })?;
    context
        .register_table(TABLE, Arc::new(table))
        .map_err(QueryError::Sql)?;
    let frame = context.sql(sql).await.map_err(QueryError::Sql)?;
    frame.collect().await.map_err(QueryError::Sql)
}

/// Makes the location's store known to DataFusion and returns the table's URL: S3 through
/// the same store (endpoint, credentials, retries) the other commands open; a local
/// directory through DataFusion's own file store.
fn register_store(
    context: &SessionContext,
    data: &str,
    options: &StoreOptions,
) -> Result<ListingTableUrl, QueryError> {
    let invalid = |source| QueryError::Location {
        location: data.to_owned(),
        source,
    };
    let remote = data
        .strip_prefix("s3://")
        .or_else(|| data.strip_prefix("s3a://"));
    let url = match remote {
        Some(rest) => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let location = store::open(data, options)?;
            let root = Url::parse(&format!("s3://{bucket}/"))
                .map_err(|e| invalid(DataFusionError::External(Box::new(e))))?;
            context.register_object_store(&root, location.store);
            match prefix.trim_matches('/') {
                "" => format!("s3://{bucket}/"),
                prefix => format!("s3://{bucket}/{prefix}/"),
            }
        }
        None => {
            let path = data.strip_prefix("file://").unwrap_or(data);
            let root = std::fs::canonicalize(path).map_err(|source| QueryError::Missing {
                location: data.to_owned(),
                source,
            })?;
            format!("{}/", root.display())
        }
    };
    ListingTableUrl::parse(url).map_err(invalid)
}

/// Prints `batches` in `format`.
pub fn write(
    batches: &[RecordBatch],
    format: Format,
    out: &mut impl Write,
) -> Result<(), QueryError> {
    match format {
        Format::Table => {
            let table =
                arrow::util::pretty::pretty_format_batches(batches).map_err(QueryError::Write)?;
            writeln!(out, "{table}").map_err(QueryError::Io)
        }
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            for batch in batches {
                writer.write(batch).map_err(QueryError::Write)?;
            }
            Ok(())
        }
        Format::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(out);
            writer
                .write_batches(&batches.iter().collect::<Vec<_>>())
                .map_err(QueryError::Write)?;
            writer.finish().map_err(QueryError::Write)
        }
    }
}
