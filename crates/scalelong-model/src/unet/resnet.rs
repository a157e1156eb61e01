//! The ADM/DDPM residual block: GroupNorm + SiLU + 3x3 conv twice, the time embedding added in
//! between, and a 1x1 conv on the residual path when the width changes.

use crate::init::{LinearInit, linear};
use crate::ops;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, PaddingConfig2d};
use burn::prelude::*;

pub(crate) fn conv3x3(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

pub(crate) fn group_norm(groups: usize, channels: usize, device: &Device) -> GroupNorm {
    // A width below the group count (tiny test models) falls back to the largest divisor.
    let groups = (1..=groups.min(channels)).rev().find(|g| channels % g == 0).unwrap_or(1);
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
    /// GroupNorm + SiLU and the convolutions run as the fused ops of [`crate::ops`] (equal to
    /// `conv(silu(norm(x)))` with burn's modules, see tests/fast_ops.rs).
    pub fn forward(&self, x: Tensor<4>, time: Tensor<2>) -> Tensor<4> {
        let h = ops::conv2d_module(&self.conv1, ops::group_norm(&self.norm1, x.clone(), true)); // [B, C_out, H, W]
        let [batch, c_out, _, _] = h.dims();
        let h = h + self.time_proj.forward(time).reshape([batch, c_out, 1, 1]); // [B, C_out, H, W]
        let h = ops::conv2d_module(&self.conv2, ops::group_norm(&self.norm2, h, true)); // [B, C_out, H, W]
        let residual = match &self.shortcut {
            Some(conv) => ops::conv2d_module(conv, x),
            None => x,
        };
        residual + h
    }
}
