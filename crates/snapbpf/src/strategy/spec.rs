//! The vocabulary a strategy registers itself with: its registry row ([`StrategyInfo`]),
//! its options ([`OptionInfo`], [`StrategyOptions`]) and the spec a front-end builds from
//! them ([`StrategySpec`]).
//!
//! Strategies import this module and [`super::interface`], never the registry: the
//! registry imports every strategy, so nothing points back at it. A row is built with
//! `const` builders whose defaults stand for everything a strategy does not say, so a new
//! field of the row edits no strategy.

use std::fmt;
use std::path::PathBuf;

use super::interface::Strategy;
use crate::snapshot::Snapshot;
pub use snapbpf_store::snapshot::Vmm;

/// What an option is for, where a front-end must find it without knowing its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptionRole {
    /// Only its strategy reads it.
    Plain,
    /// The socket of an in-memory snapshot store (`snapbpf store serve`): the bench
    /// supplies the one it runs.
    StoreSocket,
}

/// One option a strategy takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OptionInfo {
    /// Its name, as written after `name:` or as a `--NAME` flag.
    pub name: &'static str,
    /// Name of its value, for options that take one (`uffd-handler=SOCKET`).
    pub value: Option<&'static str>,
    /// One line of help.
    pub help: &'static str,
    /// What it is for.
    pub role: OptionRole,
    /// Whether the strategy cannot restore without it.
    pub required: bool,
}

impl OptionInfo {
    /// An option without a value (`snapbpf:no-pv`).
    pub const fn flag(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            value: None,
            help,
            role: OptionRole::Plain,
            required: false,
        }
    }

    /// An option with a value named `value` (`sabre:codec=lz4`).
    pub const fn valued(name: &'static str, value: &'static str, help: &'static str) -> Self {
        Self {
            value: Some(value),
            ..Self::flag(name, help)
        }
    }

    /// The option with `role`.
    pub const fn role(self, role: OptionRole) -> Self {
        Self { role, ..self }
    }

    /// The option, required.
    pub const fn required(self) -> Self {
        Self {
            required: true,
            ..self
        }
    }
}

/// Huge page-cache folios: an option several strategies share, spelled once.
pub const THP: OptionInfo = OptionInfo::flag(
    "thp",
    "back guest memory with huge (2 MiB) page-cache folios (needs transparent huge pages)",
);

/// What the registry says about one strategy: its row.
#[derive(Debug, Clone, Copy)]
pub struct StrategyInfo {
    /// Name, as on the command line.
    pub name: &'static str,
    /// One line: what the strategy does.
    pub description: &'static str,
    /// Options it takes.
    pub options: &'static [OptionInfo],
    /// Whether it has a record phase (`snapbpf record`).
    pub record: bool,
    /// Files its record phase writes into the snapshot directory.
    pub artifacts: &'static [&'static str],
    /// Files beside the memory file a restore may read (evicted for a cold start and
    /// counted in the run's page cache where present); its artifacts unless it says.
    pub reads: &'static [&'static str],
    /// The VMMs it restores (and records) under; snapbpf's own unless it says.
    pub vmms: &'static [Vmm],
    /// Its artifact loader, for fuzzing (`snapbpf-fuzz` runs one target per row that
    /// has one).
    pub loader: Option<super::interface::LoaderFuzz>,
    /// Builds the spec's options from parsed options.
    parse: ParseOptions,
}

