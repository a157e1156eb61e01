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

thread_local! {
    static REFERENCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every op of this module replaced by its reference composition of burn ops (on
/// this thread): the networks as they were before the fused kernels, for tests and benchmarks.
pub fn with_reference_ops<T>(f: impl FnOnce() -> T) -> T {
    let before = REFERENCE.with(|r| r.replace(true));
    let out = f();
    REFERENCE.with(|r| r.set(before));
    out
}

/// Whether a tensor would take a fused path here (flex or autodiff flex, reference ops off).
pub fn fused_path_available<const D: usize>(t: &Tensor<D>) -> bool {
    !matches!(route(t.clone()), Route::Other(_))
}

/// Where a tensor lives, so an op can pick its implementation.
enum Route<const D: usize> {
    Flex(FlexTensor),
    Autodiff(FloatTensor<Ad>),
    Other(Tensor<D>),
}

fn route<const D: usize>(t: Tensor<D>) -> Route<D> {
    if REFERENCE.with(|r| r.get()) {
        return Route::Other(t);
    }
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

// =============================================================================================
// Helpers shared by the kernels below.

/// Worker threads for the raw loops (the machine's cores; burn's own ops use rayon).
fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs `f(first_item, items)` over `data` split into runs of whole items of `item_len`
/// elements, on up to [`threads`] threads when there is enough work.
fn par_items<T: Send>(data: &mut [T], item_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let items = if item_len == 0 { 0 } else { data.len() / item_len };
    let workers = threads().min(items).max(1);
    if workers == 1 || data.len() < 1 << 15 {
        f(0, data);
        return;
    }
    let per = items.div_ceil(workers);
    std::thread::scope(|s| {
        for (t, part) in data.chunks_mut(per * item_len).enumerate() {
            let f = &f;
            s.spawn(move || f(t * per, part));
        }
    });
}

/// Routes three tensors together: all on flex, all on autodiff flex, or none.
enum Route3<const A: usize, const B: usize, const C: usize> {
    Flex(FlexTensor, FlexTensor, FlexTensor),
    Autodiff(FloatTensor<Ad>, FloatTensor<Ad>, FloatTensor<Ad>),
    Other(Tensor<A>, Tensor<B>, Tensor<C>),
}

fn route3<const A: usize, const B: usize, const C: usize>(a: Tensor<A>, b: Tensor<B>, c: Tensor<C>) -> Route3<A, B, C> {
    match (route(a), route(b), route(c)) {
        (Route::Flex(a), Route::Flex(b), Route::Flex(c)) => Route3::Flex(a, b, c),
        (Route::Autodiff(a), Route::Autodiff(b), Route::Autodiff(c)) => Route3::Autodiff(a, b, c),
        (a, b, c) => Route3::Other(back(a), back(b), back(c)),
    }
}

fn back<const D: usize>(r: Route<D>) -> Tensor<D> {
    match r {
        Route::Flex(t) => flex_tensor(t),
        Route::Autodiff(t) => ad_tensor(t),
        Route::Other(t) => t,
    }
}

type NoCheckpointing = burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;

// =============================================================================================
// 2-D convolution (groups 1, dilation 1, stride 1, symmetric zero padding): im2col + gemm, with
// the bias folded into the gemm as a row of ones, and both gradients as gemms too.

/// Geometry of a stride-1 convolution.
#[derive(Debug, Clone, Copy)]
struct ConvGeom {
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    pad: usize,
}

/// im2col buffers are built for a few images at a time, at most this many floats (16 MB).
const COLS_BUDGET: usize = 1 << 22;

impl ConvGeom {
    fn ho(&self) -> usize {
        self.h + 2 * self.pad + 1 - self.kh
    }
    fn wo(&self) -> usize {
        self.w + 2 * self.pad + 1 - self.kw
    }
    fn n(&self) -> usize {
        self.ho() * self.wo()
    }
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }
    /// The geometry of the input gradient as a convolution of the output gradient with the
    /// flipped, transposed kernel.
    fn transposed(&self) -> Self {
        Self { batch: self.batch, c_in: self.c_out, h: self.ho(), w: self.wo(), c_out: self.c_in, kh: self.kh, kw: self.kw, pad: self.kh - 1 - self.pad }
    }
    /// Images per im2col chunk.
    fn chunk(&self, rows: usize) -> usize {
        (COLS_BUDGET / (rows * self.n()).max(1)).clamp(1, self.batch)
    }
}

/// Fills `cols` (`[images, rows, Ho*Wo]`, rows `(c, i, j)`, plus a last row of ones when `ones`)
/// from `x` (`[images, C, H, W]`).
fn im2col(x: &[f32], g: &ConvGeom, ones: bool, cols: &mut [f32]) {
    let (ho, wo, n) = (g.ho(), g.wo(), g.n());
    let rows = g.k() + ones as usize;
    let img_in = g.c_in * g.h * g.w;
    par_items(cols, rows * n, |first, part| {
        for (local, img_cols) in part.chunks_exact_mut(rows * n).enumerate() {
            let img = &x[(first + local) * img_in..][..img_in];
            for c in 0..g.c_in {
                let plane = &img[c * g.h * g.w..][..g.h * g.w];
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let row = &mut img_cols[((c * g.kh + i) * g.kw + j) * n..][..n];
                        // Output columns x read input column x + j - pad: valid for x in lo..hi.
                        let lo = g.pad.saturating_sub(j).min(wo);
                        let hi = (g.w + g.pad).saturating_sub(j).min(wo).max(lo);
                        for y in 0..ho {
                            let out = &mut row[y * wo..][..wo];
                            let sy = (y + i).wrapping_sub(g.pad);
                            if sy >= g.h {
                                out.fill(0.0);
                                continue;
                            }
                            out[..lo].fill(0.0);
                            out[hi..].fill(0.0);
                            let src = &plane[sy * g.w..][..g.w];
                            out[lo..hi].copy_from_slice(&src[lo + j - g.pad..hi + j - g.pad]);
                        }
                    }
                }
            }
            if ones {
                img_cols[g.k() * n..].fill(1.0);
            }
        }
    });
}

