//! Evaluation at every checkpoint and at the end of a run: one `eval.jsonl` line
//! (docs/run-folder.md) holding
//! - the held-out denoising loss on the test split, overall and per timestep bin ([`heldout`]);
//! - the Fréchet distance (FD) between classifier features of `fd_samples` EMA samples and of as
//!   many test images ([`frechet`]), and the test accuracy of that classifier ([`classifier`]).
//!
//! The FD is NOT the FID of papers: its features come from a small CNN trained here on the run's
//! own data set (not from Inception-v3 trained on ImageNet), on a few hundred samples (FID uses
//! 10k-50k; the FD of a finite sample is biased upwards, the more so the fewer samples). Its value
//! means something only next to other FDs from the same classifier cache, sample count and data:
//! across the runs and steps of one sweep. The classifier's test accuracy is written next to every
//! FD because a poor classifier makes a poor feature space.

mod classifier;
mod frechet;
mod heldout;

use anyhow::Result;
use burn::prelude::*;
use classifier::load_or_train;
use frechet::{FeatureStats, frechet_distance};
use heldout::heldout_loss;
use scalelong_data::ImageSet;
use scalelong_model::diffusion::{NoiseSchedule, SamplerConfig};
use scalelong_model::{DiffusionNet, ModelConfig};
use scalelong_schema::{EvalConfig, EvalLine};

/// The seed of the sampling noise of the FD samples, shared by every run of a sweep.
const FD_SEED: u64 = 0xfd5a_3e1e;
/// Samples generated per call of the sampler: bounds memory (attention over a whole batch).
const SAMPLE_BATCH: usize = 64;

/// Evaluates the EMA weights `ema` after `step` optimizer steps, the FD too when `with_fd` (and
/// `config.fd_samples > 0`). `device` may be the training
/// device (autodiff): inference runs on `device.inner()`, where the EMA lives. The first call of
/// a sweep with `fd_samples > 0` trains the FD classifier (minutes; see [`classifier`]), later
/// calls and other runs load it from `config.cache_dir`.
// The training loop holds these as separate values; a struct made only for this call would add a
// type without adding meaning.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    step: u64,
    ema: &DiffusionNet,
    model_config: &ModelConfig,
    schedule: &NoiseSchedule,
    sampler: SamplerConfig,
    test_set: &ImageSet,
    train_set: &ImageSet,
    config: &EvalConfig,
    with_fd: bool,
    device: &Device,
) -> Result<EvalLine> {
    let heldout = heldout_loss(ema, schedule, test_set, config.heldout_images, config.t_bins, device)?;
    let (fd, classifier_accuracy, n_samples) = if config.fd_samples == 0 || !with_fd {
        (None, None, 0)
    } else {
        let classifier = load_or_train(train_set, test_set, config.classifier_epochs, &config.cache_dir, device)?;
        let n = config.fd_samples.min(test_set.len());
        let device = device.clone().inner();
        let generated = generate_samples(ema, model_config, schedule, sampler, n, &device);
        let real = image_batch(test_set, &(0..n).collect::<Vec<_>>(), &device);
        let stats = |images: Tensor<4>| -> Result<FeatureStats> {
            let features = classifier
                .model
                .features(images)
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(FeatureStats::from_rows(&features, classifier::FEATURE_DIM))
        };
        let fd = frechet_distance(&stats(generated)?, &stats(real)?);
        (Some(fd), Some(classifier.info.test_accuracy), n as u64)
    };
    Ok(EvalLine {
        step,
        heldout_loss: heldout.mean,
        heldout_loss_bins: heldout.bins,
        zero_predictor_loss: heldout.zero_predictor,
        fd,
        classifier_accuracy,
        n_samples,
    })
}

