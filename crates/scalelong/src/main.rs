//! `scalelong`: train diffusion models with scaled long skips and measure their stability. The
//! command line over the libraries: `scalelong` (train, sweep, evaluate, exchange) and
//! `scalelong-report`.

use anyhow::Result;
use clap::{Parser, Subcommand};
use scalelong::{config, device, diagnose, dose_response, exchange, frontier, skip_eval, sweep, train};
use std::path::PathBuf;
use std::process::ExitCode;

/// The `--device` values, shared by every command that runs a network.
const DEVICE_HELP: &str = "Where to run: `flex` (burn's CPU backend, the default), `wgpu` (the adapter wgpu ranks best: \
a discrete GPU before an integrated one before a software driver), `wgpu:i` (the i-th adapter wgpu lists), `cuda` \
(= `cuda:0`) or `cuda:i` (the i-th visible CUDA device). wgpu and cuda need a binary built with `--features wgpu` / \
`--features cuda`; a missing device is an error at start";

/// The environment variables, in `scalelong --help`.
const ENVIRONMENT_HELP: &str = "Environment:
  SCALELONG_DATA   A folder holding Fashion-MNIST's four IDX files (train-images-idx3-ubyte[.gz], ...);
                   searched before data/fashion-mnist/, data/usr/share/datasets/fashion-mnist/ (where
                   `just data` unpacks them) and /usr/share/datasets/fashion-mnist/.
  SCALELONG_JOBS   Read by the justfile's sweep recipes, not by this program: how many runs they train at
                   once (their `--jobs`; default: the number of CPUs).
  BURN_DEVICE      burn's default device. Unset, this program restarts itself once with BURN_DEVICE=flex,
                   so that tensors burn places on its default device stay on the CPU whatever --device
                   says (otherwise a wgpu build would start a GPU to load a CPU checkpoint). Set it only
                   to change burn's own default.
  RAYON_NUM_THREADS  Threads of one process (`sweep --jobs n` gives each of its n processes an equal share).";