/// `[B, C_out, Ho, Wo]` = `wm` (`[1, C_out, rows]`) applied to im2col(x), chunk by chunk.
fn conv_forward_raw(x: &[f32], g: &ConvGeom, wm: &FlexTensor, ones: bool) -> Vec<f32> {
    let rows = g.k() + ones as usize;
    let (n, img_in, img_out) = (g.n(), g.c_in * g.h * g.w, g.c_out * g.n());
    let chunk = g.chunk(rows);
    let mut out = vec![0.0f32; g.batch * img_out];
    for start in (0..g.batch).step_by(chunk) {
        let bc = chunk.min(g.batch - start);
        let mut cols = vec![0.0f32; bc * rows * n];
        im2col(&x[start * img_in..(start + bc) * img_in], g, ones, &mut cols);
        let y = contiguous(Flex::float_matmul(wm.clone(), new_tensor(cols, &[bc, rows, n]))); // [bc, C_out, N]
        out[start * img_out..(start + bc) * img_out].copy_from_slice(y.storage());
    }
    out
}

/// `sum_b d_out[b] @ im2col(x[b])^T`: `[C_out, rows]`.
fn conv_weight_grad_raw(x: &[f32], g: &ConvGeom, d_out: &FlexTensor, ones: bool) -> FlexTensor {
    let rows = g.k() + ones as usize;
    let (n, img_in) = (g.n(), g.c_in * g.h * g.w);
    let chunk = g.chunk(rows);
    let mut acc: Option<FlexTensor> = None;
    for start in (0..g.batch).step_by(chunk) {
        let bc = chunk.min(g.batch - start);
        let mut cols = vec![0.0f32; bc * rows * n];
        im2col(&x[start * img_in..(start + bc) * img_in], g, ones, &mut cols);
        let cols = new_tensor(cols, &[bc, rows, n]).transpose(1, 2); // [bc, N, rows]
        let d = d_out.narrow(0, start, bc); // [bc, C_out, N]
        let part = Flex::float_sum_dim(Flex::float_matmul(d, cols), 0); // [1, C_out, rows]
        acc = Some(match acc {
            Some(a) => Flex::float_add(a, part),
            None => part,
        });
    }
    Flex::float_reshape(acc.expect("batch is not empty"), Shape::from(vec![g.c_out, rows]))
}

