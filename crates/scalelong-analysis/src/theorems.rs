//! ScaleLong's bounds (docs/method.md §4) checked as dose-responses: each quantity a bound speaks of
//! against the bound's kappa-dependent factor, across networks that differ only in their skip
//! coefficients, compared inside seeds ([`crate::dose_response`]).
//!
//! Two sources, each giving the three checks (Thm 3.1 feature norms, Thm 3.3 gradient norms, Thm
//! 3.4 sensitivity):
//!
//! - **At initialisation** ([`initialisation_checks`]): `dose_response.jsonl` of `scalelong
//!   dose-response`, CS networks over a kappa grid (kappa 1 is strategy 1), many seeds, no training.
//! - **During training** ([`training_checks`]): a sweep's runs whose coefficients are fixed (1,
//!   1/sqrt2, CS), each placed at its own factor, computed from its coefficient vector (so 1/sqrt2,
//!   uniform and not CS-shaped, is one more dose: its factors lie between 1's and CS(0.5)'s for every
//!   bound). Learned coefficients (LS, learned scalars) are left out: a gate is an outcome of the
//!   training whose stability the bound is about, not a setting, and the factor of a mean gate is not
//!   the factor of per-token gates.
//!
//! Earlier versions also read each bound "within runs" (over the LSCs of one network, or over its
//! timestep bins). Those readings are gone: inside one network the coefficients are fixed, so they
//! test the rest of the bound, not the coefficients, and the timestep-bin one holds for any network
//! (docs/method.md §4.1).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::dose_response::{
    DoseResponse, DoseRow, dose_response, feature_norm_factor, fixed_coefficients, gradient_norm_factor,
    sensitivity_factor,
};
use crate::run_rules::{Trend, detrended_range};
use crate::stats::mean;
use scalelong_schema::{DoseQuantity, DoseResponseLine, Quantity, Record, SkipScaling, series};

/// Which bound a check tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Theorem {
    /// Thm 3.1: feature norms at each LSC, factor `S_i = sum_{j >= i} c_j^2`.
    FeatureNorms,
    /// Thm 3.3: gradient norms of the encoder and decoder blocks, factor `sum_j c_j^2`.
    GradientNorms,
    /// Thm 3.4: the output's sensitivity to an input perturbation, factor `sum_i c_i` (M0 = 1).
    Sensitivity,
}

impl Theorem {
    pub const ALL: [Theorem; 3] = [Theorem::FeatureNorms, Theorem::GradientNorms, Theorem::Sensitivity];

    /// `Thm 3.1`, `Thm 3.3`, `Thm 3.4`.
    pub fn name(self) -> &'static str {
        match self {
            Theorem::FeatureNorms => "Thm 3.1",
            Theorem::GradientNorms => "Thm 3.3",
            Theorem::Sensitivity => "Thm 3.4",
        }
    }

    /// The factor's formula.
    pub fn factor(self) -> &'static str {
        match self {
            Theorem::FeatureNorms => "S_i = sum_{j>=i} c_j^2",
            Theorem::GradientNorms => "sum_j c_j^2",
            Theorem::Sensitivity => "sum_i c_i (M0 = 1)",
        }
    }
}

/// Where a check's networks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Source {
    /// `dose_response.jsonl`: CS over a kappa grid, before any training.
    Initialisation,
    /// A sweep's trained runs with fixed coefficients.
    Training,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Initialisation => "at initialisation",
            Source::Training => "during training",
        })
    }
}

/// One network's value of the checked quantity, with the bound's factor for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckRow {
    pub seed: u64,
    /// The network: `CS(0.7)` at initialisation, the run folder during training.
    pub network: String,
    /// Its strategy's label (`1`, `1/sqrt2`, `CS(0.5)`).
    pub strategy: String,
    /// CS's kappa (1 for strategy 1); `None` for a strategy that is not CS-shaped (1/sqrt2).
    pub kappa: Option<f64>,
    /// The LSC of a per-LSC quantity.
    pub lsc: Option<u32>,
    pub factor: f64,
    pub value: f64,
}

