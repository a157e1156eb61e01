//! "Long skips at sampling time: edits, importance, spectra" and claims (g)-(i), from the skip
//! findings of `skips.rs` (docs/method.md §3.5): sampling-time edits of the trained networks, the
//! importance of each LSC, and the share of each skip's energy in its lowest spatial frequencies.
//! Written as the `skip_edits`, `importance` and `skip_spectrum` tables, with their figures.

use std::collections::BTreeSet;

use anyhow::Result;
use polars::prelude::*;
use scalelong_analysis::inference::{Interval, LEVEL, mean_correlation_interval, mean_interval};
use scalelong_analysis::verdict::{ClaimedEffect, verdict};
use scalelong_schema::{EditKind, Quantity, SkipScaling};

use super::{ReportContext, Section};
use crate::analysis::{BandPoint, lsc_curves};
use crate::claims::{Claim, Finding, interval_text, not_measured, size_text};
use crate::figures::Figure;
use crate::format_number;
use crate::page::{Page, TableCell};
use crate::plot::{
    BandPanel, Curve, Scale, ScatterPanel, XySeries, draw_band_panel, draw_scatter_panel, figure_size, panel_areas,
    render, sequential_colour,
};
use crate::skips::{EditRow, ImportanceProfile, SkipFindings, SpectralRow};
use crate::tables::{Table, interval_parts};

/// The FD ratio (edited over unedited) of interest for a sampling-time edit: 10% lower. Skip-Tuning
/// and FreeU report larger gains on large models; a tenth is the smallest worth a user's attention.
pub const CLAIMED_FD_RATIO: f64 = 0.9;
/// The smallest rank correlation of interest (a moderate one): an interval entirely on the near side
/// of it excludes the effect.
pub const SMALLEST_EFFECT: f64 = 0.3;
/// The difference of low-frequency shares (skip minus main path) of interest: 5 percentage points.
pub const CLAIMED_SHARE_DIFFERENCE: f64 = -0.05;

pub struct SamplingTime {
    findings: SkipFindings,
    edits_table: Option<Table>,
    importance_table: Option<Table>,
    spectral_table: Option<Table>,
    /// Edits per timestep bin, LSC importance, skip spectra.
    figures: Vec<Figure>,
}

impl SamplingTime {
    pub fn build(ctx: &ReportContext) -> Result<Self> {
        let findings = SkipFindings::new(ctx.groups);
        let edits_table = Table::of_rows("skip_edits", &findings.edits, skip_edits_frame)?;
        let importance_table = Table::of_rows("importance", &findings.importance, importance_frame)?;
        let spectral_table = Table::of_rows("skip_spectrum", &findings.spectral, spectral_frame)?;
        let figures =
            [edit_bin_figures(&findings.edits)?, importance_figures(&findings.importance)?, spectral_figures(ctx)?]
                .into_iter()
                .flatten()
                .collect();
        Ok(Self { findings, edits_table, importance_table, spectral_table, figures })
    }
}

impl Section for SamplingTime {
    fn claims(&self) -> Vec<Claim> {
        let skips = &self.findings;
        let mut claims = importance_claims(&skips.importance);
        claims.extend(skips.edits.iter().filter(|row| row.strategy == SkipScaling::Original).filter_map(edit_claim));
        claims.extend(spectral_claims(&skips.spectral));
        claims
    }

    fn figures(&self) -> Vec<&Figure> {
        self.figures.iter().collect()
    }

    fn tables(&self) -> Vec<&Table> {
        [&self.edits_table, &self.importance_table, &self.spectral_table].into_iter().flatten().collect()
    }

