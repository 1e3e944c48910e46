//! Reading the results of earlier versions: their strategy specs were one flat record of
//! every strategy's flags (`{"name": "snapbpf", "thp": true, ...}`). They become entries
//! whose spec and label are spelled as the flags say (`snapbpf:thp`, `snapbpf --thp`):
//! enough to redraw their tables and charts, which only compare labels.

use serde::{Deserialize, Deserializer};

use crate::StrategyEntry;

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
enum AnyEntry {
    Entry(StrategyEntry),
    Flat(FlatSpec),
}

impl From<AnyEntry> for StrategyEntry {
    fn from(any: AnyEntry) -> Self {
        let flat = match any {
            AnyEntry::Entry(entry) => return entry,
            AnyEntry::Flat(flat) => flat,
        };
        let options: Vec<&str> = [
            (flat.no_prefetch, "no-prefetch"),
            (flat.no_pv, "no-pv"),
            (flat.no_premap, "no-premap"),
            (flat.thp, "thp"),
            (flat.uffd_handler.is_some(), "uffd-handler"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, o)| o)
        .collect();
        let mut spec = flat.name.clone();
        let mut label = flat.name.clone();
        for o in options {
            spec.push(':');
            spec.push_str(o);
            label.push_str(" --");
            label.push_str(o);
        }
        StrategyEntry {
            spec,
            label,
            name: flat.name,
            record: false,
        }
    }
}

/// Deserialises a list of strategy entries in today's or the flat form.
pub(crate) fn entries<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<StrategyEntry>, D::Error> {
    Ok(Vec::<AnyEntry>::deserialize(d)?
        .into_iter()
        .map(StrategyEntry::from)
        .collect())
}
