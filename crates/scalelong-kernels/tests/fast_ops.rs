//! Every fused op of `scalelong_kernels` against the composition of burn ops it replaces:
//! forward values on the inference backend and on autodiff, and the gradients of a random linear
//! functional of the output with respect to every input. Tolerances are stated per test; they
//! allow f32 summation-order differences only.

use burn::prelude::*;
use burn::tensor::Distribution;
use scalelong_kernels::testing::{assert_close, fused_path_available, to_vec, with_kernel_set, with_reference_ops};
use scalelong_kernels::{self as kernels, Activation, Fused, FusedSilu, KernelSet, reference};

/// Compares `fast` with `reference` (forward on both backends, input gradients on autodiff).
fn check<const D: usize, const O: usize>(
    name: &str,
    shape: [usize; D],
    fast: impl Fn(Tensor<D>) -> Tensor<O>,
    reference: impl Fn(Tensor<D>) -> Tensor<O>,
    tol: f32,
) {
    let device = Device::flex();
    device.seed(7);
    let x = Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    assert_close(&format!("{name} forward"), to_vec(fast(x.clone())), to_vec(reference(x.clone())), tol);

    let ad = Device::flex().autodiff();
    let x = Tensor::<D>::from_data(x.into_data(), &ad).require_grad();
    let y_fast = fast(x.clone());
    let w = Tensor::<O>::random(y_fast.dims(), Distribution::Normal(0.0, 1.0), &ad);
    let y_ref = reference(x.clone());
    assert_close(&format!("{name} autodiff forward"), to_vec(y_fast.clone()), to_vec(y_ref.clone()), tol);
    let g_fast = x.grad(&(y_fast * w.clone()).sum().backward()).unwrap();
    let g_ref = x.grad(&(y_ref * w).sum().backward()).unwrap();
    assert_close(&format!("{name} input gradient"), to_vec(g_fast), to_vec(g_ref), tol);
}

/// Runs `check` on the kernels this CPU takes, on the AVX2 ones (the same where the CPU has no
/// AVX-512), then on the portable ones (`kernels` names them in messages): gemm for the products
/// and the element-wise passes as built, what a CPU without AVX2 runs, forward and backward.
fn on_every_kernel_set(check: impl Fn(&str)) {
    check("");
    with_kernel_set(KernelSet::Avx2, || check(", AVX2 kernels"));
    with_kernel_set(KernelSet::Portable, || check(", portable kernels"));
}

#[test]
fn qkv_attention_equals_the_composition() {
    // Tolerance 1e-5 relative to the largest value: f32 rounding of different summation orders.
    for (batch, tokens, heads, head_dim) in [(2, 5, 2, 4), (3, 65, 4, 16), (1, 17, 1, 8)] {
        on_every_kernel_set(|kernels| {
            check(
                &format!("qkv_attention b{batch} l{tokens} h{heads} dh{head_dim}{kernels}"),
                [batch, tokens, 3 * heads * head_dim],
                |x| kernels::qkv_attention(x, heads),
                |x| reference::qkv_attention(x, heads),
                1e-5,
            )
        });
    }
}

