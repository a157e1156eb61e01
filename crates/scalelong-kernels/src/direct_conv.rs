//! Direct convolution kernels for AVX2 + FMA and for AVX-512: the convolution of one image, and
//! its weight gradient, with no GEMM and no packing of the input.
//!
//! Why: as GEMMs, the convolution is `kh kw` products with a small inner dimension (`C_in`,
//! 16-64 in the presets), and gemm packs each shifted input view again and reads and writes the
//! whole output once per tap; that held it near half of this CPU's peak. Here a tile of output
//! channels x grid positions stays in vector registers for the whole sum over taps and channels:
//! on the extended grid of `convolve_images` (or, on AVX-512, on the unpadded image of a
//! same-size convolution: [`Grid512`]) every tap's input is a contiguous run, so per (tap,
//! channel) the tile loads a few vectors of consecutive input values, broadcasts one weight per
//! output channel and does an FMA per pair. The output is written once. Side by side on the
//! presets' forward convolutions the AVX-512 path ran at 194-216 GFLOP/s on 2 cores (the FMA
//! peak measured 230).

use crate::Isa;
use crate::conv::{ConvGeom, Taps};
use std::mem::MaybeUninit;

/// Output channels per AVX2 tile: 5 x 2 accumulators, two input vectors and a broadcast weight
/// fit AVX2's 16 vector registers, or 4 x 2 where that computes fewer padding channels in the
/// last block ([`avx2_rows`]). 5 x 2 does 10 FMAs per 7 loads and broadcasts, but 20 channels'
/// worth for 16 and 35 for 32: 4 x 2 took 0.74-0.81x the time on the UNet's 16- and 32-channel
/// forward convolutions (side by side, one thread each). 4 x 3 needs all 16 registers, and the
/// compiler spilled its accumulators (1.5x the time); 6 x 2 fits (15 registers) and was faster
/// for 16 channels, slower for 32.
const ROWS: usize = 5;
const FEWER_ROWS: usize = 4;
/// Extended-grid positions per tile (two 8-lane vectors).
const PIXELS: usize = 16;

/// The rows of the AVX2 tile for `c_out` output channels: the one that computes fewer padding
/// channels, [`ROWS`] on a tie.
fn avx2_rows(c_out: usize) -> usize {
    let padded = |rows: usize| c_out.div_ceil(rows) * rows;
    if padded(FEWER_ROWS) < padded(ROWS) { FEWER_ROWS } else { ROWS }
}

/// The kernel's taps laid out for the tile: for each block of `rows` output channels
/// ([`avx2_rows`] or [`ROWS_512`]; the last block padded with zeros), `[kh kw][C_in][rows]`, so a tile reads its
/// weights in order.
pub(super) struct PackedKernel {
    data: Vec<f32>,
    tiling: Tiling,
    /// Output channels per block.
    rows: usize,
    c_in: usize,
    c_out: usize,
}

/// The tile a kernel is packed for, and where it reads.
enum Tiling {
    /// [`avx2_rows`] channels on the extended grid of padded images, through an extended-grid buffer;
    /// the input offset of each tap.
    Avx2 { offsets: Vec<usize> },
    /// [`ROWS_512`] channels on its grid, stored straight into the output.
    Avx512(Grid512),
}

