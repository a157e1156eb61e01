//! The report's tables: one summary row per run with its speed-up over strategy `1`, the largest
//! stable learning rate per strategy, and the rows of the theorem checks; each written as CSV and
//! Parquet with polars.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use polars::prelude::*;
use scalelong_schema::SkipScaling;

use super::analysis::{GateFit, LOSS_SMOOTHING_WINDOW, ModelChecks, moving_average, strategies};
use super::sweep_data::{LR_AXIS, RunData, SweepData};
use scalelong_schema::RunState;

/// The fraction of the logged losses, at the end, averaged into the final loss.
const FINAL_LOSS_FRACTION: f64 = 0.1;

pub struct SummaryRow {
    pub run_id: String,
    pub model: String,
    pub strategy: SkipScaling,
    pub strategy_label: String,
    pub seed: u64,
    pub lr: f64,
    pub status: String,
    pub completed: bool,
    /// Mean of the last 10% of the logged losses.
    pub final_loss: Option<f64>,
    pub heldout_loss: Option<f64>,
    pub fd: Option<f64>,
    pub classifier_accuracy: Option<f64>,
    /// The final smoothed loss of the strategy-`1` run with the same other settings (the speed-up's
    /// baseline); `None` without such a run or without its losses.
    pub target_loss: Option<f64>,
    /// First logged step whose smoothed loss is at or below `target_loss`.
    pub steps_to_target: Option<u64>,
    /// `steps_to_target` of the baseline divided by this run's.
    pub speedup_vs_1: Option<f64>,
}

pub fn summary_rows(sweep: &SweepData) -> Vec<SummaryRow> {
    let baselines: BTreeMap<&str, &RunData> = sweep
        .runs
        .iter()
        .filter(|run| run.strategy == SkipScaling::Original)
        .map(|run| (run.comparison_key.as_str(), run))
        .collect();
    sweep
        .runs
        .iter()
        .map(|run| {
            let baseline = baselines.get(run.comparison_key.as_str());
            let target = baseline.and_then(|baseline| final_smoothed_loss(baseline));
            let run_steps = target.and_then(|target| steps_to_target(run, target));
            let baseline_steps = baseline.zip(target).and_then(|(baseline, target)| steps_to_target(baseline, target));
            let eval = run.last_eval.as_ref();
            SummaryRow {
                run_id: run.id.clone(),
                model: run.model.clone(),
                strategy: run.strategy,
                strategy_label: run.strategy_label.clone(),
                seed: run.seed,
                lr: run.lr,
                status: status_text(run),
                completed: run.status.as_ref().is_some_and(|status| status.state == RunState::Completed),
                final_loss: final_loss(&run.losses),
                heldout_loss: eval.map(|eval| eval.heldout_loss).filter(|loss| loss.is_finite()),
                fd: eval.and_then(|eval| eval.fd),
                classifier_accuracy: eval.and_then(|eval| eval.classifier_accuracy),
                target_loss: target,
                steps_to_target: run_steps,
                // A run logged at step 0 could reach the target there; step 1 is as early as counts.
                speedup_vs_1: baseline_steps
                    .zip(run_steps)
                    .map(|(baseline_steps, steps)| baseline_steps.max(1) as f64 / steps.max(1) as f64),
            }
        })
        .collect()
}

fn status_text(run: &RunData) -> String {
    match &run.status {
        None => "no status.json".to_string(),
        Some(status) => match status.state {
            RunState::Completed => "completed".to_string(),
            RunState::Diverged => format!("diverged at step {}", status.step),
            RunState::Running => format!("running (step {})", status.step),
        },
    }
}

fn final_loss(losses: &[(u64, f64)]) -> Option<f64> {
    let count = ((losses.len() as f64 * FINAL_LOSS_FRACTION).ceil() as usize).max(1);
    let tail: Vec<f64> = losses[losses.len().saturating_sub(count)..].iter().map(|(_, loss)| *loss).collect();
    scalelong_analysis::stats::mean(&tail)
}

