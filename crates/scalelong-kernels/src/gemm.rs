//! Matrix products on strided views: gemm, or the direct kernels (`direct_gemm.rs`) where the
//! CPU has them and the views allow.

use crate::{Isa, direct_gemm};

/// `dst [m, n] (= or +=) beta * lhs [m, k] x rhs [k, n]`, every matrix given by its pointer and
/// (row, column) strides, on the calling thread.
///
/// # Safety
/// Every addressed element must lie inside its allocation; `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided(
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
pub(crate) unsafe fn matmul(
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
                direct_gemm::Addends::accumulate(accumulate),
                (lhs.0, lhs.1 as usize, lhs.2 as usize),
                (rhs.0, rhs.1 as usize),
            );
        } else {
            gemm_strided((m, n, k), dst, accumulate, lhs, rhs, beta);
        }
    }
}

/// `rows` rows of `cols` values, `stride` apart in `src`, transposed into `dst` (`cols` rows of
/// `rows` values, `dst_stride` apart) and multiplied by `scale`: a right factor the direct kernel
/// can read by rows, or an image channels-last. On AVX2, 8 x 8
/// blocks are transposed in registers: element by element, attention's per-head transposes of
/// K (65 x 16, stride 192) were 5-7% of U-ViT sampling, each a scattered store.
pub(crate) fn transpose_block(
    src: &[f32],
    rows: usize,
    cols: usize,
    stride: usize,
    scale: f32,
    dst: &mut [f32],
    dst_stride: usize,
) {
    assert!(dst_stride >= rows);
    assert!(
        (rows == 0 || src.len() >= (rows - 1) * stride + cols)
            && (cols == 0 || dst.len() >= (cols - 1) * dst_stride + rows)
    );
    let (mut rows_done, mut cols_done) = (0, cols);
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx2.detected() {
        (rows_done, cols_done) = (rows / 8 * 8, cols / 8 * 8);
        // SAFETY: AVX2 checked; the blocks read rows < rows_done, columns < cols_done of `src`
        // and write the first `rows` values of `cols` rows of `dst` (the asserts above).
        unsafe { transpose_blocks_avx2(src, (rows_done, cols_done), (stride, dst_stride), scale, dst) };
    }
    // What the blocks left: the last columns of their rows, then the last rows.
    let element = |dst: &mut [f32], r: usize, c: usize| dst[c * dst_stride + r] = src[r * stride + c] * scale;
    for r in 0..rows_done {
        for c in cols_done..cols {
            element(dst, r, c);
        }
    }
    for r in rows_done..rows {
        for c in 0..cols {
            element(dst, r, c);
        }
    }
}

/// The 8 x 8 blocks of [`transpose_block`] within the first `rows_done` rows and `cols_done`
/// columns (multiples of 8).
///
/// # Safety
/// AVX2 present; the blocks lie inside `src` (rows `stride` apart) and `dst` (rows `dst_stride`
/// apart).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_blocks_avx2(
    src: &[f32],
    (rows_done, cols_done): (usize, usize),
    (stride, dst_stride): (usize, usize),
    scale: f32,
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    let scale = _mm256_set1_ps(scale);
    for r0 in (0..rows_done).step_by(8) {
        for c0 in (0..cols_done).step_by(8) {
            // SAFETY: rows r0..r0 + 8, columns c0..c0 + 8 of src; values r0..r0 + 8 of rows
            // c0..c0 + 8 of dst.
            unsafe {
                let row = |i: usize| _mm256_mul_ps(_mm256_loadu_ps(src.as_ptr().add((r0 + i) * stride + c0)), scale);
                let r: [__m256; 8] = std::array::from_fn(row);
                // Pairs of rows interleaved, then pairs of those: each vector of `u` holds four
                // rows of columns m (low half) and m + 4 (high half).
                let t: [__m256; 8] = std::array::from_fn(|i| {
                    let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
                    if i % 2 == 0 { _mm256_unpacklo_ps(a, b) } else { _mm256_unpackhi_ps(a, b) }
                });
                let u: [__m256; 8] = std::array::from_fn(|i| {
                    let (a, b) = (t[i / 4 * 4 + i % 2], t[i / 4 * 4 + i % 2 + 2]);
                    if i % 4 < 2 { _mm256_shuffle_ps::<0x44>(a, b) } else { _mm256_shuffle_ps::<0xee>(a, b) }
                });
                for j in 0..8 {
                    // u[k] (k < 4) holds columns of rows 0..4, u[k + 4] of rows 4..8; column j
                    // is half (j / 4) of each.
                    let k = (j % 4) / 2 + 2 * (j % 2);
                    let column = if j < 4 {
                        _mm256_permute2f128_ps::<0x20>(u[k], u[k + 4])
                    } else {
                        _mm256_permute2f128_ps::<0x31>(u[k], u[k + 4])
                    };
                    _mm256_storeu_ps(dst.as_mut_ptr().add((c0 + j) * dst_stride + r0), column);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element lands where the element-by-element transpose puts it, scaled the same way
    /// (so bit for bit), on shapes with and without whole 8 x 8 blocks and leftover rows and
    /// columns.
    #[test]
    fn transpose_block_moves_every_element() {
        let shapes =
            [(65, 16, 192, 65), (8, 8, 8, 8), (17, 11, 13, 17), (3, 20, 20, 8), (16, 24, 30, 21), (0, 4, 4, 0)];
        for (rows, cols, stride, dst_stride) in shapes {
            let src: Vec<f32> = (0..rows.max(1) * stride).map(|i| (i as f32).sin()).collect();
            let mut dst = vec![f32::NAN; cols * dst_stride];
            transpose_block(&src, rows, cols, stride, 0.25, &mut dst, dst_stride);
            for c in 0..cols {
                for r in 0..rows {
                    assert_eq!(dst[c * dst_stride + r], src[r * stride + c] * 0.25, "{rows}x{cols}: ({r}, {c})");
                }
                // The values between rows of `dst` are left alone.
                assert!(dst[c * dst_stride + rows..(c + 1) * dst_stride].iter().all(|v| v.is_nan()), "{rows}x{cols}");
            }
        }
    }
}
