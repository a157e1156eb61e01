//! GEMM kernels for AVX2 + FMA and for AVX-512, for the linear layers' products whose inner
//! dimension is small (64-256 in the presets) and whose right factor fits in cache.
//!
//! Why: gemm packs both factors on every call and is tuned for large products; on
//! `[4160, 64] x [64, 192]` it ran about 1.6x slower than PyTorch's BLAS. Here a tile of 6 rows x
//! 16 columns of the product stays in 12 vector registers over the whole inner dimension: per
//! step two loads of a contiguous row of the right factor, six broadcasts of the left and twelve
//! FMAs; the product is written once. Same structure as `direct_conv`'s tile. Neither factor is
//! packed, except (AVX2) a slab of the right factor whose rows would evict one another from L1,
//! and the narrow last slab ([`Panel`]).

use crate::Isa;

/// Rows per tile: 6 x 2 accumulators, two right-factor vectors and a broadcast fit AVX2's 16
/// vector registers.
const ROWS: usize = 6;
/// Columns per tile (two 8-lane vectors).
const COLS: usize = 16;

/// What each element of a product is added to before it is stored: `(start + sum) + residual`,
/// in that order (the order the unfused composition `residual + (x W + b)` adds them in, so
/// the values are the same bit for bit). Adding them in the tile's epilogue, while the sums are
/// in registers, saves a pass that wrote the bias over the output before the product and one
/// that added the residual after it: U-ViT sampling spent 4-5% of its step in those two.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Addends {
    pub(crate) start: Start,
    /// A matrix with the destination's row stride (a residual), added last.
    pub(crate) residual: Option<*const f32>,
}

/// What a product's sums start from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Start {
    /// Nothing (`dst = a b`).
    Zero,
    /// The destination's own values (`dst += a b`).
    Dst,
    /// A row of `n` values added to every row (a bias).
    Row(*const f32),
}

impl Addends {
    /// `dst += a b` or `dst = a b`.
    pub(crate) fn accumulate(accumulate: bool) -> Self {
        Self { start: if accumulate { Start::Dst } else { Start::Zero }, residual: None }
    }

    /// The addends of the block of the product from row `r0`, column `n0`, in a destination of
    /// row stride `drs`; with `first`/`last`, whether the block of the inner dimension is the
    /// first (the start applies; later blocks add onto the destination) or the last (the
    /// residual applies).
    ///
    /// # Safety
    /// The offsets stay inside the bias and residual allocations.
    unsafe fn at(self, r0: usize, n0: usize, drs: usize, first: bool, last: bool) -> Self {
        // SAFETY: the caller's contract.
        unsafe {
            let start = match self.start {
                _ if !first => Start::Dst,
                Start::Row(b) => Start::Row(b.add(n0)),
                start => start,
            };
            Self { start, residual: self.residual.filter(|_| last).map(|r| r.add(r0 * drs + n0)) }
        }
    }
}

/// `dst [m, n] (= or +=) a [m, k] b [k, n]`: `dst` and `b` row-major and contiguous (row
/// strides `n`), `a` given by its row and column strides. Runs on the calling thread.
///
/// Panics unless the CPU has `isa`, or when a slice is too short.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
) {
    assert!(isa.detected(), "this CPU lacks {isa:?}");
    assert!(dst.len() >= m * n && b.len() >= k * n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || a.len() > (m - 1) * a_strides.0 + (k - 1) * a_strides.1);
    // SAFETY: the instruction set checked; the asserts bound every element addressed.
    unsafe {
        gemm_raw(
            isa,
            (m, n, k),
            (dst.as_mut_ptr(), n),
            Addends::accumulate(accumulate),
            (a.as_ptr(), a_strides.0, a_strides.1),
            (b.as_ptr(), n),
        )
    }
}

