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
//! separately, allocating a full-size tensor per step; and flex's convolution backward goes
//! through a slow transposed convolution. Fusing cuts allocations, copies and passes over memory,
//! which is what the small presets spend most of their time on.
//!
//! | op | replaces | how |
//! |---|---|---|
//! | [`qkv_attention`] | head split, `softmax(q k^T / sqrt(Dh)) v`, head merge | GEMMs on strided views of `qkv`, vectorised softmax, fused softmax backward |
//! | [`conv2d`] | burn's `conv2d` (stride 1) and its backward | direct AVX-512 or AVX2 kernels (implicit GEMMs without AVX2) over shifted views of the padded input, no im2col buffer; the AVX-512 weight gradient channels-last |
//! | [`conv2d_stride2`] | burn's `conv2d` (3x3, stride 2) and its backward | [`conv2d`]'s kernels on the input's four phases (a 2x2 stride-1 convolution) |
//! | [`linear`] | burn's `Linear` and its backward | one GEMM per thread on a block of rows; gradients through strided views |
//! | [`gelu`] | burn's `gelu` and its backward | one parallel, vectorised pass each (flex's runs on one thread with libm's erf) |
//! | [`upsample_nearest2x`] | reshape, expand, reshape (flex's strided copy) | one copy forward, one 2x2 sum backward |
//! | [`group_norm`] | burn's `GroupNorm` (+ SiLU) | one vectorised pass forward, two backward |
//! | [`layer_norm`] | burn's `LayerNorm` | flex's fused forward, one fused backward |
//! | [`tune_allocator`] | glibc's default mmap threshold | freed tensor memory is reused instead of re-faulted |
//!
//! The direct kernels are in `ops/direct_conv.rs` and `ops/direct_gemm.rs`, each with an AVX-512
//! and an AVX2 tile; the element-wise math (`exp`, `erf`, lane-split sums) and the copies for
//! AVX-512, AVX2 and the build's baseline in `ops/math.rs`. `isa()` says which runs (tests run
//! every op on all three: [`with_avx2_kernels`], [`with_portable_kernels`]).
//!
//! Each op is measured against its reference in `benches/ops.rs` (`SCALELONG_BENCH_AB=1`), and the
//! networks as a whole in `benches/steps.rs` (`SCALELONG_BENCH_AB=...`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{DType, Shape};
use rayon::prelude::*;

mod direct_conv;
mod direct_gemm;
mod math;
use math::vectorised_fn;

type Ad = Autodiff<Flex>;

thread_local! {
    static REFERENCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Callers inside [`with_portable_kernels`], and inside [`with_avx2_kernels`], now. Process-wide,
/// not per thread: the kernels run on rayon's threads.
static PORTABLE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static AVX2_CAP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `f` with every op of this module replaced by its reference composition of burn ops (on
/// this thread): the networks as they were before the fused kernels, for tests and benchmarks.
pub fn with_reference_ops<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            REFERENCE.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(REFERENCE.with(|r| r.replace(true)));
    f()
}

/// Runs `f` while `callers` counts it (the count drops again if `f` panics).
fn counted<T>(callers: &std::sync::atomic::AtomicUsize, f: impl FnOnce() -> T) -> T {
    use std::sync::atomic::Ordering;
    struct Leave<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    callers.fetch_add(1, Ordering::SeqCst);
    let _leave = Leave(callers);
    f()
}

/// Runs `f` with the fused ops' portable kernels, as on a CPU without AVX2: the convolutions,
/// linear layers and attention products on gemm instead of the direct kernels, and the
/// element-wise passes as built (baseline x86-64) instead of their AVX-512 or AVX2 copies. For
/// tests and benchmarks. It holds for the whole process while `f` runs (ops that other threads
/// run meanwhile take the portable kernels too: slower, same results within rounding).
pub fn with_portable_kernels<T>(f: impl FnOnce() -> T) -> T {
    counted(&PORTABLE, f)
}

/// Runs `f` with the AVX2 copies of the kernels even where the CPU has AVX-512: what a CPU with
/// AVX2 only runs, for tests and benchmarks (process-wide, as [`with_portable_kernels`]).
pub fn with_avx2_kernels<T>(f: impl FnOnce() -> T) -> T {
    counted(&AVX2_CAP, f)
}

/// An instruction set the kernels have a copy for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX2 and FMA: 16 vector registers of 8 floats.
    Avx2,
    /// AVX-512 F and VL (with AVX2 and FMA): 32 vector registers of 16 floats, masked loads and
    /// stores.
    Avx512,
}