fn final_smoothed_loss(run: &RunData) -> Option<f64> {
    moving_average(&run.losses, LOSS_SMOOTHING_WINDOW).last().map(|(_, loss)| *loss)
}

fn steps_to_target(run: &RunData, target: f64) -> Option<u64> {
    moving_average(&run.losses, LOSS_SMOOTHING_WINDOW)
        .into_iter()
        .find(|(_, loss)| *loss <= target)
        .map(|(step, _)| step)
}

/// The largest learning rate at which every run of one model and strategy completed.
pub struct StableLrRow {
    pub model: String,
    pub strategy_label: String,
    /// `None` when no learning rate qualifies.
    pub largest_stable_lr: Option<f64>,
    /// Every learning rate the strategy was run at, ascending.
    pub lrs_tried: Vec<f64>,
}

/// `None` unless the sweep has an `optimizer.lr` axis.
pub fn stable_lr_rows(sweep: &SweepData, summary: &[SummaryRow]) -> Option<Vec<StableLrRow>> {
    if !sweep.axes.contains(LR_AXIS) {
        return None;
    }
    let models: BTreeSet<&str> = summary.iter().map(|row| row.model.as_str()).collect();
    let mut rows = Vec::new();
    for model in models {
        for (_, label) in strategies(sweep) {
            // Learning rates as bit patterns: equal f64 values group together.
            let mut completed_by_lr: BTreeMap<u64, bool> = BTreeMap::new();
            for row in summary.iter().filter(|row| row.model == model && row.strategy_label == label) {
                *completed_by_lr.entry(row.lr.to_bits()).or_insert(true) &= row.completed;
            }
            if completed_by_lr.is_empty() {
                continue;
            }
            let mut lrs_tried: Vec<f64> = completed_by_lr.keys().map(|bits| f64::from_bits(*bits)).collect();
            lrs_tried.sort_by(f64::total_cmp);
            let largest_stable_lr = completed_by_lr
                .iter()
                .filter(|(_, completed)| **completed)
                .map(|(bits, _)| f64::from_bits(*bits))
                .max_by(f64::total_cmp);
            rows.push(StableLrRow { model: model.to_string(), strategy_label: label, largest_stable_lr, lrs_tried });
        }
    }
    Some(rows)
}

pub fn summary_frame(rows: &[SummaryRow]) -> PolarsResult<DataFrame> {
    df! {
        "run_id" => rows.iter().map(|row| row.run_id.as_str()).collect::<Vec<_>>(),
        "model" => rows.iter().map(|row| row.model.as_str()).collect::<Vec<_>>(),
        "strategy" => rows.iter().map(|row| row.strategy_label.as_str()).collect::<Vec<_>>(),
        "seed" => rows.iter().map(|row| row.seed).collect::<Vec<_>>(),
        "lr" => rows.iter().map(|row| row.lr).collect::<Vec<_>>(),
        "status" => rows.iter().map(|row| row.status.as_str()).collect::<Vec<_>>(),
        "final_loss" => rows.iter().map(|row| row.final_loss).collect::<Vec<_>>(),
        "heldout_loss" => rows.iter().map(|row| row.heldout_loss).collect::<Vec<_>>(),
        "fd" => rows.iter().map(|row| row.fd).collect::<Vec<_>>(),
        "classifier_accuracy" => rows.iter().map(|row| row.classifier_accuracy).collect::<Vec<_>>(),
        "steps_to_target" => rows.iter().map(|row| row.steps_to_target).collect::<Vec<_>>(),
        "speedup_vs_1" => rows.iter().map(|row| row.speedup_vs_1).collect::<Vec<_>>(),
    }
}

