//! The networks ScaleLong studies (a conv UNet and a U-ViT whose long skip connections are scaled
//! by a [`SkipScaling`] strategy) and the diffusion process that trains and samples them.
//!
//! A newcomer's map: [`skip_scaling`] is the method itself; [`unet`] and [`uvit`] apply it in their
//! `forward`, step 5/4 "decoder"; [`trace`] is what a forward pass exposes to the diagnostics;
//! [`diffusion`] holds schedules, `q_sample`, the loss and the samplers; [`presets`] names sizes;
//! [`pytorch`] exchanges weights with the PyTorch reference. The fast CPU kernels every layer runs
//! on live in `scalelong-kernels` (layers are called as `self.conv1.fused(x)`), so this crate has
//! no `unsafe`.

#![forbid(unsafe_code)]

pub mod attention;
pub mod diffusion;
pub mod embeddings;
pub mod gate;
pub mod init;
pub mod network;
pub mod presets;
pub mod pytorch;
pub mod skip_edit;
pub mod skip_scaling;
pub mod trace;
pub mod unet;
pub mod uvit;

pub use network::{DiffusionNet, ModelConfig};
pub use skip_edit::{FreeU, SkipEdit};
pub use skip_scaling::{ScaleSkip, SkipScaling};
pub use trace::{Coefficient, ForwardTrace, FusionTrace};