/// `[1, C_out, C_in kh kw (+1)]`: the kernel as a matrix, with the bias as a last column.
fn weight_matrix(weight: &FlexTensor, bias: Option<&FlexTensor>, g: &ConvGeom) -> FlexTensor {
    let weight = contiguous(weight.clone());
    let w: &[f32] = weight.storage();
    let k = g.k();
    let cols = k + bias.is_some() as usize;
    let mut m = vec![0.0f32; g.c_out * cols];
    for o in 0..g.c_out {
        m[o * cols..o * cols + k].copy_from_slice(&w[o * k..(o + 1) * k]);
    }
    if let Some(bias) = bias {
        let bias = contiguous(bias.clone());
        for (o, b) in bias.storage::<f32>().iter().enumerate() {
            m[o * cols + k] = *b;
        }
    }
    new_tensor(m, &[1, g.c_out, cols])
}

/// The kernel flipped and transposed, `[1, C_in, C_out kh kw]`: the weight of the convolution
/// that maps the output gradient to the input gradient.
fn flipped_weight_matrix(weight: &FlexTensor, g: &ConvGeom) -> FlexTensor {
    let weight = contiguous(weight.clone());
    let w: &[f32] = weight.storage();
    let (kh, kw) = (g.kh, g.kw);
    let cols = g.c_out * kh * kw;
    let mut m = vec![0.0f32; g.c_in * cols];
    for o in 0..g.c_out {
        for c in 0..g.c_in {
            for i in 0..kh {
                for j in 0..kw {
                    m[c * cols + (o * kh + i) * kw + j] = w[((o * g.c_in + c) * kh + (kh - 1 - i)) * kw + (kw - 1 - j)];
                }
            }
        }
    }
    new_tensor(m, &[1, g.c_in, cols])
}

fn conv_geom(x: &FlexTensor, weight: &FlexTensor, pad: usize) -> ConvGeom {
    let [batch, c_in, h, w] = dims::<4>(x);
    let [c_out, c_w, kh, kw] = dims::<4>(weight);
    assert_eq!(c_in, c_w, "conv2d: input has {c_in} channels, the kernel expects {c_w}");
    ConvGeom { batch, c_in, h, w, c_out, kh, kw, pad }
}

fn conv_flex(x: FlexTensor, weight: &FlexTensor, bias: &FlexTensor, pad: usize) -> FlexTensor {
    let x = contiguous(x);
    let g = conv_geom(&x, weight, pad);
    let wm = weight_matrix(weight, Some(bias), &g);
    new_tensor(conv_forward_raw(x.storage(), &g, &wm, true), &[g.batch, g.c_out, g.ho(), g.wo()])
}

#[derive(Debug)]
struct ConvBackward;

#[derive(Debug, Clone)]
struct ConvState {
    x: FlexTensor,
    weight: FlexTensor,
    pad: usize,
}

impl Backward<Flex, 3> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let ConvState { x, weight, pad } = ops.state;
        let [node_x, node_w, node_b] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node)); // [B, C_out, Ho, Wo]
        let g = conv_geom(&x, &weight, pad);
        if let Some(node) = node_x {
            let t = g.transposed();
            let dx = conv_forward_raw(grad.storage(), &t, &flipped_weight_matrix(&weight, &g), false);
            grads.register::<Flex>(node.id, new_tensor(dx, &[g.batch, g.c_in, g.h, g.w]));
        }
        if node_w.is_some() || node_b.is_some() {
            let n = g.n();
            let d_out = Flex::float_reshape(grad, Shape::from(vec![g.batch, g.c_out, n]));
            let dw = conv_weight_grad_raw(x.storage(), &g, &d_out, true); // [C_out, K + 1]
            let k = g.k();
            if let Some(node) = node_w {
                let d = contiguous(dw.narrow(1, 0, k));
                grads.register::<Flex>(node.id, Flex::float_reshape(d, Shape::from(vec![g.c_out, g.c_in, g.kh, g.kw])));
            }
            if let Some(node) = node_b {
                let d = contiguous(dw.narrow(1, k, 1));
                grads.register::<Flex>(node.id, Flex::float_reshape(d, Shape::from(vec![g.c_out])));
            }
        }
    }
}

/// The reference composition of [`conv2d`]: burn's `conv2d` with stride 1.
pub fn conv2d_reference(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, padding: usize) -> Tensor<4> {
    use burn::tensor::ops::ConvOptions;
    burn::tensor::module::conv2d(x, weight, Some(bias), ConvOptions::new([1, 1], [padding, padding], [1, 1], 1))
}

