//! The wgpu backend trains like the flex backend: the same few training steps (forward, backward,
//! AdamW, exactly as `train.rs` takes them) from the same weights on the same batches give the
//! same losses and the same updated weights, within float tolerance. On wgpu the model runs burn's
//! reference compositions where flex runs the fused kernels of `scalelong_model::ops`, so this
//! also checks those kernels against the reference on a second backend.
//!
//! Built only with `--features wgpu` (`just test` builds it). Needs a Vulkan device: any GPU
//! driver, or Debian's `mesa-vulkan-drivers` (lavapipe, a software Vulkan driver that
//! `scripts/bootstrap.sh` installs). Without one the test fails where the `CI` environment
//! variable is set and is skipped, with a notice, elsewhere.
#![cfg(feature = "wgpu")]

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::{DeviceKind, DeviceType};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scalelong_data::synthetic;
use scalelong_model::diffusion::{NoiseSchedule, ScheduleConfig, noise_prediction_loss, seeded_noise};
use scalelong_model::unet::UNetConfig;
use scalelong_model::uvit::UViTConfig;
use scalelong_model::{DiffusionNet, ModelConfig, SkipScaling};
use scalelong_tests::{TempDir, write_config};
use std::time::Instant;

const STEPS: u64 = 3;
const BATCH: usize = 4;
const SIZE: usize = 16;
/// Larger than the configs' 2e-4 so that three steps move the weights well clear of rounding.
const LR: f64 = 1e-3;

/// Largest relative difference allowed between the two backends' losses at each step. Measured:
/// at most 3.3e-7.
const LOSS_RTOL: f64 = 1e-4;
/// Largest allowed `‖W_wgpu - W_flex‖ / ‖W_flex - W_0‖` over all parameters: the two backends'
/// weights after the steps differ by at most this fraction of the distance the steps moved them.
/// Measured: 6e-5 (U-ViT), 7e-4 (UNet).
const UPDATE_RTOL: f64 = 5e-3;
/// The same ratio for each parameter tensor, so that one small tensor (a gate, a bias) trained
/// wrong cannot hide in the total. Gradients that are zero in exact arithmetic (an attention key's
/// bias: softmax ignores a constant added to a row of scores) are rounding noise that AdamW scales
/// up to full-size steps, differently on each backend: measured at most 1.2e-2 (the UNet
/// attention's qkv bias), 1.7e-4 for the U-ViT.
const TENSOR_RTOL: f64 = 0.05;

/// The wgpu device, or `None` (after a notice) where this machine has none and `CI` is unset.
fn wgpu_device() -> Option<Device> {
    if Device::enumerate(DeviceType::Wgpu).is_empty() {
        let why =
            "no wgpu adapter (no Vulkan driver: install the GPU's, or Debian's mesa-vulkan-drivers and libvulkan1)";
        assert!(std::env::var_os("CI").is_none(), "CI must run the wgpu agreement test, but there is {why}");
        eprintln!("skipped: {why}");
        return None;
    }
    Some(Device::wgpu(DeviceKind::DefaultDevice))
}

/// Every float parameter, flattened, in visiting order.
fn weights(model: &DiffusionNet) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().into_data().try_to_vec::<f32>().expect("f32 parameters"));
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

/// One run of `STEPS` steps on `device`: the per-step losses and the final model. The batches and
/// the per-step timesteps and noise are drawn on the host from seeded streams, as in `train.rs`.
fn train_steps(mut model: DiffusionNet, device: &Device) -> (Vec<f64>, DiffusionNet) {
    let schedule = NoiseSchedule::new(&ScheduleConfig::VpSde { steps: 1000, beta_min: 0.1, beta_max: 20.0 });
    let data = synthetic(BATCH * STEPS as usize, 1, SIZE, 7);
    let per_image = SIZE * SIZE;
    let mut optimizer: ModuleOptimizer =
        AdamWConfig::new().with_beta_1(0.99).with_beta_2(0.999).with_epsilon(1e-8).with_weight_decay(0.03).init();
    let mut losses = Vec::new();
    for step in 1..=STEPS {
        let first = (step as usize - 1) * BATCH;
        let pixels = &data.pixels[first * per_image..(first + BATCH) * per_image];
        let x0 = Tensor::<1>::from_floats(pixels, device).reshape([BATCH, 1, SIZE, SIZE]);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        rng.set_stream(step);
        let steps: Vec<usize> = (0..BATCH).map(|_| rng.random_range(0..schedule.steps())).collect();
        let noise = seeded_noise([BATCH, 1, SIZE, SIZE], &mut rng, device);
        let noised = schedule.q_sample(x0, noise, &steps);
        let loss = noise_prediction_loss(model.forward(noised.x_t, noised.model_time, None), noised.noise);
        losses.push(loss.clone().into_scalar::<f32>() as f64);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(LR, model, grads);
    }
    (losses, model)
}

