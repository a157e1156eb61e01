//! Reads a sweep folder (docs/run-folder.md) into what the report needs of each run.
//!
//! Bad input (no sweep folder, a corrupt `sweep.json` or `config.json`, a malformed line in the
//! middle of a JSONL file) is an error naming the file. Pieces a run has not written yet (no
//! metrics, no diagnostics, no eval, no samples) are empty, because the report must also describe
//! a sweep that is still running.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use scalelong_schema::{
    EvalLine, MetricsLine, Record, RunConfig, SkipScaling, Status, SweepManifest, SweepRun, read_json, read_jsonl,
};

/// The sweep axis that varies the learning rate (a dotted config key, as in a sweep file).
pub const LR_AXIS: &str = "optimizer.lr";
const STRATEGY_AXIS: &str = "strategy";

pub struct SweepData {
    pub name: String,
    /// Names of the grid axes, e.g. `strategy`, `seed`, `optimizer.lr`.
    pub axes: BTreeSet<String>,
    /// Runs with a `config.json`, in `sweep.json` order.
    pub runs: Vec<RunData>,
    /// Runs listed in `sweep.json` whose folder holds no `config.json` yet.
    pub not_started: Vec<String>,
}

pub struct RunData {
    pub id: String,
    /// The run's axis values except the strategy, as canonical JSON: runs with equal keys differ
    /// only in their strategy, which is what a speed-up compares.
    pub comparison_key: String,
    /// Preset name plus overridden fields, e.g. `uvit-small depth=16`.
    pub model: String,
    pub strategy: SkipScaling,
    /// [`SkipScaling::label`].
    pub strategy_label: String,
    pub seed: u64,
    pub lr: f64,
    /// `None` when the run wrote no `status.json`.
    pub status: Option<Status>,
    /// `(step, loss)` of `metrics.jsonl`, sorted by step, non-finite (null) losses left out.
    pub losses: Vec<(u64, f64)>,
    pub diagnostics: Vec<Record>,
    /// The last line of `eval.jsonl`.
    pub last_eval: Option<EvalLine>,
    /// The newest `samples/step_*.png` with its step.
    pub newest_sample: Option<(u64, PathBuf)>,
}

pub fn read_sweep(sweep_dir: &Path) -> Result<SweepData> {
    if !sweep_dir.is_dir() {
        bail!("{}: no such sweep folder", sweep_dir.display());
    }
    let sweep_file: SweepManifest = read_json(&sweep_dir.join("sweep.json"))?;
    let mut runs = Vec::new();
    let mut not_started = Vec::new();
    for entry in sweep_file.runs {
        let run_dir = sweep_dir.join(&entry.id);
        if run_dir.join("config.json").is_file() {
            runs.push(read_run(&run_dir, entry)?);
        } else {
            not_started.push(entry.id);
        }
    }
    Ok(SweepData { name: sweep_file.name, axes: sweep_file.axes.keys().cloned().collect(), runs, not_started })
}

fn read_run(run_dir: &Path, entry: SweepRun) -> Result<RunData> {
    let config: RunConfig = read_json(&run_dir.join("config.json"))?;
    let status_path = run_dir.join("status.json");
    let status = if status_path.is_file() { Some(read_json::<Status>(&status_path)?) } else { None };
    let metrics_path = run_dir.join("metrics.jsonl");
    let losses = read_jsonl::<MetricsLine>(&metrics_path)?
        .into_iter()
        .filter(|line| line.loss.is_finite())
        .map(|line| (line.step, line.loss))
        // A resumed run may log a step twice; the line written last wins.
        .collect::<BTreeMap<u64, f64>>()
        .into_iter()
        .collect();
    let diagnostics_path = run_dir.join("diagnostics.jsonl");
    let diagnostics = read_jsonl::<Record>(&diagnostics_path)?;
    let last_eval = read_jsonl::<EvalLine>(&run_dir.join("eval.jsonl"))?.pop();
    let mut comparison_axes = entry.overrides;
    comparison_axes.remove(STRATEGY_AXIS);
    Ok(RunData {
        id: entry.id,
        comparison_key: serde_json::to_string(&comparison_axes)?,
        model: config.model.describe(),
        strategy: config.strategy,
        strategy_label: config.strategy.label(),
        seed: config.seed,
        lr: config.optimizer.lr,
        status,
        losses,
        diagnostics,
        last_eval,
        newest_sample: newest_sample(&run_dir.join("samples"))?,
    })
}

/// The `samples/step_<step>.png` with the largest step; `None` without a samples folder.
fn newest_sample(samples_dir: &Path) -> Result<Option<(u64, PathBuf)>> {
    if !samples_dir.is_dir() {
        return Ok(None);
    }
    let entries = std::fs::read_dir(samples_dir).with_context(|| format!("{}: cannot list", samples_dir.display()))?;
    let mut newest = None;
    for entry in entries {
        let path = entry.with_context(|| format!("{}: cannot list", samples_dir.display()))?.path();
        let step = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix("step_")?.strip_suffix(".png")?.parse::<u64>().ok());
        if let Some(step) = step
            && newest.as_ref().is_none_or(|(newest_step, _)| step > *newest_step)
        {
            newest = Some((step, path));
        }
    }
    Ok(newest)
}
