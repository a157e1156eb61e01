//! `scalelong diagnose`: one record of every diagnostic on networks that are not training (runs
//! of ours, or PyTorch checkpoints imported on the way), measured on the test split.
//!
//! The output folder is laid out like a sweep (docs/run-folder.md), one run folder per input with
//! `config.json`, `status.json` and a one-record `diagnostics.jsonl`, so `scalelong report` reads
//! it and compares the inputs side by side: feature norms per LSC, skip ratios, LS gates and
//! their decay fit, robustness per timestep bin, per-bin gradient norms. Gradient norms on a
//! training batch and relative updates need a training step and are not recorded.

use crate::checkpoint::load_latest_weights;
use crate::config::ResolveModel;
use crate::exchange::{ImportArgs, Weights, import};
use crate::images::load_images;
use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use scalelong_data::Split;
use scalelong_diagnostics::recorder::Recorder;
use scalelong_model::diffusion::NoiseSchedule;
use scalelong_schema::{RunState, Status, SweepManifest, SweepRun, write_atomic, write_json_atomic};
use std::path::{Path, PathBuf};

/// What one diagnosed input became.
pub struct Diagnosed {
    pub id: String,
    pub records: usize,
}

/// Diagnoses each input (a run folder, or a checkpoint file imported with `import_args`) into
/// `<out>/<id>/`; writes `<out>/sweep.json` last, once every run folder is complete.
pub fn diagnose(
    inputs: &[PathBuf],
    import_args: &ImportArgs,
    weights: Weights,
    out: &Path,
    device: &Device,
) -> Result<Vec<Diagnosed>> {
    if inputs.is_empty() {
        bail!("diagnose: give at least one run folder or checkpoint file");
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mut done = Vec::new();
    let mut entries = Vec::new();
    for input in inputs {
        let id = input
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("{}: cannot name a run after this path", input.display()))?
            .to_string();
        if entries.iter().any(|(other, _): &(String, String)| *other == id) {
            bail!("{}: two inputs would both be diagnosed into {id}/; rename one", input.display());
        }
        let dir = out.join(&id);
        if input.is_dir() && dir.canonicalize().ok() == input.canonicalize().ok() {
            bail!("{}: --out would write over the run itself; choose another folder", input.display());
        }
        let source = if input.is_dir() {
            input.clone()
        } else {
            import(input, import_args, &dir, device).with_context(|| format!("importing {}", input.display()))?;
            dir.clone()
        };
        let (state, net) = load_latest_weights(&source, weights.name(), device)?;
        let config = state.config;
        let model = config.model.resolve()?;
        let test_set = load_images(&config, &model, Split::Test)
            .with_context(|| format!("the test split for {}", input.display()))?;
        let mut settings = config.diagnostics.clone();
        settings.every = settings.every.max(1);
        let schedule = NoiseSchedule::new(&config.diffusion.schedule);
        let recorder = Recorder::new(&settings, &test_set, &schedule, device).map_err(anyhow::Error::msg)?;
        let rows = recorder.snapshot(state.step, &net);

        std::fs::create_dir_all(&dir)?;
        write_json_atomic(&dir.join("config.json"), &config)?;
        let mut jsonl = String::new();
        for row in &rows {
            jsonl.push_str(&serde_json::to_string(row)?);
            jsonl.push('\n');
        }
        write_atomic(&dir.join("diagnostics.jsonl"), jsonl.as_bytes())?;
        let message = format!("diagnosed {} ({} weights) at step {}", input.display(), weights.name(), state.step);
        Status { state: RunState::Completed, step: state.step, message: Some(message) }.write(&dir)?;
        entries.push((id.clone(), config.strategy.label()));
        done.push(Diagnosed { id, records: rows.len() });
    }
    let strategy =
        |label: &String| toml::Table::from_iter([("strategy".to_string(), toml::Value::from(label.as_str()))]);
    let strategies: Vec<toml::Value> = entries.iter().map(|(_, s)| toml::Value::from(s.as_str())).collect();
    let sweep = SweepManifest {
        name: out.file_name().and_then(|n| n.to_str()).unwrap_or("diagnose").to_string(),
        base_config: None,
        axes: toml::Table::from_iter([("strategy".to_string(), toml::Value::Array(strategies))]),
        runs: entries.iter().map(|(id, s)| SweepRun { id: id.clone(), overrides: strategy(s) }).collect(),
        analysis: Default::default(),
    };
    write_json_atomic(&out.join("sweep.json"), &sweep)?;
    Ok(done)
}