impl PackedKernel {
    /// The kernel packed for `isa`'s tile (`convolve` checks that the CPU has `isa`), to read
    /// padded images (`g.padded_len()` floats each) if `padded`, else whichever the tile takes
    /// ([`PackedKernel::reads_padded`]).
    pub(super) fn new(taps: Taps, g: &ConvGeom, isa: Isa, padded: bool) -> Self {
        let t = g.kh * g.kw;
        let rows = match isa {
            Isa::Avx2 => avx2_rows(g.c_out),
            Isa::Avx512 => ROWS_512,
        };
        let blocks = g.c_out.div_ceil(rows);
        let mut data = vec![0.0f32; blocks * g.c_in * t * rows];
        for o in 0..g.c_out {
            let (blk, r) = (o / rows, o % rows);
            for c in 0..g.c_in {
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let w = taps.data[o * taps.row_stride as usize
                            + c * taps.col_stride as usize
                            + taps.offset(i, j, g.kh, g.kw)];
                        data[((blk * t + i * g.kw + j) * g.c_in + c) * rows + r] = w;
                    }
                }
            }
        }
        // Only the AVX-512 tile reads unpadded images, and only for a "same" convolution.
        let tiling = match isa {
            Isa::Avx2 => Tiling::Avx2 { offsets: g.tap_offsets().collect() },
            Isa::Avx512 if padded || !g.is_same() => Tiling::Avx512(Grid512::extended(g)),
            Isa::Avx512 => Tiling::Avx512(Grid512::same(g)),
        };
        Self { data, tiling, rows, c_in: g.c_in, c_out: g.c_out }
    }

    /// Whether `convolve` reads padded images: on AVX2, for a convolution that changes the size,
    /// and where `new` was told so; an AVX-512 kernel for a "same" convolution reads the images
    /// themselves otherwise.
    pub(super) fn reads_padded(&self) -> bool {
        match &self.tiling {
            Tiling::Avx2 { .. } => true,
            Tiling::Avx512(grid) => grid.padded,
        }
    }

    /// Whether `convolve` needs an extended-grid buffer (`[C_out, Ho Wp]`): the AVX2 tile does.
    pub(super) fn needs_extended(&self) -> bool {
        matches!(self.tiling, Tiling::Avx2 { .. })
    }

    /// `dst [C_out, Ho, Wo]` = bias + the convolution of one image `src` (padded or not, as
    /// [`PackedKernel::reads_padded`] says), every element written. The AVX2 tile computes the
    /// extended grid into `ext` (`[C_out, Ho Wp]`), which is then cropped; the AVX-512 tile
    /// stores each vector's output positions straight into `dst`.
    pub(super) fn convolve(
        &self,
        src: &[f32],
        g: &ConvGeom,
        bias: Option<&[f32]>,
        ext: &mut [f32],
        dst: &mut [MaybeUninit<f32>],
    ) {
        let image = if self.reads_padded() { g.padded_len() } else { g.c_in * g.h * g.w };
        assert!(src.len() >= image && dst.len() >= self.c_out * g.ho() * g.wo());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the instruction set checked; the asserts bound every access (see `tile` and
        // `tile512`).
        unsafe {
            match &self.tiling {
                Tiling::Avx2 { offsets } => {
                    assert!(Isa::Avx2.detected(), "this CPU lacks AVX2 and FMA");
                    assert!(ext.len() >= self.c_out * g.q());
                    match self.rows {
                        FEWER_ROWS => convolve_avx2::<FEWER_ROWS>(self, offsets, src, g, bias, ext),
                        _ => convolve_avx2::<ROWS>(self, offsets, src, g, bias, ext),
                    }
                    crate::conv::crop_extended(ext, g, dst);
                }
                Tiling::Avx512(grid) => {
                    assert!(Isa::Avx512.detected(), "this CPU lacks AVX-512");
                    convolve_avx512(self, src, grid, g.ho() * g.wo(), bias, dst)
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no instruction set is detected off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn convolve_avx2<const R: usize>(
    k: &PackedKernel,
    offsets: &[usize],
    src: &[f32],
    g: &ConvGeom,
    bias: Option<&[f32]>,
    ext: &mut [f32],
) {
    let (q, plane, t) = (g.q(), g.hp() * g.wp(), offsets.len());
    assert_eq!(k.rows, R);
    // Whole tiles read up to position q - 1 at the largest offset, which `padded_len`'s slack
    // covers (as for the GEMM path); the last positions go through the scalar loop.
    let main = q / PIXELS * PIXELS;
    for (blk, w) in k.data.chunks_exact(k.c_in * t * R).enumerate() {
        let o0 = blk * R;
        let rows = R.min(k.c_out - o0);
        let init: [f32; R] = std::array::from_fn(|r| if r < rows { bias.map_or(0.0, |b| b[o0 + r]) } else { 0.0 });
        for p in (0..main).step_by(PIXELS) {
            // SAFETY: reads src[c plane + p + offset + 0..16] for c < c_in, within padded_len;
            // writes ext[(o0 + r) q + p + 0..16] for r < rows, within c_out q.
            unsafe {
                tile::<R>(
                    src.as_ptr().add(p),
                    plane,
                    offsets,
                    k.c_in,
                    w.as_ptr(),
                    &init,
                    ext.as_mut_ptr().add(o0 * q + p),
                    q,
                    rows,
                )
            };
        }
        for p in main..q {
            for r in 0..rows {
                let mut acc = init[r];
                for (tap, &off) in offsets.iter().enumerate() {
                    for c in 0..k.c_in {
                        acc += w[(tap * k.c_in + c) * R + r] * src[c * plane + p + off];
                    }
                }
                ext[(o0 + r) * q + p] = acc;
            }
        }
    }
}

/// One tile: `R` output channels x `PIXELS` positions, summed over every channel and tap in
/// registers, then stored (the first `rows` channels) at `out` (row stride `out_stride`).
///
/// # Safety
/// AVX2 and FMA present; `src + c plane + offset + 0..PIXELS` readable for every channel and
/// offset, `w` holding `c_in * offsets.len() * R` floats, `out + r out_stride + 0..PIXELS`
/// writable for `r < rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    src: *const f32,
    plane: usize,
    offsets: &[usize],
    c_in: usize,
    w: *const f32,
    init: &[f32; R],
    out: *mut f32,
    out_stride: usize,
    rows: usize,
) {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc: [[__m256; 2]; R] = std::array::from_fn(|r| [_mm256_set1_ps(init[r]); 2]);
        let mut w = w;
        for &off in offsets {
            let mut x = src.add(off);
            for _ in 0..c_in {
                let x0 = _mm256_loadu_ps(x);
                let x1 = _mm256_loadu_ps(x.add(8));
                for (r, a) in acc.iter_mut().enumerate() {
                    let wv = _mm256_broadcast_ss(&*w.add(r));
                    a[0] = _mm256_fmadd_ps(wv, x0, a[0]);
                    a[1] = _mm256_fmadd_ps(wv, x1, a[1]);
                }
                x = x.add(plane);
                w = w.add(R);
            }
        }
        for (r, a) in acc.iter().enumerate().take(rows) {
            _mm256_storeu_ps(out.add(r * out_stride), a[0]);
            _mm256_storeu_ps(out.add(r * out_stride + 8), a[1]);
        }
    }
}

/// The AVX-512 tile: 4 output channels x 64 positions, 16 of the 32 vector registers. Against
/// the AVX2 tile (same FLOPs a cycle on the Zen 4 it was chosen on, whose AVX-512 unit is 256
/// bits wide) it needs 8 loads and broadcasts for 16 FMAs instead of 7 for 10, and its masked
/// loads and stores replace the scalar tail. Timed side by side on the presets' convolutions
/// (forward, three rounds), 4 x 64 ran 1.04-1.15x as fast as 8 x 32, and 6 x 64 0.93-0.98x. On
/// a Zen 5 (512-bit FMA units; `sample::unet-small:1`, one pinned thread, alternating builds) 6 x
/// 64 ran 1.00-1.02x and 8 x 48 0.64-0.65x (24 accumulators; not examined further), so 4 x 64 stays.
const ROWS_512: usize = 4;
const VECS_512: usize = 4;

/// Where the AVX-512 tile reads and writes, per vector of 16 positions of the grid it runs over.
///
/// On the extended grid of a padded image ([`Grid512::extended`]) every tap's input is a
/// contiguous run at a fixed offset, and the garbage columns are dropped at the store. For a
/// "same" convolution (output as large as the input) the same holds on the unpadded image
/// ([`Grid512::same`]): output position `q` reads `q + (i - pad) W + (j - pad)` for tap (i, j),
/// and the lanes whose input lies in the padding (across a row edge, above or below the image)
/// are masked off at the load. That saves the padded copy, the garbage columns' work (6% of
/// the FMAs at 32x32, 25% at 8x8) and the compression at the store.
pub(super) struct Grid512 {
    /// Whether it runs over padded images.
    padded: bool,
    /// Positions the tile runs over.
    len: usize,
    /// Floats between input channels.
    plane: usize,
    /// Input offset of each tap from the position.
    offsets: Vec<isize>,
    /// Per vector and tap (`[vector][tap]`): the lanes whose input is read.
    loads: Vec<u16>,
    /// Per vector: the lanes that are outputs, and where the first of them goes in an output
    /// channel.
    stores: Vec<(u16, usize)>,
}

impl Grid512 {
    /// The extended grid of `g`'s padded images (`g.padded_len()` floats each).
    pub(super) fn extended(g: &ConvGeom) -> Self {
        let (q, wp, wo) = (g.q(), g.wp(), g.wo());
        let taps = g.kh * g.kw;
        let vectors = q.div_ceil(16);
        let lanes = |p: usize| ((1u32 << 16.min(q - p)) - 1) as u16;
        Self {
            padded: true,
            len: q,
            plane: g.hp() * wp,
            offsets: g.tap_offsets().map(|off| off as isize).collect(),
            loads: (0..vectors).flat_map(|v| std::iter::repeat_n(lanes(16 * v), taps)).collect(),
            stores: (0..vectors)
                .map(|v| {
                    let p = 16 * v;
                    let keep = (0..16.min(q - p)).filter(|i| (p + i) % wp < wo).fold(0u16, |m, i| m | 1 << i);
                    (keep, p / wp * wo + (p % wp).min(wo))
                })
                .collect(),
        }
    }

    /// The unpadded images of a "same" convolution (`g.is_same()`), `C_in H W` floats each.
    pub(super) fn same(g: &ConvGeom) -> Self {
        assert!(g.is_same(), "Grid512::same: {g:?} changes the size");
        let (h, w, pad) = (g.h as isize, g.w as isize, g.pad as isize);
        let n = g.h * g.w;
        let taps: Vec<(isize, isize)> =
            (0..g.kh as isize).flat_map(|i| (0..g.kw as isize).map(move |j| (i - pad, j - pad))).collect();
        let vectors = n.div_ceil(16);
        let inside = |p: usize, (di, dj): (isize, isize)| {
            (0..16.min(n - p))
                .filter(|i| {
                    let (y, x) = (((p + i) / g.w) as isize + di, ((p + i) % g.w) as isize + dj);
                    (0..h).contains(&y) && (0..w).contains(&x)
                })
                .fold(0u16, |m, i| m | 1 << i)
        };
        Self {
            padded: false,
            len: n,
            plane: n,
            offsets: taps.iter().map(|&(di, dj)| di * w + dj).collect(),
            loads: (0..vectors).flat_map(|v| taps.iter().map(move |&tap| inside(16 * v, tap))).collect(),
            stores: (0..vectors).map(|v| (((1u32 << 16.min(n - 16 * v)) - 1) as u16, 16 * v)).collect(),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn convolve_avx512(
    k: &PackedKernel,
    src: &[f32],
    grid: &Grid512,
    out_plane: usize,
    bias: Option<&[f32]>,
    dst: &mut [MaybeUninit<f32>],
) {
    let (n, t) = (grid.len, grid.offsets.len());
    let out = dst.as_mut_ptr().cast::<f32>();
    for (blk, w) in k.data.chunks_exact(k.c_in * t * ROWS_512).enumerate() {
        let o0 = blk * ROWS_512;
        let rows = ROWS_512.min(k.c_out - o0);
        let init: [f32; ROWS_512] =
            std::array::from_fn(|r| if r < rows { bias.map_or(0.0, |b| b[o0 + r]) } else { 0.0 });
        for (i, p) in (0..n).step_by(16 * VECS_512).enumerate() {
            let v0 = VECS_512 * i;
            let store = |v: usize| grid.stores.get(v0 + v).copied().unwrap_or((0, 0));
            let loads = &grid.loads[v0 * t..];
            let (src, w, init, out) =
                (src.as_ptr().wrapping_add(p), w.as_ptr(), &init, out.wrapping_add(o0 * out_plane));
            // SAFETY: reads src[c plane + p + offset + lane] for the lanes `loads` lets through,
            // which the grid keeps inside the image; writes channels o0..o0 + rows of dst at
            // the output positions `stores` gives, within c_out Ho Wo. The last run of positions
            // takes the tile with as many vectors as it needs (8x8 images have 64 or 80).
            unsafe {
                match (n - p).div_ceil(16) {
                    1 => tile512::<1>(src, grid, k.c_in, w, init, out, out_plane, rows, loads, [store(0)]),
                    2 => tile512::<2>(src, grid, k.c_in, w, init, out, out_plane, rows, loads, [store(0), store(1)]),
                    3 => tile512::<3>(
                        src,
                        grid,
                        k.c_in,
                        w,
                        init,
                        out,
                        out_plane,
                        rows,
                        loads,
                        [store(0), store(1), store(2)],
                    ),
                    _ => tile512::<4>(
                        src,
                        grid,
                        k.c_in,
                        w,
                        init,
                        out,
                        out_plane,
                        rows,
                        loads,
                        [store(0), store(1), store(2), store(3)],
                    ),
                }
            };
        }
    }
}

/// One tile: [`ROWS_512`] output channels x `V` vectors of positions, summed over every channel
/// and tap in registers (`loads[v T + tap]` the lanes of vector v read for that tap); then each
/// vector's output lanes (`stores`: their mask and offset in a channel) compressed and stored
/// for the first `rows` channels at `out` (channel stride `out_plane`).
///
/// # Safety
/// AVX-512 F present; `src + c grid.plane + offset + 16 v + lane` readable for every channel,
/// tap and lane `loads` lets through, `w` holding `c_in * taps * ROWS_512` floats, `out + r
/// out_plane + offset + 0..popcount(mask)` writable for `r < rows` and every store.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile512<const V: usize>(
    src: *const f32,
    grid: &Grid512,
    c_in: usize,
    w: *const f32,
    init: &[f32; ROWS_512],
    out: *mut f32,
    out_plane: usize,
    rows: usize,
    loads: &[u16],
    stores: [(u16, usize); V],
) {
    use std::arch::x86_64::*;
    let t = grid.offsets.len();
    unsafe {
        let mut acc: [[__m512; V]; ROWS_512] = std::array::from_fn(|r| [_mm512_set1_ps(init[r]); V]);
        let mut w = w;
        for (tap, &off) in grid.offsets.iter().enumerate() {
            let masks: [u16; V] = std::array::from_fn(|v| loads[v * t + tap]);
            // Offsets can point before the image (masked-off lanes): wrapping arithmetic.
            let mut x = src.wrapping_offset(off);
            for _ in 0..c_in {
                let xv: [__m512; V] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], x.wrapping_add(16 * v)));
                for (r, a) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*w.add(r));
                    for (a, &xv) in a.iter_mut().zip(&xv) {
                        *a = _mm512_fmadd_ps(wv, xv, *a);
                    }
                }
                x = x.wrapping_add(grid.plane);
                w = w.add(ROWS_512);
            }
        }
        for (r, a) in acc.iter().enumerate().take(rows) {
            for (&a, &(keep, at)) in a.iter().zip(&stores) {
                let kept = ((1u32 << keep.count_ones()) - 1) as u16;
                _mm512_mask_storeu_ps(out.add(r * out_plane + at), kept, _mm512_maskz_compress_ps(keep, a));
            }
        }
    }
}

