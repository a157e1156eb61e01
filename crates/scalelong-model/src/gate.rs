//! The learnable-scaling (LS) gate: a squeeze-and-excitation calibration net that turns a pooled
//! skip into one coefficient per pooled position, as the reference code's `Attentionlayer` does.
//! The U-ViT pools over channels (one gate per token), the conv UNet over space (one per channel)
//! (docs/method.md §3.4).

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};
use scalelong_kernels::Fused;

/// `sigmoid(layer2(relu(layer1(pooled))))`, `width -> width / reduction -> width`, both with
/// bias and PyTorch's default Linear init (the reference creates it after its own init pass), so
/// gates start near 0.5.
#[derive(Module, Debug)]
pub struct SeGate {
    pub layer1: Linear,
    pub layer2: Linear,
}

impl SeGate {
    pub fn new(width: usize, reduction: usize, device: &Device) -> Self {
        // The reference computes int(dim // r); a width below r still needs one hidden unit.
        let hidden = (width / reduction).max(1);
        Self {
            layer1: LinearConfig::new(width, hidden).init(device),
            layer2: LinearConfig::new(hidden, width).init(device),
        }
    }

    /// # Shapes
    /// - pooled: `[B, width]`
    /// - output: `[B, width]`, every entry in (0, 1)
    pub fn forward(&self, pooled: Tensor<2>) -> Tensor<2> {
        sigmoid(self.layer2.fused(relu(self.layer1.fused(pooled))))
    }
}
