//! "Strategies side by side" and claim (a): per cell of the design (model, strategy and every
//! other setting but the seed) the mean final held-out loss and FD with 95% Student t intervals over
//! its trained seeds; per strategy against strategy `1` the paired comparisons of `compare.rs`, each
//! measure a claim. Written as `cells` and `comparisons` tables.

use anyhow::Result;
use polars::prelude::*;
use scalelong_analysis::inference::{Interval, LEVEL, mean_interval};
use scalelong_analysis::run_rules::RunOutcome;
use scalelong_analysis::verdict::Verdict;

use super::{ReportContext, Section};
use crate::claims::{Claim, Finding, interval_text, not_measured, size_text};
use crate::compare::{Comparison, Measure, Reading, comparisons};
use crate::format_number;
use crate::page::{Page, TableCell};
use crate::run_group::RunGroup;
use crate::tables::{Table, interval_parts};

/// The paper's speed-up: "about 1.5x faster" training.
pub const CLAIMED_SPEEDUP: f64 = 1.5;

pub struct SideBySide<'a> {
    cells: Vec<RunGroup<'a>>,
    comparisons: Vec<Comparison>,
    cells_table: Table,
    /// `None` without a strategy-1 cell to compare with.
    comparisons_table: Option<Table>,
}

impl<'a> SideBySide<'a> {
    pub fn build(ctx: &ReportContext<'a>) -> Result<Self> {
        let cells = RunGroup::per_cell(ctx.judged);
        let comparisons = comparisons(&cells, &ctx.sweep.analysis);
        let cells_table = Table { stem: "cells", frame: cells_frame(&cells)? };
        let comparisons_table = Table::of_rows("comparisons", &comparisons, comparisons_frame)?;
        Ok(Self { cells, comparisons, cells_table, comparisons_table })
    }
}

impl Section for SideBySide<'_> {
    fn claims(&self) -> Vec<Claim> {
        speed_claims(&self.comparisons)
    }

    fn tables(&self) -> Vec<&Table> {
        std::iter::once(&self.cells_table).chain(&self.comparisons_table).collect()
    }

    fn render(&self, page: &mut Page) {
        page.push("<h2>Strategies side by side</h2>\n");
        page.push("<p>Per cell, the mean over its trained seeds with a 95% Student t interval.</p>\n");
        let rows: Vec<Vec<TableCell>> = self
            .cells
            .iter()
            .map(|cell| {
                vec![
                    TableCell::Text(cell.model.to_string()),
                    TableCell::Html(page.strategy(cell.strategy_label)),
                    TableCell::Text(cell.setting.unwrap_or_default().to_string()),
                    TableCell::Text(format!(
                        "{} of {} ({} collapsed, {} diverged)",
                        cell.count(RunOutcome::Trained),
                        cell.runs.len(),
                        cell.count(RunOutcome::Collapsed),
                        cell.count(RunOutcome::Diverged)
                    )),
                    TableCell::interval(mean_final_loss(cell).as_ref()),
                    TableCell::interval(mean_fd(cell).as_ref()),
                ]
            })
            .collect();
        page.html_table(&["model", "strategy", "setting", "trained runs", "final held-out loss", "FD"], &rows);
        page.table_links(&self.cells_table);
        let Some(comparisons_table) = &self.comparisons_table else {
            page.note("A strategy-1 run to compare with was");
            return;
        };
        page.push(
            "<p>Against strategy 1, paired by seed over every seed both runs finished (a collapsed or diverged run \
             kept: it counts as a failure, ends at the zero predictor's loss and reaches no target): the difference of \
             failure rates (negative: fewer failures), the ratio of final held-out losses and of the curves' geometric \
             means (below 1: lower than strategy 1's), and the speed-up to each fixed target (above 1: gets there \
             first; a run that never does is counted at its last step, censored). Each with its 95% interval, the \
             exact p-value and the p-value after Holm's correction across the strategies, the direction that p \
             establishes, and whether the interval excludes the effect of interest.</p>\n",
        );
        let rows: Vec<Vec<TableCell>> = self
            .comparisons
            .iter()
            .flat_map(|c| c.readings.iter().map(move |reading| (c, reading)))
            .map(|(c, reading)| {
                let of_interest = reading.measure.effect().claimed;
                vec![
                    TableCell::Text(c.model.clone()),
                    TableCell::Html(page.strategy(&c.strategy_label)),
                    TableCell::Text(c.setting.clone()),
                    TableCell::Text(c.seeds.len().to_string()),
                    TableCell::Text(reading.measure.name()),
                    TableCell::interval(reading.interval.as_ref()),
                    TableCell::Text(format!(
                        "{} ({})",
                        reading.p_value.map_or("-".to_string(), format_number),
                        reading.p_holm.map_or("-".to_string(), format_number)
                    )),
                    TableCell::Text(direction_text(reading.direction()).to_string()),
                    TableCell::Text(match reading.size_excluded() {
                        Some(true) => format!("{} excluded", format_number(of_interest)),
                        Some(false) => format!("{} not excluded", format_number(of_interest)),
                        None => String::new(),
                    }),
                    TableCell::Text(if reading.censored > 0 { reading.censored.to_string() } else { String::new() }),
                ]
            })
            .collect();
        page.html_table(
            &[
                "model",
                "strategy",
                "setting",
                "seed pairs",
                "measure",
                "estimate [95%]",
                "p (Holm)",
                "direction",
                "effect of interest",
                "censored pairs",
            ],
            &rows,
        );
        page.table_links(comparisons_table);
    }
}

