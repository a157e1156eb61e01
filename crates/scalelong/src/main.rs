//! `scalelong`: train diffusion models with scaled long skips and measure their stability.

mod checkpoint;
mod config;
mod device;
mod ema;
mod eval;
mod progress;
mod report;
mod run_folder;
mod samples;
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
    /// Print every preset's parameter count per strategy.
    Params,
}

/// Exit status of a run that diverged (non-finite loss or gradient).
const EXIT_DIVERGED: u8 = 3;

fn main() -> ExitCode {
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
