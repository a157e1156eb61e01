//! Changes to the long skips of a trained network at sampling time, without retraining: a factor
//! on each LSC's skip (Skip-Tuning's linear ramp `rho_i` from the outermost LSC to the innermost,
//! or one LSC scaled alone to measure its importance), and FreeU on the two innermost decoder
//! stages (the main path's first half of features times `b`, the skip's lowest spatial frequencies
//! times `s`). Also the spectral view of a skip: the share of its energy in those frequencies.
//!
//! The lowest frequencies: the 2-D discrete Fourier components whose frequency along each spatial
//! axis is within `threshold` of zero, over the feature map of the conv UNet or the grid of patch
//! tokens of the U-ViT (its time token is left out). For real data, scaling those components by
//! `s` and transforming back is `x + (s - 1) P_H x P_W`, with `P` the orthogonal projection onto the
//! cosines and sines of those frequencies along each axis; that is how it is computed here (burn
//! has no FFT; for a map of 8x8 to 32x32 the projections are small matmuls). FreeU's own code masks
//! the half-open range `-threshold..threshold` of the shifted spectrum and keeps the real part,
//! which scales frequency 0 by `s` and frequencies +-1 by `(1 + s) / 2`; the symmetric band here
//! scales all of them by `s`.

use crate::skip_scaling::Fusion;
use burn::prelude::*;

/// FreeU's settings for the two innermost decoder stages (innermost first).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FreeU {
    /// Factor on the first half of the main path's features.
    pub b: [f64; 2],
    /// Factor on the skip's lowest frequencies.
    pub s: [f64; 2],
    /// Frequencies within this of zero, along each axis, are the lowest.
    pub threshold: usize,
}

impl Default for FreeU {
    /// FreeU's defaults (its SD1.x setting).
    fn default() -> Self {
        Self { b: [1.2, 1.4], s: [0.9, 0.2], threshold: 1 }
    }
}

/// A network's skips as edited at sampling time; the default changes nothing (and computes nothing).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SkipEdit {
    /// The factor on the skip of LSC `i` at index `i - 1`; empty: 1 everywhere.
    pub rho: Vec<f64>,
    pub freeu: Option<FreeU>,
}

impl SkipEdit {
    /// Skip-Tuning: `rho_i` linear from `rho_outer` at LSC 1 to `rho_inner` at LSC `n`.
    pub fn ramp(n: usize, rho_outer: f64, rho_inner: f64) -> Self {
        let rho = (0..n)
            .map(|i| if n == 1 { rho_outer } else { rho_outer + (rho_inner - rho_outer) * i as f64 / (n - 1) as f64 })
            .collect();
        Self { rho, freeu: None }
    }

    /// LSC `lsc` alone scaled by `factor`, of `n`.
    pub fn only(n: usize, lsc: usize, factor: f64) -> Self {
        Self { rho: (1..=n).map(|i| if i == lsc { factor } else { 1.0 }).collect(), freeu: None }
    }

    /// The factor on LSC `lsc`'s skip.
    pub fn rho(&self, lsc: usize) -> f64 {
        self.rho.get(lsc - 1).copied().unwrap_or(1.0)
    }
}

/// A fusion as `edit` changes it: the skip of LSC `lsc` times `rho_i`, and on the two innermost
/// decoder stages (`stage` 0, the innermost, and 1) FreeU. With the default edit, the fusion itself.
pub fn edit_fusion<const D: usize>(
    edit: &SkipEdit,
    mut fusion: Fusion<D>,
    lsc: usize,
    stage: Option<usize>,
    layout: Layout,
) -> Fusion<D> {
    let rho = edit.rho(lsc);
    if rho != 1.0 {
        fusion.skip = fusion.skip.mul_scalar(rho);
    }
    if let (Some(freeu), Some(stage)) = (edit.freeu, stage.filter(|&stage| stage < 2)) {
        fusion.main = scale_first_half(fusion.main, layout, freeu.b[stage]);
        fusion.skip = scale_low_frequencies(fusion.skip, layout, freeu.s[stage], freeu.threshold);
    }
    fusion
}

