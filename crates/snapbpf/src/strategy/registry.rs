//! The registry of restore strategies: the one place that lists them.
//!
//! A strategy is a module under [`crate::strategy`] (its code, its options type and its
//! [`StrategyInfo`] row), registered here by one line of [`REGISTRY`]. Everything else
//! (the CLI's `--strategy` parser and option flags, `snapbpf strategies`, `inspect`, the
//! bench plan, its tables and charts) reads the registry and never names a strategy; the
//! plans below are the only strategy names spelled outside their modules.
//!
//! A spec is written `name[:option[:option=value]...]` on the command line (`snapbpf:thp`,
//! `snapbpf:no-pv:thp`, `reap:uffd-handler=/run/h.sock`); each strategy parses only the
//! options it declares, so a spec that combines a strategy with another's option cannot be
//! built.

use serde::Serialize;

use super::spec::{OptionInfo, SpecError, SpecJson, StrategyInfo, StrategyOption, StrategySpec};
use super::{faasnap, linux, reap, sabre, snapbpf, snapfaas};

/// Every strategy, in the order tables and charts show them.
pub static REGISTRY: &[&StrategyInfo] = &[
    &linux::NORA_INFO,
    &linux::RA_INFO,
    &reap::INFO,
    &faasnap::INFO,
    &snapbpf::INFO,
    &sabre::INFO,
    &snapfaas::INFO,
];

/// The paper's evaluation, as the bench runs it by default: the strategies compared at
/// every concurrency level (Figures 3a-3c): every strategy as its paper describes it (Sabre
/// beside REAP, whose working set it compresses; SnapBPF on 4 KiB pages, the paper's
/// design), Linux on huge page-cache folios, and SnapBPF as it runs by default (huge
/// folios where the kernel gives them).
pub const DEFAULT_COMPARISON: &[&str] = &[
    "linux-nora",
    "linux-ra",
    "reap",
    "sabre",
    "faasnap",
    "snapbpf:4k",
    "linux-ra:thp",
    "snapbpf",
];

/// The breakdown of Figure 4 (and the slides), on the paper's 4 KiB pages: the baseline,
/// PV filtering alone, prefetch alone, the paper's SnapBPF (page cache only), ours
/// (prefetched ranges premapped); then both Linux and SnapBPF on huge page-cache folios
/// (SnapBPF's default).
pub const DEFAULT_BREAKDOWN: &[&str] = &[
    "linux-ra",
    "snapbpf:4k:no-prefetch",
    "snapbpf:4k:no-pv",
    "snapbpf:4k:no-premap",
    "snapbpf:4k",
    "linux-ra:thp",
    "snapbpf",
];

/// The strategies the bench measures the host's fault costs with, each faulting one way
/// only: a 4 KiB read fault on a page-cache mapping (no read-around), a 4 KiB anonymous
/// write fault (PV-filtered fresh memory), a 2 MiB fault on huge page-cache folios.
pub const FAULT_PROBES: [&str; 3] = ["linux-nora", "snapbpf:4k:no-prefetch", "linux-ra:thp"];

/// What `snapbpf profile` runs to measure a function's memory behaviour: demand paging
/// with nothing read ahead (what it reads), fresh-allocation filtering alone (what it
/// allocates), and the eBPF capture (its working set, the first artifact of its row).
pub const PROFILE_PROBES: [&str; 3] = ["linux-nora", "snapbpf:no-prefetch", "snapbpf"];

/// The strategy whose policy `snapbpf uffd-handler` serves by default: REAP, the system
/// Firecracker's handler protocol was built for.
pub const HANDLER_DEFAULT: &str = "reap";

/// The spec every speedup is relative to, as in the paper (Linux-RA).
pub fn baseline() -> StrategySpec {
    StrategySpec::of(linux::ReadaheadOptions::default())
}

/// The system under evaluation (SnapBPF): memory is compared relative to it.
pub fn subject() -> StrategySpec {
    StrategySpec::of(snapbpf::SnapbpfOptions::default())
}

