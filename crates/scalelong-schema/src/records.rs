//! The `diagnostics.jsonl` long table (docs/run-folder.md): one [`Record`] a line (read with
//! [`crate::read_jsonl`]), and selection of one series out of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One line of `diagnostics.jsonl`, with exactly the keys of docs/run-folder.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Optimizer steps already taken when the value was measured.
    pub step: u64,
    /// Name of the measured quantity, e.g. `feature_l2`, `coef`, `xt_sq_norm`.
    pub quantity: String,
    /// Block or parameter group (`enc.K`, `mid`, `dec.K`, `total`, ...); `None` is JSON null.
    pub layer: Option<String>,
    /// Long-skip index i, 1 = outermost.
    pub lsc: Option<u32>,
    /// Timestep bin of the probe batch (0 = least noise); `None` for whole-batch values.
    pub t_bin: Option<u32>,
    /// The value; `None` when the writer saw a non-finite number.
    pub value: Option<f64>,
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
    pub const fn quantity(self) -> &'static str {
        match self {
            GateInput::Mean => "gate_input_mean",
            GateInput::Rms => "gate_input_rms",
            GateInput::PositionSd => "gate_input_position_sd",
            GateInput::SampleSd => "gate_input_sample_sd",
            GateInput::CosineToLsc1 => "gate_input_cos_lsc1",
            GateInput::DistanceToLsc1 => "gate_input_dist_lsc1",
        }
    }
}

/// The finite values of one series, `(step, value)` sorted by step. Every key must match exactly:
/// `None` selects JSON null. Records whose value is null (non-finite) are left out. When a step
/// occurs twice (a run resumed from a checkpoint re-measures the steps after it), the record written
/// last wins.
pub fn series(
    records: &[Record],
    quantity: &str,
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
    quantity: &str,
    layer: Option<&str>,
    lsc: Option<u32>,
    t_bin: Option<u32>,
) -> Vec<f64> {
    series(records, quantity, layer, lsc, t_bin).into_iter().map(|(_, value)| value).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64, quantity: &str, layer: Option<&str>, value: Option<f64>) -> Record {
        Record { step, quantity: quantity.to_string(), layer: layer.map(str::to_string), lsc: None, t_bin: None, value }
    }

    #[test]
    fn a_line_reads_with_exactly_the_documented_keys() {
        let line = r#"{"step": 120, "quantity": "feature_l2", "layer": "dec.3", "lsc": 3, "t_bin": 4, "value": 12.5}"#;
        let parsed: Record = serde_json::from_str(line).unwrap();
        let expected = Record { lsc: Some(3), t_bin: Some(4), ..record(120, "feature_l2", Some("dec.3"), Some(12.5)) };
        assert_eq!(parsed, expected);
        let null = r#"{"step": 121, "quantity": "m0", "layer": null, "lsc": null, "t_bin": null, "value": null}"#;
        assert_eq!(serde_json::from_str::<Record>(null).unwrap(), record(121, "m0", None, None));
    }

    #[test]
    fn series_selects_exact_keys_sorts_by_step_and_keeps_the_last_duplicate() {
        let records = vec![
            record(30, "coef", Some("dec.0"), Some(3.0)),
            record(10, "coef", Some("dec.0"), Some(1.0)),
            record(20, "coef", Some("dec.0"), None),
            record(10, "coef", Some("dec.1"), Some(9.0)),
            record(10, "coef", None, Some(8.0)),
            record(10, "gate_mean", Some("dec.0"), Some(7.0)),
            record(30, "coef", Some("dec.0"), Some(4.0)),
        ];
        assert_eq!(series(&records, "coef", Some("dec.0"), None, None), vec![(10, 1.0), (30, 4.0)]);
        assert_eq!(series_values(&records, "coef", None, None, None), vec![8.0]);
    }
}
