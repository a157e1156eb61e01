//! How a run is judged, each rule beside its constants: trained, collapsed or diverged; where its
//! held-out loss plateaus; its loss and gradient spikes; the range of a series about its trend.

use std::fmt;

use crate::inference::{mean_of, sample_sd};
use scalelong_schema::{EvalLine, RunState};
use serde::{Deserialize, Serialize};

/// The share of training, at the end, over which the report's plateau rule looks ([`plateau`]).
pub const PLATEAU_TAIL: f64 = 0.2;
/// A run has plateaued when its held-out loss fell by less than this fraction over that tail.
pub const PLATEAU_MAX_DROP: f64 = 0.05;

/// Result of the plateau rule for one run's held-out loss curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    /// Step at which the tail window starts: round(total_steps * (1 - tail_fraction)).
    pub start_step: u64,
    /// Held-out loss at `start_step`, linearly interpolated between the evaluations around it.
    pub start_loss: f64,
    /// Held-out loss at the final evaluation (step == total_steps).
    pub end_loss: f64,
    /// (start_loss - end_loss) / start_loss; negative if the loss rose.
    pub relative_drop: f64,
    /// relative_drop <= max_relative_drop: the run was no longer improving meaningfully at the end.
    pub plateaued: bool,
}

/// Plateau rule: the relative held-out-loss drop over the last `tail_fraction` of training (0.2 = last fifth).
///
/// Why: comparing strategies at a fixed step budget is only fair if runs have (nearly) converged; a run still
/// falling steeply would change the ranking with more steps. `evals` are (step, loss) with strictly increasing
/// steps; the last one must be at `total_steps`. L(start) is interpolated linearly between the evaluations around
/// the start step, since evaluations rarely sit exactly there. A rising loss counts as plateaued (not improving).
///
/// None if `evals` is empty or not strictly increasing in step, `total_steps` is 0, `tail_fraction` is not in
/// (0, 1], there is no evaluation at or before the start step, the last evaluation is not at `total_steps`, a loss
/// used is non-finite, or L(start) <= 0 (a relative drop needs a positive reference).
pub fn plateau(evals: &[(u64, f64)], total_steps: u64, tail_fraction: f64, max_relative_drop: f64) -> Option<Plateau> {
    if evals.is_empty() || total_steps == 0 || !(tail_fraction > 0.0 && tail_fraction <= 1.0) {
        return None;
    }
    if evals.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
        return None;
    }
    let &(last_step, end_loss) = evals.last()?;
    if last_step != total_steps || !end_loss.is_finite() {
        return None;
    }
    let start_step = (total_steps as f64 * (1.0 - tail_fraction)).round() as u64;
    // Last evaluation at or before the start step, and the first one after it.
    let before_index = evals.iter().rposition(|&(step, _)| step <= start_step)?;
    let (before_step, before_loss) = evals[before_index];
    let start_loss = if before_step == start_step {
        before_loss
    } else {
        let (after_step, after_loss) = *evals.get(before_index + 1)?;
        let fraction = (start_step - before_step) as f64 / (after_step - before_step) as f64;
        before_loss + fraction * (after_loss - before_loss)
    };
    if !start_loss.is_finite() || start_loss <= 0.0 {
        return None;
    }
    let relative_drop = (start_loss - end_loss) / start_loss;
    Some(Plateau { start_step, start_loss, end_loss, relative_drop, plateaued: relative_drop <= max_relative_drop })
}

/// What a finished run is, for deciding which runs enter comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunOutcome {
    /// Finite loss clearly below the zero predictor's: the model learned something.
    Trained,
    /// Finite loss but no better than (a fraction of) predicting eps = 0: the model did not learn.
    Collapsed,
    /// A non-finite loss was seen or the run reported divergence.
    Diverged,
    /// Running, interrupted, or without an evaluation to judge it by: left out of every
    /// comparison.
    Unfinished,
}

