//! 2-D convolutions (groups 1, dilation 1, a bias): stride 1 with symmetric zero padding, and
//! ADM's 3x3 stride-2 down-sampling, as implicit GEMMs.
//!
//! With the input zero-padded to `[C, Hp, Wp]` per image, output row y, column x reads input
//! `(y + i) * Wp + (x + j)` for kernel tap (i, j). Computing the output on an extended grid of
//! `Ho x Wp` positions (the last `Wp - Wo` columns of each row are garbage and dropped) makes the
//! input of every tap a plain strided matrix `[C, Ho * Wp]` at offset `i * Wp + j`, so the
//! convolution is `kh * kw` accumulated GEMMs `[C_out, C] x [C, Ho Wp]` per image, with no im2col
//! buffer. The input gradient is the same convolution of the output gradient with the flipped,
//! transposed kernel (strides only, nothing is copied), and the weight gradient is a GEMM per tap
//! against the same shifted views. (A channels-last variant that merges the taps of a kernel row
//! into one GEMM measured 2x slower here: its transposing copy costs more than it saves.) The
//! direct kernels (`direct_conv.rs`) compute the same sums in register tiles (on AVX-512 a
//! same-size convolution reads the unpadded input with masked loads instead), and their weight
//! gradient runs channels-last (along positions, as the forward, below 8 input channels).

use crate::dispatch::{self, FusedOp, dims, new_tensor, placed};
use crate::gemm::gemm_strided;
use crate::math;
use crate::parallel::{assume_written, par_filled, sum_partials};
use crate::{Isa, direct_conv, reference};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use rayon::prelude::*;

/// Shapes of one stride-1 convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvGeom {
    pub(crate) batch: usize,
    pub(crate) c_in: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) c_out: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) pad: usize,
}

impl ConvGeom {
    pub(crate) fn hp(&self) -> usize {
        self.h + 2 * self.pad
    }
    pub(crate) fn wp(&self) -> usize {
        self.w + 2 * self.pad
    }
    pub(crate) fn ho(&self) -> usize {
        self.hp() + 1 - self.kh
    }
    pub(crate) fn wo(&self) -> usize {
        self.wp() + 1 - self.kw
    }
    /// Whether the output is as large as the input (`kh = kw = 2 pad + 1`).
    pub(crate) fn is_same(&self) -> bool {
        self.ho() == self.h && self.wo() == self.w
    }
    /// Offset of each tap (i, j), row by row, within a padded image: `i Wp + j`.
    pub(crate) fn tap_offsets(&self) -> impl Iterator<Item = usize> {
        let (kw, wp) = (self.kw, self.wp());
        (0..self.kh * kw).map(move |tap| tap / kw * wp + tap % kw)
    }
    /// Positions of the extended output grid of one image.
    pub(crate) fn q(&self) -> usize {
        self.ho() * self.wp()
    }
    /// Floats of one padded input image, with slack for the garbage columns' reads past it.
    pub(crate) fn padded_len(&self) -> usize {
        self.c_in * self.hp() * self.wp() + self.kw
    }
}

/// Zero-padded copies of every image of `x` (`[B, C, H, W]`), `g.padded_len()` floats each.
fn pad_images(x: &[f32], g: &ConvGeom) -> Vec<f32> {
    let img = g.c_in * g.h * g.w;
    // SAFETY: `pad_image` writes each image's chunk whole.
    unsafe {
        par_filled(g.batch * g.padded_len(), g.padded_len(), || (), |_, b, dst| pad_image(&x[b * img..][..img], g, dst))
            .0
    }
}

/// Writes the zero-padded copy of one image `src` (`[C, H, W]`) into `dst`, all of its
/// `g.padded_len()` floats: per channel `pad` zero rows, the rows (zero margins around the image
/// row), `pad` zero rows; then the `kw` floats of slack.
fn pad_image(src: &[f32], g: &ConvGeom, dst: &mut [std::mem::MaybeUninit<f32>]) {
    let (wp, pad) = (g.wp(), g.pad);
    let zero = std::mem::MaybeUninit::new(0.0f32);
    let (planes, slack) = dst[..g.padded_len()].split_at_mut(g.c_in * g.hp() * wp);
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
}

/// A kernel as `kh * kw` matrices `[rows, cols]` (strides given): tap (i, j) starts at
/// `i * kw + j`, or at the flipped tap `(kh - 1 - i, kw - 1 - j)`.
#[derive(Clone, Copy)]
pub(crate) struct Taps<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) row_stride: isize,
    pub(crate) col_stride: isize,
    pub(crate) flipped: bool,
}

