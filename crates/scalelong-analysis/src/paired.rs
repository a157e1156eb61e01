//! Exact paired comparisons of a strategy with strategy `1` over seed pairs, for the small `n`
//! (8-16 seeds) of the stability sweep, where a Student t interval leans on a normality that
//! per-seed differences with collapsed runs in them do not have.
//!
//! - **Sign-flip test** ([`sign_flip_p_value`]): under "no effect" each seed pair's difference is
//!   as likely to have either sign, so the observed mean is compared with the means of all `2^n`
//!   sign patterns (exact up to [`EXACT_MAX_PAIRS`], a fixed-seed sample of patterns above). Its
//!   interval ([`sign_flip_interval`]) is the set of shifts the test does not reject, so p-value and
//!   interval always agree.
//! - **McNemar's exact test** ([`mcnemar_exact_p_value`]) for run failures (collapsed or diverged):
//!   only the seeds where exactly one of the two runs failed carry information, and under "no
//!   effect" either run is the one that failed with probability 1/2. Its interval on the difference
//!   of failure rates is Newcombe's hybrid score interval for paired proportions
//!   ([`paired_proportion_interval`]; Newcombe 1998, method 10), which unlike the exact test's
//!   conditional interval stays informative when no seed disagrees.
//! - **Holm's step-down correction** ([`holm_adjust`]) across the comparisons of one measure with
//!   strategy `1`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use statrs::distribution::{ContinuousCDF, Normal};

use crate::inference::{Interval, IntervalMethod};

/// Up to this many pairs every sign pattern is enumerated (2^16 = 65536 means).
pub const EXACT_MAX_PAIRS: usize = 16;
/// Sign patterns drawn above [`EXACT_MAX_PAIRS`], from a fixed seed so a report is reproducible.
const SAMPLED_PATTERNS: usize = 1 << 16;
const PATTERN_SEED: u64 = 0x5ca1e;
/// Means within this relative distance of the observed one count as ties (floating-point sums of
/// the same numbers in another order differ in the last bits).
const TIE_TOLERANCE: f64 = 1e-9;
/// Bisection steps locating each end of the inverted interval (the bracket halves each time).
const BISECTION_STEPS: usize = 60;

/// Two-sided p-value of the sign-flip test that `differences` are symmetric about 0: the share of
/// sign patterns whose mean is at least as far from 0 as the observed mean. None for no pairs or a
/// non-finite difference.
pub fn sign_flip_p_value(differences: &[f64]) -> Option<f64> {
    if differences.is_empty() || differences.iter().any(|d| !d.is_finite()) {
        return None;
    }
    let n = differences.len() as f64;
    let observed = (differences.iter().sum::<f64>() / n).abs();
    let scale = differences.iter().map(|d| d.abs()).fold(0.0, f64::max);
    let threshold = observed - TIE_TOLERANCE * scale;
    let extreme = |signs: u64| {
        let sum: f64 = differences.iter().enumerate().map(|(i, d)| if (signs >> i) & 1 == 1 { -d } else { *d }).sum();
        (sum / n).abs() >= threshold
    };
    if differences.len() <= EXACT_MAX_PAIRS {
        let patterns = 1u64 << differences.len();
        let count = (0..patterns).filter(|&signs| extreme(signs)).count();
        Some(count as f64 / patterns as f64)
    } else {
        // A drawn pattern can be the observed one; counting the observed pattern itself keeps the
        // p-value valid (never 0), as in a Monte Carlo permutation test.
        let mut rng = ChaCha8Rng::seed_from_u64(PATTERN_SEED);
        let count = (0..SAMPLED_PATTERNS).filter(|_| extreme_sampled(differences, threshold, &mut rng)).count();
        Some((1 + count) as f64 / (1 + SAMPLED_PATTERNS) as f64)
    }
}

fn extreme_sampled(differences: &[f64], threshold: f64, rng: &mut ChaCha8Rng) -> bool {
    let sum: f64 = differences.iter().map(|d| if rng.random::<bool>() { -d } else { *d }).sum();
    (sum / differences.len() as f64).abs() >= threshold
}

