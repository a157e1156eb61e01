//! Concatenation along the second axis (channels of `[B, C, H, W]`, tokens of `[B, L, D]`):
//! one parallel copy per image forward, one per image and part backward.
//!
//! Why: flex concatenates on the calling thread, so in a 2-thread process the conv UNet's
//! decoder (each block concatenates its input with a skip) ran its copies on one thread while the
//! other waited: the main thread's `memmove` was 8% of UNet sampling's wall time on 2 threads.

use crate::dispatch::{self, FusedOp, new_tensor, placed};
use crate::parallel::par_filled;
use crate::{Isa, reference};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;

/// `cat([a, b], 1)`; the backward needs the parts' shapes only.
#[derive(Debug)]
struct Cat;

/// Floats per image (per index of the first axis) of a tensor of `shape`.
fn per_image(shape: &[usize]) -> usize {
    shape[1..].iter().product()
}

impl FusedOp<2> for Cat {
    /// The shapes of `a` and `b`.
    type State = [Vec<usize>; 2];

    fn forward(&self, [a, b]: [FlexTensor; 2], _: Option<Isa>) -> (FlexTensor, Self::State) {
        let (shape_a, shape_b) = (a.layout().shape().to_vec(), b.layout().shape().to_vec());
        let same_but_axis_1 = shape_a.len() == shape_b.len()
            && shape_a.len() >= 2
            && shape_a.iter().zip(&shape_b).enumerate().all(|(i, (x, y))| i == 1 || x == y);
        assert!(same_but_axis_1, "cat along axis 1 of {shape_a:?} and {shape_b:?}: other axes differ");
        let (xa, xb) = (a.storage::<f32>(), b.storage::<f32>());
        let (la, lb) = (per_image(&shape_a), per_image(&shape_b));
        // SAFETY: each image's chunk is written whole: `a`'s part, then `b`'s.
        let (out, _) = unsafe {
            par_filled(
                shape_a[0] * (la + lb),
                la + lb,
                || (),
                |_, i, dst| {
                    let (da, db) = dst.split_at_mut(la);
                    da.write_copy_of_slice(&xa[i * la..][..la]);
                    db.write_copy_of_slice(&xb[i * lb..][..lb]);
                },
            )
        };
        let mut shape = shape_a.clone();
        shape[1] += shape_b[1];
        (new_tensor(out, &shape), [shape_a, shape_b])
    }

    fn backward(
        self,
        [shape_a, shape_b]: Self::State,
        grad: FlexTensor,
        [want_a, want_b]: [bool; 2],
        _: Option<Isa>,
    ) -> [Option<FlexTensor>; 2] {
        let dy = grad.storage::<f32>();
        let (la, lb) = (per_image(&shape_a), per_image(&shape_b));
        // The gradient of the part of `shape` at `offset` within each image of the output.
        let part = |offset: usize, shape: &[usize]| {
            let len = per_image(shape);
            // SAFETY: each image's chunk of the part is written whole.
            let (dx, _) = unsafe {
                par_filled(
                    shape[0] * len,
                    len.max(1),
                    || (),
                    |_, i, dst| {
                        dst.write_copy_of_slice(&dy[i * (la + lb) + offset..][..dst.len()]);
                    },
                )
            };
            new_tensor(dx, shape)
        };
        [want_a.then(|| part(0, &shape_a)), want_b.then(|| part(la, &shape_b))]
    }
}

/// `cat([a, b], 1)`: the concatenation along the second axis, each image copied on its own
/// rayon task.
///
/// # Shapes
/// - a: `[B, N_a, ...]`, b: `[B, N_b, ...]` (the other axes equal)
/// - output: `[B, N_a + N_b, ...]`
pub fn cat_axis1<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    dispatch::run(Cat, [placed(&a), placed(&b)]).unwrap_or_else(|| reference::cat_axis1(a, b))
}
