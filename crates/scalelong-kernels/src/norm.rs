//! Normalisation: group norm (optionally followed by SiLU) and layer norm, each one op with a
//! two-pass backward.

use crate::dispatch::{self, FusedOp, new_tensor, placed};
use crate::math::{self, vectorised_fn};
use crate::parallel::{assume_written, par_filled, rows_per_task, sum_partials};
use crate::{Isa, reference};
use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::prelude::*;
use rayon::prelude::*;

/// What follows a normalisation inside the same op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Nothing: the normalised, affine-transformed values.
    Identity,
    /// `y sigmoid(y)`, as ADM's ResBlocks apply after each GroupNorm.
    Silu,
}

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
    activation: Activation,
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
            if g.activation == Activation::Silu {
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
fn group_norm_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    g: &NormGeom,
    isa: Option<Isa>,
) -> (Vec<f32>, Vec<(f32, f32)>) {
    let n = g.group_len();
    // SAFETY: group_norm_run writes its whole group.
    unsafe {
        par_filled(
            x.len(),
            n,
            || (),
            |_, run, dst| group_norm_run(isa, dst, &x[run * n..][..n], gamma, beta, g, run % g.groups * g.per_group()),
        )
    }
}

vectorised_fn! {
    /// The input gradient of one group (as [`group_norm_run`]) into `dst`; returns each channel's
    /// (sum dy, sum dy xhat), dy taken after the SiLU: its beta and gamma gradients.
    ///
    /// dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) with dxhat = dy gamma.
    fn group_norm_grad_run(
        dst: &mut [std::mem::MaybeUninit<f32>],
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
            if g.activation == Activation::Silu {
                let (scale, shift) = (r * gamma[c], beta[c] - m * r * gamma[c]);
                for ((o, &xv), &d) in row.iter_mut().zip(rows_x).zip(rows_d) {
                    let y = xv * scale + shift;
                    let sg = math::sigmoid(y);
                    o.write(d * sg * (1.0 + y * (1.0 - sg)));
                }
            } else {
                row.write_copy_of_slice(rows_d);
            }
            // SAFETY: every element of the row was written just above.
            let row = &*unsafe { assume_written(row) };
            per_channel.push((math::sum(row, |d| d), math::sum2(row, rows_x, |d, xv| d * (xv - m) * r)));
        }
        let (mut a, mut b) = (0.0f32, 0.0f32);
        for (ci, &(sd, sdx)) in per_channel.iter().enumerate() {
            a += sd * gamma[c0 + ci];
            b += sdx * gamma[c0 + ci];
        }
        let n = g.group_len() as f32;
        let (a, b) = (a / n, b / n);
        // SAFETY: the rows of every channel were written above.
        let dst = unsafe { assume_written(dst) };
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
    isa: Option<Isa>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, cg) = (g.group_len(), g.per_group());
    assert!(x.len() == dout.len() && x.len() == n * stats.len());
    // SAFETY: group_norm_grad_run writes its whole group (into memory not zeroed first).
    let (dx, sums) = unsafe {
        par_filled(
            x.len(),
            n,
            || (),
            |_, run, dst| {
                let (xs, ds) = (&x[run * n..][..n], &dout[run * n..][..n]);
                group_norm_grad_run(isa, dst, xs, ds, gamma, beta, stats[run], g, run % g.groups * cg)
            },
        )
    };
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

/// The group norm over `[B, C, H, W]`; the backward keeps the input, the affine parameters and
/// each group's statistics.
#[derive(Debug)]
struct GroupNorm {
    groups: usize,
    eps: f64,
    activation: Activation,
}

#[derive(Debug, Clone)]
struct GroupNormState {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    stats: Vec<(f32, f32)>,
    geom: NormGeom,
}

impl FusedOp<3> for GroupNorm {
    type State = GroupNormState;

    fn forward(&self, [x, gamma, beta]: [FlexTensor; 3], isa: Option<Isa>) -> (FlexTensor, GroupNormState) {
        let shape: Vec<usize> = x.layout().shape().iter().copied().collect();
        let geom = NormGeom {
            channels: shape[1],
            spatial: shape[2..].iter().product(),
            groups: self.groups,
            activation: self.activation,
            eps: self.eps,
        };
        let (out, stats) = group_norm_forward(x.storage(), gamma.storage(), beta.storage(), &geom, isa);
        (new_tensor(out, &shape), GroupNormState { x, gamma, beta, stats, geom })
    }

