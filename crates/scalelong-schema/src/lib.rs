//! The run folder's one schema (docs/run-folder.md): the types every file a run or a sweep writes
//! is written and read with, and the one way each is written and read. No burn: the report and
//! the analysis build without it.
//!
//! | file | type |
//! |---|---|
//! | `config.json` | [`RunConfig`] (with [`SkipScaling`], [`ScheduleConfig`], [`SamplerConfig`], ...) |
//! | `status.json` | [`Status`] |
//! | `metrics.jsonl` | [`MetricsLine`] |
//! | `eval.jsonl` | [`EvalLine`] |
//! | `skip_eval.jsonl` | [`SkipEvalLine`] |
//! | `diagnostics.jsonl` | [`Record`] |
//! | `dose_response.jsonl` (a sweep folder's) | [`DoseResponseLine`] (planned by [`DoseResponsePlan`]) |
//! | `checkpoint/state.json` | [`CheckpointState`] |
//! | `sweep.json` | [`SweepManifest`] |
//! | `frontier.json` (a sweep folder's, from `scalelong frontier`) | [`Frontier`] |
//!
//! Whole files go through [`write_json_atomic`] / [`read_json`], logs through [`JsonlLog`] and
//! [`read_jsonl`] (which tolerates the torn last line of a killed writer).

// All unsafe code lives in scalelong-kernels, behind safe APIs.
#![forbid(unsafe_code)]

pub mod config;
pub mod diffusion;
pub mod dose_response;
pub mod files;
pub mod frontier;
pub mod io;
pub mod records;
pub mod strategy;

pub use config::{
    DataConfig, DiagnosticsConfig, DiffusionConfig, EvalConfig, LrSchedule, ModelSection, OptimizerConfig, RunConfig,
    SkipEditSpec, apply_override,
};
pub use diffusion::{SamplerConfig, ScheduleConfig};
pub use dose_response::{DoseQuantity, DoseResponseLine, DoseResponsePlan};
pub use files::{
    AnalysisPlan, CheckpointState, EditKind, EvalLine, MetricsLine, RunState, SkipEvalLine, Status, SweepManifest,
    SweepRun,
};
pub use frontier::{Censoring, Frontier, LrBracket};
pub use io::{
    JsonlLog, read_json, read_jsonl, remove_stale_temporaries, truncate_jsonl_after, write_atomic, write_json_atomic,
};
pub use records::{GateInput, Quantity, Record, series, series_values};
pub use strategy::{ColourClass, SkipScaling};
