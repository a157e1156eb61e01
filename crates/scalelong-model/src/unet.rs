//! A conv UNet in the ADM/DDPM style with scaled long skips.
//!
//! Every encoder block (the stem conv, each ResBlock, each Downsample) pushes its output as a skip;
//! every decoder ResBlock pops one and fuses `cat([h, coef_i * skip_i], channels)`, as
//! imagen-pytorch does (docs/method.md §2). LS uses one channel SE gate per LSC (the skips differ
//! in width, so a shared gate cannot exist: `shared` is ignored here, see
//! [`SkipScaling::Learnable`]).

mod resnet;
mod sampling;

pub use resnet::ResBlock;
pub use sampling::{Downsample, SpatialAttention, Upsample};

use crate::embeddings::timestep_embedding;
use crate::gate::SeGate;
use crate::init::{LinearInit, linear};
use crate::skip_edit::{Layout, SkipEdit};
use crate::skip_scaling::{FusionSite, SkipParams, SkipScaling, fuse_long_skip, learned_scalars, lsc_of_decoder_block};
use crate::trace::{ForwardTrace, record};
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::silu;
use resnet::{conv3x3, group_norm};
use scalelong_kernels::{Fused, FusedSilu, cat_axis1};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    pub img_size: usize,
    pub in_channels: usize,
    /// Width of the first level; level l has `base_channels * channel_mult[l]`.
    pub base_channels: usize,
    pub channel_mult: Vec<usize>,
    /// ResBlocks per level in the encoder (the decoder has one more per level, as in ADM).
    pub res_blocks: usize,
    /// Self-attention heads at the lowest resolution (0 = no attention).
    pub attention_heads: usize,
    pub norm_groups: usize,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            img_size: 32,
            in_channels: 1,
            base_channels: 32,
            channel_mult: vec![1, 2, 2],
            res_blocks: 1,
            attention_heads: 4,
            norm_groups: 8,
        }
    }
}

/// One encoder step; each pushes one skip.
// A Vec of a few of these, built once: the padding of the small variants costs nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum EncoderBlock {
    Stem(Conv2d),
    Res(ResAttnBlock),
    Down(Downsample),
}

/// A ResBlock, followed by self-attention at the lowest resolution.
#[derive(Module, Debug)]
pub struct ResAttnBlock {
    pub res: ResBlock,
    pub attn: Option<SpatialAttention>,
}

#[derive(Module, Debug)]
pub struct DecoderBlock {
    pub res: ResBlock,
    pub attn: Option<SpatialAttention>,
    pub upsample: Option<Upsample>,
    /// LS only: the channel gate of the LSC this block consumes.
    pub gate: Option<SeGate>,
    /// Learned-scalar strategy only: the coefficient of the LSC this block consumes, `[1]`.
    pub scalar: Option<Param<Tensor<1>>>,
}

#[derive(Module, Debug)]
pub struct MiddleBlock {
    pub res1: ResBlock,
    pub attn: Option<SpatialAttention>,
    pub res2: ResBlock,
}

#[derive(Module, Debug)]
pub struct TimeEmbedding {
    pub fc1: Linear,
    pub fc2: Linear,
}

#[derive(Module, Debug)]
pub struct UNet {
    pub time_embed: TimeEmbedding,
    pub encoder: Vec<EncoderBlock>,
    pub middle: MiddleBlock,
    pub decoder: Vec<DecoderBlock>,
    pub out_norm: GroupNorm,
    pub out_conv: Conv2d,
    #[module(skip)]
    pub scaling: SkipScaling,
    /// Sampling-time changes to the skips (none by default).
    #[module(skip)]
    pub edit: SkipEdit,
    pub base_channels: usize,
}

impl UNetConfig {
    pub fn levels(&self) -> usize {
        self.channel_mult.len()
    }

    /// Stem + `res_blocks` per level + one Downsample between levels.
    pub fn num_skips(&self) -> usize {
        1 + self.levels() * self.res_blocks + self.levels().saturating_sub(1)
    }

