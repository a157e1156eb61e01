//! "Stability frontier" and claim (f), where the sweep varies the learning rate: per model and
//! strategy the largest learning rate at which every seed trained, each seed's own (bracketed by
//! bisection where `scalelong frontier` wrote `frontier.json`), and the ratio to strategy 1's, seed
//! by seed. Written as the `stable_lr` table, with one figure per model.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use plotters::style::RGBColor;
use polars::prelude::*;
use scalelong_analysis::inference::{Interval, LEVEL, paired_ratio_interval};
use scalelong_analysis::run_rules::RunOutcome;
use scalelong_analysis::verdict::{ClaimedEffect, verdict};
use scalelong_schema::{Censoring, LrBracket, SkipScaling};

use super::{ReportContext, Section};
use crate::assess::Judged;
use crate::claims::{Claim, Finding, interval_text, size_text};
use crate::figures::Figure;
use crate::format_number;
use crate::page::{Page, TableCell};
use crate::plot::{Scale, ScatterPanel, XySeries, draw_scatter_panel, figure_size, panel_areas, render};
use crate::run_group::RunGroup;
use crate::sweep_data::{LR_AXIS, SweepData};
use crate::tables::{Table, interval_parts, join_numbers};

/// The larger stable learning rate a stabilising strategy should allow: one step of the sweep's
/// 1-2-5 grid (2x).
pub const CLAIMED_LR_RATIO: f64 = 2.0;

pub struct StabilityFrontier {
    rows: Vec<StableLrRow>,
    table: Table,
    figures: Vec<Figure>,
}

impl StabilityFrontier {
    /// `None` unless the sweep has a learning-rate axis.
    pub fn build(ctx: &ReportContext) -> Result<Option<Self>> {
        let Some(rows) = stable_lr_rows(ctx.sweep, ctx.groups) else { return Ok(None) };
        let table = Table { stem: "stable_lr", frame: stable_lr_frame(&rows)? };
        let figures = frontier_figures(ctx, &rows)?;
        Ok(Some(Self { rows, table, figures }))
    }
}

impl Section for StabilityFrontier {
    fn claims(&self) -> Vec<Claim> {
        self.rows.iter().filter_map(|row| stability_claim(row, &self.rows)).collect()
    }

    fn figures(&self) -> Vec<&Figure> {
        self.figures.iter().collect()
    }

    fn tables(&self) -> Vec<&Table> {
        vec![&self.table]
    }

    fn render(&self, page: &mut Page) {
        page.push("<h2>Stability frontier</h2>\n");
        page.push(
            "<p>The largest learning rate at which every seed of the strategy trained (neither collapsed nor diverged), \
             and per seed the largest at which that seed trained.",
        );
        if let Some(bisection) = self.rows.iter().find_map(|row| row.bisection.as_ref()) {
            page.push(&format!(
                " Each seed's frontier was bracketed by bisection in log learning rate (<code>scalelong frontier</code>, \
                 frontier.json) between a trained rate and a failed one {} times larger, the failed one in brackets; a seed \
                 that trained at the top of the searched interval or failed at its bottom is censored and marked.",
                format_number(bisection.step_ratio)
            ));
        }
        page.push("</p>\n");
        let rows: Vec<Vec<TableCell>> = self
            .rows
            .iter()
            .map(|row| {
                vec![
                    TableCell::Text(row.model.clone()),
                    TableCell::Html(page.strategy(&row.strategy_label)),
                    row.largest_stable_lr.map_or(TableCell::Text("none".to_string()), |lr| TableCell::Number(Some(lr))),
                    TableCell::Text(per_seed_text(row)),
                    TableCell::interval(row.ratio_to_1.as_ref()),
                    TableCell::Text(row.lrs_tried.iter().map(|lr| format_number(*lr)).collect::<Vec<_>>().join(", ")),
                ]
            })
            .collect();
        page.html_table(
            &[
                "model",
                "strategy",
                "largest stable lr",
                "per seed",
                "over strategy 1's (95% interval)",
                "learning rates run",
            ],
            &rows,
        );
        page.table_links(&self.table);
        for figure in &self.figures {
            page.figure(figure);
        }
    }
}

