//! The report's tables as files: each a polars frame written as CSV and Parquet beside the page,
//! and the column helpers the sections' frames share.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use polars::prelude::*;
use scalelong_analysis::inference::Interval;
use scalelong_schema::write_atomic;

/// A table a section writes beside the page as `<stem>.csv` and `<stem>.parquet`.
pub struct Table {
    pub stem: &'static str,
    pub frame: DataFrame,
}

impl Table {
    /// The table of `rows` built by `frame`; `None` without rows: a sweep that has no such data
    /// gets no file.
    pub fn of_rows<Row>(
        stem: &'static str,
        rows: &[Row],
        frame: impl FnOnce(&[Row]) -> PolarsResult<DataFrame>,
    ) -> Result<Option<Self>> {
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self { stem, frame: frame(rows)? }))
    }

    /// The files' names relative to the report folder, CSV first.
    pub fn file_names(&self) -> [String; 2] {
        [format!("{}.csv", self.stem), format!("{}.parquet", self.stem)]
    }

    /// Writes both files into `out_dir`, each whole or not at all (encoded in memory, then written
    /// atomically); returns their paths.
    pub fn write(&self, out_dir: &Path) -> Result<[PathBuf; 2]> {
        let [csv_path, parquet_path] = self.file_names().map(|name| out_dir.join(name));
        // The writers take the frame mutably (they may rechunk it); a clone shares its columns.
        let mut frame = self.frame.clone();
        // Both anyhow and polars offer `with_context` on a polars result, hence the explicit error.
        let encode_error = |path: &Path, error: PolarsError| anyhow!("{}: cannot encode: {error}", path.display());
        let mut csv = Vec::new();
        CsvWriter::new(&mut csv).finish(&mut frame).map_err(|error| encode_error(&csv_path, error))?;
        write_atomic(&csv_path, &csv)?;
        let mut parquet = Vec::new();
        ParquetWriter::new(&mut parquet).finish(&mut frame).map_err(|error| encode_error(&parquet_path, error))?;
        write_atomic(&parquet_path, &parquet)?;
        Ok([csv_path, parquet_path])
    }
}

/// Estimate, low and high of an optional interval as three columns' values.
pub fn interval_parts(interval: Option<&Interval>) -> (Option<f64>, Option<f64>, Option<f64>) {
    interval.map_or((None, None, None), |i| (Some(i.estimate), Some(i.low), Some(i.high)))
}

/// Numbers joined by `; ` (a list inside one CSV cell).
pub fn join_numbers(values: &[f64]) -> String {
    values.iter().map(|value| format!("{value}")).collect::<Vec<_>>().join("; ")
}
