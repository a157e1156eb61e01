//! "Theorem checks" and claims (b)-(d), ScaleLong's bounds, as dose-responses (docs/method.md §4,
//! [`scalelong_analysis::theorems`]): at initialisation from the sweep folder's
//! `dose_response.jsonl` (`scalelong dose-response`: CS over a kappa grid, many seeds), during
//! training from the sweep's runs with fixed coefficients; their claim rows, a figure of each
//! quantity against kappa (initialisation) or the bound's factor (training), and their rows as the
//! `theorem_rows` table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Result;
use polars::prelude::*;
use scalelong_analysis::dose_response::ALPHA;
use scalelong_analysis::theorems::{RunRecords, Source, Theorem, TheoremCheck, initialisation_checks, training_checks};
use scalelong_schema::{DoseResponseLine, read_jsonl};

use super::{ReportContext, Section};
use crate::claims::{Claim, Finding};
use crate::figures::Figure;
use crate::format_number;
use crate::page::{Page, TableCell, escape};
use crate::plot::{PANEL_SIZE, Palette, Scale, ScatterPanel, XySeries, draw_scatter_panel, render, sequential_colour};
use crate::sweep_data::SweepData;
use crate::tables::Table;

pub struct TheoremChecks {
    checks: Vec<BoundCheck>,
    /// Per check, its figure when it has a value a log axis can show.
    figures: Vec<Option<Figure>>,
    /// `None` when no check has rows.
    rows_table: Option<Table>,
}

impl TheoremChecks {
    pub fn build(ctx: &ReportContext) -> Result<Self> {
        let checks = bound_checks(ctx.sweep, ctx.sweep_dir, ctx.models)?;
        let figures =
            checks.iter().enumerate().map(|(index, bound)| figure(index, bound, ctx.palette)).collect::<Result<_>>()?;
        let rows_table = if checks.iter().any(|bound| !bound.check.rows.is_empty()) {
            Some(Table { stem: "theorem_rows", frame: rows_frame(&checks)? })
        } else {
            None
        };
        Ok(Self { checks, figures, rows_table })
    }
}

impl Section for TheoremChecks {
    fn claims(&self) -> Vec<Claim> {
        claims(&self.checks)
    }

    fn figures(&self) -> Vec<&Figure> {
        self.figures.iter().flatten().collect()
    }

    fn tables(&self) -> Vec<&Table> {
        self.rows_table.iter().collect()
    }

    fn render(&self, page: &mut Page) {
        page.push("<h2>Theorem checks</h2>\n");
        page.push(
            "<p>Each bound as a dose-response: the quantity it speaks of against the bound's factor, over networks \
             that differ only in their skip coefficients, compared within seeds (docs/method.md §4). At \
             initialisation from the sweep folder's dose_response.jsonl (`just dose-response`), during training from \
             the runs with fixed coefficients (1, 1/sqrt2, CS; learned ones are left out). A bound is an upper bound: \
             \"not observed\" does not refute it.</p>\n",
        );
        if self.checks.is_empty() {
            page.note("The diagnostics and the dose-response the theorem checks need were");
            return;
        }
        if let Some(table) = &self.rows_table {
            page.table_links(table);
        }
        let rows: Vec<Vec<TableCell>> = self
            .checks
            .iter()
            .map(|bound| {
                let response = &bound.check.response;
                vec![
                    TableCell::Text(format!(
                        "{} on {}, {}",
                        bound.check.theorem.name(),
                        bound.model,
                        bound.check.source
                    )),
                    TableCell::Text(bound.check.quantity.clone()),
                    TableCell::Text(bound.check.theorem.factor().to_string()),
                    TableCell::Text(response.ordering.to_string()),
                    TableCell::interval(response.spearman.as_ref()),
                    TableCell::interval(response.slope.as_ref()),
                    TableCell::Number(response.p_value),
                    TableCell::Number(Some(response.seeds as f64)),
                ]
            })
            .collect();
        page.html_table(
            &[
                "check",
                "quantity",
                "factor",
                "label",
                "within-seed Spearman",
                "log-log slope",
                "p (one-sided)",
                "seeds",
            ],
            &rows,
        );
        for (bound, figure) in self.checks.iter().zip(&self.figures) {
            let check = &bound.check;
            page.push(&format!(
                "<h3>{} on {}, {}</h3>\n<p>{}</p>\n",
                check.theorem.name(),
                escape(&bound.model),
                check.source,
                escape(&check.response.explanation)
            ));
            if !check.excluded.is_empty() {
                page.push(&format!("<p>Left out: {}.</p>\n", escape(&check.excluded.join("; "))));
            }
            if let Some(figure) = figure {
                page.figure(figure);
            }
        }
    }
}

