//! Sinusoidal timestep embedding shared by both networks.

use burn::prelude::*;

/// The reference code's `timestep_embedding`: `[cos(t f_0..f_{h-1}), sin(t f_0..f_{h-1})]` with
/// `f_j = exp(-ln(10000) j / h)`, `h = dim / 2`, and one zero column when `dim` is odd.
///
/// # Shapes
/// - timesteps: `[B]` (may be fractional)
/// - output: `[B, dim]`
pub fn timestep_embedding(timesteps: Tensor<1>, dim: usize) -> Tensor<2> {
    const MAX_PERIOD: f64 = 10_000.0;
    let device = timesteps.device();
    let [batch] = timesteps.dims();
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half).map(|j| (-(MAX_PERIOD.ln()) * j as f64 / half as f64).exp() as f32).collect();
    let freqs = Tensor::<1>::from_floats(freqs.as_slice(), &device).reshape([1, half]); // [1, h]
    let args = timesteps.reshape([batch, 1]) * freqs; // [B, h]
    let mut parts = vec![args.clone().cos(), args.sin()]; // 2 x [B, h]
    if dim % 2 == 1 {
        parts.push(Tensor::zeros([batch, 1], &device));
    }
    Tensor::cat(parts, 1) // [B, dim]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_closed_form_cos_first() {
        let device = Device::flex();
        let t = Tensor::<1>::from_floats([0.0, 3.0, 999.0], &device);
        let e = timestep_embedding(t, 7).into_data().try_to_vec::<f32>().unwrap();
        let (dim, half) = (7, 3);
        for (b, t) in [0.0f64, 3.0, 999.0].iter().enumerate() {
            for j in 0..half {
                let f = (-(10_000f64.ln()) * j as f64 / half as f64).exp();
                assert!((e[b * dim + j] as f64 - (t * f).cos()).abs() < 1e-3);
                assert!((e[b * dim + half + j] as f64 - (t * f).sin()).abs() < 1e-3);
            }
            assert_eq!(e[b * dim + 6], 0.0);
        }
    }
}
