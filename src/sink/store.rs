//! Opening a location — a local directory or `s3://bucket/prefix` — as an `object_store`.
//!
//! Both go through the same `ObjectStore` trait, so the sink and `inspect` have one code path.
//! S3 settings come from the usual `AWS_*` variables (read by `AmazonS3Builder::from_env`,
//! including `AWS_ENDPOINT_URL`); [`StoreOptions`] can override the endpoint for MinIO.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, RetryConfig};

/// Errors opening a location.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot create or open local directory {path}")]
    LocalDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use {location} as an object store")]
    Open {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{location}: an S3 location needs a bucket (s3://bucket/prefix)")]
    MissingBucket { location: String },
}

/// S3 settings that are not in the location itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Endpoint of an S3-compatible server such as MinIO; path-style requests are used then.
    pub s3_endpoint: Option<String>,
    /// Retries of a failed request before the error is reported.
    pub max_retries: usize,
    /// Upper bound on the time spent retrying one request.
    pub retry_timeout: Duration,
}

impl StoreOptions {
    /// Retries of a failed request by default (the `--s3-max-retries` default too).
    pub const DEFAULT_MAX_RETRIES: usize = 3;
    /// Time spent retrying one request by default (`--s3-retry-timeout`).
    pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(30);
}

/// The same defaults as the flags: a transient S3 error is retried, not fatal.
impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            s3_endpoint: None,
            max_retries: Self::DEFAULT_MAX_RETRIES,
            retry_timeout: Self::DEFAULT_RETRY_TIMEOUT,
        }
    }
}

/// An opened location: the store and the prefix inside it that meterflow owns.
#[derive(Debug, Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// The location as the user wrote it, for messages.
    pub display: String,
}

impl Location {
    /// The object path of `relative` (a `/`-separated path) under the prefix.
    pub fn child(&self, relative: &str) -> Path {
        relative
            .split('/')
            .filter(|part| !part.is_empty())
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }
}

/// Opens `location`: `s3://bucket[/prefix]` (also `s3a://`) or a local directory, which is
/// created when missing.
pub fn open(location: &str, options: &StoreOptions) -> Result<Location, StoreError> {
    if let Some(rest) = location
        .strip_prefix("s3://")
        .or_else(|| location.strip_prefix("s3a://"))
    {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::MissingBucket {
                location: location.into(),
            });
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(RetryConfig {
                max_retries: options.max_retries,
                retry_timeout: options.retry_timeout,
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &options.s3_endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(endpoint) = options
            .s3_endpoint
            .clone()
            .or_else(|| builder.get_config_value(&object_store::aws::AmazonS3ConfigKey::Endpoint))
        {
            // MinIO and SeaweedFS serve path-style requests, often over plain HTTP inside a cluster.
            builder = builder
                .with_virtual_hosted_style_request(false)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder.build().map_err(|source| StoreError::Open {
            location: location.into(),
            source,
        })?;
        return Ok(Location {
            store: Arc::new(store),
            prefix: Path::from(prefix.trim_matches('/')),
            display: location.into(),
        });
    }
    let dir = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
    std::fs::create_dir_all(&dir).map_err(|source| StoreError::LocalDirectory {
        path: dir.clone(),
        source,
    })?;
    let store = LocalFileSystem::new_with_prefix(&dir).map_err(|source| StoreError::Open {
        location: location.into(),
        source,
    })?;
    Ok(Location {
        store: Arc::new(store),
        prefix: Path::default(),
        display: location.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_directory_is_created_and_children_are_joined() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out/nested");
        let location = open(target.to_str().unwrap(), &StoreOptions::default()).unwrap();
        assert!(target.is_dir());
        assert_eq!(
            location.child("date=2022-07-11/part-0.parquet").as_ref(),
            "date=2022-07-11/part-0.parquet"
        );
    }

    #[test]
    fn s3_location_keeps_its_prefix_and_needs_a_bucket() {
        let options = StoreOptions {
            s3_endpoint: Some("http://127.0.0.1:9".into()),
            ..StoreOptions::default()
        };
        let location = open("s3://bucket/some/prefix/", &options).unwrap();
        assert_eq!(
            location.child("_dead_letter/x.jsonl").as_ref(),
            "some/prefix/_dead_letter/x.jsonl"
        );
        assert!(matches!(
            open("s3:///x", &options),
            Err(StoreError::MissingBucket { .. })
        ));
    }
}
