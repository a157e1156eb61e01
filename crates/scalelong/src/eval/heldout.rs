//! The held-out denoising loss: the noise-prediction loss on test images the network never trains
//! on, at a fixed grid of timesteps with fixed noise, so that two evaluations of the same weights
//! give the same number and evaluations of different steps, strategies and seeds compare.
//!
//! The grid is the diagnostics probe's layout: `n` bins, bin `b` covering the schedule's steps
//! `[b T / n, (b + 1) T / n)` (bin 0 = least noise), `per_bin` samples spread evenly inside each
//! bin. Sample `j` is test image `j` at the `j`-th grid step, so each bin sees its own images; the
//! images, steps and noise do not depend on the run (not even on its seed).

use super::image_batch;
use anyhow::{Result, bail};
use burn::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scalelong_data::ImageSet;
use scalelong_model::DiffusionNet;
use scalelong_model::diffusion::{NoiseSchedule, per_sample_loss, seeded_noise};

/// The seed of the held-out noise, shared by every run so that all see the same noise.
const HELDOUT_NOISE_SEED: u64 = 0x4e1d_0a7a;

/// Images per forward pass: bounds memory, does not change the result.
const BATCH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct HeldoutLoss {
    /// Mean over all samples (equal to the mean of the bin means: every bin has `per_bin`).
    pub mean: f64,
    /// Mean per timestep bin, bin 0 = least noise.
    pub bins: Vec<f64>,
    /// The loss of predicting zero noise on the same samples: the mean squared noise (about 1),
    /// the level a network that learned nothing sits at.
    pub zero_predictor: f64,
}

/// The schedule step of every held-out sample: `t_bins * per_bin` steps, bin after bin (the
/// formula of the diagnostics probe in `scalelong-diagnostics`).
pub fn grid_steps(schedule_steps: usize, t_bins: usize, per_bin: usize) -> Vec<usize> {
    let t = schedule_steps as f64;
    (0..t_bins * per_bin)
        .map(|j| (((j / per_bin) as f64 + ((j % per_bin) as f64 + 0.5) / per_bin as f64) * t / t_bins as f64) as usize)
        .collect()
}

/// `t_bins` must split the schedule into non-empty bins.
pub fn check_bins(t_bins: usize, schedule_steps: usize) -> Result<()> {
    if t_bins == 0 || t_bins > schedule_steps {
        bail!("eval.t_bins: {t_bins} must lie in 1..={schedule_steps} (the schedule's steps)");
    }
    Ok(())
}

/// The held-out loss of `net` on the first `images` test images, rounded down to a multiple of
/// `t_bins` (512 images in 10 bins: 510, 51 a bin) and capped at the test set's size. `device`
/// may carry autodiff; the loss is computed without it (on `device.inner()`, where the EMA
/// weights live).
pub fn heldout_loss(
    net: &DiffusionNet,
    schedule: &NoiseSchedule,
    test_set: &ImageSet,
    images: usize,
    t_bins: usize,
    device: &Device,
) -> Result<HeldoutLoss> {
    check_bins(t_bins, schedule.steps())?;
    let per_bin = images.min(test_set.len()) / t_bins;
    if per_bin == 0 {
        bail!(
            "eval.heldout_images: {images} (test set: {} images) gives no image to each of the {t_bins} timestep bins",
            test_set.len()
        );
    }
    let device = device.clone().inner();
    let steps = grid_steps(schedule.steps(), t_bins, per_bin);
    let mut rng = ChaCha8Rng::seed_from_u64(HELDOUT_NOISE_SEED);
    let mut losses = Vec::with_capacity(steps.len());
    let mut noise_squares = 0.0;
    // The noise stream is drawn batch after batch in sample order, so it is the same for any BATCH.
    for start in (0..steps.len()).step_by(BATCH) {
        let indices: Vec<usize> = (start..(start + BATCH).min(steps.len())).collect();
        let x0 = image_batch(test_set, &indices, &device); // [B, C, H, W]
        let noise = seeded_noise(x0.dims(), &mut rng, &device);
        noise_squares += noise.clone().square().mean().into_scalar::<f32>() as f64 * indices.len() as f64;
        let noised = schedule.q_sample(x0, noise, &steps[start..start + indices.len()]);
        let predicted = net.forward(noised.x_t, noised.model_time, None);
        let batch_losses = per_sample_loss(predicted, noised.noise)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        losses.extend(batch_losses.into_iter().map(f64::from));
    }
    let bins: Vec<f64> = losses.chunks(per_bin).map(|bin| bin.iter().sum::<f64>() / per_bin as f64).collect();
    let zero_predictor = noise_squares / steps.len() as f64;
    Ok(HeldoutLoss { mean: bins.iter().sum::<f64>() / t_bins as f64, bins, zero_predictor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalelong_model::ModelConfig;
    use scalelong_model::SkipScaling;
    use scalelong_model::diffusion::ScheduleConfig;
    use scalelong_model::uvit::UViTConfig;

    fn tiny_net(seed: u64, device: &Device) -> DiffusionNet {
        let config = ModelConfig::Uvit(UViTConfig::tiny(2));
        device.seed(seed);
        config.init(SkipScaling::Original, device)
    }

    #[test]
    fn grid_spreads_samples_evenly_inside_each_bin() {
        // T = 1000, 4 bins of 250 steps, 2 samples a bin: at 1/4 and 3/4 of each bin.
        assert_eq!(grid_steps(1000, 4, 2), vec![62, 187, 312, 437, 562, 687, 812, 937]);
    }

    #[test]
    fn same_weights_give_the_same_loss_and_different_weights_a_different_one() {
        let device = Device::flex();
        let schedule = NoiseSchedule::new(&ScheduleConfig::default());
        let test_set = scalelong_data::synthetic(70, 1, 8, 5);
        let net = tiny_net(1, &device);
        // 70 images in 4 bins: 17 a bin, 68 in all, more than one batch of BATCH.
        let first = heldout_loss(&net, &schedule, &test_set, 70, 4, &device).unwrap();
        assert_eq!(first.bins.len(), 4);
        assert!(first.mean.is_finite() && first.mean > 0.0);
        assert!((first.mean - first.bins.iter().sum::<f64>() / 4.0).abs() < 1e-12);
        assert_eq!(heldout_loss(&net.clone(), &schedule, &test_set, 70, 4, &device).unwrap(), first);
        // The autodiff device evaluates on its inner backend: the same number.
        assert_eq!(heldout_loss(&net, &schedule, &test_set, 70, 4, &device.clone().autodiff()).unwrap(), first);
        let other = heldout_loss(&tiny_net(2, &device), &schedule, &test_set, 70, 4, &device).unwrap();
        assert_ne!(other.mean, first.mean);
    }

    #[test]
    fn too_few_images_for_the_bins_is_an_error_naming_the_key() {
        let device = Device::flex();
        let schedule = NoiseSchedule::new(&ScheduleConfig::default());
        let test_set = scalelong_data::synthetic(3, 1, 8, 5);
        let error = heldout_loss(&tiny_net(1, &device), &schedule, &test_set, 512, 4, &device).unwrap_err();
        assert!(error.to_string().contains("eval.heldout_images"), "{error}");
    }
}