/// Forward and the gradients of `<y, w>` w.r.t. every input, fast vs reference, on autodiff.
fn check_with_params<const O: usize>(
    name: &str,
    inputs: Vec<Tensor<4>>,
    params: Vec<Tensor<1>>,
    f: impl Fn(&[Tensor<4>], &[Tensor<1>]) -> Tensor<O>,
    tol: f32,
) {
    let ad = Device::flex().autodiff();
    ad.seed(11);
    let inputs: Vec<Tensor<4>> =
        inputs.into_iter().map(|t| Tensor::from_data(t.into_data(), &ad).require_grad()).collect();
    let params: Vec<Tensor<1>> =
        params.into_iter().map(|t| Tensor::from_data(t.into_data(), &ad).require_grad()).collect();
    assert!(fused_path_available(&inputs[0]), "{name}: the fused path must be taken on autodiff flex");
    let fast = f(&inputs, &params);
    let reference = with_reference_ops(|| f(&inputs, &params));
    assert_close(&format!("{name} forward"), to_vec(fast.clone()), to_vec(reference.clone()), tol);
    let w = Tensor::<O>::random(fast.dims(), Distribution::Normal(0.0, 1.0), &ad);
    let g_fast = (fast * w.clone()).sum().backward();
    let g_ref = (reference * w).sum().backward();
    for (i, t) in inputs.iter().enumerate() {
        assert_close(
            &format!("{name} grad input {i}"),
            to_vec(t.grad(&g_fast).unwrap()),
            to_vec(t.grad(&g_ref).unwrap()),
            tol,
        );
    }
    for (i, t) in params.iter().enumerate() {
        assert_close(
            &format!("{name} grad param {i}"),
            to_vec(t.grad(&g_fast).unwrap()),
            to_vec(t.grad(&g_ref).unwrap()),
            tol,
        );
    }
    // The inference backend takes the fused forward too.
    let flex = Device::flex();
    let inputs: Vec<Tensor<4>> = inputs.iter().map(|t| Tensor::from_data(t.clone().into_data(), &flex)).collect();
    let params: Vec<Tensor<1>> = params.iter().map(|t| Tensor::from_data(t.clone().into_data(), &flex)).collect();
    let fast = f(&inputs, &params);
    let reference = with_reference_ops(|| f(&inputs, &params));
    assert_close(&format!("{name} inference forward"), to_vec(fast), to_vec(reference), tol);
}

fn normal<const D: usize>(shape: [usize; D], std: f64) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, std), &Device::flex())
}

#[test]
fn conv2d_equals_burns_conv2d() {
    // (batch, c_in, c_out, size, kernel, padding); tolerance 1e-5 relative (f32 summation order).
    // Channel counts around the direct kernels' tiles (5 and 4 output channels; in the weight
    // gradient 2 x 5 input channels below 8 input channels, else 3, 4 and 6 x 8 input channels on
    // AVX2 and 3 x 9, 6 x 4 and 8 x 1 on AVX-512) and their 8- and 16-channel vectors, grids
    // around their 16 to 64 positions, kernel rows longer than the AVX2 weight gradient's 3 taps.
    let cases = [
        (2, 3, 5, 7, 3, 1),
        (3, 16, 8, 8, 3, 1),
        (2, 6, 4, 5, 1, 0),
        (1, 4, 3, 6, 3, 0),
        (2, 2, 2, 9, 5, 2),
        (1, 7, 11, 12, 3, 1),
        (2, 20, 9, 6, 1, 0),
        (1, 11, 5, 7, 3, 1),
        (1, 16, 4, 17, 3, 1),
        (2, 3, 6, 4, 3, 1),
        (2, 24, 7, 6, 3, 1),
        (1, 8, 10, 5, 1, 0),
        (2, 32, 5, 9, 2, 0),
        (1, 9, 3, 8, 5, 2),
    ];
    for (b, ci, co, hw, k, p) in cases {
        on_every_kernel_set(|kernels| {
            check_with_params(
                &format!("conv2d b{b} {ci}->{co} {hw}x{hw} k{k} p{p}{kernels}"),
                vec![normal([b, ci, hw, hw], 1.0), normal([co, ci, k, k], 0.3)],
                vec![normal([co], 0.3)],
                |x, p_| kernels::conv2d(x[0].clone(), x[1].clone(), p_[0].clone(), p),
                1e-5,
            )
        });
    }
}

#[test]
fn conv2d_stride2_equals_burns_strided_conv2d() {
    // (batch, c_in, c_out, size); tolerance 1e-5 relative (f32 summation order). Widths on both
    // sides of the weight gradient's 8-channel and 16-lane limits (4 C phase channels).
    for (b, ci, co, hw) in [(2, 3, 5, 8), (1, 4, 11, 6), (2, 16, 16, 10), (1, 1, 2, 4)] {
        on_every_kernel_set(|kernels| {
            check_with_params(
                &format!("conv2d_stride2 b{b} {ci}->{co} {hw}x{hw}{kernels}"),
                vec![normal([b, ci, hw, hw], 1.0), normal([co, ci, 3, 3], 0.3)],
                vec![normal([co], 0.3)],
                |x, p| kernels::conv2d_stride2(x[0].clone(), x[1].clone(), p[0].clone()),
                1e-5,
            )
        });
    }
}

