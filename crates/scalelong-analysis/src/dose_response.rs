//! Dose-response checks of ScaleLong's bounds (docs/method.md §4): does a quantity a bound speaks of
//! (a feature norm, a gradient norm, the output's sensitivity to its input) rise with the bound's
//! kappa-dependent factor, between networks that differ only in their skip coefficients?
//!
//! Rows are `(seed, network, unit, factor, value)`. Networks of one seed share everything but the
//! coefficients (initialisation of the shared parts, data order, noise), so a seed is a block and
//! every comparison is made inside blocks. A unit is what a row measures inside its network (the LSC
//! of a per-LSC quantity; one unit otherwise):
//!
//! - **Ordering**: the Spearman of value against factor over the networks of each (seed, unit)
//!   (with two networks, the sign of their concordance, +1 or -1, which is what a Spearman of two
//!   points is: a sweep with strategies 1 and CS gives two fixed-coefficient runs a seed, and the
//!   test below then is an exact sign test over seeds), averaged over units and then over seeds, with a Student t interval over seeds (the independent
//!   blocks); its p-value permutes the networks of each seed, never across seeds (seed-to-seed spread
//!   is no evidence about the factor), with one permutation for all units of a seed (a network's
//!   units move together). One-sided: the bound predicts a rise; the opposite tail is reported too.
//! - **Size**: the least-squares slope of ln value on ln factor per (seed, unit) (an elasticity: 1
//!   means the quantity is proportional to the factor), averaged the same way, with a t interval.
//!
//! The label is "the predicted ordering was observed" when the mean within-seed Spearman is positive
//! and its one-sided permutation p-value is at most [`ALPHA`]; "not observed" otherwise. A bound is
//! an upper bound: a quantity far below it may move with the factor weakly or not at all, so "not
//! observed" does not refute a bound, and "observed" shows the ordering, not the bound's constants.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::inference::{Interval, LEVEL, mean_correlation_interval, mean_interval};
use crate::resampling::spearman;
use crate::stats::{least_squares, mean};
use scalelong_schema::SkipScaling;

/// Permutations of the within-seed permutation test (p-values resolve to 1 / 5000).
pub const PERMUTATIONS: usize = 4999;
/// The one-sided permutation p-value at or below which the predicted ordering counts as observed.
pub const ALPHA: f64 = 0.05;
/// The permutation test's generator seed: a report reads the same every time.
const PERMUTATION_SEED: u64 = 0xd05e;
/// Relative slack when a permuted statistic reproduces the observed one up to summation order.
const TIE_TOLERANCE: f64 = 1e-12;

/// One value of one network, with the bound's factor for it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DoseRow {
    /// The block: networks of one seed differ only in their skip coefficients.
    pub seed: u64,
    /// The network within its seed (e.g. the index of its kappa).
    pub network: u32,
    /// What the row measures inside its network (the LSC of a per-LSC quantity, else 0).
    pub unit: u32,
    /// The bound's kappa-dependent factor (see [`feature_norm_factor`] and its siblings).
    pub factor: f64,
    pub value: f64,
}

/// Whether the ordering a bound predicts was seen (module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PredictedOrdering {
    Observed,
    NotObserved,
}

impl std::fmt::Display for PredictedOrdering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PredictedOrdering::Observed => "the predicted ordering was observed",
            PredictedOrdering::NotObserved => "the predicted ordering was not observed",
        })
    }
}

/// The dose-response of one quantity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DoseResponse {
    /// Rows used (finite value and factor).
    pub rows: usize,
    /// Seeds with a defined Spearman in at least one unit (2 networks or more whose factor and value
    /// both vary).
    pub seeds: usize,
    /// Mean within-seed Spearman of value against factor, Student t interval over seeds.
    pub spearman: Option<Interval>,
    /// Mean within-seed slope of ln value on ln factor, Student t interval over seeds.
    pub slope: Option<Interval>,
    /// One-sided p-value of the mean within-seed Spearman, networks permuted within each seed.
    pub p_value: Option<f64>,
    /// The same in the opposite direction (the quantity falling as the factor rises).
    pub reverse_p_value: Option<f64>,
    pub ordering: PredictedOrdering,
    /// One sentence with the numbers behind the label.
    pub explanation: String,
}

