//! Throughput of the presets at batch 64 on 32x32 grey images, for every skip-scaling strategy:
//!
//! - `train`: one training step (forward, loss, backward, AdamW step) on the autodiff backend;
//! - `sample`: one sampler step, i.e. one network forward on the inference backend (what DDIM
//!   does once per step);
//! - `diag_on` / `diag_off`: ten training steps with the diagnostics recorder of train.rs
//!   (`gradient_rows` + `record` on the 10th step) / without; divan reports the time of the ten.
//!
//! Each benchmark argument is `preset:strategy`, so one case is selected with a filter such as
//! `cargo bench -p scalelong-model --profile dev --bench steps -- 'train::uvit-small:ls'`.
//! After divan's table the binary prints one `BENCH_JSON {...}` line per case (median seconds,
//! examples/s, GFLOP/s, fraction of the CPU's fp32 peak), which `just bench-compare` reads.
//!
//! FLOPs are counted analytically ([`forward_macs`]): multiply-accumulates of every matmul and
//! convolution, times 2, per example; a training step counts 3x the forward.

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use scalelong_diagnostics::recorder::{DiagnosticsConfig, Recorder};
use scalelong_model::diffusion::{NoiseSchedule, NoisedBatch, ScheduleConfig, noise_prediction_loss};
use scalelong_model::presets::preset;
use scalelong_model::{DiffusionNet, ModelConfig, SkipScaling};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

const BATCH: usize = 64;
/// fp32 peak of this machine's 2 cores, measured earlier with an FMA loop (GFLOP/s).
const PEAK_GFLOPS: f64 = 166.0;
const DIAG_EVERY: u64 = 10;

const CASES: &[&str] = &[
    "unet-small:1",
    "unet-small:1/sqrt2",
    "unet-small:cs",
    "unet-small:ls",
    "uvit-small:1",
    "uvit-small:1/sqrt2",
    "uvit-small:cs",
    "uvit-small:ls",
    "uvit-deep:1",
    "uvit-deep:1/sqrt2",
    "uvit-deep:cs",
    "uvit-deep:ls",
];

fn main() {
    divan::main();
    print_summary();
}

fn parse_case(case: &str) -> (String, ModelConfig, SkipScaling) {
    let (name, strategy) = case.split_once(':').expect("case is preset:strategy");
    let config = preset(name).unwrap_or_else(|| panic!("unknown preset {name}"));
    let scaling: SkipScaling = match strategy {
        "1" => SkipScaling::Original,
        "1/sqrt2" => SkipScaling::InvSqrt2,
        "cs" => SkipScaling::Constant { kappa: scalelong_model::skip_scaling::DEFAULT_KAPPA },
        "ls" => SkipScaling::Learnable { shared: true, reduction: scalelong_model::skip_scaling::DEFAULT_REDUCTION },
        other => panic!("unknown strategy {other}"),
    };
    (name.to_string(), config, scaling)
}

// ---------------------------------------------------------------------------------------------
// FLOPs

