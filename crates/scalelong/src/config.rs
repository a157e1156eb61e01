//! The run config: one TOML file, every default visible in [`RunConfig::default`], `--set`
//! overrides applied to the TOML before it is parsed so that every error names its key.

use anyhow::{Context, Result, bail};
use scalelong_data::DatasetSpec;
use scalelong_model::diffusion::{SamplerConfig, ScheduleConfig};
use scalelong_model::presets::{PRESETS, preset};
use scalelong_model::{ModelConfig, SkipScaling};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub seed: u64,
    pub strategy: SkipScaling,
    /// A preset name plus any of its fields to override, e.g. `{ preset = "uvit-small", depth = 16 }`.
    pub model: ModelSection,
    pub data: DataConfig,
    pub steps: u64,
    pub batch_size: usize,
    pub optimizer: OptimizerConfig,
    /// Linear learning-rate warm-up from 0 over this many steps, then constant (the reference's
    /// "customized" schedule).
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this value; `0` turns clipping off (the reference has none).
    pub grad_clip: f64,
    pub ema_decay: f64,
    pub diffusion: DiffusionConfig,
    pub log_every: u64,
    /// `0`: only at the end.
    pub sample_every: u64,
    pub sample_count: usize,
    /// `0`: only at the end.
    pub checkpoint_every: u64,
    pub diagnostics: scalelong_diagnostics::recorder::DiagnosticsConfig,
    /// Evaluate the EMA weights (held-out loss, FD) at every checkpoint and at the end.
    pub evaluate: bool,
    pub eval: crate::eval::EvalConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            strategy: SkipScaling::Original,
            model: ModelSection::default(),
            data: DataConfig::default(),
            steps: 1000,
            batch_size: 32,
            optimizer: OptimizerConfig::default(),
            warmup_steps: 100,
            grad_clip: 0.0,
            ema_decay: 0.999,
            diffusion: DiffusionConfig::default(),
            log_every: 10,
            sample_every: 0,
            sample_count: 16,
            checkpoint_every: 0,
            diagnostics: Default::default(),
            evaluate: true,
            eval: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSection {
    pub preset: String,
    /// Fields of the preset's config to change; checked against it when resolved.
    #[serde(flatten)]
    pub overrides: toml::Table,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self { preset: "uvit-small".into(), overrides: toml::Table::new() }
    }
}

impl ModelSection {
    /// `uvit-small depth=16`: the preset and its overridden fields.
    pub fn describe(&self) -> String {
        let mut text = self.preset.clone();
        for (key, value) in &self.overrides {
            text.push_str(&format!(" {key}={value}"));
        }
        text
    }

    /// The section that resolves to `model`: the preset of its architecture that differs from
    /// it in the fewest fields, those fields as overrides.
    pub fn for_config(model: &ModelConfig) -> Result<Self> {
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
        Ok(Self { preset: name.into(), overrides })
    }

    /// The preset with the overrides applied; unknown fields and wrong types are errors naming
    /// the key.
    pub fn resolve(&self) -> Result<ModelConfig> {
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

/// Deserialises with errors that start with the dotted path of the offending key.
fn from_table_named<T: for<'de> Deserialize<'de>>(table: toml::Table) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().trim().to_string();
        if path == "." { anyhow::anyhow!("{message}") } else { anyhow::anyhow!("{path}: {message}") }
    })
}

fn field_list(table: &toml::Table) -> String {
    table.keys().filter(|k| *k != "arch").cloned().collect::<Vec<_>>().join(", ")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub dataset: DatasetSpec,
    /// Zero-pad images (with the background value) to a multiple of this; 28x28 -> 32x32 with 32.
    pub pad_to_multiple: usize,
    pub random_flip: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { dataset: DatasetSpec::FashionMnist {}, pad_to_multiple: 32, random_flip: false }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
    /// The learning rate after warm-up.
    pub schedule: LrSchedule,
}

impl Default for OptimizerConfig {
    /// The reference's AdamW, constant after warm-up.
    fn default() -> Self {
        Self { lr: 2e-4, beta1: 0.99, beta2: 0.999, weight_decay: 0.03, eps: 1e-8, schedule: LrSchedule::Constant }
    }
}

/// What the learning rate does after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LrSchedule {
    /// `optimizer.lr` until the end (the reference's schedule).
    Constant,
    /// Half a cosine from `optimizer.lr` down to `final_fraction * optimizer.lr` at the last step
    /// (nanoGPT's schedule): a run of fixed length ends annealed instead of mid-descent.
    Cosine { final_fraction: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    pub schedule: ScheduleConfig,
    pub sampler: SamplerConfig,
}

impl RunConfig {
    /// Reads `path`, applies `key=value` overrides (dotted keys, TOML values; a bare word is
    /// taken as a string), and checks the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read config", path.display()))?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        Self::from_table(table).with_context(|| format!("config {}", path.display()))
    }

    pub fn from_table(table: toml::Table) -> Result<Self> {
        let config: Self = from_table_named(table)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        self.model.resolve()?;
        self.diffusion.schedule.validate().map_err(anyhow::Error::msg)?;
        self.eval.validate(self.diffusion.schedule.build().steps())?;
        let checks = [
            (self.steps > 0, "steps: must be at least 1"),
            (self.batch_size > 0, "batch_size: must be at least 1"),
            (self.optimizer.lr > 0.0 && self.optimizer.lr.is_finite(), "optimizer.lr: must be a positive number"),
            ((0.0..1.0).contains(&self.optimizer.beta1), "optimizer.beta1: must lie in [0, 1)"),
            ((0.0..1.0).contains(&self.optimizer.beta2), "optimizer.beta2: must lie in [0, 1)"),
            (self.optimizer.weight_decay >= 0.0, "optimizer.weight_decay: must be >= 0"),
            (
                match self.optimizer.schedule {
                    LrSchedule::Constant => true,
                    LrSchedule::Cosine { final_fraction } => (0.0..=1.0).contains(&final_fraction),
                },
                "optimizer.schedule.final_fraction: must lie in [0, 1]",
            ),
            ((0.0..1.0).contains(&self.ema_decay), "ema_decay: must lie in [0, 1)"),
            (self.grad_clip >= 0.0, "grad_clip: must be >= 0 (0 = off)"),
            (self.log_every > 0, "log_every: must be at least 1"),
            (self.sample_count > 0, "sample_count: must be at least 1"),
        ];
        if let Some((_, msg)) = checks.iter().find(|(ok, _)| !ok) {
            bail!("{msg}");
        }
        Ok(())
    }
}

/// `a.b.c=value` into the table, creating intermediate tables.
pub fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let (key, raw) = item.split_once('=').with_context(|| format!("--set {item:?}: expected key=value"))?;
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed one key"),
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, parents) = parts.split_last().expect("split yields one part");
    let mut node = table;
    for part in parents {
        node = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("--set {key}: {part} is not a table"))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}