/// What `scalelong dose-response` writes into a sweep folder for the report to find.
const DOSE_RESPONSE_FILE: &str = "dose_response.jsonl";

/// One bound checked on one source for one model.
struct BoundCheck {
    model: String,
    check: TheoremCheck,
}

/// Every check the sweep folder supports: at initialisation for each model `dose_response.jsonl`
/// names, during training for each model whose runs recorded diagnostics.
fn bound_checks(sweep: &SweepData, sweep_dir: &Path, models: &[&str]) -> Result<Vec<BoundCheck>> {
    let lines: Vec<DoseResponseLine> = read_jsonl(&sweep_dir.join(DOSE_RESPONSE_FILE))?;
    let mut line_models: Vec<&str> = lines.iter().map(|line| line.model.as_str()).collect();
    line_models.sort_unstable();
    line_models.dedup();
    let mut checks = Vec::new();
    for model in line_models {
        let of_model: Vec<DoseResponseLine> = lines.iter().filter(|line| line.model == model).cloned().collect();
        checks.extend(initialisation_checks(&of_model).map(|check| BoundCheck { model: model.to_string(), check }));
    }
    for model in models {
        let runs: Vec<RunRecords> = sweep
            .runs
            .iter()
            .filter(|run| run.model == *model && !run.diagnostics.is_empty())
            .map(|run| RunRecords {
                run_id: run.id.clone(),
                seed: run.seed,
                strategy: run.strategy,
                losses: run.losses.clone(),
                records: run.diagnostics.clone(),
            })
            .collect();
        if !runs.is_empty() {
            checks.extend(training_checks(&runs).map(|check| BoundCheck { model: model.to_string(), check }));
        }
    }
    checks.sort_by_key(|c| (c.check.theorem, c.check.source == Source::Training));
    Ok(checks)
}

/// The claim's title per bound.
fn title(theorem: Theorem) -> &'static str {
    match theorem {
        Theorem::FeatureNorms => "(b) Feature norms rise with the skips' S_i",
        Theorem::GradientNorms => "(c) Gradient norms rise with the skips' sum c_j^2",
        Theorem::Sensitivity => "(d) Sensitivity to a perturbed input rises with the skips' sum c_i",
    }
}

/// One claim row per check, (b) to (d); a bound no check could read is listed as not measured.
fn claims(checks: &[BoundCheck]) -> Vec<Claim> {
    let mut claims = Vec::new();
    for theorem in Theorem::ALL {
        let of_theorem: Vec<&BoundCheck> = checks.iter().filter(|c| c.check.theorem == theorem).collect();
        if of_theorem.is_empty() {
            claims.push(Claim {
                name: format!("{} ({})", title(theorem), theorem.name()),
                note: format!(
                    "not measured: the sweep recorded no diagnostics and its folder holds no {DOSE_RESPONSE_FILE} \
                     (`just dose-response`)"
                ),
                ..Default::default()
            });
        }
        claims.extend(of_theorem.into_iter().map(claim));
    }
    claims
}

