//! Linear layers: `x W + b` as one GEMM per thread on a block of rows (the direct kernel adds the
//! bias, and a residual, to its sums before it stores them); the input gradient against W^T, the
//! weight gradient summed over blocks of tokens (the direct kernel) or computed by blocks of W's
//! rows (gemm, strided views).
//! The same on a concatenated input (`cat([x, y], -1) W + b`, [`linear_cat`]) without building
//! the concatenation: one product per part, accumulated onto the same output.

use crate::direct_gemm::{self, Addends, Start};
use crate::dispatch::{self, FusedOp, dims, new_tensor, placed};
use crate::gelu::{gelu_backward, gelu_chunk, gelu_in_place};
use crate::gemm::{gemm_strided, matmul, transpose_block};
use crate::parallel::{Shared, assume_written, filled_through, par_filled, row_block, sum_partials};
use crate::{Isa, reference};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use rayon::prelude::*;

/// `residual + (x [M, K] W [K, N] + b [N])` (without `residual` where it is `None`), all
/// contiguous; `x` given as column blocks `parts` (`[M, K_i]` each, `sum K_i = K`, the rows of `W`
/// in the same order): `cat(parts, 1) W + b` without the concatenation. Each thread takes a block
/// of rows and runs it [`direct_gemm::ROW_BLOCK`] rows at a time ([`rows_product`]), then
/// `epilogue(first row, rows)` on those rows while they are in cache (an activation).
pub(crate) fn linear_rows(
    parts: &[&FlexTensor],
    w: &FlexTensor,
    b: &FlexTensor,
    residual: Option<&[f32]>,
    isa: Option<Isa>,
    epilogue: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let ([m, _], [k_all, n]) = (dims::<2>(parts[0]), dims::<2>(w));
    let widths: Vec<usize> = parts.iter().map(|p| dims::<2>(p)[1]).collect();
    assert_eq!(widths.iter().sum::<usize>(), k_all, "the parts' widths add up to W's rows");
    let xs: Vec<&[f32]> = parts.iter().map(|p| p.storage::<f32>()).collect();
    let (w, b) = (w.storage::<f32>(), b.storage::<f32>());
    assert!(xs.iter().zip(&widths).all(|(x, &k)| x.len() == m * k) && w.len() == k_all * n && b.len() == n);
    assert!(residual.is_none_or(|r| r.len() == m * n), "the residual has the output's shape");
    let block = |first: usize, dst: &mut [std::mem::MaybeUninit<f32>]| {
        // Each part's rows first.. of x, its width and its rows of W.
        let products: Vec<(&[f32], usize, &[f32])> = xs
            .iter()
            .zip(&widths)
            .scan(0, |w_rows, (x, &k)| {
                let part = (&x[first * k..], k, &w[*w_rows * n..]);
                *w_rows += k;
                Some(part)
            })
            .collect();
        let residual = residual.map(|r| &r[first * n..]);
        epilogue(first, rows_product(&products, b, residual, dst, isa));
    };
    let (rows, sub) = (row_block(m), direct_gemm::ROW_BLOCK);
    // SAFETY: `block` writes every element of the rows it is given.
    let (out, _) = unsafe {
        par_filled(
            m * n,
            rows * n,
            || (),
            |_, i, dst| {
                for (j, dst) in dst.chunks_mut(sub * n).enumerate() {
                    block(i * rows + j * sub, dst);
                }
            },
        )
    };
    out
}