/// The stability frontier of one model and strategy over a learning-rate axis.
struct StableLrRow {
    model: String,
    strategy: SkipScaling,
    strategy_label: String,
    /// The largest learning rate at which every seed's run trained; `None` when none did.
    largest_stable_lr: Option<f64>,
    /// Per seed, the largest learning rate at which that seed's run trained.
    per_seed: BTreeMap<u64, f64>,
    /// Every learning rate the strategy was run at, ascending.
    lrs_tried: Vec<f64>,
    /// This strategy's per-seed frontier over strategy 1's at the same seed (a geometric-mean
    /// ratio with its interval); `None` for strategy 1 itself or under 2 seeds.
    ratio_to_1: Option<Interval>,
    /// Where the folder has `frontier.json`: the seeds' brackets, which `per_seed` and
    /// `largest_stable_lr` then come from.
    bisection: Option<Bisection>,
}

/// A strategy's seeds as `scalelong frontier` bracketed them.
struct Bisection {
    /// The ratio of neighbouring rates the search probed: what an uncensored bracket spans.
    step_ratio: f64,
    /// Per seed, the smallest rate above its largest trained one at which it failed (none for a
    /// seed that trained at the searched interval's top).
    smallest_failed: BTreeMap<u64, f64>,
    /// Seeds that trained at the top of the searched interval: their rate in `per_seed` is a lower
    /// bound.
    trained_at_high: Vec<u64>,
    /// Seeds that failed at its bottom: no trained rate, so they are in no ratio.
    failed_at_low: Vec<u64>,
}

/// `None` unless the sweep has an `optimizer.lr` axis. With `frontier.json`, each seed's largest
/// trained rate is its bracket's, and the largest stable rate the smallest of them (none when a
/// seed failed at the bottom of the searched interval); without, both come from the runs.
fn stable_lr_rows(sweep: &SweepData, groups: &[RunGroup]) -> Option<Vec<StableLrRow>> {
    if !sweep.axes.contains(LR_AXIS) {
        return None;
    }
    let mut rows = Vec::new();
    for group in groups {
        let (model, label) = (group.model, group.strategy_label);
        let statuses: Vec<(f64, u64, RunOutcome)> =
            group.runs.iter().map(|j| (j.run.lr, j.run.seed, j.assessment.status)).collect();
        let mut lrs_tried: Vec<f64> = statuses.iter().map(|(lr, _, _)| *lr).collect();
        lrs_tried.sort_by(f64::total_cmp);
        lrs_tried.dedup();
        let mut per_seed: BTreeMap<u64, f64> = BTreeMap::new();
        for &(lr, seed, status) in &statuses {
            if status == RunOutcome::Trained {
                let best = per_seed.entry(seed).or_insert(lr);
                *best = best.max(lr);
            }
        }
        let all_trained_at =
            |lr: f64| statuses.iter().filter(|(l, _, _)| *l == lr).all(|(_, _, status)| *status == RunOutcome::Trained);
        let mut largest_stable_lr = lrs_tried.iter().copied().rev().find(|&lr| all_trained_at(lr));
        let bisection = sweep.frontier.as_ref().map(|frontier| {
            let brackets: Vec<&LrBracket> = frontier
                .brackets
                .iter()
                .filter(|bracket| bracket.model == model && bracket.strategy == label)
                .collect();
            per_seed =
                brackets.iter().filter_map(|bracket| Some((bracket.seed, bracket.largest_trained_lr?))).collect();
            let seeds_where =
                |censoring| brackets.iter().filter(|b| b.censored == Some(censoring)).map(|b| b.seed).collect();
            let failed_at_low: Vec<u64> = seeds_where(Censoring::FailedAtLow);
            // Every seed trained up to its own bracket, so all of them at the smallest.
            largest_stable_lr =
                if failed_at_low.is_empty() { per_seed.values().copied().min_by(f64::total_cmp) } else { None };
            Bisection {
                step_ratio: frontier.step_ratio,
                smallest_failed: brackets
                    .iter()
                    .filter_map(|bracket| Some((bracket.seed, bracket.smallest_failed_lr?)))
                    .collect(),
                trained_at_high: seeds_where(Censoring::TrainedAtHigh),
                failed_at_low,
            }
        });
        rows.push(StableLrRow {
            model: model.to_string(),
            strategy: group.strategy,
            strategy_label: label.to_string(),
            largest_stable_lr,
            per_seed,
            lrs_tried,
            ratio_to_1: None,
            bisection,
        });
    }
    // Ratios against strategy 1, seed by seed (a seed at which one of the two never trained has no
    // frontier and is left out).
    let baselines: Vec<(String, BTreeMap<u64, f64>)> = rows
        .iter()
        .filter(|row| row.strategy == SkipScaling::Original)
        .map(|row| (row.model.clone(), row.per_seed.clone()))
        .collect();
    for row in rows.iter_mut().filter(|row| row.strategy != SkipScaling::Original) {
        let Some((_, base)) = baselines.iter().find(|(model, _)| *model == row.model) else { continue };
        let seeds: Vec<u64> = row.per_seed.keys().filter(|seed| base.contains_key(seed)).copied().collect();
        let this: Vec<f64> = seeds.iter().map(|seed| row.per_seed[seed]).collect();
        let theirs: Vec<f64> = seeds.iter().map(|seed| base[seed]).collect();
        row.ratio_to_1 = paired_ratio_interval(&this, &theirs, LEVEL);
    }
    Some(rows)
}

