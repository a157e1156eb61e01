//! The Fréchet distance between two feature sets, each summarised by its mean and covariance:
//!
//! `FD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})`
//!
//! the 2-Wasserstein distance between the Gaussians fitted to the two sets (the formula of FID).
//! Everything is computed in f64. Both square roots come from nalgebra's symmetric
//! eigendecomposition: `S1^{1/2} = V diag(sqrt(l)) V^T`, and `Tr(M^{1/2})` for the symmetric
//! positive semi-definite `M = S1^{1/2} S2 S1^{1/2}` is the sum of the square roots of its
//! eigenvalues.
//!
//! Covariances estimated from fewer samples than dimensions (or of features that are always 0,
//! dead ReLUs) are singular: rounding turns their zero eigenvalues into values of about
//! `±1e-16` times the largest, some negative. Every eigenvalue below the rank tolerance
//! `dim * f64::EPSILON * max |eigenvalue|` (numpy's `matrix_rank` default) is set to exactly 0
//! before the square root: negative ones have no real root, and the root would blow a `1e-16`
//! rounding error up to `1e-8` per null direction (FD(X, X) of a 16-dimensional set of 8 vectors
//! came out as -1e-7 without it).

use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// The mean and covariance of a set of feature vectors.
#[derive(Debug, Clone)]
pub struct FeatureStats {
    pub mean: DVector<f64>,
    pub covariance: DMatrix<f64>,
}

impl FeatureStats {
    /// Mean and unbiased covariance (divided by `n - 1`, as `numpy.cov` in FID code) of `n`
    /// feature vectors of length `dim`, stored row after row.
    ///
    /// # Panics
    /// If `features.len()` is not a multiple of `dim`, or there are fewer than 2 vectors.
    pub fn from_rows(features: &[f32], dim: usize) -> Self {
        assert!(
            dim > 0 && features.len().is_multiple_of(dim),
            "features: {} values are not rows of {dim}",
            features.len()
        );
        let n = features.len() / dim;
        assert!(n >= 2, "a covariance needs at least 2 feature vectors, got {n}");
        let rows = DMatrix::from_row_iterator(n, dim, features.iter().map(|&v| f64::from(v))); // [n, dim]
        let mean = rows.row_mean().transpose(); // [dim]
        let mut centred = rows;
        for mut row in centred.row_iter_mut() {
            row -= mean.transpose();
        }
        let covariance = centred.transpose() * &centred / (n - 1) as f64; // [dim, dim]
        Self { mean, covariance }
    }
}

/// The Fréchet distance between the Gaussians `N(a.mean, a.covariance)` and
/// `N(b.mean, b.covariance)`; see the module note for how it is computed.
///
/// # Panics
/// If the two have different dimensions.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> f64 {
    assert_eq!(a.mean.len(), b.mean.len(), "feature dimensions differ");
    let mean_term = (&a.mean - &b.mean).norm_squared();
    let sqrt_a = symmetric_sqrt(&a.covariance);
    let product = &sqrt_a * &b.covariance * &sqrt_a;
    // Rounding breaks the exact symmetry of the product; the eigensolver assumes it.
    let product = (&product + product.transpose()) * 0.5;
    let trace_sqrt_product = clamped_roots(&SymmetricEigen::new(product).eigenvalues).sum();
    mean_term + a.covariance.trace() + b.covariance.trace() - 2.0 * trace_sqrt_product
}

/// The square root of a symmetric positive semi-definite matrix.
fn symmetric_sqrt(matrix: &DMatrix<f64>) -> DMatrix<f64> {
    let eigen = SymmetricEigen::new(matrix.clone());
    &eigen.eigenvectors * DMatrix::from_diagonal(&clamped_roots(&eigen.eigenvalues)) * eigen.eigenvectors.transpose()
}

