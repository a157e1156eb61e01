//! How a network scales the skip it pops: [`SkipScaling`] (the strategy a config names, defined
//! with the run's schema) applied to tensors, in one place for both networks (docs/method.md §2-3).

use crate::gate::SeGate;
use crate::skip_edit::{Layout, SkipEdit, edit_fusion, low_frequency_share};
use crate::trace::{Coefficient, ForwardTrace, FusionTrace, record};
use burn::module::Param;
use burn::prelude::*;

pub use scalelong_schema::strategy::{
    DEFAULT_BALANCE, DEFAULT_KAPPA, DEFAULT_REDUCTION, SkipScaling, SkipScalingError, lsc_of_decoder_block,
};

/// What a decoder block fuses: the main path and the skip as the strategy weights them, and the
/// skip's coefficient relative to the main path (what the diagnostics record).
pub struct Fusion<const D: usize> {
    pub main: Tensor<D>,
    pub skip: Tensor<D>,
    pub coefficient: Coefficient,
}

/// The learned parameters a strategy scales one LSC's skip with.
#[derive(Clone, Copy)]
pub enum SkipParams<'a> {
    None,
    /// LS: the SE gate of this LSC (or the shared one).
    Gate(&'a SeGate),
    /// Learned scalar: this LSC's coefficient, `[1]`.
    Scalar(&'a Param<Tensor<1>>),
}

/// How a network applies its [`SkipScaling`] to the skip it pops: the one place a skip is scaled,
/// for the U-ViT's tokens and the conv UNet's channels alike.
pub trait ScaleSkip {
    /// The main path and the skip of LSC `lsc` as the strategy fuses them. Fixed strategies
    /// multiply the skip by [`SkipScaling::coefficient`] (by nothing when that is exactly 1, so `1`
    /// costs nothing over a plain UNet); LS by its gate computed from the skip itself (the skip
    /// averaged over every axis after the second gives one gate per entry of axis 1, broadcast
    /// over the rest: per token for the U-ViT, per channel for the conv UNet); a learned scalar by
    /// its value; mp-cat weights both parts by [`SkipScaling::mp_cat_weights`] for the widths
    /// `(main, skip)` of the axis they are concatenated along. The main path is left untouched by
    /// every strategy but mp-cat.
    ///
    /// # Shapes
    /// - main, skip: `[B, G, ...]` (`[B, L, D]` tokens or `[B, C, H, W]` channels)
    /// - output: as the inputs; a gate coefficient is `[B, G]`
    fn fuse<const D: usize>(
        self,
        main: Tensor<D>,
        skip: &Tensor<D>,
        lsc: usize,
        widths: (usize, usize),
        params: SkipParams,
    ) -> Fusion<D>;
}

/// Where a decoder block fuses its long skip: what [`fuse_long_skip`] needs beyond the tensors.
#[derive(Clone, Copy)]
pub(crate) struct FusionSite<'a> {
    /// 1-based LSC index (1 = outermost).
    pub lsc: usize,
    /// The learned parameters the strategy scales this LSC's skip with.
    pub params: SkipParams<'a>,
    /// The widths `(main, skip)` of the axis the two are concatenated along.
    pub widths: (usize, usize),
    /// The resolution stage, counted from the innermost, where FreeU edits stages 0 and 1 (`None`:
    /// a block FreeU never edits).
    pub stage: Option<usize>,
    pub layout: Layout,
}

/// One decoder block's long-skip fusion, the same recipe in both networks: the strategy scales
/// the popped skip ([`ScaleSkip::fuse`]), the sampling-time edit rescales the pair
/// ([`edit_fusion`]), and a trace, when one is kept, records what entered the fusion.
///
/// # Shapes
/// - main, skip: `[B, L, D]` tokens or `[B, C, H, W]` channels; output: as the inputs
pub(crate) fn fuse_long_skip<const D: usize>(
    scaling: SkipScaling,
    edit: &SkipEdit,
    main: Tensor<D>,
    skip: Tensor<D>,
    site: FusionSite,
    trace: &mut Option<&mut ForwardTrace>,
) -> Fusion<D> {
    // The main path as it enters the fusion, kept only for a trace (mp-cat scales it).
    let entering = trace.is_some().then(|| (ForwardTrace::flat(&main), low_frequency_share(&main, site.layout, 1)));
    let fusion = scaling.fuse(main, &skip, site.lsc, site.widths, site.params);
    let fusion = edit_fusion(edit, fusion, site.lsc, site.stage, site.layout);
    record(trace, |t| {
        let (main, main_low_frequency_share) = entering.expect("kept when tracing");
        t.fusions.push(FusionTrace {
            lsc: site.lsc,
            main,
            skip: ForwardTrace::flat(&skip),
            coefficient: fusion.coefficient.clone(),
            skip_low_frequency_share: low_frequency_share(&skip, site.layout, 1),
            main_low_frequency_share,
        })
    });
    fusion
}

