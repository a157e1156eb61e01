//! Multi-head self-attention core: qkv -> merged heads, as one op.

use crate::dispatch::{self, FusedOp, dims, new_tensor, placed};
use crate::gemm::{gemm_strided, matmul, transpose_block};
use crate::linear::{LinearState, layer_backward, linear_rows, rows_product};
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

/// `r + (attention(x W_qkv + b_qkv) W_proj + b_proj)` on the `[B L, D]` rows of `B` images of
/// `tokens` tokens: a transformer block's attention and its residual, one image at a time, so
/// that the image's `qkv` (`[L, 3D]`, 50 KB at the presets' 65 x 192), its heads' probabilities
/// and its merged heads are still in L1 or L2 when the next product reads them. The training
/// forward keeps `qkv`, the probabilities and the merged heads (the backward of each step needs
/// them); inference keeps none of them. The same products, softmax and sums as `linear`,
/// [`qkv_attention`] then `linear_add`: the same values, bit for bit.
#[derive(Debug)]
struct AttentionAdd {
    heads: usize,
    tokens: usize,
}

#[derive(Clone, Debug)]
struct AttentionAddState {
    /// The qkv layer's input and weight.
    qkv_layer: LinearState,
    /// `qkv` `[B, L, 3D]` and the probabilities `[B, H, L, L]`.
    qkv: FlexTensor,
    probs: FlexTensor,
    /// The merged heads (the projection's input) and the projection's weight.
    proj: LinearState,
}

/// Where the training forward keeps `qkv`, the probabilities and the merged heads.
#[derive(Clone, Copy)]
struct Kept {
    qkv: Shared,
    probs: Shared,
    merged: Shared,
}

impl AttentionAdd {
    /// The output, on the direct kernels of `isa`; with `keep`, `qkv`, the probabilities and the
    /// merged heads written through its pointers too.
    ///
    /// # Safety
    /// `keep`'s pointers address `[B, L, 3D]`, `[B, H, L, L]` and `[B, L, D]` floats, written
    /// by no one else meanwhile.
    unsafe fn rows(
        &self,
        [x, w_qkv, b_qkv, w_proj, b_proj, r]: &[FlexTensor; 6],
        isa: Isa,
        keep: Option<Kept>,
    ) -> Vec<f32> {
        let isa = Some(isa);
        let ([m, d], l) = (dims::<2>(x), self.tokens);
        let s = Heads { batch: 1, tokens: l, heads: self.heads, head_dim: d / self.heads }; // one image
        let (dh, d3) = (s.head_dim, 3 * d);
        assert!(m % l == 0 && d % self.heads == 0 && dims::<2>(w_qkv) == [d, d3] && dims::<2>(w_proj) == [d, d]);
        let (x, r) = (x.storage::<f32>(), r.storage::<f32>());
        let (w_qkv, b_qkv, w_proj, b_proj) =
            (w_qkv.storage::<f32>(), b_qkv.storage::<f32>(), w_proj.storage::<f32>(), b_proj.storage::<f32>());
        // Per thread: the image's qkv, probabilities and merged heads where they are not kept,
        // and K^T of a head.
        let room = |len: usize| Vec::<f32>::with_capacity(if keep.is_none() { len } else { 0 });
        let scratch = || (room(l * d3), room(l * l), room(l * d), vec![0.0f32; dh * l]);
        let image = |(qkv, probs, merged, k_t): &mut (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>),
                     b: usize,
                     dst: &mut [std::mem::MaybeUninit<f32>]| {
            // SAFETY: image b's blocks of the kept buffers, this task's alone.
            let kept = |p: Shared, len: usize| unsafe { std::slice::from_raw_parts_mut(p.0.add(b * len).cast(), len) };
            let qkv = match keep {
                Some(k) => kept(k.qkv, l * d3),
                None => &mut qkv.spare_capacity_mut()[..l * d3],
            };
            let qkv: &[f32] = rows_product(&[(&x[b * l * d..], d, w_qkv)], b_qkv, None, qkv, isa);
            let merged = match keep {
                Some(k) => kept(k.merged, l * d),
                None => &mut merged.spare_capacity_mut()[..l * d],
            };
            let merged_at = Shared(merged.as_mut_ptr().cast());
            for h in 0..self.heads {
                let probs = match keep {
                    Some(k) => &mut kept(k.probs, self.heads * l * l)[h * l * l..][..l * l],
                    None => &mut probs.spare_capacity_mut()[..l * l],
                };
                head_probs(qkv, &s, h, k_t, probs, isa);
                // SAFETY: head_probs wrote the probabilities; head h's columns of the merged
                // heads are this loop step's alone.
                unsafe { head_out(qkv, &s, h, assume_written(probs), merged_at, isa) };
            }
            // SAFETY: the heads' columns cover the merged heads.
            let merged = unsafe { assume_written(merged) };
            rows_product(&[(merged, d, w_proj)], b_proj, Some(&r[b * l * d..]), dst, isa);
        };
        // SAFETY: `image` writes every element of its image's rows.
        unsafe { par_filled(m * d, l * d, scratch, image).0 }
    }

