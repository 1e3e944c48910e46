//! The registry of restore strategies: the one place that lists them.
//!
//! A strategy is a module under [`crate::strategy`] (its code, its options type and its
//! [`StrategyInfo`] row), registered here by one variant of [`StrategySpec`], one entry
//! of [`REGISTRY`] and one arm of `StrategySpec::options`. Everything else (the CLI's
//! `--strategy` parser, `snapbpf strategies`, `inspect`, the bench plan, its tables and
//! charts) reads the registry and never names a strategy.
//!
//! A spec is written `name[:option[:option=value]...]` on the command line (`snapbpf:thp`,
//! `snapbpf:no-pv:thp`, `reap:uffd-handler=/run/h.sock`); each strategy parses only the options it declares,
//! so a spec that combines a strategy with another's option cannot be built.

use serde::{Deserialize, Serialize};

use super::{faasnap, linux, reap, sabre, snapbpf, snapfaas, Strategy};

/// One option a strategy takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OptionInfo {
    /// Its name, as written after `name:` or as a `--NAME` flag.
    pub name: &'static str,
    /// Name of its value, for options that take one (`uffd-handler=SOCKET`).
    pub value: Option<&'static str>,
    /// One line of help.
    pub help: &'static str,
}

/// What the registry says about one strategy.
#[derive(Debug, Clone, Copy)]
pub struct StrategyInfo {
    /// Name, as on the command line.
    pub name: &'static str,
    /// One line: what the strategy does.
    pub description: &'static str,
    /// Options it takes.
    pub options: &'static [OptionInfo],
    /// Options it cannot restore without (front-ends that supply them, such as the
    /// bench's own store socket, look here).
    pub required: &'static [&'static str],
    /// Whether it has a record phase (`snapbpf record`).
    pub record: bool,
    /// Files its record phase writes into the snapshot directory.
    pub artifacts: &'static [&'static str],
    /// Builds the spec from parsed options (see [`parse_as`]).
    pub(crate) parse: fn(&[StrategyOption]) -> Result<StrategySpec, SpecError>,
}

/// One option as given: its name and, for options that take one, its value.
pub type StrategyOption = (String, Option<String>);

/// A strategy's options, parsed from `name:option:option=value` and rendered back.
pub trait StrategyOptions: Default {
    /// The strategy's registry row.
    const INFO: &'static StrategyInfo;
    /// Sets option `name` (one of the strategy's [`StrategyInfo::options`]) to `value`.
    /// A strategy without options keeps the default, which is never called.
    fn set(&mut self, name: &str, _value: Option<&str>) -> Result<(), String> {
        Err(format!("unexpected option {name}"))
    }
    /// The options that differ from the default, as `name` or `name=value`, in the
    /// order the strategy declares them.
    fn render(&self) -> Vec<String> {
        Vec::new()
    }
    /// Builds the strategy these options configure.
    fn build(&self) -> Box<dyn Strategy>;
}

/// A strategy and its options, as chosen on the command line. Each variant carries only
/// its own strategy's options, so an invalid combination cannot be built. Serialisable,
/// so a launcher can hand it to worker processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "kebab-case")]
pub enum StrategySpec {
    /// Demand paging, readahead off.
    LinuxNora(linux::NoraOptions),
    /// Demand paging with the kernel's 128 KiB read-around.
    LinuxRa(linux::ReadaheadOptions),
    /// REAP.
    Reap(reap::ReapOptions),
    /// FaaSnap.
    Faasnap(faasnap::FaasnapOptions),
    /// SnapBPF.
    Snapbpf(snapbpf::SnapbpfOptions),
    /// Sabre.
    Sabre(sabre::SabreOptions),
    /// SnapFaaS.
    Snapfaas(snapfaas::SnapfaasOptions),
}

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

/// Errors parsing a strategy spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Unknown strategy name.
    #[error("unknown strategy '{name}' (expected one of: {known})", known = names().join(", "))]
    Unknown {
        /// The name given.
        name: String,
    },
    /// The option is not one of the strategy's.
    #[error("--{option} applies only to the {owners} strategy", owners = owners_of(option))]
    NotApplicable {
        /// The option.
        option: String,
        /// The strategy it was given to.
        strategy: &'static str,
    },
    /// No strategy has this option.
    #[error("unknown option '{option}' of strategy '{strategy}' (its options: {known})")]
    UnknownOption {
        /// The option.
        option: String,
        /// The strategy.
        strategy: &'static str,
        /// Its options.
        known: String,
    },
    /// The option's value is missing or bad.
    #[error("option '{option}' of strategy '{strategy}': {reason}")]
    BadValue {
        /// The option.
        option: String,
        /// The strategy.
        strategy: &'static str,
        /// What is wrong.
        reason: String,
    },
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

