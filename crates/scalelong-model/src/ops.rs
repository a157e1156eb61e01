//! Fast CPU kernels for the `flex` backend, each with its backward pass.
//!
//! Every public function here computes exactly what a composition of burn ops computes (that
//! composition is kept as the function's `*_reference`, which tests/fast_ops.rs compares against),
//! but as one operation: on `Device::flex()` the forward runs on the flex primitives directly; on
//! `Device::flex().autodiff()` it is one node of the autodiff graph with a hand-written backward;
//! on any other backend (wgpu, cuda) the reference composition runs.
//!
//! Why: burn's autodiff records every small op of a composition (a softmax is five ops, a
//! layer/group norm about eight, a head split a permute and three copies) and differentiates each
//! separately, allocating a full-size tensor per step. Fusing them cuts allocations, copies and
//! passes over memory, which is what the small presets spend most of their time on.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{DType, Shape};

type Ad = Autodiff<Flex>;

/// Where a tensor lives, so an op can pick its implementation.
enum Route<const D: usize> {
    Flex(FlexTensor),
    Autodiff(FloatTensor<Ad>),
    Other(Tensor<D>),
}

fn route<const D: usize>(t: Tensor<D>) -> Route<D> {
    if let Ok(p) = t.clone().try_into_primitive::<Ad>() {
        return Route::Autodiff(p);
    }
    if let Ok(p) = t.clone().try_into_primitive::<Flex>() {
        return Route::Flex(p);
    }
    Route::Other(t)
}

fn flex_tensor<const D: usize>(t: FlexTensor) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(t)
}

fn ad_tensor<const D: usize>(t: FloatTensor<Ad>) -> Tensor<D> {
    Tensor::from_primitive::<Ad>(t)
}

fn dims<const D: usize>(t: &FlexTensor) -> [usize; D] {
    let shape = t.layout().shape();
    std::array::from_fn(|i| shape[i])
}

/// `t` as contiguous f32 (a no-op when it already is).
fn contiguous(t: FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "fast ops support f32 only");
    let whole = t.is_contiguous() && t.layout().start_offset() == 0 && t.bytes().len() == 4 * t.layout().num_elements();
    if whole { t } else { t.to_contiguous() }
}

fn new_tensor(data: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::new(burn::tensor::Bytes::from_elems(data), Layout::contiguous(Shape::from(shape.to_vec())), DType::F32)
}

/// A strided view of `t`'s storage.
fn view(t: &FlexTensor, shape: &[usize], strides: &[isize], offset: usize) -> FlexTensor {
    t.clone().with_layout(Layout::new(Shape::from(shape.to_vec()), strides.to_vec(), offset))
}

// =============================================================================================
// Multi-head self-attention core: qkv -> merged heads.

/// The reference composition of [`qkv_attention`] (what attention.rs computed before).
///
/// # Shapes
/// - qkv: `[B, L, 3D]`, laid out `(3, heads, D / heads)` along the last axis
/// - output: `[B, L, D]`
pub fn qkv_attention_reference(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    let [batch, tokens, three_dim] = qkv.dims();
    let dim = three_dim / 3;
    let head_dim = dim / heads;
    let qkv = qkv.reshape([batch, tokens, 3, heads, head_dim]).permute([2, 0, 3, 1, 4]); // [3, B, H, L, Dh]
    let part = |k: usize| -> Tensor<4> { qkv.clone().narrow(0, k, 1).reshape([batch, heads, tokens, head_dim]) };
    let (q, k, v) = (part(0), part(1), part(2));
    let scale = (head_dim as f64).powf(-0.5);
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale); // [B, H, L, L]
    let out = softmax(scores, 3).matmul(v); // [B, H, L, Dh]
    out.swap_dims(1, 2).reshape([batch, tokens, dim])
}

/// `softmax(q k^T / sqrt(Dh)) v` for every head, heads merged back: the attention of the
/// reference code between its `qkv` and `proj` Linears, as one op.
///
/// # Shapes
/// - qkv: `[B, L, 3D]`, laid out `(3, heads, D / heads)` along the last axis
/// - output: `[B, L, D]`
pub fn qkv_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    match route(qkv) {
        Route::Flex(qkv) => flex_tensor(attention_forward(contiguous(qkv), heads).0),
        Route::Autodiff(qkv) => ad_tensor(attention_autodiff(qkv, heads)),
        Route::Other(qkv) => qkv_attention_reference(qkv, heads),
    }
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
    /// Part `k` (0 = q, 1 = k, 2 = v) of a contiguous `[B, L, 3D]` tensor as `[B, H, L, Dh]`.
    fn part(&self, qkv: &FlexTensor, k: usize) -> FlexTensor {
        let d3 = 3 * self.dim() as isize;
        let strides = [self.tokens as isize * d3, self.head_dim as isize, d3, 1];
        view(qkv, &[self.batch, self.heads, self.tokens, self.head_dim], &strides, k * self.dim())
    }
    /// A contiguous `[B, L, D]` tensor as `[B, H, L, Dh]`.
    fn split(&self, t: &FlexTensor) -> FlexTensor {
        let d = self.dim() as isize;
        let strides = [self.tokens as isize * d, self.head_dim as isize, d, 1];
        view(t, &[self.batch, self.heads, self.tokens, self.head_dim], &strides, 0)
    }
    /// Copies `[B, H, L, Dh]` (contiguous) into the rows of `dst` (`[B, L, width]`) at column
    /// `offset + h * Dh`.
    fn merge_into(&self, src: &FlexTensor, dst: &mut [f32], width: usize, offset: usize) {
        let src = contiguous(src.clone());
        let src: &[f32] = src.storage();
        let (l, dh) = (self.tokens, self.head_dim);
        for b in 0..self.batch {
            for h in 0..self.heads {
                for i in 0..l {
                    let from = ((b * self.heads + h) * l + i) * dh;
                    let to = (b * l + i) * width + offset + h * dh;
                    dst[to..to + dh].copy_from_slice(&src[from..from + dh]);
                }
            }
        }
    }
}

