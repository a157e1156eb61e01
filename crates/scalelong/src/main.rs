//! `scalelong`: train diffusion models with scaled long skips and measure their stability.

mod checkpoint;
mod config;
mod device;
mod diagnose;
mod ema;
mod eval;
mod exchange;
mod progress;
mod report;
mod run_folder;
mod samples;
mod sweep;
mod train;

use anyhow::Result;
use burn::module::Module;
use clap::{Parser, Subcommand};
use scalelong_model::SkipScaling;
use scalelong_model::presets::{PRESETS, preset};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(version, about = "ScaleLong harness: how scaling a UNet's long skips changes training stability")]
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
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: the first statement of main, before any thread exists.
        unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    }
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
            let run_config = config::RunConfig::load(&config, &overrides)?;
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(config.file_stem().unwrap_or_default()));
            match train::train(&run_config, &out, &device, resume)? {
                train::Outcome::Completed => Ok(ExitCode::SUCCESS),
                train::Outcome::Diverged { step } => {
                    eprintln!("diverged at step {step}; the last good checkpoint is kept in {}", out.display());
                    Ok(ExitCode::from(EXIT_DIVERGED))
                }
            }
        }
        Command::Sweep { file, list, shard, runs, device } => {
            let plan = sweep::SweepPlan::load(&file)?;
            if list {
                for command in plan.commands(&runs) {
                    println!("{command}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let shard = sweep::parse_shard(&shard)?;
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
            let summary = report::write_report(&sweep, &out)?;
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
        Command::Params => {
            let device = burn::prelude::Device::flex();
            println!("{:<14} {:>12} {:>12} {:>14}  description", "preset", "1/1/sqrt2/CS", "LS", "LS non-shared");
            for (name, description) in PRESETS {
                let config = preset(name).expect("listed presets exist");
                let count = |s| config.init(s, &device).num_params();
                println!(
                    "{name:<14} {:>12} {:>12} {:>14}  {description}",
                    count(SkipScaling::Original),
                    count(SkipScaling::Learnable { shared: true, reduction: 16 }),
                    count(SkipScaling::Learnable { shared: false, reduction: 16 }),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
