#!/usr/bin/env python3
"""`just bench-compare`: our presets (crates/scalelong-model/benches/steps.rs, burn on the flex
CPU backend) against their PyTorch twins (bench/reference/bench.py), one table per configuration.

Configurations (`--configs`):

    2t     one process with 2 threads (RAYON_NUM_THREADS=2; torch.set_num_threads(2))
    2x1t   two 1-thread processes side by side, as `scalelong sweep --jobs 2` runs them on 2 cores
           (RAYON_NUM_THREADS=1 each; torch.set_num_threads(1) each, also two side by side); the
           examples/s are the two processes' sum, what sets a sweep's wall time

Every measurement is its own process (two for 2x1t, started together: they wait for each other
after the warm-up), under `/usr/bin/time -v`, so the peak resident memory of each is its own. The
Rust and the PyTorch measurement of a row run back to back, in alternating order from row to row,
so both see the same machine; `--repeats` runs the whole table again and gives the spread of
each ratio over the repeats. The script measures the machine's FMA peak (12 independent FMA
chains per thread on the widest vectors the CPU has, in each configuration: one 2-thread process,
two 1-thread processes side by side) at start and again after the table, and reports each step's
share of the larger reading (a peak is what the machine can reach; a probe that lands on a busy
moment of a shared machine reads low: one read 269 GFLOP/s where the run before read 522), for both
implementations (FLOPs counted analytically by steps.rs: multiply-accumulates of the matmuls
and convolutions, times 2, training 3x the forward).

Operations: `train` (forward, backward, AdamW step), `sample` (one network forward without
autograd: what DDIM does per step), and, Rust only and in 2t only, `diag`: ten training steps
with the diagnostics recorder recording on the tenth, alternating with ten without.

    python3 bench/reference/compare.py [--presets unet-small,uvit-small] [--strategies 1,ls]
        [--ops train,sample,diag] [--configs 2t,2x1t] [--samples 5] [--repeats 1]
        [--diag-rounds 2] [--exe EXE] [--json out.jsonl]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PRESETS = ["unet-small", "uvit-small", "uvit-deep"]
STRATEGIES = ["1", "1/sqrt2", "cs", "ls"]
CONFIGS = {"2t": (1, 2), "2x1t": (2, 1)}  # processes side by side, threads each
TIME = "/usr/bin/time"


def have_torch():
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    return probe.returncode == 0


def cpu_model():
    """The model name, with the family and model numbers: a VM often names only the vendor's line
    ("AMD EPYC"), and the numbers tell a Zen 3 (family 25) from a Zen 5 (family 26)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name", "unknown CPU")
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


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


def run_together(cmds, envs):
    """Starts every command at once under /usr/bin/time -v; returns [(stdout, peak RSS kB)]."""
    procs = []
    for cmd, env in zip(cmds, envs):
        full = [TIME, "-v"] + cmd if os.path.exists(TIME) else cmd
        procs.append((cmd, subprocess.Popen(full, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)))
    results = []
    for cmd, p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            sys.stderr.write(stdout[-3000:] + stderr[-3000:])
            raise RuntimeError(f"command failed: {' '.join(cmd)}")
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
        results.append((stdout, int(m.group(1)) if m else None))
    return results


def env_with(threads, **extra):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def probe_peak(exe, config):
    """Per-process FMA peak (GFLOP/s) and the kernels' ISA, `config`'s processes side by side."""
    n, threads = CONFIGS[config]
    out = run_together([[exe]] * n, [env_with(threads, SCALELONG_BENCH_PEAK=1)] * n)
    rows = [json_lines(stdout, "BENCH_PEAK ")[0] for stdout, _ in out]
    return [r["peak_gflops"] for r in rows], rows[0]["isa"]


def measure(impl, exe, config, op, preset, strategy, samples):
    """One measurement of `config`: its processes side by side; returns the list of their rows."""
    n, threads = CONFIGS[config]
    with tempfile.TemporaryDirectory(prefix="bench-barrier-") as barrier:
        spec = f"{barrier}:{n}"
        if impl == "rust":
            case = f"{op}::{preset}:{strategy}"
            env = env_with(threads, SCALELONG_BENCH_STEP=case, SCALELONG_BENCH_SAMPLES=samples,
                           SCALELONG_BENCH_BARRIER=spec)
            out = run_together([[exe]] * n, [env] * n)
            prefix = "BENCH_JSON "
        else:
            cmd = [sys.executable, os.path.join(ROOT, "bench", "reference", "bench.py"), "--preset", preset,
                   "--strategy", strategy, "--op", op, "--samples", str(samples), "--threads", str(threads),
                   "--barrier", spec]
            out = run_together([cmd] * n, [env_with(threads)] * n)
            prefix = ""
    rows = []
    for stdout, rss in out:
        found = json_lines(stdout, prefix)
        if len(found) != 1:
            raise RuntimeError(f"expected one result from {impl} {op} {preset}:{strategy}, got {len(found)}")
        found[0]["process_peak_rss_kb"] = rss
        found[0]["config"] = config
        rows.append(found[0])
    return rows


