#!/usr/bin/env python3
"""PyTorch side of `just bench-compare`: times the operations of
crates/scalelong-model/benches/steps.rs on the same presets (batch 64, 32x32 grey images, `--threads` threads, 2 by default)
and prints one JSON line per (preset, strategy, operation):

    train   one training step: forward, MSE loss (read back), backward, AdamW step
    sample  one sampler step: one network forward without autograd (what DDIM does per step)

Every run first checks that torch's parameter counts equal bench/param_counts.json (the numbers the
Rust test tests/param_counts.rs asserts too) and exits with status 1 when any differs.

    python3 bench/reference/bench.py --counts           # only the parameter counts, as JSON
    python3 bench/reference/bench.py --preset uvit-small --strategy ls --op train --samples 5
"""
import argparse
import json
import os
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")  # torch warns when numpy is absent; numpy is not needed

try:
    import torch
except ImportError:
    sys.exit("error: PyTorch is not installed; install it with `pip install torch`")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

BATCH = 64
HERE = os.path.dirname(os.path.abspath(__file__))
COUNTS_JSON = os.path.join(HERE, "..", "param_counts.json")
BENCH_PRESETS = ["unet-small", "uvit-small", "uvit-deep"]
BENCH_STRATEGIES = ["1", "1/sqrt2", "cs", "ls"]


def counts():
    return {p: {s: models.param_count(models.build(p, s)) for s in models.STRATEGIES} for p in models.PRESETS}


def check_counts(found):
    with open(COUNTS_JSON) as f:
        expected = json.load(f)["presets"]
    bad = [(p, s, expected.get(p, {}).get(s), n) for p, row in found.items() for s, n in row.items()
           if expected.get(p, {}).get(s) != n]
    if bad:
        for p, s, e, n in bad:
            print(f"PARAMETER COUNT MISMATCH: {p} strategy {s}: torch has {n}, {COUNTS_JSON} says {e}", file=sys.stderr)
        sys.exit(1)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(BATCH, 1, 32, 32, generator=g) * 2 - 1
    noise = torch.randn(BATCH, 1, 32, 32, generator=g)
    # DDPM linear schedule, as ScheduleConfig::default().
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    steps = torch.tensor([(i * 997 + 13) % 1000 for i in range(BATCH)])
    a = abar[steps].float()[:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise, noise, steps.float()


def barrier(spec):
    """Waits until `n` processes have reached this point (`dir:n`, one file each in dir; a minute at most),
    so that two processes run side by side start timing together."""
    if not spec:
        return
    folder, n = spec.rsplit(":", 1)
    open(os.path.join(folder, f"torch-{os.getpid()}"), "w").close()
    start = time.time()
    while len(os.listdir(folder)) < int(n) and time.time() - start < 60:
        time.sleep(0.001)


def peak_rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def bench(preset, strategy, op, samples, barrier_spec=None):
    torch.manual_seed(0)
    model = models.build(preset, strategy)
    x_t, noise, t = batch()
    if op == "train":
        model.train()
        optim = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.99, 0.999), weight_decay=0.03)

        def run():
            loss = torch.nn.functional.mse_loss(model(x_t, t), noise)
            loss.item()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
    elif op == "sample":
        model.eval()

        def run():
            with torch.inference_mode():
                model(x_t, t)
    else:
        raise SystemExit(f"unknown op {op}")
    run()  # warm-up (and AdamW's state)
    barrier(barrier_spec)
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps(dict(impl="torch", preset=preset, strategy=strategy, op=op, batch=BATCH, samples=samples,
                          samples_s=[round(t, 6) for t in times], median_s=round(median, 6), examples_per_s=round(BATCH / median, 3),
                          params=models.param_count(model), threads=torch.get_num_threads(),
                          torch=torch.__version__, peak_rss_kb=peak_rss_kb())), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", action="store_true", help="print only the parameter counts (JSON) and exit")
    ap.add_argument("--preset", action="append", help=f"default: {' '.join(BENCH_PRESETS)}")
    ap.add_argument("--strategy", action="append", help=f"default: {' '.join(BENCH_STRATEGIES)}")
    ap.add_argument("--op", action="append", choices=["train", "sample"], help="default: both")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--barrier", help="dir:n: start timing once n processes have reached the barrier (side by side runs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    found = counts()
    if args.counts:
        print(json.dumps({"presets": found}, indent=2))
        return
    check_counts(found)
    for preset in args.preset or BENCH_PRESETS:
        for strategy in args.strategy or BENCH_STRATEGIES:
            for op in args.op or ["train", "sample"]:
                bench(preset, strategy, op, args.samples, args.barrier)


if __name__ == "__main__":
    main()
