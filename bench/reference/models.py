"""PyTorch twins of the scalelong presets, for speed and parameter-count comparisons.

- `UViT` computes what the ScaleLong reference (sail-sg/ScaleLong `libs/uvit.py`) computes:
  timestep embedding cos first, time token first, `pos_embed`, in/mid/out blocks, decoder blocks
  fusing `skip_linear(cat([x, coef * skip], -1))`, LS through an `Attentionlayer` SE gate over the
  token axis (shared `se`, or a `ModuleList` when non-shared), norm, `decoder_pred`, unpatchify,
  3x3 conv. Attention uses `scaled_dot_product_attention`, the reference's default ("flash") mode.
  Only `torch` is needed (the reference's einops rearranges are written out).
- `UNet` is built exactly as `crates/scalelong-model/src/unet.rs` builds it: stem conv, ResBlocks
  (GroupNorm, SiLU, 3x3 conv, time projection, GroupNorm, SiLU, 3x3 conv, 1x1 shortcut when the
  width changes), stride-2 conv downsampling, nearest x2 + conv upsampling, spatial self-attention
  at the lowest resolution, decoder ResBlocks fusing `cat([h, coef * skip], 1)`, one channel SE
  gate per LSC for LS, GroupNorm + SiLU + 3x3 conv out. Same widths, same parameter counts, and
  the Rust module names (`middle.res1`, `middle.attn`, `decoder.K.gate.layer1`, ...), so a state
  dict maps onto the Rust model by name; only the encoder differs, its Rust entries being enum
  variants (`encoder.1.Res.res.conv1.weight` for torch's `encoder.1.res.conv1.weight`).

Strategies: "1", "1/sqrt2", "cs" (kappa 0.5), "ls" (shared gate, r = 16), "ls-nonshared".
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

KAPPA = 0.5
REDUCTION = 16
STRATEGIES = ["1", "1/sqrt2", "cs", "ls", "ls-nonshared"]

# The presets of crates/scalelong-model/src/presets.rs.
PRESETS = {
    "unet-small": dict(arch="unet", img_size=32, in_channels=1, base_channels=16, channel_mult=[1, 2, 2],
                       res_blocks=1, attention_heads=2, norm_groups=8),
    "uvit-small": dict(arch="uvit", img_size=32, patch_size=4, in_chans=1, embed_dim=64, depth=12, num_heads=4),
    "uvit-deep": dict(arch="uvit", img_size=32, patch_size=4, in_chans=1, embed_dim=64, depth=16, num_heads=4),
    "uvit-s2": dict(arch="uvit", img_size=32, patch_size=2, in_chans=1, embed_dim=512, depth=12, num_heads=8),
    "uvit-s2-deep": dict(arch="uvit", img_size=32, patch_size=2, in_chans=1, embed_dim=512, depth=16, num_heads=8),
}


def coefficient(strategy, lsc):
    """Fixed coefficient of LSC `lsc` (1 = outermost); None for learnable scaling."""
    if strategy == "1":
        return 1.0
    if strategy == "1/sqrt2":
        return 2 ** -0.5
    if strategy == "cs":
        return KAPPA ** (lsc - 1)
    return None


def timestep_embedding(timesteps, dim, max_period=10000):
    """The reference's embedding, cos first, in float32; in float64 when the timesteps are float64,
    so that a `.double()` copy of a model runs wholly in float64 (make_fixtures.py's reference)."""
    dtype = torch.float64 if timesteps.dtype == torch.float64 else torch.float32
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=dtype) / half).to(timesteps.device)
    args = timesteps[:, None].to(dtype) * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class Attention(nn.Module):
    """The reference's `Attention` ('B L (K H D) -> K B H L D', SDPA, proj)."""

    def __init__(self, dim, num_heads, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # B H L D
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(B, L, C)
        return self.proj(x)


class Attentionlayer(nn.Module):
    """The reference's LS gate: sigmoid(layer2(relu(layer1(mean_D(x))))) -> [B, L, 1]."""

    def __init__(self, dim, r=REDUCTION):
        super().__init__()
        hidden = max(int(dim // r), 1)  # the Rust side keeps one hidden unit for tiny widths
        self.layer1 = nn.Linear(dim, hidden)
        self.layer2 = nn.Linear(hidden, dim)

    def forward(self, inp):
        return torch.sigmoid(self.layer2(torch.relu(self.layer1(inp.mean(dim=-1))))).unsqueeze(-1)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, skip=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class UViT(nn.Module):
    def __init__(self, strategy="1", img_size=32, patch_size=2, in_chans=1, embed_dim=128, depth=12, num_heads=4,
                 mlp_ratio=4.0, qkv_bias=False, mlp_time_embed=False, conv=True):
        super().__init__()
        self.strategy = strategy
        self.embed_dim = embed_dim
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.time_embed = nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.SiLU(),
                                        nn.Linear(4 * embed_dim, embed_dim)) if mlp_time_embed else nn.Identity()
        self.extras = 1
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + num_patches, embed_dim))
        self.outdepth = depth // 2
        self.in_blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth // 2)])
        self.mid_block = Block(embed_dim, num_heads, mlp_ratio, qkv_bias)
        self.out_blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias, skip=True)
                                         for _ in range(depth // 2)])
        self.norm = nn.LayerNorm(embed_dim)
        self.patch_dim = patch_size ** 2 * in_chans
        self.decoder_pred = nn.Linear(embed_dim, self.patch_dim, bias=True)
        self.final_layer = nn.Conv2d(in_chans, in_chans, 3, padding=1) if conv else nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)
        tokens = self.extras + num_patches
        if strategy == "ls":
            self.se = Attentionlayer(tokens)
        elif strategy == "ls-nonshared":
            self.se = nn.ModuleList([Attentionlayer(tokens) for _ in range(self.outdepth)])

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def scaled(self, skip, k):
        c = coefficient(self.strategy, self.outdepth - k)
        if c is not None:
            return skip if c == 1.0 else skip * c
        gate = self.se if self.strategy == "ls" else self.se[k]
        return skip * gate(skip)

    def forward(self, x, timesteps):
        B, C, H, W = x.shape
        x = self.patch_embed(x)
        time_token = self.time_embed(timestep_embedding(timesteps, self.embed_dim)).unsqueeze(1)
        x = torch.cat((time_token, x), dim=1) + self.pos_embed
        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for k, blk in enumerate(self.out_blocks):
            x = blk(x, self.scaled(skips.pop(), k))
        x = self.decoder_pred(self.norm(x))[:, self.extras:, :]
        # 'B (h w) (p1 p2 C) -> B C (h p1) (w p2)'
        p, h, w = self.patch_size, H // self.patch_size, W // self.patch_size
        x = x.reshape(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)
        return self.final_layer(x)