/// A row's per-seed frontiers in words: `0: 0.01189 (failed at 0.01414), 1: >= 0.02 (trained at the
/// top), 2: < 0.005 (failed at the bottom)` with `frontier.json`, `0: 0.01, 1: 0.005` without.
fn per_seed_text(row: &StableLrRow) -> String {
    let mut seeds: Vec<(u64, String)> = row
        .per_seed
        .iter()
        .map(|(&seed, &lr)| {
            let text = match &row.bisection {
                Some(b) if b.trained_at_high.contains(&seed) => {
                    format!(">= {} (trained at the top)", format_number(lr))
                }
                Some(b) => match b.smallest_failed.get(&seed) {
                    Some(failed) => format!("{} (failed at {})", format_number(lr), format_number(*failed)),
                    None => format_number(lr),
                },
                None => format_number(lr),
            };
            (seed, text)
        })
        .collect();
    if let Some(b) = &row.bisection {
        for &seed in &b.failed_at_low {
            let failed = b.smallest_failed.get(&seed).map_or(String::new(), |lr| format_number(*lr));
            seeds.push((seed, format!("< {failed} (failed at the bottom)")));
        }
    }
    seeds.sort_by_key(|(seed, _)| *seed);
    seeds.into_iter().map(|(seed, text)| format!("{seed}: {text}")).collect::<Vec<_>>().join(", ")
}

fn stable_lr_frame(rows: &[StableLrRow]) -> PolarsResult<DataFrame> {
    let ratio: Vec<_> = rows.iter().map(|row| interval_parts(row.ratio_to_1.as_ref())).collect();
    let seeds_text = |seeds: &[u64]| seeds.iter().map(|seed| seed.to_string()).collect::<Vec<_>>().join("; ");
    df! {
        "model" => rows.iter().map(|row| row.model.as_str()).collect::<Vec<_>>(),
        "strategy" => rows.iter().map(|row| row.strategy_label.as_str()).collect::<Vec<_>>(),
        "largest_stable_lr" => rows.iter().map(|row| row.largest_stable_lr).collect::<Vec<_>>(),
        "per_seed_largest_trained_lr" => rows.iter().map(|row| row.per_seed.iter().map(|(seed, lr)| format!("{seed}: {lr}")).collect::<Vec<_>>().join("; ")).collect::<Vec<_>>(),
        "ratio_to_1" => ratio.iter().map(|p| p.0).collect::<Vec<_>>(),
        "ratio_to_1_low" => ratio.iter().map(|p| p.1).collect::<Vec<_>>(),
        "ratio_to_1_high" => ratio.iter().map(|p| p.2).collect::<Vec<_>>(),
        "lrs_tried" => rows.iter().map(|row| join_numbers(&row.lrs_tried)).collect::<Vec<_>>(),
        "bracket_step_ratio" => rows.iter().map(|row| row.bisection.as_ref().map(|b| b.step_ratio)).collect::<Vec<_>>(),
        "per_seed_smallest_failed_lr" => rows.iter().map(|row| row.bisection.as_ref().map(|b| b.smallest_failed.iter().map(|(seed, lr)| format!("{seed}: {lr}")).collect::<Vec<_>>().join("; "))).collect::<Vec<_>>(),
        "seeds_trained_at_high" => rows.iter().map(|row| row.bisection.as_ref().map(|b| seeds_text(&b.trained_at_high))).collect::<Vec<_>>(),
        "seeds_failed_at_low" => rows.iter().map(|row| row.bisection.as_ref().map(|b| seeds_text(&b.failed_at_low))).collect::<Vec<_>>(),
    }
}

