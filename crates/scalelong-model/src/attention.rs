//! Multi-head self-attention over tokens, the reference code's `Attention` (math mode), used by
//! every U-ViT block and by the conv UNet at its lowest resolution.

use crate::init::linear;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;

#[derive(Module, Debug)]
pub struct Attention {
    /// `Linear(D -> 3D)`, output laid out as `(3, heads, head_dim)` like the reference's
    /// `'B L (K H D) -> K B H L D'`.
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
}

impl Attention {
    pub fn new(dim: usize, heads: usize, qkv_bias: bool, init: crate::init::LinearInit, device: &Device) -> Self {
        assert!(dim % heads == 0, "attention width {dim} is not divisible by {heads} heads");
        Self {
            qkv: linear(dim, 3 * dim, qkv_bias, init, device),
            proj: linear(dim, dim, true, init, device),
            heads,
        }
    }

    /// # Shapes
    /// - x: `[B, L, D]`
    /// - output: `[B, L, D]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, tokens, dim] = x.dims();
        let head_dim = dim / self.heads;
        let qkv = self.qkv.forward(x).reshape([batch, tokens, 3, self.heads, head_dim]); // [B, L, 3, H, Dh]
        let qkv = qkv.permute([2, 0, 3, 1, 4]); // [3, B, H, L, Dh]
        let part = |k: usize| -> Tensor<4> {
            qkv.clone().narrow(0, k, 1).reshape([batch, self.heads, tokens, head_dim]) // [B, H, L, Dh]
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let scale = (head_dim as f64).powf(-0.5);
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale); // [B, H, L, L]
        let out = softmax(scores, 3).matmul(v); // [B, H, L, Dh]
        let out = out.swap_dims(1, 2).reshape([batch, tokens, dim]); // [B, L, D]
        self.proj.forward(out)
    }
}
