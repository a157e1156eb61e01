//! Claims and verdicts: a claimed effect against an interval, read as direction (is no effect
//! excluded?) and size (is the claimed effect excluded?), and the smallest effect a design detects.

use std::fmt;

use crate::inference::{Interval, is_open_probability, t_quantile, two_sided_t_critical};
use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::{IntervalMethod, paired_difference_interval, paired_ratio_interval};
    use crate::test_support::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

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
}