impl StrategyInfo {
    /// The row of a strategy whose options are `T`: no options, no record phase, no
    /// artifacts until the builders below say otherwise.
    pub const fn new<T: StrategyOptions>(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            options: &[],
            record: false,
            artifacts: &[],
            reads: &[],
            vmms: &[Vmm::Builtin],
            loader: None,
            parse: parse_boxed::<T>,
        }
    }

    /// The row with `options`.
    pub const fn options(self, options: &'static [OptionInfo]) -> Self {
        Self { options, ..self }
    }

    /// The row of a strategy with a record phase that writes `artifacts` (and reads
    /// them back at restore).
    pub const fn records(self, artifacts: &'static [&'static str]) -> Self {
        Self {
            record: true,
            artifacts,
            reads: artifacts,
            ..self
        }
    }

    /// The row of a strategy whose restore reads `files` beside the memory file.
    pub const fn reads(self, files: &'static [&'static str]) -> Self {
        Self {
            reads: files,
            ..self
        }
    }

    /// The row of a strategy whose artifact loader is `loader`.
    pub const fn loader(self, loader: super::interface::LoaderFuzz) -> Self {
        Self {
            loader: Some(loader),
            ..self
        }
    }

    /// The row of a strategy that runs under `vmms`.
    pub const fn vmms(self, vmms: &'static [Vmm]) -> Self {
        Self { vmms, ..self }
    }

    /// Whether the strategy runs under `vmm`.
    pub fn supports(&self, vmm: Vmm) -> bool {
        self.vmms.contains(&vmm)
    }

    /// The option of this strategy that plays `role`, if one does.
    pub fn option_with(&self, role: OptionRole) -> Option<&'static OptionInfo> {
        self.options.iter().find(|o| o.role == role)
    }

    /// The options this strategy cannot restore without.
    pub fn required_options(&self) -> impl Iterator<Item = &'static OptionInfo> {
        self.options.iter().filter(|o| o.required)
    }

    /// Builds this strategy's spec from `options` (each one it declares, with a value
    /// exactly where it takes one).
    pub(super) fn parse(&self, options: &[StrategyOption]) -> Result<StrategySpec, SpecError> {
        Ok(StrategySpec {
            options: (self.parse)(options)?,
        })
    }
}

/// How a row parses its strategy's options.
type ParseOptions = fn(&[StrategyOption]) -> Result<Box<dyn OptionsObject>, SpecError>;

/// One option as given: its name and, for options that take one, its value.
pub type StrategyOption = (String, Option<String>);

/// A strategy's options, parsed from `name:option:option=value` and rendered back.
pub trait StrategyOptions: Default + Clone + fmt::Debug + Send + Sync + 'static {
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

