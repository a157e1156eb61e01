//! Hooks for tests and benchmarks (the `testing` feature): pin a [`KernelSet`] or the reference
//! compositions for the ops one thread calls (the compositions are in [`crate::reference`]).

use crate::dispatch::placed;
use crate::{KERNEL_SET, KernelSet, REFERENCE};
use burn::prelude::*;

/// Runs `f` with the ops it calls on this thread on `set`'s kernels (their rayon tasks included;
/// other threads keep theirs): tests running at once each pin their own.
pub fn with_kernel_set<T>(set: KernelSet, f: impl FnOnce() -> T) -> T {
    let _restore = Restore::set(&KERNEL_SET, set);
    f()
}

/// Runs `f` with every op it calls on this thread replaced by its [`crate::reference`] composition: the
/// networks as they were before the fused kernels.
pub fn with_reference_ops<T>(f: impl FnOnce() -> T) -> T {
    let _restore = Restore::set(&REFERENCE, true);
    f()
}

/// Whether an op on `t` would take its fused path here (flex or autodiff flex, f32, reference
/// ops off on this thread).
pub fn fused_path_available<const D: usize>(t: &Tensor<D>) -> bool {
    placed(t).is_some()
}

/// The values of `t`, flattened (f32).
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("an f32 tensor")
}

/// Largest |a - b| / (max |b| + tiny) over the elements: how far a fast op is from its composition.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())) + 1e-12;
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Panics naming `what` unless [`rel_err`] of `a` against `b` is at most `tol`.
pub fn assert_close(what: &str, a: Vec<f32>, b: Vec<f32>, tol: f32) {
    let e = rel_err(&a, &b);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// For benchmarks: this machine's fp32 peak in GFLOP/s on rayon's threads, measured once: 12 independent FMA
/// chains per thread on the widest vectors the CPU has, about 0.2 s. Measured rather than
/// nominal (clock x lanes x units), since a shared VM's clock is not its label's (this machine
/// read 228 for 2 cores, where 166 had been assumed). NaN without AVX2 and FMA.
pub fn peak_gflops() -> f64 {
    static PEAK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *PEAK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            const ITERS: usize = 20_000_000;
            let (avx512, avx2) = (has!("avx512f"), has!("avx2") && has!("fma"));
            if avx2 {
                let start = std::time::Instant::now();
                // SAFETY: each loop runs only where its features were detected.
                let flops: f64 = rayon::broadcast(|_| unsafe {
                    if avx512 { fma_chains_avx512(ITERS) } else { fma_chains_avx2(ITERS) }
                })
                .iter()
                .sum();
                return flops / start.elapsed().as_secs_f64() / 1e9;
            }
        }
        f64::NAN
    })
}

/// Runs `iters` steps of 12 independent FMA chains; returns the FLOPs done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains_avx2(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let (mut acc, b, c) = ([_mm256_set1_ps(1.0); 12], _mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, b, c);
        }
    }
    std::hint::black_box(acc);
    (iters * 12 * 8 * 2) as f64
}

/// [`fma_chains_avx2`] on 16-lane vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_chains_avx512(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let (mut acc, b, c) = ([_mm512_set1_ps(1.0); 12], _mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iters / 2 {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, b, c);
        }
    }
    std::hint::black_box(acc);
    (iters / 2 * 12 * 16 * 2) as f64
}

/// Puts a thread-local back as it was, also when `f` panics.
struct Restore<T: Copy + 'static> {
    key: &'static std::thread::LocalKey<std::cell::Cell<T>>,
    previous: T,
}

impl<T: Copy + 'static> Restore<T> {
    fn set(key: &'static std::thread::LocalKey<std::cell::Cell<T>>, value: T) -> Self {
        Self { key, previous: key.replace(value) }
    }
}

impl<T: Copy + 'static> Drop for Restore<T> {
    fn drop(&mut self) {
        self.key.set(self.previous);
    }
}
