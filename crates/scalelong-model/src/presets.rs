//! Named model sizes. CPU presets fit 28x28 grey images padded to 32x32 on a 2-core machine;
//! `uvit-s2` is the paper's CIFAR-10 U-ViT-S/2 (for GPUs).

use crate::network::ModelConfig;
use crate::unet::UNetConfig;
use crate::uvit::UViTConfig;

/// Every preset name with a one-line description, in the order `scalelong params` prints them.
pub const PRESETS: &[(&str, &str)] = &[
    ("unet-small", "conv UNet, widths 16/32/32, one ResBlock a level, attention at 8x8: 6 LSCs"),
    ("uvit-small", "U-ViT, patch 4, width 64, depth 12: 6 LSCs"),
    ("uvit-deep", "U-ViT, patch 4, width 64, depth 16: 8 LSCs (instability shows sooner)"),
    ("uvit-s2", "the paper's U-ViT-S/2: patch 2, width 512, depth 12, 8 heads (GPU)"),
    ("uvit-s2-deep", "U-ViT-S/2 at depth 16 (GPU)"),
];

pub fn preset(name: &str) -> Option<ModelConfig> {
    let uvit = |patch_size, embed_dim, depth, num_heads| {
        ModelConfig::Uvit(UViTConfig { patch_size, embed_dim, depth, num_heads, ..UViTConfig::default() })
    };
    Some(match name {
        "unet-small" => ModelConfig::Unet(UNetConfig {
            base_channels: 16,
            channel_mult: vec![1, 2, 2],
            res_blocks: 1,
            attention_heads: 2,
            ..UNetConfig::default()
        }),
        "uvit-small" => uvit(4, 64, 12, 4),
        "uvit-deep" => uvit(4, 64, 16, 4),
        "uvit-s2" => uvit(2, 512, 12, 8),
        "uvit-s2-deep" => uvit(2, 512, 16, 8),
        _ => return None,
    })
}