impl Isa {
    /// Whether this CPU has it.
    pub(crate) fn detected(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            match self {
                Isa::Avx2 => avx2,
                Isa::Avx512 => avx2 && has!("avx512f") && has!("avx512vl"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// The instruction set the kernels run on now: the best one this CPU has, AVX2 at most inside
/// [`with_avx2_kernels`]; `None` (the portable kernels) without AVX2 or inside
/// [`with_portable_kernels`]. Only ever a [`Isa::detected`] one.
pub(crate) fn isa() -> Option<Isa> {
    use std::sync::atomic::Ordering;
    if PORTABLE.load(Ordering::Relaxed) > 0 {
        return None;
    }
    let capped = AVX2_CAP.load(Ordering::Relaxed) > 0;
    [Isa::Avx512, Isa::Avx2].into_iter().filter(|&isa| !(capped && isa == Isa::Avx512)).find(|isa| isa.detected())
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
    if REFERENCE.with(|r| r.get()) || t.dtype() != DType::F32 {
        return Route::Other(t);
    }
    tune_allocator();
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

/// Makes glibc's malloc keep and reuse freed tensor memory (process-wide, once; no-op elsewhere).
///
/// By default glibc serves every allocation above 128 KB to 32 MB (nearly every tensor here) with
/// a fresh `mmap` and returns it with `munmap` on free, so each new tensor first pays a page
/// fault and the kernel's zeroing for every 4 KB page: measured here, a `[4160, 64] x [64, 192]`
/// matmul ran at 23 GFLOP/s that way and at 48 GFLOP/s with the memory reused, and the U-ViT
/// training step took 1.2x as long. This raises the mmap threshold to its maximum (32 MB) and
/// the trim threshold to 1 GB, so freed blocks stay in the heap for the next tensor. Called by
/// the first fused op; binaries may call it first thing.
pub fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            unsafe extern "C" {
                fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
            }
            const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
            const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
            // SAFETY: mallopt only sets allocator parameters; both values are in glibc's range.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    });
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
    fn scale(&self) -> f32 {
        (self.head_dim as f32).powf(-0.5)
    }
}

/// A raw pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// `dst [m, n] (= or +=) beta * lhs [m, k] x rhs [k, n]`, every matrix given by its pointer and
/// (row, column) strides, on the calling thread.
///
/// # Safety
/// Every addressed element must lie inside its allocation; `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    accumulate: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// [`gemm_strided`] on the direct kernel for `isa` when there is one, the destination and the
/// right factor have unit column strides and `beta` is 1; on gemm otherwise.
///
/// # Safety
/// As [`gemm_strided`], and every stride non-negative.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    isa: Option<Isa>,
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    accumulate: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
) {
    unsafe {
        if let Some(isa) = isa.filter(|_| dst.2 == 1 && rhs.2 == 1 && beta == 1.0) {
            direct_gemm::gemm_raw(
                isa,
                (m, n, k),
                (dst.0, dst.1 as usize),
                accumulate,
                (lhs.0, lhs.1 as usize, lhs.2 as usize),
                (rhs.0, rhs.1 as usize),
            );
        } else {
            gemm_strided((m, n, k), dst, accumulate, lhs, rhs, beta);
        }
    }
}

/// `rows` rows of `cols` values, `stride` apart in `src`, transposed into `dst` (`[cols, rows]`)
/// and multiplied by `scale`: a right factor the direct kernel can read by rows.
fn transpose_block(src: &[f32], rows: usize, cols: usize, stride: usize, scale: f32, dst: &mut [f32]) {
    for r in 0..rows {
        for (c, &v) in src[r * stride..][..cols].iter().enumerate() {
            dst[c * rows + r] = v * scale;
        }
    }
}

vectorised_fn! {
    /// Each row of `l` values of `rows` replaced by its softmax.
    fn softmax_rows(rows: &mut [f32], l: usize) {
        for row in rows.chunks_mut(l) {
            let max = math::max(row);
            for v in row.iter_mut() {
                *v = math::exp(*v - max);
            }
            let inv = 1.0 / math::sum(row, |v| v);
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

/// Returns the merged output `[B, L, D]` and the attention probabilities `[B, H, L, L]`.
///
/// One task per (image, head): `S = scale q k^T` by GEMM straight from the strided `qkv`, the
/// softmax of its rows (while `S` is in cache), then `P v` by GEMM straight into the head's
/// columns of the output.
fn attention_forward(qkv: FlexTensor, heads: usize) -> (FlexTensor, FlexTensor) {
    let s = Heads::of(&qkv, heads);
    let (l, dh, d) = (s.tokens, s.head_dim, s.dim());
    let (d3, scale) = (3 * d, s.scale());
    let src = qkv.storage::<f32>();
    let isa = isa();
    let scores_of = |k_t: &mut Vec<f32>, bh: usize, dst: &mut [std::mem::MaybeUninit<f32>]| {
        let base = (bh / heads) * l * d3 + (bh % heads) * dh;
        let q = (src[base..].as_ptr(), d3 as isize, 1);
        let out = (dst.as_mut_ptr().cast::<f32>(), l as isize, 1);
        // SAFETY: q and k of (b, h) are [l, dh] blocks of rows of qkv; dst is [l, l], written
        // whole by the product (which does not read it) before the softmax reads it; k_t is
        // [dh, l].
        unsafe {
            if isa.is_some() {
                transpose_block(&src[base + d..], l, dh, d3, scale, k_t);
                matmul(isa, (l, l, dh), out, false, q, (k_t.as_ptr(), l as isize, 1), 1.0);
            } else {
                gemm_strided((l, l, dh), out, false, q, (src.as_ptr().add(base + d), 1, d3 as isize), scale);
            }
            softmax_rows(assume_written(dst), l);
        }
    };
    // SAFETY: `scores_of` writes its whole chunk.
    let (scores, _) = unsafe {
        par_filled(s.batch * heads * l * l, l * l, || vec![0.0f32; if isa.is_some() { dh * l } else { 0 }], scores_of)
    };
    let probs = new_tensor(scores, &[s.batch, heads, l, l]);
    let p = probs.storage::<f32>();
    let head_out = |dst: Shared, bh: usize| {
        let (b, h) = (bh / heads, bh % heads);
        // SAFETY: the (b, h) output block [l, dh] at columns h dh of image b's rows is written by
        // this task alone; v is a block of qkv, p the task's [l, l] probabilities.
        unsafe {
            matmul(
                isa,
                (l, dh, l),
                (dst.0.add(b * l * d + h * dh), d as isize, 1),
                false,
                (p.as_ptr().add(bh * l * l), l as isize, 1),
                (src.as_ptr().add(b * l * d3 + 2 * d + h * dh), d3 as isize, 1),
                1.0,
            );
        }
    };
    // SAFETY: the (b, h) blocks are disjoint and cover the output.
    let out = unsafe {
        filled_through(s.batch * l * d, |dst| (0..s.batch * heads).into_par_iter().for_each(|bh| head_out(dst, bh)))
    };
    (new_tensor(out, &[s.batch, l, d]), probs)
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
    let (l, dh, d) = (s.tokens, s.head_dim, s.dim());
    let (d3, scale) = (3 * d, s.scale());
    let grad = contiguous(grad);
    let (x, p, dy) = (qkv.storage::<f32>(), probs.storage::<f32>(), grad.storage::<f32>());
    let isa = isa();
    let head_grads = |dst: Shared| {
        (0..s.batch * heads).into_par_iter().for_each_init(
            || (vec![0.0f32; l * l], vec![0.0f32; if isa.is_some() { dh * l } else { 0 }]),
            |(ds, v_t), bh| {
                let (b, h) = (bh / heads, bh % heads);
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
                        transpose_block(&x[base + 2 * d..], l, dh, d3, 1.0, v_t);
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
                softmax_grad_rows(ds, &p[bh * l * l..(bh + 1) * l * l], l, scale);
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

fn attention_autodiff(qkv: FloatTensor<Ad>, heads: usize) -> FloatTensor<Ad> {
    let (primitive, node) = qkv.into_parts();
    let primitive = contiguous(primitive);
    match AttentionBackward
        .prepare::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, probs) = attention_forward(primitive.clone(), heads);
            prep.finish(AttentionState { qkv: primitive, probs, heads }, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(attention_forward(primitive, heads).0),
    }
}

// =============================================================================================
// Helpers shared by the kernels below.

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

/// Sums per-thread partial vectors.
fn sum_partials(parts: impl Iterator<Item = Vec<f32>>, len: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; len];
    for part in parts {
        for (t, p) in total.iter_mut().zip(part) {
            *t += p;
        }
    }
    total
}

// =============================================================================================
// 2-D convolution (groups 1, dilation 1, stride 1, symmetric zero padding) as implicit GEMM.
//
// With the input zero-padded to `[C, Hp, Wp]` per image, output row y, column x reads input
// `(y + i) * Wp + (x + j)` for kernel tap (i, j). Computing the output on an extended grid of
// `Ho x Wp` positions (the last `Wp - Wo` columns of each row are garbage and dropped) makes the
// input of every tap a plain strided matrix `[C, Ho * Wp]` at offset `i * Wp + j`, so the
// convolution is `kh * kw` accumulated GEMMs `[C_out, C] x [C, Ho Wp]` per image, with no im2col
// buffer. The input gradient is the same convolution of the output gradient with the flipped,
// transposed kernel (strides only, nothing is copied), and the weight gradient is a GEMM per tap
// against the same shifted views. (A channels-last variant that merges the taps of a kernel row
// into one GEMM measured 2x slower here: its transposing copy costs more than it saves.) The
// direct kernels (`ops/direct_conv.rs`) compute the same sums in register tiles; on AVX-512 a
// same-size convolution reads the unpadded input with masked loads instead, and its weight
// gradient runs channels-last.

/// Shapes of one stride-1 convolution.
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

impl ConvGeom {
    fn hp(&self) -> usize {
        self.h + 2 * self.pad
    }
    fn wp(&self) -> usize {
        self.w + 2 * self.pad
    }
    fn ho(&self) -> usize {
        self.hp() + 1 - self.kh
    }
    fn wo(&self) -> usize {
        self.wp() + 1 - self.kw
    }
    /// Whether the output is as large as the input (`kh = kw = 2 pad + 1`).
    fn is_same(&self) -> bool {
        self.ho() == self.h && self.wo() == self.w
    }
    /// Offset of each tap (i, j), row by row, within a padded image: `i Wp + j`.
    fn tap_offsets(&self) -> impl Iterator<Item = usize> {
        let (kw, wp) = (self.kw, self.wp());
        (0..self.kh * kw).map(move |tap| tap / kw * wp + tap % kw)
    }
    /// Positions of the extended output grid of one image.
    fn q(&self) -> usize {
        self.ho() * self.wp()
    }
    /// Floats of one padded input image, with slack for the garbage columns' reads past it.
    fn padded_len(&self) -> usize {
        self.c_in * self.hp() * self.wp() + self.kw
    }
}

/// Zero-padded copies of every image of `x` (`[B, C, H, W]`), `g.padded_len()` floats each.
fn pad_images(x: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (wp, len, pad) = (g.wp(), g.padded_len(), g.pad);
    let img = g.c_in * g.h * g.w;
    let zero = std::mem::MaybeUninit::new(0.0f32);
    // SAFETY: each image's chunk is written whole: per channel `pad` zero rows, the rows (zero
    // margins around the image row), `pad` zero rows; then the `kw` floats of slack.
    unsafe {
        par_filled(
            g.batch * len,
            len,
            || (),
            |_, b, dst| {
                let src = &x[b * img..(b + 1) * img];
                let (planes, slack) = dst.split_at_mut(g.c_in * g.hp() * wp);
                for (plane, channel) in planes.chunks_exact_mut(g.hp() * wp).zip(src.chunks_exact(g.h * g.w)) {
                    let (top, rest) = plane.split_at_mut(pad * wp);
                    let (rows, bottom) = rest.split_at_mut(g.h * wp);
                    top.fill(zero);
                    bottom.fill(zero);
                    for (row, image_row) in rows.chunks_exact_mut(wp).zip(channel.chunks_exact(g.w)) {
                        row[..pad].fill(zero);
                        row[pad..pad + g.w].write_copy_of_slice(image_row);
                        row[pad + g.w..].fill(zero);
                    }
                }
                slack.fill(zero);
            },
        )
        .0
    }
}

/// `len` floats written in parallel, `chunk` at a time (the last chunk may be shorter), by
/// `fill(state, chunk index, chunk)` with a per-thread `state` from `init`; nothing is zeroed
/// first (that pass over memory is what this saves). Returns them and what `fill` returned for
/// each chunk, in order.
///
/// # Safety
/// `fill` must write every element of each chunk it is given.
unsafe fn par_filled<S, R: Send>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [std::mem::MaybeUninit<f32>]) -> R + Sync + Send,
) -> (Vec<f32>, Vec<R>) {
    let mut out = Vec::with_capacity(len);
    let results = out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .map_init(init, |state, (i, dst)| fill(state, i, dst))
        .collect();
    // SAFETY: every element was written (the caller's contract).
    unsafe { out.set_len(len) };
    (out, results)
}

/// `len` floats written whole through the pointer `fill` is given (by any threads, each element
/// by one), with no zeroing pass first.
///
/// # Safety
/// `fill` must write every element, through the pointer only, before it returns.
unsafe fn filled_through(len: usize, fill: impl FnOnce(Shared)) -> Vec<f32> {
    let mut out = Vec::<f32>::with_capacity(len);
    fill(Shared(out.as_mut_ptr()));
    // SAFETY: every element was written (the caller's contract).
    unsafe { out.set_len(len) };
    out
}

/// A chunk [`par_filled`]'s `fill` has written whole, as floats.
///
/// # Safety
/// Every element of `chunk` is initialised.
unsafe fn assume_written(chunk: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and the elements are initialised.
    unsafe { &mut *(chunk as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// A kernel as `kh * kw` matrices `[rows, cols]` (strides given): tap (i, j) starts at
/// `i * kw + j`, or at the flipped tap `(kh - 1 - i, kw - 1 - j)`.
#[derive(Clone, Copy)]
struct Taps<'a> {
    data: &'a [f32],
    row_stride: isize,
    col_stride: isize,
    flipped: bool,
}

impl Taps<'_> {
    fn offset(&self, i: usize, j: usize, kh: usize, kw: usize) -> usize {
        if self.flipped { (kh - 1 - i) * kw + (kw - 1 - j) } else { i * kw + j }
    }
}

/// The kernel's taps as `[C_out, C_in]` matrices.
fn forward_taps<'a>(w: &'a [f32], g: &ConvGeom) -> Taps<'a> {
    let t = (g.kh * g.kw) as isize;
    Taps { data: w, row_stride: g.c_in as isize * t, col_stride: t, flipped: false }
}

/// The kernel's taps flipped and transposed, `[C_in, C_out]`: the convolution that maps the
/// output gradient to the input gradient.
fn backward_taps<'a>(w: &'a [f32], g: &ConvGeom) -> Taps<'a> {
    let t = (g.kh * g.kw) as isize;
    Taps { data: w, row_stride: t, col_stride: g.c_in as isize * t, flipped: true }
}

/// `ext [C_out, Ho Wp]` = bias + the convolution of one padded image `src` with `taps`, as
/// `kh kw` accumulated GEMMs (`ones` is `[1, Ho Wp]` of ones when there is a bias).
fn gemm_conv_image(src: &[f32], g: &ConvGeom, taps: Taps, bias: Option<&[f32]>, ones: &[f32], ext: &mut [f32]) {
    let (wp, q) = (g.wp(), g.q());
    let plane = (g.hp() * wp) as isize;
    assert!(src.len() >= g.padded_len() && ext.len() >= g.c_out * q && (bias.is_none() || ones.len() >= q));
    // The bias (when given) is a first GEMM `bias [c_out, 1] x ones [1, q]`; the taps then
    // accumulate.
    if let Some(bias) = bias {
        // SAFETY: writes all of ext [c_out, q] (read_dst false).
        unsafe {
            gemm_strided(
                (g.c_out, q, 1),
                (ext.as_mut_ptr(), q as isize, 1),
                false,
                (bias.as_ptr(), 1, 1),
                (ones.as_ptr(), q as isize, 1),
                1.0,
            )
        };
    }
    for i in 0..g.kh {
        for j in 0..g.kw {
            let first = bias.is_none() && i == 0 && j == 0;
            // SAFETY: ext is [c_out, q]; the shifted input view [c_in, q] (strides plane, 1) at
            // offset i wp + j stays inside `src` (padded_len has the slack); the tap is
            // [c_out, c_in].
            unsafe {
                gemm_strided(
                    (g.c_out, q, g.c_in),
                    (ext.as_mut_ptr(), q as isize, 1),
                    !first,
                    (taps.data.as_ptr().add(taps.offset(i, j, g.kh, g.kw)), taps.row_stride, taps.col_stride),
                    (src.as_ptr().add(i * wp + j), plane, 1),
                    1.0,
                );
            }
        }
    }
}

/// Writes the output `[C_out, Ho, Wo]` of one image from its extended grid `ext`
/// (`[C_out, Ho Wp]`), dropping the garbage columns.
fn crop_extended(ext: &[f32], g: &ConvGeom, dst: &mut [std::mem::MaybeUninit<f32>]) {
    let (wp, q, wo) = (g.wp(), g.q(), g.wo());
    for (o, out_rows) in dst.chunks_exact_mut(g.ho() * wo).enumerate() {
        for (y, row) in out_rows.chunks_exact_mut(wo).enumerate() {
            row.write_copy_of_slice(&ext[o * q + y * wp..][..wo]);
        }
    }
}

/// `[B, C_out, Ho, Wo]` (+ bias): the convolution of the images `x` with `taps` (`[C_out, C_in]`
/// each): by the direct kernels where the CPU has them, as GEMMs otherwise. `x` holds padded
/// images (`g.padded_len()` floats each) if `padded`; else the images themselves, which are
/// padded here unless the kernel reads them as they are (AVX-512, same-size convolutions).
/// Also returns the padded images when it made them.
fn convolve_images(
    x: &[f32],
    padded: bool,
    g: &ConvGeom,
    taps: Taps,
    bias: Option<&[f32]>,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let q = g.q();
    let img_out = g.c_out * g.ho() * g.wo();
    let direct = isa().map(|isa| direct_conv::PackedKernel::new(taps, g, isa, padded));
    let xp = (!padded && direct.as_ref().is_none_or(|kernel| kernel.reads_padded())).then(|| pad_images(x, g));
    let (src, len) = match &xp {
        Some(xp) => (&xp[..], g.padded_len()),
        None if padded => (x, g.padded_len()),
        None => (x, g.c_in * g.h * g.w),
    };
    // The extended grid only where a kernel needs it (AVX2, gemm).
    let ext_len = if direct.as_ref().is_none_or(|kernel| kernel.needs_extended()) { g.c_out * q } else { 0 };
    // SAFETY: each image's chunk [c_out, ho, wo] is written whole (`convolve`, `crop_extended`).
    let out = unsafe {
        par_filled(
            g.batch * img_out,
            img_out,
            || (vec![0.0f32; ext_len], if bias.is_some() && direct.is_none() { vec![1.0f32; q] } else { Vec::new() }),
            |(ext, ones), b, dst| {
                let src = &src[b * len..(b + 1) * len];
                match &direct {
                    Some(kernel) => kernel.convolve(src, g, bias, ext, dst),
                    None => {
                        gemm_conv_image(src, g, taps, bias, ones, ext);
                        crop_extended(ext, g, dst);
                    }
                }
            },
        )
        .0
    };
    (out, xp)
}

/// `[C_out, C_in, kh, kw]` weight gradient and `[C_out]` bias gradient of the convolution of
/// the images `x` (padded ones if `padded`) whose output gradient is `dy` (`[B, C_out, Ho, Wo]`):
/// by the direct kernels where the CPU has them (channels-last on AVX-512 for 3x3, 2x2 and 1x1
/// kernels), as a GEMM per tap otherwise.
fn conv_weight_grad((x, padded): (&[f32], bool), g: &ConvGeom, dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (wp, q) = (g.wp(), g.q());
    let isa = isa();
    // Only the channels-last kernel reads unpadded images.
    let xp = (!padded && !direct_conv::WeightGrad512::applies(g, isa)).then(|| pad_images(x, g));
    let (xp, padded) = match &xp {
        Some(xp) => (&xp[..], true),
        None => (x, padded),
    };
    let len = if padded { g.padded_len() } else { g.c_in * g.h * g.w };
    let (ho, wo) = (g.ho(), g.wo());
    let plane = (g.hp() * wp) as isize;
    let taps = g.kh * g.kw;
    let wlen = g.c_out * g.c_in * taps;
    let per = g.batch.div_ceil(rayon::current_num_threads()).max(1);
    let starts: Vec<usize> = (0..g.batch).step_by(per).collect();
    let parts: Vec<(Vec<f32>, Vec<f32>)> = starts
        .into_par_iter()
        .map(|start| {
            let mut dw = vec![0.0f32; wlen];
            let mut db = vec![0.0f32; g.c_out];
            let mut channels_last = direct_conv::WeightGrad512::new(g, isa);
            // The output gradient on the extended grid, for the AVX2 and gemm paths (the garbage
            // columns stay 0).
            let mut ext = if channels_last.is_none() { vec![0.0f32; g.c_out * q] } else { Vec::new() };
            for b in start..(start + per).min(g.batch) {
                let (img, dy) = (&xp[b * len..(b + 1) * len], &dy[b * g.c_out * ho * wo..][..g.c_out * ho * wo]);
                for (db, dy) in db.iter_mut().zip(dy.chunks_exact(ho * wo)) {
                    *db += math::sum(dy, |v| v);
                }
                if let Some(grad) = &mut channels_last {
                    grad.accumulate(img, padded, g, dy);
                    continue;
                }
                for (row, dy) in ext.chunks_exact_mut(q).zip(dy.chunks_exact(ho * wo)) {
                    for (y, dy) in dy.chunks_exact(wo).enumerate() {
                        row[y * wp..][..wo].copy_from_slice(dy);
                    }
                }
                if isa.is_some() {
                    direct_conv::accumulate_weight_grad(img, g, &ext, &mut dw);
                    continue;
                }
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        // dW[:, :, i, j] += ext [c_out, q] x shifted(img)^T [q, c_in].
                        // SAFETY: the destination view [c_out, c_in] at offset i kw + j (strides
                        // c_in taps, taps) lies inside dw; the input view as in `gemm_conv_image`.
                        unsafe {
                            gemm_strided(
                                (g.c_out, g.c_in, q),
                                (dw.as_mut_ptr().add(i * g.kw + j), (g.c_in * taps) as isize, taps as isize),
                                true,
                                (ext.as_ptr(), q as isize, 1),
                                (img.as_ptr().add(i * wp + j), 1, plane),
                                1.0,
                            );
                        }
                    }
                }
            }
            if let Some(grad) = channels_last {
                grad.add_to(&mut dw, g);
            }
            (dw, db)
        })
        .collect();
    let (dws, dbs): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
    (sum_partials(dws.into_iter(), wlen), sum_partials(dbs.into_iter(), g.c_out))
}

fn conv_geom(x: &FlexTensor, weight: &FlexTensor, pad: usize) -> ConvGeom {
    let [batch, c_in, h, w] = dims::<4>(x);
    let [c_out, c_w, kh, kw] = dims::<4>(weight);
    assert_eq!(c_in, c_w, "conv2d: input has {c_in} channels, the kernel expects {c_w}");
    ConvGeom { batch, c_in, h, w, c_out, kh, kw, pad }
}

/// Returns the output and the input as the weight gradient will read it.
fn conv_flex(x: &FlexTensor, weight: &FlexTensor, bias: &FlexTensor, pad: usize) -> (FlexTensor, ConvInput) {
    let g = conv_geom(x, weight, pad);
    let (weight, bias) = (contiguous(weight.clone()), contiguous(bias.clone()));
    let (out, xp) = convolve_images(x.storage(), false, &g, forward_taps(weight.storage(), &g), Some(bias.storage()));
    let input = match xp {
        Some(xp) => ConvInput::Padded(std::sync::Arc::new(xp)),
        None => ConvInput::Images(x.clone()),
    };
    (new_tensor(out, &[g.batch, g.c_out, g.ho(), g.wo()]), input)
}

/// A convolution's input kept for its weight gradient: the padded images the forward made, or
/// the input tensor itself where the forward read it unpadded.
#[derive(Clone)]
enum ConvInput {
    Padded(std::sync::Arc<Vec<f32>>),
    Images(FlexTensor),
}

impl ConvInput {
    /// The floats and whether they are padded images.
    fn images(&self) -> (&[f32], bool) {
        match self {
            ConvInput::Padded(xp) => (xp, true),
            ConvInput::Images(x) => (x.storage(), false),
        }
    }
}

#[derive(Debug)]
struct ConvBackward;

#[derive(Clone)]
struct ConvState {
    /// The input (for a stride-2 convolution, its phases).
    input: ConvInput,
    /// The kernel `input` is convolved with (for a stride-2 convolution, the phase kernel).
    weight: FlexTensor,
    geom: ConvGeom,
    /// `Some([C, H, W])` of the input when this is a stride-2 convolution run as a stride-1 one
    /// on the input's phases (see [`conv2d_stride2`]).
    phases_of: Option<[usize; 3]>,
}

impl std::fmt::Debug for ConvState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConvState({:?})", self.geom)
    }
}

