//! U-ViT (Bao et al. 2023) with scaled long skips, computing what the ScaleLong reference
//! `libs/uvit.py` computes, with its parameter names (`patch_embed.proj`, `pos_embed`,
//! `in_blocks.K.attn.qkv`, `mid_block`, `out_blocks.K.skip_linear`, `se.layer1`, ...); the skip
//! fusion as docs/method.md §2 describes it.
//!
//! Differences in naming only, which an importer maps: burn's `Linear` stores `weight` as
//! `[in, out]` (torch: `[out, in]`), `LayerNorm` calls weight/bias `gamma`/`beta`, and the LS
//! gates live in a list `se.K` also when shared (`se.0`; the reference's `se`).

mod block;

pub use block::{Block, BlockConfig, Mlp};

use crate::embeddings::timestep_embedding;
use crate::gate::SeGate;
use crate::init::{LinearInit, linear};
use crate::skip_edit::{Layout, SkipEdit};
use crate::skip_scaling::{FusionSite, SkipParams, SkipScaling, fuse_long_skip, learned_scalars, lsc_of_decoder_block};
use crate::trace::{ForwardTrace, record};
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::silu;
use scalelong_kernels::{Fused, cat_axis1};
use serde::{Deserialize, Serialize};

/// Every field of the reference `UViT.__init__` this project uses; defaults are a CPU-sized
/// U-ViT for 32x32 grey images (the presets in [`crate::presets`] name the others).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UViTConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    /// As in the reference: `depth / 2` in-blocks, one mid block, `depth / 2` out-blocks, so
    /// `N = depth / 2` long skips and `depth + 1` blocks in all.
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub mlp_time_embed: bool,
    /// The final 3x3 conv over the unpatchified image.
    pub conv: bool,
}

impl Default for UViTConfig {
    fn default() -> Self {
        Self {
            img_size: 32,
            patch_size: 2,
            in_chans: 1,
            embed_dim: 128,
            depth: 12,
            num_heads: 4,
            mlp_ratio: 4.0,
            qkv_bias: false,
            mlp_time_embed: false,
            conv: true,
        }
    }
}

impl UViTConfig {
    /// The smallest U-ViT the tests train: 8x8 images in patches of 2 (17 tokens), width 16, two
    /// heads, `depth` blocks (`depth / 2` LSCs); milliseconds a step.
    pub fn tiny(depth: usize) -> Self {
        Self { img_size: 8, patch_size: 2, embed_dim: 16, depth, num_heads: 2, ..Self::default() }
    }

    pub fn num_skips(&self) -> usize {
        self.depth / 2
    }
    /// Tokens a forward pass carries: the time token and one per patch.
    pub fn tokens(&self) -> usize {
        1 + (self.img_size / self.patch_size).pow(2)
    }

    /// Checks what would otherwise fail deep inside a forward pass.
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (
                self.patch_size > 0 && self.img_size.is_multiple_of(self.patch_size),
                "img_size must be a positive multiple of patch_size",
            ),
            (self.depth >= 2, "depth must be at least 2 (one long skip)"),
            (
                self.num_heads > 0 && self.embed_dim.is_multiple_of(self.num_heads),
                "embed_dim must be divisible by num_heads",
            ),
            (self.in_chans > 0, "in_chans must be positive"),
            (self.mlp_ratio > 0.0, "mlp_ratio must be positive"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(format!("model: {msg}")),
            None => Ok(()),
        }
    }

    pub fn init(&self, scaling: SkipScaling, device: &Device) -> UViT {
        let init = LinearInit::TruncNormal { std: 0.02 };
        let block = |fuses_skip| {
            Block::new(
                BlockConfig {
                    dim: self.embed_dim,
                    heads: self.num_heads,
                    mlp_ratio: self.mlp_ratio,
                    qkv_bias: self.qkv_bias,
                    fuses_skip,
                },
                init,
                device,
            )
        };
        let n = self.num_skips();
        let d = self.embed_dim;
        let patch_dim = self.patch_size.pow(2) * self.in_chans;
        let reduction = scaling.gate_reduction().unwrap_or(1);
        UViT {
            patch_embed: PatchEmbed {
                proj: Conv2dConfig::new([self.in_chans, d], [self.patch_size; 2])
                    .with_stride([self.patch_size; 2])
                    .init(device),
            },
            time_embed: self.mlp_time_embed.then(|| TimeMlp {
                fc1: linear(d, 4 * d, true, init, device),
                fc2: linear(4 * d, d, true, init, device),
            }),
            pos_embed: Param::from_tensor(Tensor::random(
                [1, self.tokens(), d],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            in_blocks: (0..n).map(|_| block(false)).collect(),
            mid_block: block(false),
            out_blocks: (0..n).map(|_| block(true)).collect(),
            norm: LayerNormConfig::new(d).init(device),
            decoder_pred: linear(d, patch_dim, true, init, device),
            final_layer: self.conv.then(|| {
                Conv2dConfig::new([self.in_chans, self.in_chans], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device)
            }),
            se: (0..scaling.gate_count(n)).map(|_| SeGate::new(self.tokens(), reduction, device)).collect(),
            skip_scalars: learned_scalars(scaling, n, device),
            scaling,
            edit: SkipEdit::default(),
            patch_size: self.patch_size,
            in_chans: self.in_chans,
        }
    }
}

#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
}

