//! The forward process `q(x_k | x_0)` and the noise-prediction loss.

use super::schedule::NoiseSchedule;
use burn::prelude::*;

/// A batch noised to per-sample steps, with what the loss needs.
pub struct NoisedBatch {
    /// `[B, C, H, W]`
    pub x_t: Tensor<4>,
    /// `[B, C, H, W]`, the noise that was added.
    pub noise: Tensor<4>,
    /// `[B]`, what the network is shown as time.
    pub model_time: Tensor<1>,
}

impl NoiseSchedule {
    /// `x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps`, one step index per sample.
    ///
    /// # Shapes
    /// - x0, noise: `[B, C, H, W]`; `steps.len() == B`
    pub fn q_sample(&self, x0: Tensor<4>, noise: Tensor<4>, steps: &[usize]) -> NoisedBatch {
        let device = x0.device();
        let batch = steps.len();
        let column = |f: &dyn Fn(usize) -> f64| -> Tensor<4> {
            let values: Vec<f32> = steps.iter().map(|&k| f(k) as f32).collect();
            Tensor::<1>::from_floats(values.as_slice(), &device).reshape([batch, 1, 1, 1]) // [B, 1, 1, 1]
        };
        let signal = column(&|k| self.alpha_bar[k].sqrt());
        let sigma = column(&|k| (1.0 - self.alpha_bar[k]).sqrt());
        let times: Vec<f32> = steps.iter().map(|&k| self.model_time[k] as f32).collect();
        NoisedBatch {
            x_t: x0 * signal + noise.clone() * sigma,
            noise,
            model_time: Tensor::from_floats(times.as_slice(), &device),
        }
    }
}

/// Mean squared error per sample, `[B]`: the loss of each sample's own timestep.
pub fn per_sample_loss(predicted: Tensor<4>, noise: Tensor<4>) -> Tensor<1> {
    let batch = predicted.dims()[0];
    (predicted - noise).square().reshape([batch as i64, -1]).mean_dim(1).reshape([batch])
}

/// The training loss `E ||eps - eps_theta(x_t, t)||^2` (mean over every element).
pub fn noise_prediction_loss(predicted: Tensor<4>, noise: Tensor<4>) -> Tensor<1> {
    (predicted - noise).square().mean()
}