impl Backward<Flex, 3> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let ConvState { input, weight, geom: g, phases_of } = ops.state;
        let [node_x, node_w, node_b] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node)); // [B, C_out, Ho, Wo]
        let weight = contiguous(weight);
        if let Some(node) = node_x {
            // dx = conv(dy padded by kh - 1 - pad, flipped transposed kernel).
            let t = ConvGeom {
                batch: g.batch,
                c_in: g.c_out,
                h: g.ho(),
                w: g.wo(),
                c_out: g.c_in,
                kh: g.kh,
                kw: g.kw,
                pad: g.kh - 1 - g.pad,
            };
            let (dx, _) = convolve_images(grad.storage(), false, &t, backward_taps(weight.storage(), &g), None); // [B, C_in, H, W]
            let dx = match phases_of {
                Some(chw) => new_tensor(from_phases(&dx, g.batch, chw), &[g.batch, chw[0], chw[1], chw[2]]),
                None => new_tensor(dx, &[g.batch, g.c_in, g.h, g.w]),
            };
            grads.register::<Flex>(node.id, dx);
        }
        if node_w.is_some() || node_b.is_some() {
            let (dw, db) = conv_weight_grad(input.images(), &g, grad.storage());
            if let Some(node) = node_w {
                let dw = match phases_of {
                    Some([c, _, _]) => new_tensor(kernel_from_phases(&dw, g.c_out, c), &[g.c_out, c, 3, 3]),
                    None => new_tensor(dw, &[g.c_out, g.c_in, g.kh, g.kw]),
                };
                grads.register::<Flex>(node.id, dw);
            }
            if let Some(node) = node_b {
                grads.register::<Flex>(node.id, new_tensor(db, &[g.c_out]));
            }
        }
    }
}