#[test]
fn gelu_equals_burns_gelu() {
    // Tolerance 2e-6 relative to the largest value: the polynomial erf is within 1.5e-7 and the
    // gradient within 2.2e-7 of the exact one over [-4, 4] (its Horner steps as FMAs; 2.7e-7
    // without), but burn's erf is another approximation, and on 3 elements the two gradients
    // differed by 1.4e-6 of the largest.
    for shape in [[2, 5, 8], [3, 65, 256], [1, 1, 3]] {
        on_every_kernel_set(|kernels| {
            check(&format!("gelu {shape:?}{kernels}"), shape, kernels::gelu, reference::gelu, 2e-6)
        });
    }
}

#[test]
fn upsample_equals_the_expand_composition() {
    // Copies and sums of four: equal to burn's up to the order of the four additions.
    for shape in [[2, 3, 4, 5], [1, 1, 1, 1], [3, 2, 8, 8]] {
        on_every_kernel_set(|kernels| {
            check(
                &format!("upsample {shape:?}{kernels}"),
                shape,
                kernels::upsample_nearest2x,
                reference::upsample_nearest2x,
                1e-6,
            )
        });
    }
}

#[test]
fn cat_axis1_equals_burns_cat() {
    // Copies: equal bit for bit, forward and gradients. Channels of an image batch, and one token
    // before 64 (the U-ViT's time token before its patches).
    for (shape, split) in [([2, 5, 4, 3], 3), ([3, 65, 8, 1], 1), ([1, 2, 1, 1], 1)] {
        let parts = |x: Tensor<4>| {
            let n = x.dims()[1];
            (x.clone().narrow(1, 0, split), x.narrow(1, split, n - split))
        };
        check(
            &format!("cat_axis1 {shape:?} at {split}"),
            shape,
            |x| {
                let (a, b) = parts(x);
                kernels::cat_axis1(a, b)
            },
            |x| {
                let (a, b) = parts(x);
                reference::cat_axis1(a, b)
            },
            0.0,
        );
    }
}

#[test]
fn linear_equals_burns_linear() {
    // (batch, tokens, in, out); tolerance 1e-5 relative (f32 summation order). Row counts around
    // the direct kernel's 6-row tiles, widths around its 16 columns.
    // 8 x 130 tokens: a weight gradient longer than the kernel's inner block of 256.
    for (b, l, k, n) in
        [(2, 5, 8, 24), (3, 65, 64, 192), (1, 1, 3, 2), (4, 17, 256, 64), (1, 7, 33, 17), (8, 130, 16, 20)]
    {
        on_every_kernel_set(|kernels| {
            check_with_params(
                &format!("linear b{b} l{l} {k}->{n}{kernels}"),
                vec![normal([b, l, k, 1], 1.0), normal([k, n, 1, 1], 0.3)],
                vec![normal([n], 0.3)],
                |x, p| {
                    let [b, l, k, _] = x[0].dims();
                    let w = x[1].clone().reshape([k, p[0].dims()[0]]);
                    kernels::linear(x[0].clone().reshape([b, l, k]), w, p[0].clone())
                },
                1e-5,
            )
        });
    }
}

#[test]
fn linear_cat_equals_linear_on_the_concatenation() {
    // (batch, tokens, in x, in y, out); tolerance 1e-5 relative (f32 summation order). U-ViT's
    // skip fusion (64 + 64 -> 64) and widths around the direct kernel's tiles.
    for (b, l, kx, ky, n) in [(2, 5, 8, 8, 24), (3, 65, 64, 64, 64), (1, 1, 3, 5, 2), (1, 7, 33, 16, 17)] {
        on_every_kernel_set(|kernels| {
            check_with_params(
                &format!("linear_cat b{b} l{l} {kx}+{ky}->{n}{kernels}"),
                vec![normal([b, l, kx, 1], 1.0), normal([b, l, ky, 1], 1.0), normal([kx + ky, n, 1, 1], 0.3)],
                vec![normal([n], 0.3)],
                |x, p| {
                    let ([b, l, kx, _], ky) = (x[0].dims(), x[1].dims()[2]);
                    let w = x[2].clone().reshape([kx + ky, p[0].dims()[0]]);
                    kernels::linear_cat(
                        x[0].clone().reshape([b, l, kx]),
                        x[1].clone().reshape([b, l, ky]),
                        w,
                        p[0].clone(),
                    )
                },
                1e-5,
            )
        });
    }
}

