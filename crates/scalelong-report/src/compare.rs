//! The strategies against each other, with honest uncertainty: per cell (model, strategy and every
//! other setting but the seed) the mean final held-out loss with a 95% Student t interval over its
//! seeds; per strategy against strategy `1` the paired comparisons over the seeds both ran (runs
//! with one seed share their data order and noise, so pairing removes what seeds change alike):
//! the difference of final held-out losses and the speed-up, each with its interval and the
//! smallest effect this many seeds could have detected.

use std::collections::BTreeMap;

use scalelong_analysis::inference::{
    Interval, LEVEL, POWER, mean_interval, minimum_detectable_effect, paired_difference_interval,
    paired_ratio_interval, sample_sd,
};
use scalelong_schema::SkipScaling;

use crate::analysis::strategy_rank;
use crate::assess::{Assessment, Status, steps_to_reach};
use crate::sweep_data::{RunData, SweepData};

/// A run with its assessment.
pub struct Judged<'a> {
    pub run: &'a RunData,
    pub assessment: Assessment,
}

/// The runs of one model and strategy at one setting of the other axes, over their seeds.
pub struct Cell<'a> {
    pub model: String,
    pub strategy: SkipScaling,
    pub strategy_label: String,
    /// The axes other than strategy and seed, as `key=value` text (empty for none).
    pub setting: String,
    pub runs: Vec<&'a Judged<'a>>,
    /// Mean final held-out loss of the trained runs, with its interval (`None` under 2 seeds).
    pub final_loss: Option<Interval>,
    /// Mean FD of the trained runs that have one, with its interval.
    pub fd: Option<Interval>,
}

impl Cell<'_> {
    pub fn count(&self, status: Status) -> usize {
        self.runs.iter().filter(|judged| judged.assessment.status == status).count()
    }
}

/// One strategy against strategy `1` in one cell, paired by seed.
pub struct Comparison {
    pub model: String,
    pub strategy_label: String,
    pub setting: String,
    /// Seeds where both runs trained.
    pub seeds: Vec<u64>,
    /// Seeds left out because one of the two runs did not train (collapsed, diverged, unfinished).
    pub excluded_seeds: Vec<u64>,
    /// Final held-out loss, this strategy's minus strategy 1's (negative: this one ends lower).
    pub loss_difference: Option<Interval>,
    /// The smallest difference the paired t test detects with 80% power at this spread and count.
    pub loss_difference_detectable: Option<f64>,
    /// Strategy 1's steps to a target over this strategy's (above 1: this one gets there first).
    /// Per seed, the target is the higher of the two runs' final held-out losses: a loss both
    /// reach, so every pair gives a ratio.
    pub speedup: Option<Interval>,
    /// The smallest speed-up factor the paired test detects with 80% power (on the log scale).
    pub speedup_detectable: Option<f64>,
    /// Per seed: (seed, speed-up).
    pub speedups: Vec<(u64, f64)>,
    /// Whether the runs were evaluated more than once: a speed-up needs held-out curves.
    pub has_curves: bool,
}

/// Every run judged, in sweep order.
pub fn judge(sweep: &SweepData) -> Vec<Judged<'_>> {
    sweep.runs.iter().map(|run| Judged { run, assessment: crate::assess::assess(run) }).collect()
}

/// The cells of the sweep, by model, setting and strategy (in [`strategy_rank`] order).
pub fn cells<'a>(judged: &'a [Judged<'a>]) -> Vec<Cell<'a>> {
    // (model, setting, strategy rank, strategy label): cells sort by model, then setting, then strategy.
    type CellKey = (String, String, (u8, u64), String);
    let mut groups: BTreeMap<CellKey, Vec<&Judged>> = BTreeMap::new();
    for j in judged {
        let (rank, kappa) = strategy_rank(j.run.strategy);
        let key = (j.run.model.clone(), j.run.setting.clone(), (rank, kappa.to_bits()), j.run.strategy_label.clone());
        groups.entry(key).or_default().push(j);
    }
    groups
        .into_iter()
        .map(|((model, setting, _, strategy_label), runs)| {
            let trained: Vec<&&Judged> = runs.iter().filter(|j| j.assessment.status == Status::Trained).collect();
            let losses: Vec<f64> = trained.iter().filter_map(|j| j.assessment.final_heldout).collect();
            let fds: Vec<f64> = trained
                .iter()
                .filter_map(|j| j.run.last_eval.as_ref().and_then(|line| line.fd))
                .filter(|fd| fd.is_finite())
                .collect();
            Cell {
                model,
                strategy: runs[0].run.strategy,
                strategy_label,
                setting,
                final_loss: mean_interval(&losses, LEVEL),
                fd: mean_interval(&fds, LEVEL),
                runs,
            }
        })
        .collect()
}

/// Every non-`1` strategy against strategy `1` in the same model and setting.
pub fn comparisons(cells: &[Cell]) -> Vec<Comparison> {
    let baseline = |model: &str, setting: &str| {
        cells.iter().find(|c| c.model == model && c.setting == setting && c.strategy == SkipScaling::Original)
    };
    cells
        .iter()
        .filter(|cell| cell.strategy != SkipScaling::Original)
        .filter_map(|cell| Some(compare(baseline(&cell.model, &cell.setting)?, cell)))
        .collect()
}

fn by_seed<'c>(cell: &'c Cell) -> BTreeMap<u64, &'c Assessment> {
    cell.runs.iter().map(|j| (j.run.seed, &j.assessment)).collect()
}

fn compare(baseline: &Cell, cell: &Cell) -> Comparison {
    let (base, other) = (by_seed(baseline), by_seed(cell));
    let (mut seeds, mut excluded_seeds) = (Vec::new(), Vec::new());
    let (mut base_losses, mut losses, mut base_steps, mut steps, mut speedups) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (seed, b) in &base {
        let Some(o) = other.get(seed) else { continue };
        let trained = b.status == Status::Trained && o.status == Status::Trained;
        let (Some(bl), Some(ol)) = (b.final_heldout, o.final_heldout) else {
            excluded_seeds.push(*seed);
            continue;
        };
        if !trained {
            excluded_seeds.push(*seed);
            continue;
        }
        seeds.push(*seed);
        base_losses.push(bl);
        losses.push(ol);
        let target = bl.max(ol);
        if let (Some(bs), Some(os)) =
            (steps_to_reach(&b.heldout_curve, target), steps_to_reach(&o.heldout_curve, target))
        {
            base_steps.push(bs);
            steps.push(os);
            speedups.push((*seed, bs / os));
        }
    }
    let differences: Vec<f64> = losses.iter().zip(&base_losses).map(|(o, b)| o - b).collect();
    let log_ratios: Vec<f64> = speedups.iter().map(|(_, s)| s.ln()).collect();
    Comparison {
        model: cell.model.clone(),
        strategy_label: cell.strategy_label.clone(),
        setting: cell.setting.clone(),
        loss_difference: paired_difference_interval(&losses, &base_losses, LEVEL),
        loss_difference_detectable: sample_sd(&differences)
            .and_then(|sd| minimum_detectable_effect(sd, differences.len(), LEVEL, POWER)),
        speedup: paired_ratio_interval(&base_steps, &steps, LEVEL),
        speedup_detectable: sample_sd(&log_ratios)
            .and_then(|sd| minimum_detectable_effect(sd, log_ratios.len(), LEVEL, POWER))
            .map(f64::exp),
        speedups,
        has_curves: [baseline, cell]
            .iter()
            .flat_map(|c| &c.runs)
            .any(|judged| judged.assessment.heldout_curve.len() >= 2),
        seeds,
        excluded_seeds,
    }
}
