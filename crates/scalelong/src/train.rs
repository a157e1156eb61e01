//! One training run: the unit every sweep repeats.
//!
//! The loop (nanoGPT-style, one screen): draw a batch, noise it at random steps, predict the noise,
//! backward, check for divergence, clip, AdamW, EMA, then log / record diagnostics / sample /
//! checkpoint on their intervals. The data order and the per-step timesteps and noise are pure
//! functions of (seed, step), which is what makes `--resume` exact.

use crate::checkpoint;
use crate::config::ResolveModel;
use crate::ema::Ema;
use crate::eval;
use crate::images::load_images;
use crate::optimizer::{adamw, global_grad_norm, learning_rate, scale_grads};
use crate::progress::Progress;
use crate::samples;
use crate::skip_eval;
use anyhow::{Context, Result, bail};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scalelong_data::{Loader, Split};
use scalelong_diagnostics::recorder::Recorder;
use scalelong_model::DiffusionNet;
use scalelong_model::diffusion::{NoiseSchedule, noise_prediction_loss, seeded_noise};
use scalelong_schema::{
    CheckpointState, JsonlLog, MetricsLine, RunConfig, RunState, Status, remove_stale_temporaries,
    truncate_jsonl_after, write_json_atomic,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Diverged { step: u64 },
}