/// Names of every strategy, in registry order.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|s| s.name).collect()
}

/// The registry row of strategy `name`.
pub fn info(name: &str) -> Option<&'static StrategyInfo> {
    REGISTRY.iter().copied().find(|s| s.name == name)
}

/// The strategies that take option `option`, joined with "or".
fn owners_of(option: &str) -> String {
    let owners: Vec<&str> = REGISTRY
        .iter()
        .filter(|s| s.options.iter().any(|o| o.name == option))
        .map(|s| s.name)
        .collect();
    owners.join(" or ")
}

/// One option name of any strategy, with the strategies that take it: what front-ends
/// turn into `--NAME` flags.
#[derive(Debug, Clone)]
pub struct SharedOption {
    /// The option as its first strategy declares it.
    pub option: &'static OptionInfo,
    /// The strategies that take it, in registry order.
    pub strategies: Vec<&'static str>,
    /// Each of those strategies' help for it, in the same order.
    pub helps: Vec<&'static str>,
}

/// Every option of every strategy, once per name, in registry order.
pub fn all_options() -> Vec<SharedOption> {
    let mut all: Vec<SharedOption> = Vec::new();
    for info in REGISTRY {
        for option in info.options {
            match all.iter_mut().find(|s| s.option.name == option.name) {
                Some(shared) => {
                    shared.strategies.push(info.name);
                    shared.helps.push(option.help);
                }
                None => all.push(SharedOption {
                    option,
                    strategies: vec![info.name],
                    helps: vec![option.help],
                }),
            }
        }
    }
    all
}

impl StrategySpec {
    /// Parses `name[:option[:option=value]...]`.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let (name, options) = super::spec::split(text);
        Self::with_options(name, &options)
    }

    /// The strategy `name` with `options` (name, value) set.
    pub fn with_options(name: &str, options: &[StrategyOption]) -> Result<Self, SpecError> {
        let info = info(name).ok_or_else(|| SpecError::Unknown {
            name: name.into(),
            known: names().join(", "),
        })?;
        info.parse(options).map_err(|e| match e {
            // Another strategy's option, given to this one.
            SpecError::UnknownOption {
                option, strategy, ..
            } if REGISTRY
                .iter()
                .any(|s| s.options.iter().any(|o| o.name == option)) =>
            {
                SpecError::NotApplicable {
                    owners: owners_of(&option),
                    option,
                    strategy,
                }
            }
            other => other,
        })
    }

    /// The strategy `name` with default options.
    pub fn named(name: &str) -> Result<Self, SpecError> {
        Self::with_options(name, &[])
    }
}

impl<'de> serde::Deserialize<'de> for StrategySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = SpecJson::deserialize(d)?;
        StrategySpec::with_options(&json.strategy, &json.split_options())
            .map_err(serde::de::Error::custom)
    }
}

/// The registry as `snapbpf strategies --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// One entry per strategy.
    pub strategies: Vec<ListedStrategy>,
}

/// One strategy of [`Listing`].
#[derive(Debug, Clone, Serialize)]
pub struct ListedStrategy {
    /// Name.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// Its options' names.
    pub options: Vec<&'static str>,
    /// Whether it has a record phase.
    pub record: bool,
    /// Files its record phase writes.
    pub artifacts: Vec<&'static str>,
    /// The VMMs it runs under.
    pub vmms: Vec<&'static str>,
}