fn claim(bound: &BoundCheck) -> Claim {
    let check = &bound.check;
    let response = &check.response;
    let name = format!("{} ({}) on {}, {}", title(check.theorem), check.theorem.name(), bound.model, check.source);
    let claimed = format!(
        "{} rises with the bound's factor {}: within a seed, the network with the larger factor has the larger \
         value (the mean over seeds of each seed's Spearman, > 0, one-sided permutation p <= {}, networks permuted \
         within seeds). The bound is an upper bound: an ordering not observed does not refute it.",
        check.quantity,
        check.theorem.factor(),
        format_number(ALPHA)
    );
    let networks: BTreeSet<(u64, &str)> = check.rows.iter().map(|row| (row.seed, row.network.as_str())).collect();
    let rests_on = match check.source {
        Source::Initialisation => format!(
            "{} values of {} CS networks at initialisation ({} seeds)",
            check.rows.len(),
            networks.len(),
            response.seeds
        ),
        Source::Training => format!(
            "{} values of {} runs with fixed coefficients, after each run's descent ({} seeds){}",
            check.rows.len(),
            networks.len(),
            response.seeds,
            if check.excluded.is_empty() { String::new() } else { format!("; {} runs left out", check.excluded.len()) }
        ),
    };
    let effect = match &response.spearman {
        Some(rho) => format!(
            "{}: Spearman {} [{}, {}]{}",
            response.ordering,
            format_number(rho.estimate),
            format_number(rho.low),
            format_number(rho.high),
            response.slope.as_ref().map_or(String::new(), |slope| format!(
                "; log-log slope {} [{}, {}]",
                format_number(slope.estimate),
                format_number(slope.low),
                format_number(slope.high)
            ))
        ),
        None => response.explanation.clone(),
    };
    Claim {
        name,
        claimed,
        finding: Finding::Ordering(response.ordering),
        effect,
        p_value: response.p_value.map_or(String::new(), |p| format!("{} (one-sided)", format_number(p))),
        rests_on,
        note: response.explanation.clone(),
        ..Default::default()
    }
}

/// One figure per check, values on a log scale. At initialisation against kappa: each network a
/// dot and the mean over seeds a line, or for the per-LSC quantity one line per LSC (the mean over
/// seeds; 8 LSCs of 16 dots each would hide each other). During training against the bound's factor,
/// one dot per run and LSC, coloured by strategy. `None` without a value a log axis can show.
fn figure(index: usize, bound: &BoundCheck, palette: &Palette) -> Result<Option<Figure>> {
    let check = &bound.check;
    if !check.rows.iter().any(|row| row.value > 0.0) {
        return Ok(None);
    }
    let (dots, lines) = match check.source {
        Source::Training => {
            let mut strategies: Vec<&str> = Vec::new();
            for row in &check.rows {
                if !strategies.contains(&row.strategy.as_str()) {
                    strategies.push(&row.strategy);
                }
            }
            let dots = strategies
                .iter()
                .map(|strategy| XySeries {
                    label: strategy.to_string(),
                    colour: palette.colour(strategy),
                    points: check
                        .rows
                        .iter()
                        .filter(|r| r.strategy == *strategy)
                        .map(|r| (r.factor, r.value))
                        .collect(),
                })
                .collect();
            (dots, Vec::new())
        }
        Source::Initialisation => {
            let lscs: BTreeSet<Option<u32>> = check.rows.iter().map(|row| row.lsc).collect();
            let lines: Vec<XySeries> = lscs
                .iter()
                .enumerate()
                .map(|(position, lsc)| {
                    let mut by_kappa: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
                    for row in check.rows.iter().filter(|row| row.lsc == *lsc) {
                        by_kappa.entry(row.kappa.unwrap_or(f64::NAN).to_bits()).or_default().push(row.value);
                    }
                    let mut points: Vec<(f64, f64)> = by_kappa
                        .into_iter()
                        .map(|(bits, values)| (f64::from_bits(bits), values.iter().sum::<f64>() / values.len() as f64))
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let label = lsc.map_or("mean over seeds".to_string(), |lsc| format!("LSC {lsc}, mean over seeds"));
                    let colour = sequential_colour(position as f64 / (lscs.len().max(2) - 1) as f64);
                    XySeries { label, colour, points }
                })
                .collect();
            let dots = if lscs.len() == 1 {
                let points = check.rows.iter().map(|row| (row.kappa.unwrap_or(f64::NAN), row.value)).collect();
                vec![XySeries { label: "one network".to_string(), colour: palette.colour("1"), points }]
            } else {
                Vec::new()
            };
            (dots, lines)
        }
    };
    let (x_desc, x_scale) = match check.source {
        Source::Initialisation => ("CS's kappa (1 is strategy 1)".to_string(), Scale::Linear),
        Source::Training => (format!("the bound's factor {}", check.theorem.factor()), Scale::Log),
    };
    let panel = ScatterPanel {
        title: format!(
            "{} on {}, {}: {}",
            check.theorem.name(),
            bound.model,
            check.source,
            check.response.ordering.to_string().trim_start_matches("the ")
        ),
        x_desc,
        y_desc: short_quantity(check.theorem, check.source).to_string(),
        x_scale,
        y_scale: Scale::Log,
        dots,
        lines,
    };
    let image = render(PANEL_SIZE, |root| draw_scatter_panel(root, &panel))?;
    let source = match check.source {
        Source::Initialisation => "init",
        Source::Training => "training",
    };
    Ok(Some(Figure {
        file_name: format!("bound_{}_{source}_{index}.png", check.theorem.name().replace(['.', ' '], "_")),
        title: format!("{} on {}, {}", check.theorem.name(), bound.model, check.source),
        caption: format!(
            "Per network, {} against {}.{}",
            check.quantity,
            match check.source {
                Source::Initialisation => "CS's kappa, each line the mean over seeds",
                Source::Training =>
                    "the bound's factor of each run's coefficients, one dot per run (1/sqrt2 at its own factor)",
            },
            if check.excluded.is_empty() {
                String::new()
            } else {
                format!(" Left out: {}.", check.excluded.join("; "))
            }
        ),
        image,
    }))
}

