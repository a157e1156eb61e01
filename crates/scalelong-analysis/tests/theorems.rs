//! The theorem checks on synthetic sweeps whose measurements follow, or reverse, each bound.

use std::f64::consts::FRAC_1_SQRT_2;

use scalelong_analysis::inference::Verdict;
use scalelong_analysis::theorems::{RunRecords, TheoremCheck, check_thm31, check_thm33, check_thm34};
use scalelong_schema::Record;

/// Long skips per synthetic UNet; decoder block K consumes LSC `N_LSC - K`.
const N_LSC: u32 = 4;
const STEPS: u64 = 20;
const T_BINS: u32 = 3;
const SEEDS: [u32; 2] = [0, 1];

/// How a synthetic run's measurements relate to the bound's prediction.
#[derive(Clone, Copy)]
enum Relation {
    /// measured = 2 * predicted: the bound's ordering holds.
    Proportional,
    /// measured = 1 / predicted: the ordering is reversed.
    Reversed,
}

impl Relation {
    fn measured(self, predicted: f64) -> f64 {
        match self {
            Relation::Proportional => 2.0 * predicted,
            Relation::Reversed => 1.0 / predicted,
        }
    }
}

/// The strategies of docs/method.md §3 with distinct coefficients on LSC 1..=4. By every bound here their
/// order is 1 > 1/sqrt2 > LS > CS.
fn strategies() -> Vec<(&'static str, Vec<f64>)> {
    let geometric = |a: f64, kappa: f64| (0..N_LSC as i32).map(|i| a * kappa.powi(i)).collect();
    vec![
        ("1", vec![1.0; N_LSC as usize]),
        ("1/sqrt2", vec![FRAC_1_SQRT_2; N_LSC as usize]),
        ("CS", geometric(1.0, 0.5)),
        ("LS", geometric(0.9, 0.7)),
    ]
}

const BOUND_ORDER: [&str; 4] = ["1", "1/sqrt2", "LS", "CS"];

/// Appends one record a step for steps 1..=STEPS.
struct RecordsBuilder(Vec<Record>);

impl RecordsBuilder {
    fn series(
        &mut self,
        quantity: &str,
        layer: Option<&str>,
        lsc: Option<u32>,
        t_bin: Option<u32>,
        value_at: impl Fn(u64) -> f64,
    ) {
        self.0.extend((1..=STEPS).map(|step| Record {
            step,
            quantity: quantity.to_string(),
            layer: layer.map(str::to_string),
            lsc,
            t_bin,
            value: Some(value_at(step)),
        }));
    }
}

/// +1 on even steps, -1 on odd ones: values alternating around a level average to that level.
fn alternating(step: u64) -> f64 {
    if step.is_multiple_of(2) { 1.0 } else { -1.0 }
}

/// `S_i = sum_{j >= i} c_j^2`, written out independently of the crate.
fn tail_square_sum(coefs: &[f64], lsc: u32) -> f64 {
    coefs[lsc as usize - 1..].iter().map(|c| c * c).sum()
}

/// Every quantity the three checks read, for one run, with each measured quantity set from the
/// bound's prediction through `relation`. Also writes records the checks must ignore.
fn synthetic_run(strategy: &str, coefs: &[f64], seed: u32, relation: Relation) -> RunRecords {
    let mut builder = RecordsBuilder(Vec::new());
    let seed_scale = 1.0 + 0.37 * f64::from(seed);
    let xt_sq_norm = 3.0 * seed_scale;
    builder.series("xt_sq_norm", None, None, None, |_| xt_sq_norm);

    for lsc in 1..=N_LSC {
        let layer = format!("dec.{}", N_LSC - lsc);
        let coef = coefs[lsc as usize - 1];
        // The checks use the mean coefficient, as an LS gate moves during training.
        builder.series("coef", Some(&layer), Some(lsc), None, |step| coef * (1.0 + 0.1 * alternating(step)));
        let range = relation.measured(tail_square_sum(coefs, lsc) * xt_sq_norm);
        // The squared norm alternates between 10 and 10 + range, after an initialisation
        // transient in the first 10% of steps that would swamp every range if not skipped.
        builder.series("feature_l2", Some(&layer), Some(lsc), None, |step| {
            if step <= STEPS / 10 { 1000.0 } else { (10.0 + range * (step % 2) as f64).sqrt() }
        });
        // Decoys: the encoder block producing the skip, and a per-bin value of the decoder block.
        let wild = |step: u64| 1e3 * step as f64 * f64::from(lsc);
        builder.series("feature_l2", Some(&format!("enc.{}", lsc - 1)), Some(lsc), None, wild);
        builder.series("feature_l2", Some(&layer), Some(lsc), Some(0), wild);
    }

    for bin in 0..T_BINS {
        let bin_xt_sq_norm = f64::from(1 << bin) * seed_scale;
        let probe_loss = 1.0 / f64::from(bin + 1);
        builder.series("xt_sq_norm", None, None, Some(bin), |_| bin_xt_sq_norm);
        builder.series("probe_loss", None, None, Some(bin), |_| probe_loss);
        let squared_grad_norm = relation.measured(probe_loss * bin_xt_sq_norm * tail_square_sum(coefs, 1));
        // enc holds a quarter of the squared norm and dec the rest; both alternate, so the mean of
        // the norms squared would differ from the mean of the squared norms.
        for (group, share) in [("enc", 0.25), ("dec", 0.75)] {
            builder.series("grad_norm_bin", Some(group), None, Some(bin), |step| {
                (share * squared_grad_norm * (1.0 + 0.5 * alternating(step))).sqrt()
            });
        }
        builder.series("grad_norm_bin", Some("total"), None, Some(bin), |_| 1e9);
    }

    let m0 = 1.5 + 0.1 * f64::from(seed);
    let amplification: f64 = coefs.iter().zip(1..).map(|(c, i)| c * m0.powi(i)).sum();
    builder.series("m0", None, None, None, |_| m0);
    builder.series("robustness", None, None, None, |_| relation.measured(amplification));
    builder.series("robustness", None, None, Some(0), |_| 1e9);

    RunRecords {
        run_id: format!("{strategy}-seed{seed}"),
        strategy: strategy.to_string(),
        depth: Some(2 * N_LSC + 1),
        records: builder.0,
    }
}

