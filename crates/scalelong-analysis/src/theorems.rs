//! Empirical checks of ScaleLong's bounds (docs/method.md §4) against recorded diagnostics.
//!
//! Each check turns every run into rows of (measured, predicted) pairs, where "predicted" is the
//! bound's variable part with its unknown constants dropped. The bounds only fix an ordering, so the
//! checks test orderings, at two levels that answer different questions (docs/method.md §4.4):
//!
//! - **Between runs**: Spearman's rank correlation of the runs' mean measured value against their
//!   mean predicted value. What differs between runs is the skip coefficients (and the seed), so
//!   this is the test of "smaller coefficients, smaller X". 95% interval: a percentile bootstrap
//!   over runs ([`BOOTSTRAP_RESAMPLES`] resamples, seeded); p-value: a permutation test of the runs'
//!   means.
//! - **Within runs**: the mean over runs of each run's own Spearman over its rows (the LSCs or
//!   timestep bins of one network): the bound's ordering inside one network, where the coefficients
//!   are fixed. 95% interval: the same bootstrap over runs; p-value: a sign-flip test of the runs'
//!   correlations. Absent when runs have one row each.
//!
//! Pooling every row into one correlation, as the first version did, mixes the two: on the default
//! sweep it read -0.19 for Thm 3.1 (a negative within-run ordering over LSCs outweighing a positive
//! one between strategies) and +0.33 for Thm 3.3 (a positive ordering over timestep bins outweighing
//! a negative one between strategies). The pooled value is kept for reference only.
//!
//! The bounds predict a positive association; each level's verdict ([`crate::inference::verdict`]):
//! held when its interval lies above 0, did not hold when it lies below [`SMALLEST_EFFECT`] (it
//! excludes the association of interest), inconclusive otherwise, and also when fewer than 3 runs
//! can be ranked or the predictions do not vary at that level (nothing to order).
//!
//! Conventions shared by the checks: `c_j` is the mean over all records of `coef` on LSC j (for LS
//! the measured mean gate); sums over j run over the LSCs whose `coef` was recorded; a row whose
//! inputs are missing or whose values are not finite is left out.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::inference::{
    ClaimedEffect, Interval, LEVEL, Trend, Verdict, cluster_bootstrap_interval, detrended_range, permutation_p_value,
    spearman, verdict,
};
use crate::paired::sign_flip_p_value;
use crate::stats::{LeastSquares, least_squares, mean};
use scalelong_schema::{Record, series, series_values};

/// Resamples of the bootstrap over runs, and permutations of the permutation test.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;
/// The smallest rank correlation that counts as the association a bound predicts (a moderate one):
/// an interval entirely below it excludes the claimed effect.
pub const SMALLEST_EFFECT: f64 = 0.3;
/// Seeds of the bootstrap and the permutation test: a report reads the same every time.
const RESAMPLING_SEED: u64 = 0x7e0;

/// All diagnostics of one training run, labelled for the theorem checks.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecords {
    /// Run folder name, unique within a sweep.
    pub run_id: String,
    /// LSC strategy name (`1`, `1/sqrt2`, `CS`, `LS`, ...).
    pub strategy: String,
    /// Network depth, when the sweep varies it.
    pub depth: Option<u32>,
    pub records: Vec<Record>,
}

/// One measured value next to the bound's prediction for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckRow {
    pub run_id: String,
    pub strategy: String,
    /// What the row is about inside its run: `LSC i (dec.K)`, `bin b`, or `whole probe batch`.
    pub layer_or_bin: String,
    pub measured: f64,
    pub predicted: f64,
}

/// Where a check's rank correlation is read (module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Level {
    /// The runs' means against each other: what the skip coefficients change.
    BetweenRuns,
    /// Each run's rows against each other: the bound's ordering inside one network.
    WithinRuns,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::BetweenRuns => "between runs",
            Level::WithinRuns => "within runs",
        })
    }
}