/// The shifts `delta` for which the sign-flip test of `differences - delta` is not rejected at
/// `level`, around the mean difference. None when no shift can be rejected with this few pairs
/// (the smallest two-sided p is `2 / 2^n`, so 95% needs at least 6 pairs), or for bad input.
pub fn sign_flip_interval(differences: &[f64], level: f64) -> Option<Interval> {
    let alpha = 1.0 - level;
    if !(alpha > 0.0 && alpha < 1.0) || differences.is_empty() || differences.iter().any(|d| !d.is_finite()) {
        return None;
    }
    if 2.0 / 2f64.powi(differences.len().min(60) as i32) > alpha {
        return None;
    }
    let n = differences.len() as f64;
    let mean = differences.iter().sum::<f64>() / n;
    let accepted = |delta: f64| {
        let shifted: Vec<f64> = differences.iter().map(|d| d - delta).collect();
        sign_flip_p_value(&shifted).is_some_and(|p| p > alpha)
    };
    let (min, max) =
        differences.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), d| (lo.min(*d), hi.max(*d)));
    // Beyond the smallest (largest) difference every shifted difference has one sign: only the two
    // one-sign patterns are as extreme, p = 2 / 2^n <= alpha, so the bracket's outer end is rejected.
    let spread = (max - min).max(f64::EPSILON * mean.abs().max(1.0));
    let boundary = |outer: f64| {
        let (mut rejected, mut inside) = (outer, mean);
        for _ in 0..BISECTION_STEPS {
            let middle = 0.5 * (rejected + inside);
            if accepted(middle) {
                inside = middle;
            } else {
                rejected = middle;
            }
        }
        inside
    };
    Some(Interval {
        estimate: mean,
        low: boundary(min - spread),
        high: boundary(max + spread),
        n: differences.len(),
        level,
        method: IntervalMethod::PairedSignFlip,
    })
}

/// [`sign_flip_interval`] on `ln(a / b)` per pair, exponentiated: a geometric-mean ratio whose
/// interval is the ratios the test does not reject. None when a value is not positive and finite.
pub fn sign_flip_ratio_interval(a: &[f64], b: &[f64], level: f64) -> Option<Interval> {
    let logs = log_ratios(a, b)?;
    let interval = sign_flip_interval(&logs, level)?;
    Some(Interval {
        estimate: interval.estimate.exp(),
        low: interval.low.exp(),
        high: interval.high.exp(),
        method: IntervalMethod::PairedLogRatioSignFlip,
        ..interval
    })
}

/// `ln(a_i / b_i)` per pair; None for unequal lengths or a value that is not positive and finite.
pub fn log_ratios(a: &[f64], b: &[f64]) -> Option<Vec<f64>> {
    if a.len() != b.len() || a.iter().chain(b).any(|v| !(v.is_finite() && *v > 0.0)) {
        return None;
    }
    Some(a.iter().zip(b).map(|(x, y)| (x / y).ln()).collect())
}

/// McNemar's exact two-sided p-value from the discordant pairs: `baseline_only` seeds where only
/// the baseline's run failed, `other_only` where only the other's did. 1 with no discordant pair.
pub fn mcnemar_exact_p_value(baseline_only: usize, other_only: usize) -> f64 {
    let n = baseline_only + other_only;
    let k = baseline_only.min(other_only);
    // P(X <= k) for X ~ Binomial(n, 1/2), summed in log space so large n does not overflow.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let tail: f64 = (0..=k).map(|j| (ln_choose(n, j) + ln_half_n).exp()).sum();
    (2.0 * tail).min(1.0)
}

fn ln_choose(n: usize, k: usize) -> f64 {
    (1..=k).map(|j| ((n + 1 - j) as f64 / j as f64).ln()).sum()
}

/// The four cells of a paired yes/no outcome over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PairedCounts {
    pub both: usize,
    pub baseline_only: usize,
    pub other_only: usize,
    pub neither: usize,
}

