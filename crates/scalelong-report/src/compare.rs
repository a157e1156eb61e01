//! The strategies against strategy `1`, with honest uncertainty: each cell of the design (model,
//! strategy and every other setting but the seed, a [`RunGroup::per_cell`]) paired with strategy
//! 1's cell over every seed both finished (runs with one seed share their initialisation of shared
//! parts, data order, noise and held-out batch, so pairing removes what seeds change alike). A
//! collapsed or diverged run is an outcome, never a row to drop: it counts as a failure, ends at the
//! zero predictor's loss, and reaches no speed target. Each measure is tested exactly over the seed
//! pairs (scalelong_analysis::paired) with Holm's correction across the strategies compared with
//! `1`.

use std::collections::BTreeMap;

use scalelong_analysis::inference::{Interval, LEVEL};
use scalelong_analysis::paired::{
    PairedCounts, holm_adjust, log_ratios, mcnemar_exact_p_value, paired_proportion_interval, sign_flip_p_value,
    sign_flip_ratio_interval,
};
use scalelong_analysis::verdict::{ClaimedEffect, Verdict, claimed_magnitude_excluded};
use scalelong_schema::{AnalysisPlan, SkipScaling};

use crate::assess::{Judged, steps_to_reach};
use crate::run_group::RunGroup;
use scalelong_analysis::run_rules::RunOutcome;

/// The smallest effects of interest at this scale (docs/experiment-design.md): what a user would
/// act on, fixed before the runs.
pub const FAILURE_RATE_OF_INTEREST: f64 = -0.25;
/// 10% lower final held-out loss, as a ratio to strategy 1's.
pub const FINAL_LOSS_RATIO_OF_INTEREST: f64 = 0.9;
/// 1.2x fewer steps to a fixed target on the steep part of the curve (the paper reports about 1.5x).
pub const SPEEDUP_OF_INTEREST: f64 = 1.2;
/// A held-out curve 10% lower throughout (geometric mean over the run).
pub const AREA_RATIO_OF_INTEREST: f64 = 0.9;

/// What one paired reading measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measure {
    /// The share of seeds whose run collapsed or diverged, this strategy's minus strategy 1's.
    Failures,
    /// Final held-out loss, this strategy's over strategy 1's (failed runs at the zero predictor's).
    FinalLoss,
    /// Strategy 1's steps to first reach this held-out loss over this strategy's (a run that never
    /// does is counted at its last step: censored).
    StepsTo { target: f64 },
    /// The geometric mean of the held-out curve over the run, this strategy's over strategy 1's.
    CurveArea,
}

impl Measure {
    /// The effect of interest on the reading's scale.
    pub fn effect(self) -> ClaimedEffect {
        match self {
            Measure::Failures => ClaimedEffect { null: 0.0, claimed: FAILURE_RATE_OF_INTEREST },
            Measure::FinalLoss => ClaimedEffect { null: 1.0, claimed: FINAL_LOSS_RATIO_OF_INTEREST },
            Measure::StepsTo { .. } => ClaimedEffect { null: 1.0, claimed: SPEEDUP_OF_INTEREST },
            Measure::CurveArea => ClaimedEffect { null: 1.0, claimed: AREA_RATIO_OF_INTEREST },
        }
    }

    /// A short name for tables: `failures`, `final loss`, `steps to 0.15`, `curve area`.
    pub fn name(self) -> String {
        match self {
            Measure::Failures => "failures".to_string(),
            Measure::FinalLoss => "final loss".to_string(),
            Measure::StepsTo { target } => format!("steps to {}", crate::format_number(target)),
            Measure::CurveArea => "curve area".to_string(),
        }
    }
}

/// One measure of one strategy against strategy `1`, over the seed pairs.
#[derive(Debug, Clone)]
pub struct Reading {
    pub measure: Measure,
    /// On the measure's scale (a rate difference or a ratio), unadjusted 95%.
    pub interval: Option<Interval>,
    /// Two-sided exact p-value (McNemar for failures, sign-flip otherwise).
    pub p_value: Option<f64>,
    /// `p_value` after Holm's correction across the strategies compared with `1` on this measure.
    pub p_holm: Option<f64>,
    /// Per seed: (seed, this pair's value on the measure's scale; failures: -1, 0 or 1).
    pub per_seed: Vec<(u64, f64)>,
    /// Seed pairs with a run that never reached the target (speed only).
    pub censored: usize,
}

