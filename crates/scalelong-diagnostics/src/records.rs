//! The `diagnostics.jsonl` long table (docs/run-folder.md): one [`Record`] a line, its reader,
//! and selection of one series out of it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

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

/// All diagnostics of one training run, labelled for the theorem checks.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecords {
    /// Run folder name, unique within a sweep.
    pub run_id: String,
    /// LSC strategy name (`1`, `1/sqrt2`, `CS`, `LS`, ...).
    pub strategy: String,
    /// Network depth, when the sweep varies it.
    pub depth: Option<u32>,
    pub records: Vec<Record>,
}

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: malformed diagnostics record: {source}", path.display())]
    MalformedLine {
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        source: serde_json::Error,
    },
}

/// Reads a JSONL file of [`Record`]s. A line that does not parse is an error naming the file and
/// line, except the final line when it lacks its newline: a writer killed mid-append leaves exactly
/// that, so it is dropped. Blank lines are skipped.
pub fn read_records(path: impl AsRef<Path>) -> Result<Vec<Record>, AnalysisError> {
    let path = path.as_ref();
    let io_error = |source| AnalysisError::Io { path: path.to_path_buf(), source };
    let mut reader = BufReader::new(File::open(path).map_err(io_error)?);
    let mut records = Vec::new();
    // Bytes, not a String: a torn line may end inside a multi-byte character.
    let mut line = Vec::new();
    for line_number in 1.. {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io_error)? == 0 {
            break;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Record>(&line) {
            Ok(record) => records.push(record),
            Err(_) if line.last() != Some(&b'\n') => break,
            Err(source) => {
                return Err(AnalysisError::MalformedLine { path: path.to_path_buf(), line: line_number, source });
            }
        }
    }
    Ok(records)
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

    /// Writes `contents` to a fresh file in the system temp dir, named after the test.
    fn temp_file(test_name: &str, contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("scalelong-diagnostics-{}-{test_name}.jsonl", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    const LINE_1: &str =
        r#"{"step": 120, "quantity": "feature_l2", "layer": "dec.3", "lsc": 3, "t_bin": 4, "value": 12.5}"#;
    const LINE_2: &str = r#"{"step": 121, "quantity": "m0", "layer": null, "lsc": null, "t_bin": null, "value": null}"#;

    #[test]
    fn reads_a_good_file() {
        let path = temp_file("good", &format!("{LINE_1}\n{LINE_2}\n"));
        let records = read_records(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            records,
            vec![
                Record {
                    step: 120,
                    quantity: "feature_l2".into(),
                    layer: Some("dec.3".into()),
                    lsc: Some(3),
                    t_bin: Some(4),
                    value: Some(12.5),
                },
                record(121, "m0", None, None),
            ]
        );
    }

    #[test]
    fn malformed_middle_line_is_an_error_with_its_line_number() {
        let path = temp_file("malformed", &format!("{LINE_1}\n{{\"step\": oops}}\n{LINE_2}\n"));
        let error = read_records(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        match &error {
            AnalysisError::MalformedLine { line, path: p, .. } => {
                assert_eq!(*line, 2);
                assert_eq!(p, &path);
            }
            other => panic!("expected a malformed-line error, got {other}"),
        }
        assert!(error.to_string().contains(":2: malformed"), "{error}");
    }

    #[test]
    fn torn_last_line_is_ignored() {
        let torn = &LINE_2[..LINE_2.len() / 2];
        let path = temp_file("torn", &format!("{LINE_1}\n{torn}"));
        let records = read_records(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].step, 120);
    }

    #[test]
    fn complete_last_line_without_newline_is_kept() {
        let path = temp_file("no-final-newline", &format!("{LINE_1}\n{LINE_2}"));
        let records = read_records(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(records.len(), 2);
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let error = read_records("/nonexistent/diagnostics.jsonl").unwrap_err();
        assert!(matches!(error, AnalysisError::Io { .. }), "{error}");
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
