//! The paper's figures as data, and Markdown tables of them.
//!
//! [`figures`] derives Figures 3a, 3b, 3c and 4 from the raw samples; the tables here and
//! the charts of [`crate::charts`] both draw from it, so they cannot disagree.

use std::fmt::Write;

use crate::{BenchResults, Sample, Summary};

/// What a figure plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Cold end-to-end latency per VM, ms.
    ColdE2e,
    /// System memory of the run (snapshot page cache once plus every VM's anonymous
    /// memory), MiB.
    Memory,
    /// Cold E2E of the baseline divided by the strategy's (above 1 is faster).
    Speedup,
}

/// One figure: a value with spread per strategy and function.
#[derive(Debug, Clone)]
pub struct Figure {
    /// File stem and anchor: `fig3a`, `fig3b`, `fig3c`, `fig4`.
    pub id: &'static str,
    /// Title.
    pub title: String,
    /// What is plotted.
    pub metric: Metric,
    /// VMs run at once.
    pub concurrency: u32,
    /// Functions (x axis).
    pub functions: Vec<String>,
    /// Strategy labels (bar series).
    pub strategies: Vec<String>,
    /// `cells[strategy][function]`: median with min and max; `None` when not measured.
    pub cells: Vec<Vec<Option<Summary>>>,
    /// `floors[strategy][function]`: the warm median, for cold latency with one VM;
    /// empty otherwise.
    pub floors: Vec<Vec<Option<f64>>>,
    /// Label of the strategy speedups are relative to.
    pub baseline: String,
    /// Per strategy: its position among the run's strategies and among the variants of
    /// its own strategy (`(strategy, variant)`), so every figure colours it alike.
    pub series: Vec<(usize, usize)>,
    /// Label of the system under evaluation, which memory is compared to.
    pub subject: String,
}

impl Figure {
    /// Unit of the values.
    pub fn unit(&self) -> &'static str {
        match self.metric {
            Metric::ColdE2e => "ms",
            Metric::Memory => "MiB",
            Metric::Speedup => "x",
        }
    }

    /// Label of the value axis.
    pub fn axis_label(&self) -> String {
        match self.metric {
            Metric::ColdE2e => "cold E2E per VM, ms (log scale)".into(),
            Metric::Memory => "system memory, MiB (log scale)".into(),
            Metric::Speedup => format!("speedup over {} (cold E2E)", self.baseline),
        }
    }
}

/// The strategy of a label: its first word (`snapbpf --thp` is a variant of `snapbpf`).
fn strategy_of(label: &str) -> &str {
    label.split_whitespace().next().unwrap_or(label)
}

/// `(strategy, variant)` position of `label` in `labels` (see [`Figure::series`]).
fn series_of(labels: &[String], label: &str) -> (usize, usize) {
    let mut strategies: Vec<&str> = Vec::new();
    for l in labels {
        if !strategies.contains(&strategy_of(l)) {
            strategies.push(strategy_of(l));
        }
    }
    let own = strategy_of(label);
    let strategy = strategies
        .iter()
        .position(|s| *s == own)
        .unwrap_or(strategies.len());
    let variant = labels
        .iter()
        .filter(|l| strategy_of(l) == own)
        .position(|l| l == label)
        .unwrap_or(0);
    (strategy, variant)
}

/// Per-VM E2E latencies of matching samples (every VM of every run).
fn e2e(samples: &[&Sample]) -> Vec<f64> {
    samples
        .iter()
        .flat_map(|s| s.report.runs.iter().map(|r| r.e2e_ms))
        .collect()
}

/// System memory of matching samples, MiB.
fn memory(samples: &[&Sample]) -> Vec<f64> {
    samples
        .iter()
        .map(|s| s.report.memory.total_kib as f64 / 1024.0)
        .collect()
}