/// The mean final held-out loss of the cell's trained runs, with its interval (`None` under 2).
fn mean_final_loss(cell: &RunGroup) -> Option<Interval> {
    let losses: Vec<f64> = cell
        .runs
        .iter()
        .filter(|j| j.assessment.status == RunOutcome::Trained)
        .filter_map(|j| j.assessment.final_heldout)
        .collect();
    mean_interval(&losses, LEVEL)
}

/// The mean FD of the cell's trained runs that have one, with its interval.
fn mean_fd(cell: &RunGroup) -> Option<Interval> {
    let fds: Vec<f64> = cell
        .trained()
        .filter_map(|run| run.last_eval.as_ref().and_then(|line| line.fd))
        .filter(|fd| fd.is_finite())
        .collect();
    mean_interval(&fds, LEVEL)
}

/// (a) for every strategy compared with `1`, or why speed could not be read at all.
fn speed_claims(comparisons: &[Comparison]) -> Vec<Claim> {
    let mut claims: Vec<Claim> = comparisons.iter().flat_map(comparison_claims).collect();
    if !comparisons.is_empty() && comparisons.iter().all(|comparison| !comparison.has_curves) {
        claims.push(not_measured(
            "(a) Scaled strategies train faster than 1",
            "the runs were evaluated at the end only, and a speed is read off held-out curves",
        ));
    } else if !comparisons.is_empty()
        && !comparisons.iter().flat_map(|c| &c.readings).any(|r| matches!(r.measure, Measure::StepsTo { .. }))
    {
        claims.push(not_measured(
            "(a) Scaled strategies reach fixed held-out losses sooner than 1",
            "the sweep fixed no speed targets before its runs ([analysis] speed_targets in the sweep file)",
        ));
    }
    if comparisons.is_empty() {
        claims.push(not_measured(
            "(a) Scaled strategies train faster than 1",
            "the sweep has no strategy-1 run to compare with",
        ));
    }
    claims
}

