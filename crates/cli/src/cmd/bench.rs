//! `snapbpf bench`: the evaluation harness.

use std::path::PathBuf;

use anyhow::Result;
use snapbpf::strategy::{StrategySpec, STRATEGY_NAMES};
use snapbpf_bench::BenchConfig;

/// Snapshot functions and compare restore strategies, cold and warm, alone and concurrent.
///
/// Writes raw samples (results.json) and tables (summary.md) under --out and prints the
/// tables.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Functions, comma-separated (default: all; with --quick: a small subset).
    #[arg(long, value_delimiter = ',')]
    functions: Vec<String>,
    /// Strategies, comma-separated; `snapbpf:no-pv`, `snapbpf:no-prefetch`,
    /// `snapbpf:no-premap` select the breakdown variants, `linux-ra:thp` / `snapbpf:thp`
    /// huge page-cache folios (default: every strategy, plus `snapbpf:thp`).
    #[arg(long, value_delimiter = ',')]
    strategies: Vec<String>,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    concurrency: Vec<u32>,
    /// Measured cold samples per cell.
    #[arg(long, default_value_t = 5)]
    repeat: u32,
    /// Unmeasured cold runs before each cell's samples.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Input number of every invocation.
    #[arg(long, default_value_t = 0)]
    input: u32,
    /// Output directory.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// A few-minute subset: fewer functions, repeats and no warm-up.
    #[arg(long)]
    quick: bool,
    /// Longest one invocation may run, seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

/// Functions of the quick subset, where the suite has them.
const QUICK_FUNCTIONS: &[&str] = &["pyaes", "image", "graph_bfs"];

fn parse_strategy(s: &str) -> StrategySpec {
    let (name, variant) = s.split_once(':').unwrap_or((s, ""));
    let mut spec = StrategySpec::named(name);
    spec.no_pv = variant == "no-pv";
    spec.no_prefetch = variant == "no-prefetch";
    spec.no_premap = variant == "no-premap";
    spec.thp = variant == "thp";
    spec
}

pub fn run(args: Args) -> Result<()> {
    let functions = if !args.functions.is_empty() {
        args.functions.clone()
    } else if args.quick {
        QUICK_FUNCTIONS
            .iter()
            .filter(|f| snapbpf_functions::info(f).is_some())
            .map(|f| f.to_string())
            .collect()
    } else {
        snapbpf_functions::FUNCTIONS
            .iter()
            .filter(|f| f.workload)
            .map(|f| f.name.to_string())
            .collect()
    };
    let strategies = if args.strategies.is_empty() {
        // Every strategy as its paper describes it, plus SnapBPF on huge page-cache folios,
        // the fastest configuration on hosts with nested KVM (docs/results/README.md).
        STRATEGY_NAMES
            .iter()
            .map(|s| StrategySpec::named(s))
            .chain(std::iter::once(parse_strategy("snapbpf:thp")))
            .collect()
    } else {
        args.strategies.iter().map(|s| parse_strategy(s)).collect()
    };
    let (repeat, warmup, warm_repeat) = if args.quick {
        (args.repeat.min(3), 0, 1)
    } else {
        (args.repeat, args.warmup, args.repeat.min(3))
    };
    let config = BenchConfig {
        functions,
        strategies,
        concurrency: args.concurrency.clone(),
        repeat,
        warmup,
        warm_repeat,
        input: args.input,
        out: args.out.clone(),
        timeout: super::secs(args.timeout_secs),
    };
    let exe = super::current_exe()?;
    eprintln!(
        "bench: {} function(s) x {} strategies x concurrency {:?}, {} sample(s) each, into {}",
        config.functions.len(),
        config.strategies.len(),
        config.concurrency,
        config.repeat,
        config.out.display()
    );
    let results = snapbpf_bench::run(
        &config,
        &|req| super::worker_command(&exe, req),
        env!("SNAPBPF_GIT_REV"),
    )?;
    let summary = snapbpf_bench::write_results(&results)?;
    println!("{summary}");
    eprintln!(
        "raw samples: {}, tables: {}",
        config.out.join("results.json").display(),
        config.out.join("summary.md").display()
    );
    Ok(())
}