fn select<'a>(
    results: &'a BenchResults,
    function: &str,
    strategy: &str,
    concurrency: u32,
    cold: bool,
) -> Vec<&'a Sample> {
    results
        .samples
        .iter()
        .filter(|s| {
            s.function == function
                && s.strategy == strategy
                && s.concurrency == concurrency
                && s.cold == cold
        })
        .collect()
}

/// Cold E2E summary of one cell.
fn cold_e2e(r: &BenchResults, function: &str, strategy: &str, n: u32) -> Option<Summary> {
    Summary::of(&e2e(&select(r, function, strategy, n, true)))
}

/// Speedup of `strategy` over the run's baseline: the median is the ratio of medians; the
/// spread divides the baseline's median by the strategy's slowest and fastest VM.
fn speedup(r: &BenchResults, function: &str, strategy: &str) -> Option<Summary> {
    let base = cold_e2e(r, function, &r.config.baseline, 1)?;
    let s = cold_e2e(r, function, strategy, 1)?;
    (s.min > 0.0).then(|| Summary {
        n: s.n,
        median: base.median / s.median,
        min: base.median / s.max,
        max: base.median / s.min,
    })
}

/// The paper's figures that `results` has data for: 3a (cold E2E, one VM), 3b and 3c
/// (cold E2E and memory at the highest concurrency) over the comparison strategies, and
/// 4 (speedup over linux-ra, one VM) over the breakdown strategies.
pub fn figures(results: &BenchResults) -> Vec<Figure> {
    let config = &results.config;
    let functions = config.functions.clone();
    let plan_labels: Vec<String> = config.plan().iter().map(|(s, _)| s.label.clone()).collect();
    let compared: Vec<String> = config.strategies.iter().map(|s| s.label.clone()).collect();
    let breakdown: Vec<String> = config.breakdown.iter().map(|s| s.label.clone()).collect();
    let figure = |id, title: String, metric, concurrency, strategies: &[String]| {
        let cells = strategies
            .iter()
            .map(|strategy| {
                functions
                    .iter()
                    .map(|f| match metric {
                        Metric::ColdE2e => cold_e2e(results, f, strategy, concurrency),
                        Metric::Memory => {
                            Summary::of(&memory(&select(results, f, strategy, concurrency, true)))
                        }
                        Metric::Speedup => speedup(results, f, strategy),
                    })
                    .collect()
            })
            .collect();
        let floors = if metric == Metric::ColdE2e && concurrency == 1 {
            strategies
                .iter()
                .map(|strategy| {
                    functions
                        .iter()
                        .map(|f| {
                            Summary::of(&e2e(&select(results, f, strategy, 1, false)))
                                .map(|s| s.median)
                        })
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        Figure {
            series: strategies
                .iter()
                .map(|s| series_of(&plan_labels, s))
                .collect(),
            baseline: config.baseline.clone(),
            subject: config.subject.clone(),
            id,
            title,
            metric,
            concurrency,
            functions: functions.clone(),
            strategies: strategies.to_vec(),
            cells,
            floors,
        }
    };
    let mut out = Vec::new();
    if !compared.is_empty() && config.concurrency.contains(&1) {
        out.push(figure(
            "fig3a",
            "Figure 3a: cold end-to-end latency, one VM".into(),
            Metric::ColdE2e,
            1,
            &compared,
        ));
    }
    if let Some(&n) = config.concurrency.iter().filter(|&&n| n > 1).max() {
        if !compared.is_empty() {
            out.push(figure(
                "fig3b",
                format!("Figure 3b: cold end-to-end latency per VM, {n} concurrent VMs"),
                Metric::ColdE2e,
                n,
                &compared,
            ));
            out.push(figure(
                "fig3c",
                format!("Figure 3c: system memory, {n} concurrent VMs"),
                Metric::Memory,
                n,
                &compared,
            ));
        }
    }
    if !breakdown.is_empty() {
        out.push(figure(
            "fig4",
            format!(
                "Figure 4: breakdown, speedup over {}, one VM",
                config.baseline
            ),
            Metric::Speedup,
            1,
            &breakdown,
        ));
    }
    out
}

fn fmt_value(v: f64, metric: Metric) -> String {
    match metric {
        Metric::Speedup => format!("{v:.2}"),
        _ if v >= 100.0 => format!("{v:.0}"),
        _ => format!("{v:.1}"),
    }
}

fn fmt_summary(s: Option<Summary>, metric: Metric) -> String {
    match s {
        Some(s) => format!(
            "{} ({}–{})",
            fmt_value(s.median, metric),
            fmt_value(s.min, metric),
            fmt_value(s.max, metric)
        ),
        None => "–".into(),
    }
}

fn geomean(values: &[f64]) -> Option<f64> {
    let v: Vec<f64> = values.iter().copied().filter(|v| *v > 0.0).collect();
    (!v.is_empty()).then(|| (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

/// A figure as a table: functions down, strategies across.
fn figure_table(md: &mut String, fig: &Figure, calibration: &crate::calibrate::Calibration) {
    let _ = writeln!(md, "## {}\n", fig.title);
    let _ = writeln!(
        md,
        "Median (min–max), {}{}. Chart: `{}.svg`, `{}.png`.\n",
        fig.unit(),
        match fig.metric {
            Metric::ColdE2e => " over every VM of every sample",
            Metric::Memory => " over samples",
            Metric::Speedup => ": the baseline's median over the strategy's median (spread: over its slowest and fastest VM)",
        },
        fig.id,
        fig.id
    );
    let _ = writeln!(md, "| function | {} |", fig.strategies.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(fig.strategies.len()));
    for (fi, function) in fig.functions.iter().enumerate() {
        let row: Vec<String> = fig
            .cells
            .iter()
            .map(|per_fn| fmt_summary(per_fn[fi], fig.metric))
            .collect();
        // Cells measured while the device drifted (see Host calibration).
        let flag = if calibration.drifted(function) {
            " (device drifted)"
        } else {
            ""
        };
        let _ = writeln!(md, "| {function}{flag} | {} |", row.join(" | "));
    }
    if fig.metric == Metric::Speedup {
        let row: Vec<String> = fig
            .cells
            .iter()
            .map(|per_fn| {
                let medians: Vec<f64> = per_fn.iter().flatten().map(|s| s.median).collect();
                geomean(&medians).map_or("–".into(), |g| format!("{g:.2}"))
            })
            .collect();
        let _ = writeln!(md, "| geomean | {} |", row.join(" | "));
    }
    let _ = writeln!(md);
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
    let _ = writeln!(md, "Ratios, {what}:\n");
    let _ = writeln!(md, "| function | {} |", fig.strategies.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(fig.strategies.len()));
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
        let _ = writeln!(md, "| {function} | {} |", row.join(" | "));
    }
    let row: Vec<String> = columns
        .iter()
        .map(|c| geomean(c).map_or("–".into(), |g| format!("{g:.2}")))
        .collect();
    let _ = writeln!(md, "| geomean | {} |\n", row.join(" | "));
}

/// Warm E2E per strategy and function: the floor with every page in the page cache.
fn warm_table(md: &mut String, results: &BenchResults) {
    let strategies: Vec<String> = results
        .config
        .plan()
        .iter()
        .map(|(s, _)| s.label.clone())
        .collect();
    let _ = writeln!(md, "## Warm end-to-end latency, one VM (the floor)\n");
    let _ = writeln!(
        md,
        "Median (min–max), ms, with the snapshot's pages in the page cache.\n"
    );
    let _ = writeln!(md, "| function | {} |", strategies.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(strategies.len()));
    for function in &results.config.functions {
        let row: Vec<String> = strategies
            .iter()
            .map(|s| {
                fmt_summary(
                    Summary::of(&e2e(&select(results, function, s, 1, false))),
                    Metric::ColdE2e,
                )
            })
            .collect();
        let _ = writeln!(md, "| {function} | {} |", row.join(" | "));
    }
    let _ = writeln!(md);
}

/// The subject's own costs (the paper: loading the offsets takes 1-2 ms, under 1 % of
/// E2E): the time from the restore request to its first prefetch request, against its
/// cold E2E with one VM.
fn overheads_table(md: &mut String, results: &BenchResults) {
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
    let _ = writeln!(
        md,
        "{subject}'s start-up cost: from the restore request to its first prefetch request \
         (loading and checking the working set, opening the memory file), median (min–max) \
         over its cold samples with one VM, and its share of the median E2E.\n"
    );
    let _ = writeln!(md, "| function | first request ms | E2E ms | share |");
    let _ = writeln!(md, "|---|---|---|---|");
    for (function, first, e2e) in rows {
        let _ = writeln!(
            md,
            "| {function} | {:.2} ({:.2}–{:.2}) | {:.0} | {:.2} % |",
            first.median,
            first.min,
            first.max,
            e2e.median,
            100.0 * first.median / e2e.median
        );
    }
    let _ = writeln!(md);
}

/// Snapshot size, working sets, artifacts on disk and the record phases' cost.
fn record_table(md: &mut String, results: &BenchResults) {
    let _ = writeln!(
        md,
        "## Snapshots, working sets, artifacts and record cost\n"
    );
    let _ = writeln!(
        md,
        "Snapshot: guest memory and the blocks its memory file takes on disk. Per strategy with a \
         record phase: pages in the recorded working set, bytes of its artifacts on disk, and \
         the wall time of the record phase (one cold, recorded invocation).\n"
    );
    let _ = writeln!(
        md,
        "| function | snapshot MiB (on disk) | strategy | working set MiB | artifacts | record ms | capture CPU ms |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
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
            let _ = writeln!(md, "| {} | {snapshot} | – | – | – | – | – |", snap.function);
        }
        for r in records {
            let _ = writeln!(
                md,
                "| {} | {snapshot} | {} | {:.1} | {} | {:.0} | {} |",
                snap.function,
                r.strategy,
                r.ws_pages as f64 * 4096.0 / 1048576.0,
                fmt_bytes(r.artifact_bytes()),
                r.ms,
                r.capture_cpu_ms.map_or("–".into(), |c| format!("{c:.1}"))
            );
        }
    }
    let _ = writeln!(md);
    overheads_table(md, results);
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
fn bounds_table(md: &mut String, results: &BenchResults) {
    if results.device_bounds.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Bounds: device time for the working set, and the warm floor
"
    );
    let subject = &results.config.subject;
    let _ = writeln!(
        md,
        "Device time: {subject}'s prefetched ranges read cold by its prefetcher with no VM \
         running, until every page is resident, median (min–max) ms. Warm and cold: \
         {subject} with one VM, median ms.\n"
    );
    let _ = writeln!(
        md,
        "| function | working set MiB | ranges | device ms | MB/s | {subject} warm ms | {subject} cold ms |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for b in &results.device_bounds {
        let device = Summary::of(&b.ms);
        let rate = device.filter(|d| d.median > 0.0).map_or("–".into(), |d| {
            format!("{:.0}", b.bytes as f64 / 1e3 / d.median)
        });
        let median = |cold: bool| {
            Summary::of(&e2e(&select(results, &b.function, subject, 1, cold)))
                .map_or("–".into(), |s| fmt_value(s.median, Metric::ColdE2e))
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} | {} | {rate} | {} | {} |",
            b.function,
            b.bytes as f64 / 1048576.0,
            b.ranges,
            fmt_summary(device, Metric::ColdE2e),
            median(false),
            median(true),
        );
    }
    let _ = writeln!(md);
}

/// VM runs that returned a checksum other than the fresh boot's: void, and said first.
fn wrong_table(md: &mut String, results: &BenchResults) {
    if results.wrong.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## WRONG ANSWERS: {} VM run(s) returned another checksum than a fresh boot\n\n\
         These runs are left out of every figure below; the cells they belong to hold only \
         the samples that were right.\n",
        results.wrong.len()
    );
    let _ = writeln!(
        md,
        "| function | strategy | VMs | cold | VM | checksum | fresh boot |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for w in &results.wrong {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            w.function, w.strategy, w.concurrency, w.cold, w.vm, w.checksum, w.expected
        );
    }
    let _ = writeln!(md);
}

/// Every measured cell with its faults and memory, for the record.
fn cells_table(md: &mut String, results: &BenchResults) {
    let _ = writeln!(md, "## Every cell\n");
    let _ = writeln!(
        md,
        "| function | strategy | VMs | cold E2E ms | major faults (vCPU) | page cache MiB | anon MiB | prefetched MiB |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for function in &results.config.functions {
        for (spec, levels) in results.config.plan() {
            let label = spec.label.clone();
            for n in levels {
                let cold = select(results, function, &label, n, true);
                let med = |v: Vec<f64>| {
                    Summary::of(&v).map_or("–".into(), |s| format!("{:.0}", s.median))
                };
                let med1 = |v: Vec<f64>| {
                    Summary::of(&v).map_or("–".into(), |s| format!("{:.1}", s.median))
                };
                let _ = writeln!(
                    md,
                    "| {function} | {label} | {n} | {} | {} | {} | {} | {} |",
                    fmt_summary(Summary::of(&e2e(&cold)), Metric::ColdE2e),
                    med(cold
                        .iter()
                        .flat_map(|s| s.report.runs.iter().map(|r| r.major_faults as f64))
                        .collect()),
                    med1(
                        cold.iter()
                            .map(|s| s.report.memory.page_cache_kib as f64 / 1024.0)
                            .collect()
                    ),
                    med1(
                        cold.iter()
                            .map(|s| s.report.memory.anon_kib as f64 / 1024.0)
                            .collect()
                    ),
                    med1(
                        cold.iter()
                            .map(|s| s.report.prefetch.bytes as f64 / 1048576.0)
                            .collect()
                    ),
                );
            }
        }
    }
    let _ = writeln!(md);
}

/// The host's costs measured in the run, and what they predict for each function: the
/// terms every comparison is explained in.
fn calibration_table(md: &mut String, results: &BenchResults) {
    let cal = &results.calibration;
    let faults = cal.faults();
    if faults.is_empty() && cal.device.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Host calibration
"
    );
    if !faults.is_empty() {
        let _ = writeln!(
            md,
            "Fault costs, measured with this VMM (`faultprobe` touches one word per 4 KiB page \
             of 64 MiB; warm page cache; median of the samples over the faults taken).\n"
        );
        let _ = writeln!(
            md,
            "| fault | strategy | faults | µs per fault | µs per 4 KiB | samples, ms |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for (name, c) in &faults {
            let per_page =
                c.us * c.faults as f64 / snapbpf_functions::faultprobe::REGION_PAGES as f64;
            let samples: Vec<String> = c.exec_ms.iter().map(|v| format!("{v:.1}")).collect();
            let _ = writeln!(
                md,
                "| {name} | `{}` | {} | {:.2} | {per_page:.3} | {} |",
                c.strategy,
                c.faults,
                c.us,
                samples.join(", ")
            );
        }
        let _ = writeln!(md);
    }
    // What the costs predict for each function's working set: mapping it at 4 KiB, mapping
    // it in 2 MiB folios, and reading it from the device.
    let subject = &results.config.subject;
    let read_4k = cal.read_fault_4k.as_ref().map(|c| c.us);
    let fault_2m = cal.fault_2m.as_ref().map(|c| c.us);
    if read_4k.is_some() || fault_2m.is_some() {
        let _ = writeln!(
            md,
            "What they predict per function: the working set's pages times a 4 KiB fault; its \
             2 MiB regions (the page cache {subject} holds after a cold restore, over 2 MiB) \
             times a 2 MiB fault; the device's time to deliver it (the device bound); the warm \
             floor (fastest warm median of any strategy). Whichever of the first three is \
             largest bounds a cold restore at that page size.\n"
        );
        let _ = writeln!(
            md,
            "| function | working set MiB | 4 KiB faults ms | 2 MiB faults ms | device ms | warm floor ms | bound at 4 KiB |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        let strategies: Vec<String> = results
            .config
            .plan()
            .iter()
            .map(|(s, _)| s.label.clone())
            .collect();
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
            let _ = writeln!(
                md,
                "| {function} | {} | {} | {} | {} | {} | {bound} |",
                pages.map_or("–".into(), |p| format!("{:.1}", p as f64 / 256.0)),
                ms(at_4k),
                ms(at_2m),
                ms(device),
                ms(floor),
            );
        }
        let _ = writeln!(md);
    }
    if !cal.device.is_empty() {
        let _ = writeln!(
            md,
            "The device before and after each function, under the run's profile (direct \
             reads: sequential MB/s, random 4 KiB reads/s). A function whose device changed by \
             more than {:.0} % is flagged: its cold cells were measured on another device than \
             the one stamped.\n",
            crate::calibrate::DRIFT_LIMIT * 100.0
        );
        let _ = writeln!(
            md,
            "| function | before MB/s | before reads/s | after MB/s | after reads/s | drift | |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for d in &cal.device {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} % | {} |",
                d.function,
                d.before.seq_mb_s,
                d.before.rand_4k_iops,
                d.after.seq_mb_s,
                d.after.rand_4k_iops,
                d.drift * 100.0,
                if d.drifted { "**drifted**" } else { "" }
            );
        }
        let _ = writeln!(md);
    }
}

