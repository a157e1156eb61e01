//! The recorder's numbers against direct computations on a tiny network.

use burn::prelude::*;
use scalelong_data::synthetic;
use scalelong_diagnostics::recorder::{DiagnosticsConfig, Recorder};
use scalelong_model::diffusion::{NoiseSchedule, ScheduleConfig};
use scalelong_model::uvit::UViTConfig;
use scalelong_model::{ForwardTrace, ModelConfig, SkipScaling};
use scalelong_schema::{GateInput, Quantity, Record};
use std::collections::BTreeMap;

fn values(t: Tensor<2>) -> (usize, Vec<f64>) {
    let [_, f] = t.dims();
    (f, t.into_data().try_to_vec::<f32>().unwrap().into_iter().map(f64::from).collect())
}

/// Per-sample L2 norms of a `[B, F]` tensor, summed in f64 by plain loops.
fn row_norms(t: &Tensor<2>) -> Vec<f64> {
    let (f, v) = values(t.clone());
    v.chunks(f).map(|row| row.iter().map(|x| x * x).sum::<f64>().sqrt()).collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn find<'a>(rows: &'a [Record], quantity: Quantity, layer: Option<&str>, t_bin: Option<u32>) -> &'a Record {
    rows.iter()
        .find(|r| r.quantity == quantity && r.layer.as_deref() == layer && r.t_bin == t_bin)
        .unwrap_or_else(|| panic!("no {quantity} {layer:?} {t_bin:?}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-4 * b.abs().max(1e-6)
}

#[test]
fn recorded_norms_coefficients_and_bins_match_a_direct_computation() {
    let device = Device::flex().autodiff();
    device.seed(9);
    let config = ModelConfig::Uvit(UViTConfig::tiny(6));
    let kappa = 0.5;
    let net = config.init(SkipScaling::Constant { kappa }, &device);
    let images = synthetic(32, 1, 8, 4);
    let schedule = NoiseSchedule::new(&ScheduleConfig::default());
    let diagnostics =
        DiagnosticsConfig { every: 1, t_bins: 4, probe_per_bin: 3, robustness_delta: 1e-2, gradient_bins_every: 1 };
    let recorder = Recorder::new(&diagnostics, &images, &schedule, &device).unwrap();
    let rows = recorder.record(1, &net, &net);

    let (x_t, time, bins) = recorder.probe().unwrap();
    assert_eq!(bins, &[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]);
    let times = time.clone().into_data().try_to_vec::<f32>().unwrap();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "a fixed grid from least to most noise");

    let mut trace = ForwardTrace::default();
    net.valid().forward(x_t.clone().inner(), time.inner(), Some(&mut trace));
    let n = trace.fusions.len();

    // Feature norms of every block, overall and in one bin.
    let blocks = trace
        .encoder
        .iter()
        .enumerate()
        .map(|(k, h)| (format!("enc.{k}"), h.clone()))
        .chain(trace.decoder.iter().enumerate().map(|(k, h)| (format!("dec.{k}"), h.clone())));
    for (layer, h) in blocks {
        let norms = row_norms(&h);
        let recorded = find(&rows, Quantity::FeatureL2, Some(&layer), None).value.unwrap();
        assert!(close(recorded, mean(&norms)), "{layer}: {recorded} vs {}", mean(&norms));
        let bin2 = find(&rows, Quantity::FeatureL2, Some(&layer), Some(2)).value.unwrap();
        assert!(close(bin2, mean(&norms[6..9])), "{layer} bin 2");
        let rms = find(&rows, Quantity::FeatureRms, Some(&layer), None).value.unwrap();
        assert!(close(rms, mean(&norms) / (h.dims()[1] as f64).sqrt()));
    }

    // The coefficient and the scaled-skip ratio at each fusion.
    for (k, fusion) in trace.fusions.iter().enumerate() {
        let layer = format!("dec.{k}");
        let c = kappa.powi(fusion.lsc as i32 - 1);
        assert_eq!(find(&rows, Quantity::Coef, Some(&layer), None).value.unwrap(), c);
        assert_eq!(find(&rows, Quantity::Coef, Some(&layer), None).lsc, Some((n - k) as u32));
        let ratios: Vec<f64> =
            row_norms(&fusion.skip).iter().zip(row_norms(&fusion.main)).map(|(s, m)| c * s / m).collect();
        assert!(close(find(&rows, Quantity::SkipRatio, Some(&layer), None).value.unwrap(), mean(&ratios)), "{layer}");
    }

    // ||x_t||^2 per bin.
    let flat = x_t.inner().reshape([12, 64]);
    let sq: Vec<f64> = row_norms(&flat).iter().map(|v| v * v).collect();
    assert!(close(find(&rows, Quantity::XtSqNorm, None, Some(0)).value.unwrap(), mean(&sq[0..3])));
    assert!(find(&rows, Quantity::Robustness, None, None).value.unwrap() > 0.0);
    assert!(find(&rows, Quantity::M0, None, None).value.unwrap() > 0.0);
    // CS records no gates.
    assert!(!rows.iter().any(|r| r.quantity.name().starts_with("gate")));
}

