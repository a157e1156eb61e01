//! What one forward pass exposes to the diagnostics.
//!
//! Both networks take `Option<&mut ForwardTrace>`: with `None` (training without diagnostics)
//! nothing is recorded and nothing is cloned, so the hot path pays only a branch per block.

use burn::prelude::*;

/// Hidden features of one forward pass, each flattened per sample to `[B, features]` so the
/// diagnostics treat both architectures alike.
#[derive(Debug, Clone, Default)]
pub struct ForwardTrace {
    /// Output of each encoder block, execution order; block K produces the skip of LSC K + 1.
    pub encoder: Vec<Tensor<2>>,
    /// Output of the middle block.
    pub middle: Option<Tensor<2>>,
    /// Output of each decoder block, execution order; block K consumes LSC N - K.
    pub decoder: Vec<Tensor<2>>,
    /// One per decoder block, execution order.
    pub fusions: Vec<FusionTrace>,
}

/// What entered the fusion of one decoder block.
#[derive(Debug, Clone)]
pub struct FusionTrace {
    /// 1-based LSC index (1 = outermost).
    pub lsc: usize,
    /// The main path `x` entering the fusion, `[B, features]`.
    pub main: Tensor<2>,
    /// The popped skip before scaling, `[B, features]`.
    pub skip: Tensor<2>,
    /// The coefficient actually applied to `skip`, relative to the main path.
    pub coefficient: Coefficient,
    /// Per sample, the share of the skip's energy in its lowest spatial frequencies (within 1 of
    /// zero along each axis: `skip_edit::low_frequency_share`), `[B]`.
    pub skip_low_frequency_share: Tensor<1>,
    /// The same share of the main path entering the fusion, `[B]`: what FreeU's observation (the
    /// skips carry the high frequencies) compares the skip's with.
    pub main_low_frequency_share: Tensor<1>,
}

#[derive(Debug, Clone)]
pub enum Coefficient {
    /// A fixed scalar (strategies `1`, `1/sqrt2`, CS; mp-cat's skip weight over its main-path weight).
    Fixed(f64),
    /// A learned scalar, `[1]`.
    Learned(Tensor<1>),
    /// LS gates, `[B, G]`: one per token (U-ViT) or per channel (conv UNet), broadcast over the rest.
    Gate(Tensor<2>),
}

impl ForwardTrace {
    pub(crate) fn flat<const D: usize>(t: &Tensor<D>) -> Tensor<2> {
        let batch = t.dims()[0];
        t.clone().reshape([batch as i64, -1])
    }
}

/// Records `f()` into the trace when one is given; `f` is not evaluated otherwise.
pub(crate) fn record(trace: &mut Option<&mut ForwardTrace>, f: impl FnOnce(&mut ForwardTrace)) {
    if let Some(trace) = trace.as_deref_mut() {
        f(trace);
    }
}
