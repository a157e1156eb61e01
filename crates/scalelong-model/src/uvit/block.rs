//! One U-ViT transformer block (the reference's `Block`): optional long-skip fusion, then pre-norm
//! attention and MLP, each with a residual.

use crate::attention::Attention;
use crate::init::{LinearInit, linear};
use crate::ops::{gelu, linear_module};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;

/// The reference's `Mlp`: `fc2(gelu(fc1(x)))` (exact erf GELU, as torch's `nn.GELU()`).
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear_module(&self.fc2, gelu(linear_module(&self.fc1, x)))
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
            (Some(fuse), Some(skip)) => linear_module(fuse, Tensor::cat(vec![x, skip], 2)), // [B, L, 2D] -> [B, L, D]
            (None, None) => x,
            _ => panic!("a block fuses a skip exactly when it was built with skip_linear"),
        };
        let x = x.clone() + self.attn.forward(self.norm1.forward(x)); // [B, L, D]
        x.clone() + self.mlp.forward(self.norm2.forward(x)) // [B, L, D]
    }
}
