//! Helpers of the statistics' tests: normal draws and tolerance checks.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Standard normal draw by Box-Muller (rand_distr is not a dependency of this crate).
pub(crate) fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // in (0, 1], so ln is finite
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

pub(crate) fn normals(rng: &mut ChaCha8Rng, n: usize, mean: f64, sd: f64) -> Vec<f64> {
    (0..n).map(|_| mean + sd * standard_normal(rng)).collect()
}

pub(crate) fn assert_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    assert!((actual - expected).abs() <= tolerance, "{what}: got {actual}, expected {expected} +- {tolerance}");
}

pub(crate) fn assert_coverage(covered: usize, draws: usize, what: &str) {
    let coverage = covered as f64 / draws as f64;
    assert!((coverage - 0.95).abs() <= 0.015, "{what}: coverage {coverage} outside 0.95 +- 0.015");
}
