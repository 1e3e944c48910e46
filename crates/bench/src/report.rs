//! Markdown tables of benchmark results.

use std::fmt::Write;

use crate::{BenchResults, Sample, Summary};

/// Per-VM E2E latencies of matching samples (every VM of every run).
fn e2e(samples: &[&Sample]) -> Vec<f64> {
    samples
        .iter()
        .flat_map(|s| s.report.runs.iter().map(|r| r.e2e_ms))
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

fn fmt_summary(s: Option<Summary>) -> String {
    match s {
        Some(s) => format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max),
        None => "–".into(),
    }
}

/// The comparison tables: per concurrency level, cold E2E per function and strategy
/// (median, min–max over every VM of every sample) with the ratio to `linux-ra`, the warm
/// floor, and the run's system memory.
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
        "{} cold samples per cell after {} warm-up(s); {} warm sample(s); input {}. \
         Latencies in ms: median (min–max) over every VM of every sample.\n",
        results.config.repeat,
        results.config.warmup,
        results.config.warm_repeat,
        results.config.input
    );
    let strategies: Vec<String> = results
        .config
        .strategies
        .iter()
        .map(|s| s.label())
        .collect();
    for &concurrency in &results.config.concurrency {
        let _ = writeln!(md, "## Cold E2E, {concurrency} concurrent VM(s)\n");
        let _ = writeln!(
            md,
            "| function | strategy | cold E2E ms | vs linux-ra | warm E2E ms | major faults | memory MiB |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for function in &results.config.functions {
            let base = Summary::of(&e2e(&select(
                results,
                function,
                "linux-ra",
                concurrency,
                true,
            )));
            for strategy in &strategies {
                let cold = select(results, function, strategy, concurrency, true);
                let cold_sum = Summary::of(&e2e(&cold));
                let warm = Summary::of(&e2e(&select(results, function, strategy, 1, false)));
                let ratio = match (cold_sum, base) {
                    (Some(c), Some(b)) if c.median > 0.0 => format!("{:.2}x", b.median / c.median),
                    _ => "–".into(),
                };
                let faults = Summary::of(
                    &cold
                        .iter()
                        .flat_map(|s| s.report.runs.iter().map(|r| r.major_faults as f64))
                        .collect::<Vec<_>>(),
                );
                let memory = Summary::of(
                    &cold
                        .iter()
                        .map(|s| s.report.memory.total_kib as f64 / 1024.0)
                        .collect::<Vec<_>>(),
                );
                let _ = writeln!(
                    md,
                    "| {function} | {strategy} | {} | {ratio} | {} | {} | {} |",
                    fmt_summary(cold_sum),
                    fmt_summary(warm),
                    faults
                        .map(|f| format!("{:.0}", f.median))
                        .unwrap_or_else(|| "–".into()),
                    memory
                        .map(|m| format!("{:.1}", m.median))
                        .unwrap_or_else(|| "–".into()),
                );
            }
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(
        md,
        "\"vs linux-ra\" is linux-ra's median cold E2E divided by the strategy's: above 1 is faster. \
         Memory is the run's system memory (snapshot page cache counted once plus every VM's \
         anonymous memory)."
    );
    md
}