/// Returns the merged output `[B, L, D]` and the attention probabilities `[B, H, L, L]`.
fn attention_forward(qkv: FlexTensor, heads: usize) -> (FlexTensor, FlexTensor) {
    let s = Heads::of(&qkv, heads);
    let scale = (s.head_dim as f64).powf(-0.5);
    let q = s.part(&qkv, 0);
    let k = s.part(&qkv, 1).transpose(2, 3); // [B, H, Dh, L]
    let v = s.part(&qkv, 2);
    let scores = Flex::float_mul_scalar(Flex::float_matmul(q, k), scale.into()); // [B, H, L, L]
    let probs = <Flex as ActivationOps<Flex>>::softmax(scores, 3);
    let out = Flex::float_matmul(probs.clone(), v); // [B, H, L, Dh]
    let mut merged = vec![0.0f32; s.batch * s.tokens * s.dim()];
    s.merge_into(&out, &mut merged, s.dim(), 0);
    (new_tensor(merged, &[s.batch, s.tokens, s.dim()]), probs)
}

#[derive(Debug)]
struct AttentionBackward;

#[derive(Debug, Clone)]
struct AttentionState {
    qkv: FlexTensor,
    probs: FlexTensor,
    heads: usize,
}

impl Backward<Flex, 1> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let AttentionState { qkv, probs, heads } = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| attention_backward(&qkv, &probs, heads, grad));
    }
}

fn attention_backward(qkv: &FlexTensor, probs: &FlexTensor, heads: usize, grad: FlexTensor) -> FlexTensor {
    let s = Heads::of(qkv, heads);
    let scale = (s.head_dim as f32).powf(-0.5);
    let grad = contiguous(grad);
    let d_out = s.split(&grad); // [B, H, L, Dh]
    let (q, k, v) = (s.part(qkv, 0), s.part(qkv, 1), s.part(qkv, 2));
    let d_v = Flex::float_matmul(probs.clone().transpose(2, 3), d_out.clone()); // [B, H, L, Dh]
    let d_p = contiguous(Flex::float_matmul(d_out, v.transpose(2, 3))); // [B, H, L, L]
    // Softmax backward with the score scale folded in: dS = scale * P (dP - rowsum(dP P)).
    let probs_c = contiguous(probs.clone());
    let p: &[f32] = probs_c.storage();
    let mut d_s = d_p;
    {
        let ds: &mut [f32] = d_s.storage_mut();
        for (row_ds, row_p) in ds.chunks_exact_mut(s.tokens).zip(p.chunks_exact(s.tokens)) {
            let dot: f32 = row_ds.iter().zip(row_p).map(|(a, b)| a * b).sum();
            for (x, &pv) in row_ds.iter_mut().zip(row_p) {
                *x = scale * pv * (*x - dot);
            }
        }
    }
    let d_q = Flex::float_matmul(d_s.clone(), k); // [B, H, L, Dh]
    let d_k = Flex::float_matmul(d_s.transpose(2, 3), q); // [B, H, L, Dh]
    let width = 3 * s.dim();
    let mut out = vec![0.0f32; s.batch * s.tokens * width];
    s.merge_into(&d_q, &mut out, width, 0);
    s.merge_into(&d_k, &mut out, width, s.dim());
    s.merge_into(&d_v, &mut out, width, 2 * s.dim());
    new_tensor(out, &[s.batch, s.tokens, width])
}

fn attention_autodiff(qkv: FloatTensor<Ad>, heads: usize) -> FloatTensor<Ad> {
    let (primitive, node) = qkv.into_parts();
    let primitive = contiguous(primitive);
    match AttentionBackward.prepare::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>([node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (out, probs) = attention_forward(primitive.clone(), heads);
            prep.finish(AttentionState { qkv: primitive, probs, heads }, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(attention_forward(primitive, heads).0),
    }
}
