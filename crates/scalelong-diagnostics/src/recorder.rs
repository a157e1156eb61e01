//! Recording diagnostics during training (the burn side of this crate).
//!
//! Every `every` steps the recorder measures, on a FIXED probe batch (the first images of the
//! training set, a fixed timestep grid of `t_bins` bins with `probe_per_bin` samples each, noise
//! and perturbation drawn from [`PROBE_SEED`]), so successive records compare and every run of a
//! sweep, whatever its seed, is measured on the same samples: per-block feature norms, skip norms
//! and ratios at each fusion, the coefficient applied per LSC (LS: gate statistics, their
//! exponential-decay fit and each gate's pooled input summarised), loss and ||x_t||^2 per bin,
//! gradient norms per bin, robustness to a small input perturbation, and an estimate of M0; on the
//! training batch it records gradient norms, weight norms and relative updates per parameter group.
//! With `every = 0` it does nothing and allocates nothing.
//!
//! What each record tests is in docs/method.md §4. M0 (Thm 3.4, the largest gain of an encoder/decoder pair) is estimated by finite differences:
//! for the perturbed and clean probe passes, the gain of LSC i is
//! ||Δ decoder output consuming i|| / ||Δ encoder output producing i||, and M0 is the largest gain.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scalelong_analysis::stats::exp_decay_fit;
use scalelong_data::ImageSet;
use scalelong_model::diffusion::{NoiseSchedule, per_sample_loss, seeded_noise};
use scalelong_model::{Coefficient, DiffusionNet, ForwardTrace};
pub use scalelong_schema::DiagnosticsConfig;
use scalelong_schema::{GateInput, Quantity, Record};
use std::collections::BTreeMap;

/// The seed of the probe's noise and perturbation. It is not the run's seed, so runs of different
/// seeds are measured on the same probe (a between-run comparison then compares networks, not
/// probes), and it has its own generator, so the training streams (data order, timesteps, noise:
/// functions of the run's seed and step) are untouched by it.
pub const PROBE_SEED: u64 = 0xd1a6;

/// The fixed probe batch, on the inference backend.
pub(crate) struct Probe {
    pub(crate) x_t: Tensor<4>,
    pub(crate) noise: Tensor<4>,
    pub(crate) model_time: Tensor<1>,
    pub(crate) delta: Tensor<4>,
    /// Timestep bin of each sample.
    pub(crate) bins: Vec<u32>,
}

pub struct Recorder {
    every: u64,
    gradient_bins_every: u64,
    t_bins: usize,
    pub(crate) probe: Option<Probe>,
}

impl Recorder {
    /// `device` is the training device (with autodiff); the probe lives on its inner backend.
    pub fn new(
        config: &DiagnosticsConfig,
        images: &ImageSet,
        schedule: &NoiseSchedule,
        device: &Device,
    ) -> Result<Self, String> {
        if config.every == 0 {
            return Ok(Self { every: 0, gradient_bins_every: 0, t_bins: 0, probe: None });
        }
        let (bins, per_bin) = (config.t_bins, config.probe_per_bin);
        if config.gradient_bins_every == 0 {
            return Err("diagnostics: gradient_bins_every must be at least 1".into());
        }
        if bins == 0 || per_bin == 0 || bins > schedule.steps() {
            return Err(format!(
                "diagnostics: t_bins ({bins}) and probe_per_bin ({per_bin}) must be positive, t_bins at most the schedule's steps"
            ));
        }
        let count = bins * per_bin;
        if images.len() < count {
            return Err(format!("diagnostics: the probe needs {count} images, the dataset has {}", images.len()));
        }
        let device = device.clone().inner();
        let shape = [count, images.channels, images.height, images.width];
        let pixels: Vec<f32> = (0..count).flat_map(|i| images.image(i).iter().copied()).collect();
        let x0 = Tensor::<1>::from_floats(pixels.as_slice(), &device).reshape(shape);
        let t = schedule.steps() as f64;
        let steps: Vec<usize> = (0..count)
            .map(|j| {
                (((j / per_bin) as f64 + ((j % per_bin) as f64 + 0.5) / per_bin as f64) * t / bins as f64) as usize
            })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(PROBE_SEED);
        let noised = schedule.q_sample(x0, seeded_noise(shape, &mut rng, &device), &steps);
        let rms = noised.x_t.clone().square().mean().sqrt().into_scalar::<f32>() as f64;
        let delta = seeded_noise(shape, &mut rng, &device).mul_scalar(config.robustness_delta * rms);
        let bins = (0..count).map(|j| (j / per_bin) as u32).collect();
        Ok(Self {
            every: config.every,
            gradient_bins_every: config.gradient_bins_every,
            t_bins: config.t_bins,
            probe: Some(Probe { x_t: noised.x_t, noise: noised.noise, model_time: noised.model_time, delta, bins }),
        })
    }

