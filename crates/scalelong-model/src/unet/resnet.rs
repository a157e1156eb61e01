//! The ADM/DDPM residual block: GroupNorm + SiLU + 3x3 conv twice, the time embedding added in
//! between, and a 1x1 conv on the residual path when the width changes.

use crate::init::{LinearInit, linear};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, PaddingConfig2d};
use burn::prelude::*;
use scalelong_kernels::{Fused, FusedSilu};

pub(crate) fn conv3x3(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

pub(crate) fn group_norm(groups: usize, channels: usize, device: &Device) -> GroupNorm {
    // A width below the group count (tiny test models) falls back to the largest divisor.
    let groups = (1..=groups.min(channels)).rev().find(|g| channels.is_multiple_of(*g)).unwrap_or(1);
    GroupNormConfig::new(groups, channels).init(device)
}

#[derive(Module, Debug)]
pub struct ResBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_proj: Linear,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    /// 1x1 conv on the residual path when `c_in != c_out`.
    pub shortcut: Option<Conv2d>,
}

impl ResBlock {
    pub fn new(c_in: usize, c_out: usize, time_dim: usize, groups: usize, device: &Device) -> Self {
        Self {
            norm1: group_norm(groups, c_in, device),
            conv1: conv3x3(c_in, c_out, 1, device),
            time_proj: linear(time_dim, c_out, true, LinearInit::TorchDefault, device),
            norm2: group_norm(groups, c_out, device),
            conv2: conv3x3(c_out, c_out, 1, device),
            shortcut: (c_in != c_out).then(|| Conv2dConfig::new([c_in, c_out], [1, 1]).init(device)),
        }
    }

    /// # Shapes
    /// - x: `[B, C_in, H, W]`, time: `[B, T]` (already passed through SiLU)
    /// - output: `[B, C_out, H, W]`
    ///
    pub fn forward(&self, x: Tensor<4>, time: Tensor<2>) -> Tensor<4> {
        let h = self.conv1.fused(self.norm1.fused_silu(x.clone())); // [B, C_out, H, W]
        let [batch, c_out, _, _] = h.dims();
        let h = h + self.time_proj.fused(time).reshape([batch, c_out, 1, 1]); // [B, C_out, H, W]
        let h = self.conv2.fused(self.norm2.fused_silu(h)); // [B, C_out, H, W]
        let residual = match &self.shortcut {
            Some(conv) => conv.fused(x),
            None => x,
        };
        residual + h
    }
}