/// `f(.., true)` (a fused op) against `f(.., false)` (its fused parts composed), bit for bit: the
/// values on flex and on autodiff, and every input's gradient of a random weighting of the output.
fn assert_fused_is_bit_identical(
    name: &str,
    inputs: &[Tensor<4>],
    params: &[Tensor<1>],
    f: impl Fn(&[Tensor<4>], &[Tensor<1>], bool) -> Tensor<3>,
) {
    assert!(to_vec(f(inputs, params, true)) == to_vec(f(inputs, params, false)), "{name}: bits");
    let ad = Device::flex().autodiff();
    let xs: Vec<Tensor<4>> =
        inputs.iter().map(|t| Tensor::from_data(t.clone().into_data(), &ad).require_grad()).collect();
    let ps: Vec<Tensor<1>> =
        params.iter().map(|t| Tensor::from_data(t.clone().into_data(), &ad).require_grad()).collect();
    let (fused, plain) = (f(&xs, &ps, true), f(&xs, &ps, false));
    assert!(to_vec(fused.clone()) == to_vec(plain.clone()), "{name}: bits on autodiff");
    let w = Tensor::<3>::random(fused.dims(), Distribution::Normal(0.0, 1.0), &ad);
    let (g_fused, g_plain) = ((fused * w.clone()).sum().backward(), (plain * w).sum().backward());
    for (i, t) in xs.iter().enumerate() {
        let (a, b) = (to_vec(t.grad(&g_fused).unwrap()), to_vec(t.grad(&g_plain).unwrap()));
        assert!(a == b, "{name}: gradient of input {i}, bits");
    }
    for (i, t) in ps.iter().enumerate() {
        let (a, b) = (to_vec(t.grad(&g_fused).unwrap()), to_vec(t.grad(&g_plain).unwrap()));
        assert!(a == b, "{name}: gradient of parameter {i}, bits");
    }
}

#[test]
fn linear_gelu_equals_linear_then_gelu() {
    // (batch, tokens, in, out); tolerance 1e-5 relative against burn's composition (its erf and
    // summation order); bit for bit against the fused linear then the fused GELU. Row counts
    // around the 96-row blocks GELU runs on.
    for (b, l, k, n) in [(2, 5, 8, 24), (3, 65, 64, 256), (1, 1, 3, 2), (1, 97, 33, 17)] {
        on_every_kernel_set(|kernels| {
            let f = |x: &[Tensor<4>], p: &[Tensor<1>], fused: bool| {
                let [b, l, k, _] = x[0].dims();
                let (x, w) = (x[0].clone().reshape([b, l, k]), x[1].clone().reshape([k, p[0].dims()[0]]));
                if fused {
                    kernels::linear_gelu(x, w, p[0].clone())
                } else {
                    kernels::gelu(kernels::linear(x, w, p[0].clone()))
                }
            };
            let inputs = vec![normal([b, l, k, 1], 1.0), normal([k, n, 1, 1], 0.3)];
            let params = vec![normal([n], 0.3)];
            let name = format!("linear_gelu b{b} l{l} {k}->{n}{kernels}");
            check_with_params(&name, inputs.clone(), params.clone(), |x, p| f(x, p, true), 1e-5);
            assert_fused_is_bit_identical(&name, &inputs, &params, f);
        });
    }
}

