//! Multi-head self-attention core: qkv -> merged heads, as one op.

use crate::dispatch::{self, FusedOp, dims, new_tensor, placed};
use crate::gemm::{gemm_strided, matmul, transpose_block};
use crate::math::{self, vectorised_fn};
use crate::parallel::{Shared, assume_written, filled_through, par_filled};
use crate::{Isa, reference};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use rayon::prelude::*;

/// `softmax(q k^T / sqrt(Dh)) v` for every head, heads merged back: the attention of the
/// reference code between its `qkv` and `proj` Linears, as one op.
///
/// # Shapes
/// - qkv: `[B, L, 3D]`, laid out `(3, heads, D / heads)` along the last axis
/// - output: `[B, L, D]`
pub fn qkv_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    dispatch::run(Attention { heads }, [placed(&qkv)]).unwrap_or_else(|| reference::qkv_attention(qkv, heads))
}

struct Heads {
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
}

impl Heads {
    fn of(qkv: &FlexTensor, heads: usize) -> Self {
        let [batch, tokens, three_dim] = dims::<3>(qkv);
        assert!(three_dim % (3 * heads) == 0, "qkv width {three_dim} is not 3 x heads x head_dim");
        Self { batch, tokens, heads, head_dim: three_dim / 3 / heads }
    }
    fn dim(&self) -> usize {
        self.heads * self.head_dim
    }
    fn scale(&self) -> f32 {
        (self.head_dim as f32).powf(-0.5)
    }
}

