//! The object store, reached through `object_store`'s S3 client and driven from blocking
//! code (FUSE threads, the CLI) on a small runtime of its own.
//!
//! Endpoint, region and credentials come from the usual AWS environment
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`), overridden by
//! [`RemoteOptions`]. Requests are path-style (what MinIO, Ceph RGW and s3s serve; AWS S3
//! serves both), bounded by timeouts and retried with backoff by the client.
//!
//! Requests go over HTTPS. A plain `http://` endpoint is refused unless the operator asks
//! for it ([`RemoteOptions::allow_http`], or `AWS_ALLOW_HTTP=true`): on the wire a
//! snapshot's chunks are a tenant's memory, and an endpoint URL typed once in a config
//! should not silently decide that.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::url::Location;

/// How to reach the object store, beyond the AWS environment.
#[derive(Debug, Clone, Default)]
pub struct RemoteOptions {
    /// Endpoint URL (`http://127.0.0.1:9000`); AWS's for the region when unset.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Longest one request may take.
    pub timeout: Option<Duration>,
    /// Retries of a failed request (the client backs off between them).
    pub retries: Option<usize>,
    /// Allow a plain `http://` endpoint (also `AWS_ALLOW_HTTP=true`): a store on
    /// loopback or in a lab. Off, such an endpoint is refused.
    pub allow_http: bool,
}

/// Errors of object-store requests.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The client could not be configured.
    #[error("cannot configure the S3 client for {location}")]
    Configure {
        /// Where.
        location: String,
        /// The client's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// A plain-HTTP endpoint nobody allowed.
    #[error("the endpoint {0} is plain HTTP: snapshot memory would cross the network unencrypted (pass --allow-http, or AWS_ALLOW_HTTP=true, if that is meant)")]
    PlainHttp(String),
    /// The async runtime could not start.
    #[error("cannot start the I/O runtime")]
    Runtime(#[source] std::io::Error),
    /// The object does not exist.
    #[error("s3://{bucket}/{key} does not exist")]
    NotFound {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// The object is larger than anything that can be at its key.
    #[error(
        "s3://{bucket}/{key} is {size} bytes, more than the {max} it can be: refusing to read it"
    )]
    TooLarge {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Its size.
        size: u64,
        /// The most it may be.
        max: u64,
    },
    /// A request failed (after the client's retries).
    #[error("{op} s3://{bucket}/{key} failed")]
    Request {
        /// What was asked.
        op: &'static str,
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The client's error.
        #[source]
        source: Box<object_store::Error>,
    },
}

/// A bucket location, ready for requests.
#[derive(Debug, Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    runtime: Arc<tokio::runtime::Runtime>,
    location: Location,
}

/// What a `get` returned and how long its first byte took.
#[derive(Debug)]
pub struct Got {
    /// The object.
    pub bytes: Bytes,
    /// Time to the response's headers (the first byte).
    pub ttfb: Duration,
}

