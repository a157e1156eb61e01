//! The figures of training against step, each under its own heading: the held-out loss, the
//! training loss, the hidden-feature norm (the paper's Figure 1) and the per-LSC feature and
//! gradient norms, one panel per model (heatmaps: one figure per model).

use anyhow::Result;

use super::{ReportContext, Section};
use crate::analysis::{
    BandPoint, LOSS_SMOOTHING_WINDOW, LscQuantity, OSCILLATION_WINDOW, band_over_seeds, loss_band, lsc_grid,
    outer_feature_norm_band,
};
use crate::figures::Figure;
use crate::page::Page;
use crate::plot::{
    BandPanel, Curve, Rendered, draw_band_panel, draw_heatmaps, figure_size, heatmap_figure_size, panel_areas, render,
};
use crate::run_group::RunGroup;

/// A heading and its figures, or a note that their data were not recorded.
pub struct FigureSection {
    heading: &'static str,
    figures: Vec<Figure>,
    /// What the note says was not recorded, when there is no figure.
    missing: &'static str,
}

impl Section for FigureSection {
    fn figures(&self) -> Vec<&Figure> {
        self.figures.iter().collect()
    }

    fn render(&self, page: &mut Page) {
        page.push(&format!("<h2>{}</h2>\n", self.heading));
        page.figures_or_note(&self.figures, self.missing);
    }
}

pub fn heldout_loss(ctx: &ReportContext) -> Result<FigureSection> {
    Ok(FigureSection {
        heading: "Held-out loss",
        figures: heldout_figure(ctx)?.into_iter().collect(),
        missing: "No run was evaluated, so the held-out loss was",
    })
}

pub fn training_loss(ctx: &ReportContext) -> Result<FigureSection> {
    Ok(FigureSection {
        heading: "Training loss",
        figures: loss_figure(ctx)?.into_iter().collect(),
        missing: "No run logged a training loss",
    })
}

pub fn feature_norm(ctx: &ReportContext) -> Result<FigureSection> {
    Ok(FigureSection {
        heading: "Hidden-feature norm (the paper's Figure 1)",
        figures: feature_norm_figure(ctx)?.into_iter().collect(),
        missing: "The feature norm of the last decoder block was",
    })
}

pub fn per_lsc_norms(ctx: &ReportContext) -> Result<FigureSection> {
    Ok(FigureSection {
        heading: "Per-LSC feature and gradient norms",
        figures: heatmap_figures(ctx)?,
        missing: "Per-LSC feature and gradient norms were",
    })
}

/// Figure 1: smoothed training loss of every strategy, one panel per model; `None` when no run
/// logged a loss.
fn loss_figure(ctx: &ReportContext) -> Result<Option<Figure>> {
    band_figure_per_model(ctx, loss_band, "training loss").map(|image| {
        image.map(|image| Figure {
            file_name: "loss.png".to_string(),
            title: "Training loss".to_string(),
            caption: format!(
                "Training loss against step, one panel per model. Each loss series is smoothed by a trailing \
                 moving average over {LOSS_SMOOTHING_WINDOW} logged points; the line is the mean over the runs \
                 of a strategy (its seeds), the band their min..max."
            ),
            image,
        })
    })
}

/// The held-out loss of every strategy against step, one panel per model (the EMA weights at every
/// evaluation); `None` when no run was evaluated.
fn heldout_figure(ctx: &ReportContext) -> Result<Option<Figure>> {
    let band = |group: &RunGroup| -> Vec<BandPoint> {
        let per_run: Vec<Vec<(u64, f64)>> = group
            .run_data()
            .map(|run| {
                run.evals.iter().filter(|e| e.heldout_loss.is_finite()).map(|e| (e.step, e.heldout_loss)).collect()
            })
            .collect();
        band_over_seeds(&per_run)
    };
    band_figure_per_model(ctx, band, "held-out loss (EMA weights)").map(|image| {
        image.map(|image| Figure {
            file_name: "heldout_loss.png".to_string(),
            title: "Held-out loss".to_string(),
            caption: "The noise-prediction loss of the EMA weights on the test split (fixed images, timesteps and \
                      noise) at every evaluation, one panel per model: the line is the mean over a strategy's \
                      runs (its seeds), the band their min..max. The speed-ups compare these curves."
                .to_string(),
            image,
        })
    })
}