/// The y axis' name.
fn short_quantity(theorem: Theorem, source: Source) -> &'static str {
    match (theorem, source) {
        (Theorem::FeatureNorms, Source::Initialisation) => "mean ||h_i||^2",
        (Theorem::FeatureNorms, Source::Training) => "oscillation of ||h_i||^2 after the descent",
        (Theorem::GradientNorms, _) => "squared gradient norm / loss",
        (Theorem::Sensitivity, _) => "||eps(x + delta) - eps(x)|| / ||delta||",
    }
}

/// Every row of every check, with its model, theorem and source.
fn rows_frame(checks: &[BoundCheck]) -> PolarsResult<DataFrame> {
    let rows: Vec<(&BoundCheck, &scalelong_analysis::theorems::CheckRow)> =
        checks.iter().flat_map(|bound| bound.check.rows.iter().map(move |row| (bound, row))).collect();
    df!(
        "model" => rows.iter().map(|(b, _)| b.model.as_str()).collect::<Vec<_>>(),
        "theorem" => rows.iter().map(|(b, _)| b.check.theorem.name()).collect::<Vec<_>>(),
        "source" => rows.iter().map(|(b, _)| b.check.source.to_string()).collect::<Vec<_>>(),
        "seed" => rows.iter().map(|(_, r)| r.seed).collect::<Vec<_>>(),
        "network" => rows.iter().map(|(_, r)| r.network.as_str()).collect::<Vec<_>>(),
        "strategy" => rows.iter().map(|(_, r)| r.strategy.as_str()).collect::<Vec<_>>(),
        "kappa" => rows.iter().map(|(_, r)| r.kappa).collect::<Vec<_>>(),
        "lsc" => rows.iter().map(|(_, r)| r.lsc).collect::<Vec<_>>(),
        "factor" => rows.iter().map(|(_, r)| r.factor).collect::<Vec<_>>(),
        "value" => rows.iter().map(|(_, r)| r.value).collect::<Vec<_>>(),
    )
}