/// The reference composition of [`conv2d`]: burn's `conv2d` with stride 1.
pub fn conv2d_reference(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, padding: usize) -> Tensor<4> {
    use burn::tensor::ops::ConvOptions;
    burn::tensor::module::conv2d(x, weight, Some(bias), ConvOptions::new([1, 1], [padding, padding], [1, 1], 1))
}

/// A stride-1 convolution with symmetric zero padding `padding` (below the kernel size) and a
/// bias, as implicit GEMM (see the section comment), both gradients too.
///
/// # Shapes
/// - x: `[B, C_in, H, W]`, weight: `[C_out, C_in, kh, kw]`, bias: `[C_out]`
/// - output: `[B, C_out, H + 2 padding - kh + 1, W + 2 padding - kw + 1]`
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, padding: usize) -> Tensor<4> {
    let [_, _, kh, kw] = weight.dims();
    assert!(padding < kh && padding < kw, "conv2d: padding {padding} must be below the kernel size");
    match route3(x, weight, bias) {
        Route3::Flex(x, w, b) => flex_tensor(conv_flex(&contiguous(x), &w, &b, padding).0),
        Route3::Autodiff(x, w, b) => {
            let (x, node_x) = x.into_parts();
            let (w, node_w) = w.into_parts();
            let (b, node_b) = b.into_parts();
            let x = contiguous(x);
            let geom = conv_geom(&x, &w, padding);
            let (out, input) = conv_flex(&x, &w, &b, padding);
            match ConvBackward.prepare::<NoCheckpointing>([node_x, node_w, node_b]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    ad_tensor(prep.finish(ConvState { input, weight: w, geom, phases_of: None }, out))
                }
                OpsKind::UnTracked(prep) => ad_tensor(prep.finish(out)),
            }
        }
        Route3::Other(x, w, b) => conv2d_reference(x, w, b, padding),
    }
}

