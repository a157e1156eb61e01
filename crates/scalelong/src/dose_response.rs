//! `scalelong dose-response`: the quantities ScaleLong's bounds speak of, for CS networks at
//! initialisation over a kappa grid and many seeds (docs/method.md §4), into `dose_response.jsonl`.
//!
//! At initialisation the check costs no training, so it can afford many seeds. Every network of a
//! seed is built from the same device seed, and CS adds no parameters, so the networks of a seed
//! have the same weights and differ only in their skip coefficients: a seed is a block in which
//! kappa alone varies. Every network is measured on the diagnostics' fixed probe
//! (`scalelong_diagnostics::bounds`).

use crate::config::ResolveModel;
use crate::images::load_images;
use anyhow::{Context, Result};
use burn::prelude::*;
use scalelong_analysis::dose_response::{
    feature_norm_factor, fixed_coefficients, gradient_norm_factor, sensitivity_factor,
};
use scalelong_data::Split;
use scalelong_diagnostics::recorder::Recorder;
use scalelong_model::diffusion::NoiseSchedule;
use scalelong_schema::{DoseQuantity, DoseResponseLine, DoseResponsePlan, SkipScaling, apply_override, write_atomic};
use std::path::Path;

/// Builds and measures every (seed, kappa) network of the plan at `plan_path` (its run config with
/// `overrides` applied after the plan's `[set]`) on `device` (with autodiff: the gradient norm
/// needs a backward pass), and writes one line per network and quantity to `out`. Returns the
/// number of networks.
pub fn dose_response(plan_path: &Path, overrides: &[String], out: &Path, device: &Device) -> Result<usize> {
    let plan = DoseResponsePlan::load(plan_path)?;
    let base_path = plan.base_path(plan_path);
    let base_text = std::fs::read_to_string(&base_path)
        .with_context(|| format!("{}: base = {:?}: cannot read", plan_path.display(), plan.base))?;
    let mut table: toml::Table =
        toml::from_str(&base_text).map_err(|e| anyhow::anyhow!("{}: {e}", base_path.display()))?;
    let shared = plan.set.iter().map(|(key, value)| format!("{key}={value}"));
    for item in shared.chain(overrides.iter().cloned()) {
        apply_override(&mut table, &item).with_context(|| plan_path.display().to_string())?;
    }
    let config = crate::config::from_table(table).with_context(|| plan_path.display().to_string())?;
    let model = config.model.resolve()?;
    let model_name = config.model.describe();
    let images = load_images(&config, &model, Split::Train)?;
    let schedule = NoiseSchedule::new(&config.diffusion.schedule);
    // The probe of the training runs' diagnostics, whatever their recording interval.
    let mut probe = config.diagnostics.clone();
    probe.every = probe.every.max(1);
    let recorder = Recorder::new(&probe, &images, &schedule, device).map_err(anyhow::Error::msg)?;

    let mut jsonl = String::new();
    let mut networks = 0;
    for seed in 0..plan.seeds {
        for &kappa in &plan.kappas {
            let strategy = SkipScaling::Constant { kappa };
            device.seed(seed);
            let net = model.init(strategy, device);
            let measured = recorder.bound_measurements(&net).context("the probe is missing")?;
            let coefficients = fixed_coefficients(strategy, net.num_skips()).context("CS has fixed coefficients")?;
            let line = |quantity, lsc: Option<usize>, factor: Option<f64>, value: f64| DoseResponseLine {
                model: model_name.clone(),
                seed,
                kappa,
                quantity,
                lsc: lsc.map(|i| i as u32),
                factor,
                value: value.is_finite().then_some(value),
            };
            let mut lines: Vec<DoseResponseLine> = measured
                .feature_sq_norms
                .iter()
                .enumerate()
                .map(|(k, &value)| {
                    let lsc = k + 1;
                    line(DoseQuantity::FeatureSqNorm, Some(lsc), Some(feature_norm_factor(&coefficients, lsc)), value)
                })
                .collect();
            let gradient_factor = Some(gradient_norm_factor(&coefficients));
            lines.push(line(DoseQuantity::GradSqNorm, None, gradient_factor, measured.grad_sq_norm));
            let per_loss = measured.grad_sq_norm / measured.probe_loss;
            lines.push(line(DoseQuantity::GradSqNormPerLoss, None, gradient_factor, per_loss));
            lines.push(line(DoseQuantity::ProbeLoss, None, None, measured.probe_loss));
            let sensitivity = Some(sensitivity_factor(&coefficients));
            lines.push(line(DoseQuantity::Sensitivity, None, sensitivity, measured.sensitivity));
            for line in &lines {
                jsonl.push_str(&serde_json::to_string(line)?);
                jsonl.push('\n');
            }
            networks += 1;
        }
    }
    if let Some(folder) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).with_context(|| format!("{}: cannot create", folder.display()))?;
    }
    write_atomic(out, jsonl.as_bytes())?;
    Ok(networks)
}