impl Reading {
    /// The direction Holm's correction establishes, read from the estimate's side of no effect:
    /// held on the side of the effect of interest, did not hold on the other, inconclusive when
    /// the adjusted p is not below 5%.
    pub fn direction(&self) -> Verdict {
        let (Some(p), Some(interval)) = (self.p_holm, &self.interval) else { return Verdict::Inconclusive };
        if p >= 1.0 - LEVEL {
            return Verdict::Inconclusive;
        }
        let effect = self.measure.effect();
        let toward_claimed = (interval.estimate - effect.null) * (effect.claimed - effect.null) > 0.0;
        if toward_claimed { Verdict::Held } else { Verdict::DidNotHold }
    }

    /// Whether the interval lies entirely short of the effect of interest.
    pub fn size_excluded(&self) -> Option<bool> {
        self.interval.as_ref().map(|interval| claimed_magnitude_excluded(interval, &self.measure.effect()))
    }
}

/// One strategy against strategy `1` in one cell, paired by seed.
pub struct Comparison {
    pub model: String,
    pub strategy_label: String,
    pub setting: String,
    /// Seeds where both runs finished (trained, collapsed or diverged): every one is compared.
    pub seeds: Vec<u64>,
    /// Seeds left out because a run is unfinished (still running, or never evaluated).
    pub unfinished_seeds: Vec<u64>,
    /// Who failed (collapsed or diverged) on the compared seeds.
    pub failures: PairedCounts,
    pub readings: Vec<Reading>,
    /// Whether the runs were evaluated more than once: a speed needs held-out curves.
    pub has_curves: bool,
}

