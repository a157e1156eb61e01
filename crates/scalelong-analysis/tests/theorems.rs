//! The theorem checks on synthetic sweeps whose measurements follow, or reverse, each bound's factor,
//! and on synthetic `dose_response.jsonl` lines.

use scalelong_analysis::dose_response::PredictedOrdering;
use scalelong_analysis::theorems::{
    RunRecords, Source, Theorem, TheoremCheck, descent_end, initialisation_checks, training_checks,
};
use scalelong_schema::{DoseQuantity, DoseResponseLine, Quantity, Record, SkipScaling};

/// Long skips per synthetic network; decoder block K consumes LSC `N_LSC - K`.
const N_LSC: u32 = 4;
/// Diagnostics every 25 steps up to 400, as the stability sweep records them.
const EVERY: u64 = 25;
const STEPS: u64 = 400;
const SEEDS: u64 = 6;

/// How a synthetic run's measurements relate to the bound's factor.
#[derive(Clone, Copy)]
enum Relation {
    /// measured = 2 * factor: the predicted ordering.
    Proportional,
    /// measured = 1 / factor: the opposite one.
    Reversed,
}

impl Relation {
    fn measured(self, factor: f64) -> f64 {
        match self {
            Relation::Proportional => 2.0 * factor,
            Relation::Reversed => 1.0 / factor,
        }
    }
}

/// The probe loss: falls from 1 to 0.1 with a time constant of 40 steps. The descent rule ends it
/// where the smoothed loss is within 10% of the fall: at step 150 on this record grid.
fn probe_loss(step: u64) -> f64 {
    0.1 + 0.9 * (-(step as f64) / 40.0).exp()
}

/// +1 on even records, -1 on odd ones.
fn alternating(step: u64) -> f64 {
    if (step / EVERY).is_multiple_of(2) { 1.0 } else { -1.0 }
}

fn record(
    step: u64,
    quantity: Quantity,
    layer: Option<&str>,
    lsc: Option<u32>,
    t_bin: Option<u32>,
    value: f64,
) -> Record {
    Record { step, quantity, layer: layer.map(str::to_string), lsc, t_bin, value: Some(value) }
}

/// One run's records: every quantity the training checks read, set from the bound's factors through
/// `relation` after the descent, and reversed (and far larger) during it, so that a check that read
/// the descent would see the opposite ordering. Also records the checks must ignore.
fn synthetic_run(strategy: SkipScaling, seed: u64, relation: Relation) -> RunRecords {
    let coefficients: Vec<f64> = match strategy {
        SkipScaling::Learnable { .. } => (0..N_LSC).map(|i| 0.9 * 0.7f64.powi(i as i32)).collect(),
        fixed => (1..=N_LSC as usize).map(|lsc| fixed.coefficient(lsc).unwrap()).collect(),
    };
    let tail_sum = |lsc: u32| coefficients[lsc as usize - 1..].iter().map(|c| c * c).sum::<f64>();
    let seed_scale = 1.0 + 0.37 * seed as f64;
    let mut records = Vec::new();
    for step in (EVERY..=STEPS).step_by(EVERY as usize) {
        let descending = step < 150;
        records.push(record(step, Quantity::ProbeLoss, None, None, None, probe_loss(step)));
        records.push(record(step, Quantity::ProbeLoss, None, None, Some(0), 1e3));
        for lsc in 1..=N_LSC {
            let layer = format!("dec.{}", N_LSC - lsc);
            records.push(record(step, Quantity::Coef, Some(&layer), Some(lsc), None, coefficients[lsc as usize - 1]));
            // A squared norm growing linearly (no oscillation) plus an alternation of range
            // `relation(S_i)`; during the descent a far larger alternation ordered the other way.
            let range =
                if descending { 1e3 / relation.measured(tail_sum(lsc)) } else { relation.measured(tail_sum(lsc)) };
            let squared = seed_scale * (10.0 + 0.01 * step as f64 + 0.5 * range * alternating(step)) + range;
            records.push(record(step, Quantity::FeatureL2, Some(&layer), Some(lsc), None, squared.sqrt()));
            records.push(record(
                step,
                Quantity::FeatureL2,
                Some(&format!("enc.{}", lsc - 1)),
                Some(lsc),
                None,
                1e3 * step as f64,
            ));
            records.push(record(step, Quantity::FeatureL2, Some(&layer), Some(lsc), Some(0), 1e3 * step as f64));
        }
        // The training batch's squared gradient of the encoder and decoder blocks is the batch's loss
        // times relation(sum c^2), split over three groups; the embedding and total groups are not
        // the blocks'.
        let square = relation.measured(tail_sum(1)) * train_loss(step) * seed_scale;
        for (group, share) in [("enc.0", 0.25), ("dec.0", 0.5), ("fusion.0", 0.25)] {
            records.push(record(step, Quantity::GradNorm, Some(group), None, None, (share * square).sqrt()));
        }
        records.push(record(step, Quantity::GradNorm, Some("embed"), None, None, 1e3));
        records.push(record(step, Quantity::GradNorm, Some("total"), None, None, 1e3));
        let sensitivity = relation.measured(coefficients.iter().sum()) * seed_scale * (1.0 + 0.05 * alternating(step));
        let sensitivity = if descending { 1e3 / sensitivity } else { sensitivity };
        records.push(record(step, Quantity::Robustness, None, None, None, sensitivity));
    }
    RunRecords {
        run_id: format!("{}_seed{seed}", strategy.label()),
        seed,
        strategy,
        losses: (1..=STEPS).map(|step| (step, train_loss(step))).collect(),
        records,
    }
}

