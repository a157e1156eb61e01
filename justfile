# scalelong: `just sweep` runs the main job, `just test` the tests.
# One cargo profile serves tests, training and sweeps (dependencies optimised, see Cargo.toml), so
# the heavy build of burn happens once.

export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", env_var("HOME") / ".cache/scalelong-target")
bin := CARGO_TARGET_DIR / "debug/scalelong"

# Runs trained at once by a sweep, each in its own process on an equal share of the cores (two
# one-thread processes train 1.3x as many steps a second as one two-thread process on 2 cores).
jobs := env_var_or_default("SCALELONG_JOBS", num_cpus())

# The main job, the stability experiment: the four strategies on the deeper U-ViT at a constant learning
# rate where strategy 1 starts to fail, 8 seeds paired by seed, then its report
# (docs/experiment-design.md; 48 minutes timed whole from a fresh clone on 2 cores, report included).
sweep: data build
    {{bin}} sweep experiments/sweep-stability.toml --jobs {{jobs}}
    {{bin}} dose-response --config experiments/dose-response.toml --out runs/stability/dose_response.jsonl
    {{bin}} report runs/stability

# The tuned, annealed comparison (the main job until 2026-12-06): the four strategies where every one is
# stable, three seeds, trained to a plateau; it measures final losses, not stability (about 50 minutes).
sweep-tuned: data build
    {{bin}} sweep experiments/sweep-tuned.toml --jobs {{jobs}}
    {{bin}} report runs/tuned

# The pilot that chose `just sweep`'s learning rate and speed targets (2 runs, about 3 minutes).
pilot-stability: data build
    {{bin}} sweep experiments/pilot-stability.toml --jobs {{jobs}}
    {{bin}} report runs/pilot-stability

# The bounds at initialisation as a dose-response over CS's kappa (16 seeds of uvit-deep, no training;
# 1 min 46 s measured on one core), written beside a sweep's runs (`just sweep` runs it too).
dose-response folder="runs/stability": build
    {{bin}} dose-response --config experiments/dose-response.toml --out {{folder}}/dose_response.jsonl

# The same comparison on the conv UNet (about as long).
sweep-unet: data build
    {{bin}} sweep experiments/sweep-unet.toml --jobs {{jobs}}
    {{bin}} report runs/unet

# A smoke test of the whole pipeline in a few minutes (runs too short to learn: no verdicts).
sweep-quick: data build
    {{bin}} sweep experiments/sweep-quick.toml --jobs {{jobs}}
    {{bin}} report runs/quick

# The stability frontier: each strategy's and seed's largest trained learning rate on the deeper U-ViT,
# strategies 1, CS and LS, found by bisection in log lr to 2^(1/2) (29 minutes measured on 2 cores).
sweep-lr: data build
    {{bin}} frontier experiments/frontier-lr.toml --jobs {{jobs}}
    {{bin}} report runs/lr

# Skips scaled during training (1, CS, LS, mp-cat, learned scalar) and at sampling time
# (Skip-Tuning, FreeU, each LSC's importance) on the U-ViT, side by side (47 minutes measured).
sweep-skips: data build
    {{bin}} sweep experiments/sweep-skips.toml --jobs {{jobs}}
    {{bin}} report runs/skips

# Do learned skip profiles decay with the LSC index, and can one shared LS gate tell the LSCs apart? LS
# shared and one gate per LSC, learned scalars started flat at 1.0, and CS for reference, on the deeper
# U-ViT, three seeds (docs/method.md §3.4; about 17 minutes on 2 free cores, estimated, not timed whole).
sweep-ls: data build
    {{bin}} sweep experiments/sweep-ls.toml --jobs {{jobs}}
    {{bin}} report runs/ls

# One training run, e.g. `just train experiments/quick.toml --set strategy=ls`.
train config *args: data build
    {{bin}} train --config {{config}} {{args}}

