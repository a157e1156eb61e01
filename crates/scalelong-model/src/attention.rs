//! Multi-head self-attention over tokens, the reference code's `Attention` (math mode), used by
//! every U-ViT block and by the conv UNet at its lowest resolution.

use crate::init::{LinearInit, linear};
use burn::nn::Linear;
use burn::prelude::*;
use scalelong_kernels::{Fused, FusedAttentionAdd, qkv_attention};

#[derive(Module, Debug)]
pub struct Attention {
    /// `Linear(D -> 3D)`, output laid out as `(3, heads, head_dim)` like the reference's
    /// `'B L (K H D) -> K B H L D'`.
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
}

impl Attention {
    pub fn new(dim: usize, heads: usize, qkv_bias: bool, init: LinearInit, device: &Device) -> Self {
        assert!(dim.is_multiple_of(heads), "attention width {dim} is not divisible by {heads} heads");
        Self { qkv: linear(dim, 3 * dim, qkv_bias, init, device), proj: linear(dim, dim, true, init, device), heads }
    }

    /// The head split, `softmax(q k^T / sqrt(Dh)) v` and the head merge run as one fused op.
    ///
    /// # Shapes
    /// - x: `[B, L, D]`
    /// - output: `[B, L, D]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let qkv = self.qkv.fused(x); // [B, L, 3D], laid out (3, H, Dh)
        self.proj.fused(qkv_attention(qkv, self.heads)) // [B, L, D]
    }

    /// `residual + self.forward(x)`: both layers, the attention and the sum in one op, an image
    /// at a time (the same values).
    pub fn forward_add(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        (&self.qkv, &self.proj).fused_attention_add(self.heads, x, residual) // [B, L, D]
    }
}