impl RunOutcome {
    /// The word the report's tables and the frontier's log use.
    pub fn text(self) -> &'static str {
        match self {
            RunOutcome::Trained => "trained",
            RunOutcome::Collapsed => "collapsed",
            RunOutcome::Diverged => "diverged",
            RunOutcome::Unfinished => "unfinished",
        }
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// Classify a finished run: Diverged if `diverged` or the final held-out loss is non-finite; Collapsed if the
/// loss is >= `collapse_fraction` * `zero_predictor_loss` (the held-out loss of predicting eps = 0, about 1.0 for
/// unit-variance noise); Trained otherwise.
///
/// Why a collapse class: a run that never beats the trivial predictor is not a slow learner and would distort
/// step-to-target comparisons, yet it is not a divergence either. None when the loss is missing and the run did
/// not diverge, or when `zero_predictor_loss` or `collapse_fraction` is not finite and positive.
pub fn classify_run(
    diverged: bool,
    final_heldout_loss: Option<f64>,
    zero_predictor_loss: f64,
    collapse_fraction: f64,
) -> Option<RunOutcome> {
    if diverged {
        return Some(RunOutcome::Diverged);
    }
    let loss = final_heldout_loss?;
    if !loss.is_finite() {
        return Some(RunOutcome::Diverged);
    }
    let is_positive = |v: f64| v.is_finite() && v > 0.0;
    if !is_positive(zero_predictor_loss) || !is_positive(collapse_fraction) {
        return None;
    }
    if loss >= collapse_fraction * zero_predictor_loss {
        Some(RunOutcome::Collapsed)
    } else {
        Some(RunOutcome::Trained)
    }
}

/// A finished run whose final held-out loss is at least this fraction of the zero predictor's
/// (predicting no noise at all) has collapsed: it learned nothing, whatever its NaN-free log says.
pub const COLLAPSE_FRACTION: f64 = 0.9;
/// The zero predictor's held-out loss where an evaluation did not record it: the mean squared
/// standard-normal noise.
pub const ZERO_PREDICTOR_LOSS: f64 = 1.0;

/// The zero predictor's held-out loss on the samples of `last_eval`, [`ZERO_PREDICTOR_LOSS`] where
/// it was not recorded.
pub fn zero_predictor_loss(last_eval: Option<&EvalLine>) -> f64 {
    last_eval.map(|line| line.zero_predictor_loss).filter(|loss| loss.is_finite()).unwrap_or(ZERO_PREDICTOR_LOSS)
}

/// What a run is by its `status.json` state and its last evaluation, the one rule the report and
/// `scalelong frontier` judge runs by: diverged when it says so or its last held-out loss is not
/// finite; a completed run is trained or collapsed by [`classify_run`] at [`COLLAPSE_FRACTION`];
/// [`RunOutcome::Unfinished`] while it is running, interrupted, or completed without an evaluation.
pub fn judge_run(state: Option<RunState>, last_eval: Option<&EvalLine>) -> RunOutcome {
    let final_loss = last_eval.map(|line| line.heldout_loss);
    if state == Some(RunState::Diverged) || final_loss.is_some_and(|loss| !loss.is_finite()) {
        return RunOutcome::Diverged;
    }
    if state != Some(RunState::Completed) {
        return RunOutcome::Unfinished;
    }
    classify_run(false, final_loss, zero_predictor_loss(last_eval), COLLAPSE_FRACTION).unwrap_or(RunOutcome::Unfinished)
}

/// Logged points in the trailing window the report measures a spike against ([`spike_steps`]).
pub const SPIKE_WINDOW: usize = 20;
/// The report's spike: a logged loss or gradient norm above its trailing window's mean by more than
/// this many of the window's standard deviations.
pub const SPIKE_K: f64 = 4.0;

/// Steps whose value exceeds the mean of the previous `window` values by more than `k` sample standard deviations
/// of those values (upward only: a loss spike). The first `window` points are never flagged, since they have no
/// full history. Non-finite values always count as spikes and are left out of later windows' mean and sd.
///
/// Why trailing statistics: a spike is judged against what the run was doing just before, so a loss that is still
/// falling or slowly drifting is not flagged (a steady linear rise sits about 1.8 sd above its trailing mean, so
/// k >= 3 is the sensible range). Returns an empty list for `window` < 2 (no sd) or `k` not finite and >= 0. A
/// window whose finite values are all equal flags any larger value.
pub fn spike_steps(series: &[(u64, f64)], window: usize, k: f64) -> Vec<u64> {
    if window < 2 || !k.is_finite() || k < 0.0 {
        return Vec::new();
    }
    let mut spikes = Vec::new();
    for index in window..series.len() {
        let (step, value) = series[index];
        if !value.is_finite() {
            spikes.push(step);
            continue;
        }
        let history: Vec<f64> =
            series[index - window..index].iter().map(|&(_, v)| v).filter(|v| v.is_finite()).collect();
        let Some(sd) = sample_sd(&history) else {
            continue;
        };
        if value - mean_of(&history) > k * sd {
            spikes.push(step);
        }
    }
    spikes
}

/// Trend removed before measuring oscillation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trend {
    /// Least-squares line value ~ a + b * step.
    Linear,
    /// Centred moving average over this many points (rounded up to odd so it is centred); points without a full
    /// window on both sides are left out. Assumes evenly spaced steps.
    MovingAverage(usize),
}

