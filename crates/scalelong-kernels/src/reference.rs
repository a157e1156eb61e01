//! What each fused op replaces: its composition of burn ops. It runs where the fused kernels do
//! not (wgpu, cuda, inside `testing::with_reference_ops`), and the tests hold every fused op to
//! it. Public under the `testing` feature only.

use crate::norm::Activation;
use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::ops::ConvOptions;

/// [`crate::qkv_attention`] as burn ops: reshape into heads, `softmax(q k^T / sqrt(Dh)) v`, merge.
///
/// # Shapes
/// - qkv: `[B, L, 3D]`, laid out `(3, heads, D / heads)` along the last axis
/// - output: `[B, L, D]`
pub fn qkv_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    let [batch, tokens, three_dim] = qkv.dims();
    let dim = three_dim / 3;
    let head_dim = dim / heads;
    let qkv = qkv.reshape([batch, tokens, 3, heads, head_dim]).permute([2, 0, 3, 1, 4]); // [3, B, H, L, Dh]
    let part = |k: usize| -> Tensor<4> { qkv.clone().narrow(0, k, 1).reshape([batch, heads, tokens, head_dim]) };
    let (q, k, v) = (part(0), part(1), part(2));
    let scale = (head_dim as f64).powf(-0.5);
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale); // [B, H, L, L]
    let out = softmax(scores, 3).matmul(v); // [B, H, L, Dh]
    out.swap_dims(1, 2).reshape([batch, tokens, dim])
}

/// [`crate::conv2d`]: burn's `conv2d` with stride 1.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, padding: usize) -> Tensor<4> {
    burn::tensor::module::conv2d(x, weight, Some(bias), ConvOptions::new([1, 1], [padding, padding], [1, 1], 1))
}

/// [`crate::conv2d_stride2`]: burn's `conv2d` with stride 2, padding 1.
pub fn conv2d_stride2(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    burn::tensor::module::conv2d(x, weight, Some(bias), ConvOptions::new([2, 2], [1, 1], [1, 1], 1))
}

/// [`crate::linear`]: burn's `linear`.
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<D> {
    burn::tensor::module::linear(x, weight, Some(bias))
}

/// [`crate::linear_cat`]: burn's `linear` on the concatenation `cat([x, y], -1)`.
pub fn linear_cat<const D: usize>(x: Tensor<D>, y: Tensor<D>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<D> {
    burn::tensor::module::linear(Tensor::cat(vec![x, y], D - 1), weight, Some(bias))
}

/// [`crate::gelu`]: burn's `gelu`.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::gelu(x)
}

/// [`crate::cat_axis1`]: burn's concatenation.
pub fn cat_axis1<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    Tensor::cat(vec![a, b], 1)
}

/// [`crate::upsample_nearest2x`]: reshape, expand, reshape.
pub fn upsample_nearest2x(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w])
}

/// [`crate::group_norm`]: the ops of burn's `GroupNorm` (in f32, as its forward runs them), then
/// the activation.
pub fn group_norm(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f64,
    activation: Activation,
) -> Tensor<4> {
    let [batch, channels, h, w] = x.dims();
    let x = x.reshape([batch, groups, channels / groups * h * w]); // [B, G, C/G HW]
    let centred = x.clone().sub(x.mean_dim(2));
    let var = centred.clone().square().mean_dim(2);
    let normalised = centred.div(var.add_scalar(eps).sqrt()).reshape([batch, channels, h, w]);
    let y = normalised.mul(gamma.reshape([1, channels, 1, 1])).add(beta.reshape([1, channels, 1, 1]));
    match activation {
        Activation::Identity => y,
        Activation::Silu => silu(y),
    }
}

/// [`crate::layer_norm`]: burn's `layer_norm`, what its `LayerNorm` runs in f32.
pub fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Tensor<D> {
    burn::tensor::module::layer_norm(x, gamma, Some(beta), eps)
}