    pub fn validate(&self) -> Result<(), String> {
        let down = 1usize << self.levels().saturating_sub(1);
        let checks = [
            (
                !self.channel_mult.is_empty() && self.channel_mult.iter().all(|&m| m > 0),
                "channel_mult must be a non-empty list of positive integers",
            ),
            (self.base_channels > 0 && self.in_channels > 0, "base_channels and in_channels must be positive"),
            (self.res_blocks > 0, "res_blocks must be at least 1"),
            (self.img_size.is_multiple_of(down), "img_size must be divisible by 2^(levels - 1)"),
            (
                self.attention_heads == 0
                    || self.channel_mult.iter().all(|m| (m * self.base_channels).is_multiple_of(self.attention_heads)),
                "every level's width must be divisible by attention_heads",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(format!("model: {msg}")),
            None => Ok(()),
        }
    }

    pub fn init(&self, scaling: SkipScaling, device: &Device) -> UNet {
        let ch = |level: usize| self.base_channels * self.channel_mult[level];
        let time_dim = 4 * self.base_channels;
        let groups = self.norm_groups;
        let last = self.levels() - 1;
        let attention = |level: usize, c: usize| {
            (level == last && self.attention_heads > 0)
                .then(|| SpatialAttention::new(c, self.attention_heads, groups, device))
        };

        // Encoder, remembering the width of every skip it pushes.
        let mut encoder = vec![EncoderBlock::Stem(conv3x3(self.in_channels, ch(0), 1, device))];
        let mut skip_widths = vec![ch(0)];
        let mut width = ch(0);
        for level in 0..self.levels() {
            for _ in 0..self.res_blocks {
                encoder.push(EncoderBlock::Res(ResAttnBlock {
                    res: ResBlock::new(width, ch(level), time_dim, groups, device),
                    attn: attention(level, ch(level)),
                }));
                width = ch(level);
                skip_widths.push(width);
            }
            if level != last {
                encoder.push(EncoderBlock::Down(Downsample::new(width, device)));
                skip_widths.push(width);
            }
        }

        let middle = MiddleBlock {
            res1: ResBlock::new(width, width, time_dim, groups, device),
            attn: attention(last, width),
            res2: ResBlock::new(width, width, time_dim, groups, device),
        };

        // Decoder: levels in reverse, res_blocks + 1 blocks each, popping skips innermost first.
        let reduction = scaling.gate_reduction();
        let mut scalars = learned_scalars(scaling, skip_widths.len(), device).into_iter();
        let mut decoder = Vec::with_capacity(skip_widths.len());
        for level in (0..self.levels()).rev() {
            for i in 0..=self.res_blocks {
                let skip_width = skip_widths.pop().expect("one skip per decoder block");
                decoder.push(DecoderBlock {
                    res: ResBlock::new(width + skip_width, ch(level), time_dim, groups, device),
                    attn: attention(level, ch(level)),
                    upsample: (level != 0 && i == self.res_blocks).then(|| Upsample::new(ch(level), device)),
                    gate: reduction.map(|r| SeGate::new(skip_width, r, device)),
                    scalar: scalars.next(),
                });
                width = ch(level);
            }
        }

        UNet {
            time_embed: TimeEmbedding {
                fc1: linear(self.base_channels, time_dim, true, LinearInit::TorchDefault, device),
                fc2: linear(time_dim, time_dim, true, LinearInit::TorchDefault, device),
            },
            encoder,
            middle,
            decoder,
            out_norm: group_norm(groups, width, device),
            out_conv: conv3x3(width, self.in_channels, 1, device),
            scaling,
            edit: SkipEdit::default(),
            base_channels: self.base_channels,
        }
    }
}

impl UNet {
    pub fn num_skips(&self) -> usize {
        self.encoder.len()
    }

    /// Predicts the noise in `x` at network times `timesteps`.
    ///
    /// # Shapes
    /// - x: `[B, C, H, W]`, timesteps: `[B]`
    /// - output: `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>, timesteps: Tensor<1>, mut trace: Option<&mut ForwardTrace>) -> Tensor<4> {
        // 1. Time embedding, passed through SiLU once for every ResBlock's projection.
        let time = timestep_embedding(timesteps, self.base_channels); // [B, base]
        let time = self.time_embed.fc2.fused(silu(self.time_embed.fc1.fused(time))); // [B, 4 base]
        let time = silu(time);

        // 2. Encoder: every block pushes its output as a skip.
        let mut h = x;
        let mut skips = Vec::with_capacity(self.encoder.len());
        for block in &self.encoder {
            h = match block {
                EncoderBlock::Stem(conv) => conv.fused(h),
                EncoderBlock::Res(block) => {
                    let h = block.res.forward(h, time.clone());
                    match &block.attn {
                        Some(attn) => attn.forward(h),
                        None => h,
                    }
                }
                EncoderBlock::Down(down) => down.forward(h),
            };
            record(&mut trace, |t| t.encoder.push(ForwardTrace::flat(&h)));
            skips.push(h.clone());
        }

        // 3. Middle.
        h = self.middle.res1.forward(h, time.clone());
        if let Some(attn) = &self.middle.attn {
            h = attn.forward(h);
        }
        h = self.middle.res2.forward(h, time.clone());
        record(&mut trace, |t| t.middle = Some(ForwardTrace::flat(&h)));

        // 4. Decoder: block k pops LSC N - k and fuses coef * skip along channels. A stage is one
        // resolution level (FreeU edits the two innermost); an upsampling block ends one.
        let n = self.num_skips();
        let mut stage = 0;
        for (k, block) in self.decoder.iter().enumerate() {
            let skip = skips.pop().expect("one skip per decoder block"); // [B, C_s, H, W]
            let lsc = lsc_of_decoder_block(k, n);
            let params = match (&block.gate, &block.scalar) {
                (Some(gate), _) => SkipParams::Gate(gate),
                (None, Some(scalar)) => SkipParams::Scalar(scalar),
                (None, None) => SkipParams::None,
            };
            let widths = (h.dims()[1], skip.dims()[1]);
            let site = FusionSite { lsc, params, widths, stage: Some(stage), layout: Layout::Channels };
            let fusion = fuse_long_skip(self.scaling, &self.edit, h, skip, site, &mut trace);
            h = block.res.forward(cat_axis1(fusion.main, fusion.skip), time.clone()); // [B, C_l, H, W]
            if let Some(attn) = &block.attn {
                h = attn.forward(h);
            }
            if let Some(up) = &block.upsample {
                h = up.forward(h); // [B, C_l, 2H, 2W]
                stage += 1;
            }
            record(&mut trace, |t| t.decoder.push(ForwardTrace::flat(&h)));
        }

        // 5. Output.
        self.out_conv.fused(self.out_norm.fused_silu(h)) // [B, C, H, W]
    }
}