/// Where a network's features and spatial grid are in a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[B, C, H, W]`: features along axis 1.
    Channels,
    /// `[B, 1 + h w, D]`: the time token, then a `h x w` grid of patch tokens; features along axis 2.
    Tokens { grid: [usize; 2] },
}

/// `x` with its first half of features (along the layout's feature axis) multiplied by `b`.
pub fn scale_first_half<const D: usize>(x: Tensor<D>, layout: Layout, b: f64) -> Tensor<D> {
    let axis = match layout {
        Layout::Channels => 1,
        Layout::Tokens { .. } => D - 1,
    };
    let width = x.dims()[axis];
    let half = width / 2;
    let first = x.clone().narrow(axis, 0, half).mul_scalar(b);
    Tensor::cat(vec![first, x.narrow(axis, half, width - half)], axis)
}

/// `P`, `[n, n]`: the orthogonal projection onto the discrete cosines and sines of frequency 0 to
/// `threshold` (below `n / 2`, where they are orthogonal; the Nyquist cosine too when it is
/// within the threshold) on `n` points.
fn low_frequency_projection(n: usize, threshold: usize, device: &Device) -> Tensor<2> {
    let mut basis: Vec<Vec<f64>> = vec![vec![1.0 / (n as f64).sqrt(); n]];
    for u in 1..=threshold.min(n / 2) {
        let angle = |k: usize| 2.0 * std::f64::consts::PI * (u * k) as f64 / n as f64;
        if 2 * u == n {
            basis.push((0..n).map(|k| angle(k).cos() / (n as f64).sqrt()).collect());
        } else {
            let norm = (2.0 / n as f64).sqrt();
            basis.push((0..n).map(|k| norm * angle(k).cos()).collect());
            basis.push((0..n).map(|k| norm * angle(k).sin()).collect());
        }
    }
    let mut p = vec![0.0f32; n * n];
    for v in &basis {
        for i in 0..n {
            for j in 0..n {
                p[i * n + j] += (v[i] * v[j]) as f32;
            }
        }
    }
    Tensor::<1>::from_floats(p.as_slice(), device).reshape([n, n])
}

/// The lowest-frequency part of every feature map: `P_H x P_W`.
///
/// # Shapes
/// - maps: `[B, C, H, W]`, output: `[B, C, H, W]`
fn low_pass(maps: Tensor<4>, threshold: usize) -> Tensor<4> {
    let [b, c, h, w] = maps.dims();
    let device = maps.device();
    let (ph, pw) = (low_frequency_projection(h, threshold, &device), low_frequency_projection(w, threshold, &device));
    let rows = ph.reshape([1, 1, h, h]).expand([b, c, h, h]).matmul(maps); // [B, C, H, W]
    rows.matmul(pw.reshape([1, 1, w, w]).expand([b, c, w, w])) // [B, C, H, W]
}

/// The skip's spatial part as feature maps `[B, C, H, W]`, and what to put back around it.
fn as_maps<const D: usize>(x: &Tensor<D>, layout: Layout) -> Tensor<4> {
    let dims = x.dims();
    match layout {
        Layout::Channels => x.clone().reshape([dims[0], dims[1], dims[2], dims[3]]),
        Layout::Tokens { grid: [h, w] } => {
            let (batch, tokens, d) = (dims[0], dims[1], dims[2]);
            x.clone().reshape([batch, tokens, d]).narrow(1, 1, h * w).reshape([batch, h, w, d]).permute([0, 3, 1, 2])
        }
    }
}

/// `x` with its lowest spatial frequencies multiplied by `s`: `x + (s - 1) low_pass(x)`.
pub fn scale_low_frequencies<const D: usize>(x: Tensor<D>, layout: Layout, s: f64, threshold: usize) -> Tensor<D> {
    let low = low_pass(as_maps(&x, layout), threshold).mul_scalar(s - 1.0); // [B, C, H, W]
    let dims = x.dims();
    let change: Tensor<D> = match layout {
        Layout::Channels => low.reshape(dims),
        Layout::Tokens { grid: [h, w] } => {
            let (batch, d) = (dims[0], dims[2]);
            let patches = low.permute([0, 2, 3, 1]).reshape([batch, h * w, d]); // [B, hw, D]
            let time = Tensor::<3>::zeros([batch, 1, d], &x.device());
            Tensor::cat(vec![time, patches], 1).reshape(dims)
        }
    };
    x + change
}