    /// The fixed probe inputs `(x_t, model_time)` and each sample's bin, when recording is on.
    pub fn probe(&self) -> Option<(Tensor<4>, Tensor<1>, &[u32])> {
        self.probe.as_ref().map(|p| (p.x_t.clone(), p.model_time.clone(), p.bins.as_slice()))
    }

    pub fn is_due(&self, step: u64) -> bool {
        self.every > 0 && step.is_multiple_of(self.every)
    }

    /// Gradient norms per parameter group on the training batch (before the optimizer step).
    pub fn gradient_rows(&self, step: u64, model: &DiffusionNet, grads: &GradientsParams) -> Vec<Record> {
        group_sums(model, grads)
            .into_iter()
            .map(|(group, sq)| row(step, Quantity::GradNorm, Some(group), None, None, sq.sqrt()))
            .collect()
    }

    /// Everything else, after the optimizer step: weights, updates and the probe measurements.
    pub fn record(&self, step: u64, before: &DiffusionNet, after: &DiffusionNet) -> Vec<Record> {
        let Some(probe) = &self.probe else { return Vec::new() };
        let mut rows = weight_rows(step, Some(before), after);
        rows.extend(probe_rows(step, probe, self.t_bins, after));
        if step.is_multiple_of(self.every * self.gradient_bins_every) {
            rows.extend(bin_gradient_rows(step, probe, self.t_bins, after));
        }
        rows
    }

    /// One record of a network that is not training (`scalelong diagnose`): weight norms, every
    /// probe measurement and the per-bin gradient norms; nothing that needs a training step
    /// (training-batch gradients, relative updates).
    pub fn snapshot(&self, step: u64, model: &DiffusionNet) -> Vec<Record> {
        let Some(probe) = &self.probe else { return Vec::new() };
        let mut rows = weight_rows(step, None, model);
        rows.extend(probe_rows(step, probe, self.t_bins, model));
        rows.extend(bin_gradient_rows(step, probe, self.t_bins, model));
        rows
    }
}

fn row(
    step: u64,
    quantity: Quantity,
    layer: Option<String>,
    lsc: Option<u32>,
    t_bin: Option<u32>,
    value: f64,
) -> Record {
    Record { step, quantity, layer, lsc, t_bin, value: value.is_finite().then_some(value) }
}

/// The diagnostics group of a parameter, from its module path (see docs/run-folder.md).
pub fn group_of(path: &[String]) -> String {
    // Variant names of the enums (`UViT`, `UNet`, `Res`, ...) carry no grouping information.
    let parts: Vec<&str> =
        path.iter().map(String::as_str).filter(|p| !matches!(*p, "UViT" | "UNet" | "Stem" | "Res" | "Down")).collect();
    match parts.as_slice() {
        ["patch_embed" | "time_embed" | "pos_embed", ..] => "embed".into(),
        ["in_blocks" | "encoder", k, ..] => format!("enc.{k}"),
        ["mid_block" | "middle", ..] => "mid".into(),
        ["out_blocks", k, "skip_linear", ..] => format!("fusion.{k}"),
        ["decoder", k, "res", "norm1" | "conv1" | "shortcut", ..] => format!("fusion.{k}"),
        ["out_blocks" | "decoder", _, "gate" | "scalar", ..] | ["se" | "skip_scalars", ..] => "gate".into(),
        ["out_blocks" | "decoder", k, ..] => format!("dec.{k}"),
        _ => "head".into(),
    }
}