/// The training batch's loss at each step: noisier than the probe's, and what each gradient is
/// divided by.
fn train_loss(step: u64) -> f64 {
    probe_loss(step) * (1.0 + 0.3 * ((step * 7) as f64).sin().abs())
}

const STRATEGIES: [SkipScaling; 4] = [
    SkipScaling::Original,
    SkipScaling::InvSqrt2,
    SkipScaling::Constant { kappa: 0.5 },
    SkipScaling::Learnable { shared: true, reduction: 16 },
];

fn sweep(relation: Relation) -> Vec<RunRecords> {
    (0..SEEDS).flat_map(|seed| STRATEGIES.map(|strategy| synthetic_run(strategy, seed, relation))).collect()
}

fn check(checks: &[TheoremCheck; 3], theorem: Theorem) -> &TheoremCheck {
    checks.iter().find(|c| c.theorem == theorem).unwrap()
}

#[test]
fn the_descent_ends_where_the_loss_has_covered_nine_tenths_of_its_fall() {
    let series: Vec<(u64, f64)> = (EVERY..=STEPS).step_by(EVERY as usize).map(|s| (s, probe_loss(s))).collect();
    // Smoothed over 3 records (from 0.470 at the first), the loss first lies within a tenth of its
    // fall of the final 0.100 (at most 0.137) at step 150: 0.124; at step 125 it is 0.145.
    assert_eq!(descent_end(&series), Some(150));
    // One spike in the tail moves neither the final level (a median) nor the end.
    let mut spiked = series.clone();
    spiked[14].1 = 5.0;
    assert_eq!(descent_end(&spiked), Some(150));
    // A loss that never falls has no descent to skip.
    let flat: Vec<(u64, f64)> = series.iter().map(|&(s, _)| (s, 1.0)).collect();
    assert_eq!(descent_end(&flat), Some(EVERY));
    assert_eq!(descent_end(&[]), None);
}

#[test]
fn training_checks_observe_the_predicted_ordering_after_the_descent() {
    let checks = training_checks(&sweep(Relation::Proportional));
    for check in &checks {
        assert_eq!(check.source, Source::Training);
        assert_eq!(
            check.response.ordering,
            PredictedOrdering::Observed,
            "{}: {}",
            check.theorem.name(),
            check.response.explanation
        );
        assert!(check.response.p_value.unwrap() < 0.01, "{}", check.response.explanation);
        assert_eq!(check.response.seeds, SEEDS as usize);
        // LS is left out, with the reason.
        assert_eq!(check.excluded.len(), SEEDS as usize, "{:?}", check.excluded);
        assert!(check.excluded[0].contains("learned"), "{}", check.excluded[0]);
        assert!(check.rows.iter().all(|row| row.strategy != "LS"));
    }
    let features = check(&checks, Theorem::FeatureNorms);
    assert_eq!(features.rows.len(), 3 * SEEDS as usize * N_LSC as usize);
    // Strategy 1, seed 0, LSC 1: S_1 = 4, so the alternation's range is 2 * 4 = 8 around a line.
    let row = features.rows.iter().find(|r| r.network == "1_seed0" && r.lsc == Some(1)).unwrap();
    assert!((row.factor - 4.0).abs() < 1e-12 && (row.value - 8.0).abs() < 1e-9, "{row:?}");
    assert_eq!(row.kappa, Some(1.0));
    // 1/sqrt2 enters at its own factor, with no kappa.
    let uniform = features.rows.iter().find(|r| r.network == "1/sqrt2_seed0" && r.lsc == Some(1)).unwrap();
    assert!((uniform.factor - 2.0).abs() < 1e-12 && uniform.kappa.is_none(), "{uniform:?}");
    // The gradient over the batch's own loss: 2 * sum c^2 * seed scale, whatever the loss did.
    let gradients = check(&checks, Theorem::GradientNorms);
    let row = gradients.rows.iter().find(|r| r.network == "CS(0.5)_seed0").unwrap();
    assert!((row.value - 2.0 * (1.0 + 0.25 + 0.0625 + 0.015625)).abs() < 1e-9, "{row:?}");
}

