//! Each fused op of `scalelong_kernels` against the burn composition it replaces, at the
//! presets' shapes (batch 64): forward on the inference backend (`fwd`) and forward + backward on
//! autodiff (`train`). Divan times the fused op; run with `SCALELONG_BENCH_AB=1` to alternate
//! reference, portable (the fused op on its portable kernels, as on a CPU without AVX2) and fused
//! calls in one process instead and print the ratios of each round's times (and, on a CPU with
//! AVX-512, the fused op on its AVX2 kernels too).

use burn::nn::{GroupNormConfig, LayerNormConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use scalelong_kernels::testing::{with_kernel_set, with_reference_ops};
use scalelong_kernels::{self as kernels, Fused, FusedSilu, KernelSet};

fn main() {
    kernels::tune_allocator();
    if std::env::var("SCALELONG_BENCH_AB").is_ok() {
        ab_all();
        return;
    }
    divan::main();
}

fn normal<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// Which implementation a call runs.
#[derive(Clone, Copy)]
enum Path {
    /// The composition of burn ops the fused op replaces.
    Reference,
    /// The fused op with its portable kernels, as on a CPU without AVX2 (gemm for the products,
    /// the element-wise passes as built).
    Portable,
    /// The fused op with its AVX2 kernels, as on a CPU without AVX-512.
    Avx2,
    /// The fused op as it runs here.
    Fused,
}

/// Forward (and, on autodiff, backward of a weighted sum) of `f` on `path`.
fn call<const O: usize>(f: &dyn Fn() -> Tensor<O>, path: Path, train: bool) {
    let go = || {
        let y = f();
        if train {
            let _ = (y.clone() * y).sum().backward();
        } else {
            let _ = y.into_data();
        }
    };
    match path {
        Path::Reference => with_reference_ops(go),
        Path::Portable => with_kernel_set(KernelSet::Portable, go),
        Path::Avx2 => with_kernel_set(KernelSet::Avx2, go),
        Path::Fused => go(),
    }
}

// (batch, c_in, c_out, size): the UNet's 3x3 convolutions.
const CONVS: &[(usize, usize, usize, usize)] =
    &[(64, 16, 16, 32), (64, 32, 16, 32), (64, 48, 16, 32), (64, 32, 32, 16), (64, 64, 32, 16), (64, 32, 32, 8)];
// (batch, channels, size, groups): the UNet's group norms.
const NORMS: &[(usize, usize, usize, usize)] = &[(64, 16, 32, 8), (64, 48, 32, 8), (64, 32, 16, 8), (64, 64, 8, 8)];

fn conv_case(shape: (usize, usize, usize, usize), train: bool) -> impl Fn() -> Tensor<4> {
    let (b, ci, co, h) = shape;
    let device = if train { Device::flex().autodiff() } else { Device::flex() };
    let x = normal([b, ci, h, h], &device);
    let w = normal([co, ci, 3, 3], &device).mul_scalar(0.1);
    let bias = normal([co], &device);
    let (x, w, bias) = if train { (x.require_grad(), w.require_grad(), bias.require_grad()) } else { (x, w, bias) };
    move || kernels::conv2d(x.clone(), w.clone(), bias.clone(), 1)
}

fn norm_case(shape: (usize, usize, usize, usize), train: bool) -> impl Fn() -> Tensor<4> {
    let (b, c, h, groups) = shape;
    let device = if train { Device::flex().autodiff() } else { Device::flex() };
    let x = normal([b, c, h, h], &device);
    let x = if train { x.require_grad() } else { x };
    let norm = GroupNormConfig::new(groups, c).init(&device);
    move || norm.fused_silu(x.clone())
}

fn attention_case(train: bool) -> impl Fn() -> Tensor<3> {
    let device = if train { Device::flex().autodiff() } else { Device::flex() };
    let x = normal([64, 65, 192], &device);
    let x = if train { x.require_grad() } else { x };
    move || kernels::qkv_attention(x.clone(), 4)
}

fn layer_norm_case(train: bool) -> impl Fn() -> Tensor<3> {
    let device = if train { Device::flex().autodiff() } else { Device::flex() };
    let x = normal([64, 65, 64], &device);
    let x = if train { x.require_grad() } else { x };
    let norm = LayerNormConfig::new(64).init(&device);
    move || norm.fused(x.clone())
}

fn linear_case((m, k, n): (usize, usize, usize), train: bool) -> impl Fn() -> Tensor<3> {
    let device = if train { Device::flex().autodiff() } else { Device::flex() };
    let x = normal([64, m / 64, k], &device);
    let (w, b) = (normal([k, n], &device).mul_scalar(0.1), normal([n], &device));
    let (x, w, b) = if train { (x.require_grad(), w.require_grad(), b.require_grad()) } else { (x, w, b) };
    move || kernels::linear(x.clone(), w.clone(), b.clone())
}

fn ab<const O: usize>(name: &str, f: impl Fn() -> Tensor<O>, train: bool) {
    let rounds: usize = std::env::var("SCALELONG_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(15);
    let paths = [Path::Reference, Path::Portable, Path::Avx2, Path::Fused];
    for path in paths {
        call(&f, path, train);
    }
    // Per round: the time of each path, and its ratios to the fused one.
    let mut times: [Vec<f64>; 4] = Default::default();
    let mut ratios: [Vec<f64>; 3] = Default::default();
    for _ in 0..rounds {
        let round = paths.map(|path| {
            let t = std::time::Instant::now();
            call(&f, path, train);
            t.elapsed().as_secs_f64()
        });
        for (all, t) in times.iter_mut().zip(round) {
            all.push(t);
        }
        for (ratio, t) in ratios.iter_mut().zip(round) {
            ratio.push(t / round[3]);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [reference, portable, avx2, fused] = times.each_mut().map(|v| 1e3 * med(v));
    println!(
        "AB {name:<34} {}: burn {reference:>8.2} ms, portable {portable:>8.2} ms, AVX2 {avx2:>8.2} ms, fused {fused:>8.2} ms; fused vs burn {:.2}x, vs portable {:.2}x, vs AVX2 {:.2}x",
        if train { "train" } else { "fwd  " },
        med(&mut ratios[0]),
        med(&mut ratios[1]),
        med(&mut ratios[2]),
    );
}

fn ab_all() {
    for train in [false, true] {
        for &c in CONVS {
            ab(&format!("conv3x3 b{} {}->{} {}x{}", c.0, c.1, c.2, c.3, c.3), conv_case(c, train), train);
        }
        for &n in NORMS {
            ab(&format!("group_norm+silu b{} c{} {}x{} g{}", n.0, n.1, n.2, n.2, n.3), norm_case(n, train), train);
        }
        ab("qkv_attention b64 l65 h4 dh16", attention_case(train), train);
        ab("layer_norm b64 l65 d64", layer_norm_case(train), train);
        for &(m, k, n) in MATMULS {
            ab(&format!("linear b64 l65 {k}->{n}"), linear_case((m, k, n), train), train);
        }
    }
}

#[divan::bench(args = CONVS, sample_count = 10)]
fn conv_train(bencher: divan::Bencher, c: (usize, usize, usize, usize)) {
    let f = conv_case(c, true);
    bencher.bench_local(|| call(&f, Path::Fused, true));
}

#[divan::bench(args = NORMS, sample_count = 10)]
fn group_norm_train(bencher: divan::Bencher, n: (usize, usize, usize, usize)) {
    let f = norm_case(n, true);
    bencher.bench_local(|| call(&f, Path::Fused, true));
}

#[divan::bench(sample_count = 10)]
fn attention_train(bencher: divan::Bencher) {
    let f = attention_case(true);
    bencher.bench_local(|| call(&f, Path::Fused, true));
}

#[divan::bench(sample_count = 10)]
fn layer_norm_train(bencher: divan::Bencher) {
    let f = layer_norm_case(true);
    bencher.bench_local(|| call(&f, Path::Fused, true));
}

// (rows, k, n) of the U-ViT presets' matmuls at batch 64 (65 tokens, width 64): qkv, MLP up,
// MLP down: burn's matmul against kernels::linear (`2 * rows * k * n` FLOPs a call; PyTorch's
// `a @ b` on the same shapes, 2 threads, ran at 131-153 GFLOP/s here).
const MATMULS: &[(usize, usize, usize)] = &[(4160, 64, 192), (4160, 64, 256), (4160, 256, 64)];

#[divan::bench(args = MATMULS, sample_count = 20)]
fn matmul_fwd(bencher: divan::Bencher, (m, k, n): (usize, usize, usize)) {
    let device = Device::flex();
    let (a, b) = (normal([m, k], &device), normal([k, n], &device));
    bencher.bench_local(|| a.clone().matmul(b.clone()));
}

#[divan::bench(args = MATMULS, sample_count = 20)]
fn linear_fwd(bencher: divan::Bencher, (m, k, n): (usize, usize, usize)) {
    let device = Device::flex();
    let (a, w, b) = (normal([m, k], &device), normal([k, n], &device), normal([n], &device));
    bencher.bench_local(|| kernels::linear(a.clone(), w.clone(), b.clone()));
}

#[divan::bench(sample_count = 1)]
fn layer_norm_probe() {
    let device = Device::flex();
    let x = normal([64, 65, 64], &device);
    let norm = LayerNormConfig::new(64).init(&device);
    for round in 0..3 {
        let t = std::time::Instant::now();
        for _ in 0..200 {
            let _ = norm.fused(x.clone());
        }
        let a = t.elapsed().as_secs_f64() / 200.0;
        let t = std::time::Instant::now();
        for _ in 0..200 {
            let _ = norm.forward(x.clone());
        }
        let b = t.elapsed().as_secs_f64() / 200.0;
        let t = std::time::Instant::now();
        for _ in 0..200 {
            let _ = norm.forward(x.clone()).into_data();
        }
        let c = t.elapsed().as_secs_f64() / 200.0;
        let t = std::time::Instant::now();
        for _ in 0..200 {
            let _ = norm.fused(x.clone()).into_data();
        }
        let d = t.elapsed().as_secs_f64() / 200.0;
        eprintln!(
            "round {round}: fused {:.3} ms, burn {:.3} ms; with into_data: burn {:.3} ms fused {:.3} ms",
            a * 1e3,
            b * 1e3,
            c * 1e3,
            d * 1e3
        );
    }
}