/// Figure 2, the analogue of the paper's Figure 1: the norm of the last decoder block's output
/// against step; `None` when no run recorded it.
fn feature_norm_figure(ctx: &ReportContext) -> Result<Option<Figure>> {
    band_figure_per_model(ctx, outer_feature_norm_band, "||h|| (feature_l2)").map(|image| {
        image.map(|image| Figure {
            file_name: "feature_norm.png".to_string(),
            title: "Hidden-feature norm and its oscillation (the paper's Figure 1)".to_string(),
            caption: format!(
                "feature_l2 of the last decoder block (the one consuming LSC 1, over the whole probe batch) \
                 against step, one panel per model. Line: mean over the runs of a strategy; band: min..max of \
                 that mean over a centred window of {OSCILLATION_WINDOW} diagnostics records."
            ),
            image,
        })
    })
}

/// One panel per model with one curve per strategy; `None` when every curve is empty.
fn band_figure_per_model(
    ctx: &ReportContext,
    band_of: impl Fn(&RunGroup) -> Vec<BandPoint>,
    y_desc: &str,
) -> Result<Option<Rendered>> {
    let panels: Vec<BandPanel> = ctx
        .models
        .iter()
        .map(|model| BandPanel {
            title: model.to_string(),
            x_desc: "step".to_string(),
            curves: ctx
                .groups_of(model)
                .map(|group| Curve {
                    label: group.strategy_label.to_string(),
                    colour: ctx.palette.colour(group.strategy_label),
                    points: band_of(group),
                })
                .filter(|curve| !curve.points.is_empty())
                .collect(),
        })
        .collect();
    if panels.iter().all(|panel| panel.curves.is_empty()) {
        return Ok(None);
    }
    render(figure_size(panels.len()), |root| {
        for (area, panel) in panel_areas(root, panels.len()).iter().zip(&panels) {
            draw_band_panel(area, panel, y_desc)?;
        }
        Ok(())
    })
    .map(Some)
}

/// Figure 3: per model, a feature-norm and a gradient-norm heatmap (LSC index x step), one panel
/// per strategy with seeds averaged; figures without any value are left out.
fn heatmap_figures(ctx: &ReportContext) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for (model_index, model) in ctx.models.iter().enumerate() {
        let groups: Vec<&RunGroup> = ctx.groups_of(model).collect();
        for (quantity, name, file_stem, description) in [
            (
                LscQuantity::FeatureNorm,
                "feature norm",
                "feature_heatmap",
                "feature_l2 of the decoder block consuming each LSC (whole probe batch)",
            ),
            (
                LscQuantity::GradientNorm,
                "gradient norm",
                "gradient_heatmap",
                "grad_norm of parameter group dec.K, shown on the LSC it consumes (N - K)",
            ),
        ] {
            let grids: Vec<_> = groups.iter().map(|group| lsc_grid(group, quantity)).collect();
            if grids.iter().all(|grid| grid.is_empty()) {
                continue;
            }
            let panels: Vec<(String, _)> =
                groups.iter().zip(&grids).map(|(group, grid)| (group.strategy_label.to_string(), grid)).collect();
            let image = render(heatmap_figure_size(panels.len()), |root| draw_heatmaps(root, &panels, name))?;
            figures.push(Figure {
                file_name: format!("{file_stem}_{model_index}.png"),
                title: format!("Per-LSC {name}, {model}"),
                caption: format!(
                    "{description}, against step; one panel per strategy, mean over its runs. The colour scale is \
                     logarithmic and shared by the panels; grey cells were not recorded."
                ),
                image,
            });
        }
    }
    Ok(figures)
}
