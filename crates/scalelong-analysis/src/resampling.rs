//! Resampling for statistics pooled over rows: the cluster bootstrap over runs, the permutation
//! test of an association, and the rank correlation it permutes.

use crate::inference::{Interval, IntervalMethod, is_open_probability, mean_of};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;

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
}