/// Every parameter (or, given `grads`, its gradient) flattened, with its group, in visiting order.
fn grouped_tensors(model: &DiffusionNet, grads: Option<&GradientsParams>) -> Vec<(String, Tensor<1>)> {
    struct Visitor<'a> {
        path: Vec<String>,
        grads: Option<&'a GradientsParams>,
        out: Vec<(String, Tensor<1>)>,
    }
    impl ModuleVisitor for Visitor<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let tensor = match self.grads {
                Some(grads) => grads.get::<D>(param.id),
                None => Some(param.val()),
            };
            if let Some(t) = tensor {
                self.out.push((group_of(&self.path), t.inner().reshape([-1])));
            }
        }
    }
    let mut visitor = Visitor { path: Vec::new(), grads, out: Vec::new() };
    model.visit(&mut visitor);
    visitor.out
}

/// Reads many scalars with one device sync: `parts[i]` is a `[n_i]` tensor.
pub(crate) fn read_scalars(parts: Vec<Tensor<1>>) -> Vec<f64> {
    if parts.is_empty() {
        return Vec::new();
    }
    Tensor::cat(parts, 0).into_data().try_to_vec::<f32>().expect("f32 scalars").into_iter().map(f64::from).collect()
}

/// Sum of squared gradients per group, plus `total`.
pub(crate) fn group_sums(model: &DiffusionNet, grads: &GradientsParams) -> BTreeMap<String, f64> {
    let (names, parts): (Vec<String>, Vec<Tensor<1>>) =
        grouped_tensors(model, Some(grads)).into_iter().map(|(group, g)| (group, g.square().sum())).unzip();
    let mut sums = BTreeMap::new();
    for (group, v) in names.into_iter().zip(read_scalars(parts)) {
        *sums.entry(group).or_insert(0.0) += v;
        *sums.entry("total".to_string()).or_insert(0.0) += v;
    }
    sums
}

/// `weight_norm` per group (and `total`) of `after`; given the weights `before` the step, also
/// `rel_update`.
fn weight_rows(step: u64, before: Option<&DiffusionNet>, after: &DiffusionNet) -> Vec<Record> {
    let after = grouped_tensors(after, None);
    let before = before.map(|b| grouped_tensors(b, None));
    // Per group: ||W||^2, then with `before` also ||W - W_before||^2 and ||W_before||^2.
    let width = if before.is_some() { 3 } else { 1 };
    let mut names = Vec::new();
    let mut parts = Vec::new();
    for (i, (group, a)) in after.into_iter().enumerate() {
        names.push(group);
        if let Some(before) = &before {
            let b = before[i].1.clone();
            parts.push((a.clone() - b.clone()).square().sum());
            parts.push(b.square().sum());
        }
        parts.push(a.square().sum());
    }
    let values = read_scalars(parts);
    let mut sums: BTreeMap<String, [f64; 3]> = BTreeMap::new();
    for (group, v) in names.into_iter().zip(values.chunks(width)) {
        for key in [group, "total".to_string()] {
            let s = sums.entry(key).or_insert([0.0; 3]);
            for (acc, x) in s.iter_mut().zip(v) {
                *acc += x;
            }
        }
    }
    sums.into_iter()
        .flat_map(|(group, sq)| {
            let after_sq = sq[width - 1];
            let norm = row(step, Quantity::WeightNorm, Some(group.clone()), None, None, after_sq.sqrt());
            let update =
                (width == 3).then(|| row(step, Quantity::RelUpdate, Some(group), None, None, (sq[0] / sq[1]).sqrt()));
            std::iter::once(norm).chain(update)
        })
        .collect()
}

