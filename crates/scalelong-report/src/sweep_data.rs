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
    AnalysisPlan, EvalLine, Frontier, MetricsLine, Record, RunConfig, SkipEvalLine, SkipScaling, Status, SweepManifest,
    SweepRun, read_json, read_jsonl,
};

/// The sweep axis that varies the learning rate (a dotted config key, as in a sweep file).
pub const LR_AXIS: &str = "optimizer.lr";
const STRATEGY_AXIS: &str = "strategy";
const SEED_AXIS: &str = "seed";

pub struct SweepData {
    pub name: String,
    /// Names of the grid axes, e.g. `strategy`, `seed`, `optimizer.lr`.
    pub axes: BTreeSet<String>,
    /// Runs with a `config.json`, in `sweep.json` order.
    pub runs: Vec<RunData>,
    /// Runs listed in `sweep.json` whose folder holds no `config.json` yet.
    pub not_started: Vec<String>,
    /// The analysis the sweep file fixed before its runs.
    pub analysis: AnalysisPlan,
    /// `frontier.json`, where `scalelong frontier` made the folder: each cell's learning-rate bracket.
    pub frontier: Option<Frontier>,
}

pub struct RunData {
    pub id: String,
    /// The run's other axis values, as `key=value` joined by `, `: what runs of one cell share
    /// besides model and strategy (seed and model axes left out); empty when there are none.
    pub setting: String,
    /// Preset name plus overridden fields, e.g. `uvit-small depth=16`.
    pub model: String,
    pub strategy: SkipScaling,
    /// [`SkipScaling::label`].
    pub strategy_label: String,
    pub seed: u64,
    pub lr: f64,
    /// The steps the run is configured to train.
    pub steps: u64,
    /// The run's whole config, for the methods paragraph.
    pub config: RunConfig,
    /// `None` when the run wrote no `status.json`.
    pub status: Option<Status>,
    /// `(step, loss)` of `metrics.jsonl`, sorted by step, non-finite (null) losses left out.
    pub losses: Vec<(u64, f64)>,
    /// Every line of `metrics.jsonl`, sorted by step (a step logged twice by a resumed run: the
    /// line written last).
    pub metrics: Vec<MetricsLine>,
    pub diagnostics: Vec<Record>,
    /// Every line of `eval.jsonl`, sorted by step (the line written last per step).
    pub evals: Vec<EvalLine>,
    /// The last line of `eval.jsonl`.
    pub last_eval: Option<EvalLine>,
    /// Every line of `skip_eval.jsonl` (sampling-time skip edits), in file order; empty without one.
    pub skip_evals: Vec<SkipEvalLine>,
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
    let frontier = sweep_dir.join("frontier.json");
    Ok(SweepData {
        name: sweep_file.name,
        axes: sweep_file.axes.keys().cloned().collect(),
        runs,
        not_started,
        analysis: sweep_file.analysis,
        frontier: frontier.is_file().then(|| read_json(&frontier)).transpose()?,
    })
}

fn read_run(run_dir: &Path, entry: SweepRun) -> Result<RunData> {
    let config: RunConfig = read_json(&run_dir.join("config.json"))?;
    let status_path = run_dir.join("status.json");
    let status = if status_path.is_file() { Some(read_json::<Status>(&status_path)?) } else { None };
    // A resumed run may log a step twice; the line written last wins.
    let metrics: Vec<MetricsLine> = read_jsonl::<MetricsLine>(&run_dir.join("metrics.jsonl"))?
        .into_iter()
        .map(|line| (line.step, line))
        .collect::<BTreeMap<u64, MetricsLine>>()
        .into_values()
        .collect();
    let losses = metrics.iter().filter(|line| line.loss.is_finite()).map(|line| (line.step, line.loss)).collect();
    let diagnostics = read_jsonl::<Record>(&run_dir.join("diagnostics.jsonl"))?;
    let evals: Vec<EvalLine> = read_jsonl::<EvalLine>(&run_dir.join("eval.jsonl"))?
        .into_iter()
        .map(|line| (line.step, line))
        .collect::<BTreeMap<u64, EvalLine>>()
        .into_values()
        .collect();
    let last_eval = evals.last().cloned();
    let mut comparison_axes = entry.overrides;
    comparison_axes.remove(STRATEGY_AXIS);
    let setting = comparison_axes
        .iter()
        .filter(|(key, _)| key.as_str() != SEED_AXIS && !key.starts_with("model"))
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(RunData {
        id: entry.id,
        setting,
        model: config.model.describe(),
        strategy: config.strategy,
        strategy_label: config.strategy.label(),
        seed: config.seed,
        lr: config.optimizer.lr,
        steps: config.steps,
        config: config.clone(),
        status,
        losses,
        metrics,
        diagnostics,
        evals,
        last_eval,
        skip_evals: read_jsonl::<SkipEvalLine>(&run_dir.join("skip_eval.jsonl"))?,
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