#[test]
fn learnable_scaling_records_gate_statistics_and_their_decay_fit() {
    let device = Device::flex().autodiff();
    let config = ModelConfig::Uvit(UViTConfig::tiny(6));
    let net = config.init(SkipScaling::Learnable { shared: false, reduction: 4 }, &device);
    let images = synthetic(16, 1, 8, 4);
    let schedule = NoiseSchedule::new(&ScheduleConfig::default());
    let diagnostics =
        DiagnosticsConfig { every: 1, t_bins: 2, probe_per_bin: 2, robustness_delta: 1e-2, gradient_bins_every: 1 };
    let recorder = Recorder::new(&diagnostics, &images, &schedule, &device).unwrap();
    let rows = recorder.record(1, &net, &net);
    for k in 0..3 {
        let layer = format!("dec.{k}");
        let stat = |q| find(&rows, q, Some(&layer), None).value.unwrap();
        let (mean, min, max) = (stat(Quantity::GateMean), stat(Quantity::GateMin), stat(Quantity::GateMax));
        assert!(0.0 < min && min <= mean && mean <= max && max < 1.0);
        assert_eq!(stat(Quantity::Coef), mean);
    }
    for q in [Quantity::GateFitA, Quantity::GateFitKappa, Quantity::GateFitR2] {
        assert!(find(&rows, q, None, None).value.is_some(), "{q}");
    }
}

/// The default probe is at least 64 samples, and every recorder (every run, the device's seed set
/// as a run sets it) draws the same one.
#[test]
fn the_default_probe_is_large_and_the_same_for_every_run() {
    let device = Device::flex().autodiff();
    let schedule = NoiseSchedule::new(&ScheduleConfig::default());
    let config = DiagnosticsConfig { every: 1, ..DiagnosticsConfig::default() };
    let images = synthetic(config.t_bins * config.probe_per_bin, 1, 8, 4);
    let probe = |run_seed: u64| {
        device.seed(run_seed);
        let recorder = Recorder::new(&config, &images, &schedule, &device).unwrap();
        let (x_t, time, _) = recorder.probe().unwrap();
        (x_t.into_data().try_to_vec::<f32>().unwrap(), time.into_data().try_to_vec::<f32>().unwrap())
    };
    let (x_t, time) = probe(0);
    assert!(time.len() >= 64, "{} probe samples", time.len());
    assert_eq!((x_t, time), probe(1));
}

#[test]
fn recording_is_off_when_every_is_zero() {
    let device = Device::flex().autodiff();
    let images = synthetic(4, 1, 8, 4);
    let schedule = NoiseSchedule::new(&ScheduleConfig::default());
    let recorder = Recorder::new(&DiagnosticsConfig::default(), &images, &schedule, &device).unwrap();
    assert!(recorder.probe().is_none());
    assert!(!(1..100).any(|s| recorder.is_due(s)));
}

#[test]
fn per_bin_gradient_norms_come_on_every_configured_record() {
    let device = Device::flex().autodiff();
    let config = ModelConfig::Uvit(UViTConfig::tiny(2));
    let net = config.init(SkipScaling::Original, &device);
    let images = synthetic(8, 1, 8, 4);
    let schedule = NoiseSchedule::new(&ScheduleConfig::default());
    let diagnostics =
        DiagnosticsConfig { every: 3, t_bins: 2, probe_per_bin: 1, robustness_delta: 1e-2, gradient_bins_every: 2 };
    let recorder = Recorder::new(&diagnostics, &images, &schedule, &device).unwrap();
    let bins = |step| recorder.record(step, &net, &net).iter().filter(|r| r.quantity == Quantity::GradNormBin).count();
    assert_eq!(bins(3), 0, "the first record skips them");
    assert_eq!(bins(6), 2 * 3, "enc, dec and total for each of 2 bins");
}

