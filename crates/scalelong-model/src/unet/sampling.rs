//! Resolution changes and spatial self-attention of the conv UNet.

use super::resnet::{conv3x3, group_norm};
use crate::attention::Attention;
use crate::init::LinearInit;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use scalelong_kernels::{Fused, upsample_nearest2x};

/// Halves the resolution with a stride-2 3x3 conv (ADM's `conv_resample`).
#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv2d,
}

impl Downsample {
    pub fn new(channels: usize, device: &Device) -> Self {
        Self { conv: conv3x3(channels, channels, 2, device) }
    }
    /// `[B, C, H, W] -> [B, C, H/2, W/2]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.fused(x) // [B, C, H/2, W/2]
    }
}

/// Nearest-neighbour x2, then a 3x3 conv.
#[derive(Module, Debug)]
pub struct Upsample {
    pub conv: Conv2d,
}

impl Upsample {
    pub fn new(channels: usize, device: &Device) -> Self {
        Self { conv: conv3x3(channels, channels, 1, device) }
    }
    /// `[B, C, H, W] -> [B, C, 2H, 2W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.fused(upsample_nearest2x(x)) // [B, C, 2H, 2W]
    }
}

/// GroupNorm, multi-head self-attention over the H*W positions, residual.
#[derive(Module, Debug)]
pub struct SpatialAttention {
    pub norm: GroupNorm,
    pub attn: Attention,
}

impl SpatialAttention {
    pub fn new(channels: usize, heads: usize, groups: usize, device: &Device) -> Self {
        Self {
            norm: group_norm(groups, channels, device),
            attn: Attention::new(channels, heads, true, LinearInit::TorchDefault, device),
        }
    }
    /// `[B, C, H, W] -> [B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let tokens = self.norm.fused(x.clone()).reshape([b, c, h * w]).swap_dims(1, 2); // [B, HW, C]
        let out = self.attn.forward(tokens).swap_dims(1, 2).reshape([b, c, h, w]); // [B, C, H, W]
        x + out
    }
}