/// `count` EMA samples, `SAMPLE_BATCH` at a time, batch `i` from the noise seed `FD_SEED + i`.
///
/// # Shapes
/// - output: `[count, C, H, W]`
fn generate_samples(
    ema: &DiffusionNet,
    model_config: &ModelConfig,
    schedule: &NoiseSchedule,
    sampler: SamplerConfig,
    count: usize,
    device: &Device,
) -> Tensor<4> {
    let [c, h, w] = model_config.image_shape();
    let batches = (0..count).step_by(SAMPLE_BATCH).enumerate().map(|(i, start)| {
        let shape = [SAMPLE_BATCH.min(count - start), c, h, w];
        schedule.sample(sampler, shape, FD_SEED + i as u64, device, |x, t| ema.forward(x, t, None))
    });
    Tensor::cat(batches.collect(), 0)
}

/// Images `indices` of `set`, in that order.
///
/// # Shapes
/// - output: `[indices.len(), C, H, W]`
fn image_batch(set: &ImageSet, indices: &[usize], device: &Device) -> Tensor<4> {
    let pixels: Vec<f32> = indices.iter().flat_map(|&i| set.image(i).iter().copied()).collect();
    Tensor::<1>::from_floats(pixels.as_slice(), device).reshape([indices.len(), set.channels, set.height, set.width])
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalelong_model::SkipScaling;
    use scalelong_model::diffusion::ScheduleConfig;
    use scalelong_model::uvit::UViTConfig;

    #[test]
    fn evaluate_writes_the_run_folder_line_and_repeats_itself() {
        let device = Device::flex().autodiff();
        let model_config = ModelConfig::Uvit(UViTConfig::tiny(2));
        device.seed(3);
        let ema = model_config.init(SkipScaling::Original, &device).valid();
        let schedule = NoiseSchedule::new(&ScheduleConfig::default());
        // Synthetic labels count the shapes: 3 classes.
        let (train_set, test_set) = (scalelong_data::synthetic(96, 1, 8, 1), scalelong_data::synthetic(80, 1, 8, 2));
        let cache_dir = std::env::temp_dir().join(format!("scalelong-eval-evaluate-{}", std::process::id()));
        let config = EvalConfig {
            fd_every: 0,
            heldout_images: 12,
            t_bins: 3,
            fd_samples: 70,
            classifier_epochs: 1,
            cache_dir: cache_dir.clone(),
            ..EvalConfig::default()
        };
        config.validate(schedule.steps()).unwrap();
        let sampler = SamplerConfig::Ddim { steps: 2 };
        let line = evaluate(7, &ema, &model_config, &schedule, sampler, &test_set, &train_set, &config, true, &device)
            .unwrap();

        assert_eq!(line.heldout_loss_bins.len(), 3);
        assert_eq!(line.n_samples, 70, "more than one sampling batch");
        assert!(line.fd.is_some_and(|fd| fd.is_finite() && fd > 0.0), "{line:?}");
        let json: serde_json::Value = serde_json::to_value(&line).unwrap();
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "classifier_accuracy",
                "fd",
                "heldout_loss",
                "heldout_loss_bins",
                "n_samples",
                "step",
                "zero_predictor_loss"
            ]
        );
        assert!((line.zero_predictor_loss - 1.0).abs() < 0.2, "the mean squared noise: {}", line.zero_predictor_loss);
        assert_eq!(json["step"], 7);

        let again = evaluate(7, &ema, &model_config, &schedule, sampler, &test_set, &train_set, &config, true, &device)
            .unwrap();
        assert_eq!(again, line, "the same weights evaluate to the same line");
        let skipped = EvalConfig { fd_samples: 0, ..config };
        let line = evaluate(7, &ema, &model_config, &schedule, sampler, &test_set, &train_set, &skipped, true, &device)
            .unwrap();
        assert_eq!((line.fd, line.classifier_accuracy, line.n_samples), (None, None, 0));
        assert_eq!(serde_json::to_value(&line).unwrap()["fd"], serde_json::Value::Null);
        std::fs::remove_dir_all(&cache_dir).unwrap();
    }
}
