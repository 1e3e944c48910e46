//! Snapshots served to a fleet from an S3-compatible object store.
//!
//! - [`mod@push`]: a snapshot directory into the store as content-addressed chunks
//!   ([`chunk`]: fixed size, compressed, named by their identity digest, stored once across
//!   snapshots and versions) and a [`manifest`] written last.
//! - [`fs`]: `snapbpf mount`, a read-only FUSE filesystem showing every pushed snapshot
//!   as a snapshot directory; reads fetch the chunks they need ([`fetch`]), check them,
//!   and keep them in a bounded local [`cache`], so every VM on a host shares one
//!   page-cache copy and each chunk is fetched once.
//! - [`remote`]: the object store client (`object_store`'s S3), driven from blocking code.
//!
//! Layout in the bucket, under `s3://BUCKET/PREFIX`:
//! `chunks/<digest>` (one object per distinct chunk) and `snapshots/<NAME>/manifest`.

pub mod cache;
pub mod chunk;
pub mod fetch;
pub mod fs;
pub mod manifest;
pub mod push;
pub mod remote;
pub mod url;

pub use fs::{mount, stats_of, MountError, MountOptions, MountSession, MountStats, STATS_FILE};
pub use push::{push, PushError, PushOptions, PushReport};
pub use remote::{Remote, RemoteError, RemoteOptions};
pub use url::{Location, SnapshotUrl, UrlError};