/// The rank correlation of measured against predicted at one [`Level`], with its verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Association {
    pub level: Level,
    /// Between runs: Spearman over the runs' means. Within runs: the mean of the runs' own Spearman.
    pub spearman: Option<f64>,
    /// Its 95% percentile-bootstrap interval over runs.
    pub interval: Option<Interval>,
    /// Two-sided: a permutation of the runs' means (between), a sign flip of the runs' correlations
    /// (within).
    pub p_value: Option<f64>,
    /// Runs the statistic rests on.
    pub runs: usize,
    pub verdict: Verdict,
    /// One sentence with the numbers behind the verdict.
    pub explanation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TheoremCheck {
    /// `Thm 3.1`, `Thm 3.3` or `Thm 3.4`.
    pub theorem: &'static str,
    /// What is measured and what the bound predicts for it.
    pub claim: String,
    /// What a run's rows range over (`the LSCs of one network`), for the within-runs reading.
    pub rows_range_over: &'static str,
    pub rows: Vec<CheckRow>,
    /// Runs the rows come from.
    pub runs: usize,
    /// Spearman over all rows pooled, for reference only (it mixes the two levels).
    pub pooled_spearman: Option<f64>,
    pub between_runs: Association,
    /// `None` when every run has a single row.
    pub within_runs: Option<Association>,
    /// Least squares `measured = slope * predicted + intercept` over all rows.
    pub fit: Option<LeastSquares>,
    /// Strategies with their mean measured value over all their rows, largest first.
    pub strategy_order_measured: Vec<(String, f64)>,
    /// Strategies with their mean predicted value over all their rows, largest first.
    pub strategy_order_predicted: Vec<(String, f64)>,
}

impl TheoremCheck {
    /// The readings the check has: between runs, then within runs when runs have several rows.
    pub fn associations(&self) -> impl Iterator<Item = &Association> {
        std::iter::once(&self.between_runs).chain(&self.within_runs)
    }
}

/// Thm 3.1 skips the first `len / TRANSIENT_DIVISOR` records (10%) of a feature-norm series as
/// initialisation transient: early training moves features far more than the later oscillation the
/// bound is about.
const TRANSIENT_DIVISOR: usize = 10;
/// The records in the centred moving average a feature-norm series' oscillation is measured around.
pub const TREND_WINDOW: usize = 5;

/// Thm 3.1 (forward). Per run and LSC i: measured = the oscillation of the squared `feature_l2` of
/// the decoder block consuming LSC i (t_bin null) around its trend, over its records after the
/// first 10% ([`TRANSIENT_DIVISOR`]): `max - min` of the residuals from a centred moving average
/// of [`TREND_WINDOW`] records (docs/method.md §4.1: the raw `max - min` of a growing series
/// measures its growth); predicted = `S_i * mean ||x_t||^2` with `S_i = sum_{j >= i} c_j^2` and
/// `mean ||x_t||^2` the mean of `xt_sq_norm` (t_bin null).
pub fn check_thm31(runs: &[RunRecords]) -> TheoremCheck {
    assess(
        "Thm 3.1",
        "the LSCs of one network",
        "the oscillation of the squared feature norm of the decoder block consuming LSC i around its \
         trend grows with S_i * mean ||x_t||^2, S_i = sum_{j>=i} c_j^2"
            .to_string(),
        runs.iter().flat_map(thm31_rows).collect(),
    )
}

fn thm31_rows(run: &RunRecords) -> Vec<CheckRow> {
    let records = &run.records;
    let coefs = skip_coefficients(records);
    let Some(xt_sq_norm) = mean_of(records, "xt_sq_norm", None, None, None) else {
        return Vec::new();
    };
    decoder_layers(records, "feature_l2")
        .into_iter()
        .filter(|(lsc, _)| coefs.contains_key(lsc))
        .filter_map(|(lsc, layer)| {
            let squared_norms: Vec<(u64, f64)> = series(records, "feature_l2", Some(&layer), Some(lsc), None)
                .into_iter()
                .map(|(step, norm)| (step, norm * norm))
                .collect();
            let settled = &squared_norms[squared_norms.len() / TRANSIENT_DIVISOR..];
            let oscillation = detrended_range(settled, Trend::MovingAverage(TREND_WINDOW))?;
            // Residuals at the level of f64 rounding are no oscillation (they would still rank).
            let level = mean(&settled.iter().map(|(_, v)| v.abs()).collect::<Vec<_>>())?;
            let oscillation = if oscillation <= 1e-9 * level { 0.0 } else { oscillation };
            let tail_sum: f64 = coefs.range(lsc..).map(|(_, c)| c * c).sum();
            check_row(run, format!("LSC {lsc} ({layer})"), oscillation, tail_sum * xt_sq_norm)
        })
        .collect()
}