    /// The composition's own passes (the qkv layer over blocks of rows, the attention, the
    /// projection over blocks of rows), for gemm (no direct kernel): its sums depend on the
    /// shape of the product, so products over images would not give the composition's values.
    /// With `keep`, the state too.
    fn composed(
        &self,
        [x, w_qkv, b_qkv, w_proj, b_proj, r]: [FlexTensor; 6],
        keep: bool,
    ) -> (FlexTensor, Option<AttentionAddState>) {
        let ([m, d], l) = (dims::<2>(&x), self.tokens);
        let qkv = new_tensor(linear_rows(&[&x], &w_qkv, &b_qkv, None, None, |_, _| ()), &[m / l, l, 3 * d]);
        let (merged, probs) = if keep {
            let (merged, probs) = attention_forward(qkv.clone(), self.heads, None);
            (merged, Some(probs))
        } else {
            (attention_infer(qkv.clone(), self.heads, None), None)
        };
        let merged = merged.reshape([m, d].into());
        let out = linear_rows(&[&merged], &w_proj, &b_proj, Some(r.storage::<f32>()), None, |_, _| ());
        let state = probs.map(|probs| AttentionAddState {
            qkv_layer: LinearState { parts: vec![x], weight: w_qkv },
            qkv,
            probs,
            proj: LinearState { parts: vec![merged], weight: w_proj },
        });
        (new_tensor(out, &[m, d]), state)
    }
}

impl FusedOp<6> for AttentionAdd {
    type State = AttentionAddState;

    fn forward(&self, inputs: [FlexTensor; 6], isa: Option<Isa>) -> (FlexTensor, AttentionAddState) {
        let Some(isa) = isa else {
            let (out, state) = self.composed(inputs, true);
            return (out, state.expect("kept"));
        };
        let ([m, d], (l, heads)) = (dims::<2>(&inputs[0]), (self.tokens, self.heads));
        let batch = m / l;
        let (mut probs, mut merged, mut out) = (Vec::new(), Vec::new(), Vec::new());
        // SAFETY: `rows` writes every element of the three buffers once, through the pointers.
        let qkv = unsafe {
            filled_through(m * 3 * d, |qkv| {
                probs = filled_through(batch * heads * l * l, |p| {
                    merged = filled_through(m * d, |merged| {
                        out = self.rows(&inputs, isa, Some(Kept { qkv, probs: p, merged }));
                    })
                })
            })
        };
        let [x, w_qkv, _, w_proj, ..] = inputs;
        let state = AttentionAddState {
            qkv_layer: LinearState { parts: vec![x], weight: w_qkv },
            qkv: new_tensor(qkv, &[batch, l, 3 * d]),
            probs: new_tensor(probs, &[batch, heads, l, l]),
            proj: LinearState { parts: vec![new_tensor(merged, &[m, d])], weight: w_proj },
        };
        (new_tensor(out, &[m, d]), state)
    }

    fn infer(&self, inputs: [FlexTensor; 6], isa: Option<Isa>) -> FlexTensor {
        let Some(isa) = isa else {
            return self.composed(inputs, false).0;
        };
        let [m, d] = dims::<2>(&inputs[0]);
        // SAFETY: nothing kept.
        new_tensor(unsafe { self.rows(&inputs, isa, None) }, &[m, d])
    }

    /// The projection's backward, the attention's, then the qkv layer's: what the autodiff of
    /// `linear`, [`qkv_attention`] then `linear_add` runs.
    fn backward(
        self,
        state: AttentionAddState,
        dy: FlexTensor,
        wanted: [bool; 6],
        isa: Option<Isa>,
    ) -> [Option<FlexTensor>; 6] {
        let [want_x, want_w_qkv, want_b_qkv, want_w_proj, want_b_proj, want_r] = wanted;
        let want_qkv = want_x || want_w_qkv || want_b_qkv;
        let dr = want_r.then(|| dy.clone());
        let [d_merged, dw_proj, db_proj] = layer_backward(state.proj, dy, [want_qkv, want_w_proj, want_b_proj], isa);
        let [dx, dw_qkv, db_qkv] = match d_merged {
            Some(d_merged) => {
                let d_qkv = attention_backward(&state.qkv, &state.probs, self.heads, d_merged, isa);
                layer_backward(state.qkv_layer, d_qkv, [want_x, want_w_qkv, want_b_qkv], isa)
            }
            None => [None, None, None],
        };
        [dx, dw_qkv, db_qkv, dw_proj, db_proj, dr]
    }
}

/// `residual + proj(qkv_attention(x W_qkv + b_qkv))`: a transformer block's attention and its
/// residual as one op, an image at a time (its `qkv` and probabilities stay in cache); the same
/// values as [`crate::linear`], [`qkv_attention`] then [`crate::linear_add`], bit for bit.
///
/// # Shapes
/// - x: `[B, L, D]`, w_qkv: `[D, 3D]` (output laid out `(3, heads, D / heads)`), b_qkv: `[3D]`,
///   w_proj: `[D, D]`, b_proj: `[D]` (burn's layout), residual: `[B, L, D]`
/// - output: `[B, L, D]`
pub fn attention_add(
    x: Tensor<3>,
    (w_qkv, b_qkv): (Tensor<2>, Tensor<1>),
    heads: usize,
    (w_proj, b_proj): (Tensor<2>, Tensor<1>),
    residual: Tensor<3>,
) -> Tensor<3> {
    let [b, l, d] = x.dims();
    let (x, r) = (x.reshape([b * l, d]), residual.reshape([b * l, d])); // [B L, D]
    let inputs = [placed(&x), placed(&w_qkv), placed(&b_qkv), placed(&w_proj), placed(&b_proj), placed(&r)];
    let y: Tensor<2> = dispatch::run(AttentionAdd { heads, tokens: l }, inputs).unwrap_or_else(|| {
        let qkv = reference::linear(x, w_qkv, b_qkv).reshape([b, l, 3 * d]);
        r + reference::linear(reference::qkv_attention(qkv, heads).reshape([b * l, d]), w_proj, b_proj)
    });
    y.reshape([b, l, d])
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