#[test]
fn linear_add_equals_the_residual_plus_linear() {
    // (batch, tokens, in, out); tolerance 1e-5 relative against burn's composition; bit for bit
    // against the fused linear plus the residual, values and gradients.
    for (b, l, k, n) in [(2, 5, 8, 24), (3, 65, 256, 64), (1, 1, 3, 2), (1, 97, 33, 17)] {
        on_every_kernel_set(|kernels| {
            let f = |x: &[Tensor<4>], p: &[Tensor<1>], fused: bool| {
                let [b, l, k, _] = x[0].dims();
                let n = p[0].dims()[0];
                let (h, w, r) =
                    (x[0].clone().reshape([b, l, k]), x[1].clone().reshape([k, n]), x[2].clone().reshape([b, l, n]));
                if fused { kernels::linear_add(h, w, p[0].clone(), r) } else { r + kernels::linear(h, w, p[0].clone()) }
            };
            let inputs = vec![normal([b, l, k, 1], 1.0), normal([k, n, 1, 1], 0.3), normal([b, l, n, 1], 1.0)];
            let params = vec![normal([n], 0.3)];
            let name = format!("linear_add b{b} l{l} {k}->{n}{kernels}");
            check_with_params(&name, inputs.clone(), params.clone(), |x, p| f(x, p, true), 1e-5);
            assert_fused_is_bit_identical(&name, &inputs, &params, f);
        });
    }
}

#[test]
fn mlp_add_equals_linear_gelu_then_linear_add() {
    // (batch, tokens, in, hidden, out); tolerance 1e-5 relative against burn's composition; bit
    // for bit against the fused linear_gelu then the fused linear_add, values and the gradients
    // of every input (x, both weights, the residual, both biases). Row counts around the 96-row
    // blocks, on two threads and one (each thread's first block starts elsewhere).
    for (b, l, k, h, n) in [(2, 5, 8, 24, 8), (3, 65, 64, 256, 64), (1, 1, 3, 5, 2), (1, 97, 33, 40, 17)] {
        on_every_kernel_set(|kernels| {
            let f = |x: &[Tensor<4>], p: &[Tensor<1>], fused: bool| {
                let [b, l, k, _] = x[0].dims();
                let (h, n) = (p[0].dims()[0], p[1].dims()[0]);
                let (x0, w1, w2, r) = (
                    x[0].clone().reshape([b, l, k]),
                    x[1].clone().reshape([k, h]),
                    x[2].clone().reshape([h, n]),
                    x[3].clone().reshape([b, l, n]),
                );
                let (fc1, fc2) = ((w1, p[0].clone()), (w2, p[1].clone()));
                if fused {
                    kernels::mlp_add(x0, fc1, fc2, r)
                } else {
                    kernels::linear_add(kernels::linear_gelu(x0, fc1.0, fc1.1), fc2.0, fc2.1, r)
                }
            };
            let inputs = vec![
                normal([b, l, k, 1], 1.0),
                normal([k, h, 1, 1], 0.3),
                normal([h, n, 1, 1], 0.3),
                normal([b, l, n, 1], 1.0),
            ];
            let params = vec![normal([h], 0.3), normal([n], 0.3)];
            let name = format!("mlp_add b{b} l{l} {k}->{h}->{n}{kernels}");
            check_with_params(&name, inputs.clone(), params.clone(), |x, p| f(x, p, true), 1e-5);
            assert_fused_is_bit_identical(&name, &inputs, &params, f);
            let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            one_thread.install(|| assert_fused_is_bit_identical(&format!("{name}, one thread"), &inputs, &params, f));
        });
    }
}