    fn backward(
        self,
        state: GroupNormState,
        grad: FlexTensor,
        wanted: [bool; 3],
        isa: Option<Isa>,
    ) -> [Option<FlexTensor>; 3] {
        let GroupNormState { x, gamma, beta, stats, geom } = state;
        let shape: Vec<usize> = x.layout().shape().iter().copied().collect();
        let (dx, dgamma, dbeta) =
            group_norm_backward(x.storage(), gamma.storage(), beta.storage(), &stats, grad.storage(), &geom, isa);
        let [want_x, want_gamma, want_beta] = wanted;
        [
            want_x.then(|| new_tensor(dx, &shape)),
            want_gamma.then(|| new_tensor(dgamma, &[geom.channels])),
            want_beta.then(|| new_tensor(dbeta, &[geom.channels])),
        ]
    }
}

/// A group norm with per-channel affine parameters over `[B, C, H, W]`, then `activation`, as one
/// op (burn's `GroupNorm`, and SiLU, compose about ten).
///
/// # Shapes
/// - x: `[B, C, H, W]`, gamma and beta: `[C]`; `groups` divides `C`
/// - output: `[B, C, H, W]`
pub fn group_norm(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f64,
    activation: Activation,
) -> Tensor<4> {
    dispatch::run(GroupNorm { groups, eps, activation }, [placed(&x), placed(&gamma), placed(&beta)])
        .unwrap_or_else(|| reference::group_norm(x, gamma, beta, groups, eps, activation))
}

// Layer norm over the last axis: flex's fused forward kernel, and a fused backward.

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
fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    dout: &[f32],
    d: usize,
    eps: f64,
    isa: Option<Isa>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0.0f32; x.len()];
    let block = rows_per_task(d) * d;
    let partials: Vec<(Vec<f32>, Vec<f32>)> =
        (dx.par_chunks_mut(block).zip(x.par_chunks(block).zip(dout.par_chunks(block))))
            .map(|(dst, (xs, ds))| {
                let (mut dg, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
                layer_norm_grad_rows(isa, dst, xs, ds, gamma, &mut dg, &mut db, d, eps);
                (dg, db)
            })
            .collect();
    let (dgs, dbs): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
    (dx, sum_partials(dgs.into_iter(), d), sum_partials(dbs.into_iter(), d))
}

/// The layer norm over the last axis; the backward keeps the input and gamma (it recomputes the
/// statistics).
#[derive(Debug)]
struct LayerNorm {
    eps: f64,
}

impl FusedOp<3> for LayerNorm {
    /// The input and gamma.
    type State = (FlexTensor, FlexTensor);

    fn forward(&self, [x, gamma, beta]: [FlexTensor; 3], _: Option<Isa>) -> (FlexTensor, Self::State) {
        // flex's own fused forward kernel.
        let out = <Flex as ModuleOps<Flex>>::layer_norm(x.clone(), gamma.clone(), Some(beta), self.eps);
        (out, (x, gamma))
    }

    fn backward(
        self,
        (x, gamma): Self::State,
        grad: FlexTensor,
        wanted: [bool; 3],
        isa: Option<Isa>,
    ) -> [Option<FlexTensor>; 3] {
        let shape: Vec<usize> = x.layout().shape().iter().copied().collect();
        let d = *shape.last().expect("layer norm input has a last axis");
        let (dx, dgamma, dbeta) = layer_norm_backward(x.storage(), gamma.storage(), grad.storage(), d, self.eps, isa);
        let [want_x, want_gamma, want_beta] = wanted;
        [
            want_x.then(|| new_tensor(dx, &shape)),
            want_gamma.then(|| new_tensor(dgamma, &[d])),
            want_beta.then(|| new_tensor(dbeta, &[d])),
        ]
    }
}

/// A layer norm with gamma and beta over the last axis, as one op: flex's fused forward kernel and
/// one fused backward node.
///
/// # Shapes
/// - x: `[..., D]`, gamma and beta: `[D]`
/// - output: `[..., D]`
pub fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Tensor<D> {
    dispatch::run(LayerNorm { eps }, [placed(&x), placed(&gamma), placed(&beta)])
        .unwrap_or_else(|| reference::layer_norm(x, gamma, beta, eps))
}
