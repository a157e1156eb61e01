//! The `diagnostics.jsonl` long table (docs/run-folder.md): one [`Record`] a line (read with
//! [`crate::read_jsonl`]), and selection of one series out of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One line of `diagnostics.jsonl`, with exactly the keys of docs/run-folder.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Optimizer steps already taken when the value was measured.
    pub step: u64,
    /// The measured quantity.
    pub quantity: Quantity,
    /// Block or parameter group (`enc.K`, `mid`, `dec.K`, `total`, ...); `None` is JSON null.
    pub layer: Option<String>,
    /// Long-skip index i, 1 = outermost.
    pub lsc: Option<u32>,
    /// Timestep bin of the probe batch (0 = least noise); `None` for whole-batch values.
    pub t_bin: Option<u32>,
    /// The value; `None` when the writer saw a non-finite number.
    pub value: Option<f64>,
}

/// The `quantity` of a diagnostics record: every name of docs/run-folder.md, serialised as that
/// name. The recorder writes and the analyses read through this type, so a renamed quantity is a
/// compile error rather than an empty series in a report. A name this build does not know (a run
/// folder from another version) reads as [`Quantity::Unknown`], which no analysis asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// Mean over samples of the L2 norm of a block's output.
    FeatureL2,
    /// Mean over samples of the RMS of a block's output.
    FeatureRms,
    /// L2 norm of the skip before scaling.
    SkipL2,
    /// L2 norm of `coef_i * skip_i`.
    ScaledSkipL2,
    /// `|coef_i skip_i| / |x_i|`, `x_i` the main path entering the fusion.
    SkipRatio,
    /// Mean coefficient applied on LSC i.
    Coef,
    /// Share of the skip's energy in the lowest spatial frequencies.
    SkipLowFreqShare,
    /// The same share of the main path entering the fusion.
    MainLowFreqShare,
    GateMean,
    GateStd,
    GateMin,
    GateMax,
    /// The fit `gate_mean_i = a * kappa^(i-1)`: `a`, `kappa` and its R^2.
    GateFitA,
    GateFitKappa,
    GateFitR2,
    /// [`GateInput`]'s six summaries.
    GateInputMean,
    GateInputRms,
    GateInputPositionSd,
    GateInputSampleSd,
    GateInputCosLsc1,
    GateInputDistLsc1,
    /// Gradient norm of a parameter group on the training batch.
    GradNorm,
    /// Gradient norm on the probe samples of one timestep bin.
    GradNormBin,
    WeightNorm,
    RelUpdate,
    ProbeLoss,
    XtSqNorm,
    Robustness,
    M0,
    /// A name this build does not write.
    #[serde(other)]
    Unknown,
}

impl Quantity {
    /// The name in `diagnostics.jsonl`.
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// The summaries of an LS gate's input the recorder writes per LSC (docs/run-folder.md,
/// docs/method.md §3.4): the skip averaged over every axis after the second (over D for the
/// U-ViT's `[B, L, D]` tokens, over space for the conv UNet's channels), `p_i` of shape `[B, G]`,
/// exactly what the gate of LSC `i` turns into its coefficients. Whether a gate shared by all LSCs
/// can give them different coefficients depends on how different these inputs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateInput {
    /// Mean of `p_i` over samples and positions.
    Mean,
    /// Root mean square of `p_i` over samples and positions: the input's size the gate's first
    /// layer sees.
    Rms,
    /// Per sample the standard deviation of `p_i` over positions (tokens or channels), mean over
    /// samples: how much the gate's input varies along the axis it gates.
    PositionSd,
    /// Per position the standard deviation of `p_i` over samples, mean over positions: how much
    /// it varies from one image and timestep to the next.
    SampleSd,
    /// Per sample the cosine similarity of `p_i` to LSC 1's `p_1`, mean over samples (1 for LSC 1;
    /// not written where the widths differ, as between the conv UNet's stages).
    CosineToLsc1,
    /// Root mean square of `p_i - p_1` over samples and positions (0 for LSC 1; not written where
    /// the widths differ): set against [`GateInput::SampleSd`] of LSC 1, whether two LSCs' inputs
    /// differ more than two images' inputs at one LSC.
    DistanceToLsc1,
}

impl GateInput {
    /// Every summary, in declaration order (`input as usize` indexes it).
    pub const ALL: [GateInput; 6] = [
        GateInput::Mean,
        GateInput::Rms,
        GateInput::PositionSd,
        GateInput::SampleSd,
        GateInput::CosineToLsc1,
        GateInput::DistanceToLsc1,
    ];