/// `dst [r, N] = (b + x_1 W_1 + .. + x_P W_P) + residual` on the calling thread, returned
/// written: `products` the `r` rows' column blocks (`x_i`: from its first row, rows `K_i`
/// apart) with their widths `K_i` and their rows of `W` (`W_i`: from its first row, rows `N`
/// apart); `residual` from its first row, rows `N` apart. The direct kernel adds the bias and
/// the residual to its sums in registers ([`direct_gemm::Addends`]); gemm accumulates onto the
/// bias written first, and the residual is added after. Every element is `(b + one sum over K
/// in order) + residual` either way, so the values depend neither on the blocking nor on the
/// kernel.
pub(crate) fn rows_product<'a>(
    products: &[(&[f32], usize, &[f32])],
    b: &[f32],
    residual: Option<&[f32]>,
    dst: &'a mut [std::mem::MaybeUninit<f32>],
    isa: Option<Isa>,
) -> &'a mut [f32] {
    let n = b.len();
    let rows = dst.len() / n;
    assert!(!products.is_empty() && products.iter().all(|&(x, k, w)| x.len() >= rows * k && w.len() >= k * n));
    let residual = residual.map(|r| &r[..rows * n]);
    let out = dst.as_mut_ptr().cast::<f32>();
    // In both arms, dst is the rows' [r, N], the bias N values, the residual's block [r, N], and
    // each product's rows of x and of W inside their slices (asserted above).
    match isa {
        // The first product starts from the bias (and writes every element), the last adds the
        // residual.
        Some(isa) => {
            for (i, &(x, k, w)) in products.iter().enumerate() {
                let start = if i == 0 { Start::Row(b.as_ptr()) } else { Start::Dst };
                let residual = residual.filter(|_| i + 1 == products.len()).map(<[f32]>::as_ptr);
                let addends = Addends { start, residual };
                // SAFETY: the views above.
                unsafe {
                    direct_gemm::gemm_raw(isa, (rows, n, k), (out, n), addends, (x.as_ptr(), k, 1), (w.as_ptr(), n))
                };
            }
        }
        // The bias written, each product accumulated onto it, the residual added.
        None => {
            for row in dst.chunks_mut(n) {
                for (o, &v) in row.iter_mut().zip(b) {
                    o.write(v);
                }
            }
            for &(x, k, w) in products {
                // SAFETY: the views above; dst holds the bias, which the product accumulates onto.
                unsafe {
                    gemm_strided(
                        (rows, n, k),
                        (out, n as isize, 1),
                        true,
                        (x.as_ptr(), k as isize, 1),
                        (w.as_ptr(), n as isize, 1),
                        1.0,
                    )
                };
            }
            // `r + y`, as the composition adds them (IEEE addition commutes: the same bits).
            // SAFETY: every element holds the bias plus the products.
            for (o, &v) in unsafe { assume_written(dst) }.iter_mut().zip(residual.unwrap_or_default()) {
                *o += v;
            }
        }
    }
    // SAFETY: every element was written: by the direct kernel's first product, or the bias.
    unsafe { assume_written(dst) }
}

#[derive(Clone)]
pub(crate) struct LinearState {
    /// The input's column blocks (`[M, K_i]` each) and the weight `[K, N]`, contiguous.
    pub(crate) parts: Vec<FlexTensor>,
    pub(crate) weight: FlexTensor,
}

impl std::fmt::Debug for LinearState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<[usize; 2]> = self.parts.iter().map(dims::<2>).collect();
        write!(f, "LinearState({parts:?} x {:?})", dims::<2>(&self.weight))
    }
}