/// One seed's rows: per unit, `(network, factor, value)`.
type Block = BTreeMap<u32, Vec<(u32, f64, f64)>>;
/// One seed's networks, and the factor of each `(network, unit)`.
type Layout = (Vec<u32>, BTreeMap<(u32, u32), f64>);

/// The dose-response of `rows` (module documentation). Rows with a non-finite value or factor are
/// left out; the slope uses the rows whose value and factor are both positive.
pub fn dose_response(rows: &[DoseRow]) -> DoseResponse {
    let mut blocks: BTreeMap<u64, Block> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.factor.is_finite() && r.value.is_finite()) {
        blocks.entry(row.seed).or_default().entry(row.unit).or_default().push((row.network, row.factor, row.value));
    }
    let blocks: Vec<Block> = blocks.into_values().collect();
    let used = blocks.iter().flat_map(|block| block.values()).map(Vec::len).sum();
    let correlations: Vec<f64> = blocks.iter().filter_map(seed_spearman).collect();
    let spearman_interval = mean_correlation_interval(&correlations, LEVEL);
    let slopes: Vec<f64> = blocks.iter().filter_map(seed_slope).collect();
    let slope = mean_interval(&slopes, LEVEL);
    let (p_value, reverse_p_value) = match permutation_p_values(&blocks) {
        Some((p, reverse)) => (Some(p), Some(reverse)),
        None => (None, None),
    };
    let observed = matches!((mean(&correlations), p_value), (Some(rho), Some(p)) if rho > 0.0 && p <= ALPHA);
    let ordering = if observed { PredictedOrdering::Observed } else { PredictedOrdering::NotObserved };
    let explanation =
        explain(&correlations, spearman_interval.as_ref(), slope.as_ref(), p_value, reverse_p_value, ordering);
    DoseResponse {
        rows: used,
        seeds: correlations.len(),
        spearman: spearman_interval,
        slope,
        p_value,
        reverse_p_value,
        ordering,
        explanation,
    }
}

/// The mean over a seed's units of their Spearman of value against factor; `None` when no unit has
/// one.
fn seed_spearman(block: &Block) -> Option<f64> {
    let correlations: Vec<f64> = block
        .values()
        .filter_map(|rows| {
            let (factors, values): (Vec<f64>, Vec<f64>) = rows.iter().map(|&(_, f, v)| (f, v)).unzip();
            rank_correlation(&factors, &values)
        })
        .collect();
    mean(&correlations)
}

/// Spearman's rho of `values` against `factors`; for two points, the sign of their concordance (the
/// Spearman of two distinct points), `None` when either pair ties.
fn rank_correlation(factors: &[f64], values: &[f64]) -> Option<f64> {
    match (factors, values) {
        ([f0, f1], [v0, v1]) => {
            let concordance = (f1 - f0) * (v1 - v0);
            (concordance != 0.0 && concordance.is_finite()).then(|| concordance.signum())
        }
        _ => spearman(factors, values),
    }
}

/// The mean over a seed's units of the least-squares slope of ln value on ln factor (rows with both
/// positive); `None` when no unit has 2 such rows with differing factors.
fn seed_slope(block: &Block) -> Option<f64> {
    let slopes: Vec<f64> = block
        .values()
        .filter_map(|rows| {
            let (x, y): (Vec<f64>, Vec<f64>) =
                rows.iter().filter(|(_, f, v)| *f > 0.0 && *v > 0.0).map(|(_, f, v)| (f.ln(), v.ln())).unzip();
            least_squares(&x, &y).map(|fit| fit.slope).filter(|s| s.is_finite())
        })
        .collect();
    mean(&slopes)
}

