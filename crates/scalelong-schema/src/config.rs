//! The run config, the schema of `config.json`: one TOML file, every default visible in
//! [`RunConfig::default`] and the sections' defaults, `--set` overrides applied to the TOML before
//! it is parsed so that every error names its dotted key.

use crate::diffusion::{SamplerConfig, ScheduleConfig};
use crate::strategy::SkipScaling;
use anyhow::{Context, Result, bail};
use scalelong_data::DatasetSpec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
    pub diagnostics: DiagnosticsConfig,
    /// Evaluate the EMA weights (held-out loss, FD) at every checkpoint and at the end.
    pub evaluate: bool,
    pub eval: EvalConfig,
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
}

/// Deserialises with errors that start with the dotted path of the offending key.
pub fn from_table_named<T: for<'de> Deserialize<'de>>(table: toml::Table) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().trim().to_string();
        if path == "." { anyhow::anyhow!("{message}") } else { anyhow::anyhow!("{path}: {message}") }
    })
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

/// What the training-time recorder measures and how often (docs/run-folder.md, `diagnostics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsConfig {
    /// Record every this many optimizer steps; 0 turns recording off.
    pub every: u64,
    pub t_bins: usize,
    /// The probe batch is `t_bins * probe_per_bin` samples: 70 by default, at least the 64 a
    /// mean over the probe needs to be more than a handful of samples (it was 20, two a bin).
    pub probe_per_bin: usize,
    /// Standard deviation of the robustness perturbation δ, relative to the RMS of x_t.
    pub robustness_delta: f64,
    /// The per-bin gradient norms (Thm 3.3) take one backward pass per bin, most of a record's
    /// cost: they are measured on every this-many-th record only.
    pub gradient_bins_every: u64,
}

impl Default for DiagnosticsConfig {
    fn default() -> Self {
        Self { every: 0, t_bins: 10, probe_per_bin: 7, robustness_delta: 1e-2, gradient_bins_every: 5 }
    }
}

impl DiagnosticsConfig {
    /// Checks what can be checked without the data (the probe's image count is checked when the
    /// recorder is built).
    pub fn validate(&self, schedule_steps: usize) -> Result<()> {
        if self.every == 0 {
            return Ok(());
        }
        if self.gradient_bins_every == 0 {
            bail!("diagnostics.gradient_bins_every: must be at least 1");
        }
        if self.t_bins == 0 || self.probe_per_bin == 0 || self.t_bins > schedule_steps {
            bail!(
                "diagnostics.t_bins ({}) and diagnostics.probe_per_bin ({}) must be positive, t_bins at most the \
                 schedule's steps ({schedule_steps})",
                self.t_bins,
                self.probe_per_bin
            );
        }
        Ok(())
    }
}

/// Evaluation at every checkpoint and at the end (docs/run-folder.md, `eval.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Test images the held-out loss uses (the first ones), rounded down to a multiple of
    /// `t_bins` and capped at the test set's size.
    pub heldout_images: usize,
    /// Timestep bins of the held-out loss, laid out like the diagnostics probe's.
    pub t_bins: usize,
    /// EMA samples (and test images) the FD compares; `0` skips the FD and the classifier.
    pub fd_samples: usize,
    /// The FD at every evaluation whose step is a multiple of this; `0`: at the end only (sampling
    /// costs far more than the held-out loss, which every evaluation has).
    pub fd_every: u64,
    /// Epochs of the FD classifier's training; part of its cache key.
    pub classifier_epochs: usize,
    /// Where the FD classifier is cached, shared by all runs (relative to the current folder).
    pub cache_dir: PathBuf,
    /// Sampling-time skip edits evaluated on the final EMA weights, into `skip_eval.jsonl` (the
    /// unedited network first); none by default.
    pub skip_edits: Vec<SkipEditSpec>,
    /// Whether the Skip-Tuning and FreeU settings also get an FD (the importance settings never do:
    /// they are many, and their held-out loss is what is compared).
    pub skip_edit_fd: bool,
}

/// A sampling-time change to a trained network's long skips (docs/method.md §3.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SkipEditSpec {
    /// Skip-Tuning: every LSC's skip times `rho_i`, linear from `rho_outer` (LSC 1) to `rho_inner`
    /// (LSC N).
    SkipTuning { rho_outer: f64, rho_inner: f64 },
    /// FreeU on the two innermost decoder stages (innermost first): the main path's first half of
    /// features times `b`, the skip's frequencies within `threshold` of zero times `s`.
    Freeu {
        #[serde(default = "freeu_b")]
        b: [f64; 2],
        #[serde(default = "freeu_s")]
        s: [f64; 2],
        #[serde(default = "freeu_threshold")]
        threshold: usize,
    },
    /// The importance of each LSC: every LSC alone scaled by each factor.
    Importance { factors: Vec<f64> },
}