/// Every non-`1` strategy against strategy `1` in the same model and setting (`cells`: groups per
/// cell), with Holm's correction over the strategies of one model and setting, measure by measure.
pub fn comparisons(cells: &[RunGroup], analysis: &AnalysisPlan) -> Vec<Comparison> {
    let baseline = |cell: &RunGroup| {
        cells.iter().find(|c| c.model == cell.model && c.setting == cell.setting && c.strategy == SkipScaling::Original)
    };
    let mut comparisons: Vec<Comparison> = cells
        .iter()
        .filter(|cell| cell.strategy != SkipScaling::Original)
        .filter_map(|cell| Some(compare(baseline(cell)?, cell, &analysis.speed_targets)))
        .collect();
    let families: Vec<(String, String)> = comparisons
        .iter()
        .map(|c| (c.model.clone(), c.setting.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for (model, setting) in families {
        let members: Vec<usize> = (0..comparisons.len())
            .filter(|&i| comparisons[i].model == model && comparisons[i].setting == setting)
            .collect();
        for slot in 0..comparisons[members[0]].readings.len() {
            let p_values: Vec<Option<f64>> = members.iter().map(|&i| comparisons[i].readings[slot].p_value).collect();
            for (&i, adjusted) in members.iter().zip(holm_adjust(&p_values)) {
                comparisons[i].readings[slot].p_holm = adjusted;
            }
        }
    }
    comparisons
}

fn by_seed<'c>(cell: &'c RunGroup) -> BTreeMap<u64, &'c Judged<'c>> {
    cell.runs.iter().map(|j| (j.run.seed, *j)).collect()
}

/// A finished run as the paired readings see it.
struct FinishedRun {
    failed: bool,
    /// The final held-out loss, at the zero predictor's for a failed run (a collapsed run's own
    /// loss can lie a little below it; a diverged one has none).
    final_loss: f64,
    /// The held-out curve to the run's last configured step: a diverged run's continued at the zero
    /// predictor's loss from where it stopped.
    curve: Vec<(u64, f64)>,
    end: u64,
}

impl FinishedRun {
    fn of(judged: &Judged) -> Option<Self> {
        let assessment = &judged.assessment;
        let failed = match assessment.status {
            RunOutcome::Trained => false,
            RunOutcome::Collapsed | RunOutcome::Diverged => true,
            RunOutcome::Unfinished => return None,
        };
        let zero = assessment.zero_loss;
        let final_loss = if failed { zero } else { assessment.final_heldout? };
        let end = judged.run.steps;
        let mut curve: Vec<(u64, f64)> = assessment.heldout_curve.iter().map(|&(s, l)| (s, l.min(zero))).collect();
        if curve.last().is_none_or(|&(step, _)| step < end) && assessment.status == RunOutcome::Diverged {
            curve.push((end, zero));
        }
        Some(Self { failed, final_loss, curve, end })
    }

    /// Steps to first reach `target`, or the last step when the curve never does (censored). A
    /// curve already there at its first evaluation is counted at that evaluation's step.
    fn steps_to(&self, target: f64) -> (f64, bool) {
        match self.curve.first() {
            Some(&(step, loss)) if loss <= target => (step as f64, false),
            _ => steps_to_reach(&self.curve, target).map_or((self.end as f64, true), |steps| (steps, false)),
        }
    }

    /// The mean of ln(held-out loss) over the steps the curve covers (trapezoids between
    /// evaluations), exponentiated: the curve's geometric mean.
    fn curve_geometric_mean(&self) -> Option<f64> {
        let (first, last) = (self.curve.first()?.0, self.curve.last()?.0);
        if last <= first {
            return None;
        }
        let area: f64 =
            self.curve.windows(2).map(|w| 0.5 * (w[0].1.ln() + w[1].1.ln()) * (w[1].0 - w[0].0) as f64).sum();
        Some((area / (last - first) as f64).exp())
    }
}

fn compare(baseline: &RunGroup, cell: &RunGroup, speed_targets: &[f64]) -> Comparison {
    let (base, other) = (by_seed(baseline), by_seed(cell));
    let (mut seeds, mut unfinished_seeds, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for (seed, b) in &base {
        let Some(o) = other.get(seed) else { continue };
        match (FinishedRun::of(b), FinishedRun::of(o)) {
            (Some(b), Some(o)) => {
                seeds.push(*seed);
                pairs.push((*seed, b, o));
            }
            _ => unfinished_seeds.push(*seed),
        }
    }
    let has_curves = [baseline, cell].iter().flat_map(|c| &c.runs).any(|j| j.assessment.heldout_curve.len() >= 2);
    let (failures, readings) = paired_readings(&pairs, speed_targets, has_curves);
    Comparison {
        model: cell.model.to_string(),
        strategy_label: cell.strategy_label.to_string(),
        setting: cell.setting.unwrap_or_default().to_string(),
        seeds,
        unfinished_seeds,
        failures,
        readings,
        has_curves,
    }
}

/// The paired readings over `pairs` (seed, strategy 1's run, the other's), before Holm's
/// correction: failures and final loss always; with held-out curves, the steps to each target and
/// the curve's geometric mean.
fn paired_readings(
    pairs: &[(u64, FinishedRun, FinishedRun)],
    speed_targets: &[f64],
    has_curves: bool,
) -> (PairedCounts, Vec<Reading>) {
    let mut failures = PairedCounts::default();
    for (_, b, o) in pairs {
        match (b.failed, o.failed) {
            (true, true) => failures.both += 1,
            (true, false) => failures.baseline_only += 1,
            (false, true) => failures.other_only += 1,
            (false, false) => failures.neither += 1,
        }
    }
    let mut readings = vec![Reading {
        measure: Measure::Failures,
        interval: paired_proportion_interval(failures, LEVEL),
        p_value: (failures.pairs() > 0).then(|| mcnemar_exact_p_value(failures.baseline_only, failures.other_only)),
        p_holm: None,
        per_seed: pairs
            .iter()
            .map(|(seed, b, o)| (*seed, f64::from(u8::from(o.failed)) - f64::from(u8::from(b.failed))))
            .collect(),
        censored: 0,
    }];
    let ratio_reading = |measure: Measure, values: &dyn Fn(&FinishedRun) -> Option<f64>, invert: bool| {
        let kept: Vec<(u64, f64, f64)> =
            pairs.iter().filter_map(|(seed, b, o)| Some((*seed, values(b)?, values(o)?))).collect();
        let (numerator, denominator): (Vec<f64>, Vec<f64>) =
            kept.iter().map(|&(_, b, o)| if invert { (b, o) } else { (o, b) }).unzip();
        let p_value = log_ratios(&numerator, &denominator).and_then(|logs| sign_flip_p_value(&logs));
        Reading {
            measure,
            interval: sign_flip_ratio_interval(&numerator, &denominator, LEVEL),
            p_value,
            p_holm: None,
            per_seed: kept
                .iter()
                .zip(numerator.iter().zip(&denominator))
                .map(|((seed, ..), (n, d))| (*seed, n / d))
                .collect(),
            censored: 0,
        }
    };
    readings.push(ratio_reading(Measure::FinalLoss, &|run: &FinishedRun| Some(run.final_loss), false));
    if has_curves {
        for &target in speed_targets {
            let mut reading =
                ratio_reading(Measure::StepsTo { target }, &|run: &FinishedRun| Some(run.steps_to(target).0), true);
            reading.censored = pairs.iter().filter(|(_, b, o)| b.steps_to(target).1 || o.steps_to(target).1).count();
            readings.push(reading);
        }
        readings.push(ratio_reading(Measure::CurveArea, &|run: &FinishedRun| run.curve_geometric_mean(), false));
    }
    (failures, readings)
}

#[cfg(test)]
mod tests {
    use super::*;

    const END: u64 = 400;
    const EVERY: u64 = 25;
    const SEEDS: u64 = 8;
    /// Targets on the steep part of the baseline's curve (it reaches them near steps 100 and 200).
    const TARGETS: [f64; 2] = [0.35, 0.18];

    /// A held-out curve that falls from about 1 toward 0.08 with time constant `scale` steps.
    fn curve(scale: f64) -> Vec<(u64, f64)> {
        (1..=END / EVERY).map(|k| k * EVERY).map(|s| (s, 0.08 + 0.92 * (-(s as f64) / scale).exp())).collect()
    }

    fn trained(scale: f64) -> FinishedRun {
        let curve = curve(scale);
        FinishedRun { failed: false, final_loss: curve.last().unwrap().1, curve, end: END }
    }

    fn collapsed() -> FinishedRun {
        FinishedRun {
            failed: true,
            final_loss: 1.0,
            curve: (1..=END / EVERY).map(|k| (k * EVERY, 0.99)).collect(),
            end: END,
        }
    }

    /// Eight seed pairs whose baseline time constant varies by seed (shared by the pair) and whose
    /// other run is `speed` times as fast, each run with independent log-normal noise `noise` on its
    /// time constant. Holm over a family of one leaves p as it is.
    fn readings(speed: f64, noise: f64, seed: u64) -> (PairedCounts, Vec<Reading>) {
        // Uniform draws from the golden-ratio sequence (deterministic, no generator needed), centred
        // and scaled to standard deviation `noise` on the log scale.
        let mut draw = seed as f64 * 0.1;
        let mut jitter = || {
            draw = (draw + 0.618_033_988_75).fract();
            (noise * (draw - 0.5) * 12f64.sqrt()).exp()
        };
        let pairs: Vec<(u64, FinishedRun, FinishedRun)> = (0..SEEDS)
            .map(|seed| {
                let scale = 90.0 * (1.0 + 0.1 * seed as f64);
                (seed, trained(scale * jitter()), trained(scale / speed * jitter()))
            })
            .collect();
        let (counts, mut readings) = paired_readings(&pairs, &TARGETS, true);
        readings.iter_mut().for_each(|reading| reading.p_holm = reading.p_value);
        (counts, readings)
    }

    fn speed(readings: &[Reading], target: f64) -> &Reading {
        readings.iter().find(|r| r.measure == Measure::StepsTo { target }).unwrap()
    }

    #[test]
    fn a_planted_speed_up_on_the_steep_part_is_established_and_its_size_not_excluded() {
        let (_, readings) = readings(1.5, 0.02, 1);
        for target in TARGETS {
            let reading = speed(&readings, target);
            let interval = reading.interval.unwrap();
            assert_eq!(reading.direction(), Verdict::Held, "{interval:?}");
            assert_eq!(reading.size_excluded(), Some(false), "{interval:?}");
            assert!(interval.contains(1.5), "{interval:?}");
            assert_eq!(reading.censored, 0);
        }
    }

    #[test]
    fn no_effect_reads_not_established_with_the_size_of_interest_excluded() {
        let (_, readings) = readings(1.0, 0.02, 2);
        for target in TARGETS {
            let reading = speed(&readings, target);
            let interval = reading.interval.unwrap();
            assert_eq!(reading.direction(), Verdict::Inconclusive, "{interval:?}");
            assert_eq!(reading.size_excluded(), Some(true), "1.2x (and so 1.5x) excluded: {interval:?}");
            assert!(interval.high < 1.5);
        }
    }

    #[test]
    fn noise_eight_seeds_cannot_resolve_reads_not_established_and_size_not_excluded() {
        let (_, readings) = readings(1.5, 1.0, 3);
        for target in TARGETS {
            let reading = speed(&readings, target);
            let interval = reading.interval.unwrap();
            assert_eq!(reading.direction(), Verdict::Inconclusive, "{interval:?}");
            assert_eq!(reading.size_excluded(), Some(false), "{interval:?}");
        }
    }

    #[test]
    fn planted_collapses_are_kept_and_establish_the_direction() {
        // Strategy 1 collapses on 6 of 8 seeds, the other on none.
        let pairs: Vec<(u64, FinishedRun, FinishedRun)> = (0..SEEDS)
            .map(|seed| (seed, if seed < 6 { collapsed() } else { trained(100.0) }, trained(100.0)))
            .collect();
        let (counts, mut readings) = paired_readings(&pairs, &TARGETS, true);
        readings.iter_mut().for_each(|reading| reading.p_holm = reading.p_value);
        assert_eq!((counts.baseline(), counts.other(), counts.pairs()), (6, 0, 8));
        let failures = &readings[0];
        assert_eq!(failures.measure, Measure::Failures);
        assert!((failures.p_value.unwrap() - 2.0 / 64.0).abs() < 1e-12);
        assert_eq!(failures.direction(), Verdict::Held);
        // Every pair stays in the other measures: the collapsed runs end at the zero predictor's loss
        // and never reach a target (censored at the last step).
        let final_loss = readings.iter().find(|r| r.measure == Measure::FinalLoss).unwrap();
        assert_eq!(final_loss.per_seed.len(), 8);
        assert_eq!(final_loss.direction(), Verdict::Held);
        let reading = speed(&readings, TARGETS[0]);
        assert_eq!((reading.per_seed.len(), reading.censored), (8, 6));
        // Holm across three strategies with this count would need p < 0.05 / 3: 2/64 is not.
        let adjusted = holm_adjust(&[Some(2.0 / 64.0), Some(2.0 / 64.0), Some(1.0)]);
        assert!(adjusted[0].unwrap() > 0.05);
    }

    #[test]
    fn no_failures_on_either_side_reads_not_established_without_excluding_two_in_eight() {
        let pairs: Vec<(u64, FinishedRun, FinishedRun)> =
            (0..SEEDS).map(|seed| (seed, trained(100.0), trained(100.0))).collect();
        let (_, mut readings) = paired_readings(&pairs, &[], false);
        readings.iter_mut().for_each(|reading| reading.p_holm = reading.p_value);
        assert_eq!(readings.len(), 2, "no curves, no speed readings");
        assert_eq!(readings[0].direction(), Verdict::Inconclusive);
        assert_eq!(readings[0].size_excluded(), Some(false), "8 seeds cannot exclude 2 fewer failures");
    }

    #[test]
    fn a_diverged_run_is_continued_at_the_zero_predictor_to_its_end() {
        let run =
            FinishedRun { failed: true, final_loss: 1.0, curve: vec![(25, 0.9), (50, 0.95), (400, 1.0)], end: 400 };
        assert_eq!(run.steps_to(0.5), (400.0, true));
        assert_eq!(trained(100.0).steps_to(2.0), (25.0, false), "already there at the first evaluation");
        let mean = trained(100.0).curve_geometric_mean().unwrap();
        assert!(mean > 0.08 && mean < 0.5, "{mean}");
    }
}