impl Remote {
    /// A client for `location`.
    pub fn connect(location: &Location, options: &RemoteOptions) -> Result<Self, RemoteError> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_virtual_hosted_style_request(false);
        let endpoint = options
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        // Plain HTTP only when the operator says so, not because a URL does.
        let allow_http =
            options.allow_http || std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true");
        if let Some(plain) = endpoint.as_deref().filter(|e| {
            e.get(..7)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
        }) {
            if !allow_http {
                return Err(RemoteError::PlainHttp(plain.to_string()));
            }
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        let timeout = options.timeout.unwrap_or(Duration::from_secs(30));
        builder = builder
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(allow_http)
                    .with_timeout(timeout)
                    .with_connect_timeout(Duration::from_secs(5)),
            )
            .with_retry(RetryConfig {
                max_retries: options.retries.unwrap_or(3),
                retry_timeout: timeout * 2,
                ..RetryConfig::default()
            });
        let store = builder.build().map_err(|source| RemoteError::Configure {
            location: location.to_string(),
            source: Box::new(source),
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-io")
            .enable_all()
            .build()
            .map_err(RemoteError::Runtime)?;
        Ok(Self {
            store: Arc::new(store),
            runtime: Arc::new(runtime),
            location: location.clone(),
        })
    }

    /// Where requests go.
    pub fn location(&self) -> &Location {
        &self.location
    }

    fn error(&self, op: &'static str, key: &str, source: object_store::Error) -> RemoteError {
        match source {
            object_store::Error::NotFound { .. } => RemoteError::NotFound {
                bucket: self.location.bucket.clone(),
                key: key.to_string(),
            },
            source => RemoteError::Request {
                op,
                bucket: self.location.bucket.clone(),
                key: key.to_string(),
                source: Box::new(source),
            },
        }
    }

    /// The object at `key` (a full key, prefix included), if it is at most `max_bytes`
    /// long: the bucket is not trusted with how much this process reads (its size is
    /// checked before the body is read, and the body against it).
    pub fn get(&self, key: &str, max_bytes: u64) -> Result<Got, RemoteError> {
        let path = ObjectPath::from(key);
        let started = Instant::now();
        let too_large = |size: u64| RemoteError::TooLarge {
            bucket: self.location.bucket.clone(),
            key: key.to_string(),
            size,
            max: max_bytes,
        };
        self.runtime.block_on(async {
            let response = self
                .store
                .get(&path)
                .await
                .map_err(|e| self.error("GET", key, e))?;
            if response.meta.size > max_bytes {
                return Err(too_large(response.meta.size));
            }
            let ttfb = started.elapsed();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| self.error("GET", key, e))?;
            if bytes.len() as u64 > max_bytes {
                return Err(too_large(bytes.len() as u64));
            }
            Ok(Got { bytes, ttfb })
        })
    }

    /// Stores `bytes` at `key` (one PUT: the object appears whole or not at all).
    pub fn put(&self, key: &str, bytes: Bytes) -> Result<(), RemoteError> {
        let path = ObjectPath::from(key);
        self.runtime.block_on(async {
            self.store
                .put(&path, PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| self.error("PUT", key, e))
        })
    }

    /// The size of the object at `key`, if there is one.
    pub fn size(&self, key: &str) -> Result<Option<u64>, RemoteError> {
        let path = ObjectPath::from(key);
        self.runtime.block_on(async {
            match self.store.head(&path).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.error("HEAD", key, e)),
            }
        })
    }

    /// Every key under `prefix` (a full key prefix, treated as a directory).
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError> {
        let path = ObjectPath::from(prefix);
        self.runtime.block_on(async {
            self.store
                .list(Some(&path))
                .map_ok(|meta| meta.location.to_string())
                .try_collect()
                .await
                .map_err(|e| self.error("LIST", prefix, e))
        })
    }

    /// Runs `jobs` with at most `parallel` in flight at once, in order of submission, and
    /// returns their results in the same order.
    pub fn parallel<T, F>(&self, parallel: usize, jobs: Vec<F>) -> Vec<T>
    where
        T: Send + 'static,
        F: FnOnce(&Remote) -> T + Send + 'static,
    {
        let remote = self.clone();
        let slots: Vec<std::sync::Mutex<(Option<F>, Option<T>)>> = jobs
            .into_iter()
            .map(|job| std::sync::Mutex::new((Some(job), None)))
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..parallel.max(1).min(slots.len()) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(slot) = slots.get(i) else { break };
                    let job = slot.lock().unwrap_or_else(|e| e.into_inner()).0.take();
                    if let Some(job) = job {
                        let out = job(&remote);
                        slot.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(out);
                    }
                });
            }
        });
        slots
            .into_iter()
            .filter_map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner()).1)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_needs_the_operators_word() {
        let location = Location::parse("s3://b/p").expect("location");
        let mut options = RemoteOptions {
            endpoint: Some("HTTP://127.0.0.1:1".into()),
            region: Some("us-east-1".into()),
            ..RemoteOptions::default()
        };
        if std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true") {
            eprintln!("AWS_ALLOW_HTTP=true is set: only the allowed case is checked");
        } else {
            assert!(matches!(
                Remote::connect(&location, &options),
                Err(RemoteError::PlainHttp(_))
            ));
        }
        options.allow_http = true;
        assert!(Remote::connect(&location, &options).is_ok());
        options.endpoint = Some("https://127.0.0.1:1".into());
        options.allow_http = false;
        assert!(Remote::connect(&location, &options).is_ok());
    }
}
