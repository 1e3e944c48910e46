//! Measures how well each tracepoint choice captures a known access pattern: a 64 MiB
//! file under /var/tmp, 3000 scattered pages touched by a child process with
//! `MADV_RANDOM` or `MADV_NORMAL`, captured cold with each set of sources, and the
//! capture's recall and extra pages printed (what docs/ebpf-capture.md reports). Needs
//! root and python3.
//!
//! ```sh
//! cargo run --release -p snapbpf-wss --example tracepoint_accuracy
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use common::{accuracy, cold, make_file, pattern, start_or_skip, touch, PAGES};
use snapbpf_wss::capture::{CaptureOptions, TraceSource};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir_in("/var/tmp")?;
    let path = make_file(dir.path(), "memory", PAGES);
    let touched = pattern(3000, PAGES, 11);
    let cases: [(&str, &[TraceSource], &str); 5] = [
        (
            "add_to_page_cache, MADV_RANDOM",
            &[TraceSource::AddToPageCache],
            "random",
        ),
        (
            "add_to_page_cache, MADV_NORMAL",
            &[TraceSource::AddToPageCache],
            "normal",
        ),
        ("fault, MADV_RANDOM", &[TraceSource::Fault], "random"),
        (
            "fault+map_pages, MADV_NORMAL",
            &[TraceSource::Fault, TraceSource::MapPages],
            "normal",
        ),
        (
            "fault+map_pages, MADV_RANDOM",
            &[TraceSource::Fault, TraceSource::MapPages],
            "random",
        ),
    ];
    println!(
        "{:<34} {:>7} {:>8} {:>7} {:>8} {:>7}  by source / orders",
        "capture", "touched", "captured", "recall", "extras", "events"
    );
    for (name, sources, advice) in cases {
        let _f = cold(&path);
        let opts = CaptureOptions {
            sources: sources.to_vec(),
            ..CaptureOptions::default()
        };
        let Some(cap) = start_or_skip(&path, &opts, "tracepoint_accuracy") else {
            return Err("BPF capture unavailable".into());
        };
        touch(&path, advice, &touched);
        let c = cap.stop()?;
        let acc = accuracy(&c, &touched);
        println!(
            "{name:<34} {:>7} {:>8} {:>7.4} {:>8.4} {:>7}  {:?} {:?}",
            touched.len(),
            acc.captured,
            acc.recall,
            acc.extras,
            c.total_events,
            c.events_by_source,
            &c.order_histogram[..6]
        );
    }
    Ok(())
}