/// Per-sample values of one probe quantity, to be averaged per bin and overall.
struct PerSample {
    quantity: Quantity,
    layer: Option<String>,
    lsc: Option<u32>,
    values: Tensor<1>,
}

/// L2 norm of each row: `[B, F] -> [B]`.
pub(crate) fn row_norms(x: Tensor<2>) -> Tensor<1> {
    let b = x.dims()[0];
    x.square().sum_dim(1).sqrt().reshape([b])
}

/// `coef * skip` in the flattened layout: a gate `[B, G]` scales `F / G` consecutive features.
fn scaled_skip(skip: &Tensor<2>, coefficient: &Coefficient) -> Tensor<2> {
    match coefficient {
        Coefficient::Fixed(c) => skip.clone().mul_scalar(*c),
        Coefficient::Learned(c) => skip.clone() * c.clone().reshape([1, 1]),
        Coefficient::Gate(gate) => {
            let [b, f] = skip.dims();
            let g = gate.dims()[1];
            (skip.clone().reshape([b, g, f / g]) * gate.clone().reshape([b, g, 1])).reshape([b, f])
        }
    }
}

fn probe_rows(step: u64, probe: &Probe, t_bins: usize, model: &DiffusionNet) -> Vec<Record> {
    let net = model.valid();
    let mut trace = ForwardTrace::default();
    let out = net.forward(probe.x_t.clone(), probe.model_time.clone(), Some(&mut trace));
    let mut noisy_trace = ForwardTrace::default();
    let noisy_out =
        net.forward(probe.x_t.clone() + probe.delta.clone(), probe.model_time.clone(), Some(&mut noisy_trace));
    let n = trace.fusions.len();
    let batch = probe.bins.len();
    let flat = |t: Tensor<4>| t.reshape([batch as i64, -1]);

    let mut series = vec![
        PerSample {
            quantity: Quantity::ProbeLoss,
            layer: None,
            lsc: None,
            values: per_sample_loss(out.clone(), probe.noise.clone()),
        },
        PerSample {
            quantity: Quantity::XtSqNorm,
            layer: None,
            lsc: None,
            values: row_norms(flat(probe.x_t.clone())).square(),
        },
        PerSample {
            quantity: Quantity::Robustness,
            layer: None,
            lsc: None,
            values: row_norms(flat(noisy_out - out)) / row_norms(flat(probe.delta.clone())),
        },
    ];
    let mut feature = |layer: String, lsc: Option<u32>, h: &Tensor<2>| {
        let numel = h.dims()[1] as f64;
        let l2 = row_norms(h.clone());
        series.push(PerSample {
            quantity: Quantity::FeatureRms,
            layer: Some(layer.clone()),
            lsc,
            values: l2.clone().div_scalar(numel.sqrt()),
        });
        series.push(PerSample { quantity: Quantity::FeatureL2, layer: Some(layer), lsc, values: l2 });
    };
    for (k, h) in trace.encoder.iter().enumerate() {
        feature(format!("enc.{k}"), Some(k as u32 + 1), h);
    }
    if let Some(h) = &trace.middle {
        feature("mid".into(), None, h);
    }
    for (k, h) in trace.decoder.iter().enumerate() {
        feature(format!("dec.{k}"), Some((n - k) as u32), h);
    }
    // M0: the largest gain of an encoder/decoder pair under the input perturbation.
    let mut gains = Vec::new();
    for (k, fusion) in trace.fusions.iter().enumerate() {
        let layer = Some(format!("dec.{k}"));
        let lsc = Some(fusion.lsc as u32);
        let scaled = scaled_skip(&fusion.skip, &fusion.coefficient);
        let skip_l2 = row_norms(fusion.skip.clone());
        let scaled_l2 = row_norms(scaled);
        let main_l2 = row_norms(fusion.main.clone());
        series.push(PerSample { quantity: Quantity::SkipL2, layer: layer.clone(), lsc, values: skip_l2 });
        series.push(PerSample {
            quantity: Quantity::SkipRatio,
            layer: layer.clone(),
            lsc,
            values: scaled_l2.clone() / main_l2,
        });
        series.push(PerSample { quantity: Quantity::ScaledSkipL2, layer: layer.clone(), lsc, values: scaled_l2 });
        series.push(PerSample {
            quantity: Quantity::SkipLowFreqShare,
            layer: layer.clone(),
            lsc,
            values: fusion.skip_low_frequency_share.clone(),
        });
        series.push(PerSample {
            quantity: Quantity::MainLowFreqShare,
            layer,
            lsc,
            values: fusion.main_low_frequency_share.clone(),
        });
        let enc = fusion.lsc - 1;
        let d_enc = row_norms(noisy_trace.encoder[enc].clone() - trace.encoder[enc].clone()).mean();
        let d_dec = row_norms(noisy_trace.decoder[k].clone() - trace.decoder[k].clone()).mean();
        gains.push(d_dec / d_enc);
    }

    // One sync for every per-sample series, one for the gains.
    let lens: Vec<usize> = series.iter().map(|s| s.values.dims()[0]).collect();
    let all = read_scalars(series.iter().map(|s| s.values.clone()).collect());
    let mut rows = Vec::new();
    let mut offset = 0;
    for (s, len) in series.iter().zip(lens) {
        let values = &all[offset..offset + len];
        offset += len;
        rows.push(row(step, s.quantity, s.layer.clone(), s.lsc, None, mean(values)));
        for bin in 0..t_bins as u32 {
            let in_bin: Vec<f64> =
                values.iter().zip(&probe.bins).filter(|(_, b)| **b == bin).map(|(v, _)| *v).collect();
            rows.push(row(step, s.quantity, s.layer.clone(), s.lsc, Some(bin), mean(&in_bin)));
        }
    }
    if let Some(m0) = read_scalars(gains).into_iter().reduce(f64::max) {
        rows.push(row(step, Quantity::M0, None, None, None, m0));
    }
    rows.extend(coefficient_rows(step, &trace));
    rows.extend(gate_input_rows(step, &trace));
    rows
}