/// Every strategy of `strategies()` named in `names`, each with every seed.
fn sweep(names: &[&str], relation: Relation) -> Vec<RunRecords> {
    strategies()
        .into_iter()
        .filter(|(strategy, _)| names.contains(strategy))
        .flat_map(|(strategy, coefs)| SEEDS.map(|seed| synthetic_run(strategy, &coefs, seed, relation)))
        .collect()
}

fn full_sweep(relation: Relation) -> Vec<RunRecords> {
    sweep(&BOUND_ORDER, relation)
}

fn names(order: &[(String, f64)]) -> Vec<&str> {
    order.iter().map(|(name, _)| name.as_str()).collect()
}

/// Runs `check` on the sweep that follows the bound, asserts it held with the bound's strategy
/// order (measured = `slope` x predicted), and returns it for theorem-specific assertions.
fn assert_supported(check: fn(&[RunRecords]) -> TheoremCheck, expected_rows: usize, slope: f64) -> TheoremCheck {
    let result = check(&full_sweep(Relation::Proportional));
    let between = &result.between_runs;
    assert_eq!(between.verdict, Verdict::Held, "{}", between.explanation);
    let interval = between.interval.as_ref().unwrap();
    assert!(interval.low > 0.9, "{interval:?}");
    assert!(between.p_value.unwrap() < 0.01, "{:?}", between.p_value);
    if let Some(within) = &result.within_runs {
        assert_eq!(within.verdict, Verdict::Held, "{}", within.explanation);
        assert!(within.spearman.unwrap() > 0.99 && within.p_value.unwrap() < 0.01, "{}", within.explanation);
    }
    assert_eq!(result.rows.len(), expected_rows);
    // Not exactly 1: some predictions tie across strategies (2 * (1/sqrt2)^2 = 1^2), and rounding
    // decides their measured order.
    assert!(result.pooled_spearman.unwrap() > 0.99, "{:?}", result.pooled_spearman);
    let fit = result.fit.unwrap();
    assert!((fit.slope - slope).abs() < 1e-9 && fit.intercept.abs() < 1e-9, "{fit:?}");
    assert_eq!(names(&result.strategy_order_predicted), BOUND_ORDER);
    assert_eq!(names(&result.strategy_order_measured), BOUND_ORDER);
    let runs = BOUND_ORDER.len() * SEEDS.len();
    assert!(
        between.explanation.starts_with(&format!("Spearman 1.00 over the means of {runs} runs"))
            && between.explanation.ends_with("strategies by mean measured value: 1 > 1/sqrt2 > LS > CS."),
        "{}",
        between.explanation
    );
    result
}

fn assert_refuted(check: fn(&[RunRecords]) -> TheoremCheck) {
    let result = check(&full_sweep(Relation::Reversed));
    for association in result.associations() {
        assert_eq!(association.verdict, Verdict::DidNotHold, "{}", association.explanation);
    }
    assert!(result.pooled_spearman.unwrap() < -0.99, "{:?}", result.pooled_spearman);
    assert!(
        result.between_runs.explanation.ends_with("strategies by mean measured value: CS > LS > 1/sqrt2 > 1."),
        "{}",
        result.between_runs.explanation
    );
}

