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
    scalelong_kernels::tune_allocator();
    // `SCALELONG_BENCH_PEAK=1`: the FMA peak of this process's rayon threads and the kernels' ISA
    // (`just bench-compare` probes the machine with it at start).
    if std::env::var("SCALELONG_BENCH_PEAK").is_ok() {
        return peak_probe();
    }
    // `SCALELONG_BENCH_STEP=op::preset:strategy` (op train or sample): time that step alone
    // (`SCALELONG_BENCH_SAMPLES` samples after a warm-up), started together with the other
    // processes of `SCALELONG_BENCH_BARRIER=dir:n`; one BENCH_JSON line. `just bench-compare` runs
    // it, one process or two side by side.
    if let Ok(case) = std::env::var("SCALELONG_BENCH_STEP") {
        return timed_step(&case);
    }
    // `SCALELONG_BENCH_AB=cases` (comma-separated `op::preset:strategy`, op train or sample):
    // instead of divan, alternate the fused ops of scalelong_kernels with the plain burn
    // compositions they replace, step by step in this one process, and print the ratios.
    if let Ok(cases) = std::env::var("SCALELONG_BENCH_AB") {
        let rounds = std::env::var("SCALELONG_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(6);
        for case in cases.split(',') {
            ab(case, rounds);
        }
        return;
    }
    divan::main();
    print_summary();
}

/// Prints the FMA peak of this process's rayon threads and the ISA the kernels run on.
fn peak_probe() {
    let peak = scalelong_kernels::testing::peak_gflops();
    println!(
        "BENCH_PEAK {{\"threads\":{},\"peak_gflops\":{peak:.3},\"isa\":\"{}\"}}",
        rayon::current_num_threads(),
        scalelong_kernels::kernel_isa()
    );
}

/// Waits until `n` processes (this one included) have reached this point, each marking it with a
/// file in `dir` (`SCALELONG_BENCH_BARRIER=dir:n`); gives up after a minute.
fn barrier() {
    let Ok(spec) = std::env::var("SCALELONG_BENCH_BARRIER") else { return };
    let (dir, n) = spec.rsplit_once(':').expect("SCALELONG_BENCH_BARRIER is dir:n");
    let n: usize = n.parse().expect("SCALELONG_BENCH_BARRIER's n");
    std::fs::write(std::path::Path::new(dir).join(format!("rust-{}", std::process::id())), b"").unwrap();
    let start = Instant::now();
    while std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0) < n && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// One operation timed alone: a warm-up, the barrier, then `SCALELONG_BENCH_SAMPLES` samples.
