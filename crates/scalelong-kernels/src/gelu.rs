//! GELU (the exact, erf form the reference uses), forward and backward each one parallel pass.
//! flex computes both on one thread with a scalar erf; here rayon splits the elements and erf is
//! Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, about f32's rounding).

use crate::dispatch::{self, FusedOp, new_tensor, placed};
use crate::math::{self, vectorised_fn};
use crate::parallel::{CHUNK, par_filled};
use crate::{Isa, reference};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;

vectorised_fn! {
    /// `x Phi(x)` of each element.
    pub(crate) fn gelu_chunk(dst: &mut [std::mem::MaybeUninit<f32>], xs: &[f32]) {
        for (o, &v) in dst.iter_mut().zip(xs) {
            o.write(v * math::phi_and_pdf(v).0);
        }
    }
}

vectorised_fn! {
    /// [`gelu_chunk`] in place: the same values.
    pub(crate) fn gelu_in_place(xs: &mut [f32]) {
        for v in xs.iter_mut() {
            *v = *v * math::phi_and_pdf(*v).0;
        }
    }
}

vectorised_fn! {
    /// The input gradient `g (Phi(x) + x pdf(x))` of each element.
    fn gelu_grad_chunk(dst: &mut [std::mem::MaybeUninit<f32>], xs: &[f32], gs: &[f32]) {
        for ((o, &v), &g) in dst.iter_mut().zip(xs).zip(gs) {
            let (phi, pdf) = math::phi_and_pdf(v);
            o.write(g * (phi + v * pdf));
        }
    }
}

/// GELU; the backward keeps its input.
#[derive(Debug)]
struct Gelu;

impl FusedOp<1> for Gelu {
    type State = FlexTensor;

    fn forward(&self, [x]: [FlexTensor; 1], isa: Option<Isa>) -> (FlexTensor, FlexTensor) {
        let xs = x.storage::<f32>();
        // SAFETY: gelu_chunk writes its whole chunk.
        let (out, _) = unsafe {
            par_filled(xs.len(), CHUNK, || (), |_, i, dst| gelu_chunk(isa, dst, &xs[i * CHUNK..][..dst.len()]))
        };
        (new_tensor(out, x.layout().shape()), x)
    }

    fn backward(self, x: FlexTensor, grad: FlexTensor, _: [bool; 1], isa: Option<Isa>) -> [Option<FlexTensor>; 1] {
        [Some(gelu_backward(&x, &grad, isa))]
    }
}

/// The gradient of GELU's input `x` from its output's `grad`, one parallel pass (into memory not
/// zeroed first: the zeroing was 1.5% of a U-ViT training step).
pub(crate) fn gelu_backward(x: &FlexTensor, grad: &FlexTensor, isa: Option<Isa>) -> FlexTensor {
    let (xs, gs) = (x.storage::<f32>(), grad.storage::<f32>());
    assert_eq!(xs.len(), gs.len(), "GELU's input and its output's gradient");
    // SAFETY: gelu_grad_chunk writes its whole chunk.
    let (dx, _) = unsafe {
        par_filled(
            gs.len(),
            CHUNK,
            || (),
            |_, i, dst| {
                let n = dst.len();
                gelu_grad_chunk(isa, dst, &xs[i * CHUNK..][..n], &gs[i * CHUNK..][..n])
            },
        )
    };
    new_tensor(dx, grad.layout().shape())
}

/// `x * Phi(x)` (exact GELU), element-wise, with its backward.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    dispatch::run(Gelu, [placed(&x)]).unwrap_or_else(|| reference::gelu(x))
}