/// The reference composition of [`conv2d_stride2`]: burn's `conv2d` with stride 2, padding 1.
pub fn conv2d_stride2_reference(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    use burn::tensor::ops::ConvOptions;
    burn::tensor::module::conv2d(x, weight, Some(bias), ConvOptions::new([2, 2], [1, 1], [1, 1], 1))
}

/// A 3x3 convolution with stride 2 and padding 1 on even-sized images (ADM's down-sampling), both
/// gradients too, as the stride-1 convolution of [`conv2d`] on the input's phases: with `xp` the
/// input padded by 1, phase `(a, b)` of channel `c` is `xp[c, 2u + a, 2v + b]`, and the output
/// is the 2x2 convolution (no padding) of the `4 C` phase channels with the kernel
/// `w2[o, (c, a, b), di, dj] = w[o, c, 2 di + a, 2 dj + b]` (0 where that tap is past 2). That
/// does 16 of every 9 multiplies, on the direct kernels; flex's strided convolution and its
/// transposed-convolution backward were 4% of the UNet's training step.
///
/// # Shapes
/// - x: `[B, C, H, W]` (H, W even), weight: `[C_out, C, 3, 3]`, bias: `[C_out]`
/// - output: `[B, C_out, H / 2, W / 2]`
pub fn conv2d_stride2(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    assert!(
        weight.dims()[2..] == [3, 3] && h % 2 == 0 && w % 2 == 0,
        "conv2d_stride2: a 3x3 kernel on even sizes, got {:?} on {h}x{w}",
        weight.dims()
    );
    match route3(x, weight, bias) {
        Route3::Flex(x, w, b) => flex_tensor(conv_stride2_flex(&contiguous(x), &w, &b).0),
        Route3::Autodiff(x, w, b) => {
            let (x, node_x) = x.into_parts();
            let (w, node_w) = w.into_parts();
            let (b, node_b) = b.into_parts();
            let x = contiguous(x);
            let [_, c, h, wd] = dims::<4>(&x);
            let (out, phases, w2, geom) = conv_stride2_flex(&x, &w, &b);
            match ConvBackward.prepare::<NoCheckpointing>([node_x, node_w, node_b]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let input = ConvInput::Padded(std::sync::Arc::new(phases));
                    ad_tensor(prep.finish(ConvState { input, weight: w2, geom, phases_of: Some([c, h, wd]) }, out))
                }
                OpsKind::UnTracked(prep) => ad_tensor(prep.finish(out)),
            }
        }
        Route3::Other(x, w, b) => conv2d_stride2_reference(x, w, b),
    }
}

/// Returns the output, the phase images (kept for the weight gradient), the phase kernel and the
/// geometry of the stride-1 convolution on the phases.
fn conv_stride2_flex(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
) -> (FlexTensor, Vec<f32>, FlexTensor, ConvGeom) {
    let [batch, c, h, w] = dims::<4>(x);
    let [c_out, ..] = dims::<4>(weight);
    let (weight, bias) = (contiguous(weight.clone()), contiguous(bias.clone()));
    let g = ConvGeom { batch, c_in: 4 * c, h: h / 2 + 1, w: w / 2 + 1, c_out, kh: 2, kw: 2, pad: 0 };
    let phases = to_phases(x.storage(), &g, [c, h, w]);
    let w2 = new_tensor(kernel_to_phases(weight.storage(), c_out, c), &[c_out, 4 * c, 2, 2]);
    let (out, _) = convolve_images(&phases, true, &g, forward_taps(w2.storage(), &g), Some(bias.storage()));
    (new_tensor(out, &[batch, c_out, g.ho(), g.wo()]), phases, w2, g)
}

/// The phases of every image of `x` (`[B, C, H, W]`) padded by 1, as `g`'s padded input
/// (`[(c, a, b)][H / 2 + 1][W / 2 + 1]` and `g.kw` floats of slack per image).
fn to_phases(x: &[f32], g: &ConvGeom, [c, h, w]: [usize; 3]) -> Vec<f32> {
    let (ph, pw, len) = (g.h, g.w, g.padded_len());
    // SAFETY: each image's chunk is written whole: every phase position, then the slack.
    unsafe {
        par_filled(
            g.batch * len,
            len,
            || (),
            |_, b, dst| {
                let img = &x[b * c * h * w..][..c * h * w];
                let (planes, slack) = dst.split_at_mut(g.c_in * ph * pw);
                for (k, plane) in planes.chunks_exact_mut(ph * pw).enumerate() {
                    let (ch, a, bb) = (k / 4, k / 2 % 2, k % 2);
                    for (u, row) in plane.chunks_exact_mut(pw).enumerate() {
                        // Padded row 2u + a is image row 2u + a - 1.
                        let y = (2 * u + a).checked_sub(1).filter(|&y| y < h);
                        for (v, out) in row.iter_mut().enumerate() {
                            let x_ = (2 * v + bb).checked_sub(1).filter(|&x_| x_ < w);
                            out.write(match (y, x_) {
                                (Some(y), Some(x_)) => img[(ch * h + y) * w + x_],
                                _ => 0.0,
                            });
                        }
                    }
                }
                slack.fill(std::mem::MaybeUninit::new(0.0));
            },
        )
        .0
    }
}

