//! Direct convolution kernels for AVX2 + FMA and for AVX-512: the convolution of one padded
//! image on the extended grid of `conv_padded`, and its weight gradient (AVX2), with no GEMM and
//! no packing.
//!
//! Why: as GEMMs, the convolution is `kh kw` products with a small inner dimension (`C_in`,
//! 16-64 in the presets), and gemm packs each shifted input view again and reads and writes the
//! whole output once per tap; that held it near half of this CPU's peak. Here a tile of 5 output
//! channels x 16 grid positions stays in 10 vector registers for the whole sum over taps and
//! channels: per (tap, channel) two unaligned loads of 16 consecutive input values (the extended
//! grid makes every tap's input a contiguous run), five weight broadcasts and ten FMAs. The
//! output is written once.

use super::{ConvGeom, Isa, Taps};

/// Output channels per tile: 5 x 2 accumulators, two input vectors and a broadcast weight fit
/// AVX2's 16 vector registers. 6 fits too (15 registers); side by side it was faster for 16
/// channels and slower for 32 (the last block's padding), so no better on the presets overall.
const ROWS: usize = 5;
/// Extended-grid positions per tile (two 8-lane vectors).
const PIXELS: usize = 16;

/// The kernel's taps laid out for the tile: for each block of `rows` output channels ([`ROWS`] or
/// [`ROWS_512`]; the last block padded with zeros), `[kh kw][C_in][rows]`, so a tile reads its
/// weights in order.
pub(super) struct PackedKernel {
    data: Vec<f32>,
    /// The kernel's instruction set, which fixes the tile: [`ROWS`] or [`ROWS_512`] channels.
    isa: Isa,
    /// Input offset of each tap within a padded image: `i Wp + j`.
    offsets: Vec<usize>,
    c_in: usize,
    c_out: usize,
}

impl PackedKernel {
    /// The kernel packed for `isa`'s tile (`convolve` checks that the CPU has `isa`).
    pub(super) fn new(taps: Taps, g: &ConvGeom, isa: Isa) -> Self {
        let t = g.kh * g.kw;
        let rows = match isa {
            Isa::Avx2 => ROWS,
            Isa::Avx512 => ROWS_512,
        };
        let blocks = g.c_out.div_ceil(rows);
        let mut data = vec![0.0f32; blocks * g.c_in * t * rows];
        for o in 0..g.c_out {
            let (blk, r) = (o / rows, o % rows);
            for c in 0..g.c_in {
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let w = taps.data[o * taps.row_stride as usize + c * taps.col_stride as usize + taps.offset(i, j, g.kh, g.kw)];
                        data[((blk * t + i * g.kw + j) * g.c_in + c) * rows + r] = w;
                    }
                }
            }
        }
        let offsets = (0..g.kh).flat_map(|i| (0..g.kw).map(move |j| i * g.wp() + j)).collect();
        Self { data, isa, offsets, c_in: g.c_in, c_out: g.c_out }
    }

    /// `ext [C_out, Ho Wp]` = bias + the convolution of one padded image `src`
    /// (`g.padded_len()` floats).
    pub(super) fn convolve(&self, src: &[f32], g: &ConvGeom, bias: Option<&[f32]>, ext: &mut [f32]) {
        let q = g.q();
        assert!(self.isa.detected(), "this CPU lacks {:?}", self.isa);
        assert!(src.len() >= g.padded_len() && ext.len() >= self.c_out * q);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the instruction set checked; the asserts bound every access (see `tile` and
        // `tile512`).
        unsafe {
            match self.isa {
                Isa::Avx2 => convolve_avx2(self, src, g, bias, ext),
                Isa::Avx512 => convolve_avx512(self, src, g, bias, ext),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no instruction set is detected off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn convolve_avx2(k: &PackedKernel, src: &[f32], g: &ConvGeom, bias: Option<&[f32]>, ext: &mut [f32]) {
    let (q, plane, t) = (g.q(), g.hp() * g.wp(), k.offsets.len());
    // Whole tiles read up to position q - 1 at the largest offset, which `padded_len`'s slack
    // covers (as for the GEMM path); the last positions go through the scalar loop.
    let main = q / PIXELS * PIXELS;
    for (blk, w) in k.data.chunks_exact(k.c_in * t * ROWS).enumerate() {
        let o0 = blk * ROWS;
        let rows = ROWS.min(k.c_out - o0);
        let init: [f32; ROWS] = std::array::from_fn(|r| if r < rows { bias.map_or(0.0, |b| b[o0 + r]) } else { 0.0 });
        for p in (0..main).step_by(PIXELS) {
            // SAFETY: reads src[c plane + p + offset + 0..16] for c < c_in, within padded_len;
            // writes ext[(o0 + r) q + p + 0..16] for r < rows, within c_out q.
            unsafe { tile(src.as_ptr().add(p), plane, &k.offsets, k.c_in, w.as_ptr(), &init, ext.as_mut_ptr().add(o0 * q + p), q, rows) };
        }
        for p in main..q {
            for r in 0..rows {
                let mut acc = init[r];
                for (tap, &off) in k.offsets.iter().enumerate() {
                    for c in 0..k.c_in {
                        acc += w[(tap * k.c_in + c) * ROWS + r] * src[c * plane + p + off];
                    }
                }
                ext[(o0 + r) * q + p] = acc;
            }
        }
    }
}

/// One tile: `ROWS` output channels x `PIXELS` positions, summed over every channel and tap in
/// registers, then stored (the first `rows` channels) at `out` (row stride `out_stride`).
///
/// # Safety
/// AVX2 and FMA present; `src + c plane + offset + 0..PIXELS` readable for every channel and
/// offset, `w` holding `c_in * offsets.len() * ROWS` floats, `out + r out_stride + 0..PIXELS`
/// writable for `r < rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(src: *const f32, plane: usize, offsets: &[usize], c_in: usize, w: *const f32, init: &[f32; ROWS], out: *mut f32, out_stride: usize, rows: usize) {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc: [[__m256; 2]; ROWS] = std::array::from_fn(|r| [_mm256_set1_ps(init[r]); 2]);
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
                w = w.add(ROWS);
            }
        }
        for (r, a) in acc.iter().enumerate().take(rows) {
            _mm256_storeu_ps(out.add(r * out_stride), a[0]);
            _mm256_storeu_ps(out.add(r * out_stride + 8), a[1]);
        }
    }
}

