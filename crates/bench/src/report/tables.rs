//! The sections of `summary.md`: one function per table, each drawn from the figures'
//! data or the raw samples.

use super::{e2e, fmt_summary, fmt_value, geomean, select, Figure, Metric};
use crate::markdown::{Doc, Table};
use crate::{BenchResults, Summary};

/// A figure as a table: functions down, strategies across; then, for latency and
/// memory, its ratios against the baseline or the subject.
pub(super) fn figure(md: &mut Doc, fig: &Figure, calibration: &crate::calibrate::Calibration) {
    md.heading(&fig.title);
    md.para(&format!(
        "Median (min–max), {}{}. Chart: `{}.svg`, `{}.png`.",
        fig.unit(),
        match fig.metric {
            Metric::ColdE2e => " over every VM of every sample",
            Metric::Memory => " over samples",
            Metric::Speedup => ": the baseline's median over the strategy's median (spread: over its slowest and fastest VM)",
        },
        fig.id,
        fig.id
    ));
    let header = || std::iter::once("function".to_string()).chain(fig.strategies.iter().cloned());
    let mut table = Table::new(header());
    for (fi, function) in fig.functions.iter().enumerate() {
        // Cells measured while the device drifted (see Host calibration).
        let flag = if calibration.drifted(function) {
            " (device drifted)"
        } else {
            ""
        };
        table.row(
            std::iter::once(format!("{function}{flag}")).chain(
                fig.cells
                    .iter()
                    .map(|per_fn| fmt_summary(per_fn[fi], fig.metric)),
            ),
        );
    }
    if fig.metric == Metric::Speedup {
        table.row(
            std::iter::once("geomean".to_string()).chain(fig.cells.iter().map(|per_fn| {
                let medians: Vec<f64> = per_fn.iter().flatten().map(|s| s.median).collect();
                geomean(&medians).map_or("–".into(), |g| format!("{g:.2}"))
            })),
        );
    }
    md.table(&table);
    // Ratios of medians against a reference: the comparison the paper's claims make.
    let (reference, what) = match fig.metric {
        Metric::ColdE2e => (
            &fig.baseline,
            format!(
                "speedup over {} (its median over the strategy's)",
                fig.baseline
            ),
        ),
        Metric::Memory => (
            &fig.subject,
            format!(
                "memory relative to {0} (the strategy's median over {0}'s)",
                fig.subject
            ),
        ),
        Metric::Speedup => return,
    };
    let Some(ri) = fig.strategies.iter().position(|s| s == reference) else {
        return;
    };
    md.para(&format!("Ratios, {what}:"));
    let mut ratios = Table::new(header());
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); fig.strategies.len()];
    for (fi, function) in fig.functions.iter().enumerate() {
        let reference = fig.cells[ri][fi];
        let row: Vec<String> = fig
            .cells
            .iter()
            .enumerate()
            .map(|(si, per_fn)| match (per_fn[fi], reference) {
                (Some(v), Some(r)) if v.median > 0.0 && r.median > 0.0 => {
                    let ratio = if fig.metric == Metric::Memory {
                        v.median / r.median
                    } else {
                        r.median / v.median
                    };
                    columns[si].push(ratio);
                    format!("{ratio:.2}")
                }
                _ => "–".into(),
            })
            .collect();
        ratios.row(std::iter::once(function.clone()).chain(row));
    }
    ratios.row(
        std::iter::once("geomean".to_string()).chain(
            columns
                .iter()
                .map(|c| geomean(c).map_or("–".into(), |g| format!("{g:.2}"))),
        ),
    );
    md.table(&ratios);
}

/// The labels of every strategy of the run's plan.
fn plan_labels(results: &BenchResults) -> Vec<String> {
    results
        .config
        .plan()
        .iter()
        .map(|(s, _)| s.label.clone())
        .collect()
}