/// `dx [M, K] = dy [M, N] W^T` for the rows `w [K, N]` of the weight: the direct kernel on a
/// transposed copy of them (it reads its right factor by rows), gemm on W^T's strides (row 1,
/// column N).
fn input_grad(dy: &[f32], w: &[f32], (m, k, n): (usize, usize, usize), isa: Option<Isa>) -> FlexTensor {
    let rows = row_block(m);
    let w_t = isa.map(|_| {
        let mut w_t = vec![0.0f32; k * n];
        transpose_block(w, k, n, n, 1.0, &mut w_t, k);
        w_t
    });
    let rows_of_dx = |_: &mut (), i: usize, dst: &mut [std::mem::MaybeUninit<f32>]| {
        let rhs = match &w_t {
            Some(w_t) => (w_t.as_ptr(), k as isize, 1),
            None => (w.as_ptr(), 1, n as isize),
        };
        assert!(w.len() >= k * n && dy.len() >= (i * rows + dst.len() / k) * n);
        // SAFETY: dst is this block's [r, K], written whole by the product (which does not read
        // it); dy's block [r, N] and W^T [N, K] are inside their slices (asserted).
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
}

/// `dW [K, N] = x^T [K, M] dy [M, N]` into `dw` (`K N` values): the direct kernel sums a block of
/// tokens per task (partial dW summed after); gemm takes a block of W's rows per task.
fn weight_grad(x: &[f32], dy: &[f32], (m, k, n): (usize, usize, usize), dw: &mut [f32], isa: Option<Isa>) {
    assert!(dw.len() == k * n && x.len() == m * k && dy.len() == m * n);
    if let Some(isa) = isa {
        let rows = row_block(m);
        let partials: Vec<Vec<f32>> = (x.par_chunks(rows * k).zip(dy.par_chunks(rows * n)))
            .map(|(x_rows, dy_rows)| {
                let mut part = vec![0.0f32; k * n];
                direct_gemm::gemm(isa, k, n, dy_rows.len() / n, &mut part, false, x_rows, (1, k), dy_rows);
                part
            })
            .collect();
        dw.copy_from_slice(&sum_partials(partials.into_iter(), k * n));
    } else {
        let rows = row_block(k);
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
    }
}

/// `db [N] = sum over rows of dy [M, N]`.
fn bias_grad(dy: &[f32], m: usize, n: usize) -> FlexTensor {
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
}

/// The forward of a linear layer on `P` column blocks of its input (`P = 1`: [`linear`];
/// `P = 2`: [`linear_cat`]) and the backward, for inputs `[part_1, .., part_P, weight, bias]`.
fn linear_forward(inputs: Vec<FlexTensor>, isa: Option<Isa>) -> (FlexTensor, LinearState) {
    let mut inputs = inputs;
    let bias = inputs.pop().expect("bias");
    let weight = inputs.pop().expect("weight");
    let parts: Vec<&FlexTensor> = inputs.iter().collect();
    let [m, n] = [dims::<2>(parts[0])[0], dims::<2>(&weight)[1]];
    let out = new_tensor(linear_rows(&parts, &weight, &bias, None, isa, |_, _| ()), &[m, n]);
    (out, LinearState { parts: inputs, weight })
}

/// [`linear_backward`] of a layer on one input: the gradients of `[x, weight, bias]`.
pub(crate) fn layer_backward(
    state: LinearState,
    dy: FlexTensor,
    wanted: [bool; 3],
    isa: Option<Isa>,
) -> [Option<FlexTensor>; 3] {
    let mut grads = linear_backward(state, dy, &wanted, isa).into_iter();
    std::array::from_fn(|_| grads.next().expect("one gradient per input"))
}

/// The gradients of `[part_1, .., part_P, weight, bias]`, each where `wanted`.
fn linear_backward(
    LinearState { parts, weight }: LinearState,
    dy: FlexTensor,
    wanted: &[bool],
    isa: Option<Isa>,
) -> Vec<Option<FlexTensor>> {
    let [k_all, n] = dims::<2>(&weight);
    let m = dims::<2>(&parts[0])[0];
    let (w, dy) = (weight.storage::<f32>(), dy.storage::<f32>()); // dy: [M, N]
    let mut grads = Vec::with_capacity(parts.len() + 2);
    let mut w_rows = 0;
    for (part, &want) in parts.iter().zip(wanted) {
        let k = dims::<2>(part)[1];
        grads.push(want.then(|| input_grad(dy, &w[w_rows * n..(w_rows + k) * n], (m, k, n), isa)));
        w_rows += k;
    }
    grads.push(wanted[parts.len()].then(|| {
        let mut dw = vec![0.0f32; k_all * n];
        let mut w_rows = 0;
        for part in &parts {
            let k = dims::<2>(part)[1];
            weight_grad(part.storage::<f32>(), dy, (m, k, n), &mut dw[w_rows * n..(w_rows + k) * n], isa);
            w_rows += k;
        }
        new_tensor(dw, &[k_all, n])
    }));
    grads.push(wanted[parts.len() + 1].then(|| bias_grad(dy, m, n)));
    grads
}

/// `cat(parts, 1) W + b` on `N - 2` column blocks of the input rows (`N = 3`: [`linear`]'s `x W + b`;
/// `N = 4`: [`linear_cat`]'s two parts); the backward keeps the parts and `W`.
#[derive(Debug)]
struct LinearParts<const N: usize>;

impl<const N: usize> FusedOp<N> for LinearParts<N> {
    type State = LinearState;

    fn forward(&self, inputs: [FlexTensor; N], isa: Option<Isa>) -> (FlexTensor, LinearState) {
        linear_forward(inputs.into(), isa)
    }

    fn backward(
        self,
        state: LinearState,
        dy: FlexTensor,
        wanted: [bool; N],
        isa: Option<Isa>,
    ) -> [Option<FlexTensor>; N] {
        let mut grads = linear_backward(state, dy, &wanted, isa).into_iter();
        std::array::from_fn(|_| grads.next().expect("one gradient per input"))
    }
}

/// `r + (x W + b)` on `[M, K]` rows: the residual added to the product's sums in the tile (or to
/// each block of rows while it is in cache, on gemm); the backward keeps `x` and `W` (the
/// residual's gradient is the output's).
#[derive(Debug)]
struct LinearAdd;

impl FusedOp<4> for LinearAdd {
    type State = LinearState;

    fn forward(&self, [x, weight, bias, residual]: [FlexTensor; 4], isa: Option<Isa>) -> (FlexTensor, LinearState) {
        let [m, n] = [dims::<2>(&x)[0], dims::<2>(&weight)[1]];
        let out = linear_rows(&[&x], &weight, &bias, Some(residual.storage::<f32>()), isa, |_, _| ());
        (new_tensor(out, &[m, n]), LinearState { parts: vec![x], weight })
    }

    fn backward(
        self,
        state: LinearState,
        dy: FlexTensor,
        wanted: [bool; 4],
        isa: Option<Isa>,
    ) -> [Option<FlexTensor>; 4] {
        let [want_x, want_w, want_b, want_r] = wanted;
        let dr = want_r.then(|| dy.clone());
        let [dx, dw, db] = layer_backward(state, dy, [want_x, want_w, want_b], isa);
        [dx, dw, db, dr]
    }
}

/// `residual + (x W + b)` over the last axis, as one op: the residual is added to each block of
/// rows of the product while it is in cache (no separate pass, no second output); the same
/// values as `residual + linear(x, W, b)`, bit for bit.
///
/// # Shapes
/// - x: `[..., K]`, weight: `[K, N]` (burn's layout), bias: `[N]`, residual: `[..., N]`
/// - output: `[..., N]`
pub fn linear_add<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Tensor<1>, residual: Tensor<D>) -> Tensor<D> {
    let shape = x.dims();
    let [k, n] = weight.dims();
    let out_shape = residual.dims();
    let m = shape[..D - 1].iter().product::<usize>();
    let (x, r) = (x.reshape([m, k]), residual.reshape([m, n])); // [M, K], [M, N]
    let y: Tensor<2> = dispatch::run(LinearAdd, [placed(&x), placed(&weight), placed(&bias), placed(&r)])
        .unwrap_or_else(|| r + reference::linear(x, weight, bias));
    y.reshape(out_shape)
}

