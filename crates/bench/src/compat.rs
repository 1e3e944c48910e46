//! Reading the results of earlier versions: their strategy specs were one flat record of
//! every strategy's flags (`{"name": "snapbpf", "thp": true, ...}`); today's are tagged by
//! strategy. Old records are turned into today's through the registry's option parser, so
//! a flag the strategy does not take is refused as it would be on the command line.

use serde::{Deserialize, Deserializer};
use snapbpf::strategy::StrategySpec;

/// The flat spec of results written before the strategy registry.
#[derive(Debug, Deserialize)]
struct FlatSpec {
    name: String,
    #[serde(default)]
    no_prefetch: bool,
    #[serde(default)]
    no_pv: bool,
    #[serde(default)]
    no_premap: bool,
    #[serde(default)]
    thp: bool,
    #[serde(default)]
    uffd_handler: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AnySpec {
    Tagged(StrategySpec),
    Flat(FlatSpec),
}

impl AnySpec {
    fn into_spec(self) -> Result<StrategySpec, String> {
        let flat = match self {
            AnySpec::Tagged(spec) => return Ok(spec),
            AnySpec::Flat(flat) => flat,
        };
        let mut options: Vec<(String, Option<String>)> = [
            (flat.no_prefetch, "no-prefetch"),
            (flat.no_pv, "no-pv"),
            (flat.no_premap, "no-premap"),
            (flat.thp, "thp"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, o)| (o.to_string(), None))
        .collect();
        if let Some(socket) = flat.uffd_handler {
            options.push(("uffd-handler".into(), Some(socket)));
        }
        StrategySpec::with_options(&flat.name, &options).map_err(|e| e.to_string())
    }
}

/// Deserialises a list of specs in today's or the flat form.
pub(crate) fn specs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<StrategySpec>, D::Error> {
    Vec::<AnySpec>::deserialize(d)?
        .into_iter()
        .map(|s| s.into_spec().map_err(serde::de::Error::custom))
        .collect()
}