#[derive(Parser)]
#[command(
    name = "scalelong",
    version,
    about = "ScaleLong harness: how scaling a UNet's long skips changes training stability",
    after_help = ENVIRONMENT_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one run into a run folder (docs/run-folder.md).
    Train {
        /// The run config (TOML; every key and default: `RunConfig::default` in
        /// crates/scalelong-schema/src/config.rs), e.g. experiments/quick.toml.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Override a config key (dotted, TOML value; a bare word is a string), e.g. `--set strategy=ls
        /// --set model.depth=16`. Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Run folder (default: runs/train-<config file stem>, apart from the sweeps' runs/<sweep name>).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Continue from the run folder's latest checkpoint (bit-identically on flex). The config must
        /// be the one the run was made with; only `steps` may change, and only under a constant
        /// learning rate.
        #[arg(long)]
        resume: bool,
        #[arg(long, default_value = "flex", help = DEVICE_HELP)]
        device: String,
    },
    /// Run (a share of) a sweep: every combination of its grid, one run folder each under
    /// <runs>/<sweep name>. Completed runs are skipped, interrupted ones resumed; a run folder
    /// trained with another config than the one now planned is refused by name (see
    /// --retrain-changed).
    Sweep {
        /// The sweep file (TOML: `name`, `base` run config, `[grid]` axes, `[set]` shared overrides),
        /// e.g. experiments/sweep-quick.toml.
        file: PathBuf,
        /// Override a config key for every run of the sweep, after the file's `[set]` (as `train --set`;
        /// a grid axis cannot be overridden). Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Runs trained with another config than the one now planned: move each aside to
        /// `<run>.replaced-<UTC time>` (kept, not deleted) and train it again. Without it they are an
        /// error that lists them with the keys that differ, and nothing is trained. A finished run
        /// whose only change is a larger `steps` under a constant learning rate is extended instead.
        #[arg(long)]
        retrain_changed: bool,
        /// Print one `scalelong train` command per run (for a job array) and exit.
        #[arg(long)]
        list: bool,
        /// Run only the runs whose index is i mod n (0-based), e.g. `--shard 1/4`.
        #[arg(long, default_value = "0/1", value_name = "i/n")]
        shard: String,
        /// Train this many runs at once, each in its own process on an equal share of the CPU's
        /// threads (on 2 cores, two one-thread processes train 1.3x as many steps a second as
        /// one two-thread process: the small presets do not keep two threads busy). The justfile
        /// passes SCALELONG_JOBS, or the number of CPUs.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Where sweep folders live.
        #[arg(long, default_value = "runs", value_name = "DIR")]
        runs: PathBuf,
        #[arg(long, default_value = "flex", help = DEVICE_HELP)]
        device: String,
    },
    /// Find each grid cell's largest trained learning rate by bisection in log lr, one run folder
    /// per probe under <runs>/<name> (collapsed and diverged ones kept), and write frontier.json
    /// there. Finished probes are read back, not trained again.
    Frontier {
        /// The frontier file: a sweep file without an `optimizer.lr` axis, plus `[frontier] low,
        /// high, resolution` (docs/experiment-design.md), e.g. experiments/frontier-lr.toml.
        file: PathBuf,
        /// Search this many cells at once, each in its own process on an equal share of the CPU's
        /// threads (as `sweep --jobs`).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Where sweep folders live.
        #[arg(long, default_value = "runs", value_name = "DIR")]
        runs: PathBuf,
        #[arg(long, default_value = "flex", help = DEVICE_HELP)]
        device: String,
    },
    /// Write the HTML/PNG report of a sweep folder.
    Report {
        /// A sweep folder (one with sweep.json, as `sweep` and `diagnose` write), e.g. runs/quick.
        sweep: PathBuf,
        /// Where to write index.html, its figures (PNG) and tables (CSV, Parquet) (default:
        /// reports/<sweep folder name>).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Where a sweep stands, read from its folder (for a sweep running elsewhere: another shell, a
    /// cluster's job array): runs done, running and waiting, each running run's step, loss, last
    /// held-out loss and ETA, and the sweep's ETA.
    Status {
        /// A sweep folder (one with sweep.json), e.g. runs/stability.
        sweep: PathBuf,
        /// List every run, not only the running ones.
        #[arg(long)]
        all: bool,
        /// Processes the sweep trains with (its --jobs), for the sweep's ETA (default: the number
        /// of runs running now).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
    },
    /// Import a PyTorch reference checkpoint (.safetensors, .pth, .pt) as a run folder.
    Import {
        /// The state dict: .safetensors, .pth or .pt.
        checkpoint: PathBuf,
        #[command(flatten)]
        args: exchange::ImportArgs,
        /// The run folder to create (must not hold a run).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Write a run's weights under the PyTorch reference's names (default: <run>/ema.safetensors).
    Export {
        /// A run folder with a checkpoint, e.g. runs/quick/ls_seed0.
        run: PathBuf,
        /// The file format (safetensors only: burn cannot write .pth; PyTorch reads it with
        /// `safetensors.torch.load_file`).
        #[arg(long, value_enum, default_value_t)]
        format: exchange::ExportFormat,
        /// Which weights to write: the EMA (which samples are drawn from) or the raw trained ones.
        #[arg(long, value_enum, default_value_t)]
        weights: exchange::Weights,
        /// The file to write (default: <run>/<weights>.safetensors).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Record one pass of every diagnostic on runs or checkpoints (no training), as a folder
    /// `report` reads.
    Diagnose {
        /// Run folders, or checkpoint files (imported with the flags below).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        import: exchange::ImportArgs,
        /// Which weights of a run folder (an imported checkpoint has one set).
        #[arg(long, value_enum, default_value_t = exchange::Weights::Model)]
        weights: exchange::Weights,
        /// The folder to write: one subfolder per input and a sweep.json, so `report` reads it.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value = "flex", help = DEVICE_HELP)]
        device: String,
    },
    /// Evaluate trained runs under sampling-time skip edits (Skip-Tuning, FreeU, each LSC
    /// scaled alone) into each run's `skip_eval.jsonl`, which `report` compares.
    SkipEval {
        /// Run folders, or sweep folders (every run in them).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// A TOML file with `skip_edits = [...]` (default: each run's own `eval.skip_edits`).
        #[arg(long, value_name = "FILE")]
        edits: Option<PathBuf>,
        #[arg(long, default_value = "flex", help = DEVICE_HELP)]
        device: String,
    },
    /// Sample a trained run (its latest checkpoint's EMA weights) unedited and under each
    /// sampling-time skip edit, one row each, every row from the same noise: FreeU or a
    /// Skip-Tuning ramp judged by eye. Writes <run>/samples/edits_seed<N>.png and the rows'
    /// settings beside it (.txt).
    Sample {
        /// A run folder, e.g. runs/stability/cs_seed0.
        run: PathBuf,
        /// A TOML file with `skip_edits = [...]` (default: the run's own `eval.skip_edits`; with
        /// neither, the unedited row alone).
        #[arg(long, value_name = "FILE")]
        edits: Option<PathBuf>,
        /// The sampling noise's seed (default: the one the run's own sample grids use).
        #[arg(long, default_value_t = scalelong::samples::SAMPLE_SEED)]
        seed: u64,
        /// Samples per row (default: the run's `sample_count`).
        #[arg(long)]
        count: Option<usize>,
        /// Where to write the PNG (default: <run>/samples/edits_seed<seed>.png).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[arg(long, default_value = "flex", help = DEVICE_HELP)]
        device: String,
    },
    /// Measure, at initialisation, what ScaleLong's bounds speak of (the feature norm at each LSC,
    /// the gradient norm, the output's sensitivity to an input perturbation) for CS networks over a
    /// kappa grid and many seeds, on the diagnostics' fixed probe, into one JSONL file that `report`
    /// reads from a sweep folder (docs/method.md §4).
    DoseResponse {
        /// The plan (TOML: `base` run config, `kappas`, `seeds`, `[set]` overrides), e.g.
        /// experiments/dose-response.toml.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Override a key of the base run config, after the plan's `[set]` (as `train --set`).
        /// Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// The file to write, e.g. runs/default/dose_response.jsonl (beside a sweep's runs, where
        /// `report` finds it).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[arg(long, default_value = "flex", help = DEVICE_HELP)]
        device: String,
    },
    /// Print every preset's parameter count per strategy.
    Params,
}

/// Exit status of a run that diverged (non-finite loss or gradient).
const EXIT_DIVERGED: u8 = 3;

fn main() -> ExitCode {
    // burn's default device is the best compiled-in backend (wgpu in a wgpu build), and burn puts
    // some tensors there whatever device a run uses: AdamW's state read from a checkpoint waits on
    // it until the next step. Every device this program uses is explicit, so the default stays the
    // CPU unless the user sets BURN_DEVICE; otherwise loading a flex checkpoint starts a GPU.
    // Setting a variable in a running process is unsafe (other threads may read the environment),
    // so the program replaces itself with a copy that starts with it set: same process, same
    // arguments, no `unsafe` outside the kernels crate.
    #[cfg(unix)]
    if std::env::var_os("BURN_DEVICE").is_none() {
        use std::os::unix::process::CommandExt;
        let error = std::process::Command::new(std::env::current_exe().unwrap_or_else(|_| "scalelong".into()))
            .arg0(std::env::args_os().next().unwrap_or_else(|| "scalelong".into()))
            .args(std::env::args_os().skip(1))
            .env("BURN_DEVICE", "flex")
            .exec();
        eprintln!("error: cannot restart with BURN_DEVICE=flex: {error}");
        return ExitCode::FAILURE;
    }
    scalelong_kernels::tune_allocator();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Train { config, overrides, out, resume, device } => {
            let device = device::parse(&device)?.autodiff();
            let run_config = config::load(&config, &overrides)?;
            let out = out.unwrap_or_else(|| default_train_folder(&config));
            match train::train(&run_config, &out, &device, resume)? {
                train::Outcome::Completed => Ok(ExitCode::SUCCESS),
                train::Outcome::Diverged { step } => {
                    eprintln!("diverged at step {step}; the last good checkpoint is kept in {}", out.display());
                    Ok(ExitCode::from(EXIT_DIVERGED))
                }
            }
        }
        Command::Sweep { file, overrides, retrain_changed, list, shard, jobs, runs, device } => {
            let plan = sweep::SweepPlan::load(&file, &overrides)?;
            if list {
                for command in plan.commands(&runs) {
                    println!("{command}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let shard = sweep::parse_shard(&shard)?;
            if jobs == 0 {
                anyhow::bail!("--jobs: must be at least 1");
            }
            // No more processes than runs: on a large machine a 12-run sweep gets 12 processes,
            // each with an equal share of the threads, not 64 processes of one thread.
            let runs_in_shard = (0..plan.runs.len()).filter(|i| i % shard.1 == shard.0).count();
            let jobs = jobs.min(runs_in_shard.max(1));
            if jobs > 1 {
                // Refused here once, rather than by each process.
                if !retrain_changed {
                    sweep::refuse_changed_runs(&plan, &runs, shard)?;
                }
                let mut args: Vec<String> = vec![
                    "sweep".into(),
                    file.display().to_string(),
                    "--shard".into(),
                    format!("{}/{}", shard.0, shard.1),
                    "--runs".into(),
                    runs.display().to_string(),
                    "--device".into(),
                    device.clone(),
                ];
                args.extend(overrides.iter().flat_map(|o| ["--set".to_string(), o.clone()]));
                if retrain_changed {
                    args.push("--retrain-changed".into());
                }
                sweep::run_in_processes(&args, jobs, Some(&plan.folder(&runs)))?;
                return Ok(ExitCode::SUCCESS);
            }
            let device = device::parse(&device)?.autodiff();
            let summary = sweep::run(&plan, &runs, shard, retrain_changed, &device)?;
            // A process of a sweep started with --jobs leaves the summary to the sweep's parent.
            if std::env::var_os(sweep::SWEEP_CHILD_ENV).is_none() {
                eprintln!("{}", summary.describe(&plan.name));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Frontier { file, jobs, runs, device } => {
            frontier::run(&file, &runs, jobs, &device)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { sweep, all, jobs } => {
            for line in scalelong::status::SweepStatus::read(&sweep)?.table(jobs, all) {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { sweep, out } => {
            let name = sweep.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "sweep".into());
            let out = out.unwrap_or_else(|| PathBuf::from("reports").join(name));
            let summary = scalelong_report::write_report(&sweep, &out)?;
            println!("{}", summary.html.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { checkpoint, args, out } => {
            let config = exchange::import(&checkpoint, &args, &out, &burn::prelude::Device::flex())?;
            println!(
                "{}: {} ({}) imported from {}",
                out.display(),
                config.model.describe(),
                config.strategy,
                checkpoint.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { run, format, weights, out } => {
            let written = exchange::export(&run, format, weights, out, &burn::prelude::Device::flex())?;
            println!("{}", written.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Diagnose { inputs, import, weights, out, device } => {
            let device = device::parse(&device)?.autodiff();
            for run in diagnose::diagnose(&inputs, &import, weights, &out, &device)? {
                eprintln!("{}: {} records", out.join(&run.id).display(), run.records);
            }
            println!("{}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::SkipEval { runs, edits, device } => {
            let device = device::parse(&device)?;
            let edits = edits.map(|path| skip_eval::read_edits_file(&path)).transpose()?;
            for run in sweep::expand_run_folders(&runs)? {
                let lines = skip_eval::skip_eval_run(&run, edits.as_deref(), &device)?;
                eprintln!("{}: {lines} settings", run.join("skip_eval.jsonl").display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sample { run, edits, seed, count, out, device } => {
            let device = device::parse(&device)?;
            let edits = edits.map(|path| skip_eval::read_edits_file(&path)).transpose()?;
            let written = skip_eval::sample_edits(&run, edits.as_deref(), seed, count, out.as_deref(), &device)?;
            for (row, setting) in written.rows.iter().enumerate() {
                eprintln!("row {}: {setting}", row + 1);
            }
            println!("{}", written.grid.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::DoseResponse { config, overrides, out, device } => {
            let device = device::parse(&device)?.autodiff();
            let networks = dose_response::dose_response(&config, &overrides, &out, &device)?;
            eprintln!("{networks} networks measured");
            println!("{}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Params => {
            print!("{}", scalelong::parameter_table());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `runs/train-<config file stem>`: beside the sweeps' `runs/<sweep name>` folders, never one of
/// them (`just train experiments/unet.toml` would otherwise write into `just sweep-unet`'s).
fn default_train_folder(config: &std::path::Path) -> PathBuf {
    let stem = config.file_stem().map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("runs").join(format!("train-{stem}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument of every command says what it is (`--help` is the manual).
    #[test]
    fn every_argument_has_help() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let mut missing = Vec::new();
        for command in cli.get_subcommands() {
            assert!(command.get_about().is_some(), "{}: no about", command.get_name());
            for arg in command.get_arguments() {
                if arg.get_help().is_none() && !["help", "version"].contains(&arg.get_id().as_str()) {
                    missing.push(format!("{} {}", command.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    #[test]
    fn a_single_run_defaults_beside_the_sweep_folders() {
        assert_eq!(
            default_train_folder(std::path::Path::new("experiments/unet.toml")),
            PathBuf::from("runs/train-unet")
        );
    }
}
