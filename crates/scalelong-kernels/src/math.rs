//! Element-wise math the fused kernels vectorise: `exp` and `erf` without a libm call, lane-split
//! sums, and `vectorised_fn!`, which compiles a kernel for AVX-512 or AVX2 + FMA when the CPU
//! has them.
//!
//! Why not libm: `expf` is a call LLVM cannot vectorise, so every SiLU, GELU and softmax element
//! paid one (10% of a U-ViT training step in the profile). Why lanes: a plain `f32` sum has one
//! order of additions, which LLVM must keep, so it stays scalar; eight partial sums vectorise.
//! Why a runtime switch: the crate is built for baseline x86-64 (SSE2, 4 lanes, no FMA), which
//! is what a fresh machine's `cargo build` gives.

/// Defines a function whose body is compiled three times, for AVX-512, for AVX2 + FMA and as
/// built, and takes an `isa: Option<Isa>` first argument saying which copy runs (as built for
/// `None`): the caller reads the instruction set once on its own thread ([`crate::isa`]) and hands
/// it to the rayon tasks that call this. The body is forced inline into each copy (a closure
/// handed to a target-feature function is not always inlined, and then runs as built). What the
/// body computes does not depend on the copy: Rust never contracts `a * b + c` into an FMA, and
/// where a polynomial asks for one (`mul_add`, rounded once) the copy without FMA instructions
/// calls libm's `fmaf`, which rounds the same way (slower, on CPUs without FMA only). Horner steps
/// as FMAs: U-ViT sampling's GELU 0.72x and softmax 0.89x the time (AVX2, one thread, perf's
/// share of each against the unchanged GEMM tile's).
/// AVX-512 against AVX2 here (alternating bench executables, three rounds): U-ViT sampling
/// +3-49%, conv UNet training +1.5-5% (the element-wise passes take half the instructions).
macro_rules! vectorised_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(isa: Option<$crate::Isa>, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match isa {
                    // SAFETY: an `Isa` handed around is only ever a detected one (`crate::isa`).
                    Some($crate::Isa::Avx512) => return unsafe { avx512($($arg),*) },
                    Some($crate::Isa::Avx2) => return unsafe { avx2($($arg),*) },
                    None => {}
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = isa;
            body($($arg),*)
        }
    };
}
pub(crate) use vectorised_fn;

/// `e^x` within 2 ulp for x in [-87, 88]; clamped outside it (`e^-87` is 1.6e-38, the smallest
/// value anything here needs). Cody-Waite reduction `x = n ln2 + r`, |r| <= ln2 / 2, and
/// Cephes' degree-5 minimax polynomial for `e^r`. Branch-free, so loops over it vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // n = round(x / ln 2) by adding 1.5 * 2^23: the sum's low mantissa bits are then n itself,
    // so 2^n comes from integer ops (a float-to-int cast would not vectorise: it saturates).
    const SHIFTER: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = shifted - SHIFTER;
    let two_n = f32::from_bits(shifted.to_bits().wrapping_sub(SHIFTER.to_bits() - 127) << 23);
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4f32;
    let p = p.mul_add(r, 1.398_2e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 0.166_666_65);
    let p = p.mul_add(r, 0.5);
    let er = (p * r).mul_add(r, r + 1.0);
    er * two_n
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, about f32's rounding), with
/// `e^(-x^2)` given: the normal CDF and density share that exponential.
#[inline(always)]
fn erf_given_exp(x: f32, exp_neg_x2: f32) -> f32 {
    let t = 1.0 / 0.327_591_1f32.mul_add(x.abs(), 1.0);
    let poly = 1.061_405_4f32.mul_add(t, -1.453_152_1).mul_add(t, 1.421_413_8).mul_add(t, -0.284_496_74);
    let poly = t * poly.mul_add(t, 0.254_829_6);
    (-poly).mul_add(exp_neg_x2, 1.0).copysign(x)
}

/// The standard normal CDF and density at `v`, from one exponential `e^(-v^2 / 2)`.
#[inline(always)]
pub fn phi_and_pdf(v: f32) -> (f32, f32) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let e = exp(-0.5 * v * v);
    (0.5 * (1.0 + erf_given_exp(v * std::f32::consts::FRAC_1_SQRT_2, e)), INV_SQRT_2PI * e)
}

const LANES: usize = 8;