pub fn stable_lr_frame(rows: &[StableLrRow]) -> PolarsResult<DataFrame> {
    df! {
        "model" => rows.iter().map(|row| row.model.as_str()).collect::<Vec<_>>(),
        "strategy" => rows.iter().map(|row| row.strategy_label.as_str()).collect::<Vec<_>>(),
        "largest_stable_lr" => rows.iter().map(|row| row.largest_stable_lr).collect::<Vec<_>>(),
        "lrs_tried" => rows.iter().map(|row| join_numbers(&row.lrs_tried)).collect::<Vec<_>>(),
    }
}

/// Every row of every check, with the model and theorem it belongs to.
pub fn theorem_rows_frame(model_checks: &[ModelChecks]) -> PolarsResult<DataFrame> {
    let rows: Vec<(&str, &str, &scalelong_analysis::theorems::CheckRow)> = model_checks
        .iter()
        .flat_map(|model| {
            model
                .checks
                .iter()
                .flat_map(move |check| check.rows.iter().map(move |row| (model.model.as_str(), check.theorem, row)))
        })
        .collect();
    df! {
        "model" => rows.iter().map(|(model, _, _)| *model).collect::<Vec<_>>(),
        "theorem" => rows.iter().map(|(_, theorem, _)| *theorem).collect::<Vec<_>>(),
        "run_id" => rows.iter().map(|(_, _, row)| row.run_id.as_str()).collect::<Vec<_>>(),
        "strategy" => rows.iter().map(|(_, _, row)| row.strategy.as_str()).collect::<Vec<_>>(),
        "layer_or_bin" => rows.iter().map(|(_, _, row)| row.layer_or_bin.as_str()).collect::<Vec<_>>(),
        "measured" => rows.iter().map(|(_, _, row)| row.measured).collect::<Vec<_>>(),
        "predicted" => rows.iter().map(|(_, _, row)| row.predicted).collect::<Vec<_>>(),
    }
}

pub fn gate_fit_frame(fits: &[GateFit]) -> PolarsResult<DataFrame> {
    df! {
        "model" => fits.iter().map(|fit| fit.model.as_str()).collect::<Vec<_>>(),
        "strategy" => fits.iter().map(|fit| fit.strategy_label.as_str()).collect::<Vec<_>>(),
        "final_gate_means_by_lsc" => fits.iter().map(|fit| join_numbers(&fit.final_means)).collect::<Vec<_>>(),
        "a" => fits.iter().map(|fit| fit.fit.map(|fit| fit.a)).collect::<Vec<_>>(),
        "kappa_hat" => fits.iter().map(|fit| fit.fit.map(|fit| fit.kappa_hat)).collect::<Vec<_>>(),
        "r2" => fits.iter().map(|fit| fit.fit.map(|fit| fit.r2)).collect::<Vec<_>>(),
    }
}

/// Numbers joined by `; ` (a list inside one CSV cell).
fn join_numbers(values: &[f64]) -> String {
    values.iter().map(|value| format!("{value}")).collect::<Vec<_>>().join("; ")
}

/// Writes `<out_dir>/<stem>.csv` and `<out_dir>/<stem>.parquet`; returns both paths.
pub fn write_table(frame: &mut DataFrame, out_dir: &Path, stem: &str) -> Result<[PathBuf; 2]> {
    let csv_path = out_dir.join(format!("{stem}.csv"));
    let parquet_path = out_dir.join(format!("{stem}.parquet"));
    let create = |path: &Path| File::create(path).with_context(|| format!("{}: cannot create", path.display()));
    // Both anyhow and polars offer `with_context` on a polars result, hence the explicit error.
    let write_error = |path: &Path, error: PolarsError| anyhow!("{}: cannot write: {error}", path.display());
    CsvWriter::new(create(&csv_path)?).finish(frame).map_err(|error| write_error(&csv_path, error))?;
    ParquetWriter::new(create(&parquet_path)?).finish(frame).map_err(|error| write_error(&parquet_path, error))?;
    Ok([csv_path, parquet_path])
}
