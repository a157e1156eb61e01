//! What became of each run: trained, collapsed (finite but not learning) or diverged; whether its
//! held-out loss reached a plateau; how many loss and gradient spikes it had. The rules and their
//! constants live together in scalelong-analysis's `run_rules` (printed in the report's methods
//! paragraph); `scalelong frontier` judges its probes by the same [`judge_run`].

use scalelong_analysis::run_rules::{
    PLATEAU_MAX_DROP, PLATEAU_TAIL, Plateau, RunOutcome, SPIKE_K, SPIKE_WINDOW, judge_run, plateau, spike_steps,
    zero_predictor_loss,
};

use crate::sweep_data::{RunData, SweepData};

/// A run with its assessment.
pub struct Judged<'a> {
    pub run: &'a RunData,
    pub assessment: Assessment,
}

/// Every run judged, in sweep order.
pub fn judge(sweep: &SweepData) -> Vec<Judged<'_>> {
    sweep.runs.iter().map(|run| Judged { run, assessment: assess(run) }).collect()
}

/// One run judged.
pub struct Assessment {
    /// Where the run stands, for every table and claim: a finished run is trained, collapsed or
    /// diverged; an unfinished one is left out of every comparison.
    pub status: RunOutcome,
    /// The held-out loss of the last evaluation, when finite.
    pub final_heldout: Option<f64>,
    /// The zero predictor's held-out loss on the same samples.
    pub zero_loss: f64,
    /// `(step, held-out loss)` of every evaluation with a finite loss.
    pub heldout_curve: Vec<(u64, f64)>,
    /// `None` when the evaluations do not cover the tail (no evaluation at or before its start, or
    /// none at the last step).
    pub plateau: Option<Plateau>,
    pub loss_spikes: usize,
    pub grad_spikes: usize,
}

pub fn assess(run: &RunData) -> Assessment {
    let heldout_curve: Vec<(u64, f64)> = run
        .evals
        .iter()
        .filter(|line| line.heldout_loss.is_finite())
        .map(|line| (line.step, line.heldout_loss))
        .collect();
    let last = run.last_eval.as_ref();
    let final_heldout = last.map(|line| line.heldout_loss).filter(|loss| loss.is_finite());
    let status = judge_run(run.status.as_ref().map(|status| status.state), last);
    let series = |value: fn(&scalelong_schema::MetricsLine) -> f64| -> Vec<(u64, f64)> {
        run.metrics.iter().map(|line| (line.step, value(line))).collect()
    };
    Assessment {
        status,
        final_heldout,
        zero_loss: zero_predictor_loss(last),
        plateau: plateau(&heldout_curve, run.steps, PLATEAU_TAIL, PLATEAU_MAX_DROP),
        heldout_curve,
        loss_spikes: spike_steps(&series(|line| line.loss), SPIKE_WINDOW, SPIKE_K).len(),
        grad_spikes: spike_steps(&series(|line| line.grad_norm), SPIKE_WINDOW, SPIKE_K).len(),
    }
}

/// The first step at which a held-out curve is at or below `target`, interpolated linearly between
/// the evaluations around the crossing; `None` when the curve never gets there, and when it is
/// already there at its first evaluation: the crossing lies somewhere before it, unknown (with a
/// single evaluation, both runs of a pair would read the same step and a speed-up of exactly 1).
pub fn steps_to_reach(curve: &[(u64, f64)], target: f64) -> Option<f64> {
    if curve.first()?.1 <= target {
        return None;
    }
    curve.windows(2).find(|pair| pair[1].1 <= target).map(|pair| {
        let ((s0, l0), (s1, l1)) = (pair[0], pair[1]);
        s0 as f64 + (l0 - target) / (l0 - l1) * (s1 - s0) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crossing_is_interpolated_between_evaluations() {
        let curve = [(100, 0.5), (200, 0.3), (300, 0.2)];
        assert_eq!(steps_to_reach(&curve, 0.4), Some(150.0));
        assert_eq!(steps_to_reach(&curve, 0.2), Some(300.0));
        assert_eq!(steps_to_reach(&curve, 0.9), None, "already there at the first evaluation: not located");
        assert_eq!(steps_to_reach(&[(300, 0.08)], 0.09), None, "a single evaluation is no curve");
        assert_eq!(steps_to_reach(&[(100, 0.5), (200, 0.3)], 0.6), None, "already below at the first");
        assert_eq!(steps_to_reach(&[(100, 0.5), (200, 0.3)], 0.4), Some(150.0));
        assert_eq!(steps_to_reach(&[(100, 0.5), (200, 0.3)], 0.2), None, "never reached");
        assert_eq!(steps_to_reach(&curve, 0.1), None);
        assert_eq!(steps_to_reach(&[], 0.1), None);
    }
}
