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
pub(crate) fn transpose_block(src: &[f32], rows: usize, cols: usize, stride: usize, scale: f32, dst: &mut [f32]) {
    for r in 0..rows {
        for (c, &v) in src[r * stride..][..cols].iter().enumerate() {
            dst[c * rows + r] = v * scale;
        }
    }
}