vectorised_fn! {
    /// Each row of `l` values of `rows` replaced by its softmax.
    fn softmax_rows(rows: &mut [f32], l: usize) {
        for row in rows.chunks_mut(l) {
            let max = math::max(row);
            let inv = 1.0 / math::exp_in_place_and_sum(row, max);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

vectorised_fn! {
    /// `ds = scale p (dp - rowsum(dp p))` in place of `dp` (`ds`), row by row of `l` values: the
    /// gradient of the scaled scores through the softmax.
    fn softmax_grad_rows(ds: &mut [f32], p: &[f32], l: usize, scale: f32) {
        for (row_ds, row_p) in ds.chunks_exact_mut(l).zip(p.chunks_exact(l)) {
            let dot = math::sum2(row_ds, row_p, |a, b| a * b);
            for (v, &pv) in row_ds.iter_mut().zip(row_p) {
                *v = scale * pv * (*v - dot);
            }
        }
    }
}

/// `[l, l]` probabilities of head `bh` (image `bh / heads`, head `bh % heads`) into `dst`:
/// `S = scale q k^T` by GEMM straight from the strided `qkv` (`src`), then the softmax of its rows
/// while `S` is in cache. `k_t` is scratch of `dh l` values (empty for the portable kernels).
fn head_probs(
    src: &[f32],
    s: &Heads,
    bh: usize,
    k_t: &mut [f32],
    dst: &mut [std::mem::MaybeUninit<f32>],
    isa: Option<Isa>,
) {
    let (l, dh, d3) = (s.tokens, s.head_dim, 3 * s.dim());
    let base = (bh / s.heads) * l * d3 + (bh % s.heads) * dh;
    let q = (src[base..].as_ptr(), d3 as isize, 1);
    let out = (dst.as_mut_ptr().cast::<f32>(), l as isize, 1);
    assert!(dst.len() == l * l && k_t.len() >= if isa.is_some() { dh * l } else { 0 });
    // SAFETY: q and k of (b, h) are [l, dh] blocks of rows of qkv; dst is [l, l], written whole
    // by the product (which does not read it) before the softmax reads it; k_t is [dh, l].
    unsafe {
        if isa.is_some() {
            transpose_block(&src[base + s.dim()..], l, dh, d3, s.scale(), k_t, l);
            matmul(isa, (l, l, dh), out, false, q, (k_t.as_ptr(), l as isize, 1), 1.0);
        } else {
            gemm_strided((l, l, dh), out, false, q, (src.as_ptr().add(base + s.dim()), 1, d3 as isize), s.scale());
        }
        softmax_rows(isa, assume_written(dst), l);
    }
}

/// Head `bh`'s `P v` (`p`: its `[l, l]` probabilities) into its columns of the merged output.
///
/// # Safety
/// `dst` is the `[B, L, D]` output; no other thread writes head `bh`'s block meanwhile.
unsafe fn head_out(src: &[f32], s: &Heads, bh: usize, p: &[f32], dst: Shared, isa: Option<Isa>) {
    let (l, dh, d) = (s.tokens, s.head_dim, s.dim());
    let (b, h) = (bh / s.heads, bh % s.heads);
    assert!(p.len() == l * l && src.len() == s.batch * l * 3 * d);
    // SAFETY: the (b, h) output block [l, dh] at columns h dh of image b's rows is written by
    // this task alone; v is a block of qkv, p the task's [l, l] probabilities.
    unsafe {
        matmul(
            isa,
            (l, dh, l),
            (dst.0.add(b * l * d + h * dh), d as isize, 1),
            false,
            (p.as_ptr(), l as isize, 1),
            (src.as_ptr().add(b * l * 3 * d + 2 * d + h * dh), 3 * d as isize, 1),
            1.0,
        );
    }
}

/// Returns the merged output `[B, L, D]` and the attention probabilities `[B, H, L, L]`.
///
/// One task per (image, head) computes its probabilities ([`head_probs`]); a second pass
/// multiplies them into `v`, straight into the head's columns of the output.
fn attention_forward(qkv: FlexTensor, heads: usize, isa: Option<Isa>) -> (FlexTensor, FlexTensor) {
    let s = Heads::of(&qkv, heads);
    let (l, dh, d) = (s.tokens, s.head_dim, s.dim());
    let src = qkv.storage::<f32>();
    let scratch = || vec![0.0f32; if isa.is_some() { dh * l } else { 0 }];
    // SAFETY: `head_probs` writes its whole chunk.
    let (scores, _) = unsafe {
        par_filled(s.batch * heads * l * l, l * l, scratch, |k_t, bh, dst| head_probs(src, &s, bh, k_t, dst, isa))
    };
    let probs = new_tensor(scores, &[s.batch, heads, l, l]);
    let p = probs.storage::<f32>();
    // SAFETY: the (b, h) blocks are disjoint and cover the output.
    let out = unsafe {
        filled_through(s.batch * l * d, |dst| {
            (0..s.batch * heads)
                .into_par_iter()
                .for_each(|bh| head_out(src, &s, bh, &p[bh * l * l..(bh + 1) * l * l], dst, isa))
        })
    };
    (new_tensor(out, &[s.batch, l, d]), probs)
}

/// [`attention_forward`]'s output alone, in one pass: each (image, head) task keeps its
/// probabilities in a per-thread `[l, l]` buffer (17 KB at 65 tokens, in L1/L2) and multiplies
/// them into `v` at once, so the `[B, H, L, L]` tensor is never written nor read back. The same
/// products in the same order as [`attention_forward`]: the same values.
fn attention_infer(qkv: FlexTensor, heads: usize, isa: Option<Isa>) -> FlexTensor {
    let s = Heads::of(&qkv, heads);
    let (l, dh, d) = (s.tokens, s.head_dim, s.dim());
    let src = qkv.storage::<f32>();
    let scratch = || (Vec::<f32>::with_capacity(l * l), vec![0.0f32; if isa.is_some() { dh * l } else { 0 }]);
    // SAFETY: the (b, h) blocks are disjoint and cover the output; `head_probs` writes all of
    // `probs` before it is read.
    let out = unsafe {
        filled_through(s.batch * l * d, |dst| {
            (0..s.batch * heads).into_par_iter().for_each_init(scratch, |(probs, k_t), bh| {
                #[allow(clippy::redundant_locals)]
                let dst = dst; // the whole `Shared` (Send), not its pointer
                let probs = &mut probs.spare_capacity_mut()[..l * l];
                head_probs(src, &s, bh, k_t, probs, isa);
                head_out(src, &s, bh, assume_written(probs), dst, isa);
            })
        })
    };
    new_tensor(out, &[s.batch, l, d])
}

/// The fused attention; the backward keeps the input and the probabilities.
#[derive(Debug)]
struct Attention {
    heads: usize,
}

impl FusedOp<1> for Attention {
    /// `qkv` and the attention probabilities.
    type State = (FlexTensor, FlexTensor);

    fn forward(&self, [qkv]: [FlexTensor; 1], isa: Option<Isa>) -> (FlexTensor, Self::State) {
        let (out, probs) = attention_forward(qkv.clone(), self.heads, isa);
        (out, (qkv, probs))
    }

    fn infer(&self, [qkv]: [FlexTensor; 1], isa: Option<Isa>) -> FlexTensor {
        attention_infer(qkv, self.heads, isa)
    }

    fn backward(
        self,
        (qkv, probs): Self::State,
        grad: FlexTensor,
        _: [bool; 1],
        isa: Option<Isa>,
    ) -> [Option<FlexTensor>; 1] {
        [Some(attention_backward(&qkv, &probs, self.heads, grad, isa))]
    }
}

fn attention_backward(
    qkv: &FlexTensor,
    probs: &FlexTensor,
    heads: usize,
    grad: FlexTensor,
    isa: Option<Isa>,
) -> FlexTensor {
    let s = Heads::of(qkv, heads);
    let (l, dh, d) = (s.tokens, s.head_dim, s.dim());
    let (d3, scale) = (3 * d, s.scale());
    let (x, p, dy) = (qkv.storage::<f32>(), probs.storage::<f32>(), grad.storage::<f32>());
    let head_grads = |dst: Shared| {
        (0..s.batch * heads).into_par_iter().for_each_init(
            || (vec![0.0f32; l * l], vec![0.0f32; if isa.is_some() { dh * l } else { 0 }]),
            |(ds, v_t), bh| {
                let (b, h) = (bh / heads, bh % heads);
                // Rebound so that the closure captures the whole `Shared` (Send), not its raw pointer.
                #[allow(clippy::redundant_locals)]
                let dst = dst;
                let base = b * l * d3 + h * dh; // q of (b, h) in qkv and in its gradient
                let dy_bh = (dy[b * l * d + h * dh..].as_ptr(), d as isize, 1); // [l, dh]
                let p_bh = p[bh * l * l..].as_ptr();
                // SAFETY: every view is a block of its buffer; the gradient blocks (q, k and v
                // columns of head h in image b) are written by this task alone; v_t is [dh, l].
                unsafe {
                    // dv = p^T dy
                    matmul(
                        isa,
                        (l, dh, l),
                        (dst.0.add(base + 2 * d), d3 as isize, 1),
                        false,
                        (p_bh, 1, l as isize),
                        dy_bh,
                        1.0,
                    );
                    // dp = dy v^T
                    if isa.is_some() {
                        transpose_block(&x[base + 2 * d..], l, dh, d3, 1.0, v_t, l);
                        matmul(
                            isa,
                            (l, l, dh),
                            (ds.as_mut_ptr(), l as isize, 1),
                            false,
                            dy_bh,
                            (v_t.as_ptr(), l as isize, 1),
                            1.0,
                        );
                    } else {
                        gemm_strided(
                            (l, l, dh),
                            (ds.as_mut_ptr(), l as isize, 1),
                            false,
                            dy_bh,
                            (x.as_ptr().add(base + 2 * d), 1, d3 as isize),
                            1.0,
                        );
                    }
                }
                softmax_grad_rows(isa, ds, &p[bh * l * l..(bh + 1) * l * l], l, scale);
                unsafe {
                    // dq = ds k, dk = ds^T q
                    matmul(
                        isa,
                        (l, dh, l),
                        (dst.0.add(base), d3 as isize, 1),
                        false,
                        (ds.as_ptr(), l as isize, 1),
                        (x.as_ptr().add(base + d), d3 as isize, 1),
                        1.0,
                    );
                    matmul(
                        isa,
                        (l, dh, l),
                        (dst.0.add(base + d), d3 as isize, 1),
                        false,
                        (ds.as_ptr(), 1, l as isize),
                        (x.as_ptr().add(base), d3 as isize, 1),
                        1.0,
                    );
                }
            },
        );
    };
    // SAFETY: the (b, h) tasks write the q, k and v gradient blocks of their head, which are
    // disjoint and cover the output; every product writes its block without reading it.
    let out = unsafe { filled_through(s.batch * l * d3, head_grads) };
    new_tensor(out, &[s.batch, l, d3])
}
