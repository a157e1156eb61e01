//! burn's layers through the fused ops: one way for a network to call a layer,
//! `self.conv1.fused(x)`, whatever the backend (elsewhere than flex the op runs its reference
//! composition, which is what the layer's own `forward` computes).

use crate::norm::Activation;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, Linear, PaddingConfig2d};
use burn::prelude::*;

/// burn's `LayerNorm` epsilon (its default; the field is private, and every LayerNorm this
/// project builds keeps the default).
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// A layer's forward on the fused ops.
pub trait Fused<X> {
    /// What the layer's `forward(x)` computes.
    fn fused(&self, x: X) -> X;
}

impl<const D: usize> Fused<Tensor<D>> for Linear {
    /// [`crate::linear`].
    fn fused(&self, x: Tensor<D>) -> Tensor<D> {
        let (weight, bias) = weight_and_bias(self, &x.device());
        crate::linear(x, weight, bias)
    }
}

/// A linear layer's weight `[K, N]` and bias `[N]`; a missing bias is a zero one, which takes no
/// gradient.
fn weight_and_bias(layer: &Linear, device: &Device) -> (Tensor<2>, Tensor<1>) {
    let weight = layer.weight.val();
    let bias = match &layer.bias {
        Some(b) => b.val(),
        None => Tensor::zeros([weight.dims()[1]], device),
    };
    (weight, bias)
}

/// A linear layer followed by GELU in one op ([`crate::linear_gelu`]): the MLPs of the
/// transformer blocks.
pub trait FusedGelu<X> {
    /// `gelu(self.forward(x))`.
    fn fused_gelu(&self, x: X) -> X;
}

impl<const D: usize> FusedGelu<Tensor<D>> for Linear {
    /// [`crate::linear_gelu`].
    fn fused_gelu(&self, x: Tensor<D>) -> Tensor<D> {
        let (weight, bias) = weight_and_bias(self, &x.device());
        crate::linear_gelu(x, weight, bias)
    }
}

/// Two linear layers with GELU between them, added to a residual, in one op
/// ([`crate::mlp_add`]): the transformer blocks' MLPs with their residual.
pub trait FusedMlpAdd<X> {
    /// `residual + fc2.forward(gelu(fc1.forward(x)))`, `self` being `(fc1, fc2)`.
    fn fused_mlp_add(&self, x: X, residual: X) -> X;
}

impl<const D: usize> FusedMlpAdd<Tensor<D>> for (&Linear, &Linear) {
    /// [`crate::mlp_add`].
    fn fused_mlp_add(&self, x: Tensor<D>, residual: Tensor<D>) -> Tensor<D> {
        let device = x.device();
        crate::mlp_add(x, weight_and_bias(self.0, &device), weight_and_bias(self.1, &device), residual)
    }
}

/// The qkv and projection layers around multi-head attention, added to a residual, in one op
/// ([`crate::attention_add`]): the transformer blocks' attention with its residual.
pub trait FusedAttentionAdd<X> {
    /// `residual + proj.forward(qkv_attention(qkv.forward(x), heads))`, `self` being
    /// `(qkv, proj)`.
    fn fused_attention_add(&self, heads: usize, x: X, residual: X) -> X;
}

impl FusedAttentionAdd<Tensor<3>> for (&Linear, &Linear) {
    /// [`crate::attention_add`].
    fn fused_attention_add(&self, heads: usize, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        let device = x.device();
        crate::attention_add(x, weight_and_bias(self.0, &device), heads, weight_and_bias(self.1, &device), residual)
    }
}

impl Fused<Tensor<4>> for Conv2d {
    /// [`crate::conv2d`] when the layer fits it (stride 1, dilation 1, one group, a bias,
    /// symmetric padding below the kernel size), [`crate::conv2d_stride2`] for ADM's
    /// down-sampling convolution (3x3, stride 2, padding 1, even sizes); the layer's own forward
    /// otherwise.
    fn fused(&self, x: Tensor<4>) -> Tensor<4> {
        let pad = match self.padding {
            PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => Some(t),
            PaddingConfig2d::Valid => Some(0),
            _ => None,
        };
        let plain = self.dilation == [1, 1] && self.groups == 1;
        let [_, _, h, w] = x.dims();
        match (pad, &self.bias) {
            (Some(pad), Some(bias))
                if plain && self.stride == [1, 1] && pad < self.kernel_size[0] && pad < self.kernel_size[1] =>
            {
                crate::conv2d(x, self.weight.val(), bias.val(), pad)
            }
            (Some(1), Some(bias))
                if plain && self.stride == [2, 2] && self.kernel_size == [3, 3] && h % 2 == 0 && w % 2 == 0 =>
            {
                crate::conv2d_stride2(x, self.weight.val(), bias.val())
            }
            _ => self.forward(x),
        }
    }
}

impl<const D: usize> Fused<Tensor<D>> for LayerNorm {
    /// [`crate::layer_norm`] with [`LAYER_NORM_EPS`]; the layer's own forward without a bias.
    fn fused(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.beta {
            Some(beta) => crate::layer_norm(x, self.gamma.val(), beta.val(), LAYER_NORM_EPS),
            None => self.forward(x),
        }
    }
}

impl Fused<Tensor<4>> for GroupNorm {
    /// [`crate::group_norm`] without an activation.
    fn fused(&self, x: Tensor<4>) -> Tensor<4> {
        group_norm_then(self, x, Activation::Identity)
    }
}

/// A group norm followed by SiLU in one op: ADM's ResBlocks normalise that way.
pub trait FusedSilu {
    /// `silu(self.forward(x))`.
    fn fused_silu(&self, x: Tensor<4>) -> Tensor<4>;
}

impl FusedSilu for GroupNorm {
    fn fused_silu(&self, x: Tensor<4>) -> Tensor<4> {
        group_norm_then(self, x, Activation::Silu)
    }
}

/// [`crate::group_norm`] for an affine `GroupNorm`; the layer's own forward (and the activation)
/// for one without affine parameters.
fn group_norm_then(norm: &GroupNorm, x: Tensor<4>, activation: Activation) -> Tensor<4> {
    match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) => {
            crate::group_norm(x, gamma.val(), beta.val(), norm.num_groups, norm.epsilon, activation)
        }
        _ => match activation {
            Activation::Identity => norm.forward(x),
            Activation::Silu => burn::tensor::activation::silu(norm.forward(x)),
        },
    }
}