    fn render(&self, page: &mut Page) {
        let skips = &self.findings;
        page.push("<h2>Long skips at sampling time: edits, importance, spectra</h2>\n");
        if skips.edits.is_empty() && skips.spectral.is_empty() {
            page.note(
                "No trained run has skip_eval.jsonl or low-frequency shares (set eval.skip_edits, or run `scalelong \
                 skip-eval`), so sampling-time edits were",
            );
            return;
        }
        if let Some(table) = &self.edits_table {
            page.push(
                "<p>Each trained run's final EMA weights, unedited and under each setting, on the same held-out images \
                 and noise and with the same FD sampling noise: every change is paired by run, with a 95% paired \
                 Student t interval over the runs (the FD ratio on the log scale).</p>\n",
            );
            let rows: Vec<Vec<TableCell>> = skips
                .edits
                .iter()
                .filter(|row| row.kind != EditKind::Importance)
                .map(|row| {
                    vec![
                        TableCell::Text(row.model.clone()),
                        TableCell::Html(page.strategy(&row.strategy_label)),
                        TableCell::Text(row.setting.clone()),
                        TableCell::Text(row.runs.to_string()),
                        TableCell::interval(row.heldout.as_ref()),
                        TableCell::interval(row.heldout_change.as_ref()),
                        TableCell::interval(row.fd.as_ref()),
                        TableCell::interval(row.fd_ratio.as_ref()),
                    ]
                })
                .collect();
            page.html_table(
                &["model", "strategy", "setting", "runs", "held-out loss", "change", "FD", "FD over unedited"],
                &rows,
            );
            page.table_links(table);
        }
        if let Some(table) = &self.importance_table {
            page.push(
                "<p>The importance of LSC i: the held-out loss increase when it alone is scaled by the factor (mean over \
                 runs, LSC 1 first), Spearman's correlation of that increase with i per run (mean with its 95% \
                 interval over runs; negative: importance falls inward), and the coefficient each LSC carried at the \
                 end of training.</p>\n",
            );
            let join = |values: Vec<String>| values.join(", ");
            let rows: Vec<Vec<TableCell>> = skips
                .importance
                .iter()
                .map(|p| {
                    vec![
                        TableCell::Text(p.model.clone()),
                        TableCell::Html(page.strategy(&p.strategy_label)),
                        TableCell::Number(Some(p.factor)),
                        TableCell::Text(join(
                            p.increase
                                .iter()
                                .map(|(_, i)| i.map_or("-".to_string(), |i| format_number(i.estimate)))
                                .collect(),
                        )),
                        TableCell::interval(p.spearman.as_ref()),
                        TableCell::Text(join(p.coefficients.iter().map(|(_, c)| format_number(*c)).collect())),
                    ]
                })
                .collect();
            page.html_table(
                &["model", "strategy", "factor", "loss increase, LSC 1..N", "Spearman with i", "coefficient, LSC 1..N"],
                &rows,
            );
            page.table_links(table);
        }
        if let Some(table) = &self.spectral_table {
            page.push(
                "<p>The share of energy in the spatial frequencies within 1 of zero (per axis of the feature map or token \
                 grid) at the last diagnostics record, of each skip and of the main path it is fused with (mean over \
                 runs, LSC 1 first), and per run their difference averaged over LSCs (mean with its 95% interval).</p>\n",
            );
            let rows: Vec<Vec<TableCell>> = skips
                .spectral
                .iter()
                .map(|row| {
                    let join = |f: &dyn Fn(&(u32, f64, f64)) -> f64| {
                        row.per_lsc.iter().map(|lsc| format_number(f(lsc))).collect::<Vec<_>>().join(", ")
                    };
                    vec![
                        TableCell::Text(row.model.clone()),
                        TableCell::Html(page.strategy(&row.strategy_label)),
                        TableCell::Text(join(&|lsc| lsc.1)),
                        TableCell::Text(join(&|lsc| lsc.2)),
                        TableCell::interval(row.difference.as_ref()),
                    ]
                })
                .collect();
            page.html_table(
                &["model", "strategy", "skip share, LSC 1..N", "main-path share", "skip minus main"],
                &rows,
            );
            page.table_links(table);
        }
        for figure in &self.figures {
            page.figure(figure);
        }
    }
}