/// Warm E2E per strategy and function: the floor with every page in the page cache.
pub(super) fn warm(md: &mut Doc, results: &BenchResults) {
    let strategies = plan_labels(results);
    md.heading("Warm end-to-end latency, one VM (the floor)");
    md.para("Median (min–max), ms, with the snapshot's pages in the page cache.");
    let mut table = Table::new(std::iter::once("function".to_string()).chain(strategies.clone()));
    for function in &results.config.functions {
        table.row(
            std::iter::once(function.clone()).chain(strategies.iter().map(|s| {
                fmt_summary(
                    Summary::of(&e2e(&select(results, function, s, 1, false))),
                    Metric::ColdE2e,
                )
            })),
        );
    }
    md.table(&table);
}

/// The subject's own costs (the paper: loading the offsets takes 1-2 ms, under 1 % of
/// E2E): the time from the restore request to its first prefetch request, against its
/// cold E2E with one VM.
fn overheads(md: &mut Doc, results: &BenchResults) {
    let subject = &results.config.subject;
    let rows: Vec<(String, Summary, Summary)> = results
        .config
        .functions
        .iter()
        .filter_map(|function| {
            let samples = select(results, function, subject, 1, true);
            let first: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.report.prefetch.first_request_ms)
                .collect();
            Some((
                function.clone(),
                Summary::of(&first)?,
                Summary::of(&e2e(&samples))?,
            ))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    md.para(&format!(
        "{subject}'s start-up cost: from the restore request to its first prefetch request \
         (loading and checking the working set, opening the memory file), median (min–max) \
         over its cold samples with one VM, and its share of the median E2E."
    ));
    let mut table = Table::new(["function", "first request ms", "E2E ms", "share"]);
    for (function, first, e2e) in rows {
        table.row([
            function,
            format!("{:.2} ({:.2}–{:.2})", first.median, first.min, first.max),
            format!("{:.0}", e2e.median),
            format!("{:.2} %", 100.0 * first.median / e2e.median),
        ]);
    }
    md.table(&table);
}

/// Snapshot size, working sets, artifacts on disk and the record phases' cost.
pub(super) fn records(md: &mut Doc, results: &BenchResults) {
    md.heading("Snapshots, working sets, artifacts and record cost");
    md.para(
        "Snapshot: guest memory and the blocks its memory file takes on disk. Per strategy with a \
         record phase: pages in the recorded working set, bytes of its artifacts on disk, and \
         the wall time of the record phase (one cold, recorded invocation).",
    );
    let mut table = Table::new([
        "function",
        "snapshot MiB (on disk)",
        "strategy",
        "working set MiB",
        "artifacts",
        "record ms",
        "capture CPU ms",
    ]);
    for snap in &results.snapshots {
        let snapshot = format!(
            "{:.0} ({:.0})",
            snap.mem_bytes as f64 / 1048576.0,
            snap.disk_bytes as f64 / 1048576.0
        );
        let records: Vec<_> = results
            .records
            .iter()
            .filter(|r| r.function == snap.function)
            .collect();
        if records.is_empty() {
            table.row([
                snap.function.clone(),
                snapshot.clone(),
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
            ]);
        }
        for r in records {
            table.row([
                snap.function.clone(),
                snapshot.clone(),
                r.strategy.clone(),
                format!("{:.1}", r.ws_pages as f64 * 4096.0 / 1048576.0),
                fmt_bytes(r.artifact_bytes()),
                format!("{:.0}", r.ms),
                r.capture_cpu_ms.map_or("–".into(), |c| format!("{c:.1}")),
            ]);
        }
    }
    md.table(&table);
    overheads(md, results);
}

fn fmt_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / 1048576.0),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The two bounds of a cold start: the device time for the working set (no VM) and the
/// warm floor (no I/O), beside the measured cold start.
pub(super) fn bounds(md: &mut Doc, results: &BenchResults) {
    if results.device_bounds.is_empty() {
        return;
    }
    md.heading("Bounds: device time for the working set, and the warm floor");
    let subject = &results.config.subject;
    md.para(&format!(
        "Device time: {subject}'s prefetched ranges read cold by its prefetcher with no VM \
         running, until every page is resident, median (min–max) ms. Warm and cold: \
         {subject} with one VM, median ms."
    ));
    let mut table = Table::new([
        "function".to_string(),
        "working set MiB".into(),
        "ranges".into(),
        "device ms".into(),
        "MB/s".into(),
        format!("{subject} warm ms"),
        format!("{subject} cold ms"),
    ]);
    for b in &results.device_bounds {
        let device = Summary::of(&b.ms);
        let rate = device.filter(|d| d.median > 0.0).map_or("–".into(), |d| {
            format!("{:.0}", b.bytes as f64 / 1e3 / d.median)
        });
        let median = |cold: bool| {
            Summary::of(&e2e(&select(results, &b.function, subject, 1, cold)))
                .map_or("–".into(), |s| fmt_value(s.median, Metric::ColdE2e))
        };
        table.row([
            b.function.clone(),
            format!("{:.1}", b.bytes as f64 / 1048576.0),
            b.ranges.to_string(),
            fmt_summary(device, Metric::ColdE2e),
            rate,
            median(false),
            median(true),
        ]);
    }
    md.table(&table);
}