/// One bound checked on one source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TheoremCheck {
    pub theorem: Theorem,
    pub source: Source,
    /// What is measured, per network.
    pub quantity: String,
    pub rows: Vec<CheckRow>,
    pub response: DoseResponse,
    /// Runs left out, each with the reason.
    pub excluded: Vec<String>,
}

/// The three checks on `dose_response.jsonl`'s lines: Thm 3.1 on `feature_sq_norm` (one unit per
/// LSC), Thm 3.3 on `grad_sq_norm_per_loss` (the gradient without the residual's scale, which any
/// network's MSE gradient carries), Thm 3.4 on `sensitivity`.
pub fn initialisation_checks(lines: &[DoseResponseLine]) -> [TheoremCheck; 3] {
    let check = |theorem: Theorem, quantity: DoseQuantity, description: &str| {
        // Networks of a seed are indexed by their kappa's rank in the grid.
        let mut kappas: Vec<f64> = lines.iter().map(|line| line.kappa).collect();
        kappas.sort_by(f64::total_cmp);
        kappas.dedup();
        let rows: Vec<CheckRow> = lines
            .iter()
            .filter(|line| line.quantity == quantity)
            .filter_map(|line| {
                Some(CheckRow {
                    seed: line.seed,
                    network: SkipScaling::Constant { kappa: line.kappa }.label(),
                    strategy: if line.kappa == 1.0 {
                        "1".into()
                    } else {
                        SkipScaling::Constant { kappa: line.kappa }.label()
                    },
                    kappa: Some(line.kappa),
                    lsc: line.lsc,
                    factor: line.factor?,
                    value: line.value?,
                })
            })
            .collect();
        let network = |row: &CheckRow| kappas.iter().position(|k| Some(*k) == row.kappa).unwrap_or(0) as u32;
        let dose: Vec<DoseRow> = rows
            .iter()
            .map(|row| DoseRow {
                seed: row.seed,
                network: network(row),
                unit: row.lsc.unwrap_or(0),
                factor: row.factor,
                value: row.value,
            })
            .collect();
        TheoremCheck {
            theorem,
            source: Source::Initialisation,
            quantity: description.to_string(),
            response: dose_response(&dose),
            rows,
            excluded: Vec::new(),
        }
    };
    [
        check(Theorem::FeatureNorms, DoseQuantity::FeatureSqNorm, FEATURE_AT_INIT),
        check(Theorem::GradientNorms, DoseQuantity::GradSqNormPerLoss, GRADIENT_AT_INIT),
        check(Theorem::Sensitivity, DoseQuantity::Sensitivity, SENSITIVITY),
    ]
}

const FEATURE_AT_INIT: &str = "the mean over the probe of ||h_i||^2 at the decoder block consuming LSC i";
const GRADIENT_AT_INIT: &str = "the squared gradient norm of the encoder and decoder blocks on the probe, over the \
                                probe loss";
const SENSITIVITY: &str = "||eps(x_t + delta) - eps(x_t)|| / ||delta|| on the probe";
const FEATURE_IN_TRAINING: &str = "the oscillation of ||h_i||^2 at the decoder block consuming LSC i after the \
                                   descent: max - min of its residuals from a least-squares line";
const GRADIENT_IN_TRAINING: &str = "the squared gradient norm of the encoder and decoder blocks on the training \
                                    batch over that batch's loss, mean over the records after the descent";
const SENSITIVITY_IN_TRAINING: &str = "||eps(x_t + delta) - eps(x_t)|| / ||delta|| on the probe, mean over the \
                                       records after the descent";

/// All diagnostics of one training run, labelled for the checks.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecords {
    /// Run folder name, unique within a sweep.
    pub run_id: String,
    pub seed: u64,
    pub strategy: SkipScaling,
    /// `(step, loss)` of `metrics.jsonl`: the loss of the batch each training-batch gradient norm
    /// was measured on.
    pub losses: Vec<(u64, f64)>,
    pub records: Vec<Record>,
}

