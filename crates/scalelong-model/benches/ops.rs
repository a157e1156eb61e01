//! Exploration: burn ops vs candidates at the presets' shapes.

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};

fn main() {
    divan::main();
}

const CONVS: &[(usize, usize, usize, usize)] = &[(64, 16, 16, 32), (64, 48, 16, 32), (64, 32, 32, 16), (64, 64, 32, 16), (64, 32, 32, 8)];

fn conv_inputs(case: (usize, usize, usize, usize), device: &Device) -> (Tensor<4>, Tensor<4>, Tensor<1>) {
    let (b, ci, co, h) = case;
    let x = Tensor::random([b, ci, h, h], Distribution::Normal(0.0, 1.0), device);
    let w = Tensor::random([co, ci, 3, 3], Distribution::Normal(0.0, 0.1), device);
    let bias = Tensor::random([co], Distribution::Normal(0.0, 0.1), device);
    (x, w, bias)
}

fn burn_conv(x: Tensor<4>, w: Tensor<4>, b: Tensor<1>) -> Tensor<4> {
    conv2d(x, w, Some(b), ConvOptions::new([1, 1], [1, 1], [1, 1], 1))
}

fn im2col_conv(x: Tensor<4>, w: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    let [b, c, h, wd] = x.dims();
    let co = w.dims()[0];
    let xp = x.pad((1, 1, 1, 1), PadMode::Constant(0.0));
    let mut cols = Vec::with_capacity(9);
    for i in 0..3 {
        for j in 0..3 {
            cols.push(xp.clone().slice([0..b, 0..c, i..i + h, j..j + wd]));
        }
    }
    let cols = Tensor::cat(cols, 1).reshape([b, 9 * c, h * wd]);
    let wm = w.permute([0, 2, 3, 1]).reshape([1, co, 9 * c]);
    (wm.matmul(cols) + bias.reshape([1, co, 1])).reshape([b, co, h, wd])
}

fn check() {
    let device = Device::flex();
    let (x, w, b) = conv_inputs((2, 5, 7, 6), &device);
    let a = burn_conv(x.clone(), w.clone(), b.clone());
    let c = im2col_conv(x, w, b);
    let err = (a - c).abs().max().into_scalar::<f32>();
    assert!(err < 1e-4, "{err}");
}

fn case_name(c: &(usize, usize, usize, usize)) -> String {
    format!("b{}c{}o{}h{}", c.0, c.1, c.2, c.3)
}

#[divan::bench(args = CONVS, sample_count = 10)]
fn conv_fwd_burn(bencher: divan::Bencher, case: (usize, usize, usize, usize)) {
    let device = Device::flex();
    let (x, w, b) = conv_inputs(case, &device);
    let _ = case_name(&case);
    bencher.bench_local(|| burn_conv(x.clone(), w.clone(), b.clone()));
}

#[divan::bench(args = CONVS, sample_count = 10)]
fn conv_fwd_im2col(bencher: divan::Bencher, case: (usize, usize, usize, usize)) {
    check();
    let device = Device::flex();
    let (x, w, b) = conv_inputs(case, &device);
    bencher.bench_local(|| im2col_conv(x.clone(), w.clone(), b.clone()));
}

fn train(bencher: divan::Bencher, case: (usize, usize, usize, usize), f: fn(Tensor<4>, Tensor<4>, Tensor<1>) -> Tensor<4>) {
    let device = Device::flex().autodiff();
    let (x, w, b) = conv_inputs(case, &device);
    let (x, w, b) = (x.require_grad(), w.require_grad(), b.require_grad());
    let g = Tensor::<4>::random([case.0, case.2, case.3, case.3], Distribution::Normal(0.0, 1.0), &device);
    bencher.bench_local(|| {
        let y = f(x.clone(), w.clone(), b.clone());
        let grads = (y * g.clone()).sum().backward();
        (x.grad(&grads), w.grad(&grads))
    });
}

#[divan::bench(args = CONVS, sample_count = 10)]
fn conv_train_burn(bencher: divan::Bencher, case: (usize, usize, usize, usize)) {
    train(bencher, case, burn_conv);
}

#[divan::bench(args = CONVS, sample_count = 10)]
fn conv_train_im2col(bencher: divan::Bencher, case: (usize, usize, usize, usize)) {
    train(bencher, case, im2col_conv);
}
