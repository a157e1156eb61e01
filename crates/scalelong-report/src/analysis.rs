//! The numbers behind the figures: smoothing, aggregation over seeds, per-LSC grids, the LS gate
//! fits, each over a [`RunGroup`] (the theorem checks are in `sections/theorem_checks.rs`).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use scalelong_analysis::inference::{Interval, LEVEL, mean_interval, sample_sd};
use scalelong_analysis::stats::{DecayFit, exp_decay_fit, mean};
use scalelong_schema::SkipScaling;
use scalelong_schema::{Quantity, Record, series};

use crate::run_group::RunGroup;
use crate::sweep_data::SweepData;

/// Logged points in the trailing moving average applied to training losses (figure and
/// steps-to-target alike).
pub const LOSS_SMOOTHING_WINDOW: usize = 5;
/// Diagnostics records in the centred window whose min..max is the feature-norm oscillation band.
pub const OSCILLATION_WINDOW: usize = 5;

/// One x position of a curve with the band drawn around it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BandPoint {
    pub step: u64,
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

/// Every strategy of the sweep once, in [`SkipScaling::rank`] order, labels distinct.
pub fn strategies(sweep: &SweepData) -> Vec<(SkipScaling, String)> {
    let mut strategies: Vec<(SkipScaling, String)> = Vec::new();
    for run in &sweep.runs {
        if !strategies.iter().any(|(_, label)| *label == run.strategy_label) {
            strategies.push((run.strategy, run.strategy_label.clone()));
        }
    }
    strategies.sort_by(|(a, _), (b, _)| rank_order(*a, *b));
    strategies
}

/// The order strategies are listed in, by [`SkipScaling::rank`].
pub fn rank_order(a: SkipScaling, b: SkipScaling) -> Ordering {
    let (rank_a, kappa_a) = a.rank();
    let (rank_b, kappa_b) = b.rank();
    rank_a.cmp(&rank_b).then(kappa_a.total_cmp(&kappa_b))
}

/// Model labels, sorted.
pub fn models(sweep: &SweepData) -> Vec<&str> {
    let models: BTreeSet<&str> = sweep.runs.iter().map(|run| run.model.as_str()).collect();
    models.into_iter().collect()
}

/// Trailing moving average over `window` points (fewer at the start).
pub fn moving_average(points: &[(u64, f64)], window: usize) -> Vec<(u64, f64)> {
    (0..points.len())
        .map(|end| {
            let start = (end + 1).saturating_sub(window);
            let values: Vec<f64> = points[start..=end].iter().map(|(_, value)| *value).collect();
            (points[end].0, mean(&values).expect("a window holds at least one point"))
        })
        .collect()
}

