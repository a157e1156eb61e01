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

use std::fmt;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scalelong_schema::{EvalLine, RunState};
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
fn is_open_probability(p: f64) -> bool {
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
fn mean_of(values: &[f64]) -> f64 {
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
fn two_sided_t_critical(level: f64, n: usize) -> f64 {
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

// ---------------------------------------------------------------------------------------------------------------
// Cluster bootstrap and permutation test
// ---------------------------------------------------------------------------------------------------------------

/// Linear interpolation between order statistics (Hyndman & Fan type 7) of an ascending slice.
fn sorted_quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let fraction = position - below as f64;
    sorted[below] + fraction * (sorted[above] - sorted[below])
}

/// Percentile bootstrap over clusters (runs): draw `clusters.len()` clusters with replacement, `resamples` times,
/// evaluate `statistic` on each resample, and take the (1-level)/2 and 1-(1-level)/2 quantiles of those values
/// (type 7 interpolation). The estimate is `statistic` on the original clusters.
///
/// Why clusters: rows within one run share the run's seed and training history, so they are not independent;
/// resampling whole runs keeps that dependence and gives an honest width for statistics pooled over rows. Meant
/// for tens of runs; with 3-5 units use a t interval instead.
///
/// The generator is ChaCha8 seeded with `seed`, so the result is reproducible. Resamples where `statistic`
/// returns None or a non-finite value (e.g. a correlation of a resample with a constant variable) are skipped.
/// None if there are no clusters, `resamples` is 0, the level is outside (0, 1), the original statistic is None
/// or non-finite, or fewer than half the resamples give a value.
pub fn cluster_bootstrap_interval<T>(
    clusters: &[T],
    statistic: impl Fn(&[&T]) -> Option<f64>,
    resamples: usize,
    seed: u64,
    level: f64,
) -> Option<Interval> {
    if clusters.is_empty() || resamples == 0 || !is_open_probability(level) {
        return None;
    }
    let original: Vec<&T> = clusters.iter().collect();
    let estimate = statistic(&original).filter(|v| v.is_finite())?;

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut resample: Vec<&T> = Vec::with_capacity(clusters.len());
    let mut values: Vec<f64> = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        resample.clear();
        resample.extend((0..clusters.len()).map(|_| &clusters[rng.random_range(0..clusters.len())]));
        if let Some(value) = statistic(&resample).filter(|v| v.is_finite()) {
            values.push(value);
        }
    }
    if values.len() * 2 < resamples {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let alpha = 1.0 - level;
    Some(Interval {
        estimate,
        low: sorted_quantile(&values, alpha / 2.0),
        high: sorted_quantile(&values, 1.0 - alpha / 2.0),
        n: clusters.len(),
        level,
        method: IntervalMethod::ClusterBootstrapPercentile { resamples },
    })
}

/// Relative slack when comparing a permuted statistic with the observed one: a permutation that reproduces the
/// observed value can differ from it in the last bits through summation order, and must still count.
const PERMUTATION_TIE_TOLERANCE: f64 = 1e-12;

/// Two-sided permutation p-value for H0 "no association between x and y": shuffle y relative to x `permutations`
/// times (ChaCha8 seeded with `seed`) and return (1 + #{|stat_perm| >= |stat_obs|}) / (1 + #valid permutations).
///
/// Meant for run-level summaries (one x and one y per run), so that the exchangeable units are runs; permuting
/// rows within runs would break the same dependence the cluster bootstrap keeps. Two-sided via absolute values, so
/// `statistic` should be centred on 0 under H0 (a correlation is). The +1 counts the observed arrangement, so p is
/// never 0. Permutations where `statistic` returns None or a non-finite value are skipped. None if the slices differ
/// in length, `permutations` is 0, the observed statistic is None or non-finite, or fewer than half the
/// permutations give a value.
pub fn permutation_p_value(
    x: &[f64],
    y: &[f64],
    statistic: impl Fn(&[f64], &[f64]) -> Option<f64>,
    permutations: usize,
    seed: u64,
) -> Option<f64> {
    if x.len() != y.len() || permutations == 0 {
        return None;
    }
    let observed = statistic(x, y).filter(|v| v.is_finite())?.abs();
    let threshold = observed * (1.0 - PERMUTATION_TIE_TOLERANCE);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut shuffled = y.to_vec();
    let mut valid = 0usize;
    let mut at_least_as_extreme = 0usize;
    for _ in 0..permutations {
        // Shuffling the already shuffled vector is still a uniform permutation of y.
        shuffled.shuffle(&mut rng);
        if let Some(value) = statistic(x, &shuffled).filter(|v| v.is_finite()) {
            valid += 1;
            if value.abs() >= threshold {
                at_least_as_extreme += 1;
            }
        }
    }
    if valid * 2 < permutations {
        return None;
    }
    Some((1 + at_least_as_extreme) as f64 / (1 + valid) as f64)
}

/// Ranks 1..=n with tied values sharing the average of their ranks.
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) hold ranks start+1..=end; their average is (start + 1 + end) / 2.
        let average_rank = (start + 1 + end) as f64 / 2.0;
        for &index in &order[start..end] {
            ranks[index] = average_rank;
        }
        start = end;
    }
    ranks
}