/// Output and input channels per weight-gradient tile: 2 x 5 accumulators, two output-gradient
/// vectors and one input vector fit the 16 vector registers.
const GRAD_OUT: usize = 2;
const GRAD_IN: usize = 5;

/// `dw [C_out, C_in, kh, kw] +=` the weight gradient of one image: for each tap,
/// `dw[o, c, tap] += sum_p ext[o, p] src[c, p + offset(tap)]` over the extended grid (`ext` is the
/// output gradient `[C_out, Ho Wp]` with zeros in the garbage columns, `src` the padded image).
/// Each tile keeps `GRAD_OUT x GRAD_IN` sums as vectors across 8 positions, reduced once at the end.
///
/// For inputs of fewer than 8 channels (the image's own), where [`WeightGrad`]'s channel lanes
/// would be mostly empty. Panics unless the CPU has AVX2 and FMA.
pub(super) fn accumulate_weight_grad(src: &[f32], g: &ConvGeom, ext: &[f32], dw: &mut [f32]) {
    assert!(Isa::Avx2.detected(), "the direct kernels need AVX2 and FMA");
    assert!(src.len() >= g.padded_len() && ext.len() >= g.c_out * g.q() && dw.len() >= g.c_out * g.c_in * g.kh * g.kw);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA checked; the asserts bound every access (see `position_tile`).
    unsafe {
        weight_grad_avx2(src, g, ext, dw)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_grad_avx2(src: &[f32], g: &ConvGeom, ext: &[f32], dw: &mut [f32]) {
    let (q, plane, t) = (g.q(), g.hp() * g.wp(), g.kh * g.kw);
    for (tap, off) in g.tap_offsets().enumerate() {
        for o0 in (0..g.c_out).step_by(GRAD_OUT) {
            for c0 in (0..g.c_in).step_by(GRAD_IN) {
                let (no, nc) = (GRAD_OUT.min(g.c_out - o0), GRAD_IN.min(g.c_in - c0));
                let dy = ext[o0 * q..].as_ptr();
                let x = src[c0 * plane + off..].as_ptr();
                // SAFETY: rows o0..o0 + no of ext and rows c0..c0 + nc of the image at this
                // tap's offset, each q long, are inside their slices (as in `convolve_avx2`).
                let sums = unsafe { position_tile_dispatch(no, nc, dy, q, x, plane, q) };
                for (o, row) in sums.iter().enumerate().take(no) {
                    for (c, &v) in row.iter().enumerate().take(nc) {
                        dw[((o0 + o) * g.c_in + c0 + c) * t + tap] += v;
                    }
                }
            }
        }
    }
}

/// [`position_tile`] for `no <= GRAD_OUT` output and `nc <= GRAD_IN` input channels (each size its
/// own instance, so the sums stay in registers); unused entries are 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn position_tile_dispatch(
    no: usize,
    nc: usize,
    dy: *const f32,
    dy_stride: usize,
    x: *const f32,
    x_stride: usize,
    n: usize,
) -> [[f32; GRAD_IN]; GRAD_OUT] {
    macro_rules! dispatch {
        ($(($o:literal, $c:literal)),*) => {
            match (no, nc) {
                $(($o, $c) => unsafe { position_tile::<$o, $c>(dy, dy_stride, x, x_stride, n) },)*
                _ => unreachable!("tile {no} x {nc}"),
            }
        };
    }
    dispatch!((2, 5), (2, 4), (2, 3), (2, 2), (2, 1), (1, 5), (1, 4), (1, 3), (1, 2), (1, 1))
}

/// `sums[o][c] = sum_{p < n} dy[o dy_stride + p] x[c x_stride + p]` for `O x C` rows.
///
/// # Safety
/// AVX2 and FMA present; rows `o < O` of `dy` and `c < C` of `x` readable for `n` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
// The O x C register tile is indexed by both loop counters, as the formula reads.
#[allow(clippy::needless_range_loop)]
unsafe fn position_tile<const O: usize, const C: usize>(
    dy: *const f32,
    dy_stride: usize,
    x: *const f32,
    x_stride: usize,
    n: usize,
) -> [[f32; GRAD_IN]; GRAD_OUT] {
    use std::arch::x86_64::*;
    let main = n / 8 * 8;
    let mut sums = [[0.0f32; GRAD_IN]; GRAD_OUT];
    unsafe {
        let mut acc: [[__m256; C]; O] = [[_mm256_setzero_ps(); C]; O];
        for p in (0..main).step_by(8) {
            let d: [__m256; O] = std::array::from_fn(|o| _mm256_loadu_ps(dy.add(o * dy_stride + p)));
            for c in 0..C {
                let xv = _mm256_loadu_ps(x.add(c * x_stride + p));
                for o in 0..O {
                    acc[o][c] = _mm256_fmadd_ps(d[o], xv, acc[o][c]);
                }
            }
        }
        for o in 0..O {
            for c in 0..C {
                let mut lanes = [0.0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[o][c]);
                let tail: f32 = (main..n).map(|p| *dy.add(o * dy_stride + p) * *x.add(c * x_stride + p)).sum();
                sums[o][c] = lanes.iter().sum::<f32>() + tail;
            }
        }
    }
    sums
}

/// The weight gradient over a thread's images, vectorised across input channels: each image is
/// first copied channels-last (`[Hp Wp + kw][stride]`), so a vector of input channels at one
/// position is one contiguous load, and a tile's sums are the gradient's own entries (no
/// horizontal reduction) that stay in registers over every position of the image.
///
/// Why: vectorised along positions instead (the extended grid, as the forward tile), each tile
/// of 2 output x 5 input channels streamed 7 rows of the image from L2 per 10 FMAs and ended in
/// reductions; it ran at about half the forward tile's rate and was 30% of the conv UNet's
/// training step (one thread, perf). An AVX-512 copy of it (4 x 6 tiles) measured no faster.
///
/// For inputs of 8 channels or more ([`WeightGrad::applies`]; the narrower image channels keep
/// [`accumulate_weight_grad`], whose lanes they fill), two tiles, by the instruction set:
/// - AVX-512, for 3x3, 2x2 (the stride-2 convolution's phases) and 1x1 kernels: 3 output
///   channels x 9 taps (or 6 x 4, 8 x 1) = 27 vectors of 16 input channels, masked to `C_in`;
///   per position 9 loads, 3 broadcasts and 27 FMAs.
/// - AVX2, every other case: 3 output channels x 3 taps of one kernel row (or 4 x 2, 6 x 1) =
///   9 vectors of 8 input channels, with `C_in` rounded up to whole vectors (the extra lanes
///   hold zeros); per position 3 loads, 3 broadcasts and 9 FMAs, in 13 of the 16 registers.
pub(super) struct WeightGrad {
    /// The AVX-512 tile (else AVX2's).
    wide: bool,
    /// Floats per position of `xt` and per (output channel, tap) of `acc`: `C_in`, rounded up to
    /// a multiple of 8 for the AVX2 tile.
    stride: usize,
    /// The current image, channels-last; the padding positions, the `kw` positions of slack and
    /// the lanes past `C_in` stay zero from its creation.
    xt: Vec<f32>,
    /// `[C_out][taps][stride]`, summed over the images so far.
    acc: Vec<f32>,
    offsets: Vec<usize>,
}

/// Output channels per AVX2 tile for `taps` taps of one kernel row (at most 3): `O x T` sums,
/// `min(O, T)` values held across the FMAs and one load fit in 13 registers.
fn avx2_grad_rows(taps: usize) -> usize {
    match taps {
        3 => 3,
        2 => 4,
        _ => 6,
    }
}

impl WeightGrad {
    /// Whether the kernels running on `isa` (none: the portable path) take `g`'s weight gradient
    /// channels-last.
    pub(super) fn applies(g: &ConvGeom, isa: Option<Isa>) -> bool {
        isa.is_some() && g.c_in >= 8
    }

    /// For the instruction set the kernels run on (`accumulate` checks that the CPU has it);
    /// `None` where it does not apply ([`WeightGrad::applies`]).
    pub(super) fn new(g: &ConvGeom, isa: Option<Isa>) -> Option<Self> {
        let taps = g.kh * g.kw;
        let wide = isa == Some(Isa::Avx512) && matches!(taps, 9 | 4 | 1);
        let stride = if wide { g.c_in } else { g.c_in.next_multiple_of(8) };
        Self::applies(g, isa).then(|| Self {
            wide,
            stride,
            xt: vec![0.0; (g.hp() * g.wp() + g.kw) * stride],
            acc: vec![0.0; g.c_out * taps * stride],
            offsets: g.tap_offsets().collect(),
        })
    }

    /// Adds the gradient of one image: `src` the image (`C_in H W` floats), or the padded image
    /// (`g.padded_len()` floats) if `padded`; `dy` its output gradient `[C_out, Ho, Wo]`.
    pub(super) fn accumulate(&mut self, src: &[f32], padded: bool, g: &ConvGeom, dy: &[f32]) {
        let (c_in, out_plane, stride) = (g.c_in, g.ho() * g.wo(), self.stride);
        // Rows of `cols` positions, `plane` floats per channel, and where row 0 starts in the
        // padded grid (the unpadded image's rows sit inside its zero margins).
        let (rows, cols, plane, start) =
            if padded { (g.hp(), g.wp(), g.hp() * g.wp(), 0) } else { (g.h, g.w, g.h * g.w, g.pad * g.wp() + g.pad) };
        assert!(src.len() >= c_in * plane && dy.len() >= g.c_out * out_plane);
        for y in 0..rows {
            let at = (start + y * g.wp()) * stride;
            crate::gemm::transpose_block(&src[y * cols..], c_in, cols, plane, 1.0, &mut self.xt[at..], stride);
        }
        if self.wide {
            self.accumulate_avx512(g, dy);
        } else {
            self.accumulate_avx2(g, dy);
        }
    }

    fn accumulate_avx512(&mut self, g: &ConvGeom, dy: &[f32]) {
        let (c_in, out_plane, taps) = (g.c_in, g.ho() * g.wo(), self.offsets.len());
        assert!(Isa::Avx512.detected(), "this CPU lacks AVX-512");
        #[cfg(target_arch = "x86_64")]
        for c0 in (0..c_in).step_by(16) {
            let mask = ((1u32 << (c_in - c0).min(16)) - 1) as u16;
            // Output channels per tile: 27, 24 and 8 sums in registers.
            let step = match taps {
                9 => 3,
                4 => 6,
                _ => 8,
            };
            for o0 in (0..g.c_out).step_by(step) {
                let acc = self.acc[(o0 * taps) * c_in + c0..].as_mut_ptr();
                let (xt, dy) = (self.xt[c0..].as_ptr(), dy[o0 * out_plane..].as_ptr());
                macro_rules! tile {
                    ($t:literal: $($o:literal)*) => {
                        match step.min(g.c_out - o0) {
                            // SAFETY: AVX-512 checked; reads xt[(y Wp + x + offset) c_in + c0 +
                            // lane] for y < Ho, x < Wo (below Hp Wp + kw), dy channels o0..
                            // (Ho Wo each), and the masked-in lanes of acc rows o0.. (taps c_in
                            // each), all inside their buffers.
                            $($o => unsafe { grad_tile512::<$o, $t>(xt, c_in, self.offsets[..$t].try_into().unwrap(), dy, g, acc, mask) },)*
                            o => unreachable!("{o} output channels"),
                        }
                    };
                }
                match taps {
                    9 => tile!(9: 1 2 3),
                    4 => tile!(4: 1 2 3 4 5 6),
                    _ => tile!(1: 1 2 3 4 5 6 7 8),
                }
            }
        }
    }

    fn accumulate_avx2(&mut self, g: &ConvGeom, dy: &[f32]) {
        let (out_plane, stride, taps) = (g.ho() * g.wo(), self.stride, self.offsets.len());
        assert!(Isa::Avx2.detected(), "this CPU lacks AVX2 and FMA");
        // Every tile reads positions p + offset + t below Ho Wp + (kh - 1) Wp + kw - 1, inside
        // `xt`'s Hp Wp + kw positions.
        assert!(self.xt.len() >= (g.q() + self.offsets[taps - 1]) * stride);
        #[cfg(target_arch = "x86_64")]
        for c0 in (0..stride).step_by(8) {
            for i in 0..g.kh {
                for j0 in (0..g.kw).step_by(3) {
                    let (tap, t) = (i * g.kw + j0, 3.min(g.kw - j0));
                    let step = avx2_grad_rows(t);
                    for o0 in (0..g.c_out).step_by(step) {
                        let acc = self.acc[(o0 * taps + tap) * stride + c0..].as_mut_ptr();
                        let (xt, dy) =
                            (self.xt[self.offsets[tap] * stride + c0..].as_ptr(), dy[o0 * out_plane..].as_ptr());
                        macro_rules! tile {
                            ($t:literal: $($o:literal)*) => {
                                match step.min(g.c_out - o0) {
                                    // SAFETY: AVX2 checked; reads xt from (offset + y Wp + x + t')
                                    // stride + c0 for y < Ho, x < Wo, t' < t (the assert above),
                                    // dy channels o0.. (Ho Wo each), and acc rows o0.. (taps
                                    // stride each) at taps tap.., all inside their buffers.
                                    $($o => unsafe { grad_tile::<$o, $t>(xt, stride, dy, g, acc, taps * stride) },)*
                                    o => unreachable!("{o} output channels"),
                                }
                            };
                        }
                        match t {
                            3 => tile!(3: 1 2 3),
                            2 => tile!(2: 1 2 3 4),
                            _ => tile!(1: 1 2 3 4 5 6),
                        }
                    }
                }
            }
        }
    }

    /// Adds the sums into `dw` (`[C_out, C_in, kh, kw]`).
    pub(super) fn add_to(&self, dw: &mut [f32], g: &ConvGeom) {
        let taps = self.offsets.len();
        for o in 0..g.c_out {
            for tap in 0..taps {
                for c in 0..g.c_in {
                    dw[(o * g.c_in + c) * taps + tap] += self.acc[(o * taps + tap) * self.stride + c];
                }
            }
        }
    }
}

/// `acc[o acc_stride + t stride + lane] += sum_{y < Ho, x < Wo} dy[o Ho Wo + y Wo + x]
/// xt[(y Wp + x + t) stride + lane]` for `O` output channels, `T` consecutive taps and 8 lanes
/// (input channels).
///
/// # Safety
/// AVX2 and FMA present; every addressed element inside its allocation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
// The O x T register tile is indexed by both loop counters, as the formula reads.
#[allow(clippy::needless_range_loop)]
unsafe fn grad_tile<const O: usize, const T: usize>(
    xt: *const f32,
    stride: usize,
    dy: *const f32,
    g: &ConvGeom,
    acc: *mut f32,
    acc_stride: usize,
) {
    use std::arch::x86_64::*;
    let (wp, ho, wo) = (g.wp(), g.ho(), g.wo());
    unsafe {
        let at = |o: usize, t: usize| acc.add(o * acc_stride + t * stride);
        let mut sums: [[__m256; T]; O] = std::array::from_fn(|o| std::array::from_fn(|t| _mm256_loadu_ps(at(o, t))));
        for y in 0..ho {
            let (xt, dy) = (xt.add(y * wp * stride), dy.add(y * wo));
            for x in 0..wo {
                let d: [__m256; O] = std::array::from_fn(|o| _mm256_broadcast_ss(&*dy.add(o * ho * wo + x)));
                for t in 0..T {
                    let xv = _mm256_loadu_ps(xt.add((x + t) * stride));
                    for o in 0..O {
                        sums[o][t] = _mm256_fmadd_ps(d[o], xv, sums[o][t]);
                    }
                }
            }
        }
        for o in 0..O {
            for t in 0..T {
                _mm256_storeu_ps(at(o, t), sums[o][t]);
            }
        }
    }
}

/// `acc[o][t][lane] += sum_{y < Ho, x < Wo} dy[o Ho Wo + y Wo + x] xt[(y Wp + x + offsets[t])
/// c_in + lane]` for `O` output channels, `T` taps and the masked-in lanes (input channels).
///
/// # Safety
/// AVX-512 F present; every addressed element inside its allocation (`acc` rows `T c_in` apart,
/// tap rows `c_in` apart).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn grad_tile512<const O: usize, const T: usize>(
    xt: *const f32,
    c_in: usize,
    offsets: [usize; T],
    dy: *const f32,
    g: &ConvGeom,
    acc: *mut f32,
    mask: u16,
) {
    use std::arch::x86_64::*;
    let (wp, ho, wo) = (g.wp(), g.ho(), g.wo());
    unsafe {
        let at = |o: usize, t: usize| acc.add((o * T + t) * c_in);
        let mut sums: [[__m512; T]; O] =
            std::array::from_fn(|o| std::array::from_fn(|t| _mm512_maskz_loadu_ps(mask, at(o, t))));
        for y in 0..ho {
            for x in 0..wo {
                let (p, i) = (y * wp + x, y * wo + x);
                let d: [__m512; O] = std::array::from_fn(|o| _mm512_set1_ps(*dy.add(o * ho * wo + i)));
                for (t, &off) in offsets.iter().enumerate() {
                    let xv = _mm512_maskz_loadu_ps(mask, xt.add((p + off) * c_in));
                    for o in 0..O {
                        sums[o][t] = _mm512_fmadd_ps(d[o], xv, sums[o][t]);
                    }
                }
            }
        }
        for (o, row) in sums.iter().enumerate() {
            for (t, &s) in row.iter().enumerate() {
                _mm512_mask_storeu_ps(at(o, t), mask, s);
            }
        }
    }
}
