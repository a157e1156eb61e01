//! The long skips beyond the training-time strategies (docs/method.md §3.5): sampling-time edits
//! of the trained networks (`skip_eval.jsonl`), the importance of each LSC, and the share of each
//! skip's energy in its lowest spatial frequencies, over the trained runs of each model and
//! strategy.
//!
//! Every edited line is paired with its own run's unedited line (the same held-out images, noise
//! and FD sampling noise), so a change carries no evaluation noise of its own; its interval is a
//! paired Student t interval over the runs (seeds), as everywhere in the report.

use std::collections::BTreeMap;

use scalelong_analysis::inference::{
    Interval, LEVEL, mean_correlation_interval, mean_interval, paired_difference_interval, paired_ratio_interval,
};
use scalelong_analysis::resampling::spearman;
use scalelong_analysis::stats::mean;
use scalelong_schema::{EditKind, Quantity, SkipEvalLine, SkipScaling, series};

use crate::run_group::RunGroup;
use crate::sweep_data::RunData;

/// Everything this module computes from a sweep, from the trained runs of each model and strategy
/// only (collapsed, diverged and unfinished runs left out: editing a network that learned nothing
/// says nothing about skips).
pub struct SkipFindings {
    pub edits: Vec<EditRow>,
    pub importance: Vec<ImportanceProfile>,
    pub spectral: Vec<SpectralRow>,
}

impl SkipFindings {
    /// `groups`: every run of each model and strategy ([`RunGroup::per_strategy`]).
    pub fn new(groups: &[RunGroup]) -> Self {
        Self { edits: edit_rows(groups), importance: importance_profiles(groups), spectral: spectral_rows(groups) }
    }
}

/// One sampling-time setting on one model and strategy against the unedited networks.
pub struct EditRow {
    pub model: String,
    pub strategy: SkipScaling,
    pub strategy_label: String,
    /// `none` (the unedited networks), `skip-tuning`, `freeu` or `importance`.
    pub kind: EditKind,
    pub setting: String,
    pub lsc: Option<u32>,
    pub factor: Option<f64>,
    /// Runs evaluated with this setting (and unedited).
    pub runs: usize,
    /// Mean held-out loss under the setting, with its interval over runs.
    pub heldout: Option<Interval>,
    /// The held-out loss under the setting minus unedited, paired by run.
    pub heldout_change: Option<Interval>,
    /// Per timestep bin: the same paired change (low t first).
    pub bin_changes: Vec<Option<Interval>>,
    pub fd: Option<Interval>,
    /// FD under the setting over FD unedited: the geometric mean ratio, paired by run.
    pub fd_ratio: Option<Interval>,
}