/// The input gradient `[B, C, H, W]` from the gradient of the phases (`[B, 4C, H/2 + 1, W/2 + 1]`):
/// the inverse of [`to_phases`], the padding dropped.
fn from_phases(dphases: &[f32], batch: usize, [c, h, w]: [usize; 3]) -> Vec<f32> {
    let (ph, pw) = (h / 2 + 1, w / 2 + 1);
    let mut dx = vec![0.0f32; batch * c * h * w];
    dx.par_chunks_mut(c * h * w).enumerate().for_each(|(b, img)| {
        let src = &dphases[b * 4 * c * ph * pw..];
        for (ch, plane) in img.chunks_exact_mut(h * w).enumerate() {
            for (y, row) in plane.chunks_exact_mut(w).enumerate() {
                let (u, a) = ((y + 1) / 2, (y + 1) % 2);
                for (x_, out) in row.iter_mut().enumerate() {
                    let (v, bb) = ((x_ + 1) / 2, (x_ + 1) % 2);
                    *out = src[((ch * 4 + a * 2 + bb) * ph + u) * pw + v];
                }
            }
        }
    });
    dx
}

/// The phase kernel `[C_out, 4C, 2, 2]` of a 3x3 kernel `[C_out, C, 3, 3]` (see [`conv2d_stride2`]).
fn kernel_to_phases(w: &[f32], c_out: usize, c: usize) -> Vec<f32> {
    let mut w2 = vec![0.0f32; c_out * 4 * c * 4];
    for o in 0..c_out {
        for ch in 0..c {
            for (i, j) in (0..3).flat_map(|i| (0..3).map(move |j| (i, j))) {
                let k = ch * 4 + (i % 2) * 2 + j % 2;
                w2[((o * 4 * c + k) * 2 + i / 2) * 2 + j / 2] = w[((o * c + ch) * 3 + i) * 3 + j];
            }
        }
    }
    w2
}

/// The 3x3 kernel gradient `[C_out, C, 3, 3]` from the phase kernel's (the taps that are 0 there
/// are dropped).
fn kernel_from_phases(dw2: &[f32], c_out: usize, c: usize) -> Vec<f32> {
    let mut dw = vec![0.0f32; c_out * c * 9];
    for o in 0..c_out {
        for ch in 0..c {
            for (i, j) in (0..3).flat_map(|i| (0..3).map(move |j| (i, j))) {
                let k = ch * 4 + (i % 2) * 2 + j % 2;
                dw[((o * c + ch) * 3 + i) * 3 + j] = dw2[((o * 4 * c + k) * 2 + i / 2) * 2 + j / 2];
            }
        }
    }
    dw
}

/// [`conv2d`] for a burn `Conv2d` module when it fits (stride 1, dilation 1, one group, a bias,
/// symmetric explicit padding), [`conv2d_stride2`] for ADM's down-sampling convolution (3x3,
/// stride 2, padding 1, even sizes); the module's own forward otherwise.
pub fn conv2d_module(conv: &burn::nn::conv::Conv2d, x: Tensor<4>) -> Tensor<4> {
    use burn::nn::PaddingConfig2d;
    let pad = match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => Some(t),
        PaddingConfig2d::Valid => Some(0),
        _ => None,
    };
    match (pad, &conv.bias) {
        (Some(pad), Some(bias))
            if conv.stride == [1, 1]
                && conv.dilation == [1, 1]
                && conv.groups == 1
                && pad < conv.kernel_size[0]
                && pad < conv.kernel_size[1] =>
        {
            conv2d(x, conv.weight.val(), bias.val(), pad)
        }
        (Some(1), Some(bias))
            if conv.stride == [2, 2]
                && conv.dilation == [1, 1]
                && conv.groups == 1
                && conv.kernel_size == [3, 3]
                && x.dims()[2] % 2 == 0
                && x.dims()[3] % 2 == 0 =>
        {
            conv2d_stride2(x, conv.weight.val(), bias.val())
        }
        _ => conv.forward(x),
    }
}

// =============================================================================================
// Linear layers: `x W + b` as one GEMM per thread on a block of rows (the bias written first, the
// product accumulated onto it); the input gradient against W^T, the weight gradient summed over
// blocks of tokens (the direct kernel) or computed by blocks of W's rows (gemm, strided views).

/// Rows of an `m`-row matrix each rayon task takes: one block per thread.
fn row_block(m: usize) -> usize {
    m.div_ceil(rayon::current_num_threads()).max(1)
}

/// `x [M, K] W [K, N] + b [N]`, all contiguous.
fn linear_flex(x: &FlexTensor, w: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let ([m, k], [_, n]) = (dims::<2>(x), dims::<2>(w));
    let (x, w, b) = (x.storage::<f32>(), w.storage::<f32>(), b.storage::<f32>());
    let rows = row_block(m);
    let isa = isa();
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

#[derive(Debug)]
struct LinearBackward;

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

impl Backward<Flex, 3> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let LinearState { x, weight } = ops.state;
        let [node_x, node_w, node_b] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node)); // [M, N]
        let ([m, k], [_, n]) = (dims::<2>(&x), dims::<2>(&weight));
        let (x, w, dy) = (x.storage::<f32>(), weight.storage::<f32>(), dy.storage::<f32>());
        if let Some(node) = node_x {
            // dx [M, K] = dy [M, N] W^T: the direct kernel on a transposed copy of W (it reads
            // its right factor by rows), gemm on W^T's strides (row 1, column N).
            let rows = row_block(m);
            let isa = isa();
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
            grads.register::<Flex>(node.id, new_tensor(dx, &[m, k]));
        }
        if let Some(node) = node_w {
            // dW [K, N] = x^T [K, M] dy [M, N]: the direct kernel sums a block of tokens per task
            // (partial dW summed after); gemm takes a block of W's rows per task.
            let dw = if let Some(isa) = isa() {
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
            grads.register::<Flex>(node.id, new_tensor(dw, &[k, n]));
        }
        if let Some(node) = node_b {
            let partials = dy.par_chunks(row_block(m) * n).map(|block| {
                let mut sum = vec![0.0f32; n];
                for row in block.chunks_exact(n) {
                    for (s, v) in sum.iter_mut().zip(row) {
                        *s += v;
                    }
                }
                sum
            });
            grads
                .register::<Flex>(node.id, new_tensor(sum_partials(partials.collect::<Vec<_>>().into_iter(), n), &[n]));
        }
    }
}

/// The reference composition of [`linear`]: burn's `linear`.
pub fn linear_reference<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<D> {
    burn::tensor::module::linear(x, weight, Some(bias))
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
    let y: Tensor<2> = match route3(x, weight, bias) {
        Route3::Flex(x, w, b) => flex_tensor(linear_flex(&contiguous(x), &contiguous(w), &contiguous(b))),
        Route3::Autodiff(x, w, b) => {
            let (x, node_x) = x.into_parts();
            let (w, node_w) = w.into_parts();
            let (b, node_b) = b.into_parts();
            let (x, w) = (contiguous(x), contiguous(w));
            let out = linear_flex(&x, &w, &contiguous(b));
            match LinearBackward.prepare::<NoCheckpointing>([node_x, node_w, node_b]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => ad_tensor(prep.finish(LinearState { x, weight: w }, out)),
                OpsKind::UnTracked(prep) => ad_tensor(prep.finish(out)),
            }
        }
        Route3::Other(x, w, b) => linear_reference(x, w, b),
    };
    y.reshape(out_shape)
}

/// A burn `Linear` through [`linear`] (a missing bias is a zero one, which takes no gradient).
pub fn linear_module<const D: usize>(layer: &burn::nn::Linear, x: Tensor<D>) -> Tensor<D> {
    let weight = layer.weight.val();
    let bias = match &layer.bias {
        Some(b) => b.val(),
        None => Tensor::zeros([weight.dims()[1]], &x.device()),
    };
    linear(x, weight, bias)
}

// =============================================================================================
// GELU (the exact, erf form the reference uses), forward and backward each one parallel pass.
// flex computes both on one thread with a scalar erf; here rayon splits the elements and erf is
// Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, about f32's rounding).

/// Elements per rayon task of an element-wise pass: large enough to amortise the task, small
/// enough to balance two to sixteen threads on the presets' tensors (a million elements and up).
const CHUNK: usize = 1 << 14;

