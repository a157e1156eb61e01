//! A GEMM kernel for AVX2 + FMA without packing, for the linear layers' products whose inner
//! dimension is small (64-256 in the presets) and whose right factor fits in cache.
//!
//! Why: gemm packs both factors on every call and is tuned for large products; on
//! `[4160, 64] x [64, 192]` it ran about 1.6x slower than PyTorch's BLAS. Here a tile of 6 rows x
//! 16 columns of the product stays in 12 vector registers over the whole inner dimension: per
//! step two loads of a contiguous row of the right factor, six broadcasts of the left and twelve
//! FMAs; the product is written once. Same structure as `direct_conv`'s tile.

/// Rows per tile: 6 x 2 accumulators, two right-factor vectors and a broadcast fit AVX2's 16
/// vector registers.
const ROWS: usize = 6;
/// Columns per tile (two 8-lane vectors).
const COLS: usize = 16;

/// `dst [m, n] (= or +=) a [m, k] b [k, n]`: `dst` and `b` row-major and contiguous (row
/// strides `n`), `a` given by its row and column strides. Runs on the calling thread.
///
/// Panics unless `super::direct_conv::available()` (AVX2 and FMA), or when a slice is too short.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, a: &[f32], a_strides: (usize, usize), b: &[f32]) {
    assert!(super::direct_conv::available(), "the direct kernels need AVX2 and FMA");
    assert!(dst.len() >= m * n && b.len() >= k * n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || a.len() > (m - 1) * a_strides.0 + (k - 1) * a_strides.1);
    // SAFETY: AVX2 and FMA checked; the asserts bound every element addressed.
    unsafe { gemm_raw((m, n, k), (dst.as_mut_ptr(), n), accumulate, (a.as_ptr(), a_strides.0, a_strides.1), (b.as_ptr(), n)) }
}

/// [`gemm`] on pointers with strides: `dst` (row stride), `a` (row and column strides), `b`
/// (row stride); both `dst` and `b` have unit column stride.
///
/// # Safety
/// AVX2 and FMA present (`super::direct_conv::available()`); every addressed element inside
/// its allocation; `dst` not aliasing `a` or `b`, and written by no one else meanwhile.
pub(super) unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize),
    accumulate: bool,
    a: (*const f32, usize, usize),
    b: (*const f32, usize),
) {
    #[cfg(target_arch = "x86_64")]
    for k0 in (0..k.max(1)).step_by(INNER_BLOCK) {
        let kb = INNER_BLOCK.min(k - k0);
        // SAFETY: the caller's contract, on the inner block k0..k0 + kb.
        unsafe { gemm_block((m, n, kb), dst, accumulate || k0 > 0, (a.0.add(k0 * a.2), a.1, a.2), (b.0.add(k0 * b.1), b.1)) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the direct kernels exist on x86-64 only ({m}x{n}x{k}, {dst:?} {accumulate} {a:?} {b:?})")
}

/// Rows of the left factor every column slab is run over before the next rows: with an inner
/// dimension of 256 they take 96 KB, which stays in L2 across the slabs (without it, `256 -> 64`
/// re-read 2 MB of rows per slab and ran 0.84x gemm's speed).
const ROW_BLOCK: usize = 96;

/// Inner-dimension block: a long product (a weight gradient sums over every token) runs in blocks
/// whose slices of both factors stay in L2 while every tile reads them.
const INNER_BLOCK: usize = 256;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_block((m, n, k): (usize, usize, usize), (dst, drs): (*mut f32, usize), accumulate: bool, (a, ars, acs): (*const f32, usize, usize), (b, brs): (*const f32, usize)) {
    let main = n / COLS * COLS;
    // SAFETY (whole body): rows r0..r0 + rows of a and dst, columns n0..n0 + 16 of b and dst,
    // and the tail columns, all addressed within the caller's bounds.
    unsafe {
        for (m0, n0) in (0..m).step_by(ROW_BLOCK).flat_map(|m0| (0..main).step_by(COLS).map(move |n0| (m0, n0))) {
            for r0 in (m0..m.min(m0 + ROW_BLOCK)).step_by(ROWS) {
                let (ap, bp, dp) = (a.add(r0 * ars), b.add(n0), dst.add(r0 * drs + n0));
                match ROWS.min(m - r0) {
                    6 => tile::<6>(k, ap, ars, acs, bp, brs, dp, drs, accumulate),
                    5 => tile::<5>(k, ap, ars, acs, bp, brs, dp, drs, accumulate),
                    4 => tile::<4>(k, ap, ars, acs, bp, brs, dp, drs, accumulate),
                    3 => tile::<3>(k, ap, ars, acs, bp, brs, dp, drs, accumulate),
                    2 => tile::<2>(k, ap, ars, acs, bp, brs, dp, drs, accumulate),
                    _ => tile::<1>(k, ap, ars, acs, bp, brs, dp, drs, accumulate),
                }
            }
        }
        for r in 0..m {
            for c in main..n {
                let sum: f32 = (0..k).map(|kk| *a.add(r * ars + kk * acs) * *b.add(kk * brs + c)).sum();
                let d = dst.add(r * drs + c);
                *d = if accumulate { *d + sum } else { sum };
            }
        }
    }
}

/// `R` rows x 16 columns: `dst[r, 0..16] (= or +=) sum_kk a[r ars + kk acs] b[kk brs + 0..16]`.
///
/// # Safety
/// AVX2 and FMA present; every addressed element inside its allocation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(k: usize, a: *const f32, ars: usize, acs: usize, b: *const f32, brs: usize, dst: *mut f32, drs: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc: [[__m256; 2]; R] = [[_mm256_setzero_ps(); 2]; R];
        let (mut ak, mut bk) = (a, b);
        for _ in 0..k {
            let b0 = _mm256_loadu_ps(bk);
            let b1 = _mm256_loadu_ps(bk.add(8));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ak.add(r * ars));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
            ak = ak.add(acs);
            bk = bk.add(brs);
        }
        for (r, row) in acc.iter().enumerate() {
            let d = dst.add(r * drs);
            let (lo, hi) = if accumulate {
                (_mm256_add_ps(_mm256_loadu_ps(d), row[0]), _mm256_add_ps(_mm256_loadu_ps(d.add(8)), row[1]))
            } else {
                (row[0], row[1])
            };
            _mm256_storeu_ps(d, lo);
            _mm256_storeu_ps(d.add(8), hi);
        }
    }
}