/// The whole report: provenance, one table per figure, the warm floor, record costs and
/// every cell.
pub fn markdown(results: &BenchResults) -> String {
    let mut md = String::new();
    let st = &results.stamp;
    let _ = writeln!(md, "# snapbpf bench\n");
    let _ = writeln!(
        md,
        "git {} · kernel {} · {} ({} cores) · disk {} · {}\n",
        st.git_rev, st.kernel, st.cpu, st.cores, st.disk, st.date
    );
    let _ = writeln!(
        md,
        "{} cold sample(s) per cell after {} warm-up(s), the snapshot's files evicted before \
         each; {} warm sample(s); input {}.\n",
        results.config.repeat,
        results.config.warmup,
        results.config.warm_repeat,
        results.config.input
    );
    wrong_table(&mut md, results);
    calibration_table(&mut md, results);
    for fig in figures(results) {
        figure_table(&mut md, &fig, &results.calibration);
    }
    warm_table(&mut md, results);
    record_table(&mut md, results);
    bounds_table(&mut md, results);
    cells_table(&mut md, results);
    let _ = writeln!(
        md,
        "Memory is the run's system memory: the snapshot's page cache counted once plus every \
         VM's anonymous memory, with all VMs alive after their invocation."
    );
    md
}

/// The short comparison printed at the end of a run: per figure, the medians.
pub fn console(results: &BenchResults) -> String {
    let mut out = String::new();
    for fig in figures(results) {
        let _ = writeln!(out, "{} ({})", fig.title, fig.unit());
        let width = fig
            .strategies
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(8)
            .max(8);
        let _ = write!(out, "{:<14}", "function");
        for s in &fig.strategies {
            let _ = write!(out, " {s:>width$}");
        }
        let _ = writeln!(out);
        for (fi, f) in fig.functions.iter().enumerate() {
            let _ = write!(out, "{f:<14}");
            for per_fn in &fig.cells {
                let v = per_fn[fi].map_or("–".into(), |s| fmt_value(s.median, fig.metric));
                let _ = write!(out, " {v:>width$}");
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geomean_of_ratios() {
        assert_eq!(geomean(&[]), None);
        let g = geomean(&[2.0, 8.0]).expect("non-empty");
        assert!((g - 4.0).abs() < 1e-9);
    }
}