/// `models` without repeats, in first-seen order.
fn distinct<'a>(models: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    models.fold(Vec::new(), |mut seen, model| {
        if !seen.contains(&model) {
            seen.push(model);
        }
        seen
    })
}

/// (g) Per model: cutting an LSC at sampling time costs less the further in it lies (pooled over
/// the strategies, each trained run one Spearman correlation of the loss increase with i).
fn importance_claims(profiles: &[ImportanceProfile]) -> Vec<Claim> {
    let mut claims = Vec::new();
    for model in distinct(profiles.iter().map(|p| p.model.as_str())) {
        let cut: Vec<&ImportanceProfile> = profiles.iter().filter(|p| p.model == model && p.factor == 0.0).collect();
        if cut.is_empty() {
            continue;
        }
        let name = format!("(g) An LSC matters less the further in it lies, on {model}");
        let claimed = format!(
            "the held-out loss increase when LSC i alone is cut (x 0) at sampling time falls with i: per run, \
             Spearman of the increase against i < 0 (of interest: at most -{})",
            format_number(SMALLEST_EFFECT)
        );
        let per_run: Vec<f64> = cut.iter().flat_map(|p| p.spearman_per_run.iter().copied()).collect();
        let strategies: Vec<&str> = cut.iter().map(|p| p.strategy_label.as_str()).collect();
        let rests_on = format!("{} trained runs of {}", per_run.len(), strategies.join(", "));
        let Some(interval) = mean_correlation_interval(&per_run, LEVEL) else {
            claims.push(Claim { claimed, rests_on, ..not_measured(&name, "an interval needs 2 runs with importance") });
            continue;
        };
        let effect = ClaimedEffect { null: 0.0, claimed: -SMALLEST_EFFECT };
        let per_strategy: Vec<String> = cut
            .iter()
            .filter_map(|p| Some(format!("{} {}", p.strategy_label, format_number(p.spearman?.estimate))))
            .collect();
        claims.push(Claim {
            name,
            claimed,
            finding: Finding::Verdict(verdict(&interval, &effect)),
            effect: format!("Spearman {}", interval_text(&interval, "")),
            detectable: String::new(),
            size: size_text(&interval, &effect),
            p_value: String::new(),
            rests_on,
            note: if per_strategy.is_empty() {
                String::new()
            } else {
                format!(
                    "mean per strategy: {}; for CS the falling coefficients make it expected",
                    per_strategy.join(", ")
                )
            },
        });
    }
    claims
}

/// (h) A sampling-time edit, applied as its papers do to networks trained with coefficient 1,
/// lowers the FD.
fn edit_claim(row: &EditRow) -> Option<Claim> {
    if !row.kind.is_method() {
        return None;
    }
    let what = if row.kind == EditKind::FreeU { "FreeU" } else { "Skip-Tuning" };
    let name = format!("(h) {what} ({}) lowers the FD of strategy-1 networks on {}", row.setting, row.model);
    let claimed = format!(
        "FD of the edited network over the unedited one's, paired by run, < 1 (of interest: {}, a tenth lower)",
        format_number(CLAIMED_FD_RATIO)
    );
    let rests_on = format!("{} trained strategy-1 runs", row.runs);
    let Some(interval) = &row.fd_ratio else {
        return Some(Claim { claimed, rests_on, ..not_measured(&name, "an interval needs 2 runs with an FD of both") });
    };
    let effect = ClaimedEffect { null: 1.0, claimed: CLAIMED_FD_RATIO };
    let loss = row
        .heldout_change
        .as_ref()
        .map_or(String::new(), |change| format!("held-out loss change {}", interval_text(change, "")));
    Some(Claim {
        name,
        claimed,
        finding: Finding::Verdict(verdict(interval, &effect)),
        effect: format!("FD ratio {}", interval_text(interval, "x")),
        detectable: String::new(),
        size: size_text(interval, &effect),
        p_value: String::new(),
        rests_on,
        note: loss,
    })
}

