//! Soak: many restores from one long-lived launcher, every strategy, sequential and
//! concurrent; every VM's checksum checked against the fresh boot's; the launcher's and a
//! long-lived page-fault handler's open descriptors, threads and RSS sampled as it goes.
//! Run by `scripts/soak.sh`, which prepares the snapshot, the recordings and the handler.
//!
//! ```text
//! soak --snapshot DIR --worker EXE --reference HEX --handler-socket S --handler-pid PID
//!      [--sequential N] [--rounds N] [--concurrency N] [--out FILE]
//! ```
//! `--sequential` restores and `--rounds` of `--concurrency` VMs are run per strategy.
//! ```text
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use snapbpf::launch::{invoke, InvokeRequest};
use snapbpf::run::RunOptions;
use snapbpf::strategy::StrategySpec;

/// Open descriptors, threads and RSS (KiB) of process `pid` ("self" for this one).
fn probe(pid: &str) -> (usize, u64, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (fds, field("Threads:"), field("VmRSS:"))
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let need = |name: &str| arg(&args, name).ok_or(format!("missing {name}"));
    let dir = PathBuf::from(need("--snapshot")?);
    let worker = PathBuf::from(need("--worker")?);
    let reference = need("--reference")?;
    let socket = need("--handler-socket")?;
    let handler_pid = need("--handler-pid")?;
    let sequential: u32 = arg(&args, "--sequential").map_or(Ok(1000), |v| v.parse())?;
    let rounds: u32 = arg(&args, "--rounds").map_or(Ok(100), |v| v.parse())?;
    let concurrency: u32 = arg(&args, "--concurrency").map_or(Ok(10), |v| v.parse())?;
    let out = arg(&args, "--out").map(PathBuf::from);

    // Every registered strategy, and REAP once more through the external handler.
    let mut specs: Vec<StrategySpec> = snapbpf::strategy::registry::names()
        .into_iter()
        .map(StrategySpec::named)
        .collect::<Result<_, _>>()?;
    specs.push(StrategySpec::parse(&format!("reap:uffd-handler={socket}"))?);
    let worker_cmd = || {
        let mut c = Command::new(&worker);
        c.arg("__worker");
        c
    };
    let mut samples = Vec::new();
    let mut sample = |phase: &str, done: u64| {
        let (fds, threads, rss) = probe("self");
        let (h_fds, h_threads, h_rss) = probe(&handler_pid);
        let row = serde_json::json!({
            "phase": phase, "vms": done,
            "launcher": {"fds": fds, "threads": threads, "rss_kib": rss},
            "handler": {"fds": h_fds, "threads": h_threads, "rss_kib": h_rss},
        });
        eprintln!("{row}");
        samples.push(row);
    };
    let started = Instant::now();
    let mut vms = 0u64;
    let mut wrong = 0u64;
    sample("start", 0);
    let plan = [
        ("sequential", sequential, 1u32),
        ("concurrent", rounds, concurrency),
    ];
    for (phase, repeats, conc) in plan {
        for i in 0..repeats {
            for spec in &specs {
                let report = invoke(
                    &InvokeRequest {
                        dir: dir.clone(),
                        spec: spec.clone(),
                        run: RunOptions {
                            input: 0,
                            timeout: Duration::from_secs(120),
                        },
                        // Alternate cold and warm starts.
                        cache: snapbpf::launch::CacheStart::cold_if(i % 2 == 0),
                        device: snapbpf::storage_profile::StorageProfile::Native,
                        concurrency: conc,
                    },
                    &worker_cmd,
                )
                .map_err(|e| format!("{}: {}", spec.label(), snapbpf::error_chain(&e)))?;
                for run in &report.runs {
                    vms += 1;
                    if run.checksum != reference {
                        wrong += 1;
                        eprintln!(
                            "WRONG: {} returned {}, reference {reference}",
                            spec.label(),
                            run.checksum
                        );
                    }
                }
            }
            if (i + 1) % (repeats / 5).max(1) == 0 {
                sample(phase, vms);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "strategies": specs.iter().map(|s| s.label()).collect::<Vec<_>>(),
        "sequential_per_strategy": sequential,
        "concurrent_rounds_per_strategy": rounds,
        "concurrency": concurrency,
        "vms": vms, "wrong_checksums": wrong, "seconds": secs,
        "samples": samples,
    });
    let text = serde_json::to_string_pretty(&summary)?;
    match out {
        Some(path) => snapbpf_store::fsutil::write_atomic(&path, text.as_bytes())?,
        None => println!("{text}"),
    }
    if wrong > 0 {
        return Err(format!("{wrong} VMs returned a wrong checksum").into());
    }
    Ok(())
}
