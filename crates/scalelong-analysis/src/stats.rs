//! Small statistics used by the analysis: means, least squares and the exponential decay fit of
//! LS gates (the rank correlation and the intervals are in `inference`).

use serde::{Deserialize, Serialize};

/// Arithmetic mean `sum(v) / n`; `None` for an empty slice.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Means and centred sums of squares and products of paired data, e.g. `Sxy = sum (x - mean_x)(y - mean_y)`.
struct Moments {
    mean_x: f64,
    mean_y: f64,
    sxx: f64,
    syy: f64,
    sxy: f64,
}

impl Moments {
    /// `None` for empty input; the caller checks that the lengths agree.
    fn of(x: &[f64], y: &[f64]) -> Option<Self> {
        let (mean_x, mean_y) = (mean(x)?, mean(y)?);
        let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
        for (xi, yi) in x.iter().zip(y) {
            let (dx, dy) = (xi - mean_x, yi - mean_y);
            sxx += dx * dx;
            syy += dy * dy;
            sxy += dx * dy;
        }
        Some(Self { mean_x, mean_y, sxx, syy, sxy })
    }
}

/// A straight line `y = slope * x + intercept` fitted by least squares, with its coefficient of
/// determination.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LeastSquares {
    pub slope: f64,
    pub intercept: f64,
    /// `1 - SS_res / SS_tot`; 1 when `y` is constant (the line then fits exactly).
    pub r2: f64,
}

/// Ordinary least squares of `y` on `x`: `slope = Sxy / Sxx`, `intercept = mean_y - slope mean_x`.
/// `None` when the lengths differ, there are fewer than 2 points, or `x` is constant.
pub fn least_squares(x: &[f64], y: &[f64]) -> Option<LeastSquares> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let m = Moments::of(x, y)?;
    if m.sxx == 0.0 {
        return None;
    }
    let slope = m.sxy / m.sxx;
    let intercept = m.mean_y - slope * m.mean_x;
    let residual_sum_of_squares: f64 = x.iter().zip(y).map(|(xi, yi)| (yi - slope * xi - intercept).powi(2)).sum();
    let r2 = if m.syy == 0.0 { 1.0 } else { 1.0 - residual_sum_of_squares / m.syy };
    Some(LeastSquares { slope, intercept, r2 })
}

/// `mean_i = a * kappa_hat^(i-1)` fitted to per-LSC means, i = 1 outermost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecayFit {
    pub a: f64,
    pub kappa_hat: f64,
    /// R^2 of the log-linear fit `ln mean_i = ln a + (i-1) ln kappa_hat`, not of the means themselves.
    pub r2: f64,
}

/// Fits `means[i-1] = a * kappa_hat^(i-1)` by least squares of `ln means[i-1]` on `i - 1`
/// (`a = exp(intercept)`, `kappa_hat = exp(slope)`), so exact data are recovered exactly. `None`
/// with fewer than 2 means or any mean <= 0 or non-finite (its logarithm is unusable).
pub fn exp_decay_fit(means: &[f64]) -> Option<DecayFit> {
    if means.len() < 2 || means.iter().any(|&m| !(m > 0.0 && m.is_finite())) {
        return None;
    }
    let exponents: Vec<f64> = (0..means.len()).map(|i| i as f64).collect();
    let log_means: Vec<f64> = means.iter().map(|m| m.ln()).collect();
    let line = least_squares(&exponents, &log_means)?;
    Some(DecayFit { a: line.intercept.exp(), kappa_hat: line.slope.exp(), r2: line.r2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual: f64, expected: f64, tolerance: f64) {
        assert!((actual - expected).abs() <= tolerance, "{actual} is not within {tolerance} of {expected}");
    }

    #[test]
    fn least_squares_matches_hand_computation() {
        // x = 0,1,2,3; y = 1,3,4,8. mean_x 1.5, mean_y 4; Sxy = 4.5+0.5+0+6 = 11, Sxx = 5 ->
        // slope 2.2, intercept 4 - 3.3 = 0.7. Fitted 0.7,2.9,5.1,7.3; residuals .3,.1,-1.1,.7,
        // SS_res = 1.8, SS_tot = 9+1+0+16 = 26 -> r2 = 1 - 1.8/26.
        let line = least_squares(&[0.0, 1.0, 2.0, 3.0], &[1.0, 3.0, 4.0, 8.0]).unwrap();
        assert_close(line.slope, 2.2, 1e-12);
        assert_close(line.intercept, 0.7, 1e-12);
        assert_close(line.r2, 1.0 - 1.8 / 26.0, 1e-12);
        assert_eq!(least_squares(&[2.0, 2.0], &[1.0, 3.0]), None);
        let flat = least_squares(&[1.0, 2.0, 3.0], &[4.0, 4.0, 4.0]).unwrap();
        assert_eq!((flat.slope, flat.intercept, flat.r2), (0.0, 4.0, 1.0));
    }

    #[test]
    fn exp_decay_fit_recovers_exact_gates() {
        for (a, kappa) in [(0.97, 0.5), (1.0, 0.8), (0.6, 1.1)] {
            let gates: Vec<f64> = (0..6).map(|i| a * f64::powi(kappa, i)).collect();
            let fit = exp_decay_fit(&gates).unwrap();
            assert_close(fit.a, a, 1e-9);
            assert_close(fit.kappa_hat, kappa, 1e-9);
            assert_close(fit.r2, 1.0, 1e-9);
        }
    }

    #[test]
    fn exp_decay_fit_rejects_unfittable_input() {
        assert_eq!(exp_decay_fit(&[0.9]), None);
        assert_eq!(exp_decay_fit(&[0.9, 0.0, 0.2]), None);
        assert_eq!(exp_decay_fit(&[0.9, -0.1]), None);
        assert_eq!(exp_decay_fit(&[0.9, f64::NAN]), None);
    }
}