/// A stride-1 convolution with symmetric zero padding `padding` (at most kernel size - 1) and a
/// bias, as im2col + gemm with both gradients as gemms.
///
/// # Shapes
/// - x: `[B, C_in, H, W]`, weight: `[C_out, C_in, kh, kw]`, bias: `[C_out]`
/// - output: `[B, C_out, H + 2 padding - kh + 1, W + 2 padding - kw + 1]`
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, padding: usize) -> Tensor<4> {
    let [_, _, kh, kw] = weight.dims();
    assert!(padding < kh && padding < kw, "conv2d: padding {padding} must be below the kernel size");
    match route3(x, weight, bias) {
        Route3::Flex(x, w, b) => flex_tensor(conv_flex(x, &w, &b, padding)),
        Route3::Autodiff(x, w, b) => {
            let (x, node_x) = x.into_parts();
            let (w, node_w) = w.into_parts();
            let (b, node_b) = b.into_parts();
            let x = contiguous(x);
            let out = conv_flex(x.clone(), &w, &b, padding);
            match ConvBackward.prepare::<NoCheckpointing>([node_x, node_w, node_b]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => ad_tensor(prep.finish(ConvState { x, weight: w, pad: padding }, out)),
                OpsKind::UnTracked(prep) => ad_tensor(prep.finish(out)),
            }
        }
        Route3::Other(x, w, b) => conv2d_reference(x, w, b, padding),
    }
}

/// [`conv2d`] for a burn `Conv2d` module when it fits (stride 1, dilation 1, one group, a bias,
/// symmetric explicit padding); the module's own forward otherwise.
pub fn conv2d_module(conv: &burn::nn::conv::Conv2d, x: Tensor<4>) -> Tensor<4> {
    use burn::nn::PaddingConfig2d;
    let pad = match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => Some(t),
        PaddingConfig2d::Valid => Some(0),
        _ => None,
    };
    match (pad, &conv.bias) {
        (Some(pad), Some(bias))
            if conv.stride == [1, 1] && conv.dilation == [1, 1] && conv.groups == 1 && pad < conv.kernel_size[0] && pad < conv.kernel_size[1] =>
        {
            conv2d(x, conv.weight.val(), bias.val(), pad)
        }
        _ => conv.forward(x),
    }
}

// =============================================================================================
// Normalisation: group norm (optionally followed by SiLU) and layer norm, each one pass forward
// and two passes backward.

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Statistics of `groups` contiguous runs of `n` elements each: (mean, 1 / sqrt(var + eps)).
fn run_stats(x: &[f32], n: usize, eps: f64) -> (Vec<f32>, Vec<f32>) {
    let runs = x.len() / n;
    let mut mean = vec![0.0f32; runs];
    let mut rstd = vec![0.0f32; runs];
    let mut stats = vec![(0.0f32, 0.0f32); runs];
    par_items(&mut stats, 1, |first, part| {
        for (local, s) in part.iter_mut().enumerate() {
            let run = &x[(first + local) * n..][..n];
            let m = run.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = run.iter().map(|&v| (v as f64 - m) * (v as f64 - m)).sum::<f64>() / n as f64;
            *s = (m as f32, (1.0 / (var + eps).sqrt()) as f32);
        }
    });
    for (i, (m, r)) in stats.into_iter().enumerate() {
        mean[i] = m;
        rstd[i] = r;
    }
    (mean, rstd)
}

/// Group norm over `[B, C, S]` (S = spatial size), per-channel affine, optional SiLU.
#[derive(Debug, Clone, Copy)]
struct NormGeom {
    batch: usize,
    channels: usize,
    spatial: usize,
    groups: usize,
    silu: bool,
    eps: f64,
}

impl NormGeom {
    fn group_len(&self) -> usize {
        self.channels / self.groups * self.spatial
    }
}

fn group_norm_forward(x: &[f32], gamma: &[f32], beta: &[f32], g: &NormGeom) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mean, rstd) = run_stats(x, g.group_len(), g.eps);
    let mut out = vec![0.0f32; x.len()];
    let s = g.spatial;
    par_items(&mut out, s, |first, part| {
        for (local, row) in part.chunks_exact_mut(s).enumerate() {
            let bc = first + local; // b * C + c
            let c = bc % g.channels;
            let run = bc / g.channels * g.groups + c / (g.channels / g.groups);
            let (m, r) = (mean[run], rstd[run]);
            let (scale, shift) = (r * gamma[c], beta[c] - m * r * gamma[c]);
            let src = &x[bc * s..][..s];
            if g.silu {
                for (o, &v) in row.iter_mut().zip(src) {
                    let y = v * scale + shift;
                    *o = y * sigmoid(y);
                }
            } else {
                for (o, &v) in row.iter_mut().zip(src) {
                    *o = v * scale + shift;
                }
            }
        }
    });
    (out, mean, rstd)
}