/// `gelu(x W + b)` on `[M, K]` rows: GELU applied to each block of rows of the product while it
/// is in cache; the backward keeps `x`, `W` and the pre-activation.
#[derive(Debug)]
struct LinearGelu;

impl FusedOp<3> for LinearGelu {
    /// The linear layer's state and the pre-activation `x W + b`.
    type State = (LinearState, FlexTensor);

    fn forward(&self, [x, weight, bias]: [FlexTensor; 3], isa: Option<Isa>) -> (FlexTensor, Self::State) {
        let [m, n] = [dims::<2>(&x)[0], dims::<2>(&weight)[1]];
        let mut z = Vec::new();
        // SAFETY: the epilogue writes GELU of every row of the product (`linear_rows` hands it
        // every row once), each at its own offset.
        let y = unsafe {
            filled_through(m * n, |y| {
                z = linear_rows(&[&x], &weight, &bias, None, isa, |first, rows| {
                    #[allow(clippy::redundant_locals)]
                    let y = y; // the whole `Shared` (Sync), not its pointer
                    let dst = std::slice::from_raw_parts_mut(y.0.add(first * n).cast(), rows.len());
                    gelu_chunk(isa, dst, rows);
                })
            })
        };
        let z = new_tensor(z, &[m, n]);
        (new_tensor(y, &[m, n]), (LinearState { parts: vec![x], weight }, z))
    }

