#!/usr/bin/env python3
"""Writes the PyTorch parity fixtures: tiny models of bench/reference/models.py with random
weights, one input batch and the output PyTorch computes for it, so that Rust tests can check
that the burn networks compute what the PyTorch reference computes and that PyTorch state dicts
import into them.

    python3 bench/reference/make_fixtures.py          # writes the fixtures, then reads them back
    python3 bench/reference/make_fixtures.py --list   # also prints every fixture's names and shapes

Only `torch` and the standard library are needed (no numpy, no safetensors package: the
safetensors files are written by hand). Running it twice writes byte-identical files.

For every architecture in {uvit, unet} and strategy in {"1", "1/sqrt2", "cs", "ls",
"ls-nonshared"} (file names use `1`, `inv-sqrt2`, `cs`, `ls`, `ls-nonshared`) it writes into
tests/fixtures/pytorch/:

    <arch>_<strategy>.safetensors     the model's state_dict, torch names and layouts (Linear
                                      weight [out, in], LayerNorm weight/bias), float32, sorted
                                      by name
    <arch>_<strategy>.io.safetensors  x [B, C, H, W] ~ N(0, 1), t [B] = (3, 250, 999) float32
                                      timesteps, out = model(x, t) [B, C, H, W]
    <arch>_<strategy>.json            {"model": <the Rust ModelConfig>, "strategy": <the Rust
                                      strategy string>}, which serde reads as they are

plus uvit_ls.pth, torch.save(state_dict) of the uvit "ls" fixture (the same weights), for the
.pth import path, and uvit_1.nested.pth, torch.save({"model": state_dict, "step": 7}) of the uvit "1"
fixture, for a state dict nested in a dict.

`out` is the output of a float64 copy of the model (weights, x and t cast to float64, the whole
forward in float64, timestep embedding included), cast to float32: an exact target for the f32
networks of both sides rather than one f32 rounding of it. The script prints how far torch's own
float32 forward lies from it, the floor a Rust f32 forward can expect.

Every parameter is overwritten with random values after construction, so that no zero bias or
unit gain can hide a mapping mistake (a LayerNorm weight/bias swap, a transposed Linear):
weights ~ N(0, 1 / fan_in) (activations stay O(1) and the LS gates stay off saturation), biases
~ N(0, 0.2^2), norm weights 1 + N(0, 0.2^2), norm biases N(0, 0.2^2), pos_embed N(0, 0.5^2).

Names on the Rust side differ only where an importer maps them: burn's Linear stores weight
[in, out], LayerNorm calls weight/bias gamma/beta, the UNet's encoder entries are enum variants
(`encoder.1.Res.res.conv1.weight` for torch's `encoder.1.res.conv1.weight`), and the U-ViT's
shared LS gate is `se.0.layer1...` (torch's `se.layer1...`).
"""
import argparse
import copy
import hashlib
import json
import os
import struct
import sys
import warnings

warnings.filterwarnings("ignore")  # torch warns when numpy is absent; numpy is not needed

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import models  # noqa: E402

OUT_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "fixtures", "pytorch"))

# The Rust ModelConfig of each architecture, field for field (serde tag "arch"); the Python
# constructors take the same keyword names. Tiny, so the whole folder stays small.
CONFIGS = {
    "uvit": dict(arch="uvit", img_size=8, patch_size=2, in_chans=1, embed_dim=8, depth=4, num_heads=2,
                 mlp_ratio=4.0, qkv_bias=False, mlp_time_embed=False, conv=True),
    "unet": dict(arch="unet", img_size=8, in_channels=1, base_channels=4, channel_mult=[1, 2], res_blocks=1,
                 attention_heads=2, norm_groups=2),
    # The reference's other switches (time MLP, qkv bias, no final conv, MLP ratio 2), LS only.
    "uvit-variant": dict(arch="uvit", img_size=8, patch_size=2, in_chans=1, embed_dim=8, depth=4, num_heads=2,
                         mlp_ratio=2.0, qkv_bias=True, mlp_time_embed=True, conv=False),
}
ONLY = {"uvit-variant": ["ls"]}  # configs fixtured with a subset of the strategies
# Rust strategy string -> file-name-safe name. The Rust names parse as models.py's strategies
# ("cs": kappa 0.5, "ls": shared gate, "ls-nonshared"; reduction 16 for both LS).
STRATEGIES = {"1": "1", "1/sqrt2": "inv-sqrt2", "cs": "cs", "ls": "ls", "ls-nonshared": "ls-nonshared"}
TIMESTEPS = [3.0, 250.0, 999.0]
BATCH = len(TIMESTEPS)
X_SEED = 1234
PTH_FIXTURE = ("uvit", "ls")
NESTED_PTH_FIXTURE = ("uvit", "1")  # as training scripts save: {"model": state_dict, "step": ...}

assert models.KAPPA == 0.5 and models.REDUCTION == 16  # skip_scaling.rs DEFAULT_KAPPA, DEFAULT_REDUCTION
assert list(STRATEGIES) == models.STRATEGIES


def build(arch, strategy):
    config = dict(CONFIGS[arch])
    return (models.UViT if config.pop("arch") == "uvit" else models.UNet)(strategy, **config)


