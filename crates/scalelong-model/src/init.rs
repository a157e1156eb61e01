//! Parameter initialisation shared by the networks.

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;

/// How a network initialises its Linear layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinearInit {
    /// PyTorch's default (Kaiming-uniform, bound 1/sqrt(fan_in), bias likewise).
    TorchDefault,
    /// The U-ViT reference: weight ~ N(0, std) truncated at +-2 (absolute, so with std 0.02 the
    /// truncation never acts and a plain normal draws the same distribution), bias 0.
    TruncNormal { std: f64 },
}

pub fn linear(d_in: usize, d_out: usize, bias: bool, init: LinearInit, device: &Device) -> Linear {
    let config = LinearConfig::new(d_in, d_out).with_bias(bias);
    match init {
        LinearInit::TorchDefault => config.init(device),
        LinearInit::TruncNormal { std } => {
            let mut layer = config.with_initializer(Initializer::Normal { mean: 0.0, std }).init(device);
            // A fresh trainable parameter: mapping the drawn bias to zeros would drop its
            // require-grad flag and freeze it.
            if layer.bias.is_some() {
                layer.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
            }
            layer
        }
    }
}
