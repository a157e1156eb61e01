//! Empirical checks of ScaleLong's bounds (docs/method.md §4) against recorded diagnostics.
//!
//! Each check turns every run into rows of (measured, predicted) pairs, where "predicted" is the
//! bound's variable part with its unknown constants dropped. The bounds only fix an ordering, so the
//! checks test orderings: the rank correlation of measured against predicted over all rows, and the
//! order of the strategies by their mean measured and mean predicted value.
//!
//! Verdict rules, applied in this order by every check:
//! 1. Inconclusive when the rows come from fewer than 2 strategies, there are fewer than 4 rows, or
//!    the predicted values do not vary (nothing to order).
//! 2. Supported when Spearman >= 0.5 and the strategies ordered by mean measured value are in the
//!    same order as by mean predicted value.
//! 3. Refuted when Spearman <= 0, or the strategy with the largest mean prediction measures strictly
//!    below the strategy with the smallest one.
//! 4. Inconclusive otherwise (a weak positive correlation, or a partly wrong strategy order).
//!
//! Conventions shared by the checks: `c_j` is the mean over all records of `coef` on LSC j (for LS
//! the measured mean gate); sums over j run over the LSCs whose `coef` was recorded; a row whose
//! inputs are missing or whose values are not finite is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::stats::{LeastSquares, least_squares, mean, range_and_std, spearman};
use scalelong_schema::{Record, series_values};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Supported,
    Refuted,
    Inconclusive,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Supported => "supported",
            Verdict::Refuted => "refuted",
            Verdict::Inconclusive => "inconclusive",
        })
    }
}

/// One measured value next to the bound's prediction for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRow {
    pub run_id: String,
    pub strategy: String,
    /// What the row is about inside its run: `LSC i (dec.K)`, `bin b`, or `whole probe batch`.
    pub layer_or_bin: String,
    pub measured: f64,
    pub predicted: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TheoremCheck {
    /// `Thm 3.1`, `Thm 3.3` or `Thm 3.4`.
    pub theorem: &'static str,
    /// What is measured and what the bound predicts for it.
    pub claim: String,
    pub rows: Vec<CheckRow>,
    /// Spearman correlation of measured against predicted over all rows.
    pub spearman: Option<f64>,
    /// Least squares `measured = slope * predicted + intercept` over all rows.
    pub fit: Option<LeastSquares>,
    /// Strategies with their mean measured value over all their rows, largest first.
    pub strategy_order_measured: Vec<(String, f64)>,
    /// Strategies with their mean predicted value over all their rows, largest first.
    pub strategy_order_predicted: Vec<(String, f64)>,
    pub verdict: Verdict,
    /// One sentence with the numbers behind the verdict.
    pub explanation: String,
}

/// Thm 3.1 skips the first `len / TRANSIENT_DIVISOR` records (10%) of a feature-norm series as
/// initialisation transient: early training moves features far more than the later oscillation the
/// bound is about.
const TRANSIENT_DIVISOR: usize = 10;

/// Thm 3.1 (forward). Per run and LSC i: measured = `max - min` of the squared `feature_l2` of the
/// decoder block consuming LSC i (t_bin null), over its records after the first 10%
/// ([`TRANSIENT_DIVISOR`]); predicted = `S_i * mean ||x_t||^2` with `S_i = sum_{j >= i} c_j^2` and
/// `mean ||x_t||^2` the mean of `xt_sq_norm` (t_bin null).
pub fn check_thm31(runs: &[RunRecords]) -> TheoremCheck {
    assess(
        "Thm 3.1",
        "the oscillation range of the squared feature norm of the decoder block consuming LSC i \
         grows with S_i * mean ||x_t||^2, S_i = sum_{j>=i} c_j^2"
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
            let squared_norms: Vec<f64> = series_values(records, "feature_l2", Some(&layer), Some(lsc), None)
                .into_iter()
                .map(|norm| norm * norm)
                .collect();
            let settled = &squared_norms[squared_norms.len() / TRANSIENT_DIVISOR..];
            // A single value has no oscillation to measure.
            if settled.len() < 2 {
                return None;
            }
            let tail_sum: f64 = coefs.range(lsc..).map(|(_, c)| c * c).sum();
            check_row(run, format!("LSC {lsc} ({layer})"), range_and_std(settled)?.range, tail_sum * xt_sq_norm)
        })
        .collect()
}