    fn infer(&self, [x, weight, bias]: [FlexTensor; 3], isa: Option<Isa>) -> FlexTensor {
        let [m, n] = [dims::<2>(&x)[0], dims::<2>(&weight)[1]];
        new_tensor(linear_rows(&[&x], &weight, &bias, None, isa, |_, rows| gelu_in_place(isa, rows)), &[m, n])
    }

    fn backward(
        self,
        (state, z): Self::State,
        dy: FlexTensor,
        wanted: [bool; 3],
        isa: Option<Isa>,
    ) -> [Option<FlexTensor>; 3] {
        layer_backward(state, gelu_backward(&z, &dy, isa), wanted, isa)
    }
}

/// `gelu(x W + b)` over the last axis (exact GELU, as [`crate::gelu`]), as one op: GELU runs on
/// each block of rows of the product while it is in cache, and the backward is GELU's then the
/// linear layer's. The same values as [`linear`] then [`crate::gelu`], bit for bit.
///
/// # Shapes
/// - x: `[..., K]`, weight: `[K, N]` (burn's layout), bias: `[N]`
/// - output: `[..., N]`
pub fn linear_gelu<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<D> {
    let shape = x.dims();
    let [k, n] = weight.dims();
    let mut out_shape = shape;
    out_shape[D - 1] = n;
    let x = x.reshape([shape[..D - 1].iter().product::<usize>(), k]); // [M, K]
    let y: Tensor<2> = dispatch::run(LinearGelu, [placed(&x), placed(&weight), placed(&bias)])
        .unwrap_or_else(|| reference::gelu(reference::linear(x, weight, bias)));
    y.reshape(out_shape)
}

/// `r + (gelu(x W1 + b1) W2 + b2)` on `[M, K]` rows, both layers on a block of rows at a time:
/// the hidden activations of the block (`[96, H]`, 96 KB at the presets' `H = 256`) are still in
/// L2 when the second product reads them, where after [`linear_gelu`] over all rows they come back
/// from L3 or memory (`[96, 256] x [256, 64]` ran 1.15-1.3x as fast on a block still in L2, one
/// thread). The training forward keeps the pre-activations and the hidden activations (the
/// backward of each layer needs them); inference keeps neither. The same products, GELU and sums
/// as `linear_add(linear_gelu(x, W1, b1), W2, b2, r)`: the same values, bit for bit.
#[derive(Debug)]
struct MlpAdd;

#[derive(Clone, Debug)]
struct MlpState {
    /// The first layer's input and weight.
    fc1: LinearState,
    /// Its pre-activations `x W1 + b1`.
    z: FlexTensor,
    /// The second layer's input (the hidden activations) and weight.
    fc2: LinearState,
}