/// (a) One strategy against `1` on each paired measure: fewer failures, a lower final loss, fixed
/// targets reached sooner, a lower curve. The verdict is the direction the Holm-adjusted exact test
/// establishes; the size column says whether the interval excludes the effect of interest.
fn comparison_claims(comparison: &Comparison) -> Vec<Claim> {
    let on = format!("{}{}", comparison.model, setting_suffix(&comparison.setting));
    let seeds: Vec<String> = comparison.seeds.iter().map(u64::to_string).collect();
    let mut rests_on = format!("{} seed pairs (seeds {})", comparison.seeds.len(), seeds.join(", "));
    if !comparison.unfinished_seeds.is_empty() {
        let left: Vec<String> = comparison.unfinished_seeds.iter().map(u64::to_string).collect();
        rests_on.push_str(&format!("; left out, a run is unfinished: seeds {}", left.join(", ")));
    }
    let label = &comparison.strategy_label;
    comparison
        .readings
        .iter()
        .map(|reading| {
            let effect = reading.measure.effect();
            let (name, claimed, unit) = match reading.measure {
                Measure::Failures => (
                    format!("(a) {label} collapses or diverges less often than 1 on {on}"),
                    format!(
                        "failure rate minus strategy 1's, paired by seed, < 0 (of interest: {}, {} fewer failures in 8 \
                         seeds); exact McNemar test",
                        format_number(effect.claimed),
                        format_number(-effect.claimed * 8.0)
                    ),
                    "",
                ),
                Measure::FinalLoss => (
                    format!("(a) {label} ends at a lower held-out loss than 1 on {on}"),
                    format!(
                        "final held-out loss over strategy 1's (a failed run at the zero predictor's), < 1 (of \
                         interest: {}x); exact sign-flip test on the log ratios",
                        format_number(effect.claimed)
                    ),
                    "x",
                ),
                Measure::StepsTo { target } => (
                    format!("(a) {label} reaches held-out loss {} sooner than 1 on {on}", format_number(target)),
                    format!(
                        "strategy 1's steps to the fixed target {} over this strategy's (never reached: the last \
                         step, censored), > 1 (of interest: {}x; the paper reports about {}x); exact sign-flip test",
                        format_number(target),
                        format_number(effect.claimed),
                        format_number(CLAIMED_SPEEDUP)
                    ),
                    "x",
                ),
                Measure::CurveArea => (
                    format!("(a) {label} has a lower held-out curve than 1 on {on}"),
                    format!(
                        "geometric mean of the held-out curve over the run, over strategy 1's, < 1 (of interest: \
                         {}x); exact sign-flip test",
                        format_number(effect.claimed)
                    ),
                    "x",
                ),
            };
            let Some(interval) = &reading.interval else {
                return Claim {
                    claimed,
                    rests_on: rests_on.clone(),
                    ..not_measured(
                        &name,
                        "an exact 95% interval needs at least 6 seed pairs with the measure (the smallest two-sided \
                         sign-flip p with 5 is 1/16)",
                    )
                };
            };
            let note = match reading.measure {
                Measure::Failures => format!(
                    "failed: strategy 1 {} of {}, {label} {} of {}",
                    comparison.failures.baseline(),
                    comparison.failures.pairs(),
                    comparison.failures.other(),
                    comparison.failures.pairs()
                ),
                Measure::StepsTo { .. } if reading.censored > 0 => {
                    format!("{} seed pairs with a run that never reached the target", reading.censored)
                }
                _ => String::new(),
            };
            Claim {
                name,
                claimed,
                finding: Finding::Verdict(reading.direction()),
                effect: interval_text(interval, unit),
                size: size_text(interval, &effect),
                p_value: format!(
                    "{} ({})",
                    reading.p_value.map_or("-".to_string(), format_number),
                    reading.p_holm.map_or("-".to_string(), format_number)
                ),
                rests_on: rests_on.clone(),
                note,
                ..Default::default()
            }
        })
        .collect()
}

fn setting_suffix(setting: &str) -> String {
    if setting.is_empty() { String::new() } else { format!(" ({setting})") }
}

