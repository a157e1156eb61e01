//! Sample grids: EMA weights, fixed noise seed, written as PNG.

use anyhow::Result;
use burn::prelude::*;
use scalelong_model::diffusion::NoiseSchedule;
use scalelong_model::{DiffusionNet, ModelConfig};
use scalelong_schema::{RunConfig, write_atomic};
use std::path::{Path, PathBuf};

/// The seed of the sampling noise: fixed, so grids of one run (and of all strategies) compare.
pub const SAMPLE_SEED: u64 = 0x5ca1e;

pub fn grid_path(run: &Path, step: u64) -> PathBuf {
    run.join("samples").join(format!("step_{step:07}.png"))
}

/// Generates `config.sample_count` images with the EMA weights and writes them as one grid.
pub fn write_grid(
    run: &Path,
    step: u64,
    ema: &DiffusionNet,
    model: &ModelConfig,
    schedule: &NoiseSchedule,
    config: &RunConfig,
    device: &Device,
) -> Result<()> {
    let images = generate(ema, model, schedule, config, (config.sample_count, SAMPLE_SEED), device);
    let [n, c, h, w] = images.dims();
    let pixels = images.into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let png = encode_grid(&pixels, [n, c, h, w])?;
    std::fs::create_dir_all(run.join("samples"))?;
    write_atomic(&grid_path(run, step), &png)
}

/// `count` samples from the sampling noise of `seed`, `[count, C, H, W]` in [-1, 1], on the
/// inference backend.
pub fn generate(
    ema: &DiffusionNet,
    model: &ModelConfig,
    schedule: &NoiseSchedule,
    config: &RunConfig,
    (count, seed): (usize, u64),
    device: &Device,
) -> Tensor<4> {
    let [c, h, w] = model.image_shape();
    let device = device.clone().inner();
    schedule.sample(config.diffusion.sampler, [count, c, h, w], seed, &device, |x, t| ema.forward(x, t, None))
}

/// Tiles NCHW images in [-1, 1] into a square-ish grid with 2-pixel gaps, as 8-bit grey or RGB.
pub fn encode_grid(pixels: &[f32], dims: [usize; 4]) -> Result<Vec<u8>> {
    encode_rows(pixels, dims, (dims[0] as f64).sqrt().ceil() as usize)
}

/// Tiles NCHW images in [-1, 1] `cols` to a row, row after row, with 2-pixel gaps, as 8-bit grey or
/// RGB.
pub fn encode_rows(pixels: &[f32], [n, c, h, w]: [usize; 4], cols: usize) -> Result<Vec<u8>> {
    const GAP: usize = 2;
    let cols = cols.max(1);
    let rows = n.div_ceil(cols);
    let (gw, gh) = (cols * (w + GAP) + GAP, rows * (h + GAP) + GAP);
    let out_channels = if c == 1 { 1 } else { 3 };
    let mut grid = vec![255u8; gw * gh * out_channels];
    for i in 0..n {
        let (gy, gx) = (GAP + (i / cols) * (h + GAP), GAP + (i % cols) * (w + GAP));
        for y in 0..h {
            for x in 0..w {
                for ch in 0..out_channels {
                    let v = pixels[((i * c + ch.min(c - 1)) * h + y) * w + x];
                    grid[((gy + y) * gw + gx + x) * out_channels + ch] =
                        ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                }
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, gw as u32, gh as u32);
        encoder.set_color(if out_channels == 1 { png::ColorType::Grayscale } else { png::ColorType::Rgb });
        encoder.set_depth(png::BitDepth::Eight);
        encoder.write_header()?.write_image_data(&grid)?;
    }
    Ok(out)
}