/// The descent ends where the probe loss has covered all but this share of its fall from its first
/// record to its final level (docs/method.md §4.1).
pub const DESCENT_REMAINING: f64 = 0.1;
/// The final level is the median probe loss over this last share of the records.
const FINAL_SHARE: f64 = 0.25;
/// Records in the centred moving average the descent is located on (a single noisy record does not
/// end it).
const DESCENT_SMOOTHING: usize = 3;
/// Records after the descent an oscillation needs: a line through fewer leaves too few residuals.
pub const MIN_SETTLED_RECORDS: usize = 5;

/// The first recorded step at which the probe loss (`probe_loss`, whole probe), smoothed over
/// [`DESCENT_SMOOTHING`] records, lies within [`DESCENT_REMAINING`] of its fall from the first
/// record's level to the final level (the median of the last [`FINAL_SHARE`] of the records). A
/// series that never falls has no descent: its first step. `None` for an empty series.
pub fn descent_end(probe_loss: &[(u64, f64)]) -> Option<u64> {
    let &(first_step, _) = probe_loss.first()?;
    let values: Vec<f64> = probe_loss.iter().map(|&(_, v)| v).collect();
    let half = DESCENT_SMOOTHING / 2;
    let smoothed: Vec<f64> = (0..values.len())
        .map(|i| {
            let window = &values[i.saturating_sub(half)..(i + half + 1).min(values.len())];
            window.iter().sum::<f64>() / window.len() as f64
        })
        .collect();
    let tail_start = values.len() - ((values.len() as f64 * FINAL_SHARE).ceil() as usize).clamp(1, values.len());
    let mut tail = values[tail_start..].to_vec();
    tail.sort_by(f64::total_cmp);
    let final_level = *tail.get(tail.len() / 2)?;
    let fall = smoothed[0] - final_level;
    if fall <= 0.0 {
        return Some(first_step);
    }
    let threshold = final_level + DESCENT_REMAINING * fall;
    smoothed.iter().position(|&v| v <= threshold).map(|i| probe_loss[i].0)
}

/// What one run contributes to the training checks.
struct RunQuantities {
    /// Per LSC, the oscillation of `||h_i||^2` after the descent.
    oscillations: BTreeMap<u32, f64>,
    gradient_per_loss: Option<f64>,
    sensitivity: Option<f64>,
}

fn run_quantities(run: &RunRecords) -> Result<RunQuantities, String> {
    let records = &run.records;
    let probe_loss = series(records, Quantity::ProbeLoss, None, None, None);
    let end = descent_end(&probe_loss).ok_or("no probe_loss recorded")?;
    let settled =
        |points: Vec<(u64, f64)>| -> Vec<(u64, f64)> { points.into_iter().filter(|&(s, _)| s >= end).collect() };
    let settled_steps = probe_loss.iter().filter(|&&(s, _)| s >= end).count();
    if settled_steps < MIN_SETTLED_RECORDS {
        return Err(format!(
            "{settled_steps} records after its descent (which ended at step {end}); an oscillation needs \
             {MIN_SETTLED_RECORDS}"
        ));
    }
    let mut oscillations = BTreeMap::new();
    for (lsc, layer) in decoder_layers(records, Quantity::FeatureL2) {
        let squared: Vec<(u64, f64)> = settled(series(records, Quantity::FeatureL2, Some(&layer), Some(lsc), None))
            .into_iter()
            .map(|(step, norm)| (step, norm * norm))
            .collect();
        if let Some(range) = detrended_range(&squared, Trend::Linear) {
            oscillations.insert(lsc, range);
        }
    }
    // The training batch's gradient of the encoder and decoder blocks (fusions included), over the
    // batch's own loss: an MSE gradient scales with its residual in any network.
    let losses: BTreeMap<u64, f64> = run.losses.iter().copied().collect();
    let mut squares: BTreeMap<u64, f64> = BTreeMap::new();
    for record in records.iter().filter(|r| r.quantity == Quantity::GradNorm && r.t_bin.is_none() && r.step >= end) {
        let block =
            record.layer.as_deref().is_some_and(|l| ["enc.", "dec.", "fusion."].iter().any(|p| l.starts_with(p)));
        if let (true, Some(norm)) = (block, record.value) {
            *squares.entry(record.step).or_default() += norm * norm;
        }
    }
    let per_loss: Vec<f64> = squares
        .iter()
        .filter_map(|(step, square)| Some(square / losses.get(step).filter(|l| **l > 0.0)?))
        .filter(|v| v.is_finite())
        .collect();
    let sensitivity: Vec<f64> =
        settled(series(records, Quantity::Robustness, None, None, None)).into_iter().map(|(_, v)| v).collect();
    Ok(RunQuantities { oscillations, gradient_per_loss: mean(&per_loss), sensitivity: mean(&sensitivity) })
}

