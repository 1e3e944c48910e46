//! `snapbpf push`: a snapshot directory into an object store as content-addressed chunks
//! and a manifest.
//!
//! 1. Every file of the directory (its dotfiles aside) is read in `chunk_size` pieces;
//!    each piece is named by its identity digest, all-zero pieces are not stored at all. The
//!    memory file must hash to the identity its metadata names.
//! 2. The store is asked which of those chunks it has (`HEAD`); only the others are
//!    compressed and uploaded, each read again and checked against its name first.
//! 3. The manifest goes last, in one `PUT`: a reader never sees a manifest that names a
//!    chunk not uploaded yet, and an interrupted push leaves only unreferenced chunks,
//!    which the next push reuses. A manifest equal to the one there is not written again.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use snapbpf_store::{fsutil, FileIdentity};

use crate::chunk;
use crate::manifest::{self, ChunkRef, FileEntry, Manifest};
use crate::remote::{Remote, RemoteError, RemoteOptions};
use crate::url::SnapshotUrl;

/// Default chunk size: small enough that a sparse working set drags in little else,
/// large enough that a GET's latency is paid rarely.
pub const DEFAULT_CHUNK_SIZE: u64 = 512 << 10;

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Bytes per chunk (a power of two, 64 KiB to 64 MiB).
    pub chunk_size: u64,
    /// Requests in flight.
    pub parallel: usize,
    /// The object store.
    pub remote: RemoteOptions,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            parallel: 8,
            remote: RemoteOptions::default(),
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PushReport {
    /// Where it went.
    pub url: String,
    /// Files pushed.
    pub files: u64,
    /// Chunks in all files.
    pub chunks: u64,
    /// Of those, all zeros (not stored).
    pub zero_chunks: u64,
    /// Distinct stored chunks.
    pub unique_chunks: u64,
    /// Distinct chunks the store already had.
    pub present: u64,
    /// Chunks uploaded.
    pub uploaded: u64,
    /// Object bytes uploaded (compressed).
    pub uploaded_bytes: u64,
    /// Chunk bytes those objects hold.
    pub uploaded_raw_bytes: u64,
    /// Whether the manifest was written (it is not when equal to the stored one).
    pub manifest_written: bool,
    /// Wall time, ms.
    pub ms: f64,
}

