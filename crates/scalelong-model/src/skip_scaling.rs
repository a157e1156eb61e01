//! How a network scales the skip it pops: [`SkipScaling`] (the strategy a config names, defined
//! with the run's schema) applied to tensors, in one place for both networks (docs/method.md §2-3).

use crate::gate::SeGate;
use crate::trace::Coefficient;
use burn::prelude::*;

pub use scalelong_schema::strategy::{
    DEFAULT_KAPPA, DEFAULT_REDUCTION, SkipScaling, SkipScalingError, lsc_of_decoder_block,
};

/// How a network applies its [`SkipScaling`] to the skip it pops: the one place a skip is scaled,
/// for the U-ViT's tokens and the conv UNet's channels alike.
pub trait ScaleSkip {
    /// `coef_i * skip` for LSC `lsc`, and the coefficient applied. Fixed strategies multiply by
    /// [`SkipScaling::coefficient`] (by nothing when that is exactly 1, so `1` costs nothing over a
    /// plain UNet); LS multiplies by its `gate` computed from the skip itself: the skip averaged
    /// over every axis after the second gives one gate per entry of axis 1, broadcast over the
    /// rest (per token for the U-ViT, per channel for the conv UNet).
    ///
    /// # Shapes
    /// - skip: `[B, G, ...]` (`[B, L, D]` tokens or `[B, C, H, W]` channels)
    /// - output: as `skip`; a gate coefficient is `[B, G]`
    fn scale<const D: usize>(self, skip: &Tensor<D>, lsc: usize, gate: Option<&SeGate>) -> (Tensor<D>, Coefficient);
}

impl ScaleSkip for SkipScaling {
    fn scale<const D: usize>(self, skip: &Tensor<D>, lsc: usize, gate: Option<&SeGate>) -> (Tensor<D>, Coefficient) {
        match (self.coefficient(lsc), gate) {
            (Some(c), _) if c == 1.0 => (skip.clone(), Coefficient::Fixed(c)),
            (Some(c), _) => (skip.clone().mul_scalar(c), Coefficient::Fixed(c)),
            (None, Some(gate)) => {
                let dims = skip.dims();
                let (batch, width) = (dims[0], dims[1]);
                // Innermost axis first, as the networks pooled before: the same sums in the same order.
                let pooled = (2..D).rev().fold(skip.clone(), |t, axis| t.mean_dim(axis)).reshape([batch, width]); // [B, G]
                let g = gate.forward(pooled); // [B, G]
                let broadcast: [usize; D] = std::array::from_fn(|axis| if axis < 2 { dims[axis] } else { 1 });
                (skip.clone() * g.clone().reshape(broadcast), Coefficient::Gate(g))
            }
            (None, None) => panic!("learnable scaling needs the gate of LSC {lsc}, and the network built none"),
        }
    }
}