vectorised_fn! {
    /// `x Phi(x)` of each element.
    fn gelu_chunk(dst: &mut [std::mem::MaybeUninit<f32>], xs: &[f32]) {
        for (o, &v) in dst.iter_mut().zip(xs) {
            o.write(v * math::phi_and_pdf(v).0);
        }
    }
}

vectorised_fn! {
    /// The input gradient `g (Phi(x) + x pdf(x))` of each element.
    fn gelu_grad_chunk(dst: &mut [f32], xs: &[f32], gs: &[f32]) {
        for ((o, &v), &g) in dst.iter_mut().zip(xs).zip(gs) {
            let (phi, pdf) = math::phi_and_pdf(v);
            *o = g * (phi + v * pdf);
        }
    }
}

fn gelu_flex(x: &FlexTensor) -> FlexTensor {
    let xs = x.storage::<f32>();
    // SAFETY: gelu_chunk writes its whole chunk.
    let (out, _) =
        unsafe { par_filled(xs.len(), CHUNK, || (), |_, i, dst| gelu_chunk(dst, &xs[i * CHUNK..][..dst.len()])) };
    new_tensor(out, x.layout().shape())
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = contiguous(grad);
            let mut dx = vec![0.0f32; grad.storage::<f32>().len()];
            (dx.par_chunks_mut(CHUNK)
                .zip(x.storage::<f32>().par_chunks(CHUNK).zip(grad.storage::<f32>().par_chunks(CHUNK))))
            .for_each(|(dst, (xs, gs))| gelu_grad_chunk(dst, xs, gs));
            new_tensor(dx, grad.layout().shape())
        });
    }
}

/// The reference composition of [`gelu`]: burn's `gelu`.
pub fn gelu_reference<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::gelu(x)
}

/// `x * Phi(x)` (exact GELU), element-wise, with its backward.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match route(x) {
        Route::Flex(x) => flex_tensor(gelu_flex(&contiguous(x))),
        Route::Autodiff(x) => {
            let (x, node) = x.into_parts();
            let x = contiguous(x);
            let out = gelu_flex(&x);
            ad_tensor(match GeluBackward.prepare::<NoCheckpointing>([node]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => prep.finish(x, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            })
        }
        Route::Other(x) => gelu_reference(x),
    }
}

// =============================================================================================
// Nearest-neighbour x2 upsampling: one copy forward, one 2x2 sum backward. The reference
// (reshape, expand, reshape) goes through flex's generic strided copy, and its backward through a
// broadcast reduction.

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

/// Rows of `w` values each rayon task of a row-wise pass takes (whole rows, about `CHUNK` values).
fn rows_per_task(w: usize) -> usize {
    (CHUNK / w.max(1)).max(1)
}

fn upsample_flex(x: &FlexTensor) -> FlexTensor {
    let [b, c, h, w] = dims::<4>(x);
    let rows = rows_per_task(w);
    let mut out = vec![0.0f32; 4 * x.storage::<f32>().len()];
    (out.par_chunks_mut(4 * w * rows).zip(x.storage::<f32>().par_chunks(w * rows)))
        .for_each(|(dst, src)| upsample_rows(dst, src, w));
    new_tensor(out, &[b, c, 2 * h, 2 * w])
}

#[derive(Debug)]
struct UpsampleBackward;

impl Backward<Flex, 1> for UpsampleBackward {
    type State = [usize; 4];

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [b, c, h, w] = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = contiguous(grad);
            let rows = rows_per_task(w);
            let mut dx = vec![0.0f32; b * c * h * w];
            (dx.par_chunks_mut(w * rows).zip(grad.storage::<f32>().par_chunks(4 * w * rows)))
                .for_each(|(dst, src)| downsum_rows(dst, src, w));
            new_tensor(dx, &[b, c, h, w])
        });
    }
}

/// The reference composition of [`upsample_nearest2x`]: reshape, expand, reshape.
pub fn upsample_nearest2x_reference(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w])
}

/// Nearest-neighbour upsampling by 2: each pixel copied into a 2x2 square.
///
/// # Shapes
/// - x: `[B, C, H, W]`, output: `[B, C, 2H, 2W]`
pub fn upsample_nearest2x(x: Tensor<4>) -> Tensor<4> {
    match route(x) {
        Route::Flex(x) => flex_tensor(upsample_flex(&contiguous(x))),
        Route::Autodiff(x) => {
            let (x, node) = x.into_parts();
            let x = contiguous(x);
            let out = upsample_flex(&x);
            ad_tensor(match UpsampleBackward.prepare::<NoCheckpointing>([node]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => prep.finish(dims::<4>(&x), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            })
        }
        Route::Other(x) => upsample_nearest2x_reference(x),
    }
}

// =============================================================================================
// Normalisation: group norm (optionally followed by SiLU) and layer norm, each one op with a
// two-pass backward.

/// Mean and 1 / sqrt(var + eps) (biased variance, two passes) of a run of values.
#[inline(always)]
fn stats(run: &[f32], eps: f64) -> (f32, f32) {
    let n = run.len() as f32;
    let mean = math::sum(run, |v| v) / n;
    let var = math::sum(run, |v| (v - mean) * (v - mean)) / n;
    (mean, (1.0 / (var as f64 + eps).sqrt()) as f32)
}

/// Group norm over `[B, C, S]` (S = spatial size), per-channel affine, optional SiLU.
#[derive(Debug, Clone, Copy)]
struct NormGeom {
    channels: usize,
    spatial: usize,
    groups: usize,
    silu: bool,
    eps: f64,
}

impl NormGeom {
    fn per_group(&self) -> usize {
        self.channels / self.groups
    }
    fn group_len(&self) -> usize {
        self.per_group() * self.spatial
    }
}

vectorised_fn! {
    /// Normalises one group `src` (`per_group` rows of `spatial` values, channels from `c0`) into
    /// `dst`; returns its (mean, rstd).
    fn group_norm_run(dst: &mut [std::mem::MaybeUninit<f32>], src: &[f32], gamma: &[f32], beta: &[f32], g: &NormGeom, c0: usize) -> (f32, f32) {
        let (m, r) = stats(src, g.eps);
        for (ci, (drow, srow)) in dst.chunks_mut(g.spatial).zip(src.chunks(g.spatial)).enumerate() {
            let c = c0 + ci;
            let (scale, shift) = (r * gamma[c], beta[c] - m * r * gamma[c]);
            if g.silu {
                for (o, &v) in drow.iter_mut().zip(srow) {
                    let y = v * scale + shift;
                    o.write(y * math::sigmoid(y));
                }
            } else {
                for (o, &v) in drow.iter_mut().zip(srow) {
                    o.write(v * scale + shift);
                }
            }
        }
        (m, r)
    }
}

/// Returns the output and each group's (mean, rstd).
fn group_norm_forward(x: &[f32], gamma: &[f32], beta: &[f32], g: &NormGeom) -> (Vec<f32>, Vec<(f32, f32)>) {
    let n = g.group_len();
    // SAFETY: group_norm_run writes its whole group.
    unsafe {
        par_filled(
            x.len(),
            n,
            || (),
            |_, run, dst| group_norm_run(dst, &x[run * n..][..n], gamma, beta, g, run % g.groups * g.per_group()),
        )
    }
}

vectorised_fn! {
    /// The input gradient of one group (as [`group_norm_run`]) into `dst`; returns each channel's
    /// (sum dy, sum dy xhat), dy taken after the SiLU: its beta and gamma gradients.
    ///
    /// dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) with dxhat = dy gamma.
    fn group_norm_grad_run(
        dst: &mut [f32],
        xs: &[f32],
        ds: &[f32],
        gamma: &[f32],
        beta: &[f32],
        mean_rstd: (f32, f32),
        g: &NormGeom,
        c0: usize,
    ) -> Vec<(f32, f32)> {
        let ((m, r), s) = (mean_rstd, g.spatial);
        let mut per_channel = Vec::with_capacity(g.per_group());
        for ci in 0..g.per_group() {
            let c = c0 + ci;
            let (rows_x, rows_d) = (&xs[ci * s..(ci + 1) * s], &ds[ci * s..(ci + 1) * s]);
            let row = &mut dst[ci * s..(ci + 1) * s];
            if g.silu {
                let (scale, shift) = (r * gamma[c], beta[c] - m * r * gamma[c]);
                for ((o, &xv), &d) in row.iter_mut().zip(rows_x).zip(rows_d) {
                    let y = xv * scale + shift;
                    let sg = math::sigmoid(y);
                    *o = d * sg * (1.0 + y * (1.0 - sg));
                }
            } else {
                row.copy_from_slice(rows_d);
            }
            let row = &*row;
            per_channel.push((math::sum(row, |d| d), math::sum2(row, rows_x, |d, xv| d * (xv - m) * r)));
        }
        let (mut a, mut b) = (0.0f32, 0.0f32);
        for (ci, &(sd, sdx)) in per_channel.iter().enumerate() {
            a += sd * gamma[c0 + ci];
            b += sdx * gamma[c0 + ci];
        }
        let n = g.group_len() as f32;
        let (a, b) = (a / n, b / n);
        for ci in 0..g.per_group() {
            let c = c0 + ci;
            for (v, &xv) in dst[ci * s..(ci + 1) * s].iter_mut().zip(&xs[ci * s..(ci + 1) * s]) {
                *v = r * (*v * gamma[c] - a - (xv - m) * r * b);
            }
        }
        per_channel
    }
}

/// Returns (dx, dgamma, dbeta).
fn group_norm_backward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[(f32, f32)],
    dout: &[f32],
    g: &NormGeom,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, cg) = (g.group_len(), g.per_group());
    let mut dx = vec![0.0f32; x.len()];
    let sums: Vec<Vec<(f32, f32)>> = (dx.par_chunks_mut(n).zip(x.par_chunks(n).zip(dout.par_chunks(n))).enumerate())
        .map(|(run, (dst, (xs, ds)))| group_norm_grad_run(dst, xs, ds, gamma, beta, stats[run], g, run % g.groups * cg))
        .collect();
    let mut dgamma = vec![0.0f32; g.channels];
    let mut dbeta = vec![0.0f32; g.channels];
    for (run, per_channel) in sums.into_iter().enumerate() {
        let c0 = run % g.groups * cg;
        for (ci, (sd, sdx)) in per_channel.into_iter().enumerate() {
            dbeta[c0 + ci] += sd;
            dgamma[c0 + ci] += sdx;
        }
    }
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
    stats: Vec<(f32, f32)>,
    geom: NormGeom,
}

