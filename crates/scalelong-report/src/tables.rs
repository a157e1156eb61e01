//! The report's tables: one row per run (its status, plateau, spikes and final numbers), one per
//! cell (mean with interval over seeds), one per comparison with strategy `1`, the largest stable
//! learning rate per strategy and the gate fits (the theorem checks' rows: `bounds.rs`); each written as CSV and
//! Parquet with polars.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use polars::prelude::*;
use scalelong_analysis::inference::{Interval, LEVEL, paired_ratio_interval};
use scalelong_schema::{Censoring, LrBracket, SkipScaling, write_atomic};

use crate::analysis::{GateFit, strategies};
use crate::compare::{Cell, Comparison, Direction, Judged, Reading};
use crate::format_number;
use crate::skips::{EditRow, ImportanceProfile, SpectralRow};
use crate::sweep_data::{LR_AXIS, SweepData};
use scalelong_analysis::run_rules::RunOutcome;

pub struct SummaryRow {
    pub run_id: String,
    pub model: String,
    pub strategy_label: String,
    pub seed: u64,
    pub lr: f64,
    /// trained, collapsed, diverged or unfinished, with the step where it stopped.
    pub status: RunOutcome,
    pub status_text: String,
    pub heldout_loss: Option<f64>,
    pub zero_loss: f64,
    /// The held-out loss's relative drop over the last fifth of training (`None`: not covered).
    pub tail_drop: Option<f64>,
    pub plateaued: Option<bool>,
    pub loss_spikes: usize,
    pub grad_spikes: usize,
    pub fd: Option<f64>,
    pub classifier_accuracy: Option<f64>,
}

pub fn summary_rows(judged: &[Judged]) -> Vec<SummaryRow> {
    judged
        .iter()
        .map(|Judged { run, assessment }| {
            let eval = run.last_eval.as_ref();
            let stopped = run.status.as_ref().map(|status| status.step);
            let status_text = match (assessment.status, stopped) {
                (RunOutcome::Diverged, Some(step)) => format!("diverged at step {step}"),
                (RunOutcome::Unfinished, Some(step)) => format!("unfinished (step {step} of {})", run.steps),
                (RunOutcome::Unfinished, None) => "unfinished (no status.json)".to_string(),
                (status, _) => status.text().to_string(),
            };
            SummaryRow {
                run_id: run.id.clone(),
                model: run.model.clone(),
                strategy_label: run.strategy_label.clone(),
                seed: run.seed,
                lr: run.lr,
                status: assessment.status,
                status_text,
                heldout_loss: assessment.final_heldout,
                zero_loss: assessment.zero_loss,
                tail_drop: assessment.plateau.as_ref().map(|plateau| plateau.relative_drop),
                plateaued: assessment.plateau.as_ref().map(|plateau| plateau.plateaued),
                loss_spikes: assessment.loss_spikes,
                grad_spikes: assessment.grad_spikes,
                fd: eval.and_then(|eval| eval.fd).filter(|fd| fd.is_finite()),
                classifier_accuracy: eval.and_then(|eval| eval.classifier_accuracy),
            }
        })
        .collect()
}

/// The stability frontier of one model and strategy over a learning-rate axis.
pub struct StableLrRow {
    pub model: String,
    pub strategy: SkipScaling,
    pub strategy_label: String,
    /// The largest learning rate at which every seed's run trained; `None` when none did.
    pub largest_stable_lr: Option<f64>,
    /// Per seed, the largest learning rate at which that seed's run trained.
    pub per_seed: BTreeMap<u64, f64>,
    /// Every learning rate the strategy was run at, ascending.
    pub lrs_tried: Vec<f64>,
    /// This strategy's per-seed frontier over strategy 1's at the same seed (a geometric-mean
    /// ratio with its interval); `None` for strategy 1 itself or under 2 seeds.
    pub ratio_to_1: Option<Interval>,
    /// Where the folder has `frontier.json`: the seeds' brackets, which `per_seed` and
    /// `largest_stable_lr` then come from.
    pub bisection: Option<Bisection>,
}