/// Trains `config` into `run`. A run folder that already holds a run is an error unless `resume`.
pub fn train(config: &RunConfig, run: &Path, device: &Device, resume: bool) -> Result<Outcome> {
    let model_config = config.model.resolve()?;
    let schedule = NoiseSchedule::new(&config.diffusion.schedule);
    let train_set = Arc::new(load_images(config, &model_config, Split::Train)?);
    let test_set = config.evaluate.then(|| load_images(config, &model_config, Split::Test)).transpose()?;

    // 1. The run folder: fresh, or resumed from its latest checkpoint.
    std::fs::create_dir_all(run).with_context(|| format!("{}: cannot create run folder", run.display()))?;
    if !resume && (checkpoint::exists(run) || run.join("metrics.jsonl").exists()) {
        bail!("{}: already holds a run; pass --resume to continue it or choose another --out", run.display());
    }
    // A process killed between writing a file and renaming it leaves its temporary behind.
    remove_stale_temporaries(run)?;
    device.seed(config.seed);
    let fresh = model_config.init(config.strategy, device);
    let mut ema = Ema::new(&fresh, config.ema_decay);
    let mut optimizer = adamw(config);
    let previous = if resume { checkpoint::resume(run, &fresh, &ema.model, &optimizer)? } else { None };
    let (mut model, start) = match previous {
        Some(ckpt) => {
            // Only the length may change on resume, where that continues the run bit-identically.
            let conflicts = ckpt.state.config.continuation_conflicts(config, ckpt.state.step);
            if !conflicts.is_empty() {
                bail!(
                    "{}: the checkpoint (step {}) was made with a different config: {} differ; resume with the same \
                     one (steps may change only under a constant learning rate, and not below the checkpoint's step)",
                    checkpoint::folder(run).display(),
                    ckpt.state.step,
                    conflicts.join(", ")
                );
            }
            optimizer = ckpt.optimizer;
            ema.model = ckpt.ema;
            (ckpt.model, ckpt.state.step)
        }
        None => (fresh, 0),
    };
    write_json_atomic(&run.join("config.json"), config)?;
    for log in ["metrics.jsonl", "diagnostics.jsonl", "eval.jsonl"] {
        truncate_jsonl_after(&run.join(log), start)?;
    }
    Status { state: RunState::Running, step: start, message: None }.write(run)?;
    let mut metrics = JsonlLog::open(&run.join("metrics.jsonl"))?;
    let mut diagnostics = JsonlLog::open(&run.join("diagnostics.jsonl"))?;
    let mut evaluations = JsonlLog::open(&run.join("eval.jsonl"))?;
    let recorder = Recorder::new(&config.diagnostics, &train_set, &schedule, device).map_err(anyhow::Error::msg)?;
    let mut loader =
        Loader::starting_at(train_set.clone(), config.batch_size, config.seed, config.data.random_flip, start)?;
    let name = run.file_name().map_or_else(|| run.display().to_string(), |name| name.to_string_lossy().into_owned());
    let mut progress = Progress::new(&name, start, config.steps);
    let save = |step: u64, model: &DiffusionNet, ema: &Ema, optimizer: &ModuleOptimizer| {
        checkpoint::save(run, &CheckpointState { step, config: config.clone() }, model, &ema.model, optimizer)
    };

    // 2. The loop.
    let mut interval_start = (Instant::now(), start);
    for step in start + 1..=config.steps {
        let started = Instant::now();
        let batch = loader.next_batch();
        let x0 = Tensor::<1>::from_floats(batch.images.as_slice(), device).reshape(batch.shape); // [B, C, H, W]
        let mut rng = step_rng(config.seed, step);
        let steps: Vec<usize> = (0..batch.shape[0]).map(|_| rng.random_range(0..schedule.steps())).collect();
        let noise = seeded_noise(batch.shape, &mut rng, device);
        let noised = schedule.q_sample(x0, noise, &steps);

        let predicted = model.forward(noised.x_t, noised.model_time, None);
        let loss = noise_prediction_loss(predicted, noised.noise);
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let grad_norm = global_grad_norm(&model, &grads);

        if !loss_value.is_finite() || !grad_norm.is_finite() {
            let message =
                format!("non-finite {} at step {step}", if loss_value.is_finite() { "gradient" } else { "loss" });
            Status { state: RunState::Diverged, step, message: Some(message.clone()) }.write(run)?;
            progress.finish(&message);
            return Ok(Outcome::Diverged { step });
        }
        if config.grad_clip > 0.0 && grad_norm > config.grad_clip {
            grads = scale_grads(&model, grads, config.grad_clip / grad_norm);
        }

        let lr = learning_rate(config, step);
        // Diagnostics read the gradients before AdamW consumes them, the weights on both sides.
        let due = recorder.is_due(step);
        let mut rows = if due { recorder.gradient_rows(step, &model, &grads) } else { Vec::new() };
        let before = due.then(|| model.clone());
        model = optimizer.step(lr, model, grads);
        ema.update(&model, step);
        let step_time = started.elapsed().as_secs_f64();
        if let Some(before) = before {
            rows.extend(recorder.record(step, &before, &model));
            diagnostics.append(&rows)?;
        }

        progress.step(step, loss_value);
        if step % config.log_every == 0 || step == config.steps {
            // Throughput over the whole interval, diagnostics, sampling and evaluation included.
            let (since, from_step) = interval_start;
            let examples_per_s = ((step - from_step) as usize * batch.shape[0]) as f64 / since.elapsed().as_secs_f64();
            interval_start = (Instant::now(), step);
            let line = MetricsLine { step, loss: loss_value, lr, grad_norm, step_time_s: step_time, examples_per_s };
            metrics.append(&[&line])?;
            progress.log(&format!("step {step} loss {loss_value:.4} lr {lr:.2e} |g| {grad_norm:.3} {step_time:.3}s"));
        }
        let last = step == config.steps;
        if last || (config.sample_every > 0 && step % config.sample_every == 0) {
            samples::write_grid(run, step, &ema.model, &model_config, &schedule, config, device)?;
        }
        if last || (config.checkpoint_every > 0 && step % config.checkpoint_every == 0) {
            if let Some(test_set) = &test_set {
                let sampler = config.diffusion.sampler;
                let fd_every = config.eval.fd_every;
                let with_fd = last || (fd_every > 0 && step % fd_every == 0);
                let line = eval::evaluate(
                    step,
                    &ema.model,
                    &model_config,
                    &schedule,
                    sampler,
                    test_set,
                    &train_set,
                    &config.eval,
                    with_fd,
                    device,
                )?;
                progress.log(&format!("eval step {step}: held-out loss {:.4} FD {:?}", line.heldout_loss, line.fd));
                evaluations.append(&[line])?;
            }
            save(step, &model, &ema, &optimizer)?;
        }
    }
    if let Some(test_set) = test_set.as_ref().filter(|_| !config.eval.skip_edits.is_empty()) {
        let lines = skip_eval::evaluate_edits(
            config.steps,
            &ema.model,
            &model_config,
            &schedule,
            config,
            &config.eval.skip_edits,
            (test_set, &train_set),
            device,
            |line| progress.log(line),
        )?;
        skip_eval::write_lines(run, &lines)?;
    }
    Status { state: RunState::Completed, step: config.steps, message: None }.write(run)?;
    progress.finish("done");
    Ok(Outcome::Completed)
}

/// The RNG of one step's timesteps and noise.
fn step_rng(seed: u64, step: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(step);
    rng
}