/// The stability frontier: per model, one panel per strategy of the final held-out loss against
/// the learning rate (log scale), each seed a dot (grey for a collapsed run; a diverged run, which
/// has no loss, at the zero predictor's level in black), the mean over trained seeds a line, and
/// the largest learning rate at which every seed trained marked by a vertical line.
fn frontier_figures(ctx: &ReportContext, rows: &[StableLrRow]) -> Result<Vec<Figure>> {
    let models: BTreeSet<&str> = rows.iter().map(|row| row.model.as_str()).collect();
    let mut figures = Vec::new();
    for (index, model) in models.into_iter().enumerate() {
        let panels: Vec<ScatterPanel> = rows
            .iter()
            .filter(|row| row.model == model)
            .map(|row| {
                let runs: Vec<&Judged> = ctx
                    .groups_of(model)
                    .filter(|group| group.strategy_label == row.strategy_label)
                    .flat_map(|group| group.runs.iter().copied())
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
                let colour = ctx.palette.colour(&row.strategy_label);
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

/// (f) A scaled strategy stays trained at larger learning rates than `1` (`rows`: every row, for
/// strategy 1's on the same model).
fn stability_claim(row: &StableLrRow, rows: &[StableLrRow]) -> Option<Claim> {
    let ratio = row.ratio_to_1.as_ref()?;
    let name = format!("(f) {} trains at larger learning rates than 1 on {}", row.strategy_label, row.model);
    let of_interest = match row.bisection {
        Some(_) => "",
        None => ", one step of the grid",
    };
    let claimed = format!(
        "the largest learning rate at which a seed's run trained (not collapsed, not diverged), over strategy 1's \
         at that seed, > 1 (of interest: {}x{of_interest})",
        format_number(CLAIMED_LR_RATIO)
    );
    let effect = ClaimedEffect { null: 1.0, claimed: CLAIMED_LR_RATIO };
    let (rests_on, note) = match &row.bisection {
        None => (format!("{} seeds at {} learning rates", ratio.n, row.lrs_tried.len()), String::new()),
        Some(bisection) => {
            let baseline = rows
                .iter()
                .find(|other| other.strategy == SkipScaling::Original && other.model == row.model)
                .and_then(|baseline| baseline.bisection.as_ref());
            let mut censored = censored_seeds(&row.strategy_label, bisection);
            censored.extend(baseline.map_or(Vec::new(), |baseline| censored_seeds("1", baseline)));
            (
                format!(
                    "{} seed pairs, each seed's frontier bracketed by bisection in log learning rate to within {}x \
                     ({} learning rates run)",
                    ratio.n,
                    format_number(bisection.step_ratio),
                    row.lrs_tried.len()
                ),
                censored.join("; "),
            )
        }
    };
    Some(Claim {
        name,
        claimed,
        finding: Finding::Verdict(verdict(ratio, &effect)),
        effect: interval_text(ratio, "x"),
        size: size_text(ratio, &effect),
        rests_on,
        note,
        ..Claim::default()
    })
}

/// A strategy's censored seeds in words, one phrase per end that did not hold.
fn censored_seeds(label: &str, bisection: &Bisection) -> Vec<String> {
    let seeds = |seeds: &[u64]| seeds.iter().map(|seed| seed.to_string()).collect::<Vec<_>>().join(", ");
    let mut phrases = Vec::new();
    if !bisection.trained_at_high.is_empty() {
        phrases.push(format!(
            "{label} trained at the top of the searched interval at seed(s) {} (a lower bound, counted at it)",
            seeds(&bisection.trained_at_high)
        ));
    }
    if !bisection.failed_at_low.is_empty() {
        phrases.push(format!(
            "{label} failed at its bottom at seed(s) {} (left out of the ratio)",
            seeds(&bisection.failed_at_low)
        ));
    }
    phrases
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assess::judge;
    use crate::sweep_data::read_sweep;
    use crate::testing::SweepFixture;
    use scalelong_schema::{Frontier, write_json_atomic};

    #[test]
    fn a_frontier_file_gives_each_seed_its_bracket() {
        let root = std::env::temp_dir().join(format!("scalelong-report-{}-frontier", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // Runs at two rates; frontier.json's brackets differ from what the runs alone would give,
        // so that the rows can only have come from it.
        let sweep_dir = SweepFixture { lrs: vec![1e-4, 2e-4], ..SweepFixture::default() }.write(&root);
        let model = read_sweep(&sweep_dir).unwrap().runs[0].model.clone();
        let bracket = |strategy: &str, seed, trained: Option<f64>, failed: Option<f64>, censored| LrBracket {
            cell: format!("{strategy}_seed{seed}"),
            model: model.clone(),
            strategy: strategy.to_string(),
            seed,
            largest_trained_lr: trained,
            smallest_failed_lr: failed,
            censored,
            probes: Vec::new(),
        };
        let frontier = Frontier {
            low: 1e-4,
            high: 2e-4,
            resolution: 1.2,
            step_ratio: 2f64.powf(0.25),
            brackets: vec![
                bracket("1", 0, Some(1e-4), Some(1.189e-4), None),
                bracket("1", 1, Some(1e-4), Some(1.189e-4), None),
                bracket("1", 2, Some(1.189e-4), Some(1.414e-4), None),
                bracket("LS", 0, Some(1.5e-4), Some(1.8e-4), None),
                bracket("LS", 1, Some(2e-4), None, Some(Censoring::TrainedAtHigh)),
                bracket("LS", 2, None, Some(1e-4), Some(Censoring::FailedAtLow)),
            ],
        };
        write_json_atomic(&sweep_dir.join("frontier.json"), &frontier).unwrap();
        let sweep = read_sweep(&sweep_dir).unwrap();
        let judged = judge(&sweep);
        let rows = stable_lr_rows(&sweep, &RunGroup::per_strategy(&judged)).unwrap();
        let [baseline, ls] = &rows[..] else { panic!("two strategies, got {}", rows.len()) };

        assert_eq!(baseline.per_seed, BTreeMap::from([(0, 1e-4), (1, 1e-4), (2, 1.189e-4)]));
        assert_eq!(baseline.largest_stable_lr, Some(1e-4), "the smallest seed's");
        assert_eq!(ls.per_seed, BTreeMap::from([(0, 1.5e-4), (1, 2e-4)]));
        assert_eq!(ls.largest_stable_lr, None, "seed 2 failed at the bottom");
        let bisection = ls.bisection.as_ref().unwrap();
        assert_eq!((bisection.trained_at_high.as_slice(), bisection.failed_at_low.as_slice()), (&[1][..], &[2][..]));
        // Seeds 0 and 1 paired (seed 2 has no LS frontier): ratios 1.5 and 2.
        let ratio = ls.ratio_to_1.as_ref().unwrap();
        assert_eq!(ratio.n, 2);
        assert!((ratio.estimate - 3f64.sqrt()).abs() < 1e-9, "{}", ratio.estimate);
        let text = per_seed_text(ls);
        for part in
            ["0: 1.5e-4 (failed at 1.8e-4)", "1: >= 2e-4 (trained at the top)", "2: < 1e-4 (failed at the bottom)"]
        {
            assert!(text.contains(part), "{part:?} not in {text:?}");
        }

        let claims: Vec<Claim> = rows.iter().filter_map(|row| stability_claim(row, &rows)).collect();
        let claim = claims.iter().find(|claim| claim.name.starts_with("(f) LS")).unwrap();
        assert!(
            claim.rests_on.contains("bracketed by bisection in log learning rate to within 1.189x"),
            "{}",
            claim.rests_on
        );
        assert!(claim.note.contains("LS trained at the top of the searched interval at seed(s) 1"), "{}", claim.note);
        assert!(claim.note.contains("LS failed at its bottom at seed(s) 2"), "{}", claim.note);
        let _ = std::fs::remove_dir_all(&root);
    }
}