#[test]
fn training_checks_do_not_call_a_reversed_ordering_observed() {
    for check in training_checks(&sweep(Relation::Reversed)) {
        assert_eq!(check.response.ordering, PredictedOrdering::NotObserved, "{}", check.response.explanation);
        assert!(check.response.reverse_p_value.unwrap() < 0.01, "{}", check.response.explanation);
    }
}

/// Growth is not oscillation: feature norms that only grow along a line after the descent, each
/// faster the larger its factor, oscillate by nothing.
#[test]
fn smooth_growth_is_no_oscillation() {
    let mut runs = sweep(Relation::Proportional);
    for run in &mut runs {
        for record in run.records.iter_mut().filter(|r| r.quantity == Quantity::FeatureL2 && r.t_bin.is_none()) {
            let lsc = f64::from(record.lsc.unwrap());
            record.value = Some((10.0 + record.step as f64 * 5.0 / lsc).sqrt());
        }
    }
    let checks = training_checks(&runs);
    let features = check(&checks, Theorem::FeatureNorms);
    assert!(features.rows.iter().all(|row| row.value < 1e-9), "{:?}", &features.rows[..2]);
    assert_eq!(features.response.ordering, PredictedOrdering::NotObserved);
}

#[test]
fn a_run_without_enough_records_after_its_descent_is_left_out_by_name() {
    let mut runs = sweep(Relation::Proportional);
    // This run is still descending at its last record.
    for record in runs[0].records.iter_mut().filter(|r| r.quantity == Quantity::ProbeLoss) {
        record.value = Some(1.0 - record.step as f64 / 1000.0);
    }
    let checks = training_checks(&runs);
    assert!(
        checks[0].excluded.iter().any(|reason| reason.starts_with("1_seed0: ") && reason.contains("after its descent")),
        "{:?}",
        checks[0].excluded
    );
}

/// Lines as `scalelong dose-response` writes them, each quantity `relation(factor)` times a seed's
/// scale.
fn init_lines(relation: Relation) -> Vec<DoseResponseLine> {
    let mut lines = Vec::new();
    for seed in 0..SEEDS {
        for kappa in [0.5, 0.7, 0.85, 1.0] {
            let coefficients: Vec<f64> = (0..N_LSC as i32).map(|i| f64::powi(kappa, i)).collect();
            let scale = 1.0 + seed as f64;
            let line = |quantity, lsc: Option<u32>, factor: Option<f64>| DoseResponseLine {
                model: "uvit-deep".to_string(),
                seed,
                kappa,
                quantity,
                lsc,
                factor,
                value: Some(scale * relation.measured(factor.unwrap_or(1.0))),
            };
            for lsc in 1..=N_LSC {
                let factor = coefficients[lsc as usize - 1..].iter().map(|c| c * c).sum();
                lines.push(line(DoseQuantity::FeatureSqNorm, Some(lsc), Some(factor)));
            }
            let squares: f64 = coefficients.iter().map(|c| c * c).sum();
            lines.push(line(DoseQuantity::GradSqNorm, None, Some(squares)));
            lines.push(line(DoseQuantity::GradSqNormPerLoss, None, Some(squares)));
            lines.push(line(DoseQuantity::ProbeLoss, None, None));
            lines.push(line(DoseQuantity::Sensitivity, None, Some(coefficients.iter().sum())));
        }
    }
    lines
}

#[test]
fn initialisation_checks_read_the_dose_response_lines() {
    let checks = initialisation_checks(&init_lines(Relation::Proportional));
    for check in &checks {
        assert_eq!(check.source, Source::Initialisation);
        assert_eq!(check.response.ordering, PredictedOrdering::Observed, "{}", check.response.explanation);
        assert!(check.response.slope.unwrap().contains(1.0), "{}", check.response.explanation);
    }
    assert_eq!(check(&checks, Theorem::FeatureNorms).rows.len(), SEEDS as usize * 4 * N_LSC as usize);
    let gradient = check(&checks, Theorem::GradientNorms);
    assert_eq!(gradient.rows.len(), SEEDS as usize * 4);
    assert!(gradient.quantity.contains("over the probe loss"), "{}", gradient.quantity);
    let strategy_one = gradient.rows.iter().find(|r| r.kappa == Some(1.0)).unwrap();
    assert_eq!(strategy_one.strategy, "1");
    for check in initialisation_checks(&init_lines(Relation::Reversed)) {
        assert_eq!(check.response.ordering, PredictedOrdering::NotObserved, "{}", check.response.explanation);
    }
}
