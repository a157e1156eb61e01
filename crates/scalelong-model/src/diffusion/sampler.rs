//! DDIM (deterministic, eta = 0) and ancestral DDPM sampling over a strided subset of the
//! schedule's steps. Both are the generalised DDIM update; DDPM is its eta = 1 case, whose
//! variance is DDPM's posterior variance `beta_tilde` on the strided steps.

use super::schedule::NoiseSchedule;
use burn::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
pub use scalelong_schema::diffusion::SamplerConfig;

/// Gaussian noise from a seeded stream, identical on every backend.
pub fn seeded_noise(shape: [usize; 4], rng: &mut ChaCha8Rng, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::<1>::from_floats(values.as_slice(), device).reshape(shape)
}

impl NoiseSchedule {
    /// The strided steps a sampler visits, from most to least noisy.
    pub fn sampling_steps(&self, count: usize) -> Vec<usize> {
        let count = count.clamp(1, self.steps());
        let mut steps: Vec<usize> =
            (0..count).map(|i| ((i as f64 + 0.5) * self.steps() as f64 / count as f64) as usize).collect();
        steps.dedup();
        steps.reverse();
        steps
    }

    /// Generates `shape` images from noise seeded by `seed`. `eps(x, model_time)` is the network.
    /// Predictions of `x_0` are clipped to [-1, 1], the data range.
    pub fn sample(
        &self,
        config: SamplerConfig,
        shape: [usize; 4],
        seed: u64,
        device: &Device,
        mut eps: impl FnMut(Tensor<4>, Tensor<1>) -> Tensor<4>,
    ) -> Tensor<4> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = seeded_noise(shape, &mut rng, device);
        let steps = self.sampling_steps(config.steps());
        let eta = config.eta();
        for (i, &k) in steps.iter().enumerate() {
            let abar = self.alpha_bar[k];
            let abar_prev = steps.get(i + 1).map_or(1.0, |&p| self.alpha_bar[p]);
            let time = Tensor::<1>::full([shape[0]], self.model_time[k] as f32, device);
            let eps_hat = eps(x.clone(), time); // [B, C, H, W]
            let x0 = (x.clone() - eps_hat.mul_scalar((1.0 - abar).sqrt())).div_scalar(abar.sqrt()).clamp(-1.0, 1.0);
            // The noise implied by the clipped x_0 keeps the update consistent with it.
            let eps_hat = (x - x0.clone().mul_scalar(abar.sqrt())).div_scalar((1.0 - abar).sqrt());
            let sigma = eta * ((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev)).sqrt();
            let direction = ((1.0 - abar_prev - sigma * sigma).max(0.0)).sqrt();
            x = x0.mul_scalar(abar_prev.sqrt()) + eps_hat.mul_scalar(direction);
            if sigma > 0.0 {
                x = x + seeded_noise(shape, &mut rng, device).mul_scalar(sigma);
            }
        }
        x
    }
}
