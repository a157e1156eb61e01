//! Exploration: burn ops at the presets' shapes.

use burn::prelude::*;
use burn::tensor::Distribution;

fn main() {
    divan::main();
}

// (rows, k, n) of the U-ViT's Linear layers at batch 64 (65 tokens): qkv, proj, fc1, fc2, dX of qkv, dW of qkv.
const MATMULS: &[(usize, usize, usize)] = &[(4160, 64, 192), (4160, 64, 64), (4160, 64, 256), (4160, 256, 64), (4160, 192, 64), (64, 4160, 192)];

#[divan::bench(args = MATMULS, sample_count = 20)]
fn matmul(bencher: divan::Bencher, (m, k, n): (usize, usize, usize)) {
    let device = Device::flex();
    let a = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
    let flops = 2.0 * (m * k * n) as f64;
    let mut times = Vec::new();
    bencher.bench_local(|| {
        let t = std::time::Instant::now();
        let c = a.clone().matmul(b.clone());
        times.push(t.elapsed().as_secs_f64());
        c
    });
    times.sort_by(f64::total_cmp);
    if let Some(t) = times.get(times.len() / 2) {
        eprintln!("matmul {m}x{k}x{n}: {:.1} GFLOP/s", flops / t / 1e9);
    }
}

#[divan::bench(sample_count = 20)]
fn attention_scores(bencher: divan::Bencher) {
    let device = Device::flex();
    let q = Tensor::<4>::random([64, 4, 65, 16], Distribution::Normal(0.0, 1.0), &device);
    let k = Tensor::<4>::random([64, 4, 16, 65], Distribution::Normal(0.0, 1.0), &device);
    bencher.bench_local(|| q.clone().matmul(k.clone()));
}

#[divan::bench(args = ["uvit-small", "unet-small"], sample_count = 1)]
fn phases(name: &str) {
    use burn::optim::{AdamWConfig, GradientsParams};
    use scalelong_model::SkipScaling;
    let device = Device::flex().autodiff();
    let config = scalelong_model::presets::preset(name).unwrap();
    let mut model = config.init(SkipScaling::Original, &device);
    let mut optim = AdamWConfig::new().init();
    let x = Tensor::<4>::random([64, 1, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<1>::random([64], Distribution::Uniform(0.0, 999.0), &device);
    let mut rows = Vec::new();
    for it in 0..6 {
        let t0 = std::time::Instant::now();
        let y = model.forward(x.clone(), t.clone(), None);
        let loss = (y - x.clone()).square().mean();
        let _ = loss.clone().into_scalar::<f32>();
        let t1 = std::time::Instant::now();
        let g = loss.backward();
        let t2 = std::time::Instant::now();
        let grads = GradientsParams::from_grads(g, &model);
        model = optim.step(1e-4, model, grads);
        let t3 = std::time::Instant::now();
        if it > 0 {
            rows.push([(t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64(), (t3 - t2).as_secs_f64()]);
        }
    }
    for r in rows {
        eprintln!("{name}: forward {:.3} s, backward {:.3} s, optimizer {:.3} s", r[0], r[1], r[2]);
    }
}