/// (i) FreeU's premise: the skips carry less of their energy in the lowest spatial frequencies
/// than the main path they are fused with (pooled over strategies; per run, the difference of
/// shares averaged over LSCs at the last record).
fn spectral_claims(rows: &[SpectralRow]) -> Vec<Claim> {
    let mut claims = Vec::new();
    for model in distinct(rows.iter().map(|r| r.model.as_str())) {
        let of_model: Vec<&SpectralRow> = rows.iter().filter(|r| r.model == model).collect();
        let per_run: Vec<f64> = of_model.iter().flat_map(|r| r.difference_per_run.iter().copied()).collect();
        let name = format!("(i) The skips carry less low-frequency energy than the main path, on {model}");
        let claimed = format!(
            "the skip's share of energy in the frequencies within 1 of zero minus the main path's, at each fusion, \
             < 0 (of interest: {} or less)",
            format_number(CLAIMED_SHARE_DIFFERENCE)
        );
        let rests_on = format!("{} trained runs", per_run.len());
        let Some(interval) = mean_interval(&per_run, LEVEL) else {
            claims.push(Claim { claimed, rests_on, ..not_measured(&name, "an interval needs 2 runs with the shares") });
            continue;
        };
        let effect = ClaimedEffect { null: 0.0, claimed: CLAIMED_SHARE_DIFFERENCE };
        claims.push(Claim {
            name,
            claimed,
            finding: Finding::Verdict(verdict(&interval, &effect)),
            effect: format!("share difference {}", interval_text(&interval, "")),
            detectable: String::new(),
            size: size_text(&interval, &effect),
            p_value: String::new(),
            rests_on,
            note: String::new(),
        });
    }
    claims
}

