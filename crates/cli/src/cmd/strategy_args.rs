//! The strategy arguments of `invoke`, `record` and `bench`: `--strategy NAME[:OPTION...]`
//! and one `--OPTION` flag per option any strategy declares, generated from the registry
//! (name, value and help come from the strategy's row), so a new option is one line in
//! its strategy and nothing here.

use clap::{Arg, ArgAction, ArgMatches, Command};
use snapbpf::strategy::registry::{self, SharedOption};
use snapbpf::strategy::spec::{self, StrategyOption};
use snapbpf::strategy::{SpecError, StrategySpec};

/// The `--OPTION` flags given, in registry order.
#[derive(Debug, Clone, Default)]
pub struct OptionFlags {
    /// Each flag given: the option's name and, for options with a value, the value.
    pub given: Vec<StrategyOption>,
}

/// Clap's `help` for one generated flag: the option, and what it does for each strategy
/// that takes it (once, where they say the same).
fn help_of(shared: &SharedOption) -> String {
    let option = match shared.option.value {
        Some(v) => format!("{}={v}", shared.option.name),
        None => shared.option.name.to_string(),
    };
    let same = shared.helps.iter().all(|h| *h == shared.helps[0]);
    let what = if same {
        format!("{}: {}", shared.strategies.join(", "), shared.helps[0])
    } else {
        shared
            .strategies
            .iter()
            .zip(&shared.helps)
            .map(|(s, h)| format!("{s}: {h}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!("Strategy option `{option}` of {what}")
}

impl clap::Args for OptionFlags {
    fn augment_args(mut cmd: Command) -> Command {
        for shared in registry::all_options() {
            let arg = Arg::new(shared.option.name)
                .long(shared.option.name)
                .help(help_of(&shared))
                .help_heading("Strategy options");
            cmd = cmd.arg(match shared.option.value {
                Some(value) => arg.value_name(value).action(ArgAction::Set),
                None => arg.action(ArgAction::SetTrue),
            });
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for OptionFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = Vec::new();
        for shared in registry::all_options() {
            let name = shared.option.name;
            match shared.option.value {
                Some(_) => {
                    if let Some(v) = m.get_one::<String>(name) {
                        given.push((name.to_string(), Some(v.clone())));
                    }
                }
                None => {
                    if m.get_flag(name) {
                        given.push((name.to_string(), None));
                    }
                }
            }
        }
        Ok(Self { given })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl OptionFlags {
    /// `text` (`NAME[:OPTION...]`) with every flag its strategy declares added, unless the
    /// text sets that option itself: how the bench applies `--OPTION` to each strategy of
    /// its plan that takes it.
    pub fn apply_to(&self, text: &str) -> String {
        let (name, options) = spec::split(text);
        let Some(info) = registry::info(name) else {
            return text.to_string();
        };
        let mut out = text.to_string();
        for (option, value) in &self.given {
            let declared = info.options.iter().any(|o| o.name == option);
            let set = options.iter().any(|(o, _)| o == option);
            if declared && !set {
                out.push(':');
                out.push_str(option);
                if let Some(v) = value {
                    out.push('=');
                    out.push_str(v);
                }
            }
        }
        out
    }
}

/// Strategy selection shared by `invoke` and `record`.
#[derive(Debug, Clone, clap::Args)]
pub struct StrategyArgs {
    /// Restore strategy, `NAME[:OPTION[:OPTION=VALUE]...]` (`snapbpf strategies` lists
    /// them and their options) [default: the registry's baseline, linux-ra].
    #[arg(long, default_value_t = registry::baseline().to_arg(), hide_default_value = true)]
    pub strategy: String,
    #[command(flatten)]
    pub flags: OptionFlags,
}

impl StrategyArgs {
    /// The spec: `--strategy` with the option flags added (a flag the strategy does not
    /// take is refused, naming the strategies that do).
    pub fn spec(&self) -> Result<StrategySpec, SpecError> {
        let (name, mut options) = spec::split(&self.strategy);
        options.extend(self.flags.given.iter().cloned());
        StrategySpec::with_options(name, &options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    fn parse(args: &[&str]) -> Result<StrategyArgs, clap::Error> {
        let cmd = StrategyArgs::augment_args(Command::new("t"));
        let m = cmd.try_get_matches_from(std::iter::once("t").chain(args.iter().copied()))?;
        StrategyArgs::from_arg_matches(&m)
    }

    #[test]
    fn every_option_of_every_strategy_is_a_flag() {
        for shared in registry::all_options() {
            let flag = format!("--{}", shared.option.name);
            let strategy = format!("--strategy={}", shared.strategies[0]);
            let args: Vec<&str> = match shared.option.value {
                // A value the option accepts that is not its default (the last choice, as
                // defaults come first), a number, a path.
                Some(v) if v.contains('|') => {
                    vec![&strategy, &flag, v.rsplit('|').next().unwrap_or(v)]
                }
                Some("N") => vec![&strategy, &flag, "2"],
                Some(_) => vec![&strategy, &flag, "/x"],
                None => vec![&strategy, &flag],
            };
            let spec = parse(&args)
                .expect("flag parses")
                .spec()
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(
                spec.to_arg().contains(shared.option.name),
                "{args:?} gives {}",
                spec.to_arg()
            );
        }
    }

    #[test]
    fn a_flag_of_another_strategy_is_refused() {
        let e = parse(&["--strategy", "linux-nora", "--thp"])
            .expect("parses")
            .spec()
            .expect_err("refused");
        assert_eq!(
            e.to_string(),
            "--thp applies only to the linux-ra or snapbpf strategy"
        );
    }

    #[test]
    fn bench_flags_apply_where_declared() {
        let flags = OptionFlags {
            given: vec![("thp".into(), None), ("codec".into(), Some("lz4".into()))],
        };
        assert_eq!(flags.apply_to("linux-nora"), "linux-nora");
        assert_eq!(flags.apply_to("linux-ra"), "linux-ra:thp");
        assert_eq!(flags.apply_to("sabre:codec=zstd"), "sabre:codec=zstd");
        assert_eq!(flags.apply_to("sabre"), "sabre:codec=lz4");
    }
}
