//! Helpers shared by the capture tests and the `tracepoint_accuracy` example: files of
//! known content, cold starts, access patterns, a child process that touches pages, and
//! a capture that skips loudly (or fails under `CI=true`) where BPF is unavailable.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use snapbpf_wss::capture::{CaptureOptions, CaptureStartError, CapturedPages, PageCacheCapture};
use snapbpf_wss::prefetch::{evict, resident_pages};

pub const PAGES: u64 = 16 * 1024; // 64 MiB

/// Python child that maps the file, applies an madvise mode, and reads one byte of
/// each page listed on stdin, in order.
pub const TOUCHER: &str = r#"
import mmap, os, sys
path, advice = sys.argv[1], sys.argv[2]
pages = [int(x) for x in sys.stdin.read().split()]
fd = os.open(path, os.O_RDONLY)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
if advice == "random":
    m.madvise(mmap.MADV_RANDOM)
s = 0
for p in pages:
    s += m[p * 4096]
print(s)
"#;

/// Prints past libtest's output capture (which only intercepts the print macros), so
/// the skip is visible in a normal `cargo test` run.
pub fn skipped(msg: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {msg} ***\n");
}

pub fn must_run_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Starts a capture, or decides that the environment cannot run BPF: then the test is
/// skipped loudly (or fails in CI).
pub fn start_or_skip(path: &Path, opts: &CaptureOptions, test: &str) -> Option<PageCacheCapture> {
    match PageCacheCapture::start_with(path, opts) {
        Ok(c) => Some(c),
        Err(
            e @ (CaptureStartError::MissingPrivileges { .. }
            | CaptureStartError::BpfUnavailable { .. }
            | CaptureStartError::TracefsUnavailable { .. }
            | CaptureStartError::TracepointMissing { .. }
            | CaptureStartError::Attach { .. }),
        ) => {
            if must_run_in_ci() {
                panic!("{test}: BPF capture unavailable with CI=true: {e}");
            }
            skipped(&format!("{test}: BPF capture unavailable: {e}"));
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

pub fn make_file(dir: &Path, name: &str, pages: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut f = File::create(&path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    for _ in 0..(pages * 4096).div_ceil(buf.len() as u64) {
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
    path
}

pub fn cold(path: &Path) -> File {
    let f = File::open(path).unwrap();
    evict(&f).unwrap();
    let n = resident_pages(&f).unwrap().iter().filter(|&&r| r).count();
    assert_eq!(n, 0, "{} still has {n} resident pages", path.display());
    f
}

/// A deterministic scattered access pattern: `n` distinct pages in a shuffled order,
/// with some runs of consecutive pages.
pub fn pattern(n: usize, pages: u64, seed: u64) -> Vec<u64> {
    let mut x = seed;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    while out.len() < n {
        let start = next() % pages;
        let run = if next() % 4 == 0 { 1 + next() % 6 } else { 1 };
        for p in start..(start + run).min(pages) {
            if seen.insert(p) && out.len() < n {
                out.push(p);
            }
        }
    }
    out
}

pub fn touch(path: &Path, advice: &str, pages: &[u64]) {
    let mut child = Command::new("python3")
        .args(["-c", TOUCHER, path.to_str().unwrap(), advice])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 is needed for the capture tests");
    let list: String = pages.iter().map(|p| format!("{p}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "toucher failed");
}

pub struct Accuracy {
    pub recall: f64,
    pub extras: f64,
    pub captured: usize,
}

pub fn accuracy(c: &CapturedPages, touched: &[u64]) -> Accuracy {
    let want: BTreeSet<u64> = touched.iter().copied().collect();
    let got: BTreeSet<u64> = c.page_indices().collect();
    let hit = want.intersection(&got).count();
    Accuracy {
        recall: hit as f64 / want.len() as f64,
        extras: (got.len() - hit) as f64 / want.len() as f64,
        captured: got.len(),
    }
}