impl PairedCounts {
    pub fn pairs(&self) -> usize {
        self.both + self.baseline_only + self.other_only + self.neither
    }

    pub fn baseline(&self) -> usize {
        self.both + self.baseline_only
    }

    pub fn other(&self) -> usize {
        self.both + self.other_only
    }
}

/// Newcombe's hybrid score interval for the difference of paired proportions (other's rate minus
/// the baseline's), from the Wilson intervals of each margin and the phi correlation of the pairs.
/// None for no pairs or a level outside (0, 1).
pub fn paired_proportion_interval(counts: PairedCounts, level: f64) -> Option<Interval> {
    let n = counts.pairs();
    if n == 0 || !(level > 0.0 && level < 1.0) {
        return None;
    }
    let z = Normal::standard().inverse_cdf(1.0 - (1.0 - level) / 2.0);
    let (p_other, p_base) = (counts.other() as f64 / n as f64, counts.baseline() as f64 / n as f64);
    let (l_other, u_other) = wilson(counts.other(), n, z);
    let (l_base, u_base) = wilson(counts.baseline(), n, z);
    let (a, b, c, d) =
        (counts.both as f64, counts.other_only as f64, counts.baseline_only as f64, counts.neither as f64);
    let denominator = ((a + b) * (c + d) * (a + c) * (b + d)).sqrt();
    let phi = if denominator > 0.0 { (a * d - b * c) / denominator } else { 0.0 };
    let difference = p_other - p_base;
    let below = ((p_other - l_other).powi(2) - 2.0 * phi * (p_other - l_other) * (u_base - p_base)
        + (u_base - p_base).powi(2))
    .max(0.0)
    .sqrt();
    let above = ((u_other - p_other).powi(2) - 2.0 * phi * (u_other - p_other) * (p_base - l_base)
        + (p_base - l_base).powi(2))
    .max(0.0)
    .sqrt();
    Some(Interval {
        estimate: difference,
        low: (difference - below).max(-1.0),
        high: (difference + above).min(1.0),
        n,
        level,
        method: IntervalMethod::PairedProportionNewcombe,
    })
}