/// Trains a copy of `config`'s freshly initialised network on flex and on wgpu and compares.
fn agree(name: &str, config: ModelConfig, scaling: SkipScaling, wgpu: &Device) {
    let flex = Device::flex().autodiff();
    flex.seed(3);
    let initial = config.init(scaling, &flex);
    let initial_weights = weights(&initial); // also initialises every (lazy) parameter on flex
    let on_wgpu = initial.clone().fork(&wgpu.clone().autodiff());
    assert_eq!(weights(&on_wgpu), initial_weights, "{name}: fork copies the weights");

    let started = Instant::now();
    let (flex_losses, flex_model) = train_steps(initial, &flex);
    let flex_time = started.elapsed();
    let started = Instant::now();
    let (wgpu_losses, wgpu_model) = train_steps(on_wgpu, &wgpu.clone().autodiff());
    let wgpu_time = started.elapsed();

    let loss_rel: Vec<f64> = flex_losses.iter().zip(&wgpu_losses).map(|(a, b)| (a - b).abs() / a.abs()).collect();
    // Per parameter tensor: ‖W_wgpu - W_flex‖ and the update ‖W_flex - W_0‖.
    let (flex_w, wgpu_w) = (weights(&flex_model), weights(&wgpu_model));
    let norms: Vec<(f64, f64)> = flex_w
        .iter()
        .zip(&wgpu_w)
        .zip(&initial_weights)
        .map(|((f, w), w0)| {
            let dist = |a: &[f32], b: &[f32]| {
                a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>().sqrt()
            };
            (dist(f, w), dist(f, w0))
        })
        .collect();
    let total = |pick: fn(&(f64, f64)) -> f64| norms.iter().map(|n| pick(n).powi(2)).sum::<f64>().sqrt();
    let update_rel = total(|n| n.0) / total(|n| n.1);
    let worst = norms
        .iter()
        .enumerate()
        .max_by(|a, b| (a.1.0 / a.1.1.max(1e-30)).total_cmp(&(b.1.0 / b.1.1.max(1e-30))))
        .unwrap();
    let max_abs =
        flex_w.iter().flatten().zip(wgpu_w.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let loss_rel_text: Vec<String> = loss_rel.iter().map(|r| format!("{r:.1e}")).collect();
    eprintln!(
        "{name}: losses flex {flex_losses:.6?} wgpu {wgpu_losses:.6?}, relative differences [{}]; after {STEPS} steps \
         ‖W_wgpu - W_flex‖ / ‖W_flex - W_0‖ = {update_rel:.1e} over all weights, at most {:.1e} for one tensor \
         (#{} of {}), max |W_wgpu - W_flex| = {max_abs:.1e} (lr {LR:e}); flex {flex_time:.2?}, wgpu {wgpu_time:.2?}",
        loss_rel_text.join(", "),
        worst.1.0 / worst.1.1,
        worst.0,
        norms.len(),
    );
    assert!(total(|n| n.1) > 0.0, "{name}: the steps moved the weights");
    for (step, rel) in loss_rel.iter().enumerate() {
        assert!(
            *rel <= LOSS_RTOL,
            "{name}: step {} loss differs by {rel:.1e} (relative) between flex and wgpu",
            step + 1
        );
    }
    assert!(
        update_rel <= UPDATE_RTOL,
        "{name}: weights after {STEPS} steps differ by {update_rel:.1e} of the update between flex and wgpu"
    );
    for (k, (diff, update)) in norms.iter().enumerate() {
        assert!(
            *diff <= TENSOR_RTOL * update + 1e-7,
            "{name}: parameter tensor #{k} differs by {diff:.1e} between flex and wgpu after {STEPS} steps, its update is {update:.1e}"
        );
    }
}

#[test]
fn uvit_and_unet_train_the_same_on_wgpu_and_flex() {
    let Some(wgpu) = wgpu_device() else { return };
    // 2 long skips, LS gates (the fused attention runs on flex, the reference on wgpu).
    let uvit = ModelConfig::Uvit(UViTConfig {
        img_size: SIZE,
        patch_size: 4,
        embed_dim: 32,
        depth: 4,
        num_heads: 2,
        ..UViTConfig::default()
    });
    agree("uvit", uvit, SkipScaling::Learnable { shared: true, reduction: 16 }, &wgpu);
    // Conv, group norm, attention at the lowest level; constant scaling.
    let unet = ModelConfig::Unet(UNetConfig {
        img_size: SIZE,
        base_channels: 8,
        channel_mult: vec![1, 2],
        attention_heads: 2,
        norm_groups: 4,
        ..UNetConfig::default()
    });
    agree("unet", unet, SkipScaling::Constant { kappa: 0.5 }, &wgpu);
}

/// `scalelong train --device wgpu` runs the whole loop (diagnostics, samples, evaluation,
/// checkpoint) on wgpu.
#[test]
fn the_binary_trains_on_wgpu() {
    if wgpu_device().is_none() {
        return;
    }
    let dir = TempDir::new("wgpu-train");
    let config = write_config(
        &dir,
        "tiny.toml",
        &scalelong_tests::TINY_CONFIG
            .replace("steps = 8", "steps = 2")
            .replace("checkpoint_every = 3", "checkpoint_every = 0"),
    );
    let started = Instant::now();
    let output = scalelong_tests::train(&dir, &config, "run", &["--device", "wgpu"]);
    assert!(output.status.success(), "train --device wgpu failed:\n{}", scalelong_tests::stderr(&output));
    eprintln!(
        "scalelong train --device wgpu, 2 steps with diagnostics, samples and evaluation: {:.2?}",
        started.elapsed()
    );
    let metrics = scalelong_tests::jsonl(&dir.join("run/metrics.jsonl"));
    assert_eq!(metrics.len(), 2);
    assert!(metrics.iter().all(|m| m["loss"].as_f64().is_some_and(f64::is_finite)));
    assert!(dir.join("run/checkpoint/model.bpk").exists());
}
