//! One benchmark run, as named stages: calibrate the host, then per function prepare it
//! (reference checksum, snapshot, record phases, device bound), measure every cell of the
//! plan, check the device and keep what was measured so far.

use std::path::{Path, PathBuf};

use crate::progress::Progress;
use crate::{
    calibrate, stamp, write_json, BenchConfig, BenchError, BenchResults, Cell, Engine, Reference,
    Sample, StrategyEntry, WrongAnswer, PARTIAL_RESULTS,
};

/// Runs the benchmark on `engine`. `git_rev` stamps the results.
pub fn run(
    config: &BenchConfig,
    engine: &dyn Engine,
    git_rev: &str,
) -> Result<BenchResults, BenchError> {
    config.validate()?;
    let plan = config.plan();
    if plan.is_empty() {
        return Err(BenchError::Config("no strategy to measure".into()));
    }
    let snap_dir = config.out.join("snapshots");
    std::fs::create_dir_all(&snap_dir).map_err(|source| BenchError::Io {
        path: snap_dir.clone(),
        source,
    })?;
    let invocations: u64 = plan
        .iter()
        .map(|(_, levels)| {
            levels.len() as u64 * u64::from(config.repeat + config.warmup)
                + u64::from(config.warm_repeat)
        })
        .sum();
    let mut runner = Runner {
        config,
        engine,
        git_rev,
        plan,
        progress: Progress::new(config.functions.len() as u64 * invocations),
        results: BenchResults {
            stamp: stamp::stamp(git_rev, &snap_dir),
            config: config.clone(),
            snapshots: Vec::new(),
            records: Vec::new(),
            device_bounds: Vec::new(),
            samples: Vec::new(),
            references: Vec::new(),
            wrong: Vec::new(),
            calibration: calibrate::Calibration::default(),
        },
        snap_dir,
    };
    runner.calibrate()?;
    for function in &config.functions {
        let device_before = runner.device_speed(function)?;
        let prepared = runner.prepare(function)?;
        runner.measure_function(&prepared)?;
        runner.check_device(function, device_before)?;
        // A long run that is interrupted keeps what it measured so far.
        runner.results.stamp = stamp::stamp(git_rev, &runner.snap_dir);
        write_json(&runner.results, &config.out.join(PARTIAL_RESULTS))?;
    }
    runner.finish()
}

/// Where a kept sample ran in its function's sequence.
#[derive(Debug, Clone)]
struct Placement {
    round: Option<u32>,
    after: Option<String>,
}