/// One row per sampling-time setting of each model and strategy (docs/method.md §3.5).
fn skip_edits_frame(rows: &[EditRow]) -> PolarsResult<DataFrame> {
    let column = |f: &dyn Fn(&EditRow) -> Option<&Interval>| -> [Vec<Option<f64>>; 3] {
        let parts: Vec<_> = rows.iter().map(|row| interval_parts(f(row))).collect();
        [parts.iter().map(|p| p.0).collect(), parts.iter().map(|p| p.1).collect(), parts.iter().map(|p| p.2).collect()]
    };
    let [heldout, heldout_low, heldout_high] = column(&|row| row.heldout.as_ref());
    let [change, change_low, change_high] = column(&|row| row.heldout_change.as_ref());
    let [fd, fd_low, fd_high] = column(&|row| row.fd.as_ref());
    let [ratio, ratio_low, ratio_high] = column(&|row| row.fd_ratio.as_ref());
    let bins = |row: &EditRow| {
        row.bin_changes
            .iter()
            .map(|change| change.map_or("".to_string(), |c| format!("{}", c.estimate)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    df! {
        "model" => rows.iter().map(|row| row.model.as_str()).collect::<Vec<_>>(),
        "strategy" => rows.iter().map(|row| row.strategy_label.as_str()).collect::<Vec<_>>(),
        "kind" => rows.iter().map(|row| row.kind.name()).collect::<Vec<_>>(),
        "setting" => rows.iter().map(|row| row.setting.as_str()).collect::<Vec<_>>(),
        "lsc" => rows.iter().map(|row| row.lsc).collect::<Vec<_>>(),
        "factor" => rows.iter().map(|row| row.factor).collect::<Vec<_>>(),
        "runs" => rows.iter().map(|row| row.runs as u64).collect::<Vec<_>>(),
        "heldout_loss_mean" => heldout,
        "heldout_loss_low" => heldout_low,
        "heldout_loss_high" => heldout_high,
        "heldout_change" => change,
        "heldout_change_low" => change_low,
        "heldout_change_high" => change_high,
        "heldout_change_by_t_bin" => rows.iter().map(bins).collect::<Vec<_>>(),
        "fd_mean" => fd,
        "fd_low" => fd_low,
        "fd_high" => fd_high,
        "fd_ratio" => ratio,
        "fd_ratio_low" => ratio_low,
        "fd_ratio_high" => ratio_high,
    }
}

/// One row per model, strategy, factor and LSC: the held-out loss increase with its interval and
/// the coefficient the LSC carried at the end.
fn importance_frame(profiles: &[ImportanceProfile]) -> PolarsResult<DataFrame> {
    let rows: Vec<(&ImportanceProfile, u32, Option<&Interval>)> = profiles
        .iter()
        .flat_map(|p| p.increase.iter().map(move |(lsc, interval)| (p, *lsc, interval.as_ref())))
        .collect();
    let increase: Vec<_> = rows.iter().map(|(_, _, interval)| interval_parts(*interval)).collect();
    let coefficient = |p: &ImportanceProfile, lsc: u32| p.coefficients.iter().find(|(l, _)| *l == lsc).map(|(_, c)| *c);
    df! {
        "model" => rows.iter().map(|(p, _, _)| p.model.as_str()).collect::<Vec<_>>(),
        "strategy" => rows.iter().map(|(p, _, _)| p.strategy_label.as_str()).collect::<Vec<_>>(),
        "factor" => rows.iter().map(|(p, _, _)| p.factor).collect::<Vec<_>>(),
        "lsc" => rows.iter().map(|(_, lsc, _)| *lsc).collect::<Vec<_>>(),
        "heldout_increase" => increase.iter().map(|p| p.0).collect::<Vec<_>>(),
        "heldout_increase_low" => increase.iter().map(|p| p.1).collect::<Vec<_>>(),
        "heldout_increase_high" => increase.iter().map(|p| p.2).collect::<Vec<_>>(),
        "final_coefficient" => rows.iter().map(|(p, lsc, _)| coefficient(p, *lsc)).collect::<Vec<_>>(),
    }
}

/// One row per model, strategy and LSC: the skip's and the main path's low-frequency shares at the
/// last record, mean over runs.
fn spectral_frame(rows: &[SpectralRow]) -> PolarsResult<DataFrame> {
    let flat: Vec<(&SpectralRow, &(u32, f64, f64))> =
        rows.iter().flat_map(|row| row.per_lsc.iter().map(move |lsc| (row, lsc))).collect();
    df! {
        "model" => flat.iter().map(|(row, _)| row.model.as_str()).collect::<Vec<_>>(),
        "strategy" => flat.iter().map(|(row, _)| row.strategy_label.as_str()).collect::<Vec<_>>(),
        "lsc" => flat.iter().map(|(_, (lsc, _, _))| *lsc).collect::<Vec<_>>(),
        "skip_low_freq_share" => flat.iter().map(|(_, (_, skip, _))| *skip).collect::<Vec<_>>(),
        "main_low_freq_share" => flat.iter().map(|(_, (_, _, main))| *main).collect::<Vec<_>>(),
    }
}

/// Per model, the change of the held-out loss per timestep bin under each sampling-time setting
/// (Skip-Tuning, FreeU) against the unedited networks, one panel per strategy.
fn edit_bin_figures(rows: &[EditRow]) -> Result<Vec<Figure>> {
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
fn importance_figures(profiles: &[ImportanceProfile]) -> Result<Vec<Figure>> {
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
fn spectral_figures(ctx: &ReportContext) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for (model_index, model) in ctx.models.iter().enumerate() {
        let panels: Vec<BandPanel> = ctx
            .groups_of(model)
            .map(|group| {
                BandPanel::per_lsc(group.strategy_label.to_string(), &lsc_curves(group, Quantity::SkipLowFreqShare))
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
