//! The paper's figures as data, and Markdown tables of them.
//!
//! [`figures`] derives Figures 3a, 3b, 3c and 4 from the raw samples; the tables here and
//! the charts of [`crate::charts`] both draw from it, so they cannot disagree.

use std::fmt::Write;

use crate::markdown::Doc;
use crate::{BenchResults, Sample, Summary};

mod tables;

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

/// The whole report: provenance, one table per figure, the warm floor, record costs and
/// every cell.
pub fn markdown(results: &BenchResults) -> String {
    let mut md = Doc::default();
    let st = &results.stamp;
    md.para("# snapbpf bench");
    md.para(&format!(
        "git {} · kernel {} · {} ({} cores) · disk {} · {}",
        st.git_rev, st.kernel, st.cpu, st.cores, st.disk, st.date
    ));
    let vmm = &results.config.vmm;
    if vmm.name != "builtin" {
        md.para(&format!(
            "VMM: {} ({}); E2E runs from the restore request (starting the VMM process) to \
             the guest's result line, and includes the VMM's snapshot load.",
            vmm.name,
            vmm.version.as_deref().unwrap_or("version unknown")
        ));
    }
    md.para(&format!(
        "{} cold sample(s) per cell after {} warm-up(s), the snapshot's files evicted before \
         each; {} warm sample(s); input {}.",
        results.config.repeat,
        results.config.warmup,
        results.config.warm_repeat,
        results.config.input
    ));
    tables::wrong(&mut md, results);
    tables::calibration(&mut md, results);
    for fig in figures(results) {
        tables::figure(&mut md, &fig, &results.calibration);
    }
    tables::warm(&mut md, results);
    tables::records(&mut md, results);
    tables::bounds(&mut md, results);
    tables::cells(&mut md, results);
    let mut text = md.into_string();
    text.push_str(
        "Memory is the run's system memory: the snapshot's page cache counted once plus every \
         VM's anonymous memory, with all VMs alive after their invocation.\n",
    );
    text
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