/// The shuffling seed of one function's rounds: the run's seed mixed with the function's
/// name, so each function gets its own orders and a run can be repeated exactly.
fn round_seed(seed: u64, function: &str) -> u64 {
    function.bytes().fold(seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A function ready to measure: its snapshot and the checksum every sample must return.
struct Prepared {
    function: String,
    dir: PathBuf,
    expected: String,
}

/// The state of one run: its plan, its progress and the results gathered so far.
struct Runner<'a> {
    config: &'a BenchConfig,
    engine: &'a dyn Engine,
    git_rev: &'a str,
    plan: Vec<(StrategyEntry, Vec<u32>)>,
    progress: Progress,
    results: BenchResults,
    snap_dir: PathBuf,
}

impl Runner<'_> {
    /// The host's fault costs, measured with the engine's probe strategies.
    fn calibrate(&mut self) -> Result<(), BenchError> {
        self.progress.stage("calibration: fault costs (faultprobe)");
        let progress = &self.progress;
        self.results.calibration = calibrate::fault_costs(
            self.engine,
            &self.config.probes,
            &self.snap_dir,
            self.config.timeout,
            &|m| progress.warn(m),
        )?;
        for (name, cost) in self.results.calibration.faults() {
            self.progress.note(&format!(
                "calibration: {name}: {:.2} µs ({})",
                cost.us, cost.strategy
            ));
        }
        Ok(())
    }

    /// What the device delivers now (`None`: the engine cannot tell).
    fn device_speed(&self, function: &str) -> Result<Option<calibrate::DeviceSpeed>, BenchError> {
        self.engine
            .device_speed()
            .transpose()
            .map_err(|source| BenchError::Device {
                function: function.to_string(),
                strategy: "(device check)".into(),
                source,
            })
    }

    /// The reference checksum (a fresh boot), the snapshot, every strategy's record phase
    /// (once per function, so its cost is measured; variants share it), and the device
    /// time of the subject's prefetch.
    fn prepare(&mut self, function: &str) -> Result<Prepared, BenchError> {
        let config = self.config;
        self.progress
            .stage(&format!("{function}: reference checksum (fresh boot)"));
        let expected = self
            .engine
            .reference(function, config.input, config.timeout)
            .map_err(|source| BenchError::Reference {
                function: function.into(),
                source,
            })?;
        self.results.references.push(Reference {
            function: function.into(),
            input: config.input,
            checksum: expected.clone(),
        });
        self.progress.stage(&format!("{function}: snapshot"));
        let dir = self.snap_dir.join(function);
        let facts =
            self.engine
                .snapshot(function, &dir)
                .map_err(|source| BenchError::Snapshot {
                    function: function.into(),
                    source,
                })?;
        self.results.snapshots.push(facts);
        self.record_all(function, &dir)?;
        self.device_bound(function, &dir)?;
        Ok(Prepared {
            function: function.into(),
            dir,
            expected,
        })
    }

    /// Every strategy's record phase, once per function.
    fn record_all(&mut self, function: &str, dir: &Path) -> Result<(), BenchError> {
        let mut recorded: Vec<String> = Vec::new();
        for (entry, _) in &self.plan {
            if recorded.contains(&entry.name) || !entry.record {
                continue;
            }
            recorded.push(entry.name.clone());
            self.progress
                .stage(&format!("{function}: record {}", entry.name));
            let facts = self
                .engine
                .record(dir, entry, self.config.input, self.config.timeout)
                .map_err(|source| BenchError::Record {
                    function: function.into(),
                    strategy: entry.name.clone(),
                    source,
                })?;
            self.results.records.push(facts);
        }
        Ok(())
    }

    /// The device bound: how long the device takes for the ranges the system under
    /// evaluation prefetches.
    fn device_bound(&mut self, function: &str, dir: &Path) -> Result<(), BenchError> {
        let Some((subject, _)) = self
            .plan
            .iter()
            .find(|(e, _)| e.label == self.config.subject)
        else {
            return Ok(());
        };
        if let Some(bound) = self.engine.device_time(dir, subject, self.config.repeat) {
            self.progress
                .stage(&format!("{function}: device time for the working set"));
            let bound = bound.map_err(|source| BenchError::Device {
                function: function.into(),
                strategy: subject.label.clone(),
                source,
            })?;
            self.results.device_bounds.push(bound);
        }
        Ok(())
    }

    /// Every cell of a function: each cell's warm-ups, then `repeat` rounds that run
    /// every (strategy, concurrency) cell once each in an order shuffled per round from
    /// the run's seed, then each strategy's warm samples. Measuring strategy after
    /// strategy instead would put the device's drift on some strategies and not others.
    fn measure_function(&mut self, at: &Prepared) -> Result<(), BenchError> {
        let config = self.config;
        let function = &at.function;
        let cells: Vec<(StrategyEntry, u32)> = self
            .plan
            .iter()
            .flat_map(|(entry, levels)| levels.iter().map(move |&c| (entry.clone(), c)))
            .collect();
        if config.warmup > 0 {
            for (entry, concurrency) in &cells {
                self.progress.stage(&format!(
                    "{function} · {} · warm-up · x{concurrency}",
                    entry.label
                ));
                self.measure(at, entry, *concurrency, true, config.warmup, None)?;
            }
        }
        let mut rng = fastrand::Rng::with_seed(round_seed(config.seed.unwrap_or(0), function));
        let mut previous: Option<String> = None;
        for round in 0..config.repeat {
            let mut order = cells.clone();
            rng.shuffle(&mut order);
            for (entry, concurrency) in &order {
                self.progress.stage(&format!(
                    "{function} · round {} of {} · {} · cold · x{concurrency}",
                    round + 1,
                    config.repeat,
                    entry.label
                ));
                let place = Placement {
                    round: Some(round),
                    after: previous.clone(),
                };
                self.measure(at, entry, *concurrency, true, 1, Some(place))?;
                previous = Some(format!("{} x{concurrency}", entry.label));
            }
        }
        if config.warm_repeat > 0 {
            for (entry, _) in self.plan.clone() {
                self.progress
                    .stage(&format!("{function} · {} · warm · x1", entry.label));
                let place = Placement {
                    round: None,
                    after: None,
                };
                self.measure(at, &entry, 1, false, config.warm_repeat, Some(place))?;
            }
        }
        Ok(())
    }

    /// `runs` invocations of one cell; samples whose every VM returned the reference
    /// checksum are kept (when `keep` says where they ran: warm-ups have none), any
    /// other is a wrong answer and never a sample.
    fn measure(
        &mut self,
        at: &Prepared,
        entry: &StrategyEntry,
        concurrency: u32,
        cold: bool,
        runs: u32,
        keep: Option<Placement>,
    ) -> Result<(), BenchError> {
        let cell = Cell {
            strategy: entry.clone(),
            concurrency,
            cold,
            input: self.config.input,
            timeout: self.config.timeout,
        };
        for _ in 0..runs {
            let report =
                self.engine
                    .invoke(&at.dir, &cell)
                    .map_err(|source| BenchError::Invoke {
                        function: at.function.clone(),
                        strategy: entry.label.clone(),
                        concurrency,
                        source,
                    })?;
            self.progress.inc();
            let bad: Vec<WrongAnswer> = report
                .runs
                .iter()
                .enumerate()
                .filter(|(_, r)| r.checksum != at.expected)
                .map(|(vm, r)| WrongAnswer {
                    function: at.function.clone(),
                    strategy: entry.label.clone(),
                    concurrency,
                    cold,
                    vm,
                    checksum: r.checksum.clone(),
                    expected: at.expected.clone(),
                })
                .collect();
            if !bad.is_empty() {
                for w in &bad {
                    self.progress
                        .error(&format!("WRONG ANSWER, sample void: {w}"));
                }
                self.results.wrong.extend(bad);
                continue;
            }
            if let Some(place) = &keep {
                self.results.samples.push(Sample {
                    function: at.function.clone(),
                    strategy: entry.label.clone(),
                    concurrency,
                    cold,
                    round: place.round,
                    after: place.after.clone(),
                    report,
                });
            }
        }
        Ok(())
    }

    /// The device measured again after `function`: a drift over the threshold flags its
    /// cells.
    fn check_device(
        &mut self,
        function: &str,
        before: Option<calibrate::DeviceSpeed>,
    ) -> Result<(), BenchError> {
        let (Some(before), Some(after)) = (before, self.device_speed(function)?) else {
            return Ok(());
        };
        let check = calibrate::DeviceCheck::new(function, before, after);
        if check.drifted {
            self.progress.warn(&format!(
                "{function}: the device drifted {:.0} % while it was measured ({:.0} → {:.0} MB/s, {:.0} → {:.0} random reads/s): its cells are flagged",
                check.drift * 100.0,
                before.seq_mb_s,
                after.seq_mb_s,
                before.rand_4k_iops,
                after.rand_4k_iops
            ));
        }
        self.results.calibration.device.push(check);
        Ok(())
    }

    /// Writes the final results and fails the run if any sample was a wrong answer.
    fn finish(mut self) -> Result<BenchResults, BenchError> {
        self.progress.finish();
        self.results.stamp = stamp::stamp(self.git_rev, &self.snap_dir);
        let out = &self.config.out;
        let path = out.join("results.json");
        write_json(&self.results, &path)?;
        let _ = std::fs::remove_file(out.join(PARTIAL_RESULTS));
        if let Some(first) = self.results.wrong.first() {
            return Err(BenchError::WrongAnswers {
                count: self.results.wrong.len(),
                first: first.to_string(),
                path,
            });
        }
        Ok(self.results)
    }
}