/// The decoder layer (`dec.K`) that carries `quantity` for each LSC index found in the records.
fn decoder_layers(records: &[Record], quantity: Quantity) -> BTreeMap<u32, String> {
    records
        .iter()
        .filter(|r| r.quantity == quantity)
        .filter_map(|r| {
            let layer = r.layer.as_deref().filter(|layer| layer.starts_with("dec."))?;
            Some((r.lsc?, layer.to_string()))
        })
        .collect()
}

/// The three checks on a sweep's runs (module documentation): per run, its quantities after the
/// descent ([`descent_end`]) against its factors; runs with learned coefficients and runs without
/// enough records after their descent are listed in `excluded`.
pub fn training_checks(runs: &[RunRecords]) -> [TheoremCheck; 3] {
    let mut rows: BTreeMap<Theorem, Vec<CheckRow>> = BTreeMap::new();
    let mut excluded = Vec::new();
    for run in runs {
        let lsc_count =
            run.records.iter().filter(|r| r.quantity == Quantity::Coef).filter_map(|r| r.lsc).max().unwrap_or(0);
        let Some(coefficients) = fixed_coefficients(run.strategy, lsc_count as usize).filter(|c| !c.is_empty()) else {
            excluded.push(format!(
                "{} ({}): its coefficients are learned, an outcome of the training, not a setting",
                run.run_id,
                run.strategy.label()
            ));
            continue;
        };
        let quantities = match run_quantities(run) {
            Ok(quantities) => quantities,
            Err(reason) => {
                excluded.push(format!("{}: {reason}", run.run_id));
                continue;
            }
        };
        let row = |lsc: Option<u32>, factor: f64, value: f64| CheckRow {
            seed: run.seed,
            network: run.run_id.clone(),
            strategy: run.strategy.label(),
            kappa: run.strategy.cs_kappa(),
            lsc,
            factor,
            value,
        };
        for (&lsc, &oscillation) in &quantities.oscillations {
            let factor = feature_norm_factor(&coefficients, lsc as usize);
            rows.entry(Theorem::FeatureNorms).or_default().push(row(Some(lsc), factor, oscillation));
        }
        if let Some(value) = quantities.gradient_per_loss {
            rows.entry(Theorem::GradientNorms).or_default().push(row(None, gradient_norm_factor(&coefficients), value));
        }
        if let Some(value) = quantities.sensitivity {
            rows.entry(Theorem::Sensitivity).or_default().push(row(None, sensitivity_factor(&coefficients), value));
        }
    }
    Theorem::ALL.map(|theorem| {
        let rows = rows.remove(&theorem).unwrap_or_default();
        // Networks of a seed are indexed by run, in the order the runs come.
        let mut networks: BTreeMap<&str, u32> = BTreeMap::new();
        for row in &rows {
            let next = networks.len() as u32;
            networks.entry(&row.network).or_insert(next);
        }
        let dose: Vec<DoseRow> = rows
            .iter()
            .map(|row| DoseRow {
                seed: row.seed,
                network: networks[row.network.as_str()],
                unit: row.lsc.unwrap_or(0),
                factor: row.factor,
                value: row.value,
            })
            .collect();
        let quantity = match theorem {
            Theorem::FeatureNorms => FEATURE_IN_TRAINING,
            Theorem::GradientNorms => GRADIENT_IN_TRAINING,
            Theorem::Sensitivity => SENSITIVITY_IN_TRAINING,
        };
        TheoremCheck {
            theorem,
            source: Source::Training,
            quantity: quantity.to_string(),
            response: dose_response(&dose),
            rows,
            excluded: excluded.clone(),
        }
    })
}
