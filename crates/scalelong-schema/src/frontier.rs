//! `frontier.json`: what `scalelong frontier` found in a sweep folder, each grid cell's learning
//! rate bracketed by bisection in log lr (docs/experiment-design.md, "The stability frontier").
//! Every probe is an ordinary run folder of the sweep; this file says which of them bracket the
//! frontier, so that the report reads the bracket rather than guessing it from the runs.

use serde::{Deserialize, Serialize};

/// `frontier.json` of a sweep folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frontier {
    /// The searched interval's ends (the frontier file's `[frontier] low, high`).
    pub low: f64,
    pub high: f64,
    /// The largest ratio of smallest failed to largest trained learning rate the search allowed
    /// (the file's `resolution`).
    pub resolution: f64,
    /// The ratio of neighbouring rates the search could probe: `(high / low)^(1 / 2^halvings)`,
    /// the first such at most `resolution`; an uncensored bracket spans exactly this ratio.
    pub step_ratio: f64,
    /// One per grid cell, in the sweep's order.
    pub brackets: Vec<LrBracket>,
}

/// One grid cell's frontier (a strategy at a seed, and any other grid values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrBracket {
    /// The grid cell, named as its probes' folders begin (`cs_seed0`).
    pub cell: String,
    /// The cell's model as the report names it ([`crate::ModelSection::describe`]).
    pub model: String,
    /// [`crate::SkipScaling::label`].
    pub strategy: String,
    pub seed: u64,
    /// The largest learning rate at which this cell's run trained (neither collapsed nor
    /// diverged); `None` when it failed at `low` already.
    pub largest_trained_lr: Option<f64>,
    /// The smallest learning rate, above the largest trained one, at which its run collapsed or
    /// diverged; `None` when it trained at `high`.
    pub smallest_failed_lr: Option<f64>,
    /// Set when the frontier lies outside `[low, high]`: the bracket is then one-sided.
    pub censored: Option<Censoring>,
    /// The probes' run folders (in this sweep folder), in the order they were run.
    pub probes: Vec<String>,
}

/// Which end of the searched interval did not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Censoring {
    /// The run failed at `low`: the frontier lies below the interval.
    FailedAtLow,
    /// The run trained at `high`: the frontier lies at or above it.
    TrainedAtHigh,
}