/// Mean, min and max over the series at every step any of them has: a run that stopped early
/// (diverged, still running) leaves the later steps to the others.
pub fn band_over_seeds(per_seed: &[Vec<(u64, f64)>]) -> Vec<BandPoint> {
    let mut values_by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for points in per_seed {
        for &(step, value) in points {
            values_by_step.entry(step).or_default().push(value);
        }
    }
    values_by_step
        .into_iter()
        .map(|(step, values)| BandPoint {
            step,
            mean: mean(&values).expect("every step holds a value"),
            low: values.iter().copied().fold(f64::INFINITY, f64::min),
            high: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
        .collect()
}

/// The series with a band spanning min..max over a centred window of `window` points (clipped at
/// the ends), the oscillation envelope of the paper's Figure 1 (docs/method.md §4.2).
pub fn window_band(points: &[(u64, f64)], window: usize) -> Vec<BandPoint> {
    let half = window / 2;
    (0..points.len())
        .map(|index| {
            let neighbours = &points[index.saturating_sub(half)..(index + half + 1).min(points.len())];
            let values = neighbours.iter().map(|(_, value)| *value);
            BandPoint {
                step: points[index].0,
                mean: points[index].1,
                low: values.clone().fold(f64::INFINITY, f64::min),
                high: values.fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect()
}

/// Smoothed training loss, mean over the group's runs with their min..max as band.
pub fn loss_band(group: &RunGroup) -> Vec<BandPoint> {
    let per_run: Vec<Vec<(u64, f64)>> =
        group.run_data().map(|run| moving_average(&run.losses, LOSS_SMOOTHING_WINDOW)).collect();
    band_over_seeds(&per_run)
}

/// `feature_l2` of the last decoder block (the one consuming LSC 1), mean over the group's runs,
/// with its sliding-window oscillation band; empty when no run recorded it.
pub fn outer_feature_norm_band(group: &RunGroup) -> Vec<BandPoint> {
    let per_run: Vec<Vec<(u64, f64)>> =
        group.run_data().filter_map(|run| per_lsc_series(&run.diagnostics, Quantity::FeatureL2).remove(&1)).collect();
    let seed_mean: Vec<(u64, f64)> =
        band_over_seeds(&per_run).into_iter().map(|point| (point.step, point.mean)).collect();
    window_band(&seed_mean, OSCILLATION_WINDOW)
}

/// What a per-LSC heatmap shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LscQuantity {
    /// `feature_l2` of the decoder block consuming the LSC.
    FeatureNorm,
    /// `grad_norm` of parameter group `dec.K`, the block consuming LSC N - K.
    GradientNorm,
}

/// Values per (LSC index, step), mean over the runs of a group.
pub struct LscGrid {
    pub steps: Vec<u64>,
    pub lscs: Vec<u32>,
    pub cells: BTreeMap<(u32, u64), f64>,
}

impl LscGrid {
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

pub fn lsc_grid(group: &RunGroup, quantity: LscQuantity) -> LscGrid {
    let per_run: Vec<BTreeMap<u32, Vec<(u64, f64)>>> = group
        .run_data()
        .map(|run| match quantity {
            LscQuantity::FeatureNorm => per_lsc_series(&run.diagnostics, Quantity::FeatureL2),
            LscQuantity::GradientNorm => decoder_gradient_series(&run.diagnostics),
        })
        .collect();
    let cells: BTreeMap<(u32, u64), f64> = mean_per_lsc(&per_run)
        .into_iter()
        .flat_map(|(lsc, points)| points.into_iter().map(move |(step, value)| ((lsc, step), value)))
        .collect();
    let steps: BTreeSet<u64> = cells.keys().map(|(_, step)| *step).collect();
    let lscs: BTreeSet<u32> = cells.keys().map(|(lsc, _)| *lsc).collect();
    LscGrid { steps: steps.into_iter().collect(), lscs: lscs.into_iter().collect(), cells }
}

/// The learned coefficients (LS gate means, learned scalars) per LSC against step, mean over the
/// group's runs; empty for other groups.
pub fn gate_curves(group: &RunGroup) -> BTreeMap<u32, Vec<(u64, f64)>> {
    match group.strategy.learned_quantity() {
        Some(quantity) => lsc_curves(group, quantity),
        None => BTreeMap::new(),
    }
}

/// A per-LSC diagnostics quantity against step, mean over the group's runs.
pub fn lsc_curves(group: &RunGroup, quantity: Quantity) -> BTreeMap<u32, Vec<(u64, f64)>> {
    let per_run: Vec<BTreeMap<u32, Vec<(u64, f64)>>> =
        group.run_data().map(|run| per_lsc_series(&run.diagnostics, quantity)).collect();
    mean_per_lsc(&per_run)
}

/// The LS gates of one model and LS strategy: where they started and ended, whether they moved,
/// and their exponential fit (docs/method.md §3.4).
pub struct GateFit {
    pub model: String,
    pub strategy: SkipScaling,
    pub strategy_label: String,
    /// Runs with gate records.
    pub runs: usize,
    /// Per LSC 1, 2, ... in order: mean over runs of each run's first `gate_mean`.
    pub initial_means: Vec<f64>,
    /// Per LSC: mean over runs of each run's last `gate_mean`.
    pub final_means: Vec<f64>,
    /// Per LSC: the seed-to-seed spread (sample standard deviation over runs) of the last
    /// `gate_mean`; NaN with one run.
    pub final_spread: Vec<f64>,
    /// Per LSC: whether the gates moved from their start by more than their seed-to-seed spread
    /// (the mean of the per-run moves exceeds the spread of the final values).
    pub moved: Vec<bool>,
    /// The fit of `final_means`; `None` when the recorded LSCs are not exactly 1..=n or a mean is
    /// not positive.
    pub fit: Option<DecayFit>,
    /// The per-run fitted kappa_hat: its mean with a 95% Student t interval over runs.
    pub kappa: Option<Interval>,
}

impl GateFit {
    /// Whether any LSC's gates moved by more than their seed-to-seed spread.
    pub fn any_moved(&self) -> bool {
        self.moved.iter().any(|&moved| moved)
    }
}

/// The largest fitted per-LSC factor that counts as a decay: above 0.9 the gates of 6-8 LSCs differ
/// by less than half from outermost to innermost, which is a flat profile, not the paper's decay.
pub const DECAY_KAPPA_MAX: f64 = 0.9;

/// `None` for a group without learned coefficients (not LS or learned-scalar, or diagnostics not
/// recorded).
pub fn gate_fit(group: &RunGroup) -> Option<GateFit> {
    let strategy = group.strategy;
    let quantity = strategy.learned_quantity()?;
    // Per LSC, per run: (first, last) value.
    let mut ends: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    let mut per_run_kappa = Vec::new();
    for run in group.run_data() {
        let series = per_lsc_series(&run.diagnostics, quantity);
        let mut last_of_run = Vec::new();
        for (lsc, points) in &series {
            if let (Some(&(_, first)), Some(&(_, last))) = (points.first(), points.last()) {
                ends.entry(*lsc).or_default().push((first, last));
                last_of_run.push(last);
            }
        }
        if series.keys().copied().eq(1..=series.len() as u32)
            && let Some(fit) = exp_decay_fit(&last_of_run)
        {
            per_run_kappa.push(fit.kappa_hat);
        }
    }
    if ends.is_empty() {
        return None;
    }
    let contiguous_from_one = ends.keys().copied().eq(1..=ends.len() as u32);
    let column = |f: &dyn Fn(&(f64, f64)) -> f64| -> Vec<Vec<f64>> {
        ends.values().map(|pairs| pairs.iter().map(f).collect()).collect()
    };
    let (firsts, lasts) = (column(&|p| p.0), column(&|p| p.1));
    let moves = column(&|p| p.1 - p.0);
    let final_means: Vec<f64> = lasts.iter().map(|v| mean(v).expect("every LSC holds a value")).collect();
    let final_spread: Vec<f64> = lasts.iter().map(|v| sample_sd(v).unwrap_or(f64::NAN)).collect();
    let moved = moves
        .iter()
        .zip(&final_spread)
        .map(|(m, spread)| mean(m).is_some_and(|m| spread.is_finite() && m.abs() > *spread))
        .collect();
    Some(GateFit {
        model: group.model.to_string(),
        strategy,
        strategy_label: group.strategy_label.to_string(),
        runs: group.runs.len(),
        initial_means: firsts.iter().map(|v| mean(v).expect("every LSC holds a value")).collect(),
        fit: contiguous_from_one.then(|| exp_decay_fit(&final_means)).flatten(),
        final_means,
        final_spread,
        moved,
        kappa: mean_interval(&per_run_kappa, LEVEL),
    })
}

/// Per LSC, the series of `quantity` on the decoder block consuming it (t_bin null).
fn per_lsc_series(records: &[Record], quantity: Quantity) -> BTreeMap<u32, Vec<(u64, f64)>> {
    let layers: BTreeMap<u32, &str> = records
        .iter()
        .filter(|record| record.quantity == quantity && record.t_bin.is_none())
        .filter_map(|record| {
            let layer = record.layer.as_deref().filter(|layer| layer.starts_with("dec."))?;
            Some((record.lsc?, layer))
        })
        .collect();
    layers
        .into_iter()
        .map(|(lsc, layer)| (lsc, series(records, quantity, Some(layer), Some(lsc), None)))
        .filter(|(_, points)| !points.is_empty())
        .collect()
}

/// Per LSC, the `grad_norm` series of the parameter group `dec.K` of the block consuming it
/// (LSC N - K). Gradient records carry no LSC index, so N is the largest LSC index any record
/// names; without one the mapping is unknown and the result empty.
fn decoder_gradient_series(records: &[Record]) -> BTreeMap<u32, Vec<(u64, f64)>> {
    let Some(lsc_count) = records.iter().filter_map(|record| record.lsc).max() else {
        return BTreeMap::new();
    };
    let decoder_blocks: BTreeSet<u32> = records
        .iter()
        .filter(|record| record.quantity == Quantity::GradNorm)
        .filter_map(|record| record.layer.as_deref()?.strip_prefix("dec.")?.parse().ok())
        .collect();
    decoder_blocks
        .into_iter()
        .filter(|&block| block < lsc_count)
        .map(|block| {
            let layer = format!("dec.{block}");
            (lsc_count - block, series(records, Quantity::GradNorm, Some(&layer), None, None))
        })
        .filter(|(_, points)| !points.is_empty())
        .collect()
}

/// Per LSC, the mean over runs at every step (see [`band_over_seeds`]).
fn mean_per_lsc(per_run: &[BTreeMap<u32, Vec<(u64, f64)>>]) -> BTreeMap<u32, Vec<(u64, f64)>> {
    let mut series_by_lsc: BTreeMap<u32, Vec<Vec<(u64, f64)>>> = BTreeMap::new();
    for run in per_run {
        for (lsc, points) in run {
            series_by_lsc.entry(*lsc).or_default().push(points.clone());
        }
    }
    series_by_lsc
        .into_iter()
        .map(|(lsc, runs)| (lsc, band_over_seeds(&runs).into_iter().map(|point| (point.step, point.mean)).collect()))
        .collect()
}