/// [`gemm`] on pointers with strides: `dst` (row stride), `a` (row and column strides), `b`
/// (row stride); both `dst` and `b` have unit column stride; each element `(start + a b) +
/// residual` ([`Addends`]).
///
/// # Safety
/// The CPU has `isa` ([`Isa::detected`]); every addressed element inside its allocation (a bias
/// of `n` values, a residual of `m` rows of `dst`'s stride); `dst` not aliasing `a` or `b`, and
/// written by no one else meanwhile.
pub(super) unsafe fn gemm_raw(
    isa: Isa,
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize),
    addends: Addends,
    a: (*const f32, usize, usize),
    b: (*const f32, usize),
) {
    #[cfg(target_arch = "x86_64")]
    for k0 in (0..k.max(1)).step_by(INNER_BLOCK) {
        let kb = INNER_BLOCK.min(k - k0);
        let blocks = (k0 == 0, k0 + INNER_BLOCK >= k);
        // SAFETY: the caller's contract, on the inner block k0..k0 + kb.
        unsafe {
            let (a, b) = ((a.0.add(k0 * a.2), a.1, a.2), (b.0.add(k0 * b.1), b.1));
            match isa {
                Isa::Avx2 => gemm_block((m, n, kb), dst, (addends, blocks), a, b),
                Isa::Avx512 => gemm_block512((m, n, kb), dst, (addends, blocks), a, b),
            }
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the direct kernels exist on x86-64 only ({isa:?} {m}x{n}x{k}, {dst:?} {addends:?} {a:?} {b:?})")
}

/// Rows of the left factor every column slab is run over before the next rows: with an inner
/// dimension of 256 they take 96 KB, which stays in L2 across the slabs (without it, `256 -> 64`
/// re-read 2 MB of rows per slab and ran 0.84x gemm's speed).
pub(crate) const ROW_BLOCK: usize = 96;

/// Inner-dimension block: a long product (a weight gradient sums over every token) runs in blocks
/// whose slices of both factors stay in L2 while every tile reads them.
const INNER_BLOCK: usize = 256;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_block(
    (m, n, k): (usize, usize, usize),
    (dst, drs): (*mut f32, usize),
    (addends, (first, last)): (Addends, (bool, bool)),
    (a, ars, acs): (*const f32, usize, usize),
    (b, brs): (*const f32, usize),
) {
    // SAFETY (whole body): rows r0..r0 + rows of a and dst, columns n0..n0 + cols of b and dst
    // (n0..n0 + 16 of b where that is a whole slab), all addressed within the caller's bounds;
    // the panel holds k rows of 16.
    unsafe {
        let mut panel = std::mem::MaybeUninit::<Panel>::uninit();
        let evicts_itself = Panel::evicts_itself(brs, k);
        let slabs = (0..n).step_by(COLS).map(|n0| (n0, COLS.min(n - n0)));
        for (m0, (n0, cols)) in (0..m).step_by(ROW_BLOCK).flat_map(|m0| slabs.clone().map(move |slab| (m0, slab))) {
            let (bp, brs) = if cols < COLS || evicts_itself {
                (Panel::pack(&mut panel, b.add(n0), brs, k, cols), COLS)
            } else {
                (b.add(n0), brs)
            };
            for r0 in (m0..m.min(m0 + ROW_BLOCK)).step_by(ROWS) {
                let (ap, dp) = (a.add(r0 * ars), dst.add(r0 * drs + n0));
                let add = addends.at(r0, n0, drs, first, last);
                let rows = ROWS.min(m - r0);
                macro_rules! tile {
                    ($masked:literal) => {
                        match rows {
                            6 => tile::<6, $masked>(k, ap, ars, acs, bp, brs, dp, drs, add, cols),
                            5 => tile::<5, $masked>(k, ap, ars, acs, bp, brs, dp, drs, add, cols),
                            4 => tile::<4, $masked>(k, ap, ars, acs, bp, brs, dp, drs, add, cols),
                            3 => tile::<3, $masked>(k, ap, ars, acs, bp, brs, dp, drs, add, cols),
                            2 => tile::<2, $masked>(k, ap, ars, acs, bp, brs, dp, drs, add, cols),
                            _ => tile::<1, $masked>(k, ap, ars, acs, bp, brs, dp, drs, add, cols),
                        }
                    };
                }
                if cols == COLS { tile!(false) } else { tile!(true) }
            }
        }
    }
}

/// A slab of the right factor, `k` (<= [`INNER_BLOCK`]) rows of 16 columns in a row: the copy
/// that a tile reads instead of a slab whose rows evict one another from L1, or of the last,
/// narrower slab (padded with zeros, so that the tile's inner loop loads whole vectors there too).
///
/// Why: rows 256 or 1024 bytes apart fall into 16 or 4 of L1's 64 sets, so a slab of the weight
/// `[64, 256]` or `[256, 64]`, or of an output gradient in a weight gradient, evicted itself while
/// the tiles read it. One thread, hot caches, best of 40 alternating rounds against the unpacked
/// kernel: `[96, 64] x [64, 256]` 1.12x, `[96, 256] x [256, 64]` 1.11x, the weight gradients
/// `[64 | 256, 4160] x [4160, 256 | 64]` 1.2-1.3x, the input gradients `[4160, 64 | 256] x [.., 256
/// | 64]` 1.15-1.25x faster; with the caches flushed before each round, 1.0-1.15x. The narrow
/// slab: with masked loads in the inner loop, attention's `[65, 16] x [16, 65]` took 1.5x the
/// time of `[65, 16] x [16, 64]`, padded 1.35-1.4x (its 16-column tiles' work for one column).
#[repr(align(64))]
struct Panel {
    rows: [[f32; COLS]; INNER_BLOCK],
}

impl Panel {
    /// Whether `k` rows `brs` floats apart evict one another from L1 (64 sets of 8 lines of 64
    /// bytes, as on Zen 2-4 and Skylake): a stride of `x` whole lines maps the rows onto
    /// `64 / gcd(64, x)` sets. Copying a slab that does not only adds its first reads' latency:
    /// with the caches flushed, attention's `P v` (`[65, 65] x [65, 16]`, rows 768 bytes apart)
    /// took 1.18x its time packed, the `qkv` product (`[96, 64] x [64, 192]`) 1.1x.
    fn evicts_itself(brs: usize, k: usize) -> bool {
        const SETS: usize = 64;
        const WAYS: usize = 8;
        let lines = brs / COLS; // 16 floats a line
        brs.is_multiple_of(COLS) && k > WAYS * (SETS >> lines.trailing_zeros().min(SETS.trailing_zeros()))
    }

    /// Columns `0..cols` of `k` rows of `b` (rows `brs` apart) as the panel's first `k` rows,
    /// the rest of each row zero; returns the panel.
    ///
    /// # Safety
    /// The `k` (<= [`INNER_BLOCK`]) rows of `cols` (<= 16) values lie inside `b`'s allocation.
    #[inline(always)]
    unsafe fn pack(
        panel: &mut std::mem::MaybeUninit<Self>,
        b: *const f32,
        brs: usize,
        k: usize,
        cols: usize,
    ) -> *const f32 {
        // SAFETY: a pointer to the field of the (uninitialised) panel, not a read.
        let dst = unsafe { (&raw mut (*panel.as_mut_ptr()).rows).cast::<f32>() };
        for kk in 0..k {
            // SAFETY: the caller's contract; row kk of the panel is inside it (k <= INNER_BLOCK).
            unsafe {
                let (src, row) = (b.add(kk * brs), dst.add(kk * COLS));
                if cols == COLS {
                    std::ptr::copy_nonoverlapping(src, row, COLS);
                } else {
                    for c in 0..COLS {
                        *row.add(c) = if c < cols { *src.add(c) } else { 0.0 };
                    }
                }
            }
        }
        dst
    }
}

/// `R` rows x 16 columns: `dst[r, 0..16] = (start + sum_kk a[r ars + kk acs] b[kk brs + 0..16]) +
/// residual` ([`Addends`], the residual with `dst`'s row stride); with `MASKED`, the first `cols`
/// (< 16) of them alone: `b`'s rows are read whole (a padded [`Panel`]), what is added to the
/// sums and the sums themselves through masked loads and stores (a masked-out lane of `dst` is
/// neither read nor written).
///
/// # Safety
/// AVX2 and FMA present; every addressed element inside its allocation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const MASKED: bool>(
    k: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    brs: usize,
    dst: *mut f32,
    drs: usize,
    add: Addends,
    cols: usize,
) {
    use std::arch::x86_64::*;
    // Lanes below `cols - 8 v` of vector v (all of them without MASKED).
    let mask =
        |v: i32| _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32 - 8 * v), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    let masks = [mask(0), mask(1)];
    // SAFETY: the caller's contract; masked-out lanes are not accessed.
    let load =
        |p: *const f32, v: usize| unsafe { if MASKED { _mm256_maskload_ps(p, masks[v]) } else { _mm256_loadu_ps(p) } };
    let store = |p: *mut f32, v: usize, x: __m256| unsafe {
        if MASKED { _mm256_maskstore_ps(p, masks[v], x) } else { _mm256_storeu_ps(p, x) }
    };
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
        let bias = match add.start {
            Start::Row(b) => Some([load(b, 0), load(b.add(8), 1)]),
            _ => None,
        };
        for (r, &sums) in acc.iter().enumerate() {
            let d = dst.add(r * drs);
            let start = match (add.start, bias) {
                (Start::Dst, _) => Some([load(d, 0), load(d.add(8), 1)]),
                (_, bias) => bias,
            };
            let out: [__m256; 2] = std::array::from_fn(|v| {
                let out = start.map_or(sums[v], |s| _mm256_add_ps(s[v], sums[v]));
                add.residual.map_or(out, |res| _mm256_add_ps(out, load(res.add(r * drs + 8 * v), v)))
            });
            store(d, 0, out[0]);
            store(d.add(8), 1, out[1]);
        }
    }
}

