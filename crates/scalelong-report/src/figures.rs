//! The report's figures: which numbers go into which panel, with titles and captions. Each figure
//! is a PNG in memory; the caller writes it beside the HTML and embeds it.

use anyhow::Result;

use std::collections::{BTreeMap, BTreeSet};

use plotters::style::RGBColor;

use super::analysis::{
    BandPoint, GateFit, Group, LOSS_SMOOTHING_WINDOW, LscQuantity, OSCILLATION_WINDOW, band_over_seeds, gate_curves,
    groups_of_model, loss_band, lsc_curves, lsc_grid, models, outer_feature_norm_band,
};
use super::format_number;
use super::plot::{
    BandPanel, Curve, PANEL_SIZE, Palette, Rendered, Scale, ScatterPanel, XySeries, draw_band_panel, draw_heatmaps,
    draw_scatter_panel, figure_size, heatmap_figure_size, panel_areas, render, sequential_colour,
};
use super::skips::{EditRow, ImportanceProfile};
use super::sweep_data::SweepData;
use crate::compare::Judged;
use crate::tables::StableLrRow;
use scalelong_analysis::run_rules::RunOutcome;
use scalelong_schema::Quantity;

pub struct Figure {
    /// File name inside the report's `figures/` folder.
    pub file_name: String,
    pub title: String,
    pub caption: String,
    /// The figure as PNG (embedded in the page) and SVG (linked beside it).
    pub image: Rendered,
}

impl Figure {
    /// The SVG's file name beside the PNG's in `figures/`.
    pub fn svg_file_name(&self) -> String {
        std::path::Path::new(&self.file_name).with_extension("svg").to_string_lossy().into_owned()
    }
}