impl Taps<'_> {
    pub(crate) fn offset(&self, i: usize, j: usize, kh: usize, kw: usize) -> usize {
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
pub(crate) fn crop_extended(ext: &[f32], g: &ConvGeom, dst: &mut [std::mem::MaybeUninit<f32>]) {
    let (wp, q, wo) = (g.wp(), g.q(), g.wo());
    for (o, out_rows) in dst.chunks_exact_mut(g.ho() * wo).enumerate() {
        for (y, row) in out_rows.chunks_exact_mut(wo).enumerate() {
            row.write_copy_of_slice(&ext[o * q + y * wp..][..wo]);
        }
    }
}

/// The images a convolution reads, and what becomes of the padded copies it makes of them.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Padded images, `g.padded_len()` floats each (the stride-2 convolution's phases).
    Padded(&'a [f32]),
    /// The images, padded in one batch where the kernel reads them padded, and the padded batch
    /// returned: a weight gradient reads it again.
    KeepPadded(&'a [f32]),
    /// The images, each padded into a per-thread buffer just before it is convolved, where the
    /// kernel reads them padded: nothing reads the padded copy again (sampling, the input
    /// gradient), and a buffer of one image stays in cache where a padded batch (17 MB for 64
    /// images of 64 channels at 32x32) goes to memory and back.
    Images(&'a [f32]),
}

/// `[B, C_out, Ho, Wo]` (+ bias): the convolution of the images of `source` with `taps`
/// (`[C_out, C_in]` each): by the direct kernels where the CPU has them, as GEMMs otherwise.
/// Images are read padded unless the kernel reads them as they are (AVX-512, same-size
/// convolutions). Also returns the padded batch when `source` asks to keep it and one was made.
fn convolve_images(
    source: Source,
    g: &ConvGeom,
    taps: Taps,
    bias: Option<&[f32]>,
    isa: Option<Isa>,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let q = g.q();
    let img_out = g.c_out * g.ho() * g.wo();
    let padded = matches!(source, Source::Padded(_));
    let direct = isa.map(|isa| direct_conv::PackedKernel::new(taps, g, isa, padded));
    let pads = !padded && direct.as_ref().is_none_or(|kernel| kernel.reads_padded());
    let (x, xp) = match source {
        Source::Padded(x) | Source::Images(x) => (x, None),
        Source::KeepPadded(x) => (x, pads.then(|| pad_images(x, g))),
    };
    // Floats per image of `src`, and whether each image is padded as it is convolved.
    let len = if padded || xp.is_some() { g.padded_len() } else { g.c_in * g.h * g.w };
    let pad_each = pads && xp.is_none();
    let src = xp.as_deref().unwrap_or(x);
    // The extended grid only where a kernel needs it (AVX2, gemm).
    let ext_len = if direct.as_ref().is_none_or(|kernel| kernel.needs_extended()) { g.c_out * q } else { 0 };
    let pad_len = if pad_each { g.padded_len() } else { 0 };
    // SAFETY: each image's chunk [c_out, ho, wo] is written whole (`convolve`, `crop_extended`);
    // a padded image is written whole (`pad_image`) before it is read.
    let out = unsafe {
        par_filled(
            g.batch * img_out,
            img_out,
            || {
                let ones = if bias.is_some() && direct.is_none() { vec![1.0f32; q] } else { Vec::new() };
                (vec![0.0f32; ext_len], ones, vec![std::mem::MaybeUninit::<f32>::uninit(); pad_len])
            },
            |(ext, ones, padded_image), b, dst| {
                let mut src = &src[b * len..(b + 1) * len];
                if pad_each {
                    pad_image(src, g, padded_image);
                    src = assume_written(padded_image);
                }
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
/// by the channels-last direct kernel where it applies ([`direct_conv::WeightGrad`]), else by the
/// direct kernel along positions where the CPU has one, as a GEMM per tap otherwise.
fn conv_weight_grad((x, padded): (&[f32], bool), g: &ConvGeom, dy: &[f32], isa: Option<Isa>) -> (Vec<f32>, Vec<f32>) {
    let (wp, q) = (g.wp(), g.q());
    // The channels-last kernel reads the images as they are; the others read them padded.
    let xp = (!padded && !direct_conv::WeightGrad::applies(g, isa)).then(|| pad_images(x, g));
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
            let mut channels_last = direct_conv::WeightGrad::new(g, isa);
            // The output gradient on the extended grid, for the other kernels (the garbage columns
            // stay 0).
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
fn conv_flex(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    pad: usize,
    isa: Option<Isa>,
) -> (FlexTensor, ConvInput) {
    let g = conv_geom(x, weight, pad);
    // Only the channels-last weight gradient reads the images unpadded.
    let source = if direct_conv::WeightGrad::applies(&g, isa) {
        Source::Images(x.storage())
    } else {
        Source::KeepPadded(x.storage())
    };
    let (out, xp) = convolve_images(source, &g, forward_taps(weight.storage(), &g), Some(bias.storage()), isa);
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

/// The backward of both convolutions: `dx` by the transposed convolution, `dW` and `db` from the
/// kept input.
fn conv_backward(
    state: ConvState,
    grad: FlexTensor,
    [want_x, want_w, want_b]: [bool; 3],
    isa: Option<Isa>,
) -> [Option<FlexTensor>; 3] {
    let ConvState { input, weight, geom: g, phases_of } = state;
    let grad = grad.storage::<f32>(); // [B, C_out, Ho, Wo]
    let dx = want_x.then(|| {
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
        let (dx, _) = convolve_images(Source::Images(grad), &t, backward_taps(weight.storage(), &g), None, isa); // [B, C_in, H, W]
        match phases_of {
            Some(chw) => new_tensor(from_phases(&dx, g.batch, chw), &[g.batch, chw[0], chw[1], chw[2]]),
            None => new_tensor(dx, &[g.batch, g.c_in, g.h, g.w]),
        }
    });
    let (dw, db) = if want_w || want_b {
        let (dw, db) = conv_weight_grad(input.images(), &g, grad, isa);
        let dw = match phases_of {
            Some([c, _, _]) => new_tensor(kernel_from_phases(&dw, g.c_out, c), &[g.c_out, c, 3, 3]),
            None => new_tensor(dw, &[g.c_out, g.c_in, g.kh, g.kw]),
        };
        (want_w.then_some(dw), want_b.then(|| new_tensor(db, &[g.c_out])))
    } else {
        (None, None)
    };
    [dx, dw, db]
}

/// The stride-1 convolution with symmetric padding `padding`.
#[derive(Debug)]
struct Conv {
    padding: usize,
}

impl FusedOp<3> for Conv {
    type State = ConvState;

    fn forward(&self, [x, weight, bias]: [FlexTensor; 3], isa: Option<Isa>) -> (FlexTensor, ConvState) {
        let geom = conv_geom(&x, &weight, self.padding);
        let (out, input) = conv_flex(&x, &weight, &bias, self.padding, isa);
        (out, ConvState { input, weight, geom, phases_of: None })
    }

    /// Pads each image as it is convolved: no weight gradient reads the padded images.
    fn infer(&self, [x, weight, bias]: [FlexTensor; 3], isa: Option<Isa>) -> FlexTensor {
        let g = conv_geom(&x, &weight, self.padding);
        let taps = forward_taps(weight.storage(), &g);
        let (out, _) = convolve_images(Source::Images(x.storage()), &g, taps, Some(bias.storage()), isa);
        new_tensor(out, &[g.batch, g.c_out, g.ho(), g.wo()])
    }

    fn backward(
        self,
        state: ConvState,
        grad: FlexTensor,
        wanted: [bool; 3],
        isa: Option<Isa>,
    ) -> [Option<FlexTensor>; 3] {
        conv_backward(state, grad, wanted, isa)
    }
}

/// ADM's 3x3 stride-2 convolution with padding 1, on the input's phases.
#[derive(Debug)]
struct ConvStride2;

impl FusedOp<3> for ConvStride2 {
    type State = ConvState;

    fn forward(&self, [x, weight, bias]: [FlexTensor; 3], isa: Option<Isa>) -> (FlexTensor, ConvState) {
        let [_, c, h, w] = dims::<4>(&x);
        let (out, phases, w2, geom) = conv_stride2_flex(&x, &weight, &bias, isa);
        let input = ConvInput::Padded(std::sync::Arc::new(phases));
        (out, ConvState { input, weight: w2, geom, phases_of: Some([c, h, w]) })
    }

    fn backward(
        self,
        state: ConvState,
        grad: FlexTensor,
        wanted: [bool; 3],
        isa: Option<Isa>,
    ) -> [Option<FlexTensor>; 3] {
        conv_backward(state, grad, wanted, isa)
    }
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
    dispatch::run(Conv { padding }, [placed(&x), placed(&weight), placed(&bias)])
        .unwrap_or_else(|| reference::conv2d(x, weight, bias, padding))
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
    dispatch::run(ConvStride2, [placed(&x), placed(&weight), placed(&bias)])
        .unwrap_or_else(|| reference::conv2d_stride2(x, weight, bias))
}

/// Returns the output, the phase images (kept for the weight gradient), the phase kernel and the
/// geometry of the stride-1 convolution on the phases.
fn conv_stride2_flex(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    isa: Option<Isa>,
) -> (FlexTensor, Vec<f32>, FlexTensor, ConvGeom) {
    let [batch, c, h, w] = dims::<4>(x);
    let [c_out, ..] = dims::<4>(weight);
    let g = ConvGeom { batch, c_in: 4 * c, h: h / 2 + 1, w: w / 2 + 1, c_out, kh: 2, kw: 2, pad: 0 };
    let phases = to_phases(x.storage(), &g, [c, h, w]);
    let w2 = new_tensor(kernel_to_phases(weight.storage(), c_out, c), &[c_out, 4 * c, 2, 2]);
    let (out, _) =
        convolve_images(Source::Padded(&phases), &g, forward_taps(w2.storage(), &g), Some(bias.storage()), isa);
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
                let (u, a) = (y.div_ceil(2), (y + 1) % 2);
                for (x_, out) in row.iter_mut().enumerate() {
                    let (v, bb) = (x_.div_ceil(2), (x_ + 1) % 2);
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