/// Wilson's score interval for `k` of `n`.
fn wilson(k: usize, n: usize, z: f64) -> (f64, f64) {
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Holm's step-down adjustment of `p_values` (one family), in their order. `None` entries (a test
/// that could not be run) are neither adjusted nor counted in the family.
pub fn holm_adjust(p_values: &[Option<f64>]) -> Vec<Option<f64>> {
    let mut order: Vec<(usize, f64)> = p_values.iter().enumerate().filter_map(|(i, p)| Some((i, (*p)?))).collect();
    order.sort_by(|x, y| x.1.total_cmp(&y.1));
    let family = order.len();
    let mut adjusted = vec![None; p_values.len()];
    let mut running = 0.0f64;
    for (rank, (index, p)) in order.into_iter().enumerate() {
        running = running.max(((family - rank) as f64 * p).min(1.0));
        adjusted[index] = Some(running);
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_flip_counts_the_patterns_at_least_as_extreme() {
        // All 8 positive: only the all-plus and all-minus patterns reach the observed |mean|.
        assert_eq!(sign_flip_p_value(&[1.0; 8]), Some(2.0 / 256.0));
        // Symmetric data: the observed mean is 0, every pattern is as extreme.
        assert_eq!(sign_flip_p_value(&[1.0, -1.0, 2.0, -2.0]), Some(1.0));
        // Three values: the patterns' |sums| are 4 (twice), 2 (four times) and 0 (twice); the observed
        // 4 is matched by 2 of 8.
        assert_eq!(sign_flip_p_value(&[1.0, 1.0, 2.0]), Some(0.25));
        assert_eq!(sign_flip_p_value(&[]), None);
        assert_eq!(sign_flip_p_value(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn sampled_patterns_agree_with_enumeration_in_size() {
        let differences: Vec<f64> = (0..20).map(|i| if i % 3 == 0 { -0.5 } else { 1.0 + i as f64 * 0.1 }).collect();
        let p = sign_flip_p_value(&differences).unwrap();
        assert!(p > 0.0 && p < 0.01, "a clear shift over 20 pairs: {p}");
    }

    #[test]
    fn the_inverted_interval_brackets_the_mean_and_agrees_with_the_test() {
        let differences = [0.9, 1.2, 1.1, 0.7, 1.4, 1.0, 0.8, 1.3];
        let interval = sign_flip_interval(&differences, 0.95).unwrap();
        assert!(interval.low < 1.05 && 1.05 < interval.high && interval.low > 0.0, "{interval:?}");
        let at = |delta: f64| sign_flip_p_value(&differences.map(|d| d - delta)).unwrap();
        assert!(at(interval.low + 1e-6) > 0.05 && at(interval.low - 1e-3) <= 0.05);
        assert!(at(interval.high - 1e-6) > 0.05 && at(interval.high + 1e-3) <= 0.05);
        assert!(sign_flip_interval(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.95).is_none(), "5 pairs cannot reach p < 0.05");
    }

    #[test]
    fn ratios_are_geometric_means() {
        let a = [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.3];
        let b = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0];
        let interval = sign_flip_ratio_interval(&a, &b, 0.95).unwrap();
        assert!((interval.estimate - (1.5f64.ln() * 7.0 / 8.0 + 1.65f64.ln() / 8.0).exp()).abs() < 1e-12);
        assert!(interval.low > 1.45 && interval.high < 1.7, "{interval:?}");
        assert!(sign_flip_ratio_interval(&[1.0], &[0.0], 0.95).is_none());
    }

    #[test]
    fn mcnemar_is_the_binomial_tail_of_the_discordant_pairs() {
        assert_eq!(mcnemar_exact_p_value(0, 0), 1.0);
        assert!((mcnemar_exact_p_value(6, 0) - 2.0 / 64.0).abs() < 1e-12);
        // 5 vs 1: P(X <= 1) for Binomial(6, 1/2) = 7/64, doubled.
        assert!((mcnemar_exact_p_value(1, 5) - 14.0 / 64.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact_p_value(3, 3), 1.0);
    }

    #[test]
    fn newcombe_brackets_the_difference_and_stays_informative_without_discordant_pairs() {
        // Strategy 1 failed on 6 of 8 seeds, the other on none: the interval lies below 0.
        let planted = PairedCounts { both: 0, baseline_only: 6, other_only: 0, neither: 2 };
        let interval = paired_proportion_interval(planted, 0.95).unwrap();
        assert_eq!(interval.estimate, -0.75);
        assert!(interval.low < -0.75 && interval.high < 0.0 && interval.low >= -1.0, "{interval:?}");
        // Swapping the roles negates it.
        let swapped = PairedCounts { baseline_only: 0, other_only: 6, ..planted };
        let mirror = paired_proportion_interval(swapped, 0.95).unwrap();
        assert!((mirror.low + interval.high).abs() < 1e-12 && (mirror.high + interval.low).abs() < 1e-12);
        // No seed failed: the difference is 0, but 8 seeds cannot exclude a rate difference of 1/4.
        let none = paired_proportion_interval(PairedCounts { neither: 8, ..Default::default() }, 0.95).unwrap();
        assert_eq!(none.estimate, 0.0);
        assert!(none.low < -0.25 && none.high > 0.25, "{none:?}");
        assert!(paired_proportion_interval(PairedCounts::default(), 0.95).is_none());
    }

    #[test]
    fn holm_multiplies_by_the_remaining_family_and_keeps_the_order() {
        let adjusted = holm_adjust(&[Some(0.01), Some(0.04), None, Some(0.03)]);
        assert_eq!(adjusted[2], None);
        assert!((adjusted[0].unwrap() - 0.03).abs() < 1e-12);
        assert!((adjusted[3].unwrap() - 0.06).abs() < 1e-12);
        assert!((adjusted[1].unwrap() - 0.06).abs() < 1e-12, "never below an earlier adjusted p");
    }
}