/// [`MlpAdd`]'s output; with `keep`, the pre-activations and hidden activations (`[M, H]` each)
/// written through those pointers too.
///
/// # Safety
/// `keep`'s pointers address `M H` floats each, written by no one else meanwhile.
unsafe fn mlp_rows(
    [x, w1, b1, w2, b2, r]: &[FlexTensor; 6],
    isa: Option<Isa>,
    keep: Option<(Shared, Shared)>,
) -> Vec<f32> {
    let ([m, k], [_, h], [_, n]) = (dims::<2>(x), dims::<2>(w1), dims::<2>(w2));
    let (x, r) = (x.storage::<f32>(), r.storage::<f32>());
    let (w1, b1, w2, b2) = (w1.storage::<f32>(), b1.storage::<f32>(), w2.storage::<f32>(), b2.storage::<f32>());
    assert!(x.len() == m * k && r.len() == m * n && w1.len() == k * h && w2.len() == h * n);
    let (rows, sub) = (row_block(m), direct_gemm::ROW_BLOCK);
    // The block's hidden activations where they are not kept: one `[96, H]` buffer per thread.
    let scratch = || Vec::<f32>::with_capacity(if keep.is_none() { sub * h } else { 0 });
    let block = |scratch: &mut Vec<f32>, first: usize, dst: &mut [std::mem::MaybeUninit<f32>]| {
        let count = dst.len() / n;
        // SAFETY: rows first..first + count of the kept [M, H] buffers, this block's alone.
        let (z, hidden) = match keep {
            Some((z, hidden)) => unsafe {
                let at = |p: Shared| std::slice::from_raw_parts_mut(p.0.add(first * h).cast(), count * h);
                (at(z), Some(at(hidden)))
            },
            None => (&mut scratch.spare_capacity_mut()[..count * h], None),
        };
        let z = rows_product(&[(&x[first * k..], k, w1)], b1, None, z, isa);
        let hidden: &[f32] = match hidden {
            Some(hidden) => {
                gelu_chunk(isa, hidden, z);
                // SAFETY: gelu_chunk wrote every element.
                unsafe { assume_written(hidden) }
            }
            None => {
                gelu_in_place(isa, z);
                z
            }
        };
        rows_product(&[(hidden, h, w2)], b2, Some(&r[first * n..]), dst, isa);
    };
    // SAFETY: `block` writes every element of the rows it is given.
    let (out, _) = unsafe {
        par_filled(m * n, rows * n, scratch, |scratch, i, dst| {
            for (j, dst) in dst.chunks_mut(sub * n).enumerate() {
                block(scratch, i * rows + j * sub, dst);
            }
        })
    };
    out
}

impl FusedOp<6> for MlpAdd {
    type State = MlpState;

    fn forward(&self, inputs: [FlexTensor; 6], isa: Option<Isa>) -> (FlexTensor, MlpState) {
        let ([m, _], [_, h], [_, n]) = (dims::<2>(&inputs[0]), dims::<2>(&inputs[1]), dims::<2>(&inputs[3]));
        let (mut hidden, mut out) = (Vec::new(), Vec::new());
        // SAFETY: mlp_rows writes every row of both buffers once, through the pointers.
        let z = unsafe {
            filled_through(m * h, |z| {
                hidden = filled_through(m * h, |hid| out = mlp_rows(&inputs, isa, Some((z, hid))))
            })
        };
        let [x, w1, _, w2, ..] = inputs;
        let state = MlpState {
            fc1: LinearState { parts: vec![x], weight: w1 },
            z: new_tensor(z, &[m, h]),
            fc2: LinearState { parts: vec![new_tensor(hidden, &[m, h])], weight: w2 },
        };
        (new_tensor(out, &[m, n]), state)
    }

    fn infer(&self, inputs: [FlexTensor; 6], isa: Option<Isa>) -> FlexTensor {
        let ([m, _], [_, n]) = (dims::<2>(&inputs[0]), dims::<2>(&inputs[3]));
        // SAFETY: nothing kept.
        new_tensor(unsafe { mlp_rows(&inputs, isa, None) }, &[m, n])
    }