/// Thm 3.3 (backward). Per run and timestep bin b: measured = mean of `grad_norm_bin`^2 of layer
/// `enc` plus mean of `grad_norm_bin`^2 of layer `dec` (the squared norm of both groups together);
/// predicted = `mean(probe_loss_b) * mean(xt_sq_norm_b) * sum_j c_j^2`.
pub fn check_thm33(runs: &[RunRecords]) -> TheoremCheck {
    assess(
        "Thm 3.3",
        "the timestep bins of one network",
        "the squared gradient norm of the encoder and decoder blocks on timestep bin b grows with \
         probe_loss_b * mean ||x_t||^2_b * sum_j c_j^2"
            .to_string(),
        runs.iter().flat_map(thm33_rows).collect(),
    )
}

fn thm33_rows(run: &RunRecords) -> Vec<CheckRow> {
    let records = &run.records;
    let coefs = skip_coefficients(records);
    if coefs.is_empty() {
        return Vec::new();
    }
    let coef_square_sum: f64 = coefs.values().map(|c| c * c).sum();
    let bins: BTreeSet<u32> =
        records.iter().filter(|r| r.quantity == "grad_norm_bin").filter_map(|r| r.t_bin).collect();
    let mean_squared_grad_norm = |group: &str, bin: u32| {
        let norms = series_values(records, "grad_norm_bin", Some(group), None, Some(bin));
        mean(&norms.iter().map(|norm| norm * norm).collect::<Vec<f64>>())
    };
    bins.into_iter()
        .filter_map(|bin| {
            let measured = mean_squared_grad_norm("enc", bin)? + mean_squared_grad_norm("dec", bin)?;
            let probe_loss = mean_of(records, "probe_loss", None, None, Some(bin))?;
            let xt_sq_norm = mean_of(records, "xt_sq_norm", None, None, Some(bin))?;
            check_row(run, format!("bin {bin}"), measured, probe_loss * xt_sq_norm * coef_square_sum)
        })
        .collect()
}

/// Thm 3.4 (robustness). Per run: measured = mean `robustness` (t_bin null); predicted =
/// `sum_i c_i * M0^i` with M0 the mean of the `m0` records. The bound's additive constant c0 is
/// unknown but the same for every strategy, so leaving it out shifts all predictions alike and only
/// the ordering is tested.
pub fn check_thm34(runs: &[RunRecords]) -> TheoremCheck {
    assess(
        "Thm 3.4",
        "one row per run",
        "the sensitivity ||eps(x_t + delta) - eps(x_t)|| / ||delta|| grows with sum_i c_i * M0^i".to_string(),
        runs.iter().flat_map(thm34_row).collect(),
    )
}

fn thm34_row(run: &RunRecords) -> Option<CheckRow> {
    let records = &run.records;
    let coefs = skip_coefficients(records);
    if coefs.is_empty() {
        return None;
    }
    let m0 = mean_of(records, "m0", None, None, None)?;
    let robustness = mean_of(records, "robustness", None, None, None)?;
    let amplification: f64 = coefs.iter().map(|(&lsc, c)| c * m0.powf(f64::from(lsc))).sum();
    check_row(run, "whole probe batch".to_string(), robustness, amplification)
}

/// A row of `run`, or `None` when a value is not finite (it cannot be ranked).
fn check_row(run: &RunRecords, layer_or_bin: String, measured: f64, predicted: f64) -> Option<CheckRow> {
    (measured.is_finite() && predicted.is_finite()).then(|| CheckRow {
        run_id: run.run_id.clone(),
        strategy: run.strategy.clone(),
        layer_or_bin,
        measured,
        predicted,
    })
}

/// Mean of the finite values of one series.
fn mean_of(
    records: &[Record],
    quantity: &str,
    layer: Option<&str>,
    lsc: Option<u32>,
    t_bin: Option<u32>,
) -> Option<f64> {
    mean(&series_values(records, quantity, layer, lsc, t_bin))
}

/// The decoder layer (`dec.K`) that carries `quantity` for each LSC index found in the records.
fn decoder_layers(records: &[Record], quantity: &str) -> BTreeMap<u32, String> {
    records
        .iter()
        .filter(|r| r.quantity == quantity)
        .filter_map(|r| {
            let layer = r.layer.as_deref().filter(|layer| layer.starts_with("dec."))?;
            Some((r.lsc?, layer.to_string()))
        })
        .collect()
}