# The cargo features of every build: burn's wgpu backend besides flex (`--device wgpu`, and its
# agreement suite, which runs on lavapipe without a GPU). `test` and `build` share them, so burn is
# compiled once for both; `features := ""` builds flex only (a few minutes less on a fresh machine).
features := "scalelong-tests/wgpu"
feature_flags := if features == "" { "" } else { "--features " + features }

# Every test of the workspace: each crate's own, then the end-to-end suites of tests/ (on a
# `scalelong` built for them; with `features` set, the wgpu agreement suite too).
test:
    cargo test --workspace {{feature_flags}}

# The `scalelong` binary (the workspace's only one), in the profile tests and sweeps share.
build:
    cargo build --workspace --bins {{feature_flags}}

# (~/.cargo/bin is the folder rustup puts on PATH; run it again after changes to the code.)
# The binary on PATH as ~/.cargo/bin/scalelong, so `scalelong ...` commands run as the README writes them.
install: build
    install -D -m 755 {{bin}} "${CARGO_HOME:-$HOME/.cargo}/bin/scalelong"
    @echo "installed ${CARGO_HOME:-$HOME/.cargo}/bin/scalelong"

# Arguments are passed as given, quotes kept: `just scalelong train --help`.
# The command line without installing it, e.g. `just scalelong sweep experiments/sweep-quick.toml --list`.
[positional-arguments]
scalelong *args: build
    {{bin}} "$@"

# The report of a sweep folder, e.g. `just report runs/quick` (written to reports/quick; `--out DIR`).
[positional-arguments]
report sweep *args: build
    {{bin}} report "$@"

# What CI checks besides the tests: formatting and lints (warnings are errors).
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets {{feature_flags}} -- -D warnings

# Fetch Fashion-MNIST into data/ (skipped when already there)
data:
    #!/usr/bin/env bash
    # Debian's dataset-fashion-mnist package is downloaded and unpacked without being installed,
    # so no root is needed; scalelong-data looks for the files where it unpacks them.
    set -euo pipefail
    dest=data/usr/share/datasets/fashion-mnist
    files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
    missing=0
    for f in "${files[@]}"; do [ -s "$dest/$f" ] || missing=1; done
    if [ "$missing" = 0 ]; then echo "Fashion-MNIST already in $dest"; exit 0; fi
    if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
        echo "error: 'just data' needs apt-get and dpkg-deb (Debian/Ubuntu)." >&2
        echo "  Elsewhere, put ${files[*]} into data/fashion-mnist/ or into a folder named by SCALELONG_DATA." >&2
        exit 1
    fi
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    download() { (cd "$tmp" && apt-get download dataset-fashion-mnist); }
    if ! download; then
        # Missing or stale package lists are the usual cause; refreshing them needs root.
        if [ "$(id -u)" != 0 ] || ! apt-get update -qq || ! download; then
            echo "error: 'apt-get download dataset-fashion-mnist' failed." >&2
            echo "  If apt cannot locate the package, run 'sudo apt-get update' and then 'just data' again." >&2
            echo "  Or put ${files[*]} into data/fashion-mnist/ or into a folder named by SCALELONG_DATA." >&2
            exit 1
        fi
    fi
    mkdir -p data
    dpkg-deb -x "$tmp"/dataset-fashion-mnist_*.deb data/
    for f in "${files[@]}"; do
        if [ ! -s "$dest/$f" ]; then
            echo "error: $dest/$f missing after unpacking the package: did its layout change?" >&2
            exit 1
        fi
    done
    echo "Fashion-MNIST unpacked into $dest"

# Speed and peak memory of our presets against their PyTorch twins (bench/reference): training
# step, sampler step and diagnostics overhead, in both configurations (one 2-thread process; two
# 1-thread processes side by side, as a sweep runs), with the CPU, the kernels' ISA and each step's
# share of the FMA peak (measured at start and after the table; the larger reading). Needs
# `pip install torch` for the PyTorch column.
# E.g. `just bench-compare --presets uvit-small --strategies 1 --ops sample --repeats 3`.
bench-compare *args:
    python3 bench/reference/compare.py --features "{{features}}" {{args}}
