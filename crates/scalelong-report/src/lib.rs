//! The report of a sweep folder (`scalelong report runs/<sweep>`): one self-contained HTML page comparing the sweep's strategies
//! (loss curves, feature-norm oscillation, per-LSC norms, LS gates, the theorem checks, samples, a
//! summary table and a paragraph on which of the paper's claims held), with every figure also saved
//! as a PNG and every table as CSV and Parquet beside it.
//!
//! Output layout under the report folder: `index.html`, `figures/*.png`, `samples/<run id>.png`,
//! `summary.{csv,parquet}`, and when their data exist `stable_lr`, `theorem_rows`, `gate_fits`,
//! `gate_inputs`, `skip_edits`, `importance` and `skip_spectrum` tables.

// All unsafe code lives in scalelong-kernels, behind safe APIs.
#![forbid(unsafe_code)]

mod analysis;
mod assess;
mod bounds;
mod canvas;
mod claims;
mod compare;
mod figures;
mod html;
mod learned;
mod plot;
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
use scalelong_schema::SkipScaling;
use scalelong_schema::write_atomic;

use analysis::GateFit;
use claims::Claim;
use compare::{Cell, Comparison};
use figures::Figure;
use learned::GateInputProfile;
use plot::Palette;
use skips::SkipFindings;
use sweep_data::SweepData;
use tables::{StableLrRow, SummaryRow};

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSummary {
    pub html: PathBuf,
    pub figures: Vec<PathBuf>,
    /// The sample grids copied beside the page.
    pub samples: Vec<PathBuf>,
    /// CSV and Parquet files.
    pub tables: Vec<PathBuf>,
    /// Runs in the report (those of `sweep.json` that have started).
    pub run_count: usize,
}

/// Everything the page shows, computed before it is rendered.
struct ReportContent<'a> {
    sweep: &'a SweepData,
    sweep_dir: &'a Path,
    models: &'a [&'a str],
    strategies: &'a [(SkipScaling, String)],
    palette: &'a Palette,
    claims: &'a [Claim],
    summary: &'a [SummaryRow],
    cells: &'a [Cell<'a>],
    comparisons: &'a [Comparison],
    stable_lr: Option<&'a [StableLrRow]>,
    table_files: &'a TableFiles,
    heldout_figure: Option<Figure>,
    frontier_figures: &'a [Figure],
    loss_figure: Option<Figure>,
    feature_norm_figure: Option<Figure>,
    heatmap_figures: &'a [Figure],
    has_learned_runs: bool,
    gate_fits: &'a [GateFit],
    gate_figures: &'a [Figure],
    /// What the LS gates saw, per model and LS strategy whose runs recorded it.
    gate_inputs: &'a [GateInputProfile],
    /// Claims (b)-(d), the bounds as dose-responses, and each check's figure when it has one.
    bound_checks: &'a [bounds::BoundCheck],
    bound_figures: &'a [Option<Figure>],
    samples: &'a [SampleImage],
    skips: &'a SkipFindings,
    /// Sampling-time edits per timestep bin, LSC importance, skip spectra.
    skip_figures: &'a [Figure],
}

/// Table files relative to the report folder, per table; empty when the table was not written.
#[derive(Default)]
struct TableFiles {
    summary: Vec<String>,
    cells: Vec<String>,
    comparisons: Vec<String>,
    stable_lr: Vec<String>,
    theorem_rows: Vec<String>,
    gate_fits: Vec<String>,
    gate_inputs: Vec<String>,
    skip_edits: Vec<String>,
    importance: Vec<String>,
    spectral: Vec<String>,
}

/// A run's newest sample grid, copied beside the page.
struct SampleImage {
    run_id: String,
    model: String,
    strategy_label: String,
    seed: u64,
    step: u64,
    /// Path of the copy relative to the report folder.
    relative_path: String,
    png: Vec<u8>,
}