/// One-sided p-values (rise, fall) of the mean within-seed Spearman: the networks of each seed
/// shuffled, one shuffle for all its units, [`PERMUTATIONS`] times; the observed arrangement counts
/// once in each.
fn permutation_p_values(blocks: &[Block]) -> Option<(f64, f64)> {
    let statistic = |blocks: &[Block]| mean(&blocks.iter().filter_map(seed_spearman).collect::<Vec<_>>());
    let observed = statistic(blocks)?;
    let slack = TIE_TOLERANCE * observed.abs().max(1.0);
    let layouts: Vec<Layout> = blocks
        .iter()
        .map(|block| {
            let factors: BTreeMap<(u32, u32), f64> = block
                .iter()
                .flat_map(|(&unit, rows)| rows.iter().map(move |&(network, factor, _)| ((network, unit), factor)))
                .collect();
            let mut networks: Vec<u32> = factors.keys().map(|&(network, _)| network).collect();
            networks.dedup(); // sorted by network: the keys are (network, unit)
            (networks, factors)
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(PERMUTATION_SEED);
    let (mut above, mut below) = (1usize, 1usize);
    for _ in 0..PERMUTATIONS {
        let permuted: Vec<Block> = blocks
            .iter()
            .zip(&layouts)
            .map(|(block, (networks, factors))| {
                let mut shuffled = networks.clone();
                shuffled.shuffle(&mut rng);
                let partner: BTreeMap<u32, u32> = networks.iter().copied().zip(shuffled).collect();
                block
                    .iter()
                    .map(|(&unit, rows)| {
                        let rows = rows
                            .iter()
                            .filter_map(|&(network, _, value)| {
                                let factor = factors.get(&(partner[&network], unit))?;
                                Some((network, *factor, value))
                            })
                            .collect();
                        (unit, rows)
                    })
                    .collect()
            })
            .collect();
        let value = statistic(&permuted)?;
        above += usize::from(value >= observed - slack);
        below += usize::from(value <= observed + slack);
    }
    let total = (PERMUTATIONS + 1) as f64;
    Some((above as f64 / total, below as f64 / total))
}

fn explain(
    correlations: &[f64],
    spearman: Option<&Interval>,
    slope: Option<&Interval>,
    p_value: Option<f64>,
    reverse_p_value: Option<f64>,
    ordering: PredictedOrdering,
) -> String {
    let Some(rho) = mean(correlations) else {
        return format!(
            "{ordering}: no seed has at least 2 networks whose factor and value both vary, so there is no \
             ordering to read."
        );
    };
    let interval = spearman.map_or(String::new(), |i| format!(" [{:.2}, {:.2}]", i.low, i.high));
    let p = p_value.map_or(String::new(), |p| format!(", permutation p = {p:.4} (networks permuted within seeds)"));
    let slope = slope.map_or(String::new(), |s| {
        let digits = decimals(s.estimate.abs().max(s.low.abs()).max(s.high.abs()));
        format!(
            "; log-log slope {:.*} [{:.*}, {:.*}] ({})",
            digits,
            s.estimate,
            digits,
            s.low,
            digits,
            s.high,
            s.describe()
        )
    });
    let caveat = match ordering {
        PredictedOrdering::Observed => String::new(),
        PredictedOrdering::NotObserved => match reverse_p_value {
            Some(reverse) if reverse <= ALPHA => format!(
                " The opposite ordering was (p = {reverse:.4}); the bound is an upper bound, which a quantity \
                 falling with the factor does not violate."
            ),
            _ => " A bound is an upper bound: a weak or absent ordering does not refute it.".to_string(),
        },
    };
    format!(
        "{ordering}: mean within-seed Spearman {rho:.2}{interval} over {} seeds{p}{slope}.{caveat}",
        correlations.len()
    )
}

/// Decimals that give a number of magnitude `largest` two significant digits (at least two): a slope
/// of 0.0047 must not print as 0.00.
fn decimals(largest: f64) -> usize {
    if !(largest.is_finite() && largest > 0.0) {
        return 2;
    }
    (1 - largest.log10().floor() as i64).max(2) as usize
}

/// `c_1..c_n` of a strategy with fixed coefficients (`[i - 1]` on LSC i); `None` for a learned or
/// input-dependent one (LS, learned scalars, mp-cat), whose coefficients are outcomes of training.
pub fn fixed_coefficients(strategy: SkipScaling, n: usize) -> Option<Vec<f64>> {
    (1..=n).map(|lsc| strategy.coefficient(lsc)).collect()
}

/// Thm 3.1's factor for LSC `lsc` (1 = outermost): `S_i = sum_{j >= i} c_j^2`, with `coefficients[j - 1]`
/// the coefficient on LSC j.
pub fn feature_norm_factor(coefficients: &[f64], lsc: usize) -> f64 {
    coefficients.iter().skip(lsc.saturating_sub(1)).map(|c| c * c).sum()
}

/// Thm 3.3's factor: `sum_j c_j^2` (`S_1`).
pub fn gradient_norm_factor(coefficients: &[f64]) -> f64 {
    feature_norm_factor(coefficients, 1)
}

/// Thm 3.4's factor `sum_i c_i M0^i` at `M0 = 1`: `sum_i c_i`. M0 is unknown and a measured M0 already
/// carries the coefficients; for the ordering it does not matter, since for every `M0 > 0` the sum
/// rises with kappa for CS and orders `1 > 1/sqrt2` alike, so only the slope's scale depends on it.
pub fn sensitivity_factor(coefficients: &[f64]) -> f64 {
    coefficients.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    const KAPPAS: [f64; 4] = [0.5, 0.7, 0.85, 1.0];

    /// Standard normal draw by Box-Muller.
    fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// 16 seeds x the kappa grid on CS with 8 LSCs; value = seed level * factor^slope * lognormal
    /// noise of `noise` (sd of its log). Seed levels span a factor of 20, far more than the factor.
    fn rows(slope: f64, noise: f64) -> Vec<DoseRow> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        (0..16)
            .flat_map(|seed| KAPPAS.map(|kappa| (seed, kappa)))
            .enumerate()
            .map(|(index, (seed, kappa))| {
                let coefficients: Vec<f64> = (0..8).map(|i| f64::powi(kappa, i)).collect();
                let factor = gradient_norm_factor(&coefficients);
                let level = 1.0 + 19.0 * (seed as f64 / 15.0);
                let value = level * factor.powf(slope) * (noise * standard_normal(&mut rng)).exp();
                DoseRow { seed, network: (index % KAPPAS.len()) as u32, unit: 0, factor, value }
            })
            .collect()
    }

    #[test]
    fn a_planted_slope_is_recovered_and_its_ordering_observed() {
        let result = dose_response(&rows(1.5, 0.2));
        assert_eq!(result.ordering, PredictedOrdering::Observed, "{}", result.explanation);
        assert!(result.p_value.unwrap() < 0.001, "{}", result.explanation);
        let slope = result.slope.unwrap();
        assert!(slope.contains(1.5) && slope.low > 1.0, "{slope:?}");
        assert!(result.spearman.unwrap().low > 0.5, "{}", result.explanation);
        assert_eq!((result.rows, result.seeds), (64, 16));
        assert!(result.explanation.starts_with("the predicted ordering was observed"), "{}", result.explanation);
    }

    #[test]
    fn a_flat_response_reads_nothing() {
        let result = dose_response(&rows(0.0, 0.2));
        assert_eq!(result.ordering, PredictedOrdering::NotObserved, "{}", result.explanation);
        assert!(result.slope.unwrap().contains(0.0), "{}", result.explanation);
        assert!(result.p_value.unwrap() > ALPHA && result.reverse_p_value.unwrap() > ALPHA, "{}", result.explanation);
        assert!(result.explanation.contains("does not refute"), "{}", result.explanation);
    }

    #[test]
    fn a_reversed_response_is_not_the_predicted_ordering_and_says_so() {
        let result = dose_response(&rows(-1.0, 0.2));
        assert_eq!(result.ordering, PredictedOrdering::NotObserved, "{}", result.explanation);
        assert!(result.reverse_p_value.unwrap() < 0.001 && result.p_value.unwrap() > 0.5, "{}", result.explanation);
        assert!(result.slope.unwrap().high < 0.0);
        assert!(result.explanation.contains("The opposite ordering was"), "{}", result.explanation);
    }

    /// Seeds whose networks all sit at larger factors also sit at larger values, but inside every
    /// seed the value does not move: permuting across seeds would call that an ordering, permuting
    /// within seeds does not.
    #[test]
    fn differences_between_seeds_are_no_evidence() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let rows: Vec<DoseRow> = (0..12)
            .flat_map(|seed| (0..3).map(move |k| (seed, k)))
            .map(|(seed, k)| {
                let factor = (1 + seed) as f64 * (1.0 + 0.01 * k as f64);
                let value = 10.0 * (1 + seed) as f64 + standard_normal(&mut rng);
                DoseRow { seed, network: k, unit: 0, factor, value }
            })
            .collect();
        let result = dose_response(&rows);
        assert_eq!(result.ordering, PredictedOrdering::NotObserved, "{}", result.explanation);
        let (factors, values): (Vec<f64>, Vec<f64>) = rows.iter().map(|r| (r.factor, r.value)).unzip();
        assert!(spearman(&factors, &values).unwrap() > 0.9, "pooled over seeds it would read as a strong ordering");
    }

    /// Per-LSC rows (units) of 8 seeds x 3 networks, each LSC with its own factor and level: the
    /// slope planted in every unit is recovered, the seeds counted once each.
    #[test]
    fn the_units_of_a_network_are_read_together() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let rows: Vec<DoseRow> = (0..8u64)
            .flat_map(|seed| (0..3u32).flat_map(move |network| (1..=4u32).map(move |lsc| (seed, network, lsc))))
            .map(|(seed, network, lsc)| {
                let coefficients: Vec<f64> = (0..4).map(|i| f64::powi(0.5 + 0.25 * network as f64, i)).collect();
                let factor = feature_norm_factor(&coefficients, lsc as usize);
                let value = (10.0 / lsc as f64) * factor * (0.1 * standard_normal(&mut rng)).exp();
                DoseRow { seed, network, unit: lsc, factor, value }
            })
            .collect();
        let result = dose_response(&rows);
        assert_eq!((result.ordering, result.seeds, result.rows), (PredictedOrdering::Observed, 8, 96));
        assert!(result.slope.unwrap().contains(1.0), "{}", result.explanation);
        assert!(result.p_value.unwrap() < 0.01, "{}", result.explanation);
    }

    /// Two networks a seed (strategies 1 and CS in one sweep): the ordering is the sign test over
    /// seeds, so 16 concordant seeds read observed and a flat response does not.
    #[test]
    fn two_networks_per_seed_are_a_sign_test() {
        let two = |slope| -> Vec<DoseRow> { rows(slope, 0.2).into_iter().filter(|r| r.factor > 2.0).collect() };
        let planted = dose_response(&two(1.5));
        assert_eq!((planted.ordering, planted.seeds), (PredictedOrdering::Observed, 16), "{}", planted.explanation);
        // All 16 seeds concordant: the exact sign-test p is 2^-16, below the permutations' resolution.
        assert!(planted.p_value.unwrap() <= 2.0 / (PERMUTATIONS + 1) as f64, "{}", planted.explanation);
        assert_eq!(planted.spearman.as_ref().unwrap().estimate, 1.0);
        let flat = dose_response(&two(0.0));
        assert_eq!(flat.ordering, PredictedOrdering::NotObserved, "{}", flat.explanation);
        assert!(flat.p_value.unwrap() > ALPHA, "{}", flat.explanation);
    }

    #[test]
    fn one_network_per_seed_reads_nothing() {
        let one: Vec<DoseRow> = rows(1.5, 0.0).into_iter().filter(|r| r.network == 0).collect();
        let result = dose_response(&one);
        assert_eq!((result.ordering, result.seeds, result.p_value), (PredictedOrdering::NotObserved, 0, None));
        assert!(result.explanation.contains("no seed has at least 2"), "{}", result.explanation);
    }

    #[test]
    fn the_factors_follow_the_bounds() {
        let cs: Vec<f64> = (0..4).map(|i| f64::powi(0.5, i)).collect(); // 1, 0.5, 0.25, 0.125
        assert!((feature_norm_factor(&cs, 3) - (0.0625 + 0.015625)).abs() < 1e-15);
        assert!((gradient_norm_factor(&cs) - 1.328125).abs() < 1e-15);
        assert!((sensitivity_factor(&cs) - 1.875).abs() < 1e-15);
        let uniform = fixed_coefficients(SkipScaling::InvSqrt2, 8).unwrap();
        assert!((gradient_norm_factor(&uniform) - 4.0).abs() < 1e-12, "N/2 for 1/sqrt2");
        assert_eq!(fixed_coefficients(SkipScaling::Constant { kappa: 0.5 }, 4).unwrap(), cs);
        assert_eq!(fixed_coefficients(SkipScaling::Learnable { shared: true, reduction: 16 }, 4), None);
    }
}
