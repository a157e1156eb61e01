//! `scalelong`: train diffusion models with scaled long skips and measure their stability. The
//! command line over the libraries: `scalelong` (train, sweep, evaluate, exchange) and
//! `scalelong-report`.

use anyhow::Result;
use clap::{Parser, Subcommand};
use scalelong::{config, device, diagnose, exchange, skip_eval, sweep, train};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "scalelong",
    version,
    about = "ScaleLong harness: how scaling a UNet's long skips changes training stability"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one run.
    Train {
        #[arg(long)]
        config: PathBuf,
        /// Override a config key, e.g. `--set strategy=ls --set model.depth=16`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Run folder (default: runs/<config file stem>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from the run folder's latest checkpoint.
        #[arg(long)]
        resume: bool,
        #[arg(long, default_value = "flex")]
        device: String,
    },
    /// Run (a share of) a sweep: every combination of its grid, skipping completed runs.
    Sweep {
        file: PathBuf,
        /// Print one `scalelong train` command per run (for a job array) and exit.
        #[arg(long)]
        list: bool,
        /// Run only the runs whose index is i mod n (0-based), e.g. `--shard 1/4`.
        #[arg(long, default_value = "0/1")]
        shard: String,
        /// Train this many runs at once, each in its own process on an equal share of the CPU's
        /// threads (on 2 cores, two one-thread processes train 1.3x as many steps a second as
        /// one two-thread process: the small presets do not keep two threads busy).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Where sweep folders live.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        #[arg(long, default_value = "flex")]
        device: String,
    },
    /// Write the HTML/PNG report of a sweep folder (default: reports/<sweep name>).
    Report {
        sweep: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import a PyTorch reference checkpoint (.safetensors, .pth, .pt) as a run folder.
    Import {
        checkpoint: PathBuf,
        #[command(flatten)]
        args: exchange::ImportArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a run's weights under the PyTorch reference's names (default: <run>/ema.safetensors).
    Export {
        run: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: exchange::ExportFormat,
        #[arg(long, value_enum, default_value_t)]
        weights: exchange::Weights,
        #[arg(long)]
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
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "flex")]
        device: String,
    },
    /// Evaluate trained runs under sampling-time skip edits (Skip-Tuning, FreeU, each LSC
    /// scaled alone) into each run's `skip_eval.jsonl`, which `report` compares.
    SkipEval {
        /// Run folders, or sweep folders (every run in them).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// A TOML file with `skip_edits = [...]` (default: each run's own `eval.skip_edits`).
        #[arg(long)]
        edits: Option<PathBuf>,
        #[arg(long, default_value = "flex")]
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
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(config.file_stem().unwrap_or_default()));
            match train::train(&run_config, &out, &device, resume)? {
                train::Outcome::Completed => Ok(ExitCode::SUCCESS),
                train::Outcome::Diverged { step } => {
                    eprintln!("diverged at step {step}; the last good checkpoint is kept in {}", out.display());
                    Ok(ExitCode::from(EXIT_DIVERGED))
                }
            }
        }
        Command::Sweep { file, list, shard, jobs, runs, device } => {
            let plan = sweep::SweepPlan::load(&file)?;
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
            if jobs > 1 {
                let args = ["sweep", &file.display().to_string(), "--shard", &format!("{}/{}", shard.0, shard.1)]
                    .into_iter()
                    .map(String::from)
                    .chain(["--runs".into(), runs.display().to_string(), "--device".into(), device.clone()])
                    .collect::<Vec<_>>();
                sweep::run_in_processes(&args, jobs)?;
                return Ok(ExitCode::SUCCESS);
            }
            let device = device::parse(&device)?.autodiff();
            let summary = sweep::run(&plan, &runs, shard, &device)?;
            eprintln!(
                "sweep {}: {} trained, {} already complete, {} diverged, {} running elsewhere",
                plan.name,
                summary.trained.len(),
                summary.skipped.len(),
                summary.diverged.len(),
                summary.locked_elsewhere.len()
            );
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
        Command::Params => {
            print!("{}", scalelong::parameter_table());
            Ok(ExitCode::SUCCESS)
        }
    }
}