/// `c_j` per LSC j: the mean of the `coef` records of the decoder block consuming LSC j.
fn skip_coefficients(records: &[Record]) -> BTreeMap<u32, f64> {
    decoder_layers(records, "coef")
        .into_iter()
        .filter_map(|(lsc, layer)| Some((lsc, mean_of(records, "coef", Some(&layer), Some(lsc), None)?)))
        .collect()
}

/// Computes the statistics, strategy orders and verdicts shared by every check (rules in the module
/// documentation).
fn assess(theorem: &'static str, rows_range_over: &'static str, claim: String, rows: Vec<CheckRow>) -> TheoremCheck {
    let blocks = run_blocks(&rows);
    let measured: Vec<f64> = rows.iter().map(|row| row.measured).collect();
    let predicted: Vec<f64> = rows.iter().map(|row| row.predicted).collect();
    let strategy_order_measured = strategy_order(&rows, |row| row.measured);
    let strategy_order_predicted = strategy_order(&rows, |row| row.predicted);
    let order = strategy_order_measured.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(" > ");
    let between_runs = between_runs(&blocks, &order);
    let within_runs = blocks.iter().any(|block| block.len() > 1).then(|| within_runs(&blocks, rows_range_over));
    TheoremCheck {
        theorem,
        claim,
        rows_range_over,
        fit: least_squares(&predicted, &measured),
        runs: blocks.len(),
        pooled_spearman: spearman(&predicted, &measured),
        rows,
        between_runs,
        within_runs,
        strategy_order_measured,
        strategy_order_predicted,
    }
}

/// Each run's rows as `(predicted, measured)` pairs, runs in the order they first appear.
fn run_blocks(rows: &[CheckRow]) -> Vec<Vec<(f64, f64)>> {
    let mut order: Vec<&str> = Vec::new();
    let mut blocks: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for row in rows {
        if !blocks.contains_key(row.run_id.as_str()) {
            order.push(&row.run_id);
        }
        blocks.entry(&row.run_id).or_default().push((row.predicted, row.measured));
    }
    order.into_iter().map(|run| blocks.remove(run).expect("every listed run has rows")).collect()
}

/// A run's mean predicted and mean measured value.
fn block_means(block: &[(f64, f64)]) -> (f64, f64) {
    let n = block.len() as f64;
    let (predicted, measured) = block.iter().fold((0.0, 0.0), |(p, m), (bp, bm)| (p + bp, m + bm));
    (predicted / n, measured / n)
}

/// Spearman over the runs' means.
fn spearman_of_means(blocks: &[&Vec<(f64, f64)>]) -> Option<f64> {
    let (predicted, measured): (Vec<f64>, Vec<f64>) = blocks.iter().map(|block| block_means(block)).unzip();
    spearman(&predicted, &measured)
}

fn between_runs(blocks: &[Vec<(f64, f64)>], strategy_order: &str) -> Association {
    let (predicted, measured): (Vec<f64>, Vec<f64>) = blocks.iter().map(|block| block_means(block)).unzip();
    let statistic = spearman(&predicted, &measured);
    let testable = blocks.len() >= 3 && varies(&predicted);
    let interval = testable
        .then(|| cluster_bootstrap_interval(blocks, spearman_of_means, BOOTSTRAP_RESAMPLES, RESAMPLING_SEED, LEVEL))
        .flatten();
    let p_value = testable
        .then(|| permutation_p_value(&predicted, &measured, spearman, BOOTSTRAP_RESAMPLES, RESAMPLING_SEED))
        .flatten();
    let explanation = match &interval {
        Some(interval) => format!(
            "Spearman {:.2} over the means of {} runs, {} interval [{:.2}, {:.2}]{}; strategies by mean measured \
             value: {strategy_order}.",
            interval.estimate,
            blocks.len(),
            interval.describe(),
            interval.low,
            interval.high,
            p_value.map_or(String::new(), |p| format!(", permutation p = {p:.3}")),
        ),
        None => format!(
            "{} runs; an interval between runs needs at least 3 runs whose mean predictions differ (their \
             coefficients).",
            blocks.len()
        ),
    };
    association(Level::BetweenRuns, statistic, interval, p_value, blocks.len(), explanation)
}