/// Figure 1: smoothed training loss of every strategy, one panel per model; `None` when no run
/// logged a loss.
pub fn loss_figure(sweep: &SweepData, palette: &Palette) -> Result<Option<Figure>> {
    band_figure_per_model(sweep, palette, loss_band, "training loss").map(|image| {
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
pub fn heldout_figure(sweep: &SweepData, palette: &Palette) -> Result<Option<Figure>> {
    let band = |group: &Group| -> Vec<BandPoint> {
        let per_run: Vec<Vec<(u64, f64)>> = group
            .runs
            .iter()
            .map(|run| {
                run.evals.iter().filter(|e| e.heldout_loss.is_finite()).map(|e| (e.step, e.heldout_loss)).collect()
            })
            .collect();
        band_over_seeds(&per_run)
    };
    band_figure_per_model(sweep, palette, band, "held-out loss (EMA weights)").map(|image| {
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

/// The stability frontier: per model, one panel per strategy of the final held-out loss against
/// the learning rate (log scale), each seed a dot (grey for a collapsed run; a diverged run, which
/// has no loss, at the zero predictor's level in black), the mean over trained seeds a line, and
/// the largest learning rate at which every seed trained marked by a vertical line.
pub fn frontier_figures(judged: &[Judged], rows: &[StableLrRow], palette: &Palette) -> Result<Vec<Figure>> {
    let models: BTreeSet<&str> = rows.iter().map(|row| row.model.as_str()).collect();
    let mut figures = Vec::new();
    for (index, model) in models.into_iter().enumerate() {
        let panels: Vec<ScatterPanel> = rows
            .iter()
            .filter(|row| row.model == model)
            .map(|row| {
                let runs: Vec<&Judged> = judged
                    .iter()
                    .filter(|j| j.run.model == model && j.run.strategy_label == row.strategy_label)
                    .collect();
                let points = |status: RunOutcome| -> Vec<(f64, f64)> {
                    runs.iter()
                        .filter(|j| j.assessment.status == status)
                        .map(|j| (j.run.lr, j.assessment.final_heldout.unwrap_or(j.assessment.zero_loss)))
                        .collect()
                };
                let trained = points(RunOutcome::Trained);
                let mut by_lr: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
                for &(lr, loss) in &trained {
                    by_lr.entry(lr.to_bits()).or_default().push(loss);
                }
                let mean_line: Vec<(f64, f64)> = by_lr
                    .into_iter()
                    .map(|(bits, losses)| (f64::from_bits(bits), losses.iter().sum::<f64>() / losses.len() as f64))
                    .collect();
                let colour = palette.colour(&row.strategy_label);
                let all_losses: Vec<f64> =
                    runs.iter().map(|j| j.assessment.final_heldout.unwrap_or(j.assessment.zero_loss)).collect();
                let (low, high) = all_losses.iter().fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(*v), h.max(*v)));
                let mut lines =
                    vec![XySeries { label: "mean of trained seeds".to_string(), colour, points: mean_line }];
                if let Some(lr) = row.largest_stable_lr {
                    lines.push(XySeries {
                        label: format!("largest stable lr {}", format_number(lr)),
                        colour: RGBColor(0, 0, 0),
                        points: vec![(lr, low), (lr, high)],
                    });
                }
                ScatterPanel {
                    title: format!("{} on {model}", row.strategy_label),
                    x_desc: "learning rate".to_string(),
                    y_desc: "final held-out loss".to_string(),
                    x_scale: Scale::Log,
                    y_scale: Scale::Log,
                    dots: vec![
                        XySeries { label: "trained".to_string(), colour, points: trained },
                        XySeries {
                            label: "collapsed".to_string(),
                            colour: RGBColor(160, 160, 160),
                            points: points(RunOutcome::Collapsed),
                        },
                        XySeries {
                            label: "diverged (at the zero predictor)".to_string(),
                            colour: RGBColor(0, 0, 0),
                            points: points(RunOutcome::Diverged),
                        },
                    ],
                    lines,
                }
            })
            .collect();
        let image = render(figure_size(panels.len()), |root| {
            for (area, panel) in panel_areas(root, panels.len()).iter().zip(&panels) {
                draw_scatter_panel(area, panel)?;
            }
            Ok(())
        })?;
        figures.push(Figure {
            file_name: format!("frontier_{index}.png"),
            title: format!("Stability frontier on {model}"),
            caption: "Final held-out loss against learning rate, one panel per strategy: a dot per run (grey: \
                      collapsed, its loss at least 0.9 of the zero predictor's; black: diverged, drawn at the zero \
                      predictor's loss), the line the mean over the seeds that trained, the vertical line the \
                      largest learning rate at which every seed trained."
                .to_string(),
            image,
        });
    }
    Ok(figures)
}

/// Figure 2, the analogue of the paper's Figure 1: the norm of the last decoder block's output
/// against step; `None` when no run recorded it.
pub fn feature_norm_figure(sweep: &SweepData, palette: &Palette) -> Result<Option<Figure>> {
    band_figure_per_model(sweep, palette, outer_feature_norm_band, "||h|| (feature_l2)").map(|image| {
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
    sweep: &SweepData,
    palette: &Palette,
    band_of: impl Fn(&Group) -> Vec<BandPoint>,
    y_desc: &str,
) -> Result<Option<Rendered>> {
    let panels: Vec<BandPanel> = models(sweep)
        .into_iter()
        .map(|model| BandPanel {
            title: model.to_string(),
            x_desc: "step".to_string(),
            curves: groups_of_model(sweep, model)
                .iter()
                .map(|group| Curve {
                    label: group.strategy_label.to_string(),
                    colour: palette.colour(group.strategy_label),
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
pub fn heatmap_figures(sweep: &SweepData) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for (model_index, model) in models(sweep).into_iter().enumerate() {
        let groups = groups_of_model(sweep, model);
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

/// Figure 4: per model and strategy with learned coefficients (LS gates, learned scalars), the
/// coefficient of every LSC over training and the final mean against LSC index with its
/// exponential fit.
pub fn gate_figures(sweep: &SweepData, gate_fits: &[GateFit]) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for (model_index, model) in models(sweep).into_iter().enumerate() {
        for group in groups_of_model(sweep, model) {
            let Some(gates) =
                gate_fits.iter().find(|fit| fit.model == model && fit.strategy_label == group.strategy_label)
            else {
                continue;
            };
            let Some(quantity) = group.runs.first().and_then(|run| run.strategy.learned_quantity()) else { continue };
            let (name, value) =
                if quantity == Quantity::GateMean { ("gates", "mean gate") } else { ("learned scalars", "scalar") };
            let curves = gate_curves(&group);
            let lsc_count = curves.len().max(2);
            let over_training = BandPanel {
                title: format!("{} {name} over training", group.strategy_label),
                x_desc: "step".to_string(),
                curves: curves
                    .iter()
                    .enumerate()
                    .map(|(index, (lsc, points))| Curve {
                        label: format!("LSC {lsc}"),
                        colour: sequential_colour(index as f64 / (lsc_count - 1) as f64),
                        points: points
                            .iter()
                            .map(|&(step, mean)| BandPoint { step, mean, low: mean, high: mean })
                            .collect(),
                    })
                    .collect(),
            };
            let mut lines = Vec::new();
            if let Some(fit) = gates.fit {
                let lscs = 1..=gates.final_means.len();
                lines.push(XySeries {
                    label: format!(
                        "fit a*kappa_hat^(i-1): kappa_hat {}, R^2 {}",
                        format_number(fit.kappa_hat),
                        format_number(fit.r2)
                    ),
                    colour: sequential_colour(0.6),
                    points: lscs.map(|lsc| (lsc as f64, fit.a * fit.kappa_hat.powi(lsc as i32 - 1))).collect(),
                });
            }
            let against_lsc = ScatterPanel {
                title: format!("{} final {value} by LSC", group.strategy_label),
                x_desc: "LSC i (1 = outermost)".to_string(),
                y_desc: value.to_string(),
                x_scale: Scale::Linear,
                y_scale: Scale::Log,
                dots: vec![XySeries {
                    label: format!("{value}, last record"),
                    colour: sequential_colour(0.0),
                    points: gates
                        .final_means
                        .iter()
                        .enumerate()
                        .map(|(index, mean)| ((index + 1) as f64, *mean))
                        .collect(),
                }],
                lines,
            };
            let image = render((PANEL_SIZE.0 * 2, PANEL_SIZE.1), |root| {
                let halves = panel_areas(root, 2);
                draw_band_panel(&halves[0], &over_training, &quantity.name())?;
                draw_scatter_panel(&halves[1], &against_lsc)
            })?;
            let fit_note = if gates.fit.is_some() {
                format!("The line is the least-squares fit of ln({value}) on i - 1.")
            } else {
                "No exponential could be fitted (the recorded LSCs are not 1..N or a mean is not positive).".to_string()
            };
            figures.push(Figure {
                file_name: format!("gates_{model_index}_{}.png", slug(group.strategy_label)),
                title: format!("{} {name}, {model}", group.strategy_label),
                caption: format!(
                    "Left: {quantity} of each LSC against step, mean over the runs. Right: each run's last {quantity} \
                     per LSC, averaged over the runs, on a log axis. {fit_note}"
                ),
                image,
            });
        }
    }
    Ok(figures)
}

/// Per model, the change of the held-out loss per timestep bin under each sampling-time setting
/// (Skip-Tuning, FreeU) against the unedited networks, one panel per strategy.
pub fn edit_bin_figures(rows: &[EditRow]) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let is_edit = |row: &&EditRow| row.kind.is_method();
    let settings: Vec<&str> = rows.iter().filter(is_edit).fold(Vec::new(), |mut seen, row| {
        if !seen.contains(&row.setting.as_str()) {
            seen.push(row.setting.as_str());
        }
        seen
    });
    let models: Vec<&str> = rows.iter().map(|row| row.model.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
    for (model_index, model) in models.iter().enumerate() {
        let mut panels: Vec<BandPanel> = Vec::new();
        for row in rows.iter().filter(is_edit).filter(|row| row.model == *model) {
            let points: Vec<BandPoint> = row
                .bin_changes
                .iter()
                .enumerate()
                .filter_map(|(bin, change)| {
                    let c = change.as_ref()?;
                    Some(BandPoint { step: bin as u64, mean: c.estimate, low: c.low, high: c.high })
                })
                .collect();
            let index = settings.iter().position(|s| *s == row.setting).unwrap_or(0);
            let curve = Curve {
                label: row.setting.clone(),
                colour: sequential_colour(index as f64 / (settings.len().max(2) - 1) as f64 * 0.85),
                points,
            };
            match panels.iter_mut().find(|panel| panel.title == row.strategy_label) {
                Some(panel) => panel.curves.push(curve),
                None => panels.push(BandPanel {
                    title: row.strategy_label.clone(),
                    x_desc: "timestep bin (0: least noise)".to_string(),
                    curves: vec![curve],
                }),
            }
        }
        if panels.iter().all(|panel| panel.curves.iter().all(|curve| curve.points.is_empty())) {
            continue;
        }
        let image = render(figure_size(panels.len()), |root| {
            for (area, panel) in panel_areas(root, panels.len()).iter().zip(&panels) {
                draw_band_panel(area, panel, "held-out loss, edited - unedited")?;
            }
            Ok(())
        })?;
        figures.push(Figure {
            file_name: format!("skip_edits_{model_index}.png"),
            title: format!("Sampling-time skip edits per timestep bin, {model}"),
            caption: "The held-out loss of the edited network minus the unedited one's, per timestep bin, one panel \
                      per training-time strategy: the line is the mean over the trained runs, the band its 95% paired \
                      Student t interval (no band: fewer than 2 runs). Below 0: the edit denoises better at those \
                      noise levels."
                .to_string(),
            image,
        });
    }
    Ok(figures)
}

/// Per model, the importance of each LSC against its coefficient: for each strategy, the held-out
/// loss increase when one LSC alone is scaled by each factor (left), and the coefficient it carried
/// at the end of training (right).
pub fn importance_figures(profiles: &[ImportanceProfile]) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let models: Vec<&str> = profiles.iter().map(|p| p.model.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
    for (model_index, model) in models.iter().enumerate() {
        let of_model: Vec<&ImportanceProfile> = profiles.iter().filter(|p| p.model == *model).collect();
        let strategies: Vec<&str> = of_model.iter().fold(Vec::new(), |mut seen, p| {
            if !seen.contains(&p.strategy_label.as_str()) {
                seen.push(p.strategy_label.as_str());
            }
            seen
        });
        let factors: Vec<f64> = of_model.iter().fold(Vec::new(), |mut seen, p| {
            if !seen.contains(&p.factor) {
                seen.push(p.factor);
            }
            seen
        });
        let mut importance_panels = Vec::new();
        let mut coefficient_panels = Vec::new();
        for strategy in &strategies {
            let curves = of_model
                .iter()
                .filter(|p| p.strategy_label == *strategy)
                .map(|p| {
                    let index = factors.iter().position(|f| *f == p.factor).unwrap_or(0);
                    Curve {
                        label: format!("LSC i alone x {}", format_number(p.factor)),
                        colour: sequential_colour(index as f64 / (factors.len().max(2) - 1) as f64 * 0.7),
                        points: p
                            .increase
                            .iter()
                            .filter_map(|(lsc, interval)| {
                                let i = interval.as_ref()?;
                                Some(BandPoint { step: u64::from(*lsc), mean: i.estimate, low: i.low, high: i.high })
                            })
                            .collect(),
                    }
                })
                .collect();
            importance_panels.push(BandPanel {
                title: format!("{strategy}: importance"),
                x_desc: "LSC i (1 = outermost)".to_string(),
                curves,
            });
            let coefficients = of_model.iter().find(|p| p.strategy_label == *strategy).map(|p| &p.coefficients);
            coefficient_panels.push(ScatterPanel {
                title: format!("{strategy}: coefficient at the end"),
                x_desc: "LSC i (1 = outermost)".to_string(),
                y_desc: "coefficient on the skip".to_string(),
                x_scale: Scale::Linear,
                y_scale: Scale::Log,
                dots: vec![XySeries {
                    label: "mean over runs, last record".to_string(),
                    colour: sequential_colour(0.0),
                    points: coefficients
                        .map(|c| c.iter().map(|(lsc, value)| (f64::from(*lsc), *value)).collect())
                        .unwrap_or_default(),
                }],
                lines: Vec::new(),
            });
        }
        let panels = strategies.len() * 2;
        let image = render(figure_size(panels), |root| {
            let areas = panel_areas(root, panels);
            for (k, (importance, coefficient)) in importance_panels.iter().zip(&coefficient_panels).enumerate() {
                draw_band_panel(&areas[2 * k], importance, "held-out loss increase")?;
                draw_scatter_panel(&areas[2 * k + 1], coefficient)?;
            }
            Ok(())
        })?;
        figures.push(Figure {
            file_name: format!("importance_{model_index}.png"),
            title: format!("The importance of each LSC, {model}"),
            caption: "One row per training-time strategy. Left: the increase of the held-out loss when LSC i alone \
                      is scaled by each factor at sampling time (0: cut), mean over the trained runs with its 95% \
                      Student t interval. Right: the coefficient LSC i carried at the last diagnostics record (fixed \
                      strategies' values, learned scalars, the LS gates' mean, mp-cat's skip weight over its \
                      main-path weight), mean over runs, on a log axis. Does importance fall with i as the \
                      coefficients do?"
                .to_string(),
            image,
        });
    }
    Ok(figures)
}

/// Per model, the share of each skip's energy in its lowest spatial frequencies over training, one
/// panel per strategy, one line per LSC (mean over runs).
pub fn spectral_figures(sweep: &SweepData) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for (model_index, model) in models(sweep).into_iter().enumerate() {
        let panels: Vec<BandPanel> = groups_of_model(sweep, model)
            .iter()
            .map(|group| {
                let curves = lsc_curves(group, Quantity::SkipLowFreqShare);
                let lsc_count = curves.len().max(2);
                BandPanel {
                    title: group.strategy_label.to_string(),
                    x_desc: "step".to_string(),
                    curves: curves
                        .into_iter()
                        .enumerate()
                        .map(|(index, (lsc, points))| Curve {
                            label: format!("LSC {lsc}"),
                            colour: sequential_colour(index as f64 / (lsc_count - 1) as f64),
                            points: points
                                .into_iter()
                                .map(|(step, mean)| BandPoint { step, mean, low: mean, high: mean })
                                .collect(),
                        })
                        .collect(),
                }
            })
            .collect();
        if panels.iter().all(|panel| panel.curves.is_empty()) {
            continue;
        }
        let image = render(figure_size(panels.len()), |root| {
            for (area, panel) in panel_areas(root, panels.len()).iter().zip(&panels) {
                draw_band_panel(area, panel, "skip's low-frequency energy share")?;
            }
            Ok(())
        })?;
        figures.push(Figure {
            file_name: format!("skip_spectrum_{model_index}.png"),
            title: format!("Low-frequency share of each skip over training, {model}"),
            caption: "The share of each skip's energy (over the probe batch, before scaling) in the spatial \
                      frequencies within 1 of zero along each axis of its feature map or token grid, against step; \
                      one panel per strategy, one line per LSC, mean over the runs. The table beside compares it \
                      with the main path's share at the same fusion."
                .to_string(),
            image,
        });
    }
    Ok(figures)
}

/// `text` with every character other than ASCII letters, digits and `-` replaced by `_`, for file
/// names.
fn slug(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}
