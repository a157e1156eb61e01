//! Nearest-neighbour x2 upsampling: one copy forward, one 2x2 sum backward. The composition
//! (reshape, expand, reshape) goes through flex's generic strided copy, and its backward through
//! a broadcast reduction.

use crate::dispatch::{self, FusedOp, dims, new_tensor, placed};
use crate::math::vectorised_fn;
use crate::parallel::rows_per_task;
use crate::{Isa, reference};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use rayon::prelude::*;

vectorised_fn! {
    /// Each row of `w` pixels of `src` written twice into `dst`, each pixel twice.
    fn upsample_rows(dst: &mut [f32], src: &[f32], w: usize) {
        for (rows, row) in dst.chunks_exact_mut(4 * w).zip(src.chunks_exact(w)) {
            let (top, bottom) = rows.split_at_mut(2 * w);
            for (pair, &v) in top.chunks_exact_mut(2).zip(row) {
                pair[0] = v;
                pair[1] = v;
            }
            bottom.copy_from_slice(top);
        }
    }
}

vectorised_fn! {
    /// The sum of each 2x2 square of `src` (rows of `2 w`) into `dst` (rows of `w`).
    fn downsum_rows(dst: &mut [f32], src: &[f32], w: usize) {
        for (row, rows) in dst.chunks_exact_mut(w).zip(src.chunks_exact(4 * w)) {
            let (top, bottom) = rows.split_at(2 * w);
            for ((o, t), b) in row.iter_mut().zip(top.chunks_exact(2)).zip(bottom.chunks_exact(2)) {
                *o = t[0] + t[1] + b[0] + b[1];
            }
        }
    }
}

/// The upsampling; the backward needs the input's shape only.
#[derive(Debug)]
struct Upsample;

impl FusedOp<1> for Upsample {
    /// `[B, C, H, W]` of the input.
    type State = [usize; 4];

    fn forward(&self, [x]: [FlexTensor; 1], isa: Option<Isa>) -> (FlexTensor, [usize; 4]) {
        let [b, c, h, w] = dims::<4>(&x);
        let rows = rows_per_task(w);
        let mut out = vec![0.0f32; 4 * x.storage::<f32>().len()];
        (out.par_chunks_mut(4 * w * rows).zip(x.storage::<f32>().par_chunks(w * rows)))
            .for_each(|(dst, src)| upsample_rows(isa, dst, src, w));
        (new_tensor(out, &[b, c, 2 * h, 2 * w]), [b, c, h, w])
    }

    fn backward(
        self,
        [b, c, h, w]: [usize; 4],
        grad: FlexTensor,
        _: [bool; 1],
        isa: Option<Isa>,
    ) -> [Option<FlexTensor>; 1] {
        let rows = rows_per_task(w);
        let mut dx = vec![0.0f32; b * c * h * w];
        (dx.par_chunks_mut(w * rows).zip(grad.storage::<f32>().par_chunks(4 * w * rows)))
            .for_each(|(dst, src)| downsum_rows(isa, dst, src, w));
        [Some(new_tensor(dx, &[b, c, h, w]))]
    }
}

/// Nearest-neighbour upsampling by 2: each pixel copied into a 2x2 square.
///
/// # Shapes
/// - x: `[B, C, H, W]`, output: `[B, C, 2H, 2W]`
pub fn upsample_nearest2x(x: Tensor<4>) -> Tensor<4> {
    dispatch::run(Upsample, [placed(&x)]).unwrap_or_else(|| reference::upsample_nearest2x(x))
}