fn cells_frame(cells: &[RunGroup]) -> PolarsResult<DataFrame> {
    let loss: Vec<_> = cells.iter().map(|cell| interval_parts(mean_final_loss(cell).as_ref())).collect();
    let fd: Vec<_> = cells.iter().map(|cell| interval_parts(mean_fd(cell).as_ref())).collect();
    df! {
        "model" => cells.iter().map(|cell| cell.model).collect::<Vec<_>>(),
        "strategy" => cells.iter().map(|cell| cell.strategy_label).collect::<Vec<_>>(),
        "setting" => cells.iter().map(|cell| cell.setting.unwrap_or_default()).collect::<Vec<_>>(),
        "runs" => cells.iter().map(|cell| cell.runs.len() as u64).collect::<Vec<_>>(),
        "trained" => cells.iter().map(|cell| cell.count(RunOutcome::Trained) as u64).collect::<Vec<_>>(),
        "heldout_loss_mean" => loss.iter().map(|p| p.0).collect::<Vec<_>>(),
        "heldout_loss_low" => loss.iter().map(|p| p.1).collect::<Vec<_>>(),
        "heldout_loss_high" => loss.iter().map(|p| p.2).collect::<Vec<_>>(),
        "fd_mean" => fd.iter().map(|p| p.0).collect::<Vec<_>>(),
        "fd_low" => fd.iter().map(|p| p.1).collect::<Vec<_>>(),
        "fd_high" => fd.iter().map(|p| p.2).collect::<Vec<_>>(),
    }
}

/// One row per (comparison with strategy 1, measure): the estimate and its interval on the measure's
/// scale, the exact p-value and its Holm-adjusted value, the direction and whether the size of
/// interest is excluded.
fn comparisons_frame(comparisons: &[Comparison]) -> PolarsResult<DataFrame> {
    let rows: Vec<(&Comparison, &Reading)> =
        comparisons.iter().flat_map(|c| c.readings.iter().map(move |reading| (c, reading))).collect();
    let interval: Vec<_> = rows.iter().map(|(_, r)| interval_parts(r.interval.as_ref())).collect();
    df! {
        "model" => rows.iter().map(|(c, _)| c.model.as_str()).collect::<Vec<_>>(),
        "strategy" => rows.iter().map(|(c, _)| c.strategy_label.as_str()).collect::<Vec<_>>(),
        "setting" => rows.iter().map(|(c, _)| c.setting.as_str()).collect::<Vec<_>>(),
        "seed_pairs" => rows.iter().map(|(c, _)| c.seeds.len() as u64).collect::<Vec<_>>(),
        "measure" => rows.iter().map(|(_, r)| r.measure.name()).collect::<Vec<_>>(),
        "estimate" => interval.iter().map(|p| p.0).collect::<Vec<_>>(),
        "low" => interval.iter().map(|p| p.1).collect::<Vec<_>>(),
        "high" => interval.iter().map(|p| p.2).collect::<Vec<_>>(),
        "of_interest" => rows.iter().map(|(_, r)| r.measure.effect().claimed).collect::<Vec<_>>(),
        "p" => rows.iter().map(|(_, r)| r.p_value).collect::<Vec<_>>(),
        "p_holm" => rows.iter().map(|(_, r)| r.p_holm).collect::<Vec<_>>(),
        "direction" => rows.iter().map(|(_, r)| direction_text(r.direction())).collect::<Vec<_>>(),
        "size_excluded" => rows.iter().map(|(_, r)| r.size_excluded()).collect::<Vec<_>>(),
        "censored_pairs" => rows.iter().map(|(_, r)| r.censored as u64).collect::<Vec<_>>(),
        "per_seed" => rows.iter().map(|(_, r)| r.per_seed.iter().map(|(seed, v)| format!("{seed}: {v:.4}")).collect::<Vec<_>>().join("; ")).collect::<Vec<_>>(),
    }
}

/// A reading's direction in the comparisons table: `established` (toward the effect of interest),
/// `established, opposite`, `not established`.
fn direction_text(direction: Verdict) -> &'static str {
    match direction {
        Verdict::Held => "established",
        Verdict::DidNotHold => "established, opposite",
        Verdict::Inconclusive => "not established",
    }
}
