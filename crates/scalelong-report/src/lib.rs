//! The report of a sweep folder (`scalelong report runs/<sweep>`): one self-contained HTML page comparing the sweep's strategies
//! (loss curves, feature-norm oscillation, per-LSC norms, LS gates, the theorem checks, samples, a
//! summary table and a paragraph on which of the paper's claims held), with every figure also saved
//! as a PNG and every table as CSV and Parquet beside it.
//!
//! The page is a list of sections (`sections/`), each computing, writing and rendering its own
//! part. Output layout under the report folder: `index.html`, `figures/*.png`, `samples/<run id>.png`,
//! `summary.{csv,parquet}`, and when their data exist `stable_lr`, `theorem_rows`, `gate_fits`,
//! `gate_inputs`, `skip_edits`, `importance` and `skip_spectrum` tables.

// All unsafe code lives in scalelong-kernels, behind safe APIs.
#![forbid(unsafe_code)]

mod analysis;
mod assess;
mod canvas;
mod claims;
mod compare;
mod figures;
mod learned;
mod page;
mod plot;
mod run_group;
mod sections;
mod skips;
mod sweep_data;
mod tables;

/// A synthetic sweep folder whose outcome is known, for the report's tests and the end-to-end
/// suite (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use scalelong_schema::write_atomic;

use page::Page;
use plot::Palette;
use run_group::RunGroup;
use sections::findings::Findings;
use sections::{ReportContext, Section};

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSummary {
    pub html: PathBuf,
    /// In page order.
    pub figures: Vec<PathBuf>,
    /// The sample grids copied beside the page.
    pub samples: Vec<PathBuf>,
    /// CSV and Parquet files, in page order.
    pub tables: Vec<PathBuf>,
    /// Runs in the report (those of `sweep.json` that have started).
    pub run_count: usize,
}

/// Reads the sweep folder `sweep_dir` and writes the report into `out_dir` (created if needed).
/// A missing sweep folder, a corrupt `sweep.json` or run file is an error naming the file; data a
/// sweep did not record are noted on the page instead.
pub fn write_report(sweep_dir: &Path, out_dir: &Path) -> Result<ReportSummary> {
    let sweep = sweep_data::read_sweep(sweep_dir)?;
    let judged = assess::judge(&sweep);
    let groups = RunGroup::per_strategy(&judged);
    let models = analysis::models(&sweep);
    let strategies = analysis::strategies(&sweep);
    let palette = Palette::new(&strategies);
    let ctx = ReportContext {
        sweep: &sweep,
        sweep_dir,
        judged: &judged,
        groups: &groups,
        models: &models,
        strategies: &strategies,
        palette: &palette,
    };
    let body = sections::below_the_claims(&ctx)?;
    let claims = claims::in_letter_order(body.iter().flat_map(|section| section.claims()).collect());
    let findings = Findings::new(&ctx, claims);
    let page_order: Vec<&dyn Section> =
        std::iter::once(&findings as &dyn Section).chain(body.iter().map(|section| section.as_ref())).collect();

    let figures_dir = out_dir.join("figures");
    let samples_dir = out_dir.join("samples");
    for dir in [out_dir, &figures_dir, &samples_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let mut summary = ReportSummary {
        html: out_dir.join("index.html"),
        figures: Vec::new(),
        samples: Vec::new(),
        tables: Vec::new(),
        run_count: sweep.runs.len(),
    };
    let mut page = Page::new(&ctx);
    for section in page_order {
        for figure in section.figures() {
            summary.figures.push(figure.write(&figures_dir)?);
        }
        for table in section.tables() {
            summary.tables.extend(table.write(out_dir)?);
        }
        for sample in section.samples() {
            let path = out_dir.join(&sample.relative_path);
            write_atomic(&path, &sample.png)?;
            summary.samples.push(path);
        }
        section.render(&mut page);
    }
    write_atomic(&summary.html, page.finish().as_bytes())?;
    let figure_files = summary.figures.iter().flat_map(|png| [png.clone(), png.with_extension("svg")]);
    remove_stale(&figures_dir, &figure_files.collect::<Vec<_>>())?;
    remove_stale(&samples_dir, &summary.samples)?;
    Ok(summary)
}

/// Removes the PNG and SVG files of `dir` (`figures/`, `samples/`: the report's own folders) that
/// this report did not write: a figure or run an older report of the folder had (a check the
/// sweep no longer records, a run since removed) would otherwise sit beside the new ones as if
/// current.
fn remove_stale(dir: &Path, written: &[PathBuf]) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("{}: cannot list", dir.display()))?.path();
        let image = matches!(path.extension().and_then(|extension| extension.to_str()), Some("png" | "svg"));
        if image && path.is_file() && !written.contains(&path) {
            std::fs::remove_file(&path).with_context(|| format!("{}: cannot remove a stale figure", path.display()))?;
        }
    }
    Ok(())
}

/// A number with four significant digits and no trailing zeros (`0.5`, `12.35`, `2.5e-5`), in
/// tables, tick labels and sentences alike.
fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if value == 0.0 {
        return "0".to_string();
    }
    let magnitude = value.abs().log10().floor() as i32;
    if (-3..5).contains(&magnitude) {
        let decimals = (3 - magnitude).max(0) as usize;
        trim_fraction_zeros(&format!("{value:.decimals$}"))
    } else {
        let scientific = format!("{value:.3e}");
        let (mantissa, exponent) = scientific.split_once('e').expect("`e` formatting writes an exponent");
        format!("{}e{exponent}", trim_fraction_zeros(mantissa))
    }
}

fn trim_fraction_zeros(number: &str) -> String {
    if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        number.to_string()
    }
}