fn assert_inconclusive_for_one_strategy(check: fn(&[RunRecords]) -> TheoremCheck) {
    let result = check(&sweep(&["1"], Relation::Proportional));
    for association in result.associations() {
        assert_eq!(association.verdict, Verdict::Inconclusive, "{}", association.explanation);
    }
    assert!(!result.rows.is_empty());
}

/// The row of run `run_id` about `layer_or_bin`, as (measured, predicted).
fn row_values(check: &TheoremCheck, run_id: &str, layer_or_bin: &str) -> (f64, f64) {
    let row = check
        .rows
        .iter()
        .find(|row| row.run_id == run_id && row.layer_or_bin == layer_or_bin)
        .unwrap_or_else(|| panic!("no row {run_id} / {layer_or_bin}"));
    (row.measured, row.predicted)
}

fn assert_close(actual: f64, expected: f64) {
    assert!((actual - expected).abs() <= 1e-9 * expected.abs(), "{actual} is not close to {expected}");
}

#[test]
fn thm31_supported_when_ranges_follow_the_bound() {
    // The squared norm alternates between 10 and 10 + range: around its centred moving average of
    // five records it swings by 4/5 of the range.
    let result = assert_supported(check_thm31, BOUND_ORDER.len() * SEEDS.len() * N_LSC as usize, 1.6);
    // Original strategy, seed 0: S_1 = 4 LSCs * 1^2, ||x_t||^2 = 3 -> 12; range 2 * 12.
    let (measured, predicted) = row_values(&result, "1-seed0", "LSC 1 (dec.3)");
    assert_close(predicted, 12.0);
    assert_close(measured, 0.8 * 24.0);
    // CS, seed 0, innermost LSC: S_4 = 0.125^2, times 3.
    let (_, predicted) = row_values(&result, "CS-seed0", "LSC 4 (dec.0)");
    assert_close(predicted, 3.0 / 64.0);
}

/// Growth is not oscillation: feature norms that grow, each faster the larger its bound, but
/// smoothly, measure no oscillation at all (their raw max - min would follow the bound exactly).
#[test]
fn thm31_sees_no_oscillation_in_smooth_growth() {
    let mut runs = full_sweep(Relation::Proportional);
    for run in &mut runs {
        for record in run.records.iter_mut().filter(|r| r.quantity == "feature_l2" && r.t_bin.is_none()) {
            if record.layer.as_deref().is_some_and(|layer| layer.starts_with("dec.")) {
                let lsc = f64::from(record.lsc.unwrap());
                record.value = Some((10.0 + record.step as f64 * 5.0 / lsc).sqrt());
            }
        }
    }
    let result = check_thm31(&runs);
    assert!(result.rows.iter().all(|row| row.measured < 1e-9), "{:?}", &result.rows[..3]);
    for association in result.associations() {
        assert_eq!(association.verdict, Verdict::Inconclusive, "{}", association.explanation);
    }
}

#[test]
fn thm31_refuted_when_ranges_reverse_the_bound() {
    assert_refuted(check_thm31);
}

#[test]
fn thm31_inconclusive_for_one_strategy() {
    assert_inconclusive_for_one_strategy(check_thm31);
}

#[test]
fn thm33_supported_when_gradients_follow_the_bound() {
    let result = assert_supported(check_thm33, BOUND_ORDER.len() * SEEDS.len() * T_BINS as usize, 2.0);
    // 1/sqrt2, seed 0, bin 2: loss 1/3, ||x_t||^2 = 4, sum c^2 = 4 * 1/2 -> 8/3.
    let (measured, predicted) = row_values(&result, "1/sqrt2-seed0", "bin 2");
    assert_close(predicted, 8.0 / 3.0);
    assert_close(measured, 16.0 / 3.0);
}

#[test]
fn thm33_refuted_when_gradients_reverse_the_bound() {
    assert_refuted(check_thm33);
}

#[test]
fn thm33_inconclusive_for_one_strategy() {
    assert_inconclusive_for_one_strategy(check_thm33);
}

#[test]
fn thm34_supported_when_sensitivity_follows_the_bound() {
    let result = assert_supported(check_thm34, BOUND_ORDER.len() * SEEDS.len(), 2.0);
    // CS, seed 0, M0 = 1.5: 1.5 + 0.5 * 2.25 + 0.25 * 3.375 + 0.125 * 5.0625.
    let (measured, predicted) = row_values(&result, "CS-seed0", "whole probe batch");
    assert_close(predicted, 4.1015625);
    assert_close(measured, 8.203125);
}

#[test]
fn thm34_refuted_when_sensitivity_reverses_the_bound() {
    assert_refuted(check_thm34);
}

#[test]
fn thm34_inconclusive_for_one_strategy() {
    assert_inconclusive_for_one_strategy(check_thm34);
}
