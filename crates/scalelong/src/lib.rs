//! The scalelong harness as a library: one training run ([`train`]), a sweep of them ([`sweep`]),
//! the learning-rate frontier found by bisection ([`frontier`]),
//! their evaluation ([`eval`]), sampling-time skip edits ([`skip_eval`]), checkpoints and the exchange with the PyTorch reference
//! ([`checkpoint`], [`exchange`]), one-pass diagnostics of trained networks ([`diagnose`]), and the
//! bound quantities of networks at initialisation over a kappa grid ([`dose_response`]).
//! The `scalelong` binary is a thin command line over it and `scalelong-report`.

// All unsafe code lives in scalelong-kernels, behind safe APIs.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod diagnose;
pub mod dose_response;
pub mod ema;
pub mod eval;
pub mod exchange;
pub mod frontier;
pub mod images;
pub mod optimizer;
pub mod progress;
pub mod samples;
pub mod skip_eval;
pub mod status;
pub mod sweep;
pub mod train;

use burn::module::Module;
use scalelong_model::SkipScaling;
use scalelong_model::presets::{PRESETS, preset};

/// Every preset's parameter count per strategy, one line each (`scalelong params`).
pub fn parameter_table() -> String {
    let device = burn::prelude::Device::flex();
    let mut table =
        format!("{:<14} {:>12} {:>12} {:>14}  description\n", "preset", "1/1/sqrt2/CS", "LS", "LS non-shared");
    for (name, description) in PRESETS {
        let config = preset(name).expect("listed presets exist");
        let count = |s| config.init(s, &device).num_params();
        table.push_str(&format!(
            "{name:<14} {:>12} {:>12} {:>14}  {description}\n",
            count(SkipScaling::Original),
            count("ls".parse().expect("a config name")),
            count("ls-nonshared".parse().expect("a config name")),
        ));
    }
    table
}
