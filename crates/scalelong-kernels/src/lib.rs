//! Fast CPU kernels for burn's `flex` backend, each with its backward pass.
//!
//! Every op here computes exactly what a composition of burn ops computes (kept in [`reference`],
//! which the tests compare against), but as one operation: on `Device::flex()` the forward runs on
//! the flex primitives directly; on `Device::flex().autodiff()` it is one node of the autodiff
//! graph with a hand-written backward ([`dispatch`]); on any other backend (wgpu, cuda) the
//! composition runs. This crate knows burn's layers, not networks.
//!
//! Why: burn's autodiff records every small op of a composition (a softmax is five ops, a
//! layer/group norm about eight, a head split a permute and three copies) and differentiates each
//! separately, allocating a full-size tensor per step; and flex's convolution backward goes
//! through a slow transposed convolution. Fusing cuts allocations, copies and passes over memory,
//! which is what the small presets spend most of their time on.
//!
//! | op | replaces | how |
//! |---|---|---|
//! | [`qkv_attention`] | head split, `softmax(q k^T / sqrt(Dh)) v`, head merge | GEMMs on strided views of `qkv`, vectorised softmax, fused softmax backward |
//! | [`attention_add`] | a residual plus `Linear`, [`qkv_attention`], `Linear` (U-ViT's attention and its residual) | both products and the attention on one image at a time, while its `qkv` and probabilities are in cache |
//! | [`conv2d`] | burn's `conv2d` (stride 1) and its backward | direct AVX-512 or AVX2 kernels (implicit GEMMs without AVX2) over shifted views of the padded input, no im2col buffer; the weight gradient channels-last (along positions below 8 input channels) |
//! | [`conv2d_stride2`] | burn's `conv2d` (3x3, stride 2) and its backward | [`conv2d`]'s kernels on the input's four phases (a 2x2 stride-1 convolution) |
//! | [`linear`] | burn's `Linear` and its backward | one GEMM per thread on a block of rows; gradients through strided views |
//! | [`linear_gelu`] | `Linear` then GELU (the first half of [`mlp_add`]) | GELU on each block of rows of the product while in cache (inference: in place) |
//! | [`linear_add`] | a residual plus `Linear` (the last step of [`mlp_add`] and [`attention_add`]) | the bias and the residual added to the sums in the GEMM tile, before they are stored |
//! | [`mlp_add`] | a residual plus `Linear`, GELU, `Linear` (U-ViT's MLP and its residual) | both products and GELU on a block of rows while its hidden activations are in L2 |
//! | [`linear_cat`] | `Linear` on `cat([x, y], -1)` (U-ViT's skip fusion) | [`linear`]'s GEMMs on each part, accumulated onto one output; no concatenation |
//! | [`gelu`] | burn's `gelu` and its backward | one parallel, vectorised pass each (flex's runs on one thread with libm's erf) |
//! | [`cat_axis1`] | burn's `Tensor::cat` along axis 1 (the UNet's skip concatenations) | one parallel copy per image (flex copies on one thread) |
//! | [`upsample_nearest2x`] | reshape, expand, reshape (flex's strided copy) | one copy forward, one 2x2 sum backward |
//! | [`group_norm`] | burn's `GroupNorm` (+ SiLU) | one vectorised pass forward, two backward |
//! | [`layer_norm`] | burn's `LayerNorm` | flex's fused forward, one fused backward |
//! | [`tune_allocator`] | glibc's default mmap threshold | freed tensor memory is reused instead of re-faulted |
//!
//! A network calls a burn layer through [`Fused`] (`self.conv1.fused(x)`), the other ops as
//! functions. The direct kernels are in `direct_conv.rs` and `direct_gemm.rs`, each with an
//! AVX-512 and an AVX2 tile; the element-wise math (`exp`, `erf`, lane-split sums) and the copies
//! for AVX-512, AVX2 and the build's baseline in `math.rs`. Which of the three runs is the best
//! this CPU has; the `testing` feature lets a test or benchmark pin another on its own thread
//! (`testing::with_kernel_set`). All of the workspace's `unsafe` lives in this crate.
//!
//! Each op is measured against its composition in `benches/ops.rs` (`SCALELONG_BENCH_AB=1`), and
//! the networks as a whole in `scalelong-model`'s `benches/steps.rs`.

mod alloc;
mod attention;
mod concat;
mod conv;
mod direct_conv;
mod direct_gemm;
mod dispatch;
mod gelu;
mod gemm;
mod layers;
mod linear;
mod math;
mod norm;
mod parallel;
#[cfg(feature = "testing")]
pub mod reference;
#[cfg(not(feature = "testing"))]
mod reference;
#[cfg(feature = "testing")]
pub mod testing;
mod upsample;

pub use alloc::tune_allocator;
pub use attention::{attention_add, qkv_attention};
pub use concat::cat_axis1;
pub use conv::{conv2d, conv2d_stride2};
pub use gelu::gelu;
pub use layers::{Fused, FusedAttentionAdd, FusedGelu, FusedMlpAdd, FusedSilu, LAYER_NORM_EPS};
pub use linear::{linear, linear_add, linear_cat, linear_gelu, mlp_add};
pub use norm::{Activation, group_norm, layer_norm};
pub use upsample::upsample_nearest2x;

use std::cell::Cell;

/// The kernels an op may run, from the fastest this CPU has down to the portable ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSet {
    /// AVX-512 where the CPU has it, else AVX2 + FMA, else the portable kernels.
    Best,
    /// AVX2 + FMA even where the CPU has AVX-512 (portable without AVX2): what an AVX2 CPU runs.
    Avx2,
    /// The portable kernels, as on a CPU without AVX2: gemm for the products and the element-wise
    /// passes as built (baseline x86-64).
    Portable,
}

thread_local! {
    /// The kernel set of the ops this thread calls. One scoping rule: an op reads it once, on the
    /// thread that calls it (or that runs its backward), and hands the instruction set to the
    /// rayon tasks it spawns, so a test that pins a set sees only its own ops change.
    static KERNEL_SET: Cell<KernelSet> = const { Cell::new(KernelSet::Best) };
    /// Whether the ops this thread calls run their reference composition instead.
    static REFERENCE: Cell<bool> = const { Cell::new(false) };
}

/// An instruction set the kernels have a copy for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    /// AVX2 and FMA: 16 vector registers of 8 floats.
    Avx2,
    /// AVX-512 F and VL (with AVX2 and FMA): 32 vector registers of 16 floats, masked loads and
    /// stores.
    Avx512,
}

impl Isa {
    /// Whether this CPU has it.
    fn detected(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            match self {
                Isa::Avx2 => avx2,
                Isa::Avx512 => avx2 && has!("avx512f") && has!("avx512vl"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// The instruction set this thread's ops run on, in words (`"AVX-512"`, `"AVX2+FMA"` or
/// `"portable"`): what a benchmark reports as the kernels the CPU picked.
pub fn kernel_isa() -> &'static str {
    match isa() {
        Some(Isa::Avx512) => "AVX-512",
        Some(Isa::Avx2) => "AVX2+FMA",
        None => "portable",
    }
}

/// The instruction set this thread's ops run on: the best one of its [`KernelSet`] that this CPU
/// has; `None` for the portable kernels. Only ever a [`Isa::detected`] one.
fn isa() -> Option<Isa> {
    let candidates: &[Isa] = match KERNEL_SET.get() {
        KernelSet::Best => &[Isa::Avx512, Isa::Avx2],
        KernelSet::Avx2 => &[Isa::Avx2],
        KernelSet::Portable => &[],
    };
    candidates.iter().copied().find(|isa| isa.detected())
}