/// A strategy's seeds as `scalelong frontier` bracketed them.
pub struct Bisection {
    /// The ratio of neighbouring rates the search probed: what an uncensored bracket spans.
    pub step_ratio: f64,
    /// Per seed, the smallest rate above its largest trained one at which it failed (none for a
    /// seed that trained at the searched interval's top).
    pub smallest_failed: BTreeMap<u64, f64>,
    /// Seeds that trained at the top of the searched interval: their rate in `per_seed` is a lower
    /// bound.
    pub trained_at_high: Vec<u64>,
    /// Seeds that failed at its bottom: no trained rate, so they are in no ratio.
    pub failed_at_low: Vec<u64>,
}

/// `None` unless the sweep has an `optimizer.lr` axis. With `frontier.json`, each seed's largest
/// trained rate is its bracket's, and the largest stable rate the smallest of them (none when a
/// seed failed at the bottom of the searched interval); without, both come from the runs.
pub fn stable_lr_rows(sweep: &SweepData, judged: &[Judged]) -> Option<Vec<StableLrRow>> {
    if !sweep.axes.contains(LR_AXIS) {
        return None;
    }
    let models: BTreeSet<&str> = judged.iter().map(|j| j.run.model.as_str()).collect();
    let mut rows = Vec::new();
    for model in models {
        for (strategy, label) in strategies(sweep) {
            let runs: Vec<&Judged> =
                judged.iter().filter(|j| j.run.model == model && j.run.strategy_label == label).collect();
            if runs.is_empty() {
                continue;
            }
            let statuses: Vec<(f64, u64, RunOutcome)> =
                runs.iter().map(|j| (j.run.lr, j.run.seed, j.assessment.status)).collect();
            let mut lrs_tried: Vec<f64> = statuses.iter().map(|(lr, _, _)| *lr).collect();
            lrs_tried.sort_by(f64::total_cmp);
            lrs_tried.dedup();
            let mut per_seed: BTreeMap<u64, f64> = BTreeMap::new();
            for &(lr, seed, status) in &statuses {
                if status == RunOutcome::Trained {
                    let best = per_seed.entry(seed).or_insert(lr);
                    *best = best.max(lr);
                }
            }
            let all_trained_at = |lr: f64| {
                statuses.iter().filter(|(l, _, _)| *l == lr).all(|(_, _, status)| *status == RunOutcome::Trained)
            };
            let mut largest_stable_lr = lrs_tried.iter().copied().rev().find(|&lr| all_trained_at(lr));
            let bisection = sweep.frontier.as_ref().map(|frontier| {
                let brackets: Vec<&LrBracket> = frontier
                    .brackets
                    .iter()
                    .filter(|bracket| bracket.model == model && bracket.strategy == label)
                    .collect();
                per_seed =
                    brackets.iter().filter_map(|bracket| Some((bracket.seed, bracket.largest_trained_lr?))).collect();
                let seeds_where =
                    |censoring| brackets.iter().filter(|b| b.censored == Some(censoring)).map(|b| b.seed).collect();
                let failed_at_low: Vec<u64> = seeds_where(Censoring::FailedAtLow);
                // Every seed trained up to its own bracket, so all of them at the smallest.
                largest_stable_lr =
                    if failed_at_low.is_empty() { per_seed.values().copied().min_by(f64::total_cmp) } else { None };
                Bisection {
                    step_ratio: frontier.step_ratio,
                    smallest_failed: brackets
                        .iter()
                        .filter_map(|bracket| Some((bracket.seed, bracket.smallest_failed_lr?)))
                        .collect(),
                    trained_at_high: seeds_where(Censoring::TrainedAtHigh),
                    failed_at_low,
                }
            });
            rows.push(StableLrRow {
                model: model.to_string(),
                strategy,
                strategy_label: label,
                largest_stable_lr,
                per_seed,
                lrs_tried,
                ratio_to_1: None,
                bisection,
            });
        }
    }
    // Ratios against strategy 1, seed by seed (a seed at which one of the two never trained has no
    // frontier and is left out).
    let baselines: Vec<(String, BTreeMap<u64, f64>)> = rows
        .iter()
        .filter(|row| row.strategy == SkipScaling::Original)
        .map(|row| (row.model.clone(), row.per_seed.clone()))
        .collect();
    for row in rows.iter_mut().filter(|row| row.strategy != SkipScaling::Original) {
        let Some((_, base)) = baselines.iter().find(|(model, _)| *model == row.model) else { continue };
        let seeds: Vec<u64> = row.per_seed.keys().filter(|seed| base.contains_key(seed)).copied().collect();
        let this: Vec<f64> = seeds.iter().map(|seed| row.per_seed[seed]).collect();
        let theirs: Vec<f64> = seeds.iter().map(|seed| base[seed]).collect();
        row.ratio_to_1 = paired_ratio_interval(&this, &theirs, LEVEL);
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
        "status" => rows.iter().map(|row| row.status_text.as_str()).collect::<Vec<_>>(),
        "heldout_loss" => rows.iter().map(|row| row.heldout_loss).collect::<Vec<_>>(),
        "zero_predictor_loss" => rows.iter().map(|row| row.zero_loss).collect::<Vec<_>>(),
        "last_fifth_relative_drop" => rows.iter().map(|row| row.tail_drop).collect::<Vec<_>>(),
        "plateaued" => rows.iter().map(|row| row.plateaued).collect::<Vec<_>>(),
        "loss_spikes" => rows.iter().map(|row| row.loss_spikes as u64).collect::<Vec<_>>(),
        "grad_norm_spikes" => rows.iter().map(|row| row.grad_spikes as u64).collect::<Vec<_>>(),
        "fd" => rows.iter().map(|row| row.fd).collect::<Vec<_>>(),
        "classifier_accuracy" => rows.iter().map(|row| row.classifier_accuracy).collect::<Vec<_>>(),
    }
}