#[test]
fn attention_add_equals_linear_attention_then_linear_add() {
    // (batch, tokens, heads, head_dim); tolerance 1e-5 relative against burn's composition; bit
    // for bit against the fused linear, qkv_attention and linear_add, values and the gradients of
    // every input (x, both weights, the residual, both biases), on two threads and one.
    for (b, l, heads, dh) in [(2, 5, 2, 4), (3, 65, 4, 16), (1, 17, 1, 8)] {
        on_every_kernel_set(|kernels| {
            let f = |x: &[Tensor<4>], p: &[Tensor<1>], fused: bool| {
                let [b, l, d, _] = x[0].dims();
                let (x0, w_qkv, w_proj, r) = (
                    x[0].clone().reshape([b, l, d]),
                    x[1].clone().reshape([d, 3 * d]),
                    x[2].clone().reshape([d, d]),
                    x[3].clone().reshape([b, l, d]),
                );
                let (qkv, proj) = ((w_qkv, p[0].clone()), (w_proj, p[1].clone()));
                if fused {
                    kernels::attention_add(x0, qkv, heads, proj, r)
                } else {
                    let qkv = kernels::linear(x0, qkv.0, qkv.1);
                    kernels::linear_add(kernels::qkv_attention(qkv, heads), proj.0, proj.1, r)
                }
            };
            let d = heads * dh;
            let inputs = vec![
                normal([b, l, d, 1], 1.0),
                normal([d, 3 * d, 1, 1], 0.3),
                normal([d, d, 1, 1], 0.3),
                normal([b, l, d, 1], 1.0),
            ];
            let params = vec![normal([3 * d], 0.3), normal([d], 0.3)];
            let name = format!("attention_add b{b} l{l} h{heads} dh{dh}{kernels}");
            check_with_params(&name, inputs.clone(), params.clone(), |x, p| f(x, p, true), 1e-5);
            assert_fused_is_bit_identical(&name, &inputs, &params, f);
            let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            one_thread.install(|| assert_fused_is_bit_identical(&format!("{name}, one thread"), &inputs, &params, f));
        });
    }
}

/// Where nothing differentiates (flex, not autodiff), the fused ops skip the state a backward
/// would keep (attention's probabilities, a convolution's padded batch); what they compute is
/// the training forward's values, bit for bit.
fn on_autodiff<const D: usize>(x: &Tensor<D>) -> Tensor<D> {
    Tensor::from_data(x.clone().into_data(), &Device::flex().autodiff())
}

#[test]
fn the_inference_forwards_equal_the_training_forwards_bit_for_bit() {
    let device = Device::flex();
    device.seed(3);
    for (b, l, heads, dh) in [(3, 65, 4, 16), (2, 17, 2, 8)] {
        let x = normal([b, l, 3 * heads * dh], 1.0);
        on_every_kernel_set(|kernels| {
            let inferred = to_vec(kernels::qkv_attention(x.clone(), heads));
            let trained = to_vec(kernels::qkv_attention(on_autodiff(&x).require_grad(), heads));
            assert!(inferred == trained, "attention b{b} l{l} h{heads} dh{dh}{kernels}");
        });
    }
    for (b, ci, co, hw, k, p) in [(3, 16, 8, 8, 3, 1), (2, 7, 11, 12, 3, 1), (2, 6, 4, 5, 1, 0)] {
        let (x, w, bias) = (normal([b, ci, hw, hw], 1.0), normal([co, ci, k, k], 0.3), normal([co], 0.3));
        on_every_kernel_set(|kernels| {
            let inferred = to_vec(kernels::conv2d(x.clone(), w.clone(), bias.clone(), p));
            let trained =
                to_vec(kernels::conv2d(on_autodiff(&x).require_grad(), on_autodiff(&w), on_autodiff(&bias), p));
            assert!(inferred == trained, "conv2d b{b} {ci}->{co} {hw}x{hw} k{k} p{p}{kernels}");
        });
    }
}

#[test]
fn group_norm_with_and_without_silu_equals_burns() {
    use burn::nn::GroupNormConfig;
    // Tolerance 1e-4 relative: burn normalises with several passes in f32, the fused op
    // accumulates its statistics in f64.
    for (b, c, hw, groups) in [(2, 8, 5, 4), (3, 16, 8, 8), (2, 6, 4, 3), (1, 4, 3, 1)] {
        for silu in [false, true] {
            let norm = GroupNormConfig::new(groups, c).init(&Device::flex());
            on_every_kernel_set(|kernels| {
                check_with_params(
                    &format!("group_norm b{b} c{c} {hw}x{hw} g{groups} silu {silu}{kernels}"),
                    vec![normal([b, c, hw, hw], 2.0).add_scalar(0.5)],
                    vec![normal([c], 0.5).add_scalar(1.0), normal([c], 0.5)],
                    |x, p| {
                        let mut n = norm.clone();
                        n.gamma = Some(burn::module::Param::from_tensor(p[0].clone()));
                        n.beta = Some(burn::module::Param::from_tensor(p[1].clone()));
                        if silu { n.fused_silu(x[0].clone()) } else { n.fused(x[0].clone()) }
                    },
                    1e-4,
                )
            });
        }
    }
}