/// Pearson correlation; None if either variable has zero spread.
fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let mean_x = mean_of(x);
    let mean_y = mean_of(y);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mean_x) * (b - mean_y);
        sxx += (a - mean_x) * (a - mean_x);
        syy += (b - mean_y) * (b - mean_y);
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    Some((sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0))
}

/// Spearman rank correlation: Pearson correlation of the ranks, with tied values given their average rank.
///
/// Why ranks: predicted-vs-measured relations here are monotone but rarely linear, and a single wild run should not
/// dominate. None if the slices differ in length, n < 3, any value is non-finite, or a variable is constant.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 3 || x.iter().chain(y).any(|v| !v.is_finite()) {
        return None;
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

// ---------------------------------------------------------------------------------------------------------------
// Claims and verdicts
// ---------------------------------------------------------------------------------------------------------------

/// A claim as two points on the interval's scale: `null` (no effect) and `claimed` (the stated or smallest
/// interesting effect). claimed > null means larger values are the claimed direction (speed-up: null 1.0, claimed
/// 1.5; correlation: null 0.0, claimed 0.3); claimed < null means smaller values are (a final-loss difference that
/// should be negative: null 0.0, claimed -0.05).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClaimedEffect {
    pub null: f64,
    pub claimed: f64,
}

/// Outcome of checking a claim against an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Held,
    DidNotHold,
    Inconclusive,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Held => "held",
            Verdict::DidNotHold => "did not hold",
            Verdict::Inconclusive => "inconclusive",
        })
    }
}

/// The direction of a claim read from its interval: Held when the whole interval lies strictly on the claimed side
/// of `null` (the claimed direction is established); DidNotHold only when it lies strictly on the other side (the
/// claimed direction is excluded); Inconclusive otherwise, whatever the size.
///
/// Why direction alone: "1.5x is excluded" is not "not faster". The size is a separate reading
/// ([`claimed_magnitude_excluded`]) that reports print in their own column. E.g. for a claimed 1.5x speed-up,
/// [1.05, 1.3] is Held (with the claimed size excluded), [0.9, 1.2] Inconclusive (size excluded), [0.7, 0.95]
/// DidNotHold, [0.9, 2.0] Inconclusive (size not excluded). A claim without a direction (claimed == null) or with
/// non-finite numbers is Inconclusive.
pub fn verdict(interval: &Interval, effect: &ClaimedEffect) -> Verdict {
    let numbers = [interval.low, interval.high, effect.null, effect.claimed];
    if numbers.iter().any(|v| !v.is_finite()) || effect.claimed == effect.null {
        return Verdict::Inconclusive;
    }
    let larger_is_claimed = effect.claimed > effect.null;
    let (claimed_side, other_side) = if larger_is_claimed {
        (interval.low > effect.null, interval.high < effect.null)
    } else {
        (interval.high < effect.null, interval.low > effect.null)
    };
    if claimed_side {
        Verdict::Held
    } else if other_side {
        Verdict::DidNotHold
    } else {
        Verdict::Inconclusive
    }
}

