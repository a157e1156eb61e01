//! Linear layers: `x W + b` as one GEMM per thread on a block of rows (the bias written first, the
//! product accumulated onto it); the input gradient against W^T, the weight gradient summed over
//! blocks of tokens (the direct kernel) or computed by blocks of W's rows (gemm, strided views).

use crate::dispatch::{self, FusedOp, dims, new_tensor, placed};
use crate::gemm::{gemm_strided, matmul, transpose_block};
use crate::parallel::{par_filled, row_block, sum_partials};
use crate::{Isa, direct_gemm, reference};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use rayon::prelude::*;

/// `x [M, K] W [K, N] + b [N]`, all contiguous.
fn linear_flex(x: &FlexTensor, w: &FlexTensor, b: &FlexTensor, isa: Option<Isa>) -> FlexTensor {
    let ([m, k], [_, n]) = (dims::<2>(x), dims::<2>(w));
    let (x, w, b) = (x.storage::<f32>(), w.storage::<f32>(), b.storage::<f32>());
    let rows = row_block(m);
    let mut out = b.repeat(m); // every row starts as the bias; the GEMM accumulates onto it
    out.par_chunks_mut(rows * n).enumerate().for_each(|(i, dst)| {
        // SAFETY: dst is this block's [r, N]; the block's rows of x [r, K] and all of W [K, N]
        // are inside their slices.
        unsafe {
            matmul(
                isa,
                (dst.len() / n, n, k),
                (dst.as_mut_ptr(), n as isize, 1),
                true,
                (x.as_ptr().add(i * rows * k), k as isize, 1),
                (w.as_ptr(), n as isize, 1),
                1.0,
            )
        };
    });
    new_tensor(out, &[m, n])
}

#[derive(Clone)]
struct LinearState {
    /// The input `[M, K]` and the weight `[K, N]`, contiguous.
    x: FlexTensor,
    weight: FlexTensor,
}

impl std::fmt::Debug for LinearState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinearState({:?} x {:?})", dims::<2>(&self.x), dims::<2>(&self.weight))
    }
}

/// `x W + b` on `[M, K]` rows; the backward keeps `x` and `W`.
#[derive(Debug)]
struct Linear;

impl FusedOp<3> for Linear {
    type State = LinearState;

    fn forward(&self, [x, weight, bias]: [FlexTensor; 3], isa: Option<Isa>) -> (FlexTensor, LinearState) {
        (linear_flex(&x, &weight, &bias, isa), LinearState { x, weight })
    }

    fn backward(
        self,
        LinearState { x, weight }: LinearState,
        dy: FlexTensor,
        [want_x, want_w, want_b]: [bool; 3],
        isa: Option<Isa>,
    ) -> [Option<FlexTensor>; 3] {
        let ([m, k], [_, n]) = (dims::<2>(&x), dims::<2>(&weight));
        let (x, w, dy) = (x.storage::<f32>(), weight.storage::<f32>(), dy.storage::<f32>()); // dy: [M, N]
        let dx = want_x.then(|| {
            // dx [M, K] = dy [M, N] W^T: the direct kernel on a transposed copy of W (it reads
            // its right factor by rows), gemm on W^T's strides (row 1, column N).
            let rows = row_block(m);
            let w_t = isa.map(|_| {
                let mut w_t = vec![0.0f32; k * n];
                transpose_block(w, k, n, n, 1.0, &mut w_t);
                w_t
            });
            let rows_of_dx = |_: &mut (), i: usize, dst: &mut [std::mem::MaybeUninit<f32>]| {
                let rhs = match &w_t {
                    Some(w_t) => (w_t.as_ptr(), k as isize, 1),
                    None => (w.as_ptr(), 1, n as isize),
                };
                // SAFETY: dst is this block's [r, K], written whole by the product (which does
                // not read it); dy's block [r, N] and W^T [N, K] are inside their slices.
                unsafe {
                    matmul(
                        isa,
                        (dst.len() / k, k, n),
                        (dst.as_mut_ptr().cast(), k as isize, 1),
                        false,
                        (dy[i * rows * n..].as_ptr(), n as isize, 1),
                        rhs,
                        1.0,
                    )
                };
            };
            // SAFETY: `rows_of_dx` writes its whole block.
            let (dx, _) = unsafe { par_filled(m * k, rows * k, || (), rows_of_dx) };
            new_tensor(dx, &[m, k])
        });
        let dw = want_w.then(|| {
            // dW [K, N] = x^T [K, M] dy [M, N]: the direct kernel sums a block of tokens per task
            // (partial dW summed after); gemm takes a block of W's rows per task.
            let dw = if let Some(isa) = isa {
                let rows = row_block(m);
                let partials: Vec<Vec<f32>> = (x.par_chunks(rows * k).zip(dy.par_chunks(rows * n)))
                    .map(|(x_rows, dy_rows)| {
                        let mut part = vec![0.0f32; k * n];
                        direct_gemm::gemm(isa, k, n, dy_rows.len() / n, &mut part, false, x_rows, (1, k), dy_rows);
                        part
                    })
                    .collect();
                sum_partials(partials.into_iter(), k * n)
            } else {
                let rows = row_block(k);
                let mut dw = vec![0.0f32; k * n];
                dw.par_chunks_mut(rows * n).enumerate().for_each(|(i, dst)| {
                    // SAFETY: dst is [r, N]; x^T's rows i*rows.. are x's columns (strides 1, K).
                    unsafe {
                        gemm_strided(
                            (dst.len() / n, n, m),
                            (dst.as_mut_ptr(), n as isize, 1),
                            false,
                            (x.as_ptr().add(i * rows), 1, k as isize),
                            (dy.as_ptr(), n as isize, 1),
                            1.0,
                        );
                    }
                });
                dw
            };
            new_tensor(dw, &[k, n])
        });
        let db = want_b.then(|| {
            let partials = dy.par_chunks(row_block(m) * n).map(|block| {
                let mut sum = vec![0.0f32; n];
                for row in block.chunks_exact(n) {
                    for (s, v) in sum.iter_mut().zip(row) {
                        *s += v;
                    }
                }
                sum
            });
            new_tensor(sum_partials(partials.collect::<Vec<_>>().into_iter(), n), &[n])
        });
        [dx, dw, db]
    }
}

/// `x W + b` over the last axis, both gradients too.
///
/// # Shapes
/// - x: `[..., K]`, weight: `[K, N]` (burn's layout), bias: `[N]`
/// - output: `[..., N]`
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<D> {
    let shape = x.dims();
    let [k, n] = weight.dims();
    let mut out_shape = shape;
    out_shape[D - 1] = n;
    let x = x.reshape([shape[..D - 1].iter().product::<usize>(), k]); // [M, K]
    let y: Tensor<2> = dispatch::run(Linear, [placed(&x), placed(&weight), placed(&bias)])
        .unwrap_or_else(|| reference::linear(x, weight, bias));
    y.reshape(out_shape)
}