/// The AVX-512 tile: 12 rows x 32 columns, 24 of the 32 vector registers; per step two loads,
/// 12 broadcasts and 24 FMAs (the AVX2 tile: 2, 6 and 12). Masked loads and stores take the
/// last columns, so no scalar tail.
const ROWS_512: usize = 12;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn gemm_block512(
    (m, n, k): (usize, usize, usize),
    (dst, drs): (*mut f32, usize),
    (addends, (first, last)): (Addends, (bool, bool)),
    (a, ars, acs): (*const f32, usize, usize),
    (b, brs): (*const f32, usize),
) {
    // SAFETY (whole body): rows r0..r0 + rows of a and dst, the masked-in columns n0.. of b and
    // dst, all addressed within the caller's bounds.
    unsafe {
        for (m0, n0) in (0..m).step_by(ROW_BLOCK).flat_map(|m0| (0..n).step_by(32).map(move |n0| (m0, n0))) {
            let left = n - n0;
            let mask = |v: usize| ((1u32 << left.saturating_sub(16 * v).min(16)) - 1) as u16;
            for r0 in (m0..m.min(m0 + ROW_BLOCK)).step_by(ROWS_512) {
                let (ap, bp, dp) = (a.add(r0 * ars), b.add(n0), dst.add(r0 * drs + n0));
                let add = addends.at(r0, n0, drs, first, last);
                // One instance per row count and vector count, so the sums stay in registers.
                macro_rules! tile {
                    ($($r:literal)*) => {
                        match (ROWS_512.min(m - r0), left > 16) {
                            $(($r, true) => tile512::<$r, 2>(k, ap, ars, acs, bp, brs, dp, drs, add, [mask(0), mask(1)]),
                              ($r, false) => tile512::<$r, 1>(k, ap, ars, acs, bp, brs, dp, drs, add, [mask(0)]),)*
                            (rows, _) => unreachable!("{rows} rows"),
                        }
                    };
                }
                tile!(1 2 3 4 5 6 7 8 9 10 11 12)
            }
        }
    }
}

