//! `scalelong import` and `scalelong export`: run folders to and from PyTorch reference
//! checkpoints (the name mapping is `scalelong_model::pytorch`).
//!
//! An import is a run folder like a trained one (`config.json`, `status.json`, `checkpoint/` at
//! step 0 with the imported weights as both model and EMA and a fresh optimizer), so everything
//! that reads runs (`diagnose`, `export`, a resumed `train`) reads imports too.

use crate::checkpoint;
use crate::config::{ResolveModel, section_for};
use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use scalelong_model::SkipScaling;
use scalelong_model::pytorch::{CheckpointFile, load_weights, resolve_config, save_safetensors};
use scalelong_schema::{CheckpointState, RunConfig, RunState, Status, write_json_atomic};
use std::path::{Path, PathBuf};

/// How to build the network a checkpoint file is loaded into (the `import` flags).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ImportArgs {
    /// A preset name (`scalelong params` lists them) or a run config TOML, whose model, strategy
    /// and data are used. Without it, a U-ViT's config is read from the tensor shapes.
    #[arg(long)]
    pub model: Option<String>,
    /// The checkpoint's skip strategy (`1`, `1/sqrt2`, `cs`, `ls`, `ls-nonshared`, or a TOML
    /// value like `{ cs = 0.7 }`); LS is recognised from the file.
    #[arg(long)]
    pub strategy: Option<String>,
    /// Attention heads, when the config is read from shapes (default: one per 64 channels, as in
    /// every reference config).
    #[arg(long)]
    pub heads: Option<usize>,
    /// For a `.pth` holding a dict around the state dict (`torch.save({"model": sd, ...})`):
    /// the state dict's key.
    #[arg(long)]
    pub key: Option<String>,
    /// Override a key of the run config written with the import, e.g. `--set data.dataset.kind=synthetic`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// Which weights of a run to take.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// The exponential moving average, which samples are drawn from.
    #[default]
    Ema,
    /// The raw trained weights.
    Model,
}

impl Weights {
    /// The checkpoint file stem (`ema.bpk`) and the export's default name (`ema.safetensors`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ema => "ema",
            Self::Model => "model",
        }
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportFormat {
    /// `safetensors.torch.load_file` reads it; burn-store cannot write `.pth`.
    #[default]
    Safetensors,
}

fn parse_strategy(text: &str) -> Result<SkipScaling> {
    // A name (`1`, `cs`, ...) is a string even where TOML would read a number; a table
    // (`{ cs = 0.7 }`) goes through the config's own parser.
    let value = if text.trim_start().starts_with('{') {
        let mut table = toml::Table::new();
        scalelong_schema::apply_override(&mut table, &format!("strategy={text}"))?;
        table["strategy"].clone()
    } else {
        toml::Value::String(text.trim().into())
    };
    value.try_into().map_err(|e| anyhow::anyhow!("--strategy {text:?}: {e}"))
}

/// Reads `checkpoint` into a new run folder `out`; returns the run's config.
pub fn import(checkpoint: &Path, args: &ImportArgs, out: &Path, device: &Device) -> Result<RunConfig> {
    if checkpoint::exists(out) || out.join("metrics.jsonl").exists() {
        bail!("{}: already holds a run; choose another --out", out.display());
    }
    let is_file = |m: &str| m.ends_with(".toml") || Path::new(m).is_file();
    let mut config = match args.model.as_deref() {
        Some(m) if is_file(m) => crate::config::load(Path::new(m), &args.overrides)?,
        preset => {
            // Defaults, the preset, then `--set` (which may change the preset's fields).
            let mut table = toml::Table::new();
            if let Some(preset) = preset {
                table.insert(
                    "model".into(),
                    toml::Value::Table(toml::Table::from_iter([("preset".into(), preset.into())])),
                );
            }
            for item in &args.overrides {
                scalelong_schema::apply_override(&mut table, item)?;
            }
            crate::config::from_table(table)?
        }
    };
    let given_model = args.model.is_some().then(|| config.model.resolve()).transpose()?;
    let given_strategy = match (&args.strategy, args.model.as_deref()) {
        (Some(s), _) => Some(parse_strategy(s)?),
        (None, Some(m)) if is_file(m) => Some(config.strategy),
        _ => None,
    };
    let file = CheckpointFile::new(checkpoint).with_key(args.key.clone());
    let (model, strategy) = resolve_config(&file, given_model, given_strategy, args.heads)?;
    config.model = section_for(&model)?;
    config.strategy = strategy;
    config.validate().context("the imported run's config")?;

    let net = load_weights(model.init(strategy, device), &file)?;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create run folder", out.display()))?;
    write_json_atomic(&out.join("config.json"), &config)?;
    let state = CheckpointState { step: 0, config: config.clone() };
    checkpoint::save(out, &state, &net, &net, &crate::optimizer::adamw(&config))?;
    let message = format!("imported from {}", checkpoint.display());
    Status { state: RunState::Completed, step: 0, message: Some(message) }.write(out)?;
    Ok(config)
}

/// Writes a run's weights under the reference's names; returns the file written.
pub fn export(
    run: &Path,
    format: ExportFormat,
    weights: Weights,
    out: Option<PathBuf>,
    device: &Device,
) -> Result<PathBuf> {
    let (_, net) = checkpoint::load_latest_weights(run, weights.name(), device)?;
    let ExportFormat::Safetensors = format;
    let out = out.unwrap_or_else(|| run.join(format!("{}.safetensors", weights.name())));
    save_safetensors(&net, &out)?;
    Ok(out)
}