/// The AVX-512 tile: 8 output channels x 32 positions, 16 of the 32 vector registers. Against
/// the AVX2 tile (same FLOPs a cycle on this CPU, whose AVX-512 unit is 256 bits wide) it needs
/// 10 loads and broadcasts for 16 FMAs instead of 7 for 10, and its masked loads and stores
/// replace the scalar tail.
const ROWS_512: usize = 8;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn convolve_avx512(k: &PackedKernel, src: &[f32], g: &ConvGeom, bias: Option<&[f32]>, ext: &mut [f32]) {
    const P: usize = 32;
    let (q, plane, t) = (g.q(), g.hp() * g.wp(), k.offsets.len());
    for (blk, w) in k.data.chunks_exact(k.c_in * t * ROWS_512).enumerate() {
        let o0 = blk * ROWS_512;
        let rows = ROWS_512.min(k.c_out - o0);
        let init: [f32; ROWS_512] = std::array::from_fn(|r| if r < rows { bias.map_or(0.0, |b| b[o0 + r]) } else { 0.0 });
        for p in (0..q).step_by(P) {
            let left = q - p;
            // SAFETY: reads src[c plane + p + offset + lane] for the masked-in lanes (p + lane <
            // q), within padded_len; writes ext[(o0 + r) q + p + lane] for r < rows, within c_out q.
            let (src, out) = unsafe { (src.as_ptr().add(p), ext.as_mut_ptr().add(o0 * q + p)) };
            // A last run of 16 or fewer positions takes the one-vector tile (8x8 images have 80).
            unsafe {
                if left > 16 {
                    tile512::<2>(src, plane, &k.offsets, k.c_in, w.as_ptr(), &init, out, q, rows, lane_masks(left))
                } else {
                    tile512::<1>(src, plane, &k.offsets, k.c_in, w.as_ptr(), &init, out, q, rows, lane_masks(left))
                }
            };
        }
    }
}

/// Masks of the `V` vectors of a tile with `left` positions to go: all lanes while `left >= 16 V`,
/// the first `left` otherwise.
fn lane_masks<const V: usize>(left: usize) -> [u16; V] {
    std::array::from_fn(|v| {
        let lanes = left.saturating_sub(16 * v).min(16);
        ((1u32 << lanes) - 1) as u16
    })
}