    /// The second layer's backward, GELU's, then the first layer's: what the autodiff of
    /// [`linear_add`] after [`linear_gelu`] runs.
    fn backward(self, state: MlpState, dy: FlexTensor, wanted: [bool; 6], isa: Option<Isa>) -> [Option<FlexTensor>; 6] {
        let [want_x, want_w1, want_b1, want_w2, want_b2, want_r] = wanted;
        let want_fc1 = want_x || want_w1 || want_b1;
        let dr = want_r.then(|| dy.clone());
        let [d_hidden, dw2, db2] = layer_backward(state.fc2, dy, [want_fc1, want_w2, want_b2], isa);
        let [dx, dw1, db1] = match d_hidden {
            Some(d_hidden) => {
                layer_backward(state.fc1, gelu_backward(&state.z, &d_hidden, isa), [want_x, want_w1, want_b1], isa)
            }
            None => [None, None, None],
        };
        [dx, dw1, db1, dw2, db2, dr]
    }
}

/// `residual + (gelu(x W1 + b1) W2 + b2)` over the last axis (a transformer block's MLP and its
/// residual), as one op, a block of 96 rows at a time (its hidden activations stay in L2); the
/// same values as [`linear_gelu`] then [`linear_add`], bit for bit.
///
/// # Shapes
/// - x: `[..., K]`, w1: `[K, H]`, b1: `[H]`, w2: `[H, N]`, b2: `[N]` (burn's layout), residual:
///   `[..., N]`
/// - output: `[..., N]`
pub fn mlp_add<const D: usize>(
    x: Tensor<D>,
    (w1, b1): (Tensor<2>, Tensor<1>),
    (w2, b2): (Tensor<2>, Tensor<1>),
    residual: Tensor<D>,
) -> Tensor<D> {
    let shape = x.dims();
    let (k, n) = (w1.dims()[0], w2.dims()[1]);
    let out_shape = residual.dims();
    let m = shape[..D - 1].iter().product::<usize>();
    let (x, r) = (x.reshape([m, k]), residual.reshape([m, n])); // [M, K], [M, N]
    let inputs = [placed(&x), placed(&w1), placed(&b1), placed(&w2), placed(&b2), placed(&r)];
    let y: Tensor<2> = dispatch::run(MlpAdd, inputs)
        .unwrap_or_else(|| r + reference::linear(reference::gelu(reference::linear(x, w1, b1)), w2, b2));
    y.reshape(out_shape)
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
    let y: Tensor<2> = dispatch::run(LinearParts::<3>, [placed(&x), placed(&weight), placed(&bias)])
        .unwrap_or_else(|| reference::linear(x, weight, bias));
    y.reshape(out_shape)
}

/// `cat([x, y], -1) W + b` without the concatenation: one op whose products accumulate onto the
/// bias (`x` against W's first `K_x` rows, then `y` against the rest), gradients for all four
/// inputs. What U-ViT's decoder blocks compute on the main path and the scaled long skip.
///
/// # Shapes
/// - x: `[..., K_x]`, y: `[..., K_y]` (the same leading axes), weight: `[K_x + K_y, N]` (burn's
///   layout), bias: `[N]`
/// - output: `[..., N]`
pub fn linear_cat<const D: usize>(x: Tensor<D>, y: Tensor<D>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<D> {
    let shape = x.dims();
    let (kx, ky) = (shape[D - 1], y.dims()[D - 1]);
    let [k, n] = weight.dims();
    assert_eq!(kx + ky, k, "linear_cat: the inputs' widths {kx} + {ky} against the weight's {k} rows");
    let mut out_shape = shape;
    out_shape[D - 1] = n;
    let m = shape[..D - 1].iter().product::<usize>();
    let (x, y) = (x.reshape([m, kx]), y.reshape([m, ky])); // [M, K_x], [M, K_y]
    let out: Tensor<2> = dispatch::run(LinearParts::<4>, [placed(&x), placed(&y), placed(&weight), placed(&bias)])
        .unwrap_or_else(|| reference::linear_cat(x, y, weight, bias));
    out.reshape(out_shape)
}