/// Each run's own Spearman, for the runs where it is defined (at least 3 rows, predictions that vary).
fn per_run_spearman(blocks: &[&Vec<(f64, f64)>]) -> Vec<f64> {
    blocks
        .iter()
        .filter_map(|block| {
            let (predicted, measured): (Vec<f64>, Vec<f64>) = block.iter().copied().unzip();
            spearman(&predicted, &measured).filter(|rho| rho.is_finite())
        })
        .collect()
}

fn within_runs(blocks: &[Vec<(f64, f64)>], rows_range_over: &str) -> Association {
    let all: Vec<&Vec<(f64, f64)>> = blocks.iter().collect();
    let correlations = per_run_spearman(&all);
    let statistic = mean(&correlations);
    let testable = correlations.len() >= 3;
    let interval = testable
        .then(|| {
            cluster_bootstrap_interval(
                blocks,
                |resample| mean(&per_run_spearman(resample)),
                BOOTSTRAP_RESAMPLES,
                RESAMPLING_SEED,
                LEVEL,
            )
        })
        .flatten();
    let p_value = testable.then(|| sign_flip_p_value(&correlations)).flatten();
    let explanation = match &interval {
        Some(interval) => format!(
            "mean Spearman {:.2} over {rows_range_over}, in {} runs (each run's from {:.2} to {:.2}), {} interval [{:.2}, \
             {:.2}]{}.",
            interval.estimate,
            correlations.len(),
            correlations.iter().copied().fold(f64::INFINITY, f64::min),
            correlations.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            interval.describe(),
            interval.low,
            interval.high,
            p_value.map_or(String::new(), |p| format!(", sign-flip p = {p:.3}")),
        ),
        None => format!(
            "{} of {} runs have a correlation over {rows_range_over} (at least 3 rows whose predictions vary); an \
             interval needs 3.",
            correlations.len(),
            blocks.len()
        ),
    };
    association(Level::WithinRuns, statistic, interval, p_value, correlations.len(), explanation)
}

fn association(
    level: Level,
    spearman: Option<f64>,
    interval: Option<Interval>,
    p_value: Option<f64>,
    runs: usize,
    explanation: String,
) -> Association {
    let effect = ClaimedEffect { null: 0.0, claimed: SMALLEST_EFFECT };
    let verdict = interval.as_ref().map_or(Verdict::Inconclusive, |interval| verdict(interval, &effect));
    Association { level, spearman, interval, p_value, runs, verdict, explanation }
}

/// Whether the values differ by more than rounding error.
fn varies(values: &[f64]) -> bool {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    max - min > 1e-12 * max.abs().max(min.abs())
}