/// One tile: [`ROWS_512`] output channels x the masked-in lanes of `V` vectors of positions, summed over every channel and tap in registers, then stored (the first `rows`
/// channels) at `out` (row stride `out_stride`).
///
/// # Safety
/// AVX-512 F present; `src + c plane + offset + lane` readable for every channel, offset and
/// masked-in lane, `w` holding `c_in * offsets.len() * ROWS_512` floats, `out + r out_stride +
/// lane` writable for `r < rows` and every masked-in lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile512<const V: usize>(src: *const f32, plane: usize, offsets: &[usize], c_in: usize, w: *const f32, init: &[f32; ROWS_512], out: *mut f32, out_stride: usize, rows: usize, masks: [u16; V]) {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc: [[__m512; V]; ROWS_512] = std::array::from_fn(|r| [_mm512_set1_ps(init[r]); V]);
        let mut w = w;
        for &off in offsets {
            let mut x = src.add(off);
            for _ in 0..c_in {
                let xv: [__m512; V] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], x.add(16 * v)));
                for (r, a) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*w.add(r));
                    for (a, &xv) in a.iter_mut().zip(&xv) {
                        *a = _mm512_fmadd_ps(wv, xv, *a);
                    }
                }
                x = x.add(plane);
                w = w.add(ROWS_512);
            }
        }
        for (r, a) in acc.iter().enumerate().take(rows) {
            for (v, &a) in a.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(r * out_stride + 16 * v), masks[v], a);
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
/// Panics unless the CPU has AVX2 and FMA. (An AVX-512 copy with 4 x 6 tiles measured no faster:
/// the forward tile's gain came from its register blocking, which this reduction already has.)
pub(super) fn accumulate_weight_grad(src: &[f32], g: &ConvGeom, ext: &[f32], dw: &mut [f32]) {
    assert!(Isa::Avx2.detected(), "the direct kernels need AVX2 and FMA");
    assert!(src.len() >= g.padded_len() && ext.len() >= g.c_out * g.q() && dw.len() >= g.c_out * g.c_in * g.kh * g.kw);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA checked; the asserts bound every access (see `grad_tile`).
    unsafe {
        weight_grad_avx2(src, g, ext, dw)
    }
}


#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_grad_avx2(src: &[f32], g: &ConvGeom, ext: &[f32], dw: &mut [f32]) {
    let (q, plane, t) = (g.q(), g.hp() * g.wp(), g.kh * g.kw);
    for tap in 0..t {
        let off = tap / g.kw * g.wp() + tap % g.kw;
        for o0 in (0..g.c_out).step_by(GRAD_OUT) {
            for c0 in (0..g.c_in).step_by(GRAD_IN) {
                let (no, nc) = (GRAD_OUT.min(g.c_out - o0), GRAD_IN.min(g.c_in - c0));
                let dy = ext[o0 * q..].as_ptr();
                let x = src[c0 * plane + off..].as_ptr();
                // SAFETY: rows o0..o0 + no of ext and rows c0..c0 + nc of the image at this
                // tap's offset, each q long, are inside their slices (as in `convolve_avx2`).
                let sums = unsafe { grad_tile_dispatch(no, nc, dy, q, x, plane, q) };
                for (o, row) in sums.iter().enumerate().take(no) {
                    for (c, &v) in row.iter().enumerate().take(nc) {
                        dw[((o0 + o) * g.c_in + c0 + c) * t + tap] += v;
                    }
                }
            }
        }
    }
}

/// [`grad_tile`] for `no <= GRAD_OUT` output and `nc <= GRAD_IN` input channels (each size its
/// own instance, so the sums stay in registers); unused entries are 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_tile_dispatch(no: usize, nc: usize, dy: *const f32, dy_stride: usize, x: *const f32, x_stride: usize, n: usize) -> [[f32; GRAD_IN]; GRAD_OUT] {
    macro_rules! dispatch {
        ($(($o:literal, $c:literal)),*) => {
            match (no, nc) {
                $(($o, $c) => unsafe { grad_tile::<$o, $c>(dy, dy_stride, x, x_stride, n) },)*
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
unsafe fn grad_tile<const O: usize, const C: usize>(dy: *const f32, dy_stride: usize, x: *const f32, x_stride: usize, n: usize) -> [[f32; GRAD_IN]; GRAD_OUT] {
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