/// Whether the interval lies entirely short of the claimed effect (for claimed > null: high < claimed; for
/// claimed < null: low > claimed). Reports use it next to a Held verdict to say the magnitude is below the claim.
/// False for a claim without a direction or non-finite numbers.
pub fn claimed_magnitude_excluded(interval: &Interval, effect: &ClaimedEffect) -> bool {
    if !(interval.low.is_finite() && interval.high.is_finite() && effect.claimed.is_finite()) {
        return false;
    }
    if effect.claimed > effect.null {
        interval.high < effect.claimed
    } else if effect.claimed < effect.null {
        interval.low > effect.claimed
    } else {
        false
    }
}

/// Smallest true effect (distance from the null, in the interval's units) that a paired t comparison over `n`
/// seeds with standard deviation of differences `sd` detects with probability about `power` at two-sided `level`:
/// (t_{1-(1-level)/2, n-1} + t_{power, n-1}) * sd / sqrt(n).
///
/// Why report it: with 3-5 seeds a "no difference" result often only means the study could not have seen one; the
/// MDE says how large an effect would have been visible. It is the usual shifted-central-t approximation to the
/// noncentral t power, slightly optimistic for few seeds: simulated power for a nominal 0.8 is about 0.80 at
/// n = 10, 0.79 at n = 5 and 0.77 at n = 3 (see the tests). None for n < 2, a negative or non-finite sd, or level
/// or power outside (0, 1).
pub fn minimum_detectable_effect(sd: f64, n: usize, level: f64, power: f64) -> Option<f64> {
    if n < 2 || !sd.is_finite() || sd < 0.0 || !is_open_probability(level) || !is_open_probability(power) {
        return None;
    }
    let df = (n - 1) as f64;
    let effect = (two_sided_t_critical(level, n) + t_quantile(power, df)) * sd / (n as f64).sqrt();
    effect.is_finite().then_some(effect)
}