/// `coef` per LSC; for LS also gate mean/std/min/max and the exponential-decay fit over LSCs.
fn coefficient_rows(step: u64, trace: &ForwardTrace) -> Vec<Record> {
    let mut rows = Vec::new();
    let mut gate_means: BTreeMap<usize, f64> = BTreeMap::new();
    for (k, fusion) in trace.fusions.iter().enumerate() {
        let layer = Some(format!("dec.{k}"));
        let lsc = Some(fusion.lsc as u32);
        match &fusion.coefficient {
            Coefficient::Fixed(c) => rows.push(row(step, Quantity::Coef, layer, lsc, None, *c)),
            Coefficient::Learned(c) => {
                let value = read_scalars(vec![c.clone().mean()])[0];
                rows.push(row(step, Quantity::Coef, layer, lsc, None, value));
            }
            Coefficient::Gate(gate) => {
                let g = gate.clone().reshape([-1]);
                let stats = read_scalars(vec![g.clone().mean(), g.clone().var(0).sqrt(), g.clone().min(), g.max()]);
                gate_means.insert(fusion.lsc, stats[0]);
                rows.push(row(step, Quantity::Coef, layer.clone(), lsc, None, stats[0]));
                for (q, v) in
                    [Quantity::GateMean, Quantity::GateStd, Quantity::GateMin, Quantity::GateMax].into_iter().zip(stats)
                {
                    rows.push(row(step, q, layer.clone(), lsc, None, v));
                }
            }
        }
    }
    let means: Vec<f64> = gate_means.values().copied().collect(); // ordered by LSC, 1 first
    if let Some(fit) = exp_decay_fit(&means) {
        for (q, v) in
            [(Quantity::GateFitA, fit.a), (Quantity::GateFitKappa, fit.kappa_hat), (Quantity::GateFitR2, fit.r2)]
        {
            rows.push(row(step, q, None, None, None, v));
        }
    }
    rows
}