/// Parses `options` as the options `T` of its strategy: every option must be one the
/// strategy declares, with a value exactly where it takes one.
pub(crate) fn parse_as<T: StrategyOptions>(options: &[StrategyOption]) -> Result<T, SpecError> {
    let info = T::INFO;
    let strategy = info.name;
    let mut parsed = T::default();
    for (name, value) in options {
        let Some(declared) = info.options.iter().find(|o| o.name == name) else {
            return Err(
                if REGISTRY
                    .iter()
                    .any(|s| s.options.iter().any(|o| o.name == name))
                {
                    SpecError::NotApplicable {
                        option: name.clone(),
                        strategy,
                    }
                } else {
                    SpecError::UnknownOption {
                        option: name.clone(),
                        strategy,
                        known: option_list(info),
                    }
                },
            );
        };
        let bad = |reason: String| SpecError::BadValue {
            option: name.clone(),
            strategy,
            reason,
        };
        match (declared.value, value) {
            (Some(v), None) => return Err(bad(format!("needs a value ({name}={v})"))),
            (None, Some(_)) => return Err(bad("takes no value".into())),
            _ => {}
        }
        parsed.set(name, value.as_deref()).map_err(bad)?;
    }
    Ok(parsed)
}

/// The options of `info`, for messages.
fn option_list(info: &StrategyInfo) -> String {
    if info.options.is_empty() {
        return "none".into();
    }
    info.options
        .iter()
        .map(|o| match o.value {
            Some(v) => format!("{}={v}", o.name),
            None => o.name.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

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

/// The spec every speedup is relative to, as in the paper (Linux-RA).
pub fn baseline() -> StrategySpec {
    StrategySpec::LinuxRa(linux::ReadaheadOptions::default())
}

/// The system under evaluation (SnapBPF): memory is compared relative to it.
pub fn subject() -> StrategySpec {
    StrategySpec::Snapbpf(snapbpf::SnapbpfOptions::default())
}

/// Splits `name[:option[:option=value]...]` into the name and its options.
pub fn split(text: &str) -> (&str, Vec<StrategyOption>) {
    let (name, rest) = text.split_once(':').unwrap_or((text, ""));
    let options = rest
        .split(':')
        .filter(|o| !o.is_empty())
        .map(|o| match o.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (o.to_string(), None),
        })
        .collect();
    (name, options)
}

impl StrategySpec {
    /// Parses `name[:option[:option=value]...]`.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let (name, options) = split(text);
        Self::with_options(name, &options)
    }

    /// The strategy `name` with `options` (name, value) set.
    pub fn with_options(name: &str, options: &[StrategyOption]) -> Result<Self, SpecError> {
        let info = info(name).ok_or_else(|| SpecError::Unknown { name: name.into() })?;
        (info.parse)(options)
    }

    /// The strategy `name` with default options.
    pub fn named(name: &str) -> Result<Self, SpecError> {
        Self::with_options(name, &[])
    }

    fn options(&self) -> &dyn OptionsObject {
        match self {
            Self::LinuxNora(o) => o,
            Self::LinuxRa(o) => o,
            Self::Reap(o) => o,
            Self::Faasnap(o) => o,
            Self::Snapbpf(o) => o,
            Self::Sabre(o) => o,
            Self::Snapfaas(o) => o,
        }
    }

    /// The registry row of this spec's strategy.
    pub fn info(&self) -> &'static StrategyInfo {
        self.options().info_object()
    }

    /// The strategy's name.
    pub fn name(&self) -> &'static str {
        self.info().name
    }

    /// Builds the strategy.
    pub fn build(&self) -> Box<dyn Strategy> {
        self.options().build_object()
    }

    /// The spec as `name[:option...]`, which [`StrategySpec::parse`] reads back.
    pub fn to_arg(&self) -> String {
        let mut s = self.name().to_string();
        for o in self.options().render_object() {
            s.push(':');
            s.push_str(&o);
        }
        s
    }

    /// Label used in reports and charts: the name plus its options as flags, values
    /// left out (`snapbpf --thp`, `reap --uffd-handler`).
    pub fn label(&self) -> String {
        let mut s = self.name().to_string();
        for o in self.options().render_object() {
            s.push_str(" --");
            s.push_str(o.split_once('=').map_or(o.as_str(), |(k, _)| k));
        }
        s
    }
}

/// [`StrategyOptions`] as a trait object (the trait itself needs `Default`, so it is not
/// object-safe).
trait OptionsObject {
    fn info_object(&self) -> &'static StrategyInfo;
    fn render_object(&self) -> Vec<String>;
    fn build_object(&self) -> Box<dyn Strategy>;
}

impl<T: StrategyOptions> OptionsObject for T {
    fn info_object(&self) -> &'static StrategyInfo {
        T::INFO
    }
    fn render_object(&self) -> Vec<String> {
        self.render()
    }
    fn build_object(&self) -> Box<dyn Strategy> {
        self.build()
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
            assert_eq!(spec.build().name(), info.name);
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
    fn default_plans_parse() {
        for text in DEFAULT_COMPARISON.iter().chain(DEFAULT_BREAKDOWN) {
            StrategySpec::parse(text).expect(text);
        }
        assert_eq!(baseline().info().name, "linux-ra");
    }

    #[test]
    fn labels_name_the_options() {
        let spec = StrategySpec::parse("snapbpf:thp:no-pv").expect("parses");
        assert_eq!(spec.label(), "snapbpf --no-pv --thp");
        assert_eq!(spec.to_arg(), "snapbpf:no-pv:thp");
    }
}