/// Errors parsing a strategy spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Unknown strategy name.
    #[error("unknown strategy '{name}' (expected one of: {known})")]
    Unknown {
        /// The name given.
        name: String,
        /// The strategies there are.
        known: String,
    },
    /// The option is another strategy's.
    #[error("--{option} applies only to the {owners} strategy")]
    NotApplicable {
        /// The option.
        option: String,
        /// The strategy it was given to.
        strategy: &'static str,
        /// The strategies that take it, joined with "or".
        owners: String,
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

/// Parses `options` as the options `T` of its strategy: every option must be one the
/// strategy declares, with a value exactly where it takes one. An option it does not
/// declare is [`SpecError::UnknownOption`]; the registry tells it apart from another
/// strategy's option.
pub fn parse_as<T: StrategyOptions>(options: &[StrategyOption]) -> Result<T, SpecError> {
    let info = T::INFO;
    let strategy = info.name;
    let mut parsed = T::default();
    for (name, value) in options {
        let Some(declared) = info.options.iter().find(|o| o.name == name) else {
            return Err(SpecError::UnknownOption {
                option: name.clone(),
                strategy,
                known: option_list(info),
            });
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

fn parse_boxed<T: StrategyOptions>(
    options: &[StrategyOption],
) -> Result<Box<dyn OptionsObject>, SpecError> {
    Ok(Box::new(parse_as::<T>(options)?))
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

/// Splits `name[:option[:option=value]...]` into the name and its options.
pub fn split(text: &str) -> (&str, Vec<StrategyOption>) {
    let (name, rest) = text.split_once(':').unwrap_or((text, ""));
    let options = rest
        .split(':')
        .filter(|o| !o.is_empty())
        .map(split_option)
        .collect();
    (name, options)
}

/// `name` or `name=value` as an option.
fn split_option(text: &str) -> StrategyOption {
    match text.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (text.to_string(), None),
    }
}

/// [`StrategyOptions`] as a trait object (the trait itself needs `Default` and `Clone`,
/// so it is not object-safe).
trait OptionsObject: fmt::Debug + Send + Sync {
    fn info(&self) -> &'static StrategyInfo;
    fn render(&self) -> Vec<String>;
    fn build(&self) -> Box<dyn Strategy>;
    fn clone_box(&self) -> Box<dyn OptionsObject>;
}

impl<T: StrategyOptions> OptionsObject for T {
    fn info(&self) -> &'static StrategyInfo {
        T::INFO
    }
    fn render(&self) -> Vec<String> {
        StrategyOptions::render(self)
    }
    fn build(&self) -> Box<dyn Strategy> {
        StrategyOptions::build(self)
    }
    fn clone_box(&self) -> Box<dyn OptionsObject> {
        Box::new(self.clone())
    }
}

/// A strategy and its options, as chosen on the command line: only options its strategy
/// declares, so an invalid combination cannot be built. Built by the registry
/// ([`StrategySpec::parse`]); serialised as its name and rendered options, so a launcher
/// can hand it to worker processes.
pub struct StrategySpec {
    options: Box<dyn OptionsObject>,
}

impl StrategySpec {
    /// The spec of `options`' strategy, with those options.
    pub fn of<T: StrategyOptions>(options: T) -> Self {
        Self {
            options: Box::new(options),
        }
    }

    /// The registry row of this spec's strategy.
    pub fn info(&self) -> &'static StrategyInfo {
        self.options.info()
    }

    /// The strategy's name.
    pub fn name(&self) -> &'static str {
        self.info().name
    }

    /// Builds the strategy.
    pub fn build(&self) -> Box<dyn Strategy> {
        self.options.build()
    }

    /// The options that differ from the default, as `name` or `name=value`.
    pub fn options(&self) -> Vec<String> {
        self.options.render()
    }

    /// The spec as `name[:option...]`, which [`StrategySpec::parse`] reads back.
    pub fn to_arg(&self) -> String {
        let mut s = self.name().to_string();
        for o in self.options() {
            s.push(':');
            s.push_str(&o);
        }
        s
    }

    /// Label used in reports and charts: the name plus its options as flags, values
    /// left out (`snapbpf --thp`, `reap --uffd-handler`).
    pub fn label(&self) -> String {
        let mut s = self.name().to_string();
        for o in self.options() {
            s.push_str(" --");
            s.push_str(o.split_once('=').map_or(o.as_str(), |(k, _)| k));
        }
        s
    }

    /// Files that must be out of the page cache for a cold start: the memory file and
    /// those the strategy's restore reads beside it, where present.
    pub fn cold_files(&self, snapshot: &Snapshot) -> Vec<PathBuf> {
        let mut files = vec![snapshot.memory_path()];
        files.extend(
            self.info()
                .reads
                .iter()
                .map(|f| snapshot.artifact_path(f))
                .filter(|p| p.exists()),
        );
        files
    }
}

impl Clone for StrategySpec {
    fn clone(&self) -> Self {
        Self {
            options: self.options.clone_box(),
        }
    }
}

impl PartialEq for StrategySpec {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name() && self.options() == other.options()
    }
}

impl Eq for StrategySpec {}

impl fmt::Debug for StrategySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StrategySpec({})", self.to_arg())
    }
}

/// How a spec travels as JSON: `{"strategy": "sabre", "options": ["codec=lz4"]}` (an
/// option's value may hold `:`, which the command-line form cannot carry).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct SpecJson {
    pub(super) strategy: String,
    #[serde(default)]
    pub(super) options: Vec<String>,
}

impl SpecJson {
    /// The options as (name, value).
    pub(super) fn split_options(&self) -> Vec<StrategyOption> {
        self.options.iter().map(|o| split_option(o)).collect()
    }
}

impl serde::Serialize for StrategySpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SpecJson {
            strategy: self.name().into(),
            options: self.options(),
        }
        .serialize(s)
    }
}