/// LS only: per LSC the summaries of its gate's input ([`GateInput`]), the traced skip `[B, F]`
/// averaged over each of the gate's `G` positions as the gate pools it (the same means, summed in
/// another order); the cosine and distance to LSC 1 only where the widths agree.
fn gate_input_rows(step: u64, trace: &ForwardTrace) -> Vec<Record> {
    let pooled: BTreeMap<usize, (String, Tensor<2>)> = trace
        .fusions
        .iter()
        .enumerate()
        .filter_map(|(k, fusion)| {
            let Coefficient::Gate(gate) = &fusion.coefficient else { return None };
            let ([batch, features], width) = (fusion.skip.dims(), gate.dims()[1]);
            let pooled =
                fusion.skip.clone().reshape([batch, width, features / width]).mean_dim(2).reshape([batch, width]);
            Some((fusion.lsc, (format!("dec.{k}"), pooled)))
        })
        .collect();
    let outermost = pooled.get(&1).map(|(_, p)| p.clone());
    let mut keys = Vec::new();
    let mut parts = Vec::new();
    for (&lsc, (layer, p)) in &pooled {
        let [batch, _] = p.dims();
        let mut push = |stat: GateInput, value: Tensor<1>| {
            keys.push((stat, lsc, layer.clone()));
            parts.push(value);
        };
        push(GateInput::Mean, p.clone().mean());
        push(GateInput::Rms, p.clone().square().mean().sqrt());
        push(GateInput::PositionSd, p.clone().var(1).sqrt().mean());
        push(GateInput::SampleSd, p.clone().var(0).sqrt().mean());
        if let Some(p1) = outermost.as_ref().filter(|p1| p1.dims() == p.dims()) {
            let dot = (p.clone() * p1.clone()).sum_dim(1).reshape([batch]);
            push(GateInput::CosineToLsc1, (dot / (row_norms(p.clone()) * row_norms(p1.clone()))).mean());
            push(GateInput::DistanceToLsc1, (p.clone() - p1.clone()).square().mean().sqrt());
        }
    }
    keys.into_iter()
        .zip(read_scalars(parts))
        .map(|((stat, lsc, layer), value)| row(step, stat.quantity(), Some(layer), Some(lsc as u32), None, value))
        .collect()
}

/// Squared gradient norms of the encoder and decoder blocks on the probe samples of each bin
/// (Thm 3.3), one backward pass per bin.
fn bin_gradient_rows(step: u64, probe: &Probe, t_bins: usize, model: &DiffusionNet) -> Vec<Record> {
    let mut rows = Vec::new();
    for bin in 0..t_bins as u32 {
        let idx: Vec<usize> = probe.bins.iter().enumerate().filter(|(_, b)| **b == bin).map(|(i, _)| i).collect();
        let (start, len) = (idx[0], idx.len());
        let x = probe.x_t.clone().narrow(0, start, len).autodiff();
        let t = probe.model_time.clone().narrow(0, start, len).autodiff();
        let noise = probe.noise.clone().narrow(0, start, len).autodiff();
        let loss = (model.forward(x, t, None) - noise).square().mean();
        let grads = GradientsParams::from_grads(loss.backward(), model);
        let sums = group_sums(model, &grads);
        let (enc, dec) = block_square_sums(&sums);
        for (layer, sq) in [("enc", enc), ("dec", dec), ("total", sums.get("total").copied().unwrap_or(0.0))] {
            rows.push(row(step, Quantity::GradNormBin, Some(layer.into()), None, Some(bin), sq.sqrt()));
        }
    }
    rows
}

/// The squared gradient norms of the encoder blocks and of the decoder blocks with their fusions
/// (the weights Thm 3.3 bounds), out of [`group_sums`]' groups.
pub(crate) fn block_square_sums(sums: &BTreeMap<String, f64>) -> (f64, f64) {
    let side = |prefix: &str| sums.iter().filter(|(g, _)| g.starts_with(prefix)).map(|(_, v)| v).sum::<f64>();
    (side("enc."), side("dec.") + side("fusion."))
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}