/// Errors of a push.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The directory is not a snapshot.
    #[error(transparent)]
    Snapshot(#[from] snapbpf_store::OpenError),
    /// Its metadata cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The memory file is not the one the metadata names.
    #[error("the snapshot's memory file is not the one it was taken with")]
    Stale(#[source] snapbpf_store::verify::VerifyError),
    /// Something in the directory cannot be pushed.
    #[error("{0} is not a regular file: a snapshot directory holds regular files only")]
    Special(PathBuf),
    /// Too much to push.
    #[error("{0}")]
    TooLarge(String),
    /// A file changed while it was pushed.
    #[error("{0} changed while it was being pushed; push again once nothing writes to it")]
    Changed(PathBuf),
    /// The directory is locked by a writer.
    #[error(transparent)]
    Lock(#[from] snapbpf_os::lock::LockError),
    /// An object-store request failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A chunk could not be compressed.
    #[error("cannot compress a chunk")]
    Encode(#[source] std::io::Error),
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> PushError + '_ {
    move |source| PushError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads `len` bytes of `file` at `offset`.
fn read_exact_at(file: &File, len: usize, offset: u64, path: &Path) -> Result<Vec<u8>, PushError> {
    let mut buf = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, offset).map_err(read_err(path))?;
    Ok(buf)
}

/// The files of the snapshot directory to push, sorted by name.
fn files_of(dir: &Path) -> Result<Vec<String>, PushError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err(dir))? {
        let entry = entry.map_err(read_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(read_err(dir))?;
        if !kind.is_file() || !manifest::valid_file_name(&name) {
            return Err(PushError::Special(entry.path()));
        }
        names.push(name);
    }
    if names.len() > manifest::MAX_FILES {
        return Err(PushError::TooLarge(format!(
            "{} holds {} files, at most {} can be pushed",
            dir.display(),
            names.len(),
            manifest::MAX_FILES
        )));
    }
    names.sort();
    Ok(names)
}

/// Names every chunk of the file at `path` and hashes all of it.
fn chunk_file(path: &Path, name: &str, chunk_size: u64) -> Result<FileEntry, PushError> {
    let (file, _) = fsutil::open_direct(path).map_err(read_err(path))?;
    let size = file.metadata().map_err(read_err(path))?.len();
    if size > manifest::MAX_FILE_BYTES {
        return Err(PushError::TooLarge(format!(
            "{} is {size} bytes",
            path.display()
        )));
    }
    let mut whole = snapbpf_store::TreeHasher::new();
    let mut buf = fsutil::AlignedBuf::new(chunk_size).map_err(read_err(path))?;
    let mut chunks = Vec::new();
    // A chunk that lies wholly in a hole is zeros: named so without reading it (a sparse
    // memory file costs its data to push, not its size).
    let extents = fsutil::data_extents(&file, size).map_err(read_err(path))?;
    let mut next_extent = 0usize;
    let mut offset = 0u64;
    while offset < size {
        let want = (size - offset).min(chunk_size) as usize;
        while extents
            .get(next_extent)
            .is_some_and(|&(_, end)| end <= offset)
        {
            next_extent += 1;
        }
        let in_hole = extents
            .get(next_extent)
            .is_none_or(|&(start, _)| start >= offset + want as u64);
        if in_hole {
            whole.update_zeros(want as u64);
            chunks.push(ChunkRef {
                id: None,
                stored: 0,
            });
            offset += want as u64;
            continue;
        }
        let mut got = 0usize;
        while got < want {
            // Direct reads want whole blocks: ask for the rest of the buffer.
            let n = fsutil::read_at(&file, &mut buf.as_mut_slice()[got..], offset + got as u64)
                .map_err(read_err(path))?;
            if n == 0 {
                return Err(PushError::Changed(path.to_path_buf()));
            }
            got += n;
        }
        let data = &buf.as_mut_slice()[..want];
        let zero = data.iter().fold(0u8, |a, &b| a | b) == 0;
        let id = if zero {
            whole.update_zeros(want as u64);
            None
        } else {
            let id = FileIdentity::of_bytes(data);
            // The chunk is a subtree of the file's tree: its identity is the node.
            whole
                .push_subtree(id.size, id.digest)
                .map_err(|e| PushError::TooLarge(e.to_string()))?;
            Some(id)
        };
        chunks.push(ChunkRef { id, stored: 0 });
        offset += want as u64;
    }
    let after = file.metadata().map_err(read_err(path))?.len();
    if after != size {
        return Err(PushError::Changed(path.to_path_buf()));
    }
    Ok(FileEntry {
        name: name.to_string(),
        id: whole.finish(),
        chunks,
    })
}

/// Pushes the snapshot in `dir` to `url`, reporting progress lines to `progress`.
pub fn push(
    dir: &Path,
    url: &SnapshotUrl,
    options: &PushOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<PushReport, PushError> {
    let started = Instant::now();
    let chunk_size = options.chunk_size;
    if !manifest::CHUNK_SIZES.contains(&chunk_size) || !chunk_size.is_power_of_two() {
        return Err(PushError::TooLarge(format!(
            "chunk size {chunk_size} is not a power of two from 64 KiB to 64 MiB"
        )));
    }
    let _lock = snapbpf_os::lock::lock_dir(dir, snapbpf_os::lock::LockMode::Shared)?;
    let meta_path = dir.join(snapbpf_store::snapshot::META_FILE);
    let raw = fsutil::read_regular(&meta_path, snapbpf_store::snapshot::MAX_META_BYTES)
        .map_err(read_err(&meta_path))?;
    let meta = snapbpf_store::snapshot::parse_meta(&raw, &meta_path)?;
    let memory_path = dir.join(snapbpf_store::snapshot::MEMORY_FILE);
    snapbpf_store::verify::check(&memory_path, &meta.memory).map_err(PushError::Stale)?;

    let names = files_of(dir)?;
    let mut files = Vec::with_capacity(names.len());
    for name in &names {
        progress(&format!("push: reading {name}"));
        files.push(chunk_file(&dir.join(name), name, chunk_size)?);
    }
    if files
        .iter()
        .find(|f| f.name == snapbpf_store::snapshot::MEMORY_FILE)
        .map(|f| f.id)
        != Some(meta.memory)
    {
        return Err(PushError::Changed(memory_path));
    }

    // Each distinct chunk once, with where to read it from.
    let mut unique: HashMap<[u8; 32], (usize, usize, FileIdentity)> = HashMap::new();
    for (fi, f) in files.iter().enumerate() {
        for (ci, c) in f.chunks.iter().enumerate() {
            if let Some(id) = c.id {
                unique.entry(id.digest).or_insert((fi, ci, id));
            }
        }
    }
    let remote = Remote::connect(&url.location, &options.remote)?;
    let location = url.location.clone();
    let mut todo: Vec<(usize, usize, FileIdentity)> = unique.values().copied().collect();
    todo.sort_by_key(|&(fi, ci, _)| (fi, ci));
    progress(&format!(
        "push: asking the store for {} distinct chunks",
        todo.len()
    ));
    let sizes = remote.parallel(
        options.parallel * 2,
        todo.iter()
            .map(|&(_, _, id)| {
                let key = location.key(&chunk::key(&id));
                move |r: &Remote| r.size(&key)
            })
            .collect(),
    );
    let mut stored: HashMap<[u8; 32], u64> = HashMap::new();
    let mut missing = Vec::new();
    for (job, size) in todo.iter().zip(sizes) {
        match size? {
            Some(bytes) => {
                stored.insert(job.2.digest, bytes);
            }
            None => missing.push(*job),
        }
    }
    let present = stored.len() as u64;
    progress(&format!(
        "push: {present} chunks already stored, uploading {}",
        missing.len()
    ));
    let done = std::sync::atomic::AtomicU64::new(0);
    let total = missing.len() as u64;
    let uploads = {
        let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
        remote.parallel(
            options.parallel,
            missing
                .iter()
                .map(|&(fi, ci, id)| {
                    let path = paths[fi].clone();
                    let len = files[fi].chunk_len(ci, chunk_size) as usize;
                    let offset = ci as u64 * chunk_size;
                    let key = location.key(&chunk::key(&id));
                    move |r: &Remote| -> Result<(FileIdentity, u64, u64), PushError> {
                        let file = File::open(&path).map_err(read_err(&path))?;
                        let raw = read_exact_at(&file, len, offset, &path)?;
                        if FileIdentity::of_bytes(&raw) != id {
                            return Err(PushError::Changed(path));
                        }
                        let object = chunk::Encoder::new()
                            .and_then(|mut e| e.encode(&raw))
                            .map_err(PushError::Encode)?;
                        let bytes = object.len() as u64;
                        r.put(&key, object.into())?;
                        Ok((id, bytes, raw.len() as u64))
                    }
                })
                .collect(),
        )
    };
    let mut report = PushReport {
        url: url.to_string(),
        files: files.len() as u64,
        chunks: files.iter().map(|f| f.chunks.len() as u64).sum(),
        zero_chunks: files
            .iter()
            .flat_map(|f| &f.chunks)
            .filter(|c| c.id.is_none())
            .count() as u64,
        unique_chunks: unique.len() as u64,
        present,
        ..PushReport::default()
    };
    for upload in uploads {
        let (id, bytes, raw) = upload?;
        stored.insert(id.digest, bytes);
        report.uploaded += 1;
        report.uploaded_bytes += bytes;
        report.uploaded_raw_bytes += raw;
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n == total {
            progress(&format!("push: uploaded {n} chunks"));
        }
    }
    for f in &mut files {
        for c in &mut f.chunks {
            if let Some(id) = c.id {
                c.stored = stored.get(&id.digest).copied().unwrap_or(0);
            }
        }
    }
    let manifest = Manifest {
        name: url.name.clone(),
        function: meta.function.clone(),
        memory: meta.memory,
        chunk_size,
        files,
        pushed_unix_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    let key = location.key(&manifest::key(&url.name));
    let unchanged = match remote.get(&key, manifest::MAX_MANIFEST_BYTES) {
        Ok(got) => Manifest::decode(&got.bytes, &key)
            .map(|old| {
                Manifest {
                    pushed_unix_ns: manifest.pushed_unix_ns,
                    ..old
                } == manifest
            })
            .unwrap_or(false),
        Err(RemoteError::NotFound { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    if !unchanged {
        let bytes = manifest.encode().map_err(PushError::Encode)?;
        remote.put(&key, bytes.into())?;
        report.manifest_written = true;
    }
    report.ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(report)
}