/// Estimate, low and high of an optional interval as three columns' values.
fn parts(interval: Option<&Interval>) -> (Option<f64>, Option<f64>, Option<f64>) {
    interval.map_or((None, None, None), |i| (Some(i.estimate), Some(i.low), Some(i.high)))
}

pub fn cells_frame(cells: &[Cell]) -> PolarsResult<DataFrame> {
    let loss: Vec<_> = cells.iter().map(|cell| parts(cell.final_loss.as_ref())).collect();
    let fd: Vec<_> = cells.iter().map(|cell| parts(cell.fd.as_ref())).collect();
    df! {
        "model" => cells.iter().map(|cell| cell.model.as_str()).collect::<Vec<_>>(),
        "strategy" => cells.iter().map(|cell| cell.strategy_label.as_str()).collect::<Vec<_>>(),
        "setting" => cells.iter().map(|cell| cell.setting.as_str()).collect::<Vec<_>>(),
        "runs" => cells.iter().map(|cell| cell.runs.len() as u64).collect::<Vec<_>>(),
        "trained" => cells.iter().map(|cell| cell.count(RunOutcome::Trained) as u64).collect::<Vec<_>>(),
        "heldout_loss_mean" => loss.iter().map(|p| p.0).collect::<Vec<_>>(),
        "heldout_loss_low" => loss.iter().map(|p| p.1).collect::<Vec<_>>(),
        "heldout_loss_high" => loss.iter().map(|p| p.2).collect::<Vec<_>>(),
        "fd_mean" => fd.iter().map(|p| p.0).collect::<Vec<_>>(),
        "fd_low" => fd.iter().map(|p| p.1).collect::<Vec<_>>(),
        "fd_high" => fd.iter().map(|p| p.2).collect::<Vec<_>>(),
    }
}

/// One row per (comparison with strategy 1, measure): the estimate and its interval on the measure's
/// scale, the exact p-value and its Holm-adjusted value, the direction and whether the size of
/// interest is excluded.
pub fn comparisons_frame(comparisons: &[Comparison]) -> PolarsResult<DataFrame> {
    let rows: Vec<(&Comparison, &Reading)> =
        comparisons.iter().flat_map(|c| c.readings.iter().map(move |reading| (c, reading))).collect();
    let interval: Vec<_> = rows.iter().map(|(_, r)| parts(r.interval.as_ref())).collect();
    df! {
        "model" => rows.iter().map(|(c, _)| c.model.as_str()).collect::<Vec<_>>(),
        "strategy" => rows.iter().map(|(c, _)| c.strategy_label.as_str()).collect::<Vec<_>>(),
        "setting" => rows.iter().map(|(c, _)| c.setting.as_str()).collect::<Vec<_>>(),
        "seed_pairs" => rows.iter().map(|(c, _)| c.seeds.len() as u64).collect::<Vec<_>>(),
        "measure" => rows.iter().map(|(_, r)| r.measure.name()).collect::<Vec<_>>(),
        "estimate" => interval.iter().map(|p| p.0).collect::<Vec<_>>(),
        "low" => interval.iter().map(|p| p.1).collect::<Vec<_>>(),
        "high" => interval.iter().map(|p| p.2).collect::<Vec<_>>(),
        "of_interest" => rows.iter().map(|(_, r)| r.measure.effect().claimed).collect::<Vec<_>>(),
        "p" => rows.iter().map(|(_, r)| r.p_value).collect::<Vec<_>>(),
        "p_holm" => rows.iter().map(|(_, r)| r.p_holm).collect::<Vec<_>>(),
        "direction" => rows.iter().map(|(_, r)| direction_text(r.direction())).collect::<Vec<_>>(),
        "size_excluded" => rows.iter().map(|(_, r)| r.size_excluded()).collect::<Vec<_>>(),
        "censored_pairs" => rows.iter().map(|(_, r)| r.censored as u64).collect::<Vec<_>>(),
        "per_seed" => rows.iter().map(|(_, r)| r.per_seed.iter().map(|(seed, v)| format!("{seed}: {v:.4}")).collect::<Vec<_>>().join("; ")).collect::<Vec<_>>(),
    }
}

