//! Measures the prefetch methods on a cold file with a scattered working set.
//!
//! `cargo run -p snapbpf --example prefetch_bench -- [FILE] [MiB] [RANGES] [REPEATS]`
//! (defaults: /var/tmp/snapbpf-prefetch-bench, 256, 20000, 5). The file is created if
//! it does not have the requested size. Each run evicts the file (fdatasync +
//! POSIX_FADV_DONTNEED, checked with mincore), prefetches, and reports the time to
//! issue all requests and the time until mincore shows every working-set page resident.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use snapbpf_wss::prefetch::{
    evict, prefetch_with, readahead_limit, resident_pages, PrefetchMethod, PrefetchOptions,
};
use snapbpf_wss::workingset::{CaptureMeta, FileIdentity, WorkingSet};

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = PathBuf::from(args.get(1).map_or("/var/tmp/snapbpf-prefetch-bench", |s| s));
    let mib: u64 = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let nranges: u64 = args.get(3).map_or(Ok(20_000), |s| s.parse())?;
    let repeats: usize = args.get(4).map_or(Ok(5), |s| s.parse())?;
    let size = mib << 20;
    if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) != size {
        let mut f = File::create(&path)?;
        let mut rng = Lcg(1);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for b in buf.chunks_mut(8) {
                b.copy_from_slice(&rng.next().to_le_bytes());
            }
            f.write_all(&buf)?;
        }
        f.sync_all()?;
    }
    let file = File::open(&path)?;
    let pages = size / 4096;

    // Scattered working set: one range per slot of `pages / nranges` pages, starting
    // at a random offset in its slot, 1..=4 pages long (mostly 1), never touching the
    // next slot's range; first-access times are random, so the prefetch order jumps
    // around the file.
    let mut rng = Lcg(42);
    let slot = (pages / nranges).max(2);
    let mut pairs = Vec::new();
    for i in 0..nranges.min(pages / slot) {
        let max_len = (slot - 1).min(4);
        let len = match rng.next() % 10 {
            0..=6 => 1,
            7..=8 => 2.min(max_len),
            _ => max_len,
        };
        let start = i * slot + rng.next() % (slot - len);
        let t = rng.next() % 1_000_000_000;
        for p in start..start + len {
            pairs.push((p, t));
        }
    }
    let ws = WorkingSet::from_pages(FileIdentity::default(), pairs, CaptureMeta::default());
    let want: Vec<u64> = ws.pages().map(|(p, _)| p).collect();
    println!(
        "file {} ({} MiB), working set {} ranges, {} pages ({:.1} MiB), readahead limit {} KiB, {} repeats",
        path.display(),
        mib,
        ws.ranges.len(),
        want.len(),
        want.len() as f64 / 256.0,
        readahead_limit(std::os::unix::fs::MetadataExt::dev(&file.metadata()?)) / 1024,
        repeats
    );

    let methods = [
        PrefetchMethod::Readahead,
        PrefetchMethod::Fadvise,
        PrefetchMethod::IoUringFadvise { queue_depth: 8 },
        PrefetchMethod::IoUringFadvise { queue_depth: 32 },
        PrefetchMethod::IoUringFadvise { queue_depth: 128 },
        PrefetchMethod::IoUringRead { queue_depth: 32 },
        PrefetchMethod::IoUringRead { queue_depth: 128 },
    ];
    println!(
        "{:<28} {:>12} {:>14} {:>10}",
        "method", "issue ms", "resident ms", "requests"
    );
    // Baseline: demand reads of every page in working-set order at queue depth 1.
    {
        let mut t = Vec::new();
        for _ in 0..repeats.min(2) {
            cold(&file)?;
            let s = Instant::now();
            let mut b = [0u8; 1];
            for &p in &want {
                file.read_at(&mut b, p * 4096)?;
            }
            t.push(s.elapsed());
        }
        println!(
            "{:<28} {:>12} {:>14.1} {:>10}",
            "demand pread qd1 (baseline)",
            "-",
            med(&mut t),
            want.len()
        );
    }
    // Interleaved: every repeat runs every method once, so drift in the machine's
    // load spreads evenly over the methods.
    struct Acc {
        issue: Vec<Duration>,
        resident: Vec<Duration>,
        reqs: u64,
        missing_runs: usize,
        missing_pages: usize,
    }
    let mut acc: Vec<Acc> = methods
        .iter()
        .map(|_| Acc {
            issue: Vec::new(),
            resident: Vec::new(),
            reqs: 0,
            missing_runs: 0,
            missing_pages: 0,
        })
        .collect();
    for _ in 0..repeats {
        for (m, a) in methods.iter().zip(acc.iter_mut()) {
            cold(&file)?;
            let s = Instant::now();
            let st = prefetch_with(
                &file,
                &ws.ranges,
                &PrefetchOptions {
                    method: *m,
                    max_request_bytes: None,
                },
            )?;
            a.issue.push(st.elapsed);
            a.reqs = st.requests;
            loop {
                let r = resident_pages(&file)?;
                if want.iter().all(|&p| r[p as usize]) {
                    a.resident.push(s.elapsed());
                    break;
                }
                if s.elapsed() > Duration::from_secs(3) {
                    // Readahead is best effort: some pages were dropped.
                    a.missing_runs += 1;
                    a.missing_pages += want.iter().filter(|&&p| !r[p as usize]).count();
                    break;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            let res = resident_pages(&file)?;
            let total = res.iter().filter(|&&r| r).count();
            let present = want.iter().filter(|&&p| res[p as usize]).count();
            if total != present {
                println!("  note: {m}: {} extra pages", total - present);
            }
        }
    }
    for (m, a) in methods.iter().zip(acc.iter_mut()) {
        let res = if a.resident.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", med(&mut a.resident))
        };
        println!(
            "{:<28} {:>12.1} {:>14} {:>10}  {}/{repeats} ({} pages)",
            m.to_string(),
            med(&mut a.issue),
            res,
            a.reqs,
            a.missing_runs,
            a.missing_pages
        );
    }
    Ok(())
}

fn cold(f: &File) -> std::io::Result<()> {
    evict(f)?;
    let n = resident_pages(f)?.iter().filter(|&&r| r).count();
    if n != 0 {
        return Err(std::io::Error::other(format!(
            "{n} pages still resident after eviction"
        )));
    }
    Ok(())
}

fn med(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}
