#!/usr/bin/env python3
"""`just bench-compare`: our presets (crates/scalelong-model/benches/steps.rs, burn on the flex
CPU backend) against their PyTorch twins (bench/reference/bench.py), one table.

Every (preset, strategy, operation) runs as its own process under `/usr/bin/time -v`, so the
peak resident memory of each row is that operation's alone; the Rust and the PyTorch process of a
row run back to back, so both see the same load on the machine. Times are medians.

Operations: `train` (forward, backward, AdamW step), `sample` (one network forward without
autograd, one DDIM step), and, Rust only, `diag`: ten training steps with the diagnostics recorder
of train.rs recording on the tenth, alternating in one process with ten steps without (the
overhead is the median of the per-round ratios).

    python3 bench/reference/compare.py [--presets unet-small,uvit-small] [--strategies 1,ls]
        [--ops train,sample,diag] [--samples 5] [--diag-rounds 2] [--exe EXE] [--json out.jsonl]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PRESETS = ["unet-small", "uvit-small", "uvit-deep"]
STRATEGIES = ["1", "1/sqrt2", "cs", "ls"]
TIME = "/usr/bin/time"


def have_torch():
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    return probe.returncode == 0


def build_rust_bench(features):
    """Builds the divan bench in the dev profile (the profile training runs in) and returns its path.

    With the workspace and the cargo features `just test` and `just build` use (the justfile's
    `features`), so burn is not compiled a second time for a different feature set."""
    cmd = ["cargo", "bench", "--workspace", "--profile", "dev", "--bench", "steps", "--no-run",
           "--message-format", "json-render-diagnostics"] + (["--features", features] if features else [])
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        sys.exit("error: building the Rust benchmark failed")
    exe = None
    for line in out.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "steps" and msg.get("executable"):
            exe = msg["executable"]
    if not exe:
        sys.exit("error: cargo did not report the benchmark executable")
    return exe


def timed_run(cmd, env=None):
    """Runs `cmd` under /usr/bin/time -v; returns (stdout, peak RSS in kB)."""
    full = [TIME, "-v"] + cmd if os.path.exists(TIME) else cmd
    out = subprocess.run(full, cwd=ROOT, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise RuntimeError(f"command failed: {' '.join(cmd)}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
    return out.stdout, int(m.group(1)) if m else None


def json_lines(text, prefix=""):
    rows = []
    for line in text.splitlines():
        if prefix:
            if not line.startswith(prefix):
                continue
            line = line[len(prefix):]
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def one_rust_row(cmd, what, env=None):
    """Runs a Rust benchmark process that prints exactly one BENCH_JSON row; adds its peak RSS."""
    stdout, rss = timed_run(cmd, env=env)
    rows = json_lines(stdout, "BENCH_JSON ")
    if len(rows) != 1:
        raise RuntimeError(f"expected one result for {what}, got {len(rows)}")
    rows[0]["process_peak_rss_kb"] = rss
    return rows[0]


def run_rust(exe, op, preset, strategy, samples):
    pattern = f"steps::{op}::{preset}:{strategy}"  # divan paths start with the bench name
    return one_rust_row([exe, "--bench", "--sample-count", str(samples), "--exact", pattern], pattern)


def run_rust_diag(exe, preset, strategy, rounds):
    """Ten steps recording on the tenth against ten without, alternating in one process."""
    env = dict(os.environ, SCALELONG_BENCH_AB=f"diag::{preset}:{strategy}", SCALELONG_BENCH_ROUNDS=str(rounds))
    return one_rust_row([exe], f"diagnostics of {preset}:{strategy}", env)


def run_torch(op, preset, strategy, samples):
    cmd = [sys.executable, os.path.join(ROOT, "bench", "reference", "bench.py"), "--preset", preset,
           "--strategy", strategy, "--op", op, "--samples", str(samples)]
    stdout, rss = timed_run(cmd)
    rows = json_lines(stdout)
    rows[0]["process_peak_rss_kb"] = rss
    return rows[0]


def mb(kb):
    return f"{kb / 1024:.0f}" if kb else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--ops", default="train,sample,diag")
    ap.add_argument("--samples", type=int, default=5, help="timed repetitions of train and sample (after one warm-up)")
    ap.add_argument("--diag-rounds", type=int, default=2,
                    help="alternations of ten steps without and ten steps with recording (median overhead)")
    ap.add_argument("--exe", help="the Rust benchmark executable (default: build it)")
    ap.add_argument("--features", default="scalelong/wgpu",
                    help="cargo features of the build (the justfile's `features`; default %(default)s)")
    ap.add_argument("--json", help="also write every measurement to this JSON-lines file")
    args = ap.parse_args()
    presets = args.presets.split(",")
    strategies = args.strategies.split(",")
    ops = args.ops.split(",")

    torch_ok = have_torch()
    if not torch_ok:
        print("PyTorch is not installed, so only the Rust side is measured; install it with `pip install torch`\n"
              "(CPU-only wheels: `pip install torch --index-url https://download.pytorch.org/whl/cpu`).\n")
    exe = args.exe or build_rust_bench(args.features)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.2f} at start; batch 64, 32x32x1; "
          f"{args.samples} timed samples (diag: {args.diag_rounds} alternations of 10 + 10 steps), medians; "
          "peak RSS of each process")
    if torch_ok:
        ver = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
        print(f"PyTorch {ver.stdout.strip()} with torch.set_num_threads(2); Rust: burn 0.22.1 flex (rayon + simd), dev profile (optimised: Cargo.toml)")

    records = []
    header = f"{'preset':<11} {'strategy':<8} {'operation':<10} {'Rust ex/s':>10} {'PyTorch ex/s':>13} {'ratio':>7} {'Rust MB':>8} {'PyTorch MB':>11} {'mem ratio':>10}"
    print()
    print(header)
    print("-" * len(header))
    diag_rows = []
    started = time.time()
    for preset in presets:
        for strategy in strategies:
            for op in ops:
                if op == "diag":
                    d = run_rust_diag(exe, preset, strategy, args.diag_rounds)
                    records.append(d)
                    diag_rows.append((preset, strategy, d["recording_share"], d["overhead"]))
                    print(f"{preset:<11} {strategy:<8} {'diag/10':<10} {d['examples_per_s']:>10.1f} {'-':>13} {'-':>7} "
                          f"{mb(d['process_peak_rss_kb']):>8} {'-':>11} {'-':>10}   recording every 10th step: "
                          f"{100 * d['recording_share']:.1f}% of training time (a record {d['record_s']:.2f} s, "
                          f"{d['full_record_s']:.2f} s with per-bin gradients; 10-step blocks with/without "
                          f"{100 * d['overhead']:+.1f}%)", flush=True)
                    continue
                rust = run_rust(exe, op, preset, strategy, args.samples)
                records.append(rust)
                if torch_ok:
                    ref = run_torch(op, preset, strategy, args.samples)
                    records.append(ref)
                    ratio = rust["examples_per_s"] / ref["examples_per_s"]
                    mem = rust["process_peak_rss_kb"] / ref["process_peak_rss_kb"]
                    print(f"{preset:<11} {strategy:<8} {op:<10} {rust['examples_per_s']:>10.1f} {ref['examples_per_s']:>13.1f} "
                          f"{ratio:>6.2f}x {mb(rust['process_peak_rss_kb']):>8} {mb(ref['process_peak_rss_kb']):>11} {mem:>9.2f}x", flush=True)
                else:
                    print(f"{preset:<11} {strategy:<8} {op:<10} {rust['examples_per_s']:>10.1f} {'(no torch)':>13} {'-':>7} "
                          f"{mb(rust['process_peak_rss_kb']):>8} {'-':>11} {'-':>10}", flush=True)
    print()
    print("ratio: Rust examples/s over PyTorch's (> 1: Rust faster); mem ratio: Rust peak RSS over PyTorch's "
          "(< 1: Rust smaller; PyTorch's includes the ~0.3-1 GB its libraries occupy after import).")
    if torch_ok:
        base = subprocess.run([TIME, "-v", sys.executable, "-c", "import torch"], capture_output=True, text=True)
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", base.stderr)
        if m:
            print(f"PyTorch's import alone: {int(m.group(1)) / 1024:.0f} MB peak RSS.")
    if diag_rows:
        worst = max(r[2] for r in diag_rows)
        print(f"diagnostics every 10 steps: the recording costs at most {100 * worst:.1f}% of the training time (target <= 10%); "
              "the with/without difference of whole 10-step blocks measures the same thing with the machine's noise.")
    print(f"took {time.time() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