// ---------------------------------------------------------------------------------------------------------------
// Run diagnostics
// ---------------------------------------------------------------------------------------------------------------

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
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunOutcome::Trained => "trained",
            RunOutcome::Collapsed => "collapsed",
            RunOutcome::Diverged => "diverged",
        })
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
/// `None` while it is unfinished (running, interrupted, or completed without an evaluation).
pub fn judge_run(state: Option<RunState>, last_eval: Option<&EvalLine>) -> Option<RunOutcome> {
    let final_loss = last_eval.map(|line| line.heldout_loss);
    if state == Some(RunState::Diverged) || final_loss.is_some_and(|loss| !loss.is_finite()) {
        return Some(RunOutcome::Diverged);
    }
    if state != Some(RunState::Completed) {
        return None;
    }
    classify_run(false, final_loss, zero_predictor_loss(last_eval), COLLAPSE_FRACTION)
}

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

    /// Standard normal draw by Box-Muller (rand_distr is not a dependency of this crate).
    fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
        let u1 = 1.0 - rng.random::<f64>(); // in (0, 1], so ln is finite
        let u2 = rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn normals(rng: &mut ChaCha8Rng, n: usize, mean: f64, sd: f64) -> Vec<f64> {
        (0..n).map(|_| mean + sd * standard_normal(rng)).collect()
    }

    fn assert_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
        assert!((actual - expected).abs() <= tolerance, "{what}: got {actual}, expected {expected} +- {tolerance}");
    }

    fn assert_coverage(covered: usize, draws: usize, what: &str) {
        let coverage = covered as f64 / draws as f64;
        assert!((coverage - 0.95).abs() <= 0.015, "{what}: coverage {coverage} outside 0.95 +- 0.015");
    }

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

    // --- verdicts and power ---------------------------------------------------------------------------------------

    fn interval_between(low: f64, high: f64) -> Interval {
        Interval { estimate: (low + high) / 2.0, low, high, n: 5, level: 0.95, method: IntervalMethod::StudentT }
    }

    #[test]
    fn verdict_examples_and_display() {
        let speed_up = ClaimedEffect { null: 1.0, claimed: 1.5 };
        assert_eq!(verdict(&interval_between(1.05, 1.3), &speed_up), Verdict::Held);
        assert!(claimed_magnitude_excluded(&interval_between(1.05, 1.3), &speed_up));
        assert_eq!(verdict(&interval_between(0.9, 1.2), &speed_up), Verdict::Inconclusive, "1.5x excluded, not slower");
        assert!(claimed_magnitude_excluded(&interval_between(0.9, 1.2), &speed_up));
        assert_eq!(verdict(&interval_between(0.7, 0.95), &speed_up), Verdict::DidNotHold, "slower: direction excluded");
        assert_eq!(verdict(&interval_between(0.9, 2.0), &speed_up), Verdict::Inconclusive);
        assert_eq!(verdict(&interval_between(1.2, 2.0), &speed_up), Verdict::Held);
        assert!(!claimed_magnitude_excluded(&interval_between(1.2, 2.0), &speed_up));
        // Touching the null is not "strictly on the claimed side".
        assert_eq!(verdict(&interval_between(1.0, 1.4), &speed_up), Verdict::Inconclusive);
        assert_eq!(verdict(&interval_between(0.8, 1.0), &speed_up), Verdict::Inconclusive);
        assert_eq!(verdict(&interval_between(1.0, 1.6), &speed_up), Verdict::Inconclusive);

        let loss_reduction = ClaimedEffect { null: 0.0, claimed: -0.05 };
        assert_eq!(verdict(&interval_between(-0.1, -0.01), &loss_reduction), Verdict::Held);
        assert_eq!(verdict(&interval_between(-0.03, 0.02), &loss_reduction), Verdict::Inconclusive);
        assert_eq!(verdict(&interval_between(0.01, 0.02), &loss_reduction), Verdict::DidNotHold);
        assert_eq!(verdict(&interval_between(-0.08, 0.02), &loss_reduction), Verdict::Inconclusive);
        assert!(claimed_magnitude_excluded(&interval_between(-0.03, -0.01), &loss_reduction));

        let no_direction = ClaimedEffect { null: 1.0, claimed: 1.0 };
        assert_eq!(verdict(&interval_between(1.1, 1.2), &no_direction), Verdict::Inconclusive);
        assert_eq!(verdict(&interval_between(f64::NAN, 1.2), &speed_up), Verdict::Inconclusive);

        assert_eq!(Verdict::Held.to_string(), "held");
        assert_eq!(Verdict::DidNotHold.to_string(), "did not hold");
        assert_eq!(Verdict::Inconclusive.to_string(), "inconclusive");
    }

    /// Count verdicts over 200 simulated comparisons: held, did not hold, inconclusive, and (a separate
    /// reading) the claimed size excluded.
    fn verdict_counts(mut interval_for_dataset: impl FnMut() -> Interval, effect: &ClaimedEffect) -> [usize; 4] {
        let mut counts = [0; 4];
        for _ in 0..200 {
            let interval = interval_for_dataset();
            match verdict(&interval, effect) {
                Verdict::Held => counts[0] += 1,
                Verdict::DidNotHold => counts[1] += 1,
                Verdict::Inconclusive => counts[2] += 1,
            }
            counts[3] += usize::from(claimed_magnitude_excluded(&interval, effect));
        }
        counts
    }

    #[test]
    fn verdict_flips_with_a_planted_speed_up() {
        // Speed-up = baseline_steps / strategy_steps; seeds share a large multiplicative seed effect.
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut speed_up_interval = |true_ratio: f64, log_noise: f64, seeds: usize| {
            let baseline: Vec<f64> = (0..seeds).map(|_| 10_000.0 * (0.5 * standard_normal(&mut rng)).exp()).collect();
            let steps: Vec<f64> =
                baseline.iter().map(|b| b / true_ratio * (log_noise * standard_normal(&mut rng)).exp()).collect();
            paired_ratio_interval(&baseline, &steps, 0.95).unwrap()
        };
        let claim = ClaimedEffect { null: 1.0, claimed: 1.5 };
        let planted = verdict_counts(|| speed_up_interval(1.6, 0.05, 5), &claim);
        assert_eq!(planted[0], 200, "planted 1.6x speed-up must hold: {planted:?}");
        let removed_few_seeds = verdict_counts(|| speed_up_interval(1.0, 0.05, 5), &claim);
        assert!(removed_few_seeds[0] <= 20, "no speed-up must rarely hold (about 2.5%): {removed_few_seeds:?}");
        // Without an effect the interval lies on either side of 1 by chance in about 2.5% of datasets each (the
        // direction test's false-positive rate); the rest read "not established", and every dataset excludes the
        // claimed 1.5x.
        let removed = verdict_counts(|| speed_up_interval(1.0, 0.05, 10), &claim);
        assert!(removed[2] >= 180 && removed[3] == 200, "no speed-up, 10 seeds, small noise: {removed:?}");
        let noisy = verdict_counts(|| speed_up_interval(1.6, 1.0, 3), &claim);
        assert!(noisy[2] >= 160, "huge noise with 3 seeds must be inconclusive: {noisy:?}");
    }

    #[test]
    fn verdict_flips_with_a_planted_loss_reduction() {
        // Final-loss difference strategy - baseline; the claim is a reduction of at least 0.05.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut difference_interval = |true_difference: f64, noise: f64, seeds: usize| {
            let baseline = normals(&mut rng, seeds, 0.3, 0.05);
            let strategy: Vec<f64> =
                baseline.iter().map(|b| b + true_difference + noise * standard_normal(&mut rng)).collect();
            paired_difference_interval(&strategy, &baseline, 0.95).unwrap()
        };
        let claim = ClaimedEffect { null: 0.0, claimed: -0.05 };
        let planted = verdict_counts(|| difference_interval(-0.08, 0.005, 5), &claim);
        assert_eq!(planted[0], 200, "planted reduction must hold: {planted:?}");
        let removed_few_seeds = verdict_counts(|| difference_interval(0.0, 0.005, 5), &claim);
        assert!(removed_few_seeds[0] <= 20, "no reduction must rarely hold: {removed_few_seeds:?}");
        let removed = verdict_counts(|| difference_interval(0.0, 0.005, 10), &claim);
        assert!(removed[2] >= 180 && removed[3] == 200, "no reduction, 10 seeds, small noise: {removed:?}");
        let noisy = verdict_counts(|| difference_interval(-0.08, 0.2, 3), &claim);
        assert!(noisy[2] >= 160, "huge noise with 3 seeds must be inconclusive: {noisy:?}");
    }

    #[test]
    fn minimum_detectable_effect_known_answer_and_bad_input() {
        // n = 5: (t_{0.975,4} + t_{0.8,4}) * sd / sqrt(5).
        let t_80_df_4 = 0.9409645772351811; // closed form for df = 4, as in the t_quantile test
        let expected = (2.776445105197793 + t_80_df_4) * 2.0 / 5.0f64.sqrt();
        assert_close(minimum_detectable_effect(2.0, 5, 0.95, 0.8).unwrap(), expected, 1e-8, "mde n=5");
        assert_eq!(minimum_detectable_effect(0.0, 5, 0.95, 0.8), Some(0.0));
        assert_eq!(minimum_detectable_effect(1.0, 1, 0.95, 0.8), None);
        assert_eq!(minimum_detectable_effect(-1.0, 5, 0.95, 0.8), None);
        assert_eq!(minimum_detectable_effect(f64::NAN, 5, 0.95, 0.8), None);
        assert_eq!(minimum_detectable_effect(1.0, 5, 0.95, 1.0), None);
    }

    /// Fraction of simulated paired studies (true effect = MDE) whose 95% interval excludes 0.
    fn simulated_power(n: usize, draws: usize, seed: u64) -> f64 {
        let sd = 2.0;
        let effect = minimum_detectable_effect(sd, n, 0.95, 0.8).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let zeros = vec![0.0; n];
        let detected = (0..draws)
            .filter(|_| {
                let differences = normals(&mut rng, n, effect, sd);
                !paired_difference_interval(&differences, &zeros, 0.95).unwrap().contains(0.0)
            })
            .count();
        detected as f64 / draws as f64
    }

    #[test]
    fn minimum_detectable_effect_is_detected_about_80_percent_of_the_time() {
        // The formula shifts a central t instead of using the noncentral t; the approximation is good at n = 10
        // (simulated 0.796 over 40000 draws) and slightly optimistic at n = 5 (0.792) and n = 3 (0.769, ignored test).
        for n in [5, 10] {
            let power = simulated_power(n, 4000, 6 + n as u64);
            assert!((power - 0.8).abs() <= 0.05, "n={n}: simulated power {power}");
        }
    }

    #[test]
    #[ignore = "documents the approximation at n = 3; run with --ignored"]
    fn minimum_detectable_effect_power_at_three_seeds() {
        let power = simulated_power(3, 20_000, 99);
        println!("simulated power at n = 3 for the nominal 0.8 MDE: {power}");
        assert!((power - 0.8).abs() <= 0.05, "n=3: simulated power {power}");
    }

    // --- cluster bootstrap and permutation --------------------------------------------------------------------

    /// A run with a run-level effect shared by all its rows.
    fn simulated_runs(rng: &mut ChaCha8Rng, runs: usize, true_mean: f64) -> Vec<Vec<f64>> {
        (0..runs)
            .map(|_| {
                let run_effect = standard_normal(rng);
                let rows = rng.random_range(5..15);
                (0..rows).map(|_| true_mean + run_effect + standard_normal(rng)).collect()
            })
            .collect()
    }

    fn pooled_mean(runs: &[&Vec<f64>]) -> Option<f64> {
        let count: usize = runs.iter().map(|run| run.len()).sum();
        (count > 0).then(|| runs.iter().flat_map(|run| run.iter()).sum::<f64>() / count as f64)
    }

    #[test]
    fn cluster_bootstrap_interval_is_reproducible_and_rejects_bad_input() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let runs = simulated_runs(&mut rng, 30, 2.0);
        let first = cluster_bootstrap_interval(&runs, pooled_mean, 500, 11, 0.95).unwrap();
        let again = cluster_bootstrap_interval(&runs, pooled_mean, 500, 11, 0.95).unwrap();
        let other_seed = cluster_bootstrap_interval(&runs, pooled_mean, 500, 12, 0.95).unwrap();
        assert_eq!(first, again);
        assert_ne!((first.low, first.high), (other_seed.low, other_seed.high));
        assert_eq!(first.estimate, pooled_mean(&runs.iter().collect::<Vec<_>>()).unwrap());
        assert!(first.low < first.estimate && first.estimate < first.high);
        assert_eq!((first.n, first.method), (30, IntervalMethod::ClusterBootstrapPercentile { resamples: 500 }));

        let empty: Vec<Vec<f64>> = Vec::new();
        assert_eq!(cluster_bootstrap_interval(&empty, pooled_mean, 500, 1, 0.95), None);
        assert_eq!(cluster_bootstrap_interval(&runs, pooled_mean, 0, 1, 0.95), None);
        assert_eq!(cluster_bootstrap_interval(&runs, |_: &[&Vec<f64>]| None, 100, 1, 0.95), None);
        // A statistic defined only when the first run is drawn (probability ~64%) passes the half rule; one that
        // needs a specific run drawn three times (a few percent) does not.
        let needs_first = |sample: &[&Vec<f64>]| sample.iter().any(|r| std::ptr::eq(*r, &runs[0])).then_some(1.0);
        assert!(cluster_bootstrap_interval(&runs, needs_first, 400, 1, 0.95).is_some());
        let needs_first_thrice = |sample: &[&Vec<f64>]| {
            let count = sample.iter().filter(|r| std::ptr::eq(**r, &runs[0])).count();
            (count >= 3 || sample.len() == runs.len() && sample.iter().zip(&runs).all(|(a, b)| std::ptr::eq(*a, b)))
                .then_some(1.0)
        };
        assert_eq!(cluster_bootstrap_interval(&runs, needs_first_thrice, 400, 1, 0.95), None);
    }

    fn bootstrap_coverage(draws: usize, resamples: usize) -> f64 {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let covered = (0..draws)
            .filter(|&draw| {
                let runs = simulated_runs(&mut rng, 30, 2.0);
                cluster_bootstrap_interval(&runs, pooled_mean, resamples, draw as u64, 0.95).unwrap().contains(2.0)
            })
            .count();
        covered as f64 / draws as f64
    }

    #[test]
    fn cluster_bootstrap_interval_covers_the_true_mean() {
        // Percentile bootstrap with 30 clusters under-covers slightly (about 93-94%) and 200 resamples add a
        // little noise to the ends; 500 draws put the binomial sd near 1%.
        let coverage = bootstrap_coverage(500, 200);
        assert!((0.90..=0.97).contains(&coverage), "coverage {coverage}");
    }

    #[test]
    #[ignore = "heavier variant (2000 draws x 2000 resamples); run with --ignored --release"]
    fn cluster_bootstrap_interval_covers_the_true_mean_heavy() {
        let coverage = bootstrap_coverage(2000, 2000);
        assert!((0.92..=0.965).contains(&coverage), "coverage {coverage}");
    }

    #[test]
    fn spearman_known_answers_ties_and_bad_input() {
        // No ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 4 / 120 = 0.8.
        assert_close(spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 1.0, 4.0, 3.0, 5.0]).unwrap(), 0.8, 1e-12, "rho");
        // Ties: y ranks are 1, 2, 3.5, 5, 3.5; Pearson of ranks = 8 / sqrt(10 * 9.5).
        let tied = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]).unwrap();
        assert_close(tied, 8.0 / 95.0f64.sqrt(), 1e-12, "tied rho");
        // Monotone but non-linear relations are perfect rank correlations.
        let x = [0.1, 0.5, 2.0, 3.0, 10.0];
        let cubes: Vec<f64> = x.iter().map(|v| v * v * v).collect();
        let negative_exponentials: Vec<f64> = x.iter().map(|v| (-v).exp()).collect();
        assert_close(spearman(&x, &cubes).unwrap(), 1.0, 1e-12, "monotone increasing");
        assert_close(spearman(&x, &negative_exponentials).unwrap(), -1.0, 1e-12, "monotone decreasing");
        assert_eq!(average_ranks(&[3.0, 1.0, 3.0, 2.0, 3.0]), vec![4.0, 1.0, 4.0, 2.0, 4.0]);
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[4.0, 4.0, 4.0]), None);
        assert_eq!(spearman(&[1.0, 2.0], &[1.0, 2.0]), None);
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[1.0, 2.0]), None);
        assert_eq!(spearman(&[1.0, f64::NAN, 3.0], &[1.0, 2.0, 3.0]), None);
    }

    #[test]
    fn permutation_p_value_detects_association_and_is_uniform_under_the_null() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let x: Vec<f64> = (0..20).map(f64::from).collect();
        let y: Vec<f64> = x.iter().map(|v| v + 0.5 * standard_normal(&mut rng)).collect();
        let strong = permutation_p_value(&x, &y, spearman, 999, 1).unwrap();
        assert!(strong < 0.01, "planted association: p = {strong}");
        assert_eq!(strong, permutation_p_value(&x, &y, spearman, 999, 1).unwrap(), "reproducible");
        // A negative association is just as extreme (two-sided).
        let reversed: Vec<f64> = y.iter().map(|v| -v).collect();
        assert!(permutation_p_value(&x, &reversed, spearman, 999, 1).unwrap() < 0.01);

        let draws = 200;
        let mut p_values = Vec::with_capacity(draws);
        for draw in 0..draws {
            let x = normals(&mut rng, 10, 0.0, 1.0);
            let y = normals(&mut rng, 10, 0.0, 1.0);
            p_values.push(permutation_p_value(&x, &y, spearman, 199, draw as u64).unwrap());
        }
        let mean_p = mean_of(&p_values);
        let rejected = p_values.iter().filter(|&&p| p < 0.05).count() as f64 / draws as f64;
        assert!((0.4..=0.6).contains(&mean_p), "mean p under the null {mean_p}");
        assert!(rejected <= 0.1, "false rejections at 5%: {rejected}");
        // An observed statistic of exactly 0 is the least extreme possible: p = 1.
        assert_eq!(permutation_p_value(&x, &y, |_, _| Some(0.0), 50, 1), Some(1.0));
    }

    #[test]
    fn permutation_p_value_rejects_bad_input() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(permutation_p_value(&x, &[1.0, 2.0], spearman, 99, 1), None);
        assert_eq!(permutation_p_value(&x, &x, spearman, 0, 1), None);
        assert_eq!(permutation_p_value(&x, &[1.0, 1.0, 1.0, 1.0], spearman, 99, 1), None);
        // A statistic that is only defined for the original order fails the half rule.
        let original_only = |a: &[f64], b: &[f64]| (a == b).then_some(1.0);
        assert_eq!(permutation_p_value(&x, &x, original_only, 99, 1), None);
    }

    // --- run diagnostics --------------------------------------------------------------------------------------

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
        assert_eq!(judge_run(completed, Some(&eval(0.1, 1.0))), Some(RunOutcome::Trained));
        assert_eq!(judge_run(completed, Some(&eval(0.95, 1.0))), Some(RunOutcome::Collapsed));
        assert_eq!(judge_run(completed, Some(&eval(0.5, 0.5))), Some(RunOutcome::Collapsed), "the recorded zero loss");
        assert_eq!(judge_run(completed, Some(&eval(0.85, f64::NAN))), Some(RunOutcome::Trained), "1.0 when missing");
        assert_eq!(judge_run(completed, Some(&eval(f64::NAN, 1.0))), Some(RunOutcome::Diverged));
        assert_eq!(judge_run(Some(RunState::Diverged), None), Some(RunOutcome::Diverged));
        assert_eq!(judge_run(Some(RunState::Running), Some(&eval(f64::NAN, 1.0))), Some(RunOutcome::Diverged));
        assert_eq!(judge_run(Some(RunState::Running), Some(&eval(0.1, 1.0))), None, "not finished");
        assert_eq!(judge_run(completed, None), None, "nothing to judge it by");
        assert_eq!(judge_run(None, None), None);
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

    #[test]
    fn a_mean_correlation_interval_stays_within_minus_one_and_one() {
        let interval = mean_correlation_interval(&[-1.0, -0.95, -1.0], 0.95).unwrap();
        assert!(interval.low == -1.0 && interval.high < -0.9, "{interval:?}");
        let unclipped = mean_interval(&[-1.0, -0.95, -1.0], 0.95).unwrap();
        assert!(unclipped.low < -1.0 && unclipped.high == interval.high);
    }
}