/// `sum_i f(a[i], b[i], c[i])` over equal-length slices, as eight interleaved partial sums.
#[inline(always)]
pub fn sum3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    assert!(a.len() == b.len() && b.len() == c.len(), "sum3: slices of unequal length");
    let mut acc = [0.0f32; LANES];
    let (ca, cb, cc) = (a.chunks_exact(LANES), b.chunks_exact(LANES), c.chunks_exact(LANES));
    let tail: f32 =
        ca.remainder().iter().zip(cb.remainder()).zip(cc.remainder()).map(|((&x, &y), &z)| f(x, y, z)).sum();
    for ((xa, xb), xc) in ca.zip(cb).zip(cc) {
        for l in 0..LANES {
            acc[l] += f(xa[l], xb[l], xc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum_i f(a[i], b[i])`, as [`sum3`].
#[inline(always)]
pub fn sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    sum3(a, b, b, |x, y, _| f(x, y))
}

/// `sum_i f(a[i])`, as [`sum3`].
#[inline(always)]
pub fn sum(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    sum3(a, a, a, |x, _, _| f(x))
}

/// Each `v` of `a` replaced by `e^(v - shift)`, returning their sum in [`sum`]'s order (the same
/// value as `sum(a, |v| v)` afterwards): one pass instead of two (softmax rows of 65: 0.92x
/// its time).
#[inline(always)]
pub fn exp_in_place_and_sum(a: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = a.chunks_exact_mut(LANES);
    for x in &mut chunks {
        for l in 0..LANES {
            x[l] = exp(x[l] - shift);
            acc[l] += x[l];
        }
    }
    let tail: f32 = chunks
        .into_remainder()
        .iter_mut()
        .map(|v| {
            *v = exp(*v - shift);
            *v
        })
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// The largest value of `a` (minus infinity for none), as eight interleaved maxima.
#[inline(always)]
pub fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for x in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(x[l]);
        }
    }
    acc.iter().fold(tail, |m, &v| m.max(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2_ulp_of_libm_and_clamps() {
        let mut worst = 0.0f64;
        for i in 0..=1_000_000 {
            let x = -87.0 + 175.0 * i as f32 / 1e6;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / (want * f32::EPSILON as f64));
        }
        assert!(worst < 2.0, "{worst} ulp");
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(-87.0) > 0.0 && exp(-87.0) < 2e-38);
        assert_eq!(exp(1000.0), exp(88.0));
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn normal_cdf_density_and_lane_sums_match_the_plain_forms() {
        for i in -600..=600 {
            let v = i as f64 / 100.0;
            let (phi, pdf) = phi_and_pdf(v as f32);
            let phi64 = 0.5 * (1.0 + libm_erf(v / std::f64::consts::SQRT_2));
            let pdf64 = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            // erf's 1.5e-7, halved, plus the f32 rounding of 1 + erf (up to 1.2e-7) and of the rest.
            assert!((phi as f64 - phi64).abs() < 3e-7, "Phi({v}): {phi} against {phi64}");
            // Relative: the f32 argument v^2 / 2 (up to 18) carries its own rounding into e^x.
            assert!((pdf as f64 - pdf64).abs() <= 5e-6 * pdf64, "pdf({v}): {pdf} against {pdf64}");
        }
        let a: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f64 = a.iter().zip(&b).map(|(&x, &y)| (x * y) as f64).sum();
        assert!((sum2(&a, &b, |x, y| x * y) as f64 - plain).abs() < 1e-4);
        let c: Vec<f32> = (0..1003).map(|i| i as f32 / 1003.0).collect();
        let plain3: f64 = a.iter().zip(&b).zip(&c).map(|((&x, &y), &z)| (x * y - z) as f64).sum();
        assert!((sum3(&a, &b, &c, |x, y, z| x * y - z) as f64 - plain3).abs() < 1e-4);
        assert_eq!(max(&a), a.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
        assert_eq!(max(&a[..5]), a[..5].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
        assert!((sum(&a, |x| x) as f64 - a.iter().map(|&x| x as f64).sum::<f64>()).abs() < 1e-4);
        for len in [5, 8, 65, 1003] {
            let mut one_pass = a[..len].to_vec();
            let total = exp_in_place_and_sum(&mut one_pass, 0.25);
            let two_passes: Vec<f32> = a[..len].iter().map(|&v| exp(v - 0.25)).collect();
            assert_eq!(one_pass, two_passes, "{len}");
            assert_eq!(total, sum(&two_passes, |v| v), "{len}: the sum in sum's order");
        }
        vectorised_fn! {
            fn lane_sum(a: &[f32]) -> f32 {
                sum(a, |x| x)
            }
        }
        for isa in [None, Some(crate::Isa::Avx2), Some(crate::Isa::Avx512)]
            .into_iter()
            .filter(|isa| isa.is_none_or(crate::Isa::detected))
        {
            assert_eq!(lane_sum(isa, &a), sum(&a, |x| x), "the same result from every copy ({isa:?})");
        }
    }

    /// erf in f64 by its Taylor series (converges fast for |x| <= 4 in f64 with enough terms).
    fn libm_erf(x: f64) -> f64 {
        let (mut term, mut total, mut n) = (x, x, 0.0f64);
        while term.abs() > 1e-17 * total.abs().max(1e-300) || n < 5.0 {
            n += 1.0;
            term *= -x * x / n;
            total += term / (2.0 * n + 1.0);
            if n > 400.0 {
                break;
            }
        }
        total * 2.0 / std::f64::consts::PI.sqrt()
    }
}