    /// The `quantity` of its records.
    pub const fn quantity(self) -> Quantity {
        match self {
            GateInput::Mean => Quantity::GateInputMean,
            GateInput::Rms => Quantity::GateInputRms,
            GateInput::PositionSd => Quantity::GateInputPositionSd,
            GateInput::SampleSd => Quantity::GateInputSampleSd,
            GateInput::CosineToLsc1 => Quantity::GateInputCosLsc1,
            GateInput::DistanceToLsc1 => Quantity::GateInputDistLsc1,
        }
    }
}

/// The finite values of one series, `(step, value)` sorted by step. Every key must match exactly:
/// `None` selects JSON null. Records whose value is null (non-finite) are left out. When a step
/// occurs twice (a run resumed from a checkpoint re-measures the steps after it), the record written
/// last wins.
pub fn series(
    records: &[Record],
    quantity: Quantity,
    layer: Option<&str>,
    lsc: Option<u32>,
    t_bin: Option<u32>,
) -> Vec<(u64, f64)> {
    let by_step: BTreeMap<u64, Option<f64>> = records
        .iter()
        .filter(|r| r.quantity == quantity && r.layer.as_deref() == layer && r.lsc == lsc && r.t_bin == t_bin)
        .map(|r| (r.step, r.value))
        .collect();
    by_step.into_iter().filter_map(|(step, value)| Some((step, value?))).collect()
}

/// The values of [`series`] without their steps.
pub fn series_values(
    records: &[Record],
    quantity: Quantity,
    layer: Option<&str>,
    lsc: Option<u32>,
    t_bin: Option<u32>,
) -> Vec<f64> {
    series(records, quantity, layer, lsc, t_bin).into_iter().map(|(_, value)| value).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64, quantity: Quantity, layer: Option<&str>, value: Option<f64>) -> Record {
        Record { step, quantity, layer: layer.map(str::to_string), lsc: None, t_bin: None, value }
    }

    #[test]
    fn a_line_reads_with_exactly_the_documented_keys() {
        let line = r#"{"step": 120, "quantity": "feature_l2", "layer": "dec.3", "lsc": 3, "t_bin": 4, "value": 12.5}"#;
        let parsed: Record = serde_json::from_str(line).unwrap();
        let expected =
            Record { lsc: Some(3), t_bin: Some(4), ..record(120, Quantity::FeatureL2, Some("dec.3"), Some(12.5)) };
        assert_eq!(parsed, expected);
        let null = r#"{"step": 121, "quantity": "m0", "layer": null, "lsc": null, "t_bin": null, "value": null}"#;
        assert_eq!(serde_json::from_str::<Record>(null).unwrap(), record(121, Quantity::M0, None, None));
    }

    #[test]
    fn series_selects_exact_keys_sorts_by_step_and_keeps_the_last_duplicate() {
        let records = vec![
            record(30, Quantity::Coef, Some("dec.0"), Some(3.0)),
            record(10, Quantity::Coef, Some("dec.0"), Some(1.0)),
            record(20, Quantity::Coef, Some("dec.0"), None),
            record(10, Quantity::Coef, Some("dec.1"), Some(9.0)),
            record(10, Quantity::Coef, None, Some(8.0)),
            record(10, Quantity::GateMean, Some("dec.0"), Some(7.0)),
            record(30, Quantity::Coef, Some("dec.0"), Some(4.0)),
        ];
        assert_eq!(series(&records, Quantity::Coef, Some("dec.0"), None, None), vec![(10, 1.0), (30, 4.0)]);
        assert_eq!(series_values(&records, Quantity::Coef, None, None, None), vec![8.0]);
    }

    #[test]
    fn quantities_read_and_write_the_documented_names_and_an_unknown_one_still_reads() {
        for (quantity, name) in [
            (Quantity::FeatureL2, "feature_l2"),
            (Quantity::ScaledSkipL2, "scaled_skip_l2"),
            (Quantity::XtSqNorm, "xt_sq_norm"),
            (Quantity::GateFitR2, "gate_fit_r2"),
            (Quantity::GateInputCosLsc1, "gate_input_cos_lsc1"),
            (Quantity::M0, "m0"),
        ] {
            assert_eq!(quantity.name(), name);
            assert_eq!(serde_json::from_str::<Quantity>(&format!("\"{name}\"")).unwrap(), quantity);
        }
        let line = r#"{"step": 5, "quantity": "feature_oscillation", "layer": null, "lsc": null, "t_bin": null, "value": 1.0}"#;
        assert_eq!(serde_json::from_str::<Record>(line).unwrap().quantity, Quantity::Unknown);
    }
}
