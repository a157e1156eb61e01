//! Tiny networks and batches shared by the model tests.
#![allow(dead_code)]

use burn::prelude::*;
use burn::tensor::Distribution;
pub use scalelong_kernels::testing::to_vec;
use scalelong_model::unet::UNetConfig;
use scalelong_model::uvit::UViTConfig;
use scalelong_model::{DiffusionNet, ModelConfig, SkipScaling};

pub const STRATEGIES: [SkipScaling; 7] = [
    SkipScaling::Original,
    SkipScaling::InvSqrt2,
    SkipScaling::Constant { kappa: 0.5 },
    SkipScaling::Learnable { shared: true, reduction: 4 },
    SkipScaling::Learnable { shared: false, reduction: 4 },
    SkipScaling::MpCat { t: 0.5 },
    SkipScaling::LearnedScalar { kappa: 0.5 },
];

pub fn tiny_uvit(img_size: usize, depth: usize) -> ModelConfig {
    ModelConfig::Uvit(UViTConfig {
        img_size,
        patch_size: 2,
        in_chans: 1,
        embed_dim: 16,
        depth,
        num_heads: 2,
        ..UViTConfig::default()
    })
}

pub fn tiny_unet(img_size: usize) -> ModelConfig {
    ModelConfig::Unet(UNetConfig {
        img_size,
        in_channels: 1,
        base_channels: 8,
        channel_mult: vec![1, 2],
        res_blocks: 1,
        attention_heads: 2,
        norm_groups: 4,
    })
}

pub fn tiny_models(img_size: usize) -> Vec<ModelConfig> {
    vec![tiny_uvit(img_size, 4), tiny_unet(img_size)]
}

/// A seeded CPU device with autodiff that holds, while it lives, the lock making its draws
/// reproducible: the device RNG is global, so tests drawing from it in parallel would interleave
/// their draws and the "same seed" would give different weights from run to run.
pub struct SeededDevice {
    device: Device,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for SeededDevice {
    type Target = Device;
    fn deref(&self) -> &Device {
        &self.device
    }
}

/// Only one [`SeededDevice`] may live at a time per test binary (a second one waits).
pub fn device(seed: u64) -> SeededDevice {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    device.seed(seed);
    SeededDevice { device, _lock: lock }
}

pub fn batch(shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

pub fn times(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_floats(values, device)
}

pub fn with_scaling(net: DiffusionNet, scaling: SkipScaling) -> DiffusionNet {
    match net {
        DiffusionNet::UNet(mut n) => {
            n.scaling = scaling;
            DiffusionNet::UNet(n)
        }
        DiffusionNet::UViT(mut n) => {
            n.scaling = scaling;
            DiffusionNet::UViT(n)
        }
    }
}