/// The whole registry, for listing.
pub fn listing() -> Listing {
    Listing {
        strategies: REGISTRY
            .iter()
            .copied()
            .map(|s| ListedStrategy {
                name: s.name,
                description: s.description,
                options: s.options.iter().map(|o| o.name).collect(),
                record: s.record,
                artifacts: s.artifacts.to_vec(),
                vmms: s.vmms.iter().map(|v| v.name()).collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_parses_and_round_trips() {
        for &info in REGISTRY {
            let spec = StrategySpec::named(info.name).expect("default spec");
            assert_eq!(spec.name(), info.name);
            assert_eq!(StrategySpec::parse(&spec.to_arg()), Ok(spec.clone()));
            for o in info.options {
                // Values of the option's kind: every choice, a number, a path.
                let texts: Vec<String> = match o.value {
                    Some(v) if v.contains('|') => v
                        .split('|')
                        .map(|c| format!("{}:{}={c}", info.name, o.name))
                        .collect(),
                    Some("N") => vec![format!("{}:{}=2", info.name, o.name)],
                    Some(_) => vec![format!("{}:{}=/x", info.name, o.name)],
                    None => vec![format!("{}:{}", info.name, o.name)],
                };
                let mut changed = false;
                for text in &texts {
                    let with = StrategySpec::parse(text).expect("option parses");
                    changed |= with != spec;
                    assert_eq!(StrategySpec::parse(&with.to_arg()), Ok(with.clone()));
                    let json = serde_json::to_string(&with).expect("json");
                    assert_eq!(serde_json::from_str::<StrategySpec>(&json).ok(), Some(with));
                }
                assert!(
                    changed,
                    "no value of {}:{} changes the spec",
                    info.name, o.name
                );
            }
        }
    }

    #[test]
    fn json_keeps_values_with_colons() {
        let spec = StrategySpec::with_options(
            "reap",
            &[("uffd-handler".into(), Some("/run/a:b.sock".into()))],
        )
        .expect("spec");
        let json = serde_json::to_string(&spec).expect("json");
        assert_eq!(
            json,
            r#"{"strategy":"reap","options":["uffd-handler=/run/a:b.sock"]}"#
        );
        assert_eq!(serde_json::from_str::<StrategySpec>(&json).ok(), Some(spec));
        let foreign = r#"{"strategy":"reap","options":["thp"]}"#;
        let e = serde_json::from_str::<StrategySpec>(foreign).expect_err("refused");
        assert!(e.to_string().contains("--thp applies only"), "{e}");
    }

    #[test]
    fn misapplied_options_are_refused() {
        let e = StrategySpec::parse("linux-nora:thp").expect_err("thp on nora");
        assert_eq!(
            e.to_string(),
            "--thp applies only to the linux-ra or snapbpf strategy"
        );
        let e = StrategySpec::parse("snapbpf:fast").expect_err("unknown option");
        assert!(e.to_string().contains("unknown option 'fast'"), "{e}");
        let e = StrategySpec::parse("nope").expect_err("unknown");
        assert!(e.to_string().starts_with("unknown strategy 'nope'"), "{e}");
        assert!(
            StrategySpec::parse("reap:uffd-handler").is_err(),
            "needs a value"
        );
        assert!(
            StrategySpec::parse("snapbpf:thp=1").is_err(),
            "takes no value"
        );
    }

    #[test]
    fn plans_parse() {
        for text in DEFAULT_COMPARISON
            .iter()
            .chain(DEFAULT_BREAKDOWN)
            .chain(&FAULT_PROBES)
            .chain(&PROFILE_PROBES)
            .chain(&[HANDLER_DEFAULT])
        {
            StrategySpec::parse(text).expect(text);
        }
        assert_eq!(baseline().info().name, "linux-ra");
        assert_eq!(subject().info().name, "snapbpf");
        assert!(subject().info().record && !subject().info().artifacts.is_empty());
    }

    #[test]
    fn options_are_listed_once_with_their_strategies() {
        let all = all_options();
        let thp = all.iter().find(|s| s.option.name == "thp").expect("thp");
        assert_eq!(thp.strategies, ["linux-ra", "snapbpf"]);
        let mut names: Vec<_> = all.iter().map(|s| s.option.name).collect();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }

    #[test]
    fn labels_name_the_options() {
        let spec = StrategySpec::parse("snapbpf:thp:no-pv").expect("parses");
        assert_eq!(spec.label(), "snapbpf --no-pv --thp");
        assert_eq!(spec.to_arg(), "snapbpf:no-pv:thp");
    }
}