/// `R` rows x the masked-in lanes of `V` vectors: `dst[r, c] = (start + sum_kk a[r ars + kk acs]
/// b[kk brs + c]) + residual` ([`Addends`]).
///
/// # Safety
/// AVX-512 F present; every addressed element (masked-in lanes only) inside its allocation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile512<const R: usize, const V: usize>(
    k: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    brs: usize,
    dst: *mut f32,
    drs: usize,
    add: Addends,
    masks: [u16; V],
) {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc: [[__m512; V]; R] = [[_mm512_setzero_ps(); V]; R];
        let (mut ak, mut bk) = (a, b);
        for _ in 0..k {
            let bv: [__m512; V] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], bk.add(16 * v)));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ak.add(r * ars));
                for (a, &bv) in row.iter_mut().zip(&bv) {
                    *a = _mm512_fmadd_ps(av, bv, *a);
                }
            }
            ak = ak.add(acs);
            bk = bk.add(brs);
        }
        let load = |p: *const f32, v: usize| _mm512_maskz_loadu_ps(masks[v], p.add(16 * v));
        for (r, row) in acc.iter().enumerate() {
            let d = dst.add(r * drs);
            for (v, &sum) in row.iter().enumerate() {
                let out = match add.start {
                    Start::Zero => sum,
                    Start::Dst => _mm512_add_ps(load(d, v), sum),
                    Start::Row(b) => _mm512_add_ps(load(b, v), sum),
                };
                let out = add.residual.map_or(out, |res| _mm512_add_ps(out, load(res.add(r * drs), v)));
                _mm512_mask_storeu_ps(d.add(16 * v), masks[v], out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile shape and tail (columns below, at and past a multiple of 16, rows past a
    /// multiple of 6), a strided left factor, and every addend: nothing, the destination, a bias,
    /// a bias and a residual (`300` inner: two inner blocks, the bias on the first, the residual
    /// on the last): against the sums in f64.
    #[test]
    fn the_tiles_and_their_masked_tails_match_the_plain_sums() {
        for isa in [Isa::Avx2, Isa::Avx512].into_iter().filter(|isa| isa.detected()) {
            for (m, n, k) in [(65, 65, 16), (65, 16, 65), (7, 5, 3), (13, 33, 9), (1, 1, 1), (100, 47, 300)] {
                let a: Vec<f32> = (0..m * k * 2).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
                let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
                let bias: Vec<f32> = (0..n).map(|i| (i % 5) as f32 - 2.5).collect();
                let residual: Vec<f32> = (0..m * n).map(|i| (i % 11) as f32 / 4.0).collect();
                let start: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 - 3.0).collect();
                let cases = [
                    ("zero", Addends::accumulate(false)),
                    ("dst", Addends::accumulate(true)),
                    ("bias", Addends { start: Start::Row(bias.as_ptr()), residual: None }),
                    ("bias+residual", Addends { start: Start::Row(bias.as_ptr()), residual: Some(residual.as_ptr()) }),
                ];
                for (case, addends) in cases {
                    let mut dst = start.clone();
                    // `a` read with row stride 2k and column stride 2: every other value.
                    // SAFETY: every slice holds what the dimensions address.
                    unsafe {
                        gemm_raw(
                            isa,
                            (m, n, k),
                            (dst.as_mut_ptr(), n),
                            addends,
                            (a.as_ptr(), 2 * k, 2),
                            (b.as_ptr(), n),
                        )
                    };
                    for r in 0..m {
                        for c in 0..n {
                            let sum: f64 = (0..k).map(|kk| a[r * 2 * k + 2 * kk] as f64 * b[kk * n + c] as f64).sum();
                            let want =
                                sum + match addends.start {
                                    Start::Zero => 0.0,
                                    Start::Dst => start[r * n + c] as f64,
                                    Start::Row(_) => bias[c] as f64,
                                } + addends.residual.map_or(0.0, |_| residual[r * n + c] as f64);
                            let got = dst[r * n + c] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (k as f64).max(1.0),
                                "{isa:?} {m}x{n}x{k} {case} [{r}, {c}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