/// Returns (dx, dgamma, dbeta).
fn group_norm_backward(x: &[f32], gamma: &[f32], beta: &[f32], mean: &[f32], rstd: &[f32], dout: &[f32], g: &NormGeom) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (c_n, s, cg) = (g.channels, g.spatial, g.channels / g.groups);
    let n = g.group_len();
    // Pass 1, per (b, c) row: dy (through SiLU), and the row sums sum(dy), sum(dy xhat).
    let mut dy = vec![0.0f32; x.len()];
    let mut row_sums = vec![(0.0f32, 0.0f32); g.batch * c_n];
    {
        let rows = &mut row_sums;
        let dy_ref = &mut dy;
        // Split rows and dy together: iterate per batch image.
        let per_img = c_n * s;
        let mut pairs: Vec<(&mut [f32], &mut [(f32, f32)])> = dy_ref.chunks_mut(per_img).zip(rows.chunks_mut(c_n)).collect();
        let work = |b: usize, dy_img: &mut [f32], sums: &mut [(f32, f32)]| {
            for c in 0..c_n {
                let run = b * g.groups + c / cg;
                let (m, r) = (mean[run], rstd[run]);
                let off = (b * c_n + c) * s;
                let (xr, dr) = (&x[off..off + s], &dout[off..off + s]);
                let out = &mut dy_img[c * s..(c + 1) * s];
                let (mut sd, mut sdx) = (0.0f32, 0.0f32);
                for ((o, &xv), &d) in out.iter_mut().zip(xr).zip(dr) {
                    let xhat = (xv - m) * r;
                    let d = if g.silu {
                        let y = xhat * gamma[c] + beta[c];
                        let sg = sigmoid(y);
                        d * sg * (1.0 + y * (1.0 - sg))
                    } else {
                        d
                    };
                    *o = d;
                    sd += d;
                    sdx += d * xhat;
                }
                sums[c] = (sd, sdx);
            }
        };
        let workers = threads().min(g.batch).max(1);
        if workers == 1 || x.len() < 1 << 15 {
            for (b, (d, s_)) in pairs.iter_mut().enumerate() {
                work(b, d, s_);
            }
        } else {
            let per = g.batch.div_ceil(workers);
            std::thread::scope(|scope| {
                let mut rest = &mut pairs[..];
                let mut first = 0;
                while !rest.is_empty() {
                    let take = per.min(rest.len());
                    let (mine, tail) = rest.split_at_mut(take);
                    rest = tail;
                    let work = &work;
                    let start = first;
                    scope.spawn(move || {
                        for (i, (d, s_)) in mine.iter_mut().enumerate() {
                            work(start + i, d, s_);
                        }
                    });
                    first += take;
                }
            });
        }
    }
    // Parameter gradients: dbeta_c = sum_b sum(dy), dgamma_c = sum_b sum(dy xhat).
    let mut dgamma = vec![0.0f32; c_n];
    let mut dbeta = vec![0.0f32; c_n];
    for b in 0..g.batch {
        for c in 0..c_n {
            let (sd, sdx) = row_sums[b * c_n + c];
            dbeta[c] += sd;
            dgamma[c] += sdx;
        }
    }
    // Pass 2: dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dy gamma.
    let mut dx = dy;
    par_items(&mut dx, n, |first, part| {
        for (local, grp) in part.chunks_exact_mut(n).enumerate() {
            let run = first + local;
            let (b, gi) = (run / g.groups, run % g.groups);
            let (m, r) = (mean[run], rstd[run]);
            let (mut a, mut bsum) = (0.0f32, 0.0f32);
            for c in gi * cg..(gi + 1) * cg {
                let (sd, sdx) = row_sums[b * c_n + c];
                a += sd * gamma[c];
                bsum += sdx * gamma[c];
            }
            let (a, bsum) = (a / n as f32, bsum / n as f32);
            for (ci, row) in grp.chunks_exact_mut(s).enumerate() {
                let c = gi * cg + ci;
                let xr = &x[(b * c_n + c) * s..][..s];
                for (v, &xv) in row.iter_mut().zip(xr) {
                    let xhat = (xv - m) * r;
                    *v = r * (*v * gamma[c] - a - xhat * bsum);
                }
            }
        }
    });
    (dx, dgamma, dbeta)
}