/// `established` (toward the effect of interest), `established, opposite`, `not established`.
pub fn direction_text(direction: Direction) -> &'static str {
    match direction {
        Direction::Claimed => "established",
        Direction::Opposite => "established, opposite",
        Direction::NotEstablished => "not established",
    }
}

/// A row's per-seed frontiers in words: `0: 0.01189 (failed at 0.01414), 1: >= 0.02 (trained at the
/// top), 2: < 0.005 (failed at the bottom)` with `frontier.json`, `0: 0.01, 1: 0.005` without.
pub fn per_seed_text(row: &StableLrRow) -> String {
    let mut seeds: Vec<(u64, String)> = row
        .per_seed
        .iter()
        .map(|(&seed, &lr)| {
            let text = match &row.bisection {
                Some(b) if b.trained_at_high.contains(&seed) => {
                    format!(">= {} (trained at the top)", format_number(lr))
                }
                Some(b) => match b.smallest_failed.get(&seed) {
                    Some(failed) => format!("{} (failed at {})", format_number(lr), format_number(*failed)),
                    None => format_number(lr),
                },
                None => format_number(lr),
            };
            (seed, text)
        })
        .collect();
    if let Some(b) = &row.bisection {
        for &seed in &b.failed_at_low {
            let failed = b.smallest_failed.get(&seed).map_or(String::new(), |lr| format_number(*lr));
            seeds.push((seed, format!("< {failed} (failed at the bottom)")));
        }
    }
    seeds.sort_by_key(|(seed, _)| *seed);
    seeds.into_iter().map(|(seed, text)| format!("{seed}: {text}")).collect::<Vec<_>>().join(", ")
}

pub fn stable_lr_frame(rows: &[StableLrRow]) -> PolarsResult<DataFrame> {
    let ratio: Vec<_> = rows.iter().map(|row| parts(row.ratio_to_1.as_ref())).collect();
    let seeds_text = |seeds: &[u64]| seeds.iter().map(|seed| seed.to_string()).collect::<Vec<_>>().join("; ");
    df! {
        "model" => rows.iter().map(|row| row.model.as_str()).collect::<Vec<_>>(),
        "strategy" => rows.iter().map(|row| row.strategy_label.as_str()).collect::<Vec<_>>(),
        "largest_stable_lr" => rows.iter().map(|row| row.largest_stable_lr).collect::<Vec<_>>(),
        "per_seed_largest_trained_lr" => rows.iter().map(|row| row.per_seed.iter().map(|(seed, lr)| format!("{seed}: {lr}")).collect::<Vec<_>>().join("; ")).collect::<Vec<_>>(),
        "ratio_to_1" => ratio.iter().map(|p| p.0).collect::<Vec<_>>(),
        "ratio_to_1_low" => ratio.iter().map(|p| p.1).collect::<Vec<_>>(),
        "ratio_to_1_high" => ratio.iter().map(|p| p.2).collect::<Vec<_>>(),
        "lrs_tried" => rows.iter().map(|row| join_numbers(&row.lrs_tried)).collect::<Vec<_>>(),
        "bracket_step_ratio" => rows.iter().map(|row| row.bisection.as_ref().map(|b| b.step_ratio)).collect::<Vec<_>>(),
        "per_seed_smallest_failed_lr" => rows.iter().map(|row| row.bisection.as_ref().map(|b| b.smallest_failed.iter().map(|(seed, lr)| format!("{seed}: {lr}")).collect::<Vec<_>>().join("; "))).collect::<Vec<_>>(),
        "seeds_trained_at_high" => rows.iter().map(|row| row.bisection.as_ref().map(|b| seeds_text(&b.trained_at_high))).collect::<Vec<_>>(),
        "seeds_failed_at_low" => rows.iter().map(|row| row.bisection.as_ref().map(|b| seeds_text(&b.failed_at_low))).collect::<Vec<_>>(),
    }
}

