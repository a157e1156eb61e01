//! One type for "the denoising network", whichever architecture a config names.

use crate::skip_edit::SkipEdit;
use crate::skip_scaling::SkipScaling;
use crate::trace::ForwardTrace;
use crate::unet::{UNet, UNetConfig};
use crate::uvit::{UViT, UViTConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// A network's architecture and sizes; `arch = "unet"` or `arch = "uvit"` plus that
/// architecture's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum ModelConfig {
    Unet(UNetConfig),
    Uvit(UViTConfig),
}

impl ModelConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Unet(c) => c.validate(),
            Self::Uvit(c) => c.validate(),
        }
    }

    pub fn num_skips(&self) -> usize {
        match self {
            Self::Unet(c) => c.num_skips(),
            Self::Uvit(c) => c.num_skips(),
        }
    }

    /// `[C, H, W]` of the images this network denoises.
    pub fn image_shape(&self) -> [usize; 3] {
        match self {
            Self::Unet(c) => [c.in_channels, c.img_size, c.img_size],
            Self::Uvit(c) => [c.in_chans, c.img_size, c.img_size],
        }
    }

    pub fn init(&self, scaling: SkipScaling, device: &Device) -> DiffusionNet {
        match self {
            Self::Unet(c) => DiffusionNet::UNet(c.init(scaling, device)),
            Self::Uvit(c) => DiffusionNet::UViT(c.init(scaling, device)),
        }
    }
}

// A process holds one or two networks (model and EMA) and moves them once a step: the size of the
// smaller variant's padding costs nothing measurable, and burn's Module derive reads plain variants.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum DiffusionNet {
    UNet(UNet),
    UViT(UViT),
}

impl DiffusionNet {
    /// Predicted noise; fills `trace` when given (see [`ForwardTrace`]).
    ///
    /// # Shapes
    /// - x: `[B, C, H, W]`, model_time: `[B]`
    /// - output: `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>, model_time: Tensor<1>, trace: Option<&mut ForwardTrace>) -> Tensor<4> {
        match self {
            Self::UNet(net) => net.forward(x, model_time, trace),
            Self::UViT(net) => net.forward(x, model_time, trace),
        }
    }

    pub fn num_skips(&self) -> usize {
        match self {
            Self::UNet(net) => net.num_skips(),
            Self::UViT(net) => net.num_skips(),
        }
    }

    pub fn scaling(&self) -> SkipScaling {
        match self {
            Self::UNet(net) => net.scaling,
            Self::UViT(net) => net.scaling,
        }
    }

    /// The same weights with the skips edited at sampling time by `edit` (docs/method.md §3.5).
    pub fn with_edit(mut self, edit: SkipEdit) -> Self {
        match &mut self {
            Self::UNet(net) => net.edit = edit,
            Self::UViT(net) => net.edit = edit,
        }
        self
    }
}