/// Per sample, the share of the skip's energy (over its spatial part) in its lowest frequencies,
/// `||low_pass(x)||^2 / ||x||^2` (Parseval: the spectrum's share).
///
/// # Shapes
/// - x: a skip in `layout`, output: `[B]`
pub fn low_frequency_share<const D: usize>(x: &Tensor<D>, layout: Layout, threshold: usize) -> Tensor<1> {
    let maps = as_maps(x, layout);
    let batch = maps.dims()[0];
    let energy = |t: Tensor<4>| t.square().reshape([batch as i64, -1]).sum_dim(1).reshape([batch]);
    energy(low_pass(maps.clone(), threshold)) / energy(maps).clamp_min(1e-30)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn share(maps: Vec<f32>, [b, c, h, w]: [usize; 4]) -> Vec<f32> {
        let x = Tensor::<1>::from_floats(maps.as_slice(), &Device::flex()).reshape([b, c, h, w]);
        low_frequency_share(&x, Layout::Channels, 1).into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn a_constant_map_is_all_low_frequency_and_a_checkerboard_none() {
        let (h, w) = (8, 8);
        assert!((share(vec![3.0; h * w], [1, 1, h, w])[0] - 1.0).abs() < 1e-5);
        let checker: Vec<f32> = (0..h * w).map(|i| if (i / w + i % w) % 2 == 0 { 1.0 } else { -1.0 }).collect();
        assert!(share(checker, [1, 1, h, w])[0].abs() < 1e-6);
        // One cosine of frequency 1 along the rows is all low; of frequency 3, none.
        let wave =
            |u: f64| (0..h * w).map(move |i| (2.0 * std::f64::consts::PI * u * (i / w) as f64 / h as f64).cos() as f32);
        assert!((share(wave(1.0).collect(), [1, 1, h, w])[0] - 1.0).abs() < 1e-5);
        assert!(share(wave(3.0).collect(), [1, 1, h, w])[0].abs() < 1e-5);
    }

    #[test]
    fn neutral_settings_change_nothing_and_the_token_grid_keeps_its_time_token() {
        let device = Device::flex();
        device.seed(2);
        let maps = Tensor::<4>::random([2, 3, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        let same = scale_low_frequencies(maps.clone(), Layout::Channels, 1.0, 1);
        let delta: f32 = (same - maps.clone()).abs().max().into_scalar();
        assert!(delta < 1e-6, "{delta}");
        let scaled = scale_first_half(maps.clone(), Layout::Channels, 1.0);
        assert_eq!(scaled.into_data(), maps.into_data());
        // Tokens: the time token is not part of the grid and never changes.
        let tokens = Tensor::<3>::random([2, 1 + 16, 5], Distribution::Normal(0.0, 1.0), &device);
        let edited = scale_low_frequencies(tokens.clone(), Layout::Tokens { grid: [4, 4] }, 0.2, 1);
        let time_change: f32 = (edited.narrow(1, 0, 1) - tokens.narrow(1, 0, 1)).abs().max().into_scalar();
        assert_eq!(time_change, 0.0);
    }

    #[test]
    fn a_ramp_runs_from_the_outermost_lsc_to_the_innermost() {
        let ramp = SkipEdit::ramp(5, 1.0, 0.6);
        for (got, want) in ramp.rho.iter().zip([1.0, 0.9, 0.8, 0.7, 0.6]) {
            assert!((got - want).abs() < 1e-12);
        }
        assert_eq!(SkipEdit::only(3, 2, 0.0).rho, vec![1.0, 0.0, 1.0]);
        assert_eq!(SkipEdit::default().rho(4), 1.0);
    }
}