/// Multiply-accumulates of one forward pass for one example (matmuls and convolutions only).
pub fn forward_macs(config: &ModelConfig, scaling: SkipScaling) -> u64 {
    match config {
        ModelConfig::Uvit(c) => {
            let d = c.embed_dim as u64;
            let grid = (c.img_size / c.patch_size) as u64;
            let l = 1 + grid * grid;
            let patch = (c.patch_size * c.patch_size * c.in_chans) as u64;
            let hidden = (c.embed_dim as f64 * c.mlp_ratio) as u64;
            let n = (c.depth / 2) as u64;
            let time = if c.mlp_time_embed { 8 * d * d } else { 0 };
            // qkv, q k^T, attn v, proj, mlp
            let block = l * 3 * d * d + 2 * l * l * d + l * d * d + 2 * l * d * hidden;
            let skip = l * 2 * d * d;
            let gate = match scaling {
                SkipScaling::Learnable { reduction, .. } => n * 2 * l * (l / reduction as u64).max(1),
                _ => 0,
            };
            let conv = if c.conv { (c.img_size * c.img_size * 9 * c.in_chans * c.in_chans) as u64 } else { 0 };
            time + grid * grid * patch * d + (2 * n + 1) * block + n * skip + l * d * patch + conv + gate
        }
        ModelConfig::Unet(c) => {
            let ch = |level: usize| (c.base_channels * c.channel_mult[level]) as u64;
            let t = 4 * c.base_channels as u64;
            let last = c.channel_mult.len() - 1;
            let conv3 = |hw: u64, cin: u64, cout: u64| hw * 9 * cin * cout;
            let res = |hw: u64, cin: u64, cout: u64| {
                conv3(hw, cin, cout) + t * cout + conv3(hw, cout, cout) + if cin != cout { hw * cin * cout } else { 0 }
            };
            // qkv + proj (4 C^2 per position), q k^T and attn v (2 HW C per position).
            let attn = |hw: u64, c: u64| hw * 4 * c * c + 2 * hw * hw * c;
            let attn_at = |level: usize, hw: u64, cc: u64| if level == last && c.attention_heads > 0 { attn(hw, cc) } else { 0 };
            let mut macs = c.base_channels as u64 * t + t * t; // time MLP
            let mut hw = (c.img_size * c.img_size) as u64;
            macs += conv3(hw, c.in_channels as u64, ch(0));
            let mut skips = vec![ch(0)];
            let mut width = ch(0);
            for level in 0..c.channel_mult.len() {
                for _ in 0..c.res_blocks {
                    macs += res(hw, width, ch(level)) + attn_at(level, hw, ch(level));
                    width = ch(level);
                    skips.push(width);
                }
                if level != last {
                    hw /= 4;
                    macs += conv3(hw, width, width);
                    skips.push(width);
                }
            }
            macs += 2 * res(hw, width, width) + attn_at(last, hw, width);
            for level in (0..c.channel_mult.len()).rev() {
                for i in 0..=c.res_blocks {
                    let s = skips.pop().unwrap();
                    macs += res(hw, width + s, ch(level)) + attn_at(level, hw, ch(level));
                    if let SkipScaling::Learnable { reduction, .. } = scaling {
                        macs += 2 * s * (s / reduction as u64).max(1);
                    }
                    width = ch(level);
                    if level != 0 && i == c.res_blocks {
                        hw *= 4;
                        macs += conv3(hw, width, width);
                    }
                }
            }
            macs + conv3(hw, width, c.in_channels as u64)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Timings collected next to divan's, for the summary.

static TIMES: Mutex<BTreeMap<(String, String), Vec<f64>>> = Mutex::new(BTreeMap::new());

fn timed<T>(op: &str, case: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let secs = start.elapsed().as_secs_f64();
    TIMES.lock().unwrap().entry((op.to_string(), case.to_string())).or_default().push(secs);
    out
}

/// Peak resident set size of this process so far (kB), from /proc.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn print_summary() {
    let times = TIMES.lock().unwrap();
    if times.is_empty() {
        return;
    }
    println!();
    println!("{:<8} {:<20} {:>10} {:>11} {:>9} {:>7}", "op", "case", "median s", "examples/s", "GFLOP/s", "% peak");
    for ((op, case), samples) in times.iter() {
        let mut s = samples.clone();
        s.sort_by(f64::total_cmp);
        let median = s[s.len() / 2];
        let (_, config, scaling) = parse_case(case);
        let fwd_flops = 2.0 * forward_macs(&config, scaling) as f64;
        let (examples, flops) = match op.as_str() {
            "train" => (BATCH as f64, 3.0 * fwd_flops * BATCH as f64),
            "sample" => (BATCH as f64, fwd_flops * BATCH as f64),
            // Per step of the ten; the recording's own work is not counted as FLOPs.
            _ => (10.0 * BATCH as f64, 10.0 * 3.0 * fwd_flops * BATCH as f64),
        };
        let eps = examples / median;
        let gflops = flops / median / 1e9;
        println!("{op:<8} {case:<20} {median:>10.4} {eps:>11.1} {gflops:>9.2} {:>6.1}%", 100.0 * gflops / PEAK_GFLOPS);
        let (preset, strategy) = case.split_once(':').unwrap();
        println!(
            "BENCH_JSON {{\"impl\":\"burn\",\"preset\":\"{preset}\",\"strategy\":\"{strategy}\",\"op\":\"{op}\",\"batch\":{BATCH},\
             \"samples\":{},\"median_s\":{median:.6},\"examples_per_s\":{eps:.3},\"gflops\":{gflops:.3},\"peak_fraction\":{:.4},\
             \"fwd_gflop_per_example\":{:.6},\"peak_rss_kb\":{}}}",
            s.len(),
            gflops / PEAK_GFLOPS,
            fwd_flops / 1e9,
            peak_rss_kb().unwrap_or(0)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The three operations.

struct Setup {
    model: DiffusionNet,
    optim: ModuleOptimizer,
    batch: NoisedBatch,
    schedule: NoiseSchedule,
}

fn setup(config: &ModelConfig, scaling: SkipScaling, device: &Device) -> Setup {
    device.seed(0);
    let model = config.init(scaling, device);
    let [c, h, w] = config.image_shape();
    let shape = [BATCH, c, h, w];
    let schedule = ScheduleConfig::default().build();
    let x0 = Tensor::<4>::random(shape, Distribution::Uniform(-1.0, 1.0), device);
    let noise = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let steps: Vec<usize> = (0..BATCH).map(|i| (i * 997 + 13) % schedule.steps()).collect();
    let batch = schedule.q_sample(x0, noise, &steps);
    // The reference setting's AdamW.
    let optim = AdamWConfig::new().with_beta_1(0.99).with_beta_2(0.999).with_weight_decay(0.03).init();
    Setup { model, optim, batch, schedule }
}

/// Forward, loss (read back, as train.rs logs it) and backward; returns the gradients.
fn forward_backward(model: DiffusionNet, batch: &NoisedBatch) -> (DiffusionNet, GradientsParams, f32) {
    let predicted = model.forward(batch.x_t.clone(), batch.model_time.clone(), None);
    let loss = noise_prediction_loss(predicted, batch.noise.clone());
    let value = loss.clone().into_scalar::<f32>();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (model, grads, value)
}

fn step(model: DiffusionNet, optim: &mut ModuleOptimizer, batch: &NoisedBatch) -> DiffusionNet {
    let (model, grads, _) = forward_backward(model, batch);
    optim.step(2e-4, model, grads)
}

/// One step with the recorder as train.rs uses it when `recorder.is_due(step)`.
fn step_recorded(model: DiffusionNet, optim: &mut ModuleOptimizer, batch: &NoisedBatch, recorder: &Recorder, n: u64) -> DiffusionNet {
    let (model, grads, _) = forward_backward(model, batch);
    let due = recorder.is_due(n);
    let mut rows = if due { recorder.gradient_rows(n, &model, &grads) } else { Vec::new() };
    let before = due.then(|| model.clone());
    let model = optim.step(2e-4, model, grads);
    if let Some(before) = before {
        rows.extend(recorder.record(n, &before, &model));
    }
    std::hint::black_box(rows);
    model
}

#[divan::bench(args = CASES, sample_count = 5, sample_size = 1, max_time = 600)]
fn train(bencher: divan::Bencher, case: &str) {
    let (_, config, scaling) = parse_case(case);
    let device = Device::flex().autodiff();
    let Setup { model, mut optim, batch, .. } = setup(&config, scaling, &device);
    let mut model = Some(step(model, &mut optim, &batch)); // warm-up
    bencher.counter(divan::counter::ItemsCount::new(BATCH)).bench_local(|| {
        let m = model.take().unwrap();
        model = Some(timed("train", case, || step(m, &mut optim, &batch)));
    });
}

#[divan::bench(args = CASES, sample_count = 10, sample_size = 1, max_time = 600)]
fn sample(bencher: divan::Bencher, case: &str) {
    let (_, config, scaling) = parse_case(case);
    let device = Device::flex();
    let Setup { model, batch, .. } = setup(&config, scaling, &device);
    let _ = model.forward(batch.x_t.clone(), batch.model_time.clone(), None); // warm-up
    bencher.counter(divan::counter::ItemsCount::new(BATCH)).bench_local(|| {
        timed("sample", case, || model.forward(batch.x_t.clone(), batch.model_time.clone(), None))
    });
}

fn diag(bencher: divan::Bencher, case: &str, on: bool) {
    let (_, config, scaling) = parse_case(case);
    let device = Device::flex().autodiff();
    let Setup { model, mut optim, batch, schedule } = setup(&config, scaling, &device);
    let [c, h, _] = config.image_shape();
    let images = scalelong_data::synthetic(64, c, h, 0);
    let every = if on { DIAG_EVERY } else { 0 };
    let diag_config = DiagnosticsConfig { every, ..DiagnosticsConfig::default() };
    let recorder = Recorder::new(&diag_config, &images, &schedule, 0, &device).unwrap();
    let mut model = Some(step_recorded(model, &mut optim, &batch, &recorder, 10)); // warm-up, recording
    let op = if on { "diag_on" } else { "diag_off" };
    bencher.counter(divan::counter::ItemsCount::new(BATCH * DIAG_EVERY as usize)).bench_local(|| {
        let mut m = model.take().unwrap();
        m = timed(op, case, || {
            for n in 1..=DIAG_EVERY {
                m = step_recorded(m, &mut optim, &batch, &recorder, n);
            }
            m
        });
        model = Some(m);
    });
}

#[divan::bench(args = CASES, sample_count = 2, sample_size = 1, max_time = 600)]
fn diag_on(bencher: divan::Bencher, case: &str) {
    diag(bencher, case, true);
}

#[divan::bench(args = CASES, sample_count = 2, sample_size = 1, max_time = 600)]
fn diag_off(bencher: divan::Bencher, case: &str) {
    diag(bencher, case, false);
}