pub fn gate_fit_frame(fits: &[GateFit]) -> PolarsResult<DataFrame> {
    df! {
        "model" => fits.iter().map(|fit| fit.model.as_str()).collect::<Vec<_>>(),
        "strategy" => fits.iter().map(|fit| fit.strategy_label.as_str()).collect::<Vec<_>>(),
        "initial_gate_means_by_lsc" => fits.iter().map(|fit| join_numbers(&fit.initial_means)).collect::<Vec<_>>(),
        "final_gate_means_by_lsc" => fits.iter().map(|fit| join_numbers(&fit.final_means)).collect::<Vec<_>>(),
        "final_gate_spread_by_lsc" => fits.iter().map(|fit| join_numbers(&fit.final_spread)).collect::<Vec<_>>(),
        "moved_by_lsc" => fits.iter().map(|fit| fit.moved.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("; ")).collect::<Vec<_>>(),
        "per_run_kappa_hat_mean" => fits.iter().map(|fit| fit.kappa.map(|k| k.estimate)).collect::<Vec<_>>(),
        "per_run_kappa_hat_low" => fits.iter().map(|fit| fit.kappa.map(|k| k.low)).collect::<Vec<_>>(),
        "per_run_kappa_hat_high" => fits.iter().map(|fit| fit.kappa.map(|k| k.high)).collect::<Vec<_>>(),
        "a" => fits.iter().map(|fit| fit.fit.map(|fit| fit.a)).collect::<Vec<_>>(),
        "kappa_hat" => fits.iter().map(|fit| fit.fit.map(|fit| fit.kappa_hat)).collect::<Vec<_>>(),
        "r2" => fits.iter().map(|fit| fit.fit.map(|fit| fit.r2)).collect::<Vec<_>>(),
    }
}