/// Every setting of every group with `skip_eval.jsonl` lines, in the order the runs list them.
fn edit_rows(groups: &[RunGroup]) -> Vec<EditRow> {
    let mut rows = Vec::new();
    for group in groups {
        let lines: Vec<(&[SkipEvalLine], &SkipEvalLine)> = group
            .trained()
            .filter_map(|run| {
                Some((run.skip_evals.as_slice(), run.skip_evals.iter().find(|l| l.kind == EditKind::Unedited)?))
            })
            .collect();
        let Some((first, _)) = lines.first() else { continue };
        for template in first.iter() {
            let pairs: Vec<(&SkipEvalLine, &SkipEvalLine)> = lines
                .iter()
                .filter_map(|(all, unedited)| {
                    Some((all.iter().find(|l| l.kind == template.kind && l.setting == template.setting)?, *unedited))
                })
                .collect();
            let column = |f: &dyn Fn(&SkipEvalLine) -> f64| -> (Vec<f64>, Vec<f64>) {
                pairs.iter().map(|(edited, unedited)| (f(edited), f(unedited))).unzip()
            };
            let (edited, unedited) = column(&|l| l.heldout_loss);
            let (edited_fd, unedited_fd) = column(&|l| l.fd.unwrap_or(f64::NAN));
            let fds: Vec<f64> = edited_fd.iter().copied().filter(|fd| fd.is_finite()).collect();
            let is_reference = template.kind == EditKind::Unedited;
            let bins = template.heldout_loss_bins.len();
            rows.push(EditRow {
                model: group.model.to_string(),
                strategy: group.strategy,
                strategy_label: group.strategy_label.to_string(),
                kind: template.kind,
                setting: template.setting.clone(),
                lsc: template.lsc,
                factor: template.factor,
                runs: pairs.len(),
                heldout: mean_interval(&edited, LEVEL),
                heldout_change: (!is_reference)
                    .then(|| paired_difference_interval(&edited, &unedited, LEVEL))
                    .flatten(),
                bin_changes: (0..bins)
                    .map(|bin| {
                        let at = |l: &SkipEvalLine| l.heldout_loss_bins.get(bin).copied().unwrap_or(f64::NAN);
                        let (e, u) = column(&at);
                        (!is_reference).then(|| paired_difference_interval(&e, &u, LEVEL)).flatten()
                    })
                    .collect(),
                fd: mean_interval(&fds, LEVEL),
                fd_ratio: (!is_reference).then(|| paired_ratio_interval(&edited_fd, &unedited_fd, LEVEL)).flatten(),
            });
        }
    }
    rows
}

/// The importance of each LSC of one model and strategy under one factor, against its coefficients.
pub struct ImportanceProfile {
    pub model: String,
    pub strategy_label: String,
    pub factor: f64,
    /// Per LSC: the held-out loss increase when it alone is scaled by `factor`, over runs.
    pub increase: Vec<(u32, Option<Interval>)>,
    /// Per run: Spearman's correlation of the increase with the LSC index (negative: importance
    /// falls from the outermost LSC to the innermost).
    pub spearman_per_run: Vec<f64>,
    pub spearman: Option<Interval>,
    /// Per LSC: the coefficient the skip carried at the last diagnostics record (a fixed strategy's
    /// value, a learned scalar, the LS gates' mean, mp-cat's skip weight over its main-path weight),
    /// mean over runs; empty without diagnostics.
    pub coefficients: Vec<(u32, f64)>,
}

fn importance_profiles(groups: &[RunGroup]) -> Vec<ImportanceProfile> {
    let mut profiles = Vec::new();
    for group in groups {
        let runs: Vec<&RunData> = group.trained().collect();
        let mut factors: Vec<f64> = runs
            .iter()
            .flat_map(|run| &run.skip_evals)
            .filter(|l| l.kind == EditKind::Importance)
            .filter_map(|l| l.factor)
            .collect();
        factors.sort_by(f64::total_cmp);
        factors.dedup();
        for factor in factors {
            // Per run: LSC -> increase over the run's unedited loss.
            let per_run: Vec<BTreeMap<u32, f64>> = runs
                .iter()
                .filter_map(|run| {
                    let unedited = run.skip_evals.iter().find(|l| l.kind == EditKind::Unedited)?.heldout_loss;
                    Some(
                        run.skip_evals
                            .iter()
                            .filter(|l| l.kind == EditKind::Importance && l.factor == Some(factor))
                            .filter_map(|l| Some((l.lsc?, l.heldout_loss - unedited)))
                            .collect(),
                    )
                })
                .collect();
            let lscs: Vec<u32> = per_run.first().map(|m| m.keys().copied().collect()).unwrap_or_default();
            let increase = lscs
                .iter()
                .map(|lsc| {
                    let values: Vec<f64> = per_run.iter().filter_map(|m| m.get(lsc).copied()).collect();
                    (*lsc, mean_interval(&values, LEVEL))
                })
                .collect();
            let spearman_per_run: Vec<f64> = per_run
                .iter()
                .filter_map(|m| {
                    let (index, value): (Vec<f64>, Vec<f64>) = m.iter().map(|(lsc, v)| (f64::from(*lsc), *v)).unzip();
                    spearman(&index, &value)
                })
                .collect();
            profiles.push(ImportanceProfile {
                model: group.model.to_string(),
                strategy_label: group.strategy_label.to_string(),
                factor,
                increase,
                spearman: mean_correlation_interval(&spearman_per_run, LEVEL),
                spearman_per_run,
                coefficients: final_coefficients(&runs),
            });
        }
    }
    profiles
}

