//! The allocator setting the kernels' throughput depends on.

/// Makes glibc's malloc keep and reuse freed tensor memory (process-wide, once; no-op elsewhere).
/// A binary calls it first thing (`scalelong`'s `main`, the benchmarks); the ops never do, so
/// that linking this crate changes nothing behind a program's back.
///
/// By default glibc serves every allocation above 128 KB to 32 MB (nearly every tensor here) with
/// a fresh `mmap` and returns it with `munmap` on free, so each new tensor first pays a page
/// fault and the kernel's zeroing for every 4 KB page: measured here, a `[4160, 64] x [64, 192]`
/// matmul ran at 23 GFLOP/s that way and at 48 GFLOP/s with the memory reused, and the U-ViT
/// training step took 1.2x as long. This raises the mmap threshold to its maximum (32 MB) and
/// the trim threshold to 1 GB, so freed blocks stay in the heap for the next tensor.
pub fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            unsafe extern "C" {
                fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
            }
            const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
            const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
            // SAFETY: mallopt only sets allocator parameters; both values are in glibc's range.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    });
}