#[test]
fn layer_norm_equals_burns() {
    use burn::nn::LayerNormConfig;
    for (b, l, d) in [(2, 5, 8), (3, 65, 64), (1, 1, 3)] {
        let norm = LayerNormConfig::new(d).init(&Device::flex());
        on_every_kernel_set(|kernels| {
            check_with_params(
                &format!("layer_norm b{b} l{l} d{d}{kernels}"),
                vec![normal([b, l, d, 1], 2.0).add_scalar(0.5)],
                vec![normal([d], 0.5).add_scalar(1.0), normal([d], 0.5)],
                |x, p| {
                    let mut n = norm.clone();
                    n.gamma = burn::module::Param::from_tensor(p[0].clone());
                    n.beta = Some(burn::module::Param::from_tensor(p[1].clone()));
                    let [b, l, d, _] = x[0].dims();
                    n.fused(x[0].clone().reshape([b, l, d]))
                },
                1e-4,
            )
        });
    }
}

/// The compositions the fused norms are held to are burn's own layers: equal on flex up to the
/// last bits (the same ops in the same order).
#[test]
fn the_norm_compositions_equal_burns_layers() {
    use burn::nn::{GroupNormConfig, LayerNormConfig};
    let device = Device::flex();
    device.seed(5);
    let x = normal([2, 8, 5, 5], 2.0).add_scalar(0.5);
    let mut norm = GroupNormConfig::new(4, 8).init(&device);
    norm.gamma = Some(burn::module::Param::from_tensor(normal([8], 0.5).add_scalar(1.0)));
    norm.beta = Some(burn::module::Param::from_tensor(normal([8], 0.5)));
    let (gamma, beta) = (norm.gamma.as_ref().unwrap().val(), norm.beta.as_ref().unwrap().val());
    for (activation, expected) in [
        (Activation::Identity, norm.forward(x.clone())),
        (Activation::Silu, burn::tensor::activation::silu(norm.forward(x.clone()))),
    ] {
        let composed = reference::group_norm(x.clone(), gamma.clone(), beta.clone(), 4, norm.epsilon, activation);
        assert_close(&format!("group norm {activation:?}"), to_vec(composed), to_vec(expected), 1e-6);
    }
    let x = normal([3, 7, 16], 2.0);
    let norm = LayerNormConfig::new(16).init(&device);
    let (gamma, beta) = (norm.gamma.val(), norm.beta.as_ref().unwrap().val());
    let composed = reference::layer_norm(x.clone(), gamma, beta, kernels::LAYER_NORM_EPS);
    assert_close("layer norm", to_vec(composed), to_vec(norm.forward(x)), 1e-6);
}

/// A kernel set pinned on one thread leaves the others on theirs: two threads, one pinned to the
/// portable kernels (gemm), both run the same convolution twenty times, and each gets exactly
/// what its own set computes alone (the direct kernels sum in another order, so the bits differ).
#[test]
fn a_pinned_kernel_set_stays_on_its_thread() {
    let (x, w, b) = (normal([8, 16, 32, 32], 1.0), normal([16, 16, 3, 3], 0.1), normal([16], 0.1));
    let run = || to_vec(kernels::conv2d(x.clone(), w.clone(), b.clone(), 1));
    let (best, portable) = (with_kernel_set(KernelSet::Best, run), with_kernel_set(KernelSet::Portable, run));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert_ne!(best, portable, "the two kernel sets must differ for this test to mean anything");
    }
    std::thread::scope(|scope| {
        let pinned =
            scope.spawn(|| with_kernel_set(KernelSet::Portable, || (0..20).map(|_| run()).collect::<Vec<_>>()));
        let free = scope.spawn(|| (0..20).map(|_| run()).collect::<Vec<_>>());
        assert!(pinned.join().unwrap().iter().all(|y| *y == portable), "the pinned thread kept the portable kernels");
        assert!(free.join().unwrap().iter().all(|y| *y == best), "the other thread kept the best kernels");
    });
}