/// VM runs that returned a checksum other than the fresh boot's: void, and said first.
pub(super) fn wrong(md: &mut Doc, results: &BenchResults) {
    if results.wrong.is_empty() {
        return;
    }
    md.heading(&format!(
        "WRONG ANSWERS: {} VM run(s) returned another checksum than a fresh boot",
        results.wrong.len()
    ));
    md.para(
        "These runs are left out of every figure below; the cells they belong to hold only \
         the samples that were right.",
    );
    let mut table = Table::new([
        "function",
        "strategy",
        "VMs",
        "cold",
        "VM",
        "checksum",
        "fresh boot",
    ]);
    for w in &results.wrong {
        table.row([
            w.function.clone(),
            w.strategy.clone(),
            w.concurrency.to_string(),
            w.cold.to_string(),
            w.vm.to_string(),
            w.checksum.clone(),
            w.expected.clone(),
        ]);
    }
    md.table(&table);
}

/// Every measured cell with its faults and memory, for the record.
pub(super) fn cells(md: &mut Doc, results: &BenchResults) {
    md.heading("Every cell");
    let mut table = Table::new([
        "function",
        "strategy",
        "VMs",
        "cold E2E ms",
        "major faults (vCPU)",
        "page cache MiB",
        "anon MiB",
        "prefetched MiB",
    ]);
    let median = |v: Vec<f64>, digits: usize| {
        Summary::of(&v).map_or("–".into(), |s| format!("{:.digits$}", s.median))
    };
    for function in &results.config.functions {
        for (spec, levels) in results.config.plan() {
            for n in levels {
                let cold = select(results, function, &spec.label, n, true);
                let per_sample = |f: &dyn Fn(&crate::Sample) -> f64| -> Vec<f64> {
                    cold.iter().map(|s| f(s)).collect()
                };
                table.row([
                    function.clone(),
                    spec.label.clone(),
                    n.to_string(),
                    fmt_summary(Summary::of(&e2e(&cold)), Metric::ColdE2e),
                    median(
                        cold.iter()
                            .flat_map(|s| s.report.runs.iter().map(|r| r.major_faults as f64))
                            .collect(),
                        0,
                    ),
                    median(
                        per_sample(&|s| s.report.memory.page_cache_kib as f64 / 1024.0),
                        1,
                    ),
                    median(per_sample(&|s| s.report.memory.anon_kib as f64 / 1024.0), 1),
                    median(
                        per_sample(&|s| s.report.prefetch.bytes as f64 / 1048576.0),
                        1,
                    ),
                ]);
            }
        }
    }
    md.table(&table);
}

