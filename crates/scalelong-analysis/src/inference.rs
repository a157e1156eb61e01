//! Interval estimates, verdicts and run diagnostics for comparing skip-scaling strategies over a few seeds.
//!
//! A cell is (model, strategy) with 3-5 seeds, and runs that share a seed share data order and noise. Seed-to-seed
//! spread is large, so every comparison here is built to respect that structure. Intervals are 95% unless a level
//! is passed.
//!
//! Intervals used, and why:
//! - **Student t over seeds** ([`mean_interval`]): with n = 3-5 a bootstrap is degenerate (3 values have only 10
//!   distinct resamples and the percentile interval is far too narrow), whereas the t interval is exact for normal
//!   data and its width honestly reflects how little 3 seeds say.
//! - **Paired Student t** ([`paired_difference_interval`]): runs with the same seed share data order and noise, so
//!   the seed effect cancels in the per-seed difference; an unpaired comparison would carry the large seed-to-seed
//!   spread twice.
//! - **Paired log-ratio Student t** ([`paired_ratio_interval`]): speed-ups are multiplicative (1.5x faster and 1.5x
//!   slower should be symmetric), so the t interval is computed on ln(a/b) and exponentiated; the estimate is the
//!   geometric-mean ratio and the interval is asymmetric around it.
//! - **Cluster bootstrap over runs** ([`cluster_bootstrap_interval`]): for statistics pooled over rows (e.g. a
//!   correlation between predicted and measured values over all evaluation rows), rows within one run are not
//!   independent; resampling whole runs keeps that dependence, whereas resampling rows would understate the
//!   uncertainty. It is only used when there are many runs (tens), never over the 3-5 seeds of one cell.
//!
//! The Student-t quantile is statrs' (see [`t_quantile`] for where it holds).

/// The level of every interval the harness reports.
pub const LEVEL: f64 = 0.95;
/// The power at which the smallest detectable effect is stated.
pub const POWER: f64 = 0.8;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// How an interval was computed, shown in reports next to the numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntervalMethod {
    /// Student t interval for a mean over independent seeds.
    StudentT,
    /// Student t interval for the mean of per-seed differences.
    PairedStudentT,
    /// Student t interval for the mean per-seed log ratio, exponentiated (a geometric-mean ratio).
    PairedLogRatioStudentT,
    /// Percentile interval from resampling whole clusters (runs) with replacement.
    ClusterBootstrapPercentile { resamples: usize },
    /// The shifts of the per-seed differences that the exact sign-flip test does not reject
    /// ([`crate::paired::sign_flip_interval`]).
    PairedSignFlip,
    /// The same on per-seed log ratios, exponentiated (a geometric-mean ratio).
    PairedLogRatioSignFlip,
    /// Newcombe's hybrid score interval for a difference of paired proportions.
    PairedProportionNewcombe,
}

impl IntervalMethod {
    /// Short human text for reports, e.g. "paired Student t".
    pub fn describe(&self) -> String {
        match self {
            IntervalMethod::StudentT => "Student t".to_string(),
            IntervalMethod::PairedStudentT => "paired Student t".to_string(),
            IntervalMethod::PairedLogRatioStudentT => "paired log-ratio Student t (geometric mean)".to_string(),
            IntervalMethod::ClusterBootstrapPercentile { resamples } => {
                format!("cluster bootstrap percentile ({resamples} resamples)")
            }
            IntervalMethod::PairedSignFlip => "exact paired sign-flip".to_string(),
            IntervalMethod::PairedLogRatioSignFlip => {
                "exact paired sign-flip on log ratios (geometric mean)".to_string()
            }
            IntervalMethod::PairedProportionNewcombe => "Newcombe paired score".to_string(),
        }
    }

    /// What `n` counts for this method, so that a report can say "over 3 seeds" or "over 24 runs".
    pub fn unit(&self) -> &'static str {
        match self {
            IntervalMethod::StudentT | IntervalMethod::PairedStudentT | IntervalMethod::PairedLogRatioStudentT => {
                "seeds"
            }
            IntervalMethod::ClusterBootstrapPercentile { .. } => "runs",
            IntervalMethod::PairedSignFlip
            | IntervalMethod::PairedLogRatioSignFlip
            | IntervalMethod::PairedProportionNewcombe => "seed pairs",
        }
    }
}

/// A point estimate with a two-sided confidence interval and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
    /// Number of independent units behind the interval (seeds or seed pairs for t intervals, runs for the bootstrap).
    pub n: usize,
    /// Confidence level, e.g. 0.95.
    pub level: f64,
    pub method: IntervalMethod,
}