# ---------------------------------------------------------------------------------------------
# The conv UNet of crates/scalelong-model/src/unet.rs.

def group_norm(groups, channels):
    groups = next(g for g in range(min(groups, channels), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def conv3x3(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, time_dim, groups):
        super().__init__()
        self.norm1 = group_norm(groups, c_in)
        self.conv1 = conv3x3(c_in, c_out)
        self.time_proj = nn.Linear(time_dim, c_out)
        self.norm2 = group_norm(groups, c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x, time):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(time)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.shortcut is None else self.shortcut(x)) + h


class SpatialAttention(nn.Module):
    def __init__(self, channels, heads, groups):
        super().__init__()
        self.norm = group_norm(groups, channels)
        self.attn = Attention(channels, heads, qkv_bias=True)

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = self.norm(x).reshape(b, c, h * w).transpose(1, 2)
        return x + self.attn(tokens).transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = conv3x3(channels, channels, 2)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class SeGate(nn.Module):
    """Channel SE gate of one LSC: [B, C] pooled -> [B, C] in (0, 1)."""

    def __init__(self, width, reduction=REDUCTION):
        super().__init__()
        hidden = max(width // reduction, 1)
        self.layer1 = nn.Linear(width, hidden)
        self.layer2 = nn.Linear(hidden, width)

    def forward(self, pooled):
        return torch.sigmoid(self.layer2(torch.relu(self.layer1(pooled))))


class ResAttnBlock(nn.Module):
    def __init__(self, res, attn):
        super().__init__()
        self.res = res
        self.attn = attn


class MiddleBlock(nn.Module):
    """ResBlock, optional attention, ResBlock: one module named as the Rust `MiddleBlock` (`res1`,
    `attn`, `res2`), so the two sides' parameter names agree (`middle.attn.norm.weight`, ...)."""

    def __init__(self, res1, attn, res2):
        super().__init__()
        self.res1 = res1
        self.attn = attn
        self.res2 = res2

    def forward(self, h, time):
        h = self.res1(h, time)
        if self.attn is not None:
            h = self.attn(h)
        return self.res2(h, time)


class DecoderBlock(nn.Module):
    def __init__(self, res, attn, upsample, gate):
        super().__init__()
        self.res = res
        self.attn = attn
        self.upsample = upsample
        self.gate = gate


class UNet(nn.Module):
    def __init__(self, strategy="1", img_size=32, in_channels=1, base_channels=32, channel_mult=(1, 2, 2),
                 res_blocks=1, attention_heads=4, norm_groups=8):
        super().__init__()
        self.strategy = strategy
        self.base_channels = base_channels
        levels = len(channel_mult)
        ch = lambda level: base_channels * channel_mult[level]
        time_dim = 4 * base_channels
        last = levels - 1

        def attention(level, c):
            return SpatialAttention(c, attention_heads, norm_groups) if level == last and attention_heads > 0 else None

        self.time_embed = nn.ModuleDict(dict(fc1=nn.Linear(base_channels, time_dim), fc2=nn.Linear(time_dim, time_dim)))
        encoder = [conv3x3(in_channels, ch(0))]
        self.encoder_kinds = ["stem"]
        skip_widths = [ch(0)]
        width = ch(0)
        for level in range(levels):
            for _ in range(res_blocks):
                encoder.append(ResAttnBlock(ResBlock(width, ch(level), time_dim, norm_groups), attention(level, ch(level))))
                self.encoder_kinds.append("res")
                width = ch(level)
                skip_widths.append(width)
            if level != last:
                encoder.append(Downsample(width))
                self.encoder_kinds.append("down")
                skip_widths.append(width)
        self.encoder = nn.ModuleList(encoder)
        self.middle = MiddleBlock(ResBlock(width, width, time_dim, norm_groups), attention(last, width),
                                  ResBlock(width, width, time_dim, norm_groups))
        learnable = strategy in ("ls", "ls-nonshared")
        decoder = []
        for level in reversed(range(levels)):
            for i in range(res_blocks + 1):
                skip_width = skip_widths.pop()
                decoder.append(DecoderBlock(
                    ResBlock(width + skip_width, ch(level), time_dim, norm_groups),
                    attention(level, ch(level)),
                    Upsample(ch(level)) if level != 0 and i == res_blocks else None,
                    SeGate(skip_width) if learnable else None,
                ))
                width = ch(level)
        self.decoder = nn.ModuleList(decoder)
        self.out_norm = group_norm(norm_groups, width)
        self.out_conv = conv3x3(width, in_channels)

    def forward(self, x, timesteps):
        time = timestep_embedding(timesteps, self.base_channels)
        time = F.silu(self.time_embed["fc2"](F.silu(self.time_embed["fc1"](time))))
        h = x
        skips = []
        for kind, block in zip(self.encoder_kinds, self.encoder):
            if kind == "res":
                h = block.res(h, time)
                if block.attn is not None:
                    h = block.attn(h)
            else:
                h = block(h)
            skips.append(h)
        h = self.middle(h, time)
        n = len(self.encoder)
        for k, block in enumerate(self.decoder):
            skip = skips.pop()
            c = coefficient(self.strategy, n - k)
            if c is None:
                skip = skip * block.gate(skip.mean(dim=(2, 3)))[:, :, None, None]
            elif c != 1.0:
                skip = skip * c
            h = block.res(torch.cat([h, skip], 1), time)
            if block.attn is not None:
                h = block.attn(h)
            if block.upsample is not None:
                h = block.upsample(h)
        return self.out_conv(F.silu(self.out_norm(h)))


def build(preset, strategy="1"):
    config = dict(PRESETS[preset])
    arch = config.pop("arch")
    return (UNet if arch == "unet" else UViT)(strategy, **config)


def param_count(model):
    return sum(p.numel() for p in model.parameters())