/// Reads the sweep folder `sweep_dir` and writes the report into `out_dir` (created if needed).
/// A missing sweep folder, a corrupt `sweep.json` or run file is an error naming the file; data a
/// sweep did not record are noted on the page instead.
pub fn write_report(sweep_dir: &Path, out_dir: &Path) -> Result<ReportSummary> {
    let sweep = sweep_data::read_sweep(sweep_dir)?;
    let figures_dir = out_dir.join("figures");
    let samples_dir = out_dir.join("samples");
    for dir in [out_dir, &figures_dir, &samples_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }

    let strategies = analysis::strategies(&sweep);
    let palette = Palette::new(&strategies);
    let models = analysis::models(&sweep);
    let judged = compare::judge(&sweep);
    let summary = tables::summary_rows(&judged);
    let cells = compare::cells(&judged);
    let comparisons = compare::comparisons(&cells, &sweep.analysis);
    let stable_lr = tables::stable_lr_rows(&sweep, &judged);
    let bound_checks = bounds::bound_checks(&sweep, sweep_dir, &models)?;
    let gate_fits: Vec<GateFit> = models
        .iter()
        .flat_map(|model| analysis::groups_of_model(&sweep, model))
        .filter_map(|group| analysis::gate_fit(&group))
        .collect();
    let gate_inputs = learned::gate_input_profiles(&sweep);
    let has_learned_runs = sweep.runs.iter().any(|run| run.strategy.learned_quantity().is_some());
    let skips = SkipFindings::new(&judged);
    let claims = claims::assess_claims(&comparisons, &bound_checks, &gate_fits, stable_lr.as_deref(), &skips);

    let heldout_figure = figures::heldout_figure(&sweep, &palette)?;
    let frontier_figures = match &stable_lr {
        Some(rows) => figures::frontier_figures(&judged, rows, &palette)?,
        None => Vec::new(),
    };
    let loss_figure = figures::loss_figure(&sweep, &palette)?;
    let feature_norm_figure = figures::feature_norm_figure(&sweep, &palette)?;
    let heatmap_figures = figures::heatmap_figures(&sweep)?;
    let gate_figures = figures::gate_figures(&sweep, &gate_fits)?;
    let skip_figures: Vec<Figure> = [
        figures::edit_bin_figures(&skips.edits)?,
        figures::importance_figures(&skips.importance)?,
        figures::spectral_figures(&sweep)?,
    ]
    .into_iter()
    .flatten()
    .collect();
    let bound_figures: Vec<Option<Figure>> = bound_checks
        .iter()
        .enumerate()
        .map(|(index, bound)| bounds::figure(index, bound, &palette))
        .collect::<Result<_>>()?;
    let all_figures = heldout_figure
        .iter()
        .chain(&frontier_figures)
        .chain(&loss_figure)
        .chain(&feature_norm_figure)
        .chain(&heatmap_figures)
        .chain(&gate_figures)
        .chain(&skip_figures)
        .chain(bound_figures.iter().flatten());
    let mut figure_paths = Vec::new();
    for figure in all_figures {
        let path = figures_dir.join(&figure.file_name);
        write_atomic(&path, &figure.image.png)?;
        write_atomic(&figures_dir.join(figure.svg_file_name()), figure.image.svg.as_bytes())?;
        figure_paths.push(path);
    }

    let samples = copy_samples(&sweep, &samples_dir)?;

    let mut table_paths = Vec::new();
    let mut write_table = |mut frame: polars::prelude::DataFrame, stem: &str| -> Result<Vec<String>> {
        let paths = tables::write_table(&mut frame, out_dir, stem)?;
        let names = paths.iter().map(|path| format!("{stem}.{}", extension(path))).collect();
        table_paths.extend(paths);
        Ok(names)
    };
    let theorem_rows_recorded = bound_checks.iter().any(|bound| !bound.check.rows.is_empty());
    let table_files = TableFiles {
        summary: write_table(tables::summary_frame(&summary)?, "summary")?,
        cells: write_table(tables::cells_frame(&cells)?, "cells")?,
        comparisons: if comparisons.is_empty() {
            Vec::new()
        } else {
            write_table(tables::comparisons_frame(&comparisons)?, "comparisons")?
        },
        stable_lr: match &stable_lr {
            Some(rows) => write_table(tables::stable_lr_frame(rows)?, "stable_lr")?,
            None => Vec::new(),
        },
        theorem_rows: if theorem_rows_recorded {
            write_table(bounds::rows_frame(&bound_checks)?, "theorem_rows")?
        } else {
            Vec::new()
        },
        gate_fits: if gate_fits.is_empty() {
            Vec::new()
        } else {
            write_table(tables::gate_fit_frame(&gate_fits)?, "gate_fits")?
        },
        gate_inputs: if gate_inputs.is_empty() {
            Vec::new()
        } else {
            write_table(learned::gate_inputs_frame(&gate_inputs)?, "gate_inputs")?
        },
        skip_edits: if skips.edits.is_empty() {
            Vec::new()
        } else {
            write_table(tables::skip_edits_frame(&skips.edits)?, "skip_edits")?
        },
        importance: if skips.importance.is_empty() {
            Vec::new()
        } else {
            write_table(tables::importance_frame(&skips.importance)?, "importance")?
        },
        spectral: if skips.spectral.is_empty() {
            Vec::new()
        } else {
            write_table(tables::spectral_frame(&skips.spectral)?, "skip_spectrum")?
        },
    };

    let page = html::render(&ReportContent {
        sweep: &sweep,
        sweep_dir,
        models: &models,
        strategies: &strategies,
        palette: &palette,
        claims: &claims,
        summary: &summary,
        cells: &cells,
        comparisons: &comparisons,
        stable_lr: stable_lr.as_deref(),
        table_files: &table_files,
        heldout_figure,
        frontier_figures: &frontier_figures,
        loss_figure,
        feature_norm_figure,
        heatmap_figures: &heatmap_figures,
        has_learned_runs,
        gate_fits: &gate_fits,
        gate_figures: &gate_figures,
        gate_inputs: &gate_inputs,
        bound_checks: &bound_checks,
        bound_figures: &bound_figures,
        samples: &samples,
        skips: &skips,
        skip_figures: &skip_figures,
    });
    let html_path = out_dir.join("index.html");
    write_atomic(&html_path, page.as_bytes())?;
    Ok(ReportSummary {
        html: html_path,
        figures: figure_paths,
        samples: samples.iter().map(|sample| out_dir.join(&sample.relative_path)).collect(),
        tables: table_paths,
        run_count: sweep.runs.len(),
    })
}

/// Copies each run's newest sample grid to `samples/<run id>.png`.
fn copy_samples(sweep: &SweepData, samples_dir: &Path) -> Result<Vec<SampleImage>> {
    let mut samples = Vec::new();
    for run in &sweep.runs {
        let Some((step, source)) = &run.newest_sample else {
            continue;
        };
        let png = std::fs::read(source).with_context(|| format!("{}: cannot read", source.display()))?;
        let file_name = format!("{}.png", run.id);
        let copy = samples_dir.join(&file_name);
        write_atomic(&copy, &png)?;
        samples.push(SampleImage {
            run_id: run.id.clone(),
            model: run.model.clone(),
            strategy_label: run.strategy_label.clone(),
            seed: run.seed,
            step: *step,
            relative_path: format!("samples/{file_name}"),
            png,
        });
    }
    Ok(samples)
}

fn extension(path: &Path) -> String {
    path.extension().map(|extension| extension.to_string_lossy().into_owned()).unwrap_or_default()
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