impl Interval {
    /// Half the interval's width. For asymmetric intervals (log-ratio, bootstrap) this is only a summary of width,
    /// not the distance from the estimate to either end.
    pub fn half_width(&self) -> f64 {
        (self.high - self.low) / 2.0
    }

    /// Whether `v` lies in the closed interval [low, high].
    pub fn contains(&self, v: f64) -> bool {
        self.low <= v && v <= self.high
    }

    /// Report text for the method including level and n, e.g. "95% Student t over 3 seeds".
    pub fn describe(&self) -> String {
        format!("{}% {} over {} {}", format_level(self.level), self.method.describe(), self.n, self.method.unit())
    }
}

/// Level as a percentage without trailing zeros: 0.95 -> "95", 0.975 -> "97.5".
fn format_level(level: f64) -> String {
    let percent = format!("{:.3}", level * 100.0);
    percent.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// True for a probability strictly between 0 and 1 (NaN is not one).
pub(crate) fn is_open_probability(p: f64) -> bool {
    p > 0.0 && p < 1.0
}

// ---------------------------------------------------------------------------------------------------------------
// Student-t quantile
// ---------------------------------------------------------------------------------------------------------------

/// Above this many degrees of freedom the normal quantile stands in for Student's (relative error below 1e-4 at
/// the 95% level), where statrs' inverse CDF drifts (1.959848 for 1.959966 at df = 1e6) and slows down. The
/// intervals here have df = seeds - 1 or runs - 1, far below it.
const NORMAL_APPROXIMATION_MIN_DF: f64 = 1e4;

/// Quantile of Student's t distribution with `df` degrees of freedom: the t with P(T <= t) = p, by statrs
/// (within 3e-9 of a 1e-12-accurate solver for df 1 to 999 and p from 0.6 to 0.9995, measured); the normal
/// quantile above [`NORMAL_APPROXIMATION_MIN_DF`]. NaN when p is not strictly between 0 and 1 or df is not
/// positive (statrs would panic).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if !is_open_probability(p) || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    let distribution: Box<dyn ContinuousCDF<f64, f64>> = if df >= NORMAL_APPROXIMATION_MIN_DF {
        Box::new(Normal::standard())
    } else {
        match StudentsT::new(0.0, 1.0, df) {
            Ok(t) => Box::new(t),
            Err(_) => return f64::NAN,
        }
    };
    distribution.inverse_cdf(p)
}

/// Arithmetic mean of a non-empty slice (callers check emptiness).
pub(crate) fn mean_of(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample standard deviation with the n - 1 denominator (two-pass, so large offsets do not cancel precision).
/// None for fewer than 2 values or any non-finite value.
pub fn sample_sd(values: &[f64]) -> Option<f64> {
    if values.len() < 2 || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mean = mean_of(values);
    let sum_squares: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
    let sd = (sum_squares / (values.len() - 1) as f64).sqrt();
    sd.is_finite().then_some(sd)
}

/// Two-sided t critical value for `level` with `n - 1` degrees of freedom.
pub(crate) fn two_sided_t_critical(level: f64, n: usize) -> f64 {
    t_quantile(1.0 - (1.0 - level) / 2.0, (n - 1) as f64)
}

/// Student t interval for the mean of `values` (already validated: finite, n >= 2).
fn t_interval(values: &[f64], level: f64, method: IntervalMethod) -> Option<Interval> {
    if !is_open_probability(level) {
        return None;
    }
    let n = values.len();
    let sd = sample_sd(values)?;
    let estimate = mean_of(values);
    let margin = two_sided_t_critical(level, n) * sd / (n as f64).sqrt();
    if !margin.is_finite() {
        return None;
    }
    Some(Interval { estimate, low: estimate - margin, high: estimate + margin, n, level, method })
}

/// [`mean_interval`] of correlations, its ends clipped to [-1, 1]: the t interval does not know the
/// bound, and runs that agree on a correlation near -1 would otherwise read e.g. [-1.006, -0.985].
pub fn mean_correlation_interval(correlations: &[f64], level: f64) -> Option<Interval> {
    mean_interval(correlations, level).map(|interval| Interval {
        low: interval.low.max(-1.0),
        high: interval.high.min(1.0),
        ..interval
    })
}

/// Mean over seeds with a Student t interval: mean +- t_{1-(1-level)/2, n-1} * sd / sqrt(n).
///
/// Why t and not a bootstrap: n is 3-5 seeds, where a bootstrap has almost no distinct resamples and badly
/// under-covers; the t interval is exact for normal seed-to-seed spread. None for n < 2, any non-finite value, or a
/// level outside (0, 1). Identical values give a zero-width interval (the data show no spread).
pub fn mean_interval(values: &[f64], level: f64) -> Option<Interval> {
    if values.len() < 2 || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    t_interval(values, level, IntervalMethod::StudentT)
}

/// Mean of the per-seed differences a_i - b_i with a Student t interval on those differences.
///
/// Why paired: runs with the same seed share data order and noise, so the seed effect cancels in a_i - b_i and
/// only the strategy effect and run noise remain. `a[i]` and `b[i]` must be the same seed. Pairs with a
/// non-finite member are dropped (a diverged run has no value to compare); None if the slices differ in length,
/// fewer than 2 pairs remain, or the level is outside (0, 1).
pub fn paired_difference_interval(a: &[f64], b: &[f64], level: f64) -> Option<Interval> {
    if a.len() != b.len() {
        return None;
    }
    let differences: Vec<f64> =
        a.iter().zip(b).filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(x, y)| x - y).collect();
    if differences.len() < 2 {
        return None;
    }
    t_interval(&differences, level, IntervalMethod::PairedStudentT)
}