/// One row per sampling-time setting of each model and strategy (docs/method.md §3.5).
pub fn skip_edits_frame(rows: &[EditRow]) -> PolarsResult<DataFrame> {
    let column = |f: &dyn Fn(&EditRow) -> Option<&Interval>| -> [Vec<Option<f64>>; 3] {
        let parts: Vec<_> = rows.iter().map(|row| parts(f(row))).collect();
        [parts.iter().map(|p| p.0).collect(), parts.iter().map(|p| p.1).collect(), parts.iter().map(|p| p.2).collect()]
    };
    let [heldout, heldout_low, heldout_high] = column(&|row| row.heldout.as_ref());
    let [change, change_low, change_high] = column(&|row| row.heldout_change.as_ref());
    let [fd, fd_low, fd_high] = column(&|row| row.fd.as_ref());
    let [ratio, ratio_low, ratio_high] = column(&|row| row.fd_ratio.as_ref());
    let bins = |row: &EditRow| {
        row.bin_changes
            .iter()
            .map(|change| change.map_or("".to_string(), |c| format!("{}", c.estimate)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    df! {
        "model" => rows.iter().map(|row| row.model.as_str()).collect::<Vec<_>>(),
        "strategy" => rows.iter().map(|row| row.strategy_label.as_str()).collect::<Vec<_>>(),
        "kind" => rows.iter().map(|row| row.kind.name()).collect::<Vec<_>>(),
        "setting" => rows.iter().map(|row| row.setting.as_str()).collect::<Vec<_>>(),
        "lsc" => rows.iter().map(|row| row.lsc).collect::<Vec<_>>(),
        "factor" => rows.iter().map(|row| row.factor).collect::<Vec<_>>(),
        "runs" => rows.iter().map(|row| row.runs as u64).collect::<Vec<_>>(),
        "heldout_loss_mean" => heldout,
        "heldout_loss_low" => heldout_low,
        "heldout_loss_high" => heldout_high,
        "heldout_change" => change,
        "heldout_change_low" => change_low,
        "heldout_change_high" => change_high,
        "heldout_change_by_t_bin" => rows.iter().map(bins).collect::<Vec<_>>(),
        "fd_mean" => fd,
        "fd_low" => fd_low,
        "fd_high" => fd_high,
        "fd_ratio" => ratio,
        "fd_ratio_low" => ratio_low,
        "fd_ratio_high" => ratio_high,
    }
}

/// One row per model, strategy, factor and LSC: the held-out loss increase with its interval and
/// the coefficient the LSC carried at the end.
pub fn importance_frame(profiles: &[ImportanceProfile]) -> PolarsResult<DataFrame> {
    let rows: Vec<(&ImportanceProfile, u32, Option<&Interval>)> = profiles
        .iter()
        .flat_map(|p| p.increase.iter().map(move |(lsc, interval)| (p, *lsc, interval.as_ref())))
        .collect();
    let increase: Vec<_> = rows.iter().map(|(_, _, interval)| parts(*interval)).collect();
    let coefficient = |p: &ImportanceProfile, lsc: u32| p.coefficients.iter().find(|(l, _)| *l == lsc).map(|(_, c)| *c);
    df! {
        "model" => rows.iter().map(|(p, _, _)| p.model.as_str()).collect::<Vec<_>>(),
        "strategy" => rows.iter().map(|(p, _, _)| p.strategy_label.as_str()).collect::<Vec<_>>(),
        "factor" => rows.iter().map(|(p, _, _)| p.factor).collect::<Vec<_>>(),
        "lsc" => rows.iter().map(|(_, lsc, _)| *lsc).collect::<Vec<_>>(),
        "heldout_increase" => increase.iter().map(|p| p.0).collect::<Vec<_>>(),
        "heldout_increase_low" => increase.iter().map(|p| p.1).collect::<Vec<_>>(),
        "heldout_increase_high" => increase.iter().map(|p| p.2).collect::<Vec<_>>(),
        "final_coefficient" => rows.iter().map(|(p, lsc, _)| coefficient(p, *lsc)).collect::<Vec<_>>(),
    }
}

/// One row per model, strategy and LSC: the skip's and the main path's low-frequency shares at the
/// last record, mean over runs.
pub fn spectral_frame(rows: &[SpectralRow]) -> PolarsResult<DataFrame> {
    let flat: Vec<(&SpectralRow, &(u32, f64, f64))> =
        rows.iter().flat_map(|row| row.per_lsc.iter().map(move |lsc| (row, lsc))).collect();
    df! {
        "model" => flat.iter().map(|(row, _)| row.model.as_str()).collect::<Vec<_>>(),
        "strategy" => flat.iter().map(|(row, _)| row.strategy_label.as_str()).collect::<Vec<_>>(),
        "lsc" => flat.iter().map(|(_, (lsc, _, _))| *lsc).collect::<Vec<_>>(),
        "skip_low_freq_share" => flat.iter().map(|(_, (_, skip, _))| *skip).collect::<Vec<_>>(),
        "main_low_freq_share" => flat.iter().map(|(_, (_, _, main))| *main).collect::<Vec<_>>(),
    }
}

/// Numbers joined by `; ` (a list inside one CSV cell).
fn join_numbers(values: &[f64]) -> String {
    values.iter().map(|value| format!("{value}")).collect::<Vec<_>>().join("; ")
}

/// Writes `<out_dir>/<stem>.csv` and `<out_dir>/<stem>.parquet`, each whole or not at all
/// (encoded in memory, then written atomically); returns both paths.
pub fn write_table(frame: &mut DataFrame, out_dir: &Path, stem: &str) -> Result<[PathBuf; 2]> {
    let csv_path = out_dir.join(format!("{stem}.csv"));
    let parquet_path = out_dir.join(format!("{stem}.parquet"));
    // Both anyhow and polars offer `with_context` on a polars result, hence the explicit error.
    let encode_error = |path: &Path, error: PolarsError| anyhow!("{}: cannot encode: {error}", path.display());
    let mut csv = Vec::new();
    CsvWriter::new(&mut csv).finish(frame).map_err(|error| encode_error(&csv_path, error))?;
    write_atomic(&csv_path, &csv)?;
    let mut parquet = Vec::new();
    ParquetWriter::new(&mut parquet).finish(frame).map_err(|error| encode_error(&parquet_path, error))?;
    write_atomic(&parquet_path, &parquet)?;
    Ok([csv_path, parquet_path])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::assess_claims;
    use crate::compare::judge;
    use crate::skips::SkipFindings;
    use crate::sweep_data::read_sweep;
    use crate::testing::SweepFixture;
    use scalelong_schema::{Frontier, write_json_atomic};

    #[test]
    fn a_frontier_file_gives_each_seed_its_bracket() {
        let root = std::env::temp_dir().join(format!("scalelong-report-{}-frontier", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // Runs at two rates; frontier.json's brackets differ from what the runs alone would give,
        // so that the rows can only have come from it.
        let sweep_dir = SweepFixture { lrs: vec![1e-4, 2e-4], ..SweepFixture::default() }.write(&root);
        let model = read_sweep(&sweep_dir).unwrap().runs[0].model.clone();
        let bracket = |strategy: &str, seed, trained: Option<f64>, failed: Option<f64>, censored| LrBracket {
            cell: format!("{strategy}_seed{seed}"),
            model: model.clone(),
            strategy: strategy.to_string(),
            seed,
            largest_trained_lr: trained,
            smallest_failed_lr: failed,
            censored,
            probes: Vec::new(),
        };
        let frontier = Frontier {
            low: 1e-4,
            high: 2e-4,
            resolution: 1.2,
            step_ratio: 2f64.powf(0.25),
            brackets: vec![
                bracket("1", 0, Some(1e-4), Some(1.189e-4), None),
                bracket("1", 1, Some(1e-4), Some(1.189e-4), None),
                bracket("1", 2, Some(1.189e-4), Some(1.414e-4), None),
                bracket("LS", 0, Some(1.5e-4), Some(1.8e-4), None),
                bracket("LS", 1, Some(2e-4), None, Some(Censoring::TrainedAtHigh)),
                bracket("LS", 2, None, Some(1e-4), Some(Censoring::FailedAtLow)),
            ],
        };
        write_json_atomic(&sweep_dir.join("frontier.json"), &frontier).unwrap();
        let sweep = read_sweep(&sweep_dir).unwrap();
        let judged = judge(&sweep);
        let rows = stable_lr_rows(&sweep, &judged).unwrap();
        let [baseline, ls] = &rows[..] else { panic!("two strategies, got {}", rows.len()) };

        assert_eq!(baseline.per_seed, BTreeMap::from([(0, 1e-4), (1, 1e-4), (2, 1.189e-4)]));
        assert_eq!(baseline.largest_stable_lr, Some(1e-4), "the smallest seed's");
        assert_eq!(ls.per_seed, BTreeMap::from([(0, 1.5e-4), (1, 2e-4)]));
        assert_eq!(ls.largest_stable_lr, None, "seed 2 failed at the bottom");
        let bisection = ls.bisection.as_ref().unwrap();
        assert_eq!((bisection.trained_at_high.as_slice(), bisection.failed_at_low.as_slice()), (&[1][..], &[2][..]));
        // Seeds 0 and 1 paired (seed 2 has no LS frontier): ratios 1.5 and 2.
        let ratio = ls.ratio_to_1.as_ref().unwrap();
        assert_eq!(ratio.n, 2);
        assert!((ratio.estimate - 3f64.sqrt()).abs() < 1e-9, "{}", ratio.estimate);
        let text = per_seed_text(ls);
        for part in
            ["0: 1.5e-4 (failed at 1.8e-4)", "1: >= 2e-4 (trained at the top)", "2: < 1e-4 (failed at the bottom)"]
        {
            assert!(text.contains(part), "{part:?} not in {text:?}");
        }

        let claims = assess_claims(&[], &[], &[], Some(&rows), &SkipFindings::new(&judged));
        let claim = claims.iter().find(|claim| claim.name.starts_with("(f) LS")).unwrap();
        assert!(
            claim.rests_on.contains("bracketed by bisection in log learning rate to within 1.189x"),
            "{}",
            claim.rests_on
        );
        assert!(claim.note.contains("LS trained at the top of the searched interval at seed(s) 1"), "{}", claim.note);
        assert!(claim.note.contains("LS failed at its bottom at seed(s) 2"), "{}", claim.note);
        let _ = std::fs::remove_dir_all(&root);
    }
}