impl ScaleSkip for SkipScaling {
    fn fuse<const D: usize>(
        self,
        main: Tensor<D>,
        skip: &Tensor<D>,
        lsc: usize,
        widths: (usize, usize),
        params: SkipParams,
    ) -> Fusion<D> {
        if let Some((w_main, w_skip)) = self.mp_cat_weights(widths.0, widths.1) {
            return Fusion {
                main: main.mul_scalar(w_main),
                skip: skip.clone().mul_scalar(w_skip),
                coefficient: Coefficient::Fixed(w_skip / w_main),
            };
        }
        let (skip, coefficient) = match (self.coefficient(lsc), params) {
            (Some(c), _) if c == 1.0 => (skip.clone(), Coefficient::Fixed(c)),
            (Some(c), _) => (skip.clone().mul_scalar(c), Coefficient::Fixed(c)),
            (None, SkipParams::Gate(gate)) => {
                let dims = skip.dims();
                let (batch, width) = (dims[0], dims[1]);
                // Innermost axis first, as the networks pooled before: the same sums in the same order.
                let pooled = (2..D).rev().fold(skip.clone(), |t, axis| t.mean_dim(axis)).reshape([batch, width]); // [B, G]
                let g = gate.forward(pooled); // [B, G]
                let broadcast: [usize; D] = std::array::from_fn(|axis| if axis < 2 { dims[axis] } else { 1 });
                (skip.clone() * g.clone().reshape(broadcast), Coefficient::Gate(g))
            }
            (None, SkipParams::Scalar(scalar)) => {
                let value = scalar.val(); // [1]
                (skip.clone() * value.clone().reshape([1; D]), Coefficient::Learned(value))
            }
            (None, SkipParams::None) => {
                panic!("{self} needs the learned parameters of LSC {lsc}, and the network built none")
            }
        };
        Fusion { main, skip, coefficient }
    }
}

/// The coefficients of the learned-scalar strategy for a network with `n` LSCs, indexed by decoder
/// block (block `k` consumes LSC `n - k`), each `[1]` at its initial value `kappa^(i-1)`; none for
/// the other strategies.
pub fn learned_scalars(scaling: SkipScaling, n: usize, device: &Device) -> Vec<Param<Tensor<1>>> {
    (0..n)
        .filter_map(|k| scaling.initial_scalar(lsc_of_decoder_block(k, n)))
        .map(|value| Param::from_tensor(Tensor::from_floats([value as f32], device)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Through the networks' own fusion, unit-RMS parts come out of mp-cat as a unit-RMS
    /// concatenation (up to the sampling error of the inputs' RMS), at several balances and widths.
    #[test]
    fn mp_cat_keeps_unit_rms_through_the_fusion() {
        let device = Device::flex();
        device.seed(1);
        for t in [0.2, 0.5, 0.8] {
            for (na, nb) in [(32, 32), (16, 48)] {
                let unit = |width: usize| {
                    let x = Tensor::<3>::random([4, 9, width], Distribution::Normal(0.0, 1.0), &device);
                    let rms = x.clone().square().mean().sqrt();
                    x / rms.reshape([1, 1, 1])
                };
                let (main, skip) = (unit(na), unit(nb));
                let fused = SkipScaling::MpCat { t }.fuse(main, &skip, 1, (na, nb), SkipParams::None);
                let cat = Tensor::cat(vec![fused.main, fused.skip], 2);
                let rms = cat.square().mean().sqrt().into_scalar::<f32>();
                assert!((rms - 1.0).abs() < 1e-5, "t {t}, widths {na}/{nb}: RMS {rms}");
            }
        }
    }
}