/// Thm 3.3 (backward). Per run and timestep bin b: measured = mean of `grad_norm_bin`^2 of layer
/// `enc` plus mean of `grad_norm_bin`^2 of layer `dec` (the squared norm of both groups together);
/// predicted = `mean(probe_loss_b) * mean(xt_sq_norm_b) * sum_j c_j^2`.
pub fn check_thm33(runs: &[RunRecords]) -> TheoremCheck {
    assess(
        "Thm 3.3",
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

/// Computes the statistics, strategy orders and verdict shared by every check (rules in the module
/// documentation).
fn assess(theorem: &'static str, claim: String, rows: Vec<CheckRow>) -> TheoremCheck {
    let measured: Vec<f64> = rows.iter().map(|row| row.measured).collect();
    let predicted: Vec<f64> = rows.iter().map(|row| row.predicted).collect();
    let rank_correlation = spearman(&predicted, &measured);
    let strategy_order_measured = strategy_order(&rows, |row| row.measured);
    let strategy_order_predicted = strategy_order(&rows, |row| row.predicted);
    let (verdict, explanation) =
        judge(rows.len(), varies(&predicted), rank_correlation, &strategy_order_measured, &strategy_order_predicted);
    TheoremCheck {
        theorem,
        claim,
        fit: least_squares(&predicted, &measured),
        rows,
        spearman: rank_correlation,
        strategy_order_measured,
        strategy_order_predicted,
        verdict,
        explanation,
    }
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

/// The verdict rules of the module documentation, with the sentence that explains the outcome.
fn judge(
    n_rows: usize,
    predicted_varies: bool,
    rank_correlation: Option<f64>,
    measured_order: &[(String, f64)],
    predicted_order: &[(String, f64)],
) -> (Verdict, String) {
    let n_strategies = predicted_order.len();
    if n_strategies < 2 || n_rows < 4 || !predicted_varies {
        return (
            Verdict::Inconclusive,
            format!(
                "{n_rows} rows from {n_strategies} strategies with {} predictions; an ordering test \
                 needs at least 4 rows, 2 strategies and varying predictions.",
                if predicted_varies { "varying" } else { "constant" }
            ),
        );
    }
    let orders_match = strategy_names(measured_order) == strategy_names(predicted_order);
    let measured_mean = |strategy: &str| {
        measured_order
            .iter()
            .find(|(name, _)| name == strategy)
            .map(|(_, mean)| *mean)
            .expect("both orders list the same strategies")
    };
    let largest_bound = predicted_order[0].0.as_str();
    let smallest_bound = predicted_order[n_strategies - 1].0.as_str();
    let extremes_reversed = measured_mean(largest_bound) < measured_mean(smallest_bound);

    let verdict = match rank_correlation {
        Some(rho) if rho >= 0.5 && orders_match => Verdict::Supported,
        Some(rho) if rho <= 0.0 => Verdict::Refuted,
        _ if extremes_reversed => Verdict::Refuted,
        _ => Verdict::Inconclusive,
    };

    let correlation = rank_correlation.map_or("undefined".to_string(), |rho| format!("{rho:.2}"));
    let measured_names = strategy_names(measured_order).join(" > ");
    let order_comparison = if orders_match {
        "matches the bound's order".to_string()
    } else {
        format!("does not match the bound's order {}", strategy_names(predicted_order).join(" > "))
    };
    let reversal = if extremes_reversed {
        format!(
            ", and {largest_bound} (largest bound) measures {:.3e}, below {smallest_bound} (smallest \
             bound) at {:.3e}",
            measured_mean(largest_bound),
            measured_mean(smallest_bound)
        )
    } else {
        String::new()
    };
    (
        verdict,
        format!(
            "Spearman {correlation} over {n_rows} rows; measured order {measured_names} \
             {order_comparison}{reversal}."
        ),
    )
}

fn strategy_names(order: &[(String, f64)]) -> Vec<&str> {
    order.iter().map(|(name, _)| name.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(strategy: &str, predicted: f64, measured: f64) -> CheckRow {
        CheckRow {
            run_id: format!("{strategy}-run"),
            strategy: strategy.to_string(),
            layer_or_bin: "whole probe batch".to_string(),
            measured,
            predicted,
        }
    }

    #[test]
    fn positive_correlation_with_a_wrong_middle_order_is_inconclusive() {
        // Predicted order A > B > C; measured means A 3.5, B 1, C 2. Spearman over the rows
        // (4,4), (3,3), (2,1), (1,2): 1 - 6 * 2 / (4 * 15) = 0.8. The extremes A and C keep their
        // order, so neither rule 2 nor rule 3 applies.
        let rows = vec![row("A", 4.0, 4.0), row("A", 3.0, 3.0), row("B", 2.0, 1.0), row("C", 1.0, 2.0)];
        let check = assess("test", String::new(), rows);
        assert_eq!(check.verdict, Verdict::Inconclusive);
        assert_eq!(
            check.explanation,
            "Spearman 0.80 over 4 rows; measured order A > C > B does not match the bound's order \
             A > B > C."
        );
        assert_eq!(
            check.strategy_order_predicted,
            vec![("A".to_string(), 3.5), ("B".to_string(), 2.0), ("C".to_string(), 1.0)]
        );
    }

    #[test]
    fn reversed_extremes_refute_despite_positive_correlation() {
        // Within each strategy the measurement rises with the prediction, so Spearman is positive
        // (d^2 sums to 16 over A's rows and 32 over B's: 1 - 6 * 48 / (8 * 63) = 3/7), but B, the
        // strategy with the smaller bound, measures higher on average (4.55 against 3.5).
        let mut rows: Vec<CheckRow> = (1..=6).map(|k| row("A", 9.0 + k as f64, k as f64)).collect();
        rows.extend([row("B", 1.0, 4.5), row("B", 2.0, 4.6)]);
        let check = assess("test", String::new(), rows);
        assert!((check.spearman.unwrap() - 3.0 / 7.0).abs() < 1e-12);
        assert_eq!(check.verdict, Verdict::Refuted);
        assert!(check.explanation.contains("A (largest bound) measures"), "{}", check.explanation);
    }

    #[test]
    fn negative_correlation_refutes_despite_the_right_strategy_order() {
        // One outlier keeps A's mean (33.6) above B's (1.5), as the bound orders them, but inside
        // both strategies the measurement falls as the prediction rises. Predicted ranks B 1,2,3
        // A 4,5,6; measured ranks B 5,4,3 A 6,2,1; sum d^2 = 58: 1 - 6 * 58 / (6 * 35) = -23/35.
        let rows = vec![
            row("A", 10.0, 100.0),
            row("A", 11.0, 0.5),
            row("A", 12.0, 0.4),
            row("B", 1.0, 2.0),
            row("B", 2.0, 1.5),
            row("B", 3.0, 1.0),
        ];
        let check = assess("test", String::new(), rows);
        assert!((check.spearman.unwrap() + 23.0 / 35.0).abs() < 1e-12);
        assert_eq!(check.verdict, Verdict::Refuted);
        assert_eq!(check.explanation, "Spearman -0.66 over 6 rows; measured order A > B matches the bound's order.");
    }

    #[test]
    fn constant_predictions_are_inconclusive() {
        let rows = vec![row("A", 1.0, 1.0), row("A", 1.0, 2.0), row("B", 1.0, 3.0), row("B", 1.0, 4.0)];
        let check = assess("test", String::new(), rows);
        assert_eq!(check.verdict, Verdict::Inconclusive);
        assert!(check.explanation.contains("constant predictions"), "{}", check.explanation);
    }

    #[test]
    fn verdict_displays_and_serialises_in_lowercase() {
        assert_eq!(Verdict::Refuted.to_string(), "refuted");
        assert_eq!(serde_json::to_string(&Verdict::Supported).unwrap(), "\"supported\"");
    }
}