/// Square roots of the eigenvalues of a positive semi-definite matrix, those below the rank
/// tolerance set to 0 (see the module note).
fn clamped_roots(eigenvalues: &DVector<f64>) -> DVector<f64> {
    let tolerance = eigenvalues.len() as f64 * f64::EPSILON * eigenvalues.amax();
    eigenvalues.map(|l| if l > tolerance { l.sqrt() } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `n` rows of `dim` values uniform in [-1, 1).
    fn random_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// A rotation of the plane spanned by axes 0 and 1, to make covariances non-diagonal.
    fn rotation(dim: usize, angle: f64) -> DMatrix<f64> {
        let mut q = DMatrix::identity(dim, dim);
        let (s, c) = angle.sin_cos();
        q[(0, 0)] = c;
        q[(0, 1)] = -s;
        q[(1, 0)] = s;
        q[(1, 1)] = c;
        q
    }

    fn assert_relative_eq(actual: f64, expected: f64) {
        assert!((actual - expected).abs() <= 1e-6 * expected.abs(), "got {actual}, expected {expected}");
    }

    #[test]
    fn distance_of_a_set_to_itself_is_zero() {
        // 64 vectors in 16 dimensions: a full-rank covariance. 8 vectors: a singular one, where
        // the rank tolerance matters.
        for n in [64, 8] {
            let stats = FeatureStats::from_rows(&random_rows(n, 16, 1), 16);
            let fd = frechet_distance(&stats, &stats);
            assert!(fd.abs() < 1e-8, "FD(X, X) = {fd} with {n} vectors");
        }
    }

    #[test]
    fn diagonal_gaussians_match_the_closed_form() {
        // Diagonal covariances commute: FD = ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
        let a = FeatureStats {
            mean: DVector::from_vec(vec![0.0, 1.0, -2.0]),
            covariance: DMatrix::from_diagonal(&DVector::from_vec(vec![1.0, 4.0, 0.25])),
        };
        let b = FeatureStats {
            mean: DVector::from_vec(vec![1.0, 1.0, 0.0]),
            covariance: DMatrix::from_diagonal(&DVector::from_vec(vec![9.0, 1.0, 1.0])),
        };
        let expected = (1.0 + 0.0 + 4.0) + (1.0f64 - 3.0).powi(2) + (2.0f64 - 1.0).powi(2) + (0.5f64 - 1.0).powi(2);
        assert_relative_eq(frechet_distance(&a, &b), expected);
    }

    #[test]
    fn rotated_gaussian_against_identity_matches_the_closed_form() {
        // S1 = I, S2 = Q diag(l) Q^T: FD = sum_i (1 - sqrt(l_i))^2, with a non-diagonal S2.
        let eigenvalues = [4.0, 0.25, 2.0, 1.0];
        let q = rotation(4, 0.7);
        let s2 = &q * DMatrix::from_diagonal(&DVector::from_row_slice(&eigenvalues)) * q.transpose();
        let a = FeatureStats { mean: DVector::zeros(4), covariance: DMatrix::identity(4, 4) };
        let b = FeatureStats { mean: DVector::zeros(4), covariance: s2 };
        let expected: f64 = eigenvalues.iter().map(|l: &f64| (1.0 - l.sqrt()).powi(2)).sum();
        assert_relative_eq(frechet_distance(&a, &b), expected);
    }

    #[test]
    fn distance_is_symmetric() {
        let x = FeatureStats::from_rows(&random_rows(40, 12, 2), 12);
        let shifted: Vec<f32> = random_rows(40, 12, 3).iter().map(|v| 2.0 * v + 0.5).collect();
        let y = FeatureStats::from_rows(&shifted, 12);
        let (xy, yx) = (frechet_distance(&x, &y), frechet_distance(&y, &x));
        assert!(xy > 1.0, "distinct sets are far apart: {xy}");
        assert_relative_eq(xy, yx);
    }

    #[test]
    fn statistics_are_the_sample_mean_and_unbiased_covariance() {
        // Rows (0, 0), (2, 2), (4, -2): mean (2, 0), deviations (-2, 0), (0, 2), (2, -2),
        // covariance (sum of their outer products) / 2 = [[4, -2], [-2, 4]].
        let stats = FeatureStats::from_rows(&[0.0, 0.0, 2.0, 2.0, 4.0, -2.0], 2);
        assert_eq!(stats.mean, DVector::from_vec(vec![2.0, 0.0]));
        assert_eq!(stats.covariance, DMatrix::from_row_slice(2, 2, &[4.0, -2.0, -2.0, 4.0]));
    }
}