fn timed_step(case: &str) {
    let (op, case) = case.split_once("::").expect("op::preset:strategy");
    let samples: usize = std::env::var("SCALELONG_BENCH_SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let (preset, config, scaling) = parse_case(case);
    let train = match op {
        "train" => true,
        "sample" => false,
        other => panic!("unknown op {other} (train or sample)"),
    };
    let device = if train { Device::flex().autodiff() } else { Device::flex() };
    let Setup { model, mut optim, batch, .. } = setup(&config, scaling, &device);
    let mut model = Some(model);
    let mut once = || {
        let start = Instant::now();
        let m = model.take().unwrap();
        model = Some(if train {
            step(m, &mut optim, &batch)
        } else {
            let _ = m.forward(batch.x_t.clone(), batch.model_time.clone(), None).into_data();
            m
        });
        start.elapsed().as_secs_f64()
    };
    once(); // warm-up (AdamW's state, the allocator's free lists)
    barrier();
    let times: Vec<f64> = (0..samples).map(|_| once()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let fwd_flops = 2.0 * forward_macs(&config, scaling) as f64;
    let flops = if train { 3.0 } else { 1.0 } * fwd_flops * BATCH as f64;
    let list = times.iter().map(|t| format!("{t:.6}")).collect::<Vec<_>>().join(",");
    let (_, strategy) = case.split_once(':').unwrap();
    println!(
        "BENCH_JSON {{\"impl\":\"burn\",\"preset\":\"{preset}\",\"strategy\":\"{strategy}\",\"op\":\"{op}\",\"batch\":{BATCH},\
         \"samples\":{samples},\"samples_s\":[{list}],\"median_s\":{median:.6},\"examples_per_s\":{:.3},\"gflops\":{:.3},\
         \"fwd_gflop_per_example\":{:.6},\"threads\":{},\"isa\":\"{}\",\"peak_rss_kb\":{}}}",
        BATCH as f64 / median,
        flops / median / 1e9,
        fwd_flops / 1e9,
        rayon::current_num_threads(),
        scalelong_kernels::kernel_isa(),
        peak_rss_kb().unwrap_or(0)
    );
}

/// Alternates fused and reference steps on twin models (same initial weights), `rounds` times;
/// for op `diag`, ten steps recording on the tenth against ten steps without.
fn ab(case: &str, rounds: usize) {
    let (op, case) = case.split_once("::").expect("op::preset:strategy");
    if op == "diag" {
        return ab_diag(case, rounds);
    }
    let (_, config, scaling) = parse_case(case);
    let train = op == "train";
    let device = if train { Device::flex().autodiff() } else { Device::flex() };
    let Setup { model, optim, batch, .. } = setup(&config, scaling, &device);
    let Setup { optim: optim_ref, .. } = setup(&config, scaling, &device);
    let mut fused = (Some(model.clone()), optim);
    let mut reference = (Some(model), optim_ref);
    let run = |state: &mut (Option<DiffusionNet>, ModuleOptimizer), reference: bool| -> f64 {
        let start = Instant::now();
        let go = |state: &mut (Option<DiffusionNet>, ModuleOptimizer)| {
            let m = state.0.take().unwrap();
            state.0 = Some(if train {
                step(m, &mut state.1, &batch)
            } else {
                let _ = m.forward(batch.x_t.clone(), batch.model_time.clone(), None).into_data();
                m
            });
        };
        if reference {
            scalelong_kernels::testing::with_reference_ops(|| go(state))
        } else {
            go(state)
        }
        start.elapsed().as_secs_f64()
    };
    run(&mut fused, false);
    run(&mut reference, true);
    let mut ratios = Vec::new();
    let (mut tf, mut tr) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let r = run(&mut reference, true);
        let f = run(&mut fused, false);
        ratios.push(r / f);
        tf.push(f);
        tr.push(r);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "AB {op}::{case}: reference {:.4} s, fused {:.4} s (medians of {rounds}); speedup: median of per-round ratios {:.2}x",
        med(&mut tr),
        med(&mut tf),
        med(&mut ratios)
    );
}

fn parse_case(case: &str) -> (String, ModelConfig, SkipScaling) {
    let (name, strategy) = case.split_once(':').expect("case is preset:strategy");
    let config = preset(name).unwrap_or_else(|| panic!("unknown preset {name}"));
    // The config's own parser: a name the bench accepts is one a config accepts.
    let scaling: SkipScaling = strategy.parse().unwrap_or_else(|error| panic!("{case}: {error}"));
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
            let gate = scaling.gate_reduction().map_or(0, |reduction| n * 2 * l * (l / reduction as u64).max(1));
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
            let attn_at =
                |level: usize, hw: u64, cc: u64| if level == last && c.attention_heads > 0 { attn(hw, cc) } else { 0 };
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
    println!(
        "fp32 peak measured on {} threads: {:.0} GFLOP/s",
        rayon::current_num_threads(),
        scalelong_kernels::testing::peak_gflops()
    );
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
        println!(
            "{op:<8} {case:<20} {median:>10.4} {eps:>11.1} {gflops:>9.2} {:>6.1}%",
            100.0 * gflops / scalelong_kernels::testing::peak_gflops()
        );
        let (preset, strategy) = case.split_once(':').unwrap();
        println!(
            "BENCH_JSON {{\"impl\":\"burn\",\"preset\":\"{preset}\",\"strategy\":\"{strategy}\",\"op\":\"{op}\",\"batch\":{BATCH},\
             \"samples\":{},\"median_s\":{median:.6},\"examples_per_s\":{eps:.3},\"gflops\":{gflops:.3},\"peak_fraction\":{:.4},\
             \"fwd_gflop_per_example\":{:.6},\"peak_rss_kb\":{}}}",
            s.len(),
            gflops / scalelong_kernels::testing::peak_gflops(),
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
    let schedule = NoiseSchedule::new(&ScheduleConfig::default());
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
fn step_recorded(
    model: DiffusionNet,
    optim: &mut ModuleOptimizer,
    batch: &NoisedBatch,
    recorder: &Recorder,
    n: u64,
) -> DiffusionNet {
    step_recorded_timed(model, optim, batch, recorder, n).0
}

/// [`step_recorded`], also returning the seconds spent on the recording alone.
fn step_recorded_timed(
    model: DiffusionNet,
    optim: &mut ModuleOptimizer,
    batch: &NoisedBatch,
    recorder: &Recorder,
    n: u64,
) -> (DiffusionNet, f64) {
    let (model, grads, _) = forward_backward(model, batch);
    let due = recorder.is_due(n);
    let started = Instant::now();
    let mut rows = if due { recorder.gradient_rows(n, &model, &grads) } else { Vec::new() };
    let before = due.then(|| model.clone());
    let mut recording = started.elapsed().as_secs_f64();
    let model = optim.step(2e-4, model, grads);
    if let Some(before) = before {
        let started = Instant::now();
        rows.extend(recorder.record(n, &before, &model));
        recording += started.elapsed().as_secs_f64();
    }
    std::hint::black_box(rows);
    (model, recording)
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
    bencher
        .counter(divan::counter::ItemsCount::new(BATCH))
        .bench_local(|| timed("sample", case, || model.forward(batch.x_t.clone(), batch.model_time.clone(), None)));
}

fn diag(bencher: divan::Bencher, case: &str, on: bool) {
    let (_, config, scaling) = parse_case(case);
    let device = Device::flex().autodiff();
    let Setup { model, mut optim, batch, schedule } = setup(&config, scaling, &device);
    let [c, h, _] = config.image_shape();
    let probe = DiagnosticsConfig::default();
    let images = scalelong_data::synthetic(probe.t_bins * probe.probe_per_bin, c, h, 0);
    let every = if on { DIAG_EVERY } else { 0 };
    let diag_config = DiagnosticsConfig { every, ..DiagnosticsConfig::default() };
    let recorder = Recorder::new(&diag_config, &images, &schedule, &device).unwrap();
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

/// Ten steps with the recorder due on the tenth, against ten steps without, alternating on twin
/// models; prints the median per-round overhead.
fn ab_diag(case: &str, rounds: usize) {
    let (preset, config, scaling) = parse_case(case);
    let device = Device::flex().autodiff();
    let Setup { model, optim, batch, schedule } = setup(&config, scaling, &device);
    let Setup { optim: optim_off, .. } = setup(&config, scaling, &device);
    let [c, h, _] = config.image_shape();
    let probe = DiagnosticsConfig::default();
    let images = scalelong_data::synthetic(probe.t_bins * probe.probe_per_bin, c, h, 0);
    let on = Recorder::new(
        &DiagnosticsConfig { every: DIAG_EVERY, ..DiagnosticsConfig::default() },
        &images,
        &schedule,
        &device,
    )
    .unwrap();
    let off =
        Recorder::new(&DiagnosticsConfig { every: 0, ..DiagnosticsConfig::default() }, &images, &schedule, &device)
            .unwrap();
    let mut with = (Some(model.clone()), optim, &on);
    let mut without = (Some(model), optim_off, &off);
    // Per step over ten steps, and the recording's own seconds.
    let ten = |state: &mut (Option<DiffusionNet>, ModuleOptimizer, &Recorder)| -> (f64, f64) {
        let start = Instant::now();
        let mut m = state.0.take().unwrap();
        let mut recording = 0.0;
        for n in 1..=DIAG_EVERY {
            let (next, r) = step_recorded_timed(m, &mut state.1, &batch, state.2, n);
            m = next;
            recording += r;
        }
        state.0 = Some(m);
        (start.elapsed().as_secs_f64() / DIAG_EVERY as f64, recording)
    };
    // Warm-up: one recorded step (the recorder's first forward allocates its probe buffers).
    let m = with.0.take().unwrap();
    with.0 = Some(step_recorded(m, &mut with.1, &batch, &on, DIAG_EVERY));
    let (mut t_on, mut t_off, mut overheads, mut recordings) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (a, _) = ten(&mut without);
        let (b, rec) = ten(&mut with);
        t_off.push(a);
        t_on.push(b);
        overheads.push(b / a - 1.0);
        // The recording's cost over the ten steps without it: less noisy than b / a - 1.
        recordings.push(rec / (DIAG_EVERY as f64 * a));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // The records above (step 10) skip the per-bin gradient norms, which the recorder adds on every
    // `gradient_bins_every`-th record (step multiple of every * gradient_bins_every): time one such
    // full record too and amortise over the cycle.
    let cycle = DiagnosticsConfig::default().gradient_bins_every;
    let full_step = DIAG_EVERY * cycle;
    let m = with.0.take().unwrap();
    let (m, grads, _) = forward_backward(m, &batch);
    let started = Instant::now();
    let mut rows = on.gradient_rows(full_step, &m, &grads);
    let before = m.clone();
    let mut full = started.elapsed().as_secs_f64();
    let m = with.1.step(2e-4, m, grads);
    let started = Instant::now();
    rows.extend(on.record(full_step, &before, &m));
    full += started.elapsed().as_secs_f64();
    std::hint::black_box(rows);
    let (on_s, off_s, over) = (med(&mut t_on), med(&mut t_off), med(&mut overheads));
    let light = med(&mut recordings) * DIAG_EVERY as f64 * off_s; // seconds of one light record
    let rec = ((cycle - 1) as f64 * light + full) / cycle as f64 / (DIAG_EVERY as f64 * off_s);
    let (_, strategy) = case.split_once(':').unwrap();
    println!(
        "AB diag::{case}: per step {off_s:.4} s without, {on_s:.4} s recording every {DIAG_EVERY}th (medians of {rounds}); overhead: median of per-round ratios {:+.1}%; a record costs {light:.3} s, {full:.3} s with the per-bin gradients (every {cycle}th record): {:.1}% of the training time on average",
        100.0 * over,
        100.0 * rec
    );
    println!(
        "BENCH_JSON {{\"impl\":\"burn\",\"preset\":\"{preset}\",\"strategy\":\"{strategy}\",\"op\":\"diag\",\"batch\":{BATCH},\"samples\":{rounds},\"median_s\":{on_s:.6},\"examples_per_s\":{:.3},\"off_median_s\":{off_s:.6},\"off_examples_per_s\":{:.3},\"overhead\":{over:.5},\"recording_share\":{rec:.5},\"record_s\":{light:.4},\"full_record_s\":{full:.4},\"peak_rss_kb\":{}}}",
        BATCH as f64 / on_s,
        BATCH as f64 / off_s,
        peak_rss_kb().unwrap_or(0)
    );
}