impl PatchEmbed {
    /// The `p x p` convolution with stride `p` (the reference's `proj`), run as what it is: a
    /// linear layer on the flattened patches, on the fused linear op (flex's strided
    /// convolution and its backward went through im2col and a transposed convolution).
    ///
    /// # Shapes
    /// - x: `[B, C, H, W]` (H and W multiples of p)
    /// - output: `[B, (H / p) (W / p), D]`, patches row by row
    pub fn forward(&self, x: Tensor<4>, p: usize) -> Tensor<3> {
        let [batch, c, height, width] = x.dims();
        let (gh, gw, d) = (height / p, width / p, self.proj.weight.dims()[0]);
        let patches =
            x.reshape([batch, c, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([batch, gh * gw, c * p * p]); // [B, hw, C p p]
        let weight = self.proj.weight.val().reshape([d, c * p * p]).transpose(); // [C p p, D]
        let bias = self.proj.bias.as_ref().map_or_else(|| Tensor::zeros([d], &patches.device()), |b| b.val());
        scalelong_kernels::linear(patches, weight, bias) // [B, hw, D]
    }
}

/// The optional `time_embed` MLP (`Linear(D, 4D), SiLU, Linear(4D, D)`); the CIFAR-10 reference
/// setting has none.
#[derive(Module, Debug)]
pub struct TimeMlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

#[derive(Module, Debug)]
pub struct UViT {
    pub patch_embed: PatchEmbed,
    pub time_embed: Option<TimeMlp>,
    pub pos_embed: Param<Tensor<3>>,
    pub in_blocks: Vec<Block>,
    pub mid_block: Block,
    pub out_blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub decoder_pred: Linear,
    pub final_layer: Option<Conv2d>,
    /// LS gates: one shared, one per LSC (indexed by decoder block, as the reference), or none.
    pub se: Vec<SeGate>,
    /// Learned-scalar strategy: one `[1]` coefficient per LSC, indexed by decoder block; else none.
    pub skip_scalars: Vec<Param<Tensor<1>>>,
    #[module(skip)]
    pub scaling: SkipScaling,
    /// Sampling-time changes to the skips (none by default).
    #[module(skip)]
    pub edit: SkipEdit,
    pub patch_size: usize,
    pub in_chans: usize,
}

impl UViT {
    pub fn num_skips(&self) -> usize {
        self.in_blocks.len()
    }

    /// Predicts the noise in `x` at network times `timesteps`.
    ///
    /// # Shapes
    /// - x: `[B, C, H, W]`, timesteps: `[B]`
    /// - output: `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>, timesteps: Tensor<1>, mut trace: Option<&mut ForwardTrace>) -> Tensor<4> {
        let [batch, _, height, width] = x.dims();
        let dim = self.norm.gamma.dims()[0];

        // 1. Time token.
        let time = timestep_embedding(timesteps, dim); // [B, D]
        let time = match &self.time_embed {
            Some(mlp) => mlp.fc2.fused(silu(mlp.fc1.fused(time))),
            None => time,
        };
        let time = time.reshape([batch, 1, dim]); // [B, 1, D]

        // 2. Patches, time token first, position embedding.
        let patches = self.patch_embed.forward(x, self.patch_size); // [B, hw, D]
        let mut h = cat_axis1(time, patches) + self.pos_embed.val(); // [B, L, D]

        // 3. Encoder: every in-block pushes its output as a skip.
        let mut skips = Vec::with_capacity(self.in_blocks.len());
        for blk in &self.in_blocks {
            h = blk.forward(h, None); // [B, L, D]
            record(&mut trace, |t| t.encoder.push(ForwardTrace::flat(&h)));
            skips.push(h.clone());
        }

        // 4. Middle.
        h = self.mid_block.forward(h, None);
        record(&mut trace, |t| t.middle = Some(ForwardTrace::flat(&h)));

        // 5. Decoder: block k pops LSC N - k and fuses coef * skip.
        let n = self.num_skips();
        let layout = Layout::Tokens { grid: [height / self.patch_size, width / self.patch_size] };
        for (k, blk) in self.out_blocks.iter().enumerate() {
            let skip = skips.pop().expect("one skip per out-block"); // [B, L, D]
            let lsc = lsc_of_decoder_block(k, n);
            let params = match (self.se.get(if self.se.len() == 1 { 0 } else { k }), self.skip_scalars.get(k)) {
                (Some(gate), _) => SkipParams::Gate(gate), // LS: shared, or one per LSC
                (None, Some(scalar)) => SkipParams::Scalar(scalar),
                (None, None) => SkipParams::None,
            };
            let site = FusionSite { lsc, params, widths: (dim, dim), stage: (k < 2).then_some(k), layout };
            let fusion = fuse_long_skip(self.scaling, &self.edit, h, skip, site, &mut trace);
            h = blk.forward(fusion.main, Some(fusion.skip)); // [B, L, D]
            record(&mut trace, |t| t.decoder.push(ForwardTrace::flat(&h)));
        }

        // 6. Head: norm, per-token pixels, drop the time token, unpatchify, 3x3 conv.
        let h = self.decoder_pred.fused(self.norm.fused(h)); // [B, L, p*p*C]
        let tokens = h.dims()[1];
        let h = h.narrow(1, 1, tokens - 1); // [B, hw, p*p*C]
        let img = unpatchify(h, self.patch_size, self.in_chans, height, width); // [B, C, H, W]
        match &self.final_layer {
            Some(conv) => conv.fused(img),
            None => img,
        }
    }
}

/// `'B (h w) (p1 p2 C) -> B C (h p1) (w p2)'`.
///
/// # Shapes
/// - x: `[B, hw, p*p*C]`
/// - output: `[B, C, H, W]`
fn unpatchify(x: Tensor<3>, p: usize, channels: usize, height: usize, width: usize) -> Tensor<4> {
    let batch = x.dims()[0];
    let (gh, gw) = (height / p, width / p);
    x.reshape([batch, gh, gw, p, p, channels]) // [B, h, w, p1, p2, C]
        .permute([0, 5, 1, 3, 2, 4]) // [B, C, h, p1, w, p2]
        .reshape([batch, channels, height, width])
}