impl SkipEditSpec {
    /// Errors start with the field's name.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let factor = |name: &str, x: f64| {
            if x.is_finite() && x >= 0.0 { Ok(()) } else { Err(format!("{name}: {x} must be a finite factor >= 0")) }
        };
        match self {
            Self::SkipTuning { rho_outer, rho_inner } => {
                factor("rho_outer", *rho_outer)?;
                factor("rho_inner", *rho_inner)
            }
            Self::Freeu { b, s, threshold } => {
                b.iter().try_for_each(|&x| factor("b", x))?;
                s.iter().try_for_each(|&x| factor("s", x))?;
                if *threshold == 0 {
                    return Err("threshold: must be at least 1 (0 would scale only the mean of each map)".into());
                }
                Ok(())
            }
            Self::Importance { factors } => {
                if factors.is_empty() {
                    return Err("factors: give at least one factor, e.g. [0.0, 0.5]".into());
                }
                factors.iter().try_for_each(|&x| factor("factors", x))
            }
        }
    }
}

fn freeu_b() -> [f64; 2] {
    [1.2, 1.4]
}
fn freeu_s() -> [f64; 2] {
    [0.9, 0.2]
}
fn freeu_threshold() -> usize {
    1
}

impl Default for EvalConfig {
    fn default() -> Self {
        // One classifier epoch on Fashion-MNIST (60k at 32x32) took 177 s on the 2-core machine
        // under a load of ~4 for a test accuracy of 0.875; two took 415 s for 0.893.
        Self {
            heldout_images: 512,
            t_bins: 10,
            fd_samples: 256,
            fd_every: 0,
            classifier_epochs: 1,
            cache_dir: PathBuf::from("runs/.cache"),
            skip_edits: Vec::new(),
            skip_edit_fd: true,
        }
    }
}

impl EvalConfig {
    /// Checks what can be checked without the data; the data-dependent checks (enough test
    /// images, labels with 2 classes or more) fail at evaluation with a message naming the key.
    pub fn validate(&self, schedule_steps: usize) -> Result<()> {
        if self.t_bins == 0 || self.t_bins > schedule_steps {
            bail!("eval.t_bins: {} must lie in 1..={schedule_steps} (the schedule's steps)", self.t_bins);
        }
        if self.heldout_images < self.t_bins {
            bail!("eval.heldout_images: {} must be at least eval.t_bins ({})", self.heldout_images, self.t_bins);
        }
        if self.fd_samples == 1 {
            bail!("eval.fd_samples: 1 sample has no covariance; use at least 2, or 0 to skip the FD");
        }
        if self.fd_samples > 0 && self.classifier_epochs == 0 {
            bail!("eval.classifier_epochs: must be at least 1 while eval.fd_samples > 0");
        }
        for (i, edit) in self.skip_edits.iter().enumerate() {
            edit.validate().map_err(|e| anyhow::anyhow!("eval.skip_edits[{i}].{e}"))?;
        }
        Ok(())
    }
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

