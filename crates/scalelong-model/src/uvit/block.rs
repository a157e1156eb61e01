//! One U-ViT transformer block (the reference's `Block`): optional long-skip fusion, then pre-norm
//! attention and MLP, each with a residual.

use crate::attention::Attention;
use crate::init::{LinearInit, linear};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use scalelong_kernels::{Fused, FusedGelu, FusedMlpAdd, linear_cat};

/// The reference's `Mlp`: `fc2(gelu(fc1(x)))` (exact erf GELU, as torch's `nn.GELU()`).
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.fc2.fused(self.fc1.fused_gelu(x)) // GELU fused into fc1's op
    }

    /// `residual + self.forward(x)`: both layers, GELU and the sum in one op.
    pub fn forward_add<const D: usize>(&self, x: Tensor<D>, residual: Tensor<D>) -> Tensor<D> {
        (&self.fc1, &self.fc2).fused_mlp_add(x, residual)
    }
}

#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    /// `Linear(2D -> D)` fusing `cat([x, scaled skip])`; present in decoder blocks only.
    pub skip_linear: Option<Linear>,
}

#[derive(Debug, Clone, Copy)]
pub struct BlockConfig {
    pub dim: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub fuses_skip: bool,
}

impl Block {
    pub fn new(c: BlockConfig, init: LinearInit, device: &Device) -> Self {
        let hidden = (c.dim as f64 * c.mlp_ratio) as usize;
        Self {
            norm1: LayerNormConfig::new(c.dim).init(device),
            attn: Attention::new(c.dim, c.heads, c.qkv_bias, init, device),
            norm2: LayerNormConfig::new(c.dim).init(device),
            mlp: Mlp { fc1: linear(c.dim, hidden, true, init, device), fc2: linear(hidden, c.dim, true, init, device) },
            skip_linear: c.fuses_skip.then(|| linear(2 * c.dim, c.dim, true, init, device)),
        }
    }

    /// # Shapes
    /// - x, scaled_skip: `[B, L, D]`
    /// - output: `[B, L, D]`
    pub fn forward(&self, x: Tensor<3>, scaled_skip: Option<Tensor<3>>) -> Tensor<3> {
        let x = match (&self.skip_linear, scaled_skip) {
            (Some(fuse), Some(skip)) => fuse_skip(fuse, x, skip), // [B, L, D]
            (None, None) => x,
            _ => panic!("a block fuses a skip exactly when it was built with skip_linear"),
        };
        // x + attn(norm1(x)), then x + mlp(norm2(x)); each residual is added inside the op of
        // the layer before it (the same values as the sums).
        let x = self.attn.forward_add(self.norm1.fused(x.clone()), x); // [B, L, D]
        self.mlp.forward_add(self.norm2.fused(x.clone()), x) // [B, L, D]
    }
}

/// `skip_linear(cat([x, skip], -1))` without building the concatenation: each half of the
/// weight against its part, accumulated onto one output (`scalelong_kernels::linear_cat`; the
/// test in tests/fused_networks.rs holds it to the concatenation).
///
/// # Shapes
/// - x, skip: `[B, L, D]`
/// - output: `[B, L, D]`
fn fuse_skip(fuse: &Linear, x: Tensor<3>, skip: Tensor<3>) -> Tensor<3> {
    let weight = fuse.weight.val(); // burn layout [2D, D]: rows 0..D read x, D..2D the skip
    let bias = match &fuse.bias {
        Some(b) => b.val(),
        None => Tensor::zeros([weight.dims()[1]], &x.device()),
    };
    linear_cat(x, skip, weight, bias)
}