/// The reference composition of [`group_norm`]: burn's `GroupNorm`, then SiLU when asked.
pub fn group_norm_reference(norm: &burn::nn::GroupNorm, x: Tensor<4>, silu: bool) -> Tensor<4> {
    let y = norm.forward(x);
    if silu { burn::tensor::activation::silu(y) } else { y }
}

#[derive(Debug)]
struct GroupNormBackward;

#[derive(Debug, Clone)]
struct GroupNormState {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    geom: NormGeom,
}

impl Backward<Flex, 3> for GroupNormBackward {
    type State = GroupNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let GroupNormState { x, gamma, beta, mean, rstd, geom } = ops.state;
        let [node_x, node_g, node_b] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let shape: Vec<usize> = x.layout().shape().iter().copied().collect();
        let (dx, dgamma, dbeta) = group_norm_backward(x.storage(), gamma.storage(), beta.storage(), &mean, &rstd, grad.storage(), &geom);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, new_tensor(dx, &shape));
        }
        if let Some(node) = node_g {
            grads.register::<Flex>(node.id, new_tensor(dgamma, &[geom.channels]));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, new_tensor(dbeta, &[geom.channels]));
        }
    }
}

/// burn's `GroupNorm` (affine) on `[B, C, H, W]`, followed by SiLU when `silu`, as one op.
pub fn group_norm(norm: &burn::nn::GroupNorm, x: Tensor<4>, silu: bool) -> Tensor<4> {
    let (Some(gamma), Some(beta)) = (&norm.gamma, &norm.beta) else {
        return group_norm_reference(norm, x, silu);
    };
    let [batch, channels, h, w] = x.dims();
    let geom = NormGeom { batch, channels, spatial: h * w, groups: norm.num_groups, silu, eps: norm.epsilon };
    let shape = [batch, channels, h, w];
    match route3(x, gamma.val(), beta.val()) {
        Route3::Flex(x, gm, bt) => {
            let (x, gm, bt) = (contiguous(x), contiguous(gm), contiguous(bt));
            flex_tensor(new_tensor(group_norm_forward(x.storage(), gm.storage(), bt.storage(), &geom).0, &shape))
        }
        Route3::Autodiff(x, gm, bt) => {
            let (x, node_x) = x.into_parts();
            let (gm, node_g) = gm.into_parts();
            let (bt, node_b) = bt.into_parts();
            let (x, gm, bt) = (contiguous(x), contiguous(gm), contiguous(bt));
            let (out, mean, rstd) = group_norm_forward(x.storage(), gm.storage(), bt.storage(), &geom);
            let out = new_tensor(out, &shape);
            match GroupNormBackward.prepare::<NoCheckpointing>([node_x, node_g, node_b]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => ad_tensor(prep.finish(GroupNormState { x, gamma: gm, beta: bt, mean, rstd, geom }, out)),
                OpsKind::UnTracked(prep) => ad_tensor(prep.finish(out)),
            }
        }
        Route3::Other(x, _, _) => group_norm_reference(norm, x, silu),
    }
}

// ---------------------------------------------------------------------------------------------
// Layer norm over the last axis.

/// burn's `LayerNorm` epsilon (its default; the field is private, and every LayerNorm of this
/// crate is built with the default).
pub const LAYER_NORM_EPS: f64 = 1e-5;

fn layer_norm_forward(x: &[f32], gamma: &[f32], beta: &[f32], d: usize, eps: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mean, rstd) = run_stats(x, d, eps);
    let mut out = vec![0.0f32; x.len()];
    par_items(&mut out, d, |first, part| {
        for (local, row) in part.chunks_exact_mut(d).enumerate() {
            let r = first + local;
            let (m, s) = (mean[r], rstd[r]);
            for (((o, &v), &gm), &bt) in row.iter_mut().zip(&x[r * d..(r + 1) * d]).zip(gamma).zip(beta) {
                *o = (v - m) * s * gm + bt;
            }
        }
    });
    (out, mean, rstd)
}