    /// Checks every field that can be checked without the data and without resolving the model
    /// preset (`scalelong::config::validate` adds that): each error names its dotted key.
    pub fn validate(&self) -> Result<()> {
        self.diffusion.schedule.validate().map_err(anyhow::Error::msg)?;
        self.eval.validate(self.diffusion.schedule.steps())?;
        self.diagnostics.validate(self.diffusion.schedule.steps())?;
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

impl RunConfig {
    /// The dotted keys (`optimizer.lr`, `model.depth`, as `--set` names them) whose values differ
    /// between two configs, sorted; a key either side lacks counts as differing.
    pub fn differing_keys(&self, other: &Self) -> Vec<String> {
        fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, keys: &mut Vec<String>) {
            match (a, b) {
                (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
                    names.sort();
                    names.dedup();
                    for name in names {
                        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
                        match (a.get(name), b.get(name)) {
                            (Some(x), Some(y)) => walk(&key, x, y, keys),
                            _ => keys.push(key),
                        }
                    }
                }
                (a, b) if a != b => keys.push(prefix.to_string()),
                _ => {}
            }
        }
        let (a, b) = (serde_json::to_value(self), serde_json::to_value(other));
        let mut keys = Vec::new();
        match (a, b) {
            (Ok(a), Ok(b)) => walk("", &a, &b, &mut keys),
            // Unreachable for these plain data types; still no panic.
            _ => keys.push("(unserialisable config)".to_string()),
        }
        keys
    }

    /// Why a run trained with `self` up to step `reached` cannot go on as `planned` (`--resume`, a
    /// sweep extending a finished run): the dotted keys that differ. Only `steps` may change, and
    /// only where the result is what a run trained with `planned` from the start gives bit for
    /// bit: under a constant learning rate (a cosine decay depends on the total steps, so the steps
    /// already taken would have had other rates) and not below the step already reached.
    pub fn continuation_conflicts(&self, planned: &Self, reached: u64) -> Vec<String> {
        let mut keys = self.differing_keys(planned);
        let steps_free = self.optimizer.schedule == LrSchedule::Constant && planned.steps >= reached;
        if steps_free {
            keys.retain(|key| key != "steps");
        }
        keys
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_keys_are_dotted_and_steps_may_grow_only_under_a_constant_rate() {
        let base = RunConfig::default();
        let mut planned = base.clone();
        planned.optimizer.lr = 1e-3;
        planned.steps = 2000;
        planned.model.overrides.insert("depth".into(), toml::Value::Integer(16));
        assert_eq!(base.differing_keys(&planned), ["model.depth", "optimizer.lr", "steps"]);
        assert!(base.differing_keys(&base).is_empty());

        let longer = RunConfig { steps: 2000, ..base.clone() };
        assert!(base.continuation_conflicts(&longer, 1000).is_empty(), "constant: extend");
        assert_eq!(longer.continuation_conflicts(&base, 1500), ["steps"], "not below the step reached");
        assert!(longer.continuation_conflicts(&base, 500).is_empty(), "an interrupted run may end sooner");
        let mut cosine = base.clone();
        cosine.optimizer.schedule = LrSchedule::Cosine { final_fraction: 0.1 };
        let cosine_longer = RunConfig { steps: 2000, ..cosine.clone() };
        assert_eq!(cosine.continuation_conflicts(&cosine_longer, 1000), ["steps"], "cosine decays over the steps");
        assert_eq!(base.differing_keys(&cosine), ["optimizer.schedule.final_fraction", "optimizer.schedule.kind"]);
    }

    #[test]
    fn eval_config_parses_with_defaults_and_rejects_unknown_keys() {
        let config: EvalConfig = toml::from_str("fd_samples = 0").unwrap();
        assert_eq!(config, EvalConfig { fd_samples: 0, ..EvalConfig::default() });
        assert!(toml::from_str::<EvalConfig>("fd_sample = 0").is_err());
        assert!(EvalConfig { t_bins: 0, ..EvalConfig::default() }.validate(1000).is_err());
        assert!(EvalConfig { classifier_epochs: 0, ..EvalConfig::default() }.validate(1000).is_err());
        EvalConfig::default().validate(1000).unwrap();
    }

    #[test]
    fn skip_edits_parse_with_freeu_defaults_and_name_the_bad_field() {
        let config: EvalConfig = toml::from_str(
            r#"skip_edits = [
                { kind = "skip-tuning", rho_outer = 1.0, rho_inner = 0.8 },
                { kind = "freeu" },
                { kind = "importance", factors = [0.0, 0.5] },
            ]"#,
        )
        .unwrap();
        assert_eq!(config.skip_edits[1], SkipEditSpec::Freeu { b: [1.2, 1.4], s: [0.9, 0.2], threshold: 1 });
        config.validate(1000).unwrap();
        let bad = EvalConfig { skip_edits: vec![SkipEditSpec::Importance { factors: vec![] }], ..config.clone() };
        let error = bad.validate(1000).unwrap_err().to_string();
        assert!(error.starts_with("eval.skip_edits[0].factors:"), "{error}");
        let bad =
            EvalConfig { skip_edits: vec![SkipEditSpec::SkipTuning { rho_outer: -1.0, rho_inner: 1.0 }], ..config };
        let error = bad.validate(1000).unwrap_err().to_string();
        assert!(error.starts_with("eval.skip_edits[0].rho_outer:"), "{error}");
        assert!(toml::from_str::<EvalConfig>(r#"skip_edits = [{ kind = "freeu", bb = [1.0, 1.0] }]"#).is_err());
    }

    #[test]
    fn overrides_name_their_key_in_errors() {
        let mut table = toml::Table::new();
        apply_override(&mut table, "optimizer.lr=abc").unwrap();
        let error = RunConfig::from_table(table).unwrap_err().to_string();
        assert!(error.starts_with("optimizer.lr:"), "{error}");
        let mut table = toml::Table::new();
        apply_override(&mut table, "optimizer.schedule={ kind = \"cosine\", final_fraction = 2.0 }").unwrap();
        let error = RunConfig::from_table(table).unwrap_err().to_string();
        assert!(error.contains("optimizer.schedule.final_fraction"), "{error}");
        assert!(apply_override(&mut toml::Table::new(), "no-equals-sign").is_err());
    }
}