def randomize(model, generator):
    """Overwrites every parameter (see the module docstring for the distributions)."""
    norms = {id(p) for m in model.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))
             for p in m.parameters(recurse=False)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if name == "pos_embed":
                p.copy_(0.5 * z)
            elif id(p) in norms:
                p.copy_(1.0 + 0.2 * z if name.endswith("weight") else 0.2 * z)
            elif p.dim() == 1:
                p.copy_(0.2 * z)
            else:
                fan_in = p[0].numel()  # Linear [out, in], Conv2d [out, in, kh, kw]
                p.copy_(z / fan_in ** 0.5)


# ---------------------------------------------------------------------------------------------
# safetensors, by hand: u64 little-endian header length N, N bytes of JSON (padded with spaces
# to a multiple of 8), then the raw little-endian data of every tensor, in header order.

def write_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous().cpu()
        data = struct.pack(f"<{t.numel()}f", *t.flatten().tolist())
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for chunk in chunks:
            f.write(chunk)


def read_safetensors(path):
    """The tensors of a float32 safetensors file, checking the layout the writer promises."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0, f"{path}: header length {n} is not a multiple of 8"
    header = json.loads(raw[8:8 + n].decode())
    data = raw[8 + n:]
    assert list(header) == sorted(header), f"{path}: tensors are not sorted by name"
    tensors, expected_start = {}, 0
    for name, info in header.items():
        assert info["dtype"] == "F32", f"{path}: {name} is {info['dtype']}"
        start, end = info["data_offsets"]
        count = 1
        for d in info["shape"]:
            count *= d
        assert start == expected_start and end - start == 4 * count, f"{path}: {name} has offsets {start}..{end}"
        values = struct.unpack(f"<{count}f", data[start:end])
        tensors[name] = torch.tensor(values, dtype=torch.float32).reshape(info["shape"])
        expected_start = end
    assert expected_start == len(data), f"{path}: {len(data) - expected_start} trailing bytes"
    return tensors


# ---------------------------------------------------------------------------------------------

def make(arch, strategy, index):
    torch.manual_seed(index)
    model = build(arch, strategy).eval()
    randomize(model, torch.Generator().manual_seed(1000 + index))
    x = torch.randn(BATCH, CONFIGS[arch].get("in_chans", CONFIGS[arch].get("in_channels")), CONFIGS[arch]["img_size"],
                    CONFIGS[arch]["img_size"], generator=torch.Generator().manual_seed(X_SEED), dtype=torch.float32)
    t = torch.tensor(TIMESTEPS, dtype=torch.float32)
    with torch.no_grad():
        out64 = copy.deepcopy(model).double()(x.double(), t.double())
        out32 = model(x, t)
    out = out64.to(torch.float32)
    gap = ((out32.double() - out64).abs().max() / out64.abs().max()).item()
    return model, {"x": x, "t": t, "out": out}, gap


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print every fixture's parameter names and shapes")
    args = parser.parse_args()
    os.makedirs(OUT_DIR, exist_ok=True)
    written = []
    index = 0
    for arch in CONFIGS:
        for strategy, safe in STRATEGIES.items():
            if strategy not in ONLY.get(arch, STRATEGIES):
                continue
            index += 1
            stem = os.path.join(OUT_DIR, f"{arch}_{safe}")
            model, io, gap = make(arch, strategy, index)
            state = model.state_dict()
            write_safetensors(stem + ".safetensors", state)
            write_safetensors(stem + ".io.safetensors", io)
            with open(stem + ".json", "w") as f:
                f.write(json.dumps({"model": CONFIGS[arch], "strategy": strategy}, indent=2) + "\n")
            written += [stem + ".safetensors", stem + ".io.safetensors", stem + ".json"]
            if (arch, strategy) == PTH_FIXTURE:
                torch.save(state, stem + ".pth")
                written.append(stem + ".pth")
            if (arch, strategy) == NESTED_PTH_FIXTURE:
                torch.save({"model": state, "step": 7}, stem + ".nested.pth")
                written.append(stem + ".nested.pth")

            # Self-check: everything reads back exactly.
            back = read_safetensors(stem + ".safetensors")
            assert list(back) == sorted(state), f"{stem}: names differ"
            assert all(torch.equal(back[k], state[k]) for k in state), f"{stem}: a weight differs"
            back_io = read_safetensors(stem + ".io.safetensors")
            assert all(torch.equal(back_io[k], io[k]) for k in io), f"{stem}: an io tensor differs"
            if (arch, strategy) == PTH_FIXTURE:
                pth = torch.load(stem + ".pth", weights_only=True)
                assert list(pth) == list(state) and all(torch.equal(pth[k], state[k]) for k in state)
            print(f"{arch:4} {strategy:12} params {models.param_count(model):6}  tensors {len(state):3}  "
                  f"|out|max {io['out'].abs().max().item():.3f}  torch f32 vs f64 (max abs / max |out|) {gap:.1e}")
            if args.list:
                for k, v in state.items():
                    print(f"    {k} {list(v.shape)}")
    print(f"{len(written)} files in {OUT_DIR}, read back exactly")
    for path in written:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        print(f"  {os.path.getsize(path):7}  {digest}  {os.path.basename(path)}")


if __name__ == "__main__":
    main()