def run_rust_diag(exe, preset, strategy, rounds):
    """Ten steps recording on the tenth against ten without, alternating in one process (2 threads)."""
    env = env_with(2, SCALELONG_BENCH_AB=f"diag::{preset}:{strategy}", SCALELONG_BENCH_ROUNDS=rounds)
    (stdout, rss), = run_together([[exe]], [env])
    rows = json_lines(stdout, "BENCH_JSON ")
    if len(rows) != 1:
        raise RuntimeError(f"expected one result for the diagnostics of {preset}:{strategy}, got {len(rows)}")
    rows[0]["process_peak_rss_kb"] = rss
    return rows[0]


def summary(rows):
    """Examples/s of a measurement (the processes' sum), the range over its samples (sum of the
    processes' per-sample rates, sample i with sample i), and the largest peak RSS."""
    eps = sum(r["examples_per_s"] for r in rows)
    per_sample = [sum(r["batch"] / r["samples_s"][i] for r in rows) for i in range(min(len(r["samples_s"]) for r in rows))]
    rss = max(r["process_peak_rss_kb"] or 0 for r in rows)
    return eps, min(per_sample), max(per_sample), rss


def mb(kb):
    return f"{kb / 1024:.0f}" if kb else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--ops", default="train,sample,diag")
    ap.add_argument("--configs", default="2t,2x1t", help="2t: one 2-thread process; 2x1t: two 1-thread processes side by side")
    ap.add_argument("--samples", type=int, default=5, help="timed repetitions of train and sample (after one warm-up)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of the whole table (the spread of each ratio over them)")
    ap.add_argument("--diag-rounds", type=int, default=2,
                    help="alternations of ten steps without and ten steps with recording (median overhead)")
    ap.add_argument("--exe", help="the Rust benchmark executable (default: build it)")
    ap.add_argument("--features", default="scalelong-tests/wgpu",
                    help="cargo features of the build (the justfile's `features`; default %(default)s)")
    ap.add_argument("--json", help="also write every measurement to this JSON-lines file")
    args = ap.parse_args()
    presets = args.presets.split(",")
    strategies = args.strategies.split(",")
    ops = args.ops.split(",")
    configs = args.configs.split(",")
    for c in configs:
        if c not in CONFIGS:
            sys.exit(f"error: unknown configuration {c} (2t or 2x1t)")
    if args.samples < 5:
        print(f"note: {args.samples} samples; the issue's standard is at least 5")

    torch_ok = have_torch()
    if not torch_ok:
        print("PyTorch is not installed, so only the Rust side is measured; install it with `pip install torch`.\n")
    exe = args.exe or build_rust_bench(args.features)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    started = time.time()
    start_peaks = {}
    isa = "?"
    for c in configs:
        per_process, isa = probe_peak(exe, c)
        start_peaks[c] = statistics.mean(per_process)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load average {load:.2f} at start; "
          f"Rust kernels: {isa}; batch 64, 32x32x1; {args.samples} timed samples per process after one warm-up, "
          f"medians; {args.repeats} run(s) of the table")
    print("FMA peak measured at start (12 FMA chains per thread, widest vectors): " + "; ".join(
        f"{c}: {CONFIGS[c][0] * start_peaks[c]:.0f} GFLOP/s ({CONFIGS[c][0]} x {start_peaks[c]:.1f})" for c in configs))
    if torch_ok:
        ver = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__, torch.backends.cpu.get_cpu_capability())"],
                             capture_output=True, text=True).stdout.split()
        print(f"PyTorch {ver[0]} (CPU capability {ver[1] if len(ver) > 1 else '?'}); "
              "Rust: burn 0.22.1 flex + scalelong-kernels, dev profile (optimised: Cargo.toml)")

    records = []
    results = {}  # (preset, strategy, op, config) -> list over repeats of (rust summary, torch summary or None, gflop/example)
    diag_rows = []
    row_index = 0
    for rep in range(args.repeats):
        print(f"\nrun {rep + 1} of {args.repeats}:")
        for preset in presets:
            for strategy in strategies:
                for op in ops:
                    if op == "diag":
                        if rep > 0 or "2t" not in configs:
                            continue
                        d = run_rust_diag(exe, preset, strategy, args.diag_rounds)
                        records.append(d)
                        diag_rows.append((preset, strategy, d))
                        print(f"  {preset:<11} {strategy:<8} diag/10  recording every 10th step: "
                              f"{100 * d['recording_share']:.1f}% of training time (a record {d['record_s']:.2f} s, "
                              f"{d['full_record_s']:.2f} s with per-bin gradients; 10-step blocks with/without "
                              f"{100 * d['overhead']:+.1f}%)", flush=True)
                        continue
                    for config in configs:
                        # Alternate which side goes first, so that a drift of the machine cancels.
                        order = ["rust", "torch"] if row_index % 2 == 0 else ["torch", "rust"]
                        row_index += 1
                        got = {}
                        for impl in order:
                            if impl == "torch" and not torch_ok:
                                continue
                            got[impl] = measure(impl, exe, config, op, preset, strategy, args.samples)
                            for r in got[impl]:
                                r["repeat"] = rep
                                records.append(r)
                        rust = summary(got["rust"])
                        torch = summary(got["torch"]) if "torch" in got else None
                        flop = got["rust"][0]["fwd_gflop_per_example"] * (3 if op == "train" else 1)
                        results.setdefault((preset, strategy, op, config), []).append((rust, torch, flop))
                        line = f"  {preset:<11} {strategy:<8} {op:<7} {config:<5} Rust {rust[0]:8.1f} ex/s"
                        if torch:
                            line += f", PyTorch {torch[0]:8.1f} ex/s, ratio {rust[0] / torch[0]:.2f}x"
                        print(line, flush=True)

    # The peak again after the table: the larger reading is the machine's (see the module doc).
    end_peaks = {c: statistics.mean(probe_peak(exe, c)[0]) for c in configs}
    peaks = {c: max(start_peaks[c], end_peaks[c]) for c in configs}
    print("\nFMA peak measured after the table: " + "; ".join(
        f"{c}: {CONFIGS[c][0] * end_peaks[c]:.0f} GFLOP/s" for c in configs)
        + "; each share of the peak below is of the larger of the two readings")

    def pct(eps, flop, config):
        return 100 * eps * flop / (CONFIGS[config][0] * peaks[config])

    for config in configs:
        n, threads = CONFIGS[config]
        what = "one 2-thread process" if config == "2t" else "two 1-thread processes side by side (examples/s summed)"
        print(f"\n{config}: {what}; FMA peak {n * peaks[config]:.0f} GFLOP/s")
        header = (f"{'preset':<11} {'strategy':<8} {'op':<7} {'Rust ex/s':>10} {'(samples)':>13} {'PyTorch ex/s':>13} "
                  f"{'(samples)':>13} {'ratio':>7} {'(repeats)':>11} {'Rust %pk':>9} {'PT %pk':>7} {'Rust MB':>8} {'PT MB':>6}")
        print(header)
        print("-" * len(header))
        for (preset, strategy, op, c), reps in results.items():
            if c != config:
                continue
            rust_eps = statistics.median(r[0][0] for r in reps)
            rust_lo = min(r[0][1] for r in reps)
            rust_hi = max(r[0][2] for r in reps)
            flop = reps[0][2]
            rust_rss = max(r[0][3] for r in reps)
            line = f"{preset:<11} {strategy:<8} {op:<7} {rust_eps:>10.1f} {f'{rust_lo:.0f}-{rust_hi:.0f}':>13} "
            if reps[0][1]:
                torch_eps = statistics.median(r[1][0] for r in reps)
                ratios = [r[0][0] / r[1][0] for r in reps]
                spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else "-"
                line += (f"{torch_eps:>13.1f} {f'{min(r[1][1] for r in reps):.0f}-{max(r[1][2] for r in reps):.0f}':>13} "
                         f"{statistics.median(ratios):>6.2f}x {spread:>11} {pct(rust_eps, flop, config):>8.1f}% "
                         f"{pct(torch_eps, flop, config):>6.1f}% {mb(rust_rss):>8} {mb(max(r[1][3] for r in reps)):>6}")
            else:
                line += (f"{'(no torch)':>13} {'':>13} {'-':>7} {'':>11} {pct(rust_eps, flop, config):>8.1f}% "
                         f"{'-':>7} {mb(rust_rss):>8} {'-':>6}")
            print(line)
    print()
    print("ex/s: the median sample's examples/s, summed over the processes side by side; (samples): the slowest and "
          "fastest sample; ratio: Rust over PyTorch (> 1: Rust faster), the median over the repeats and (repeats) "
          "their range; %pk: share of the FMA peak (the larger of its readings at start and after the table); "
          "MB: peak RSS of one process (PyTorch's includes "
          "the ~0.3-1 GB its libraries occupy after import).")
    if diag_rows:
        worst = max(d["recording_share"] for _, _, d in diag_rows)
        print(f"diagnostics every 10 steps: the recording costs at most {100 * worst:.1f}% of the training time (target <= 10%); "
              "the with/without difference of whole 10-step blocks measures the same thing with the machine's noise.")
    print(f"took {time.time() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
