//! A run config resolved against the model presets: what `scalelong-schema` cannot check without
//! the networks. [`load`] is how the commands read a config: parsed with every error named by its
//! dotted key, then checked whole.

use anyhow::{Context, Result, bail};
use scalelong_model::ModelConfig;
use scalelong_model::presets::{PRESETS, preset};
use scalelong_schema::config::from_table_named;
use scalelong_schema::{ModelSection, RunConfig};
use std::path::Path;

/// `path` with `key=value` overrides applied, every field checked.
pub fn load(path: &Path, overrides: &[String]) -> Result<RunConfig> {
    let config = RunConfig::load(path, overrides)?;
    config.model.resolve().with_context(|| format!("config {}", path.display()))?;
    Ok(config)
}

/// A config from its TOML table, every field checked.
pub fn from_table(table: toml::Table) -> Result<RunConfig> {
    let config = RunConfig::from_table(table)?;
    config.model.resolve()?;
    Ok(config)
}

/// A config's model section as the network it names.
pub trait ResolveModel {
    /// The preset with the overrides applied; unknown fields and wrong types are errors naming
    /// the key.
    fn resolve(&self) -> Result<ModelConfig>;
}

impl ResolveModel for ModelSection {
    fn resolve(&self) -> Result<ModelConfig> {
        let base = preset(&self.preset).with_context(|| {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            format!("model.preset: unknown preset {:?}; expected one of {}", self.preset, names.join(", "))
        })?;
        let mut table = toml::Table::try_from(&base)?;
        for (key, value) in &self.overrides {
            if key == "arch" || !table.contains_key(key) {
                bail!("model.{key}: not a field of preset {:?} (fields: {})", self.preset, field_list(&table));
            }
            table.insert(key.clone(), value.clone());
        }
        let config: ModelConfig = from_table_named(table).map_err(|e| anyhow::anyhow!("model.{e}"))?;
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

/// The section that resolves to `model`: the preset of its architecture that differs from
/// it in the fewest fields, those fields as overrides.
pub fn section_for(model: &ModelConfig) -> Result<ModelSection> {
    let table = toml::Table::try_from(model)?;
    let differing = |name: &str| -> Option<toml::Table> {
        let base = toml::Table::try_from(preset(name)?).ok()?;
        (base.get("arch") == table.get("arch")).then(|| {
            table.iter().filter(|(k, v)| base.get(*k) != Some(v)).map(|(k, v)| (k.clone(), v.clone())).collect()
        })
    };
    let (name, overrides) = PRESETS
        .iter()
        .filter_map(|(name, _)| differing(name).map(|o| (*name, o)))
        .min_by_key(|(_, o)| o.len())
        .context("model: no preset has this architecture")?;
    Ok(ModelSection { preset: name.into(), overrides })
}

fn field_list(table: &toml::Table) -> String {
    table.keys().filter(|k| *k != "arch").cloned().collect::<Vec<_>>().join(", ")
}
