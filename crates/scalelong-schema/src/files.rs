//! The types every file of a run folder and a sweep folder is written and read with
//! (docs/run-folder.md), besides `config.json` ([`crate::RunConfig`]) and `diagnostics.jsonl`
//! ([`crate::Record`]).

use crate::config::RunConfig;
use crate::io::{read_json, write_json_atomic};
use anyhow::Result;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Completed,
    Diverged,
}

/// `status.json`: where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: RunState,
    pub step: u64,
    pub message: Option<String>,
}

impl Status {
    /// The run's status, `None` when it has none or it cannot be read.
    pub fn read(run: &Path) -> Option<Self> {
        read_json(&run.join("status.json")).ok()
    }
    pub fn write(&self, run: &Path) -> Result<()> {
        write_json_atomic(&run.join("status.json"), self)
    }
}

/// One line of `metrics.jsonl`. A non-finite value is written as `null` (JSON has no NaN) and
/// read back as NaN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    pub step: u64,
    #[serde(deserialize_with = "null_as_nan")]
    pub loss: f64,
    pub lr: f64,
    #[serde(deserialize_with = "null_as_nan")]
    pub grad_norm: f64,
    /// This step's forward, backward, AdamW and EMA.
    pub step_time_s: f64,
    /// Throughput since the previous line, diagnostics, sampling and evaluation included.
    pub examples_per_s: f64,
}

/// One line of `eval.jsonl`: the EMA weights evaluated after `step` optimizer steps. A diverged
/// model's non-finite losses are written as `null` and read back as NaN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    pub step: u64,
    #[serde(deserialize_with = "null_as_nan")]
    pub heldout_loss: f64,
    /// Per timestep bin, bin 0 = least noise.
    #[serde(deserialize_with = "nulls_as_nan")]
    pub heldout_loss_bins: Vec<f64>,
    /// The held-out loss of predicting zero noise on the same samples (the mean squared noise,
    /// about 1): the scale a collapsed network's loss sits at.
    #[serde(default = "nan", deserialize_with = "null_as_nan")]
    pub zero_predictor_loss: f64,
    /// `None` when `eval.fd_samples` is 0.
    pub fd: Option<f64>,
    /// The FD classifier's test accuracy, `None` when `eval.fd_samples` is 0.
    pub classifier_accuracy: Option<f64>,
    /// Samples the FD compares (generated, and as many test images); 0 when skipped.
    pub n_samples: u64,
}

/// The `kind` of a `skip_eval.jsonl` line: which sampling-time edit it measures (docs/method.md
/// §3.5), serialised as `none`, `skip-tuning`, `freeu` or `importance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EditKind {
    /// The unedited network, the reference of every other line.
    #[serde(rename = "none")]
    Unedited,
    #[serde(rename = "skip-tuning")]
    SkipTuning,
    #[serde(rename = "freeu")]
    FreeU,
    /// One LSC scaled alone.
    #[serde(rename = "importance")]
    Importance,
}

impl EditKind {
    /// Whether the line is a published sampling-time method (Skip-Tuning, FreeU), as opposed to
    /// the reference or an importance probe.
    pub fn is_method(self) -> bool {
        match self {
            EditKind::SkipTuning | EditKind::FreeU => true,
            EditKind::Unedited | EditKind::Importance => false,
        }
    }

    /// The name in `skip_eval.jsonl` and in the report's tables.
    pub fn name(self) -> &'static str {
        match self {
            EditKind::Unedited => "none",
            EditKind::SkipTuning => "skip-tuning",
            EditKind::FreeU => "freeu",
            EditKind::Importance => "importance",
        }
    }
}

/// One line of `skip_eval.jsonl`: the final EMA weights under one sampling-time skip edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkipEvalLine {
    pub step: u64,
    pub kind: EditKind,
    /// The setting in words, e.g. `rho 1 -> 0.8`, `LSC 3 x 0`; what the report's tables show.
    pub setting: String,
    /// The LSC an importance setting scales (1 = outermost).
    pub lsc: Option<u32>,
    /// The factor an importance setting scales it by.
    pub factor: Option<f64>,
    #[serde(deserialize_with = "null_as_nan")]
    pub heldout_loss: f64,
    #[serde(deserialize_with = "nulls_as_nan")]
    pub heldout_loss_bins: Vec<f64>,
    pub fd: Option<f64>,
}

/// `checkpoint/state.json`: the step and the config a checkpoint was made with. The data order
/// and the per-step noise are functions of (seed, step), so no RNG state needs saving.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    pub step: u64,
    pub config: RunConfig,
}

/// `sweep.json`: a sweep's grid and its runs, written by `scalelong sweep` before any run starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepManifest {
    pub name: String,
    /// The run config every run starts from; `None` for a folder of `scalelong diagnose`, whose
    /// runs come from checkpoints.
    pub base_config: Option<PathBuf>,
    /// Axis key (dotted, as for `--set`) -> the values it takes.
    pub axes: toml::Table,
    pub runs: Vec<SweepRun>,
    /// The analysis fixed with the design, before any run (absent in folders of older sweeps).
    #[serde(default)]
    pub analysis: AnalysisPlan,
}

/// What a sweep file fixes about its analysis before the runs (`[analysis]`), so that no
/// threshold is chosen after seeing them (docs/experiment-design.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisPlan {
    /// Held-out losses on the steep part of the curve (a pilot's loss at a quarter and at half of
    /// its run): each run's speed is its steps to first reach each, a run that never does counted
    /// at its last step (censored).
    #[serde(default)]
    pub speed_targets: Vec<f64>,
}

/// One run of a sweep: its folder name and its value on each axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRun {
    pub id: String,
    #[serde(default)]
    pub overrides: toml::Table,
}

fn nan() -> f64 {
    f64::NAN
}

fn null_as_nan<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

fn nulls_as_nan<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
    Ok(Vec::<Option<f64>>::deserialize(deserializer)?.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_kinds_are_written_and_read_by_the_names_the_report_shows() {
        for kind in [EditKind::Unedited, EditKind::SkipTuning, EditKind::FreeU, EditKind::Importance] {
            let written = serde_json::to_string(&kind).unwrap();
            assert_eq!(written, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<EditKind>(&written).unwrap(), kind);
        }
    }

    #[test]
    fn non_finite_values_go_out_as_null_and_come_back_as_nan() {
        let line = EvalLine {
            step: 3,
            heldout_loss: f64::NAN,
            heldout_loss_bins: vec![0.5, f64::INFINITY],
            zero_predictor_loss: 1.0,
            fd: None,
            classifier_accuracy: None,
            n_samples: 0,
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.contains("\"heldout_loss\":null") && text.contains("[0.5,null]"), "{text}");
        let back: EvalLine = serde_json::from_str(&text).unwrap();
        assert!(back.heldout_loss.is_nan() && back.heldout_loss_bins[1].is_nan());
        assert_eq!((back.step, back.heldout_loss_bins[0], back.zero_predictor_loss), (3, 0.5, 1.0));
        // Lines written before the zero-predictor loss was recorded read with NaN there.
        let old: EvalLine = serde_json::from_str(
            r#"{"step":1,"heldout_loss":0.2,"heldout_loss_bins":[0.2],"fd":null,"classifier_accuracy":null,"n_samples":0}"#,
        )
        .unwrap();
        assert!(old.zero_predictor_loss.is_nan());
    }
}