/// Per LSC, the last recorded coefficient, mean over runs.
fn final_coefficients(runs: &[&RunData]) -> Vec<(u32, f64)> {
    let mut per_lsc: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for run in runs {
        let quantity = run.strategy.learned_quantity().filter(|q| *q == Quantity::GateMean).unwrap_or(Quantity::Coef);
        for (lsc, points) in last_per_lsc(run, quantity) {
            per_lsc.entry(lsc).or_default().push(points);
        }
    }
    per_lsc.into_iter().filter_map(|(lsc, values)| Some((lsc, mean(&values)?))).collect()
}

/// Per LSC, the last value of `quantity` over the whole probe batch.
fn last_per_lsc(run: &RunData, quantity: Quantity) -> BTreeMap<u32, f64> {
    let mut lscs: Vec<(u32, String)> = run
        .diagnostics
        .iter()
        .filter(|r| r.quantity == quantity && r.t_bin.is_none())
        .filter_map(|r| Some((r.lsc?, r.layer.clone()?)))
        .collect();
    lscs.sort();
    lscs.dedup();
    lscs.into_iter()
        .filter_map(|(lsc, layer)| {
            let points = series(&run.diagnostics, quantity, Some(&layer), Some(lsc), None);
            Some((lsc, points.last()?.1))
        })
        .collect()
}

/// The low-frequency share of the skips against the main path's, for one model and strategy.
pub struct SpectralRow {
    pub model: String,
    pub strategy_label: String,
    /// Per LSC at the last record, mean over runs: (LSC, skip share, main-path share).
    pub per_lsc: Vec<(u32, f64, f64)>,
    /// Per run: the skip's share minus the main path's, averaged over LSCs, at the last record.
    pub difference_per_run: Vec<f64>,
    pub difference: Option<Interval>,
}

fn spectral_rows(groups: &[RunGroup]) -> Vec<SpectralRow> {
    groups
        .iter()
        .filter_map(|group| {
            let per_run: Vec<(BTreeMap<u32, f64>, BTreeMap<u32, f64>)> = group
                .trained()
                .map(|run| {
                    (last_per_lsc(run, Quantity::SkipLowFreqShare), last_per_lsc(run, Quantity::MainLowFreqShare))
                })
                .filter(|(skip, main)| !skip.is_empty() && !main.is_empty())
                .collect();
            if per_run.is_empty() {
                return None;
            }
            let difference_per_run: Vec<f64> = per_run
                .iter()
                .filter_map(|(skip, main)| {
                    mean(&skip.iter().filter_map(|(lsc, s)| Some(s - main.get(lsc)?)).collect::<Vec<_>>())
                })
                .collect();
            let per_lsc = per_run[0]
                .0
                .keys()
                .filter_map(|lsc| {
                    let skip: Vec<f64> = per_run.iter().filter_map(|(s, _)| s.get(lsc).copied()).collect();
                    let main: Vec<f64> = per_run.iter().filter_map(|(_, m)| m.get(lsc).copied()).collect();
                    Some((*lsc, mean(&skip)?, mean(&main)?))
                })
                .collect();
            Some(SpectralRow {
                model: group.model.to_string(),
                strategy_label: group.strategy_label.to_string(),
                per_lsc,
                difference: mean_interval(&difference_per_run, LEVEL),
                difference_per_run,
            })
        })
        .collect()
}