/// The host's costs measured in the run, and what they predict for each function: the
/// terms every comparison is explained in.
pub(super) fn calibration(md: &mut Doc, results: &BenchResults) {
    let cal = &results.calibration;
    let faults = cal.faults();
    if faults.is_empty() && cal.device.is_empty() {
        return;
    }
    md.heading("Host calibration");
    if !faults.is_empty() {
        md.para(
            "Fault costs, measured with this VMM (`faultprobe` touches one word per 4 KiB page \
             of 64 MiB; warm page cache; median of the samples over the faults taken).",
        );
        let mut table = Table::new([
            "fault",
            "strategy",
            "faults",
            "µs per fault",
            "µs per 4 KiB",
            "samples, ms",
        ]);
        for (name, c) in &faults {
            let per_page =
                c.us * c.faults as f64 / snapbpf_functions::faultprobe::REGION_PAGES as f64;
            let samples: Vec<String> = c.exec_ms.iter().map(|v| format!("{v:.1}")).collect();
            table.row([
                name.to_string(),
                format!("`{}`", c.strategy),
                c.faults.to_string(),
                format!("{:.2}", c.us),
                format!("{per_page:.3}"),
                samples.join(", "),
            ]);
        }
        md.table(&table);
    }
    predictions(md, results);
    if !cal.device.is_empty() {
        md.para(&format!(
            "The device before and after each function, under the run's profile (direct \
             reads: sequential MB/s, random 4 KiB reads/s). A function whose device changed by \
             more than {:.0} % is flagged: its cold cells were measured on another device than \
             the one stamped.",
            crate::calibrate::DRIFT_LIMIT * 100.0
        ));
        let mut table = Table::new([
            "function",
            "before MB/s",
            "before reads/s",
            "after MB/s",
            "after reads/s",
            "drift",
            "",
        ]);
        for d in &cal.device {
            table.row([
                d.function.clone(),
                format!("{:.0}", d.before.seq_mb_s),
                format!("{:.0}", d.before.rand_4k_iops),
                format!("{:.0}", d.after.seq_mb_s),
                format!("{:.0}", d.after.rand_4k_iops),
                format!("{:.0} %", d.drift * 100.0),
                if d.drifted { "**drifted**" } else { "" }.into(),
            ]);
        }
        md.table(&table);
    }
}

/// What the fault costs predict for each function's working set: mapping it at 4 KiB,
/// mapping it in 2 MiB folios, and reading it from the device.
fn predictions(md: &mut Doc, results: &BenchResults) {
    let cal = &results.calibration;
    let subject = &results.config.subject;
    let read_4k = cal.read_fault_4k.as_ref().map(|c| c.us);
    let fault_2m = cal.fault_2m.as_ref().map(|c| c.us);
    if read_4k.is_none() && fault_2m.is_none() {
        return;
    }
    md.para(&format!(
        "What they predict per function: the working set's pages times a 4 KiB fault; its \
         2 MiB regions (the page cache {subject} holds after a cold restore, over 2 MiB) \
         times a 2 MiB fault; the device's time to deliver it (the device bound); the warm \
         floor (fastest warm median of any strategy). Whichever of the first three is \
         largest bounds a cold restore at that page size."
    ));
    let mut table = Table::new([
        "function",
        "working set MiB",
        "4 KiB faults ms",
        "2 MiB faults ms",
        "device ms",
        "warm floor ms",
        "bound at 4 KiB",
    ]);
    let strategies = plan_labels(results);
    for function in &results.config.functions {
        let pages = results
            .records
            .iter()
            .find(|r| &r.function == function && subject.starts_with(r.strategy.as_str()))
            .map(|r| r.ws_pages);
        let device = results
            .device_bounds
            .iter()
            .find(|b| &b.function == function)
            .and_then(|b| Summary::of(&b.ms))
            .map(|s| s.median);
        let regions = select(results, function, subject, 1, true)
            .first()
            .map(|s| (s.report.memory.page_cache_kib as f64 / 2048.0).ceil());
        let floor = strategies
            .iter()
            .filter_map(|s| Summary::of(&e2e(&select(results, function, s, 1, false))))
            .map(|s| s.median)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
        let at_4k = pages.zip(read_4k).map(|(p, c)| p as f64 * c / 1e3);
        let at_2m = regions.zip(fault_2m).map(|(r, c)| r * c / 1e3);
        let bound = match (at_4k, device) {
            (Some(f), Some(d)) if f > d => "faults",
            (Some(_), Some(_)) => "device",
            _ => "–",
        };
        let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}"));
        table.row([
            function.clone(),
            pages.map_or("–".into(), |p| format!("{:.1}", p as f64 / 256.0)),
            ms(at_4k),
            ms(at_2m),
            ms(device),
            ms(floor),
            bound.into(),
        ]);
    }
    md.table(&table);
}