/// Oscillation around the trend: max - min of the residuals after removing `trend`.
///
/// Why detrend: the raw max - min of a loss or scale series mostly measures its drift (a linear ramp's raw range is
/// its growth), whereas the question is how much it wobbles. A ramp gives about 0; a ramp plus a sinusoid of
/// amplitude A gives about 2A. None if any value is non-finite, there are fewer than 2 points, all steps are equal
/// (Linear), or no point has a full window (MovingAverage, including a window of 0).
pub fn detrended_range(series: &[(u64, f64)], trend: Trend) -> Option<f64> {
    if series.len() < 2 || series.iter().any(|&(_, v)| !v.is_finite()) {
        return None;
    }
    let residuals: Vec<f64> = match trend {
        Trend::Linear => {
            let steps: Vec<f64> = series.iter().map(|&(s, _)| s as f64).collect();
            let values: Vec<f64> = series.iter().map(|&(_, v)| v).collect();
            let mean_step = mean_of(&steps);
            let mean_value = mean_of(&values);
            let (mut sxy, mut sxx) = (0.0, 0.0);
            for (s, v) in steps.iter().zip(&values) {
                sxy += (s - mean_step) * (v - mean_value);
                sxx += (s - mean_step) * (s - mean_step);
            }
            if sxx <= 0.0 {
                return None;
            }
            let slope = sxy / sxx;
            steps.iter().zip(&values).map(|(s, v)| v - mean_value - slope * (s - mean_step)).collect()
        }
        Trend::MovingAverage(width) => {
            if width == 0 {
                return None;
            }
            let half = width / 2;
            if series.len() < 2 * half + 1 {
                return None;
            }
            (half..series.len() - half)
                .map(|i| {
                    let window = &series[i - half..=i + half];
                    let average = window.iter().map(|&(_, v)| v).sum::<f64>() / window.len() as f64;
                    series[i].1 - average
                })
                .collect()
        }
    };
    let max = residuals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = residuals.iter().copied().fold(f64::INFINITY, f64::min);
    Some(max - min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn evaluations(total_steps: u64, every: u64, loss: impl Fn(f64) -> f64) -> Vec<(u64, f64)> {
        (0..=total_steps / every).map(|i| (i * every, loss((i * every) as f64))).collect()
    }

    #[test]
    fn plateau_flattened_and_steep_curves() {
        let flattened = evaluations(10_000, 500, |step| 0.1 + 0.9 * (-step / 500.0).exp());
        let result = plateau(&flattened, 10_000, 0.2, 0.01).unwrap();
        assert_eq!(result.start_step, 8_000);
        assert!(result.plateaued && result.relative_drop.abs() < 1e-6, "{result:?}");

        let steep = evaluations(10_000, 500, |step| (-step / 5_000.0).exp());
        let result = plateau(&steep, 10_000, 0.2, 0.01).unwrap();
        let expected_drop = 1.0 - (-0.4f64).exp(); // (e^-1.6 - e^-2) / e^-1.6
        assert_close(result.relative_drop, expected_drop, 1e-12, "steep drop");
        assert!(!result.plateaued);

        // A rising loss is not improving, so it counts as plateaued.
        let rising = evaluations(1_000, 100, |step| 0.2 + step / 10_000.0);
        assert!(plateau(&rising, 1_000, 0.2, 0.01).unwrap().plateaued);
    }

    #[test]
    fn plateau_interpolates_between_evaluations() {
        let evals = [(0, 1.0), (300, 0.6), (700, 0.4), (1_000, 0.25)];
        let result = plateau(&evals, 1_000, 0.2, 0.1).unwrap();
        // Start step 800 lies between 700 (0.4) and 1000 (0.25): 0.4 + (100/300) * (0.25 - 0.4) = 0.35.
        assert_eq!(result.start_step, 800);
        assert_close(result.start_loss, 0.35, 1e-12, "interpolated start loss");
        assert_eq!(result.end_loss, 0.25);
        assert_close(result.relative_drop, 0.1 / 0.35, 1e-12, "relative drop");
        assert!(!result.plateaued);
        // An evaluation exactly at the start step is used as is.
        let exact = plateau(&[(0, 1.0), (800, 0.5), (1_000, 0.49)], 1_000, 0.2, 0.05).unwrap();
        assert_eq!(exact.start_loss, 0.5);
        assert!(exact.plateaued);
    }

    #[test]
    fn plateau_is_none_when_evaluations_are_missing_or_bad() {
        assert_eq!(plateau(&[], 1_000, 0.2, 0.01), None);
        assert_eq!(plateau(&[(900, 0.3), (1_000, 0.29)], 1_000, 0.2, 0.01), None, "nothing at or before 800");
        assert_eq!(plateau(&[(0, 1.0), (500, 0.4), (900, 0.3)], 1_000, 0.2, 0.01), None, "nothing at the end");
        assert_eq!(plateau(&[(0, 1.0), (900, 0.3), (500, 0.4), (1_000, 0.3)], 1_000, 0.2, 0.01), None, "unsorted");
        assert_eq!(plateau(&[(0, 1.0), (1_000, f64::NAN)], 1_000, 0.2, 0.01), None, "NaN end");
        assert_eq!(plateau(&[(0, 1.0), (1_000, 0.5)], 1_000, 0.0, 0.01), None, "empty tail");
        assert_eq!(plateau(&[(0, 0.0), (1_000, 0.0)], 1_000, 1.0, 0.01), None, "zero reference loss");
    }

    #[test]
    fn classify_run_outcomes() {
        assert_eq!(classify_run(true, Some(0.1), 1.0, 0.9), Some(RunOutcome::Diverged));
        assert_eq!(classify_run(false, Some(f64::NAN), 1.0, 0.9), Some(RunOutcome::Diverged));
        assert_eq!(classify_run(false, Some(f64::INFINITY), 1.0, 0.9), Some(RunOutcome::Diverged));
        assert_eq!(classify_run(true, None, 1.0, 0.9), Some(RunOutcome::Diverged));
        assert_eq!(classify_run(false, Some(0.95), 1.0, 0.9), Some(RunOutcome::Collapsed));
        assert_eq!(classify_run(false, Some(0.9), 1.0, 0.9), Some(RunOutcome::Collapsed));
        assert_eq!(classify_run(false, Some(0.1), 1.0, 0.9), Some(RunOutcome::Trained));
        assert_eq!(classify_run(false, None, 1.0, 0.9), None);
        assert_eq!(classify_run(false, Some(0.1), f64::NAN, 0.9), None);
        assert_eq!(classify_run(false, Some(0.1), 1.0, 0.0), None);
        assert_eq!(RunOutcome::Collapsed.to_string(), "collapsed");
    }

    #[test]
    fn runs_are_judged_by_state_and_last_evaluation() {
        let eval = |heldout_loss: f64, zero_predictor_loss: f64| EvalLine {
            step: 300,
            heldout_loss,
            heldout_loss_bins: Vec::new(),
            zero_predictor_loss,
            fd: None,
            classifier_accuracy: None,
            n_samples: 0,
        };
        let completed = Some(RunState::Completed);
        assert_eq!(judge_run(completed, Some(&eval(0.1, 1.0))), RunOutcome::Trained);
        assert_eq!(judge_run(completed, Some(&eval(0.95, 1.0))), RunOutcome::Collapsed);
        assert_eq!(judge_run(completed, Some(&eval(0.5, 0.5))), RunOutcome::Collapsed, "the recorded zero loss");
        assert_eq!(judge_run(completed, Some(&eval(0.85, f64::NAN))), RunOutcome::Trained, "1.0 when missing");
        assert_eq!(judge_run(completed, Some(&eval(f64::NAN, 1.0))), RunOutcome::Diverged);
        assert_eq!(judge_run(Some(RunState::Diverged), None), RunOutcome::Diverged);
        assert_eq!(judge_run(Some(RunState::Running), Some(&eval(f64::NAN, 1.0))), RunOutcome::Diverged);
        assert_eq!(judge_run(Some(RunState::Running), Some(&eval(0.1, 1.0))), RunOutcome::Unfinished, "not finished");
        assert_eq!(judge_run(completed, None), RunOutcome::Unfinished, "nothing to judge it by");
        assert_eq!(judge_run(None, None), RunOutcome::Unfinished);
    }

    #[test]
    fn spike_steps_finds_planted_spikes_only() {
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let planted = [1_000u64, 1_800, 2_500];
        let series: Vec<(u64, f64)> = (0..300u64)
            .map(|i| {
                let step = i * 10;
                let spike = if planted.contains(&step) { 0.3 } else { 0.0 };
                (step, 1.0 + 0.01 * standard_normal(&mut rng) + spike)
            })
            .collect();
        assert_eq!(spike_steps(&series, 20, 5.0), planted.to_vec());

        let decaying: Vec<(u64, f64)> = (0..300u64).map(|i| (i, 1.0 + 2.0 * (-(i as f64) / 50.0).exp())).collect();
        assert!(spike_steps(&decaying, 20, 3.0).is_empty());
        let rising: Vec<(u64, f64)> = (0..300u64).map(|i| (i, 1.0 + 0.01 * i as f64)).collect();
        assert!(spike_steps(&rising, 20, 3.0).is_empty());

        let mut with_non_finite: Vec<(u64, f64)> =
            (0..100u64).map(|i| (i, 1.0 + 0.01 * standard_normal(&mut rng))).collect();
        with_non_finite[50].1 = f64::NAN;
        with_non_finite[60].1 = f64::INFINITY;
        assert_eq!(spike_steps(&with_non_finite, 20, 5.0), vec![50, 60]);
        // The first `window` points are never flagged, even when non-finite.
        with_non_finite[5].1 = f64::NAN;
        assert_eq!(spike_steps(&with_non_finite, 20, 5.0), vec![50, 60]);
        assert!(spike_steps(&with_non_finite, 1, 5.0).is_empty(), "window < 2 has no sd");
        assert!(spike_steps(&with_non_finite, 20, f64::NAN).is_empty());
    }

    #[test]
    fn detrended_range_removes_a_ramp_and_keeps_oscillation() {
        let ramp: Vec<(u64, f64)> = (0..=2_500u64).map(|i| (i * 4, 3.0 + 0.01 * (i * 4) as f64)).collect();
        let raw_range = ramp.last().unwrap().1 - ramp[0].1;
        assert!(raw_range > 99.0);
        assert!(detrended_range(&ramp, Trend::Linear).unwrap() < 1e-9);
        assert!(detrended_range(&ramp, Trend::MovingAverage(25)).unwrap() < 1e-9);

        // Ramp plus a sinusoid of amplitude 0.5 and period 100 steps, sampled every 4 steps (25 points per
        // period, so a 25-point moving average removes the sinusoid exactly). The series spans 100 periods: over
        // few periods a least-squares line absorbs part of the sinusoid (10 periods give 2.16 A instead of 2 A).
        let amplitude = 0.5;
        let wavy: Vec<(u64, f64)> = ramp
            .iter()
            .map(|&(step, v)| (step, v + amplitude * (2.0 * std::f64::consts::PI * step as f64 / 100.0).sin()))
            .collect();
        let linear = detrended_range(&wavy, Trend::Linear).unwrap();
        let moving = detrended_range(&wavy, Trend::MovingAverage(25)).unwrap();
        assert_close(linear, 2.0 * amplitude, 0.02, "linear detrend of ramp + sinusoid");
        assert_close(moving, 2.0 * amplitude, 0.02, "moving-average detrend of ramp + sinusoid");

        assert_eq!(detrended_range(&[(0, 1.0)], Trend::Linear), None);
        assert_eq!(detrended_range(&[(5, 1.0), (5, 2.0)], Trend::Linear), None);
        assert_eq!(detrended_range(&[(0, 1.0), (1, f64::NAN)], Trend::Linear), None);
        assert_eq!(detrended_range(&ramp[..10], Trend::MovingAverage(25)), None);
        assert_eq!(detrended_range(&ramp, Trend::MovingAverage(0)), None);
    }
}