fn layer_norm_backward(x: &[f32], gamma: &[f32], mean: &[f32], rstd: &[f32], dout: &[f32], d: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0.0f32; x.len()];
    let rows = x.len() / d;
    // Per-thread partial dgamma/dbeta, reduced after.
    let workers = threads().min(rows).max(1);
    let per = rows.div_ceil(workers);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = dx
            .chunks_mut(per * d)
            .enumerate()
            .map(|(t, part)| {
                scope.spawn(move || {
                    let mut dg = vec![0.0f32; d];
                    let mut db = vec![0.0f32; d];
                    for (local, row) in part.chunks_exact_mut(d).enumerate() {
                        let r = t * per + local;
                        let (m, s) = (mean[r], rstd[r]);
                        let (xr, dr) = (&x[r * d..(r + 1) * d], &dout[r * d..(r + 1) * d]);
                        let (mut a, mut b) = (0.0f32, 0.0f32);
                        for j in 0..d {
                            let xhat = (xr[j] - m) * s;
                            dg[j] += dr[j] * xhat;
                            db[j] += dr[j];
                            let dxh = dr[j] * gamma[j];
                            a += dxh;
                            b += dxh * xhat;
                        }
                        let (a, b) = (a / d as f32, b / d as f32);
                        for j in 0..d {
                            let xhat = (xr[j] - m) * s;
                            row[j] = s * (dr[j] * gamma[j] - a - xhat * b);
                        }
                    }
                    (dg, db)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("layer norm worker")).collect()
    });
    let mut dgamma = vec![0.0f32; d];
    let mut dbeta = vec![0.0f32; d];
    for (dg, db) in partials {
        for j in 0..d {
            dgamma[j] += dg[j];
            dbeta[j] += db[j];
        }
    }
    (dx, dgamma, dbeta)
}

/// The reference composition of [`layer_norm`]: burn's `LayerNorm`.
pub fn layer_norm_reference<const D: usize>(norm: &burn::nn::LayerNorm, x: Tensor<D>) -> Tensor<D> {
    norm.forward(x)
}

#[derive(Debug)]
struct LayerNormBackward;

#[derive(Debug, Clone)]
struct LayerNormState {
    x: FlexTensor,
    gamma: FlexTensor,
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

impl Backward<Flex, 3> for LayerNormBackward {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let LayerNormState { x, gamma, mean, rstd } = ops.state;
        let [node_x, node_g, node_b] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let shape: Vec<usize> = x.layout().shape().iter().copied().collect();
        let d = *shape.last().expect("layer norm input has a last axis");
        let (dx, dgamma, dbeta) = layer_norm_backward(x.storage(), gamma.storage(), &mean, &rstd, grad.storage(), d);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, new_tensor(dx, &shape));
        }
        if let Some(node) = node_g {
            grads.register::<Flex>(node.id, new_tensor(dgamma, &[d]));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, new_tensor(dbeta, &[d]));
        }
    }
}

/// burn's `LayerNorm` (with bias, epsilon [`LAYER_NORM_EPS`]) over the last axis, as one op.
pub fn layer_norm<const D: usize>(norm: &burn::nn::LayerNorm, x: Tensor<D>) -> Tensor<D> {
    let Some(beta) = &norm.beta else { return layer_norm_reference(norm, x) };
    let shape = x.dims();
    let d = shape[D - 1];
    match route3(x, norm.gamma.val(), beta.val()) {
        Route3::Flex(x, gm, bt) => {
            let (x, gm, bt) = (contiguous(x), contiguous(gm), contiguous(bt));
            flex_tensor(new_tensor(layer_norm_forward(x.storage(), gm.storage(), bt.storage(), d, LAYER_NORM_EPS).0, &shape))
        }
        Route3::Autodiff(x, gm, bt) => {
            let (x, node_x) = x.into_parts();
            let (gm, node_g) = gm.into_parts();
            let (bt, node_b) = bt.into_parts();
            let (x, gm, bt) = (contiguous(x), contiguous(gm), contiguous(bt));
            let (out, mean, rstd) = layer_norm_forward(x.storage(), gm.storage(), bt.storage(), d, LAYER_NORM_EPS);
            let out = new_tensor(out, &shape);
            match LayerNormBackward.prepare::<NoCheckpointing>([node_x, node_g, node_b]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => ad_tensor(prep.finish(LayerNormState { x, gamma: gm, mean, rstd }, out)),
                OpsKind::UnTracked(prep) => ad_tensor(prep.finish(out)),
            }
        }
        Route3::Other(x, _, _) => layer_norm_reference(norm, x),
    }
}
