//! Reads a sweep folder (docs/run-folder.md) into what the report needs of each run.
//!
//! Bad input (no sweep folder, a corrupt `sweep.json` or `config.json`, a malformed line in the
//! middle of a JSONL file) is an error naming the file. Pieces a run has not written yet (no
//! metrics, no diagnostics, no eval, no samples) are empty, because the report must also describe
//! a sweep that is still running.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use scalelong_diagnostics::records::{Record, read_records};
use scalelong_model::SkipScaling;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::run_folder::{Status, read_json};

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

/// The fields of an `eval.jsonl` line the report shows; null or absent values are `None`. Not the
/// writer's `eval::EvalLine`: a diverged run writes its non-finite held-out loss as null, which that
/// type's `f64` field cannot read back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EvalLine {
    pub step: u64,
    #[serde(default)]
    pub heldout_loss: Option<f64>,
    #[serde(default)]
    pub fd: Option<f64>,
    #[serde(default)]
    pub classifier_accuracy: Option<f64>,
}

#[derive(Deserialize)]
struct SweepFile {
    name: String,
    #[serde(default)]
    axes: BTreeMap<String, Value>,
    runs: Vec<SweepRunEntry>,
}

#[derive(Deserialize)]
struct SweepRunEntry {
    id: String,
    #[serde(default)]
    overrides: BTreeMap<String, Value>,
}

/// The part of a resolved `config.json` the report reads. Unknown fields are ignored on purpose:
/// a report must still read runs written by an older or newer config layout.
#[derive(Deserialize)]
struct ConfigView {
    seed: u64,
    strategy: SkipScaling,
    model: BTreeMap<String, Value>,
    optimizer: OptimizerView,
}

#[derive(Deserialize)]
struct OptimizerView {
    lr: f64,
}

#[derive(Deserialize)]
struct MetricsLine {
    step: u64,
    /// serde_json writes a non-finite loss as null.
    loss: Option<f64>,
}

pub fn read_sweep(sweep_dir: &Path) -> Result<SweepData> {
    if !sweep_dir.is_dir() {
        bail!("{}: no such sweep folder", sweep_dir.display());
    }
    let sweep_file: SweepFile = read_json(&sweep_dir.join("sweep.json"))?;
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
    Ok(SweepData { name: sweep_file.name, axes: sweep_file.axes.into_keys().collect(), runs, not_started })
}

fn read_run(run_dir: &Path, entry: SweepRunEntry) -> Result<RunData> {
    let config: ConfigView = read_json(&run_dir.join("config.json"))?;
    let status_path = run_dir.join("status.json");
    let status = if status_path.is_file() { Some(read_json::<Status>(&status_path)?) } else { None };
    let metrics_path = run_dir.join("metrics.jsonl");
    let losses = read_jsonl_if_present::<MetricsLine>(&metrics_path)?
        .into_iter()
        .filter_map(|line| Some((line.step, line.loss.filter(|loss| loss.is_finite())?)))
        // A resumed run may log a step twice; the line written last wins.
        .collect::<BTreeMap<u64, f64>>()
        .into_iter()
        .collect();
    let diagnostics_path = run_dir.join("diagnostics.jsonl");
    let diagnostics = if diagnostics_path.is_file() { read_records(&diagnostics_path)? } else { Vec::new() };
    let last_eval = read_jsonl_if_present::<EvalLine>(&run_dir.join("eval.jsonl"))?.pop();
    let mut comparison_axes = entry.overrides;
    comparison_axes.remove(STRATEGY_AXIS);
    Ok(RunData {
        id: entry.id,
        comparison_key: serde_json::to_string(&comparison_axes)?,
        model: model_label(&config.model),
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

/// `preset` followed by every other model field as `key=value`, keys sorted.
fn model_label(model: &BTreeMap<String, Value>) -> String {
    let preset = match model.get("preset") {
        Some(Value::String(name)) => name.clone(),
        Some(other) => other.to_string(),
        None => "custom".to_string(),
    };
    let overrides = model.iter().filter(|(key, _)| *key != "preset").map(|(key, value)| match value {
        Value::String(text) => format!("{key}={text}"),
        other => format!("{key}={other}"),
    });
    std::iter::once(preset).chain(overrides).collect::<Vec<_>>().join(" ")
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

/// Reads a JSONL file, or nothing when it does not exist. As for `diagnostics.jsonl`, an
/// unparsable final line without its newline is a write cut short by a killed run and is dropped;
/// any other unparsable line is an error naming the file and line.
fn read_jsonl_if_present<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let mut reader = BufReader::new(File::open(path).with_context(|| format!("{}: cannot open", path.display()))?);
    let mut values = Vec::new();
    let mut line = Vec::new();
    for line_number in 1.. {
        line.clear();
        if reader.read_until(b'\n', &mut line).with_context(|| format!("{}: cannot read", path.display()))? == 0 {
            break;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<T>(&line) {
            Ok(value) => values.push(value),
            Err(_) if line.last() != Some(&b'\n') => break,
            Err(error) => bail!("{}:{line_number}: malformed line: {error}", path.display()),
        }
    }
    Ok(values)
}