/// Mean of `value` per strategy over all its rows, largest first (ties by name, so the order is
/// deterministic).
fn strategy_order(rows: &[CheckRow], value: impl Fn(&CheckRow) -> f64) -> Vec<(String, f64)> {
    let mut values_by_strategy: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for row in rows {
        values_by_strategy.entry(&row.strategy).or_default().push(value(row));
    }
    let mut order: Vec<(String, f64)> = values_by_strategy
        .into_iter()
        .filter_map(|(strategy, values)| Some((strategy.to_string(), mean(&values)?)))
        .collect();
    order.sort_by(|(name_a, a), (name_b, b)| b.total_cmp(a).then_with(|| name_a.cmp(name_b)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(run: usize, strategy: &str, predicted: f64, measured: f64) -> CheckRow {
        CheckRow {
            run_id: format!("run{run}"),
            strategy: strategy.to_string(),
            layer_or_bin: "whole probe batch".to_string(),
            measured,
            predicted,
        }
    }

    /// Six runs, three rows each, measured = f(predicted) plus per-row noise of size `noise`.
    fn rows(f: impl Fn(f64) -> f64, noise: f64) -> Vec<CheckRow> {
        (0..6)
            .flat_map(|run| {
                let strategy = if run % 2 == 0 { "A" } else { "B" };
                let f = &f;
                (0..3).map(move |k| {
                    let predicted = 1.0 + run as f64 + 0.3 * k as f64;
                    let wiggle = noise * ((run * 7 + k * 3) as f64).sin();
                    row(run, strategy, predicted, f(predicted) + wiggle)
                })
            })
            .collect()
    }

    fn check(rows: Vec<CheckRow>) -> TheoremCheck {
        assess("test", "the rows of one run", String::new(), rows)
    }

    #[test]
    fn a_planted_increase_holds_and_its_reversal_does_not() {
        let held = check(rows(|p| 2.0 * p, 0.0));
        for association in held.associations() {
            assert_eq!(association.verdict, Verdict::Held, "{}", association.explanation);
            assert!(association.interval.as_ref().unwrap().low > 0.0 && association.p_value.unwrap() < 0.05);
        }
        assert_eq!(held.associations().count(), 2);
        let reversed = check(rows(|p| 10.0 - p, 0.0));
        for association in reversed.associations() {
            assert_eq!(association.verdict, Verdict::DidNotHold, "{}", association.explanation);
            assert!(association.interval.as_ref().unwrap().high < SMALLEST_EFFECT);
        }
    }

    /// The default sweep's Thm 3.3 in miniature: inside every run the rows follow the prediction, but
    /// the runs predicted larger measure smaller. Each level gets its own verdict, and pooling all
    /// rows would have read a positive correlation.
    #[test]
    fn the_two_levels_are_judged_apart() {
        let opposed: Vec<CheckRow> = (0..6)
            .flat_map(|run| {
                (0..4).map(move |k| {
                    let predicted = 10.0 * (1.0 + run as f64) * (1.0 + k as f64);
                    let measured = (1.0 + k as f64) * (1.0 - 0.1 * run as f64);
                    row(run, if run % 2 == 0 { "A" } else { "B" }, predicted, measured)
                })
            })
            .collect();
        let result = check(opposed);
        let within = result.within_runs.as_ref().unwrap();
        assert_eq!(within.verdict, Verdict::Held, "{}", within.explanation);
        assert!((within.spearman.unwrap() - 1.0).abs() < 1e-12, "{:?}", within.spearman);
        assert_eq!(result.between_runs.verdict, Verdict::DidNotHold, "{}", result.between_runs.explanation);
        assert!((result.between_runs.spearman.unwrap() + 1.0).abs() < 1e-12, "{:?}", result.between_runs.spearman);
        assert!(result.pooled_spearman.unwrap() > 0.0, "{:?}", result.pooled_spearman);
    }

    #[test]
    fn noise_without_an_effect_is_inconclusive_or_excluded_never_held() {
        let result = check(rows(|_| 5.0, 3.0));
        for association in result.associations() {
            assert_ne!(association.verdict, Verdict::Held, "{}", association.explanation);
        }
        assert_eq!(result.runs, 6);
    }

    #[test]
    fn too_few_runs_or_constant_predictions_are_inconclusive() {
        let two_runs: Vec<CheckRow> = rows(|p| 2.0 * p, 0.0).into_iter().filter(|r| r.run_id < "run2".into()).collect();
        let result = check(two_runs);
        for association in result.associations() {
            assert_eq!((association.verdict, association.interval.is_none()), (Verdict::Inconclusive, true));
        }
        assert!(result.between_runs.explanation.contains("at least 3 runs"), "{}", result.between_runs.explanation);
        let constant: Vec<CheckRow> = rows(|p| p, 0.0).into_iter().map(|r| CheckRow { predicted: 1.0, ..r }).collect();
        assert!(check(constant).associations().all(|a| a.verdict == Verdict::Inconclusive));
    }

    #[test]
    fn one_row_per_run_has_no_within_runs_reading() {
        let single: Vec<CheckRow> = rows(|p| 2.0 * p, 0.0).into_iter().filter(|r| r.predicted.fract() == 0.0).collect();
        let result = check(single);
        assert_eq!(result.within_runs, None);
        assert_eq!(result.between_runs.verdict, Verdict::Held, "{}", result.between_runs.explanation);
    }

    #[test]
    fn the_sign_flip_p_value_is_small_for_agreeing_signs_and_large_for_mixed_ones() {
        assert!(sign_flip_p_value(&[0.9, 0.8, 0.95, 0.7, 0.85, 0.9, 0.8, 0.9]).unwrap() < 0.01);
        assert!(sign_flip_p_value(&[0.9, -0.8, 0.85, -0.9, 0.8, -0.85]).unwrap() > 0.5);
    }
}