impl Backward<Flex, 3> for GroupNormBackward {
    type State = GroupNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let GroupNormState { x, gamma, beta, stats, geom } = ops.state;
        let [node_x, node_g, node_b] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let shape: Vec<usize> = x.layout().shape().iter().copied().collect();
        let (dx, dgamma, dbeta) =
            group_norm_backward(x.storage(), gamma.storage(), beta.storage(), &stats, grad.storage(), &geom);
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
    let geom = NormGeom { channels, spatial: h * w, groups: norm.num_groups, silu, eps: norm.epsilon };
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
            let (out, stats) = group_norm_forward(x.storage(), gm.storage(), bt.storage(), &geom);
            let out = new_tensor(out, &shape);
            match GroupNormBackward.prepare::<NoCheckpointing>([node_x, node_g, node_b]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    ad_tensor(prep.finish(GroupNormState { x, gamma: gm, beta: bt, stats, geom }, out))
                }
                OpsKind::UnTracked(prep) => ad_tensor(prep.finish(out)),
            }
        }
        Route3::Other(x, _, _) => group_norm_reference(norm, x, silu),
    }
}

// ---------------------------------------------------------------------------------------------
// Layer norm over the last axis: flex's fused forward kernel, and a fused backward.

/// burn's `LayerNorm` epsilon (its default; the field is private, and every LayerNorm of this
/// crate is built with the default).
pub const LAYER_NORM_EPS: f64 = 1e-5;

vectorised_fn! {
    /// The input gradient of rows `xs` (`d` values each) into `dst`, their gamma and beta
    /// gradients added to `dg` and `db`; the statistics are recomputed from `xs`.
    fn layer_norm_grad_rows(dst: &mut [f32], xs: &[f32], ds: &[f32], gamma: &[f32], dg: &mut [f32], db: &mut [f32], d: usize, eps: f64) {
        for ((row, xr), dr) in dst.chunks_mut(d).zip(xs.chunks(d)).zip(ds.chunks(d)) {
            let (m, s) = stats(xr, eps);
            for (((&xv, &dv), dgj), dbj) in xr.iter().zip(dr).zip(dg.iter_mut()).zip(db.iter_mut()) {
                *dgj += dv * (xv - m) * s;
                *dbj += dv;
            }
            let a = math::sum2(dr, gamma, |dv, gm| dv * gm) / d as f32;
            let b = math::sum3(dr, gamma, xr, |dv, gm, xv| dv * gm * (xv - m) * s) / d as f32;
            for (((o, &xv), &dv), &gm) in row.iter_mut().zip(xr).zip(dr).zip(gamma) {
                *o = s * (dv * gm - a - (xv - m) * s * b);
            }
        }
    }
}

/// Returns (dx, dgamma, dbeta).
fn layer_norm_backward(x: &[f32], gamma: &[f32], dout: &[f32], d: usize, eps: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0.0f32; x.len()];
    let block = rows_per_task(d) * d;
    let partials: Vec<(Vec<f32>, Vec<f32>)> =
        (dx.par_chunks_mut(block).zip(x.par_chunks(block).zip(dout.par_chunks(block))))
            .map(|(dst, (xs, ds))| {
                let (mut dg, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
                layer_norm_grad_rows(dst, xs, ds, gamma, &mut dg, &mut db, d, eps);
                (dg, db)
            })
            .collect();
    let (dgs, dbs): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
    (dx, sum_partials(dgs.into_iter(), d), sum_partials(dbs.into_iter(), d))
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
}

impl Backward<Flex, 3> for LayerNormBackward {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let LayerNormState { x, gamma } = ops.state;
        let [node_x, node_g, node_b] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let shape: Vec<usize> = x.layout().shape().iter().copied().collect();
        let d = *shape.last().expect("layer norm input has a last axis");
        let (dx, dgamma, dbeta) = layer_norm_backward(x.storage(), gamma.storage(), grad.storage(), d, LAYER_NORM_EPS);
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

/// burn's `LayerNorm` (with bias, epsilon [`LAYER_NORM_EPS`]) over the last axis, as one op:
/// flex's fused forward kernel and one fused backward node.
pub fn layer_norm<const D: usize>(norm: &burn::nn::LayerNorm, x: Tensor<D>) -> Tensor<D> {
    let Some(beta) = &norm.beta else { return layer_norm_reference(norm, x) };
    let forward = |x: FlexTensor, gm: FlexTensor, bt: FlexTensor| {
        <Flex as ModuleOps<Flex>>::layer_norm(x, gm, Some(bt), LAYER_NORM_EPS)
    };
    match route3(x, norm.gamma.val(), beta.val()) {
        Route3::Flex(x, gm, bt) => flex_tensor(forward(contiguous(x), gm, bt)),
        Route3::Autodiff(x, gm, bt) => {
            let (x, node_x) = x.into_parts();
            let (gm, node_g) = gm.into_parts();
            let (bt, node_b) = bt.into_parts();
            let (x, gm) = (contiguous(x), contiguous(gm));
            let out = forward(x.clone(), gm.clone(), bt);
            match LayerNormBackward.prepare::<NoCheckpointing>([node_x, node_g, node_b]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => ad_tensor(prep.finish(LayerNormState { x, gamma: gm }, out)),
                OpsKind::UnTracked(prep) => ad_tensor(prep.finish(out)),
            }
        }
        Route3::Other(x, _, _) => layer_norm_reference(norm, x),
    }
}
