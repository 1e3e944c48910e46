//! Measures what an attached capture costs the traced workload and how many events
//! per distinct page it produces (the case for deduplicating in userspace).
//!
//! `cargo run -p snapbpf --example capture_overhead -- [FILE] [MiB] [REPEATS]`
//! (defaults: /var/tmp/snapbpf-capture-bench, 256, 3). Needs root. A python3 child
//! maps the file with MADV_RANDOM and reads one byte of every page, cold, with and
//! without a capture attached.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use snapbpf_wss::capture::{CaptureOptions, PageCacheCapture, TraceSource};
use snapbpf_wss::prefetch::evict;

const TOUCHER: &str = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
m.madvise(mmap.MADV_RANDOM)
n = len(m) // 4096
s = 0
for p in range(n):
    s += m[p * 4096]
print(s)
"#;

fn touch(path: &Path) -> Duration {
    let s = Instant::now();
    let ok = Command::new("python3")
        .args(["-c", TOUCHER, path.to_str().unwrap_or_default()])
        .stdout(Stdio::null())
        .status()
        .map(|st| st.success())
        .unwrap_or(false);
    assert!(ok, "python3 toucher failed");
    s.elapsed()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = PathBuf::from(args.get(1).map_or("/var/tmp/snapbpf-capture-bench", |s| s));
    let mib: u64 = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let repeats: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) != mib << 20 {
        let mut f = File::create(&path)?;
        let buf = vec![1u8; 1 << 20];
        for _ in 0..mib {
            f.write_all(&buf)?;
        }
        f.sync_all()?;
    }
    let file = File::open(&path)?;
    for src in [TraceSource::AddToPageCache, TraceSource::Fault] {
        let (mut base, mut traced) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            evict(&file)?;
            base.push(touch(&path));
            evict(&file)?;
            let opts = CaptureOptions {
                sources: vec![src],
                ..CaptureOptions::default()
            };
            let cap = PageCacheCapture::start_with(&path, &opts)?;
            traced.push(touch(&path));
            let s = Instant::now();
            let c = cap.stop()?;
            let stop = s.elapsed();
            println!(
                "{:?}: {} pages, {} events ({:.3} per page), lost {}, stop+drain {:.1} ms",
                src,
                c.pages.len(),
                c.total_events,
                c.total_events as f64 / c.pages.len().max(1) as f64,
                c.lost_events,
                stop.as_secs_f64() * 1e3
            );
        }
        base.sort();
        traced.sort();
        let b = base[base.len() / 2].as_secs_f64() * 1e3;
        let t = traced[traced.len() / 2].as_secs_f64() * 1e3;
        println!(
            "{src:?}: touching {} pages cold: {b:.1} ms untraced, {t:.1} ms traced (median of {repeats}), {:+.1}%",
            (mib << 20) / 4096,
            (t / b - 1.0) * 100.0
        );
    }
    Ok(())
}