/// Geometric-mean ratio of paired positive values (e.g. a speed-up = baseline_steps / steps) with an interval:
/// a Student t interval on the mean of ln(a_i / b_i), with estimate and both ends exponentiated.
///
/// Why logs: ratios are multiplicative (2x and 0.5x are symmetric about 1), and seed noise on step counts is
/// roughly proportional, so ln(a/b) is the scale on which a t interval is appropriate. Pairs with a non-finite
/// or non-positive member are dropped; None if the slices differ in length, fewer than 2 valid pairs remain, or the
/// level is outside (0, 1). `n` counts the valid pairs.
pub fn paired_ratio_interval(a: &[f64], b: &[f64], level: f64) -> Option<Interval> {
    if a.len() != b.len() {
        return None;
    }
    let is_valid = |v: f64| v.is_finite() && v > 0.0;
    let log_ratios: Vec<f64> =
        a.iter().zip(b).filter(|&(&x, &y)| is_valid(x) && is_valid(y)).map(|(x, y)| x.ln() - y.ln()).collect();
    if log_ratios.len() < 2 {
        return None;
    }
    let log_interval = t_interval(&log_ratios, level, IntervalMethod::PairedLogRatioStudentT)?;
    Some(Interval {
        estimate: log_interval.estimate.exp(),
        low: log_interval.low.exp(),
        high: log_interval.high.exp(),
        ..log_interval
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    // --- t quantile -------------------------------------------------------------------------------------------

    #[test]
    fn t_quantile_matches_table_values() {
        // Printed t tables and higher-precision values from R's qt.
        let table = [
            (0.975, 2.0, 4.302652729911275),
            (0.975, 4.0, 2.776445105197793),
            (0.975, 9.0, 2.262157162798205),
            (0.8, 2.0, 1.060660171779821),
            (0.975, 1.0, 12.706204736174698),
            (0.975, 3.0, 3.182446305284263),
            (0.995, 3.0, 5.84090930973335),
            (0.975, 30.0, 2.042272456301238),
            (0.95, 10.0, 1.812461122811676),
        ];
        for (p, df, expected) in table {
            assert_close(t_quantile(p, df), expected, 1e-7 * expected, &format!("t_quantile({p}, {df})"));
        }
        // Beyond the switch, the normal quantile (the t's is 1.959966 at df = 1e6).
        assert_close(t_quantile(0.975, 1e6), 1.959963984540054, 1e-12, "normal above the switch");
    }

    #[test]
    fn t_quantile_matches_closed_forms_for_df_1_and_2() {
        let cauchy = |p: f64| 1.0 / (std::f64::consts::PI * (1.0 - p)).tan();
        let df_two = |p: f64| (p - (1.0 - p)) / (2.0 * p * (1.0 - p)).sqrt();
        for p in [0.6, 0.8, 0.9, 0.975, 0.995, 0.9995] {
            for (df, exact) in [(1.0, cauchy(p)), (2.0, df_two(p))] {
                let got = t_quantile(p, df);
                assert!(((got - exact) / exact).abs() < 1e-7, "df {df} p {p}: got {got}, exact {exact}");
            }
        }
    }

    #[test]
    fn t_quantile_bad_input_is_nan() {
        assert_eq!(t_quantile(0.5, 3.0), 0.0);
        for (p, df) in [(0.0, 3.0), (1.0, 3.0), (-0.1, 3.0), (f64::NAN, 3.0), (0.9, 0.0), (0.9, -1.0), (0.9, f64::NAN)]
        {
            assert!(t_quantile(p, df).is_nan(), "t_quantile({p}, {df}) should be NaN");
        }
    }

    // --- intervals ----------------------------------------------------------------------------------------------

    #[test]
    fn interval_helpers_and_method_descriptions() {
        let interval =
            Interval { estimate: 2.0, low: 1.0, high: 4.0, n: 3, level: 0.95, method: IntervalMethod::StudentT };
        assert_eq!(interval.half_width(), 1.5);
        assert!(interval.contains(1.0) && interval.contains(4.0) && interval.contains(2.5));
        assert!(!interval.contains(0.99) && !interval.contains(4.01) && !interval.contains(f64::NAN));
        assert_eq!(interval.describe(), "95% Student t over 3 seeds");
        let bootstrap = Interval {
            level: 0.975,
            n: 24,
            method: IntervalMethod::ClusterBootstrapPercentile { resamples: 2000 },
            ..interval
        };
        assert_eq!(bootstrap.describe(), "97.5% cluster bootstrap percentile (2000 resamples) over 24 runs");
        assert_eq!(IntervalMethod::PairedStudentT.describe(), "paired Student t");
        assert_eq!(IntervalMethod::PairedLogRatioStudentT.describe(), "paired log-ratio Student t (geometric mean)");
        assert_eq!(IntervalMethod::StudentT.unit(), "seeds");
    }

    #[test]
    fn sample_sd_known_answer_and_bad_input() {
        assert_close(
            sample_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap(),
            (32.0f64 / 7.0).sqrt(),
            1e-12,
            "sd",
        );
        // A large common offset must not destroy precision (two-pass).
        assert_close(sample_sd(&[1e9 + 1.0, 1e9 + 2.0, 1e9 + 3.0]).unwrap(), 1.0, 1e-6, "offset sd");
        assert_eq!(sample_sd(&[1.0]), None);
        assert_eq!(sample_sd(&[]), None);
        assert_eq!(sample_sd(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn mean_interval_known_answer_and_bad_input() {
        // mean 2, sd 1, se 1/sqrt(3), t_{0.975,2} = 4.302652729911275.
        let interval = mean_interval(&[1.0, 2.0, 3.0], 0.95).unwrap();
        let margin = 4.302652729911275 / 3.0f64.sqrt();
        assert_close(interval.estimate, 2.0, 1e-12, "estimate");
        assert_close(interval.low, 2.0 - margin, 1e-9, "low");
        assert_close(interval.high, 2.0 + margin, 1e-9, "high");
        assert_eq!((interval.n, interval.level, interval.method), (3, 0.95, IntervalMethod::StudentT));
        // A lower level gives a narrower interval.
        assert!(mean_interval(&[1.0, 2.0, 3.0], 0.8).unwrap().half_width() < interval.half_width());
        assert_eq!(mean_interval(&[1.0], 0.95), None);
        assert_eq!(mean_interval(&[1.0, f64::INFINITY, 2.0], 0.95), None);
        assert_eq!(mean_interval(&[1.0, 2.0], 1.0), None);
        assert_eq!(mean_interval(&[1.0, 2.0], f64::NAN), None);
        let constant = mean_interval(&[5.0, 5.0, 5.0], 0.95).unwrap();
        assert_eq!((constant.low, constant.high), (5.0, 5.0));
    }

    #[test]
    fn mean_interval_covers_95_percent_for_3_and_5_seeds() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for n in [3, 5] {
            let draws = 4000;
            let covered = (0..draws)
                .filter(|_| mean_interval(&normals(&mut rng, n, 10.0, 3.0), 0.95).unwrap().contains(10.0))
                .count();
            assert_coverage(covered, draws, &format!("mean_interval n={n}"));
        }
    }

    #[test]
    fn paired_difference_interval_known_answer_and_dropped_pairs() {
        // Differences 1, 2, 3 (the NaN and infinite pairs are dropped).
        let a = [11.0, 22.0, f64::NAN, 33.0, 1.0];
        let b = [10.0, 20.0, 5.0, 30.0, f64::INFINITY];
        let interval = paired_difference_interval(&a, &b, 0.95).unwrap();
        assert_eq!(interval.n, 3);
        assert_eq!(interval.method, IntervalMethod::PairedStudentT);
        assert_close(interval.estimate, 2.0, 1e-12, "estimate");
        assert_close(interval.high, 2.0 + 4.302652729911275 / 3.0f64.sqrt(), 1e-9, "high");
        assert_eq!(paired_difference_interval(&[1.0, 2.0], &[1.0], 0.95), None);
        assert_eq!(paired_difference_interval(&[1.0, f64::NAN], &[0.0, 0.0], 0.95), None);
    }

    #[test]
    fn paired_difference_interval_covers_95_percent_and_removes_the_seed_effect() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let planted_difference = 2.0;
        for n in [3, 5] {
            let draws = 4000;
            let mut covered = 0;
            let mut paired_narrower = 0;
            for _ in 0..draws {
                // A seed effect with sd 5 shared by both strategies, run noise with sd 1.
                let seed_effects = normals(&mut rng, n, 0.0, 5.0);
                let a: Vec<f64> = seed_effects.iter().map(|s| 3.0 + s + standard_normal(&mut rng)).collect();
                let b: Vec<f64> = seed_effects.iter().map(|s| 1.0 + s + standard_normal(&mut rng)).collect();
                let paired = paired_difference_interval(&a, &b, 0.95).unwrap();
                covered += usize::from(paired.contains(planted_difference));
                let unpaired_half_width = mean_interval(&a, 0.95).unwrap().half_width();
                paired_narrower += usize::from(paired.half_width() < unpaired_half_width);
            }
            assert_coverage(covered, draws, &format!("paired_difference_interval n={n}"));
            assert!(paired_narrower as f64 / draws as f64 > 0.9, "pairing should remove the shared seed effect");
        }
    }

    #[test]
    fn paired_ratio_interval_known_answer_and_dropped_pairs() {
        // Ratios 2, 8 (geometric mean 4) and 1 dropped pair each for zero, negative and NaN members.
        let a = [20.0, 80.0, 0.0, 5.0, f64::NAN];
        let b = [10.0, 10.0, 3.0, -1.0, 2.0];
        let interval = paired_ratio_interval(&a, &b, 0.95).unwrap();
        assert_eq!(interval.n, 2);
        assert_eq!(interval.method, IntervalMethod::PairedLogRatioStudentT);
        assert_close(interval.estimate, 4.0, 1e-12, "geometric mean ratio");
        // ln ratios ln 2 and ln 8: mean ln 4, sd ln 4 * sqrt(2) / sqrt(2) ... computed directly:
        let logs = [2.0f64.ln(), 8.0f64.ln()];
        let margin = 12.706204736174698 * sample_sd(&logs).unwrap() / 2.0f64.sqrt();
        assert_close(interval.low, (4.0f64.ln() - margin).exp(), 1e-9, "low");
        assert_close(interval.high, (4.0f64.ln() + margin).exp(), 1e-6, "high");
        // Multiplicative symmetry: estimate is the geometric centre of the interval.
        assert_close(interval.estimate, (interval.low * interval.high).sqrt(), 1e-9, "geometric centre");
        assert_eq!(paired_ratio_interval(&[1.0, 2.0, 3.0], &[0.0, 0.0, 1.0], 0.95), None);
        assert_eq!(paired_ratio_interval(&[1.0], &[1.0, 2.0], 0.95), None);
    }

    #[test]
    fn paired_ratio_interval_covers_planted_ratio_for_lognormal_pairs() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let planted_ratio = 1.6;
        for n in [3, 5] {
            let draws = 4000;
            let mut covered = 0;
            for _ in 0..draws {
                let baselines: Vec<f64> = (0..n).map(|_| (9.0 + 0.5 * standard_normal(&mut rng)).exp()).collect();
                let a: Vec<f64> = baselines.iter().map(|base| base * (0.3 * standard_normal(&mut rng)).exp()).collect();
                let b: Vec<f64> = baselines
                    .iter()
                    .map(|base| base / planted_ratio * (0.3 * standard_normal(&mut rng)).exp())
                    .collect();
                covered += usize::from(paired_ratio_interval(&a, &b, 0.95).unwrap().contains(planted_ratio));
            }
            assert_coverage(covered, draws, &format!("paired_ratio_interval n={n}"));
        }
    }

    #[test]
    fn a_mean_correlation_interval_stays_within_minus_one_and_one() {
        let interval = mean_correlation_interval(&[-1.0, -0.95, -1.0], 0.95).unwrap();
        assert!(interval.low == -1.0 && interval.high < -0.9, "{interval:?}");
        let unclipped = mean_interval(&[-1.0, -0.95, -1.0], 0.95).unwrap();
        assert!(unclipped.low < -1.0 && unclipped.high == interval.high);
    }
}