/// What each LS gate sees: its skip averaged over D per token, summarised as recorded, against the
/// same means taken from the trace by plain loops; LSC 1's cosine to itself is 1.
#[test]
fn learnable_scaling_records_each_gates_pooled_input() {
    let device = Device::flex().autodiff();
    device.seed(3);
    let (img_size, patch_size, embed_dim) = (8, 2, 16);
    let config = ModelConfig::Uvit(UViTConfig {
        img_size,
        patch_size,
        embed_dim,
        depth: 6,
        num_heads: 2,
        ..UViTConfig::default()
    });
    let net = config.init(SkipScaling::Learnable { shared: true, reduction: 4 }, &device);
    let images = synthetic(16, 1, 8, 4);
    let schedule = NoiseSchedule::new(&ScheduleConfig::default());
    let diagnostics =
        DiagnosticsConfig { every: 1, t_bins: 2, probe_per_bin: 3, robustness_delta: 1e-2, gradient_bins_every: 1 };
    let recorder = Recorder::new(&diagnostics, &images, &schedule, &device).unwrap();
    let rows = recorder.record(1, &net, &net);
    let (x_t, time, _) = recorder.probe().unwrap();
    let mut trace = ForwardTrace::default();
    net.valid().forward(x_t.inner(), time.inner(), Some(&mut trace));

    // Per LSC, the pooled input [sample][token]: 1 + (8 / 2)^2 = 17 tokens of 16 channels each.
    let tokens = 1 + (img_size / patch_size).pow(2);
    let pooled: BTreeMap<usize, (String, Vec<Vec<f64>>)> = trace
        .fusions
        .iter()
        .enumerate()
        .map(|(k, fusion)| {
            let (features, v) = values(fusion.skip.clone());
            assert_eq!(features, tokens * embed_dim);
            let per_token = v.chunks(features).map(|sample| sample.chunks(embed_dim).map(mean).collect()).collect();
            (fusion.lsc, (format!("dec.{k}"), per_token))
        })
        .collect();
    let sample_sd = |v: &[f64]| {
        let m = mean(v);
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    };
    let outermost = &pooled[&1].1;
    for (lsc, (layer, p)) in &pooled {
        let stat = |input: GateInput| {
            let record = find(&rows, input.quantity(), Some(layer), None);
            assert_eq!(record.lsc, Some(*lsc as u32), "{layer}");
            record.value.unwrap()
        };
        let all: Vec<f64> = p.iter().flatten().copied().collect();
        let rms = mean(&all.iter().map(|x| x * x).collect::<Vec<_>>()).sqrt();
        // Means near zero are compared on the scale of the input's size.
        let near = |recorded: f64, direct: f64| (recorded - direct).abs() <= 1e-4 * rms;
        assert!(near(stat(GateInput::Mean), mean(&all)), "{layer} mean");
        assert!(close(stat(GateInput::Rms), rms), "{layer} rms");
        let over_tokens: Vec<f64> = p.iter().map(|sample| sample_sd(sample)).collect();
        assert!(near(stat(GateInput::PositionSd), mean(&over_tokens)), "{layer} position sd");
        let over_samples: Vec<f64> =
            (0..tokens).map(|j| sample_sd(&p.iter().map(|sample| sample[j]).collect::<Vec<_>>())).collect();
        assert!(near(stat(GateInput::SampleSd), mean(&over_samples)), "{layer} sample sd");
        let cosines: Vec<f64> = p
            .iter()
            .zip(outermost)
            .map(|(a, b)| {
                let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
                dot / (norm(a) * norm(b))
            })
            .collect();
        assert!((stat(GateInput::CosineToLsc1) - mean(&cosines)).abs() < 1e-4, "{layer} cosine");
        let differences: Vec<f64> =
            p.iter().zip(outermost).flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).powi(2))).collect();
        assert!(near(stat(GateInput::DistanceToLsc1), mean(&differences).sqrt()), "{layer} distance");
    }
    assert!((find(&rows, GateInput::CosineToLsc1.quantity(), Some("dec.2"), None).value.unwrap() - 1.0).abs() < 1e-5);
}
