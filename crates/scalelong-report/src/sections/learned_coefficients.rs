//! "Learned coefficients: LS gates and learned scalars" and claim (e): per model and learned
//! strategy the coefficients at the first and last record, whether they moved, their exponential
//! fit, and what the LS gates saw (`learned.rs`). Written as the `gate_fits` and `gate_inputs`
//! tables, with one figure per learned strategy.

use anyhow::Result;
use polars::prelude::*;
use scalelong_schema::{GateInput, Quantity, SkipScaling};

use super::{ReportContext, Section};
use crate::analysis::{DECAY_KAPPA_MAX, GateFit, gate_curves, gate_fit};
use crate::claims::{Claim, Finding, interval_text, not_measured};
use crate::figures::Figure;
use crate::format_number;
use crate::learned::{
    GateInputProfile, LscGateInput, decay_reading, gate_input_profiles, learned_subject, separation_text,
};
use crate::page::{Page, TableCell, escape};
use crate::plot::{
    BandPanel, PANEL_SIZE, Scale, ScatterPanel, XySeries, draw_band_panel, draw_scatter_panel, panel_areas, render,
    sequential_colour,
};
use crate::tables::{Table, join_numbers};

pub struct LearnedCoefficients {
    has_learned_runs: bool,
    /// Per model and strategy with learned coefficients recorded.
    gate_fits: Vec<GateFit>,
    /// Per model and LS strategy whose runs recorded their gates' inputs.
    gate_inputs: Vec<GateInputProfile>,
    gate_fits_table: Option<Table>,
    gate_inputs_table: Option<Table>,
    figures: Vec<Figure>,
}

impl LearnedCoefficients {
    pub fn build(ctx: &ReportContext) -> Result<Self> {
        let has_learned_runs = ctx.sweep.runs.iter().any(|run| run.strategy.learned_quantity().is_some());
        let gate_fits: Vec<GateFit> = ctx.groups.iter().filter_map(gate_fit).collect();
        let gate_inputs = gate_input_profiles(ctx.groups);
        let gate_fits_table = Table::of_rows("gate_fits", &gate_fits, gate_fit_frame)?;
        let gate_inputs_table = Table::of_rows("gate_inputs", &gate_inputs, gate_inputs_frame)?;
        let figures = gate_figures(ctx, &gate_fits)?;
        Ok(Self { has_learned_runs, gate_fits, gate_inputs, gate_fits_table, gate_inputs_table, figures })
    }

    /// What the LS gates saw, and whether a shared gate could tell the LSCs apart (learned.rs).
    fn render_gate_inputs(&self, page: &mut Page) {
        if !self.gate_fits.iter().any(|fit| matches!(fit.strategy, SkipScaling::Learnable { .. })) {
            return;
        }
        page.push("<h3>What the LS gates see</h3>\n");
        let Some(gate_inputs_table) = &self.gate_inputs_table else {
            page.note("The LS gates' pooled inputs were");
            return;
        };
        page.push(
            "<p>A gate turns its LSC's pooled input p_i (for the U-ViT the skip averaged over its D channels, one number \
             per token; for the conv UNet averaged over space, one per channel) into that LSC's coefficients, so a gate \
             shared by all LSCs gives two LSCs different coefficients only where their inputs differ. Per LSC, at each \
             run's last diagnostics record (mean over runs): the mean gate and its spread, the input's mean, RMS and \
             standard deviations over positions and over probe samples, its cosine to LSC 1's input, and its RMS \
             distance from LSC 1's input over the spread of LSC 1's input over samples (below 1, two LSCs' inputs \
             differ less than two images' inputs at one LSC; docs/method.md §3.4).</p>\n",
        );
        for profile in &self.gate_inputs {
            page.push(&format!(
                "<p>{}<b>{} on {}</b> ({} runs). {}</p>\n",
                page.swatch(&profile.strategy_label),
                escape(&profile.strategy_label),
                escape(&profile.model),
                profile.runs,
                escape(&separation_text(profile))
            ));
        }
        page.html_table(&GATE_INPUT_HEADERS, &gate_input_cells(&self.gate_inputs));
        page.table_links(gate_inputs_table);
    }
}

impl Section for LearnedCoefficients {
    /// The paper's observation is about its LS gates; every learned profile (LS gates shared or one
    /// per LSC, learned scalars) is read the same way, a decay counting only where it was learned.
    fn claims(&self) -> Vec<Claim> {
        self.gate_fits.iter().map(decay_claim).collect()
    }

    fn figures(&self) -> Vec<&Figure> {
        self.figures.iter().collect()
    }

    fn tables(&self) -> Vec<&Table> {
        [self.gate_fits_table.as_ref(), self.gate_inputs_table.as_ref()].into_iter().flatten().collect()
    }

    fn render(&self, page: &mut Page) {
        page.push("<h2>Learned coefficients: LS gates and learned scalars</h2>\n");
        if !self.has_learned_runs {
            page.note("The sweep has no LS or learned-scalar run, so learned coefficients were");
            return;
        }
        let Some(gate_fits_table) = &self.gate_fits_table else {
            page.note("The learned coefficients' statistics were");
            return;
        };
        page.push(
            "<p>Per LSC i (1 = outermost): the mean gate (LS) or the learned scalar at the first and the last \
             diagnostics record (mean over the runs), the seed-to-seed spread of the last (standard deviation over runs), \
             and whether they moved from their start by more than that spread. The fit: a * kappa_hat^(i-1) to the final means (pooled), and \
             kappa_hat fitted per run with its 95% interval over runs.</p>\n",
        );
        let rows: Vec<Vec<TableCell>> = self
            .gate_fits
            .iter()
            .map(|gates| {
                let per_lsc = |values: &[f64]| values.iter().map(|v| format_number(*v)).collect::<Vec<_>>().join(", ");
                let moved = gates.moved.iter().map(|m| if *m { "yes" } else { "no" }).collect::<Vec<_>>().join(", ");
                vec![
                    TableCell::Text(gates.model.clone()),
                    TableCell::Html(page.strategy(&gates.strategy_label)),
                    TableCell::Text(per_lsc(&gates.initial_means)),
                    TableCell::Text(per_lsc(&gates.final_means)),
                    TableCell::Text(per_lsc(&gates.final_spread)),
                    if gates.any_moved() {
                        TableCell::Text(moved)
                    } else {
                        TableCell::Html(format!("<span class=\"flag\">{} (none moved)</span>", escape(&moved)))
                    },
                    TableCell::Number(gates.fit.map(|fit| fit.a)),
                    TableCell::Number(gates.fit.map(|fit| fit.kappa_hat)),
                    TableCell::Number(gates.fit.map(|fit| fit.r2)),
                    TableCell::interval(gates.kappa.as_ref()),
                ]
            })
            .collect();
        page.html_table(
            &[
                "model",
                "strategy",
                "first gate mean, LSC 1..N",
                "final gate mean",
                "final spread over seeds",
                "moved",
                "a",
                "kappa_hat (pooled)",
                "R^2",
                "kappa_hat per run, 95% interval",
            ],
            &rows,
        );
        page.table_links(gate_fits_table);
        for figure in &self.figures {
            page.figure(figure);
        }
        self.render_gate_inputs(page);
    }
}

/// (e) One learned profile (LS gates, shared or not, or learned scalars) decays roughly
/// exponentially with the LSC index, as the paper reports of its LS gates.
pub fn decay_claim(profile: &GateFit) -> Claim {
    let subject = learned_subject(profile.strategy);
    let name = format!("(e) {} {subject} decay with the LSC index on {}", profile.strategy_label, profile.model);
    let claimed = format!(
        "each run's final {subject} fitted as a * kappa_hat^(i-1) give kappa_hat < 1 (of interest: at most {})",
        format_number(DECAY_KAPPA_MAX)
    );
    let rests_on = format!("{} {} runs", profile.runs, profile.strategy_label);
    let (Some(interval), Some(reading)) = (&profile.kappa, decay_reading(profile)) else {
        return Claim {
            claimed,
            rests_on,
            ..not_measured(&name, "a kappa_hat interval needs 2 runs with learned coefficients on LSCs 1..N")
        };
    };
    let pooled = profile.fit.map_or(String::new(), |fit| {
        format!(" (fit of the means over runs: a {}, R^2 {})", format_number(fit.a), format_number(fit.r2))
    });
    let size = if reading.decay_of_interest_excluded { "excluded" } else { "not excluded" };
    Claim {
        claimed,
        finding: Finding::Verdict(reading.verdict),
        effect: format!(
            "kappa_hat {}{pooled}; a decay to {} or less {size}",
            interval_text(interval, ""),
            format_number(DECAY_KAPPA_MAX)
        ),
        rests_on,
        note: reading.note,
        ..not_measured(&name, "")
    }
}

fn gate_fit_frame(fits: &[GateFit]) -> PolarsResult<DataFrame> {
    df! {
        "model" => fits.iter().map(|fit| fit.model.as_str()).collect::<Vec<_>>(),
        "strategy" => fits.iter().map(|fit| fit.strategy_label.as_str()).collect::<Vec<_>>(),
        "initial_gate_means_by_lsc" => fits.iter().map(|fit| join_numbers(&fit.initial_means)).collect::<Vec<_>>(),
        "final_gate_means_by_lsc" => fits.iter().map(|fit| join_numbers(&fit.final_means)).collect::<Vec<_>>(),
        "final_gate_spread_by_lsc" => fits.iter().map(|fit| join_numbers(&fit.final_spread)).collect::<Vec<_>>(),
        "moved_by_lsc" => fits.iter().map(|fit| fit.moved.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("; ")).collect::<Vec<_>>(),
        "per_run_kappa_hat_mean" => fits.iter().map(|fit| fit.kappa.map(|k| k.estimate)).collect::<Vec<_>>(),
        "per_run_kappa_hat_low" => fits.iter().map(|fit| fit.kappa.map(|k| k.low)).collect::<Vec<_>>(),
        "per_run_kappa_hat_high" => fits.iter().map(|fit| fit.kappa.map(|k| k.high)).collect::<Vec<_>>(),
        "a" => fits.iter().map(|fit| fit.fit.map(|fit| fit.a)).collect::<Vec<_>>(),
        "kappa_hat" => fits.iter().map(|fit| fit.fit.map(|fit| fit.kappa_hat)).collect::<Vec<_>>(),
        "r2" => fits.iter().map(|fit| fit.fit.map(|fit| fit.r2)).collect::<Vec<_>>(),
    }
}

const GATE_INPUT_HEADERS: [&str; 11] = [
    "model",
    "strategy",
    "LSC i",
    "final gate mean",
    "gate sd (tokens, samples)",
    "input mean",
    "input RMS",
    "input sd over positions",
    "input sd over samples",
    "cosine to LSC 1's",
    "distance to LSC 1's / LSC 1's sd over samples",
];

/// One row per LSC of each profile, in [`GATE_INPUT_HEADERS`] order.
pub fn gate_input_cells(profiles: &[GateInputProfile]) -> Vec<Vec<TableCell>> {
    profiles
        .iter()
        .flat_map(|profile| {
            let spread = profile.lscs.iter().find(|lsc| lsc.lsc == 1).and_then(|lsc| lsc.input(GateInput::SampleSd));
            profile.lscs.iter().map(move |lsc| {
                let distance = lsc.input(GateInput::DistanceToLsc1).zip(spread).map(|(d, s)| d / s);
                vec![
                    TableCell::Text(profile.model.clone()),
                    TableCell::Text(profile.strategy_label.clone()),
                    TableCell::Number(Some(f64::from(lsc.lsc))),
                    TableCell::Number(lsc.gate_mean),
                    TableCell::Number(lsc.gate_sd),
                    TableCell::Number(lsc.input(GateInput::Mean)),
                    TableCell::Number(lsc.input(GateInput::Rms)),
                    TableCell::Number(lsc.input(GateInput::PositionSd)),
                    TableCell::Number(lsc.input(GateInput::SampleSd)),
                    TableCell::Number(lsc.input(GateInput::CosineToLsc1)),
                    TableCell::Number(distance),
                ]
            })
        })
        .collect()
}

/// The table behind [`gate_input_cells`], one row per model, strategy and LSC, the summaries under
/// their diagnostics names.
pub fn gate_inputs_frame(profiles: &[GateInputProfile]) -> PolarsResult<DataFrame> {
    let rows: Vec<(&GateInputProfile, &LscGateInput)> =
        profiles.iter().flat_map(|profile| profile.lscs.iter().map(move |lsc| (profile, lsc))).collect();
    let mut columns = vec![
        Column::new("model".into(), rows.iter().map(|(profile, _)| profile.model.as_str()).collect::<Vec<_>>()),
        Column::new(
            "strategy".into(),
            rows.iter().map(|(profile, _)| profile.strategy_label.as_str()).collect::<Vec<_>>(),
        ),
        Column::new("runs".into(), rows.iter().map(|(profile, _)| profile.runs as u32).collect::<Vec<_>>()),
        Column::new("lsc".into(), rows.iter().map(|(_, lsc)| lsc.lsc).collect::<Vec<_>>()),
        Column::new(Quantity::GateMean.name().into(), rows.iter().map(|(_, lsc)| lsc.gate_mean).collect::<Vec<_>>()),
        Column::new(Quantity::GateStd.name().into(), rows.iter().map(|(_, lsc)| lsc.gate_sd).collect::<Vec<_>>()),
    ];
    for input in GateInput::ALL {
        columns.push(Column::new(
            input.quantity().name().into(),
            rows.iter().map(|(_, lsc)| lsc.input(input)).collect::<Vec<_>>(),
        ));
    }
    DataFrame::new_infer_height(columns)
}

/// Figure 4: per model and strategy with learned coefficients (LS gates, learned scalars), the
/// coefficient of every LSC over training and the final mean against LSC index with its
/// exponential fit.
fn gate_figures(ctx: &ReportContext, gate_fits: &[GateFit]) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for (model_index, model) in ctx.models.iter().enumerate() {
        for group in ctx.groups_of(model) {
            let Some(gates) =
                gate_fits.iter().find(|fit| fit.model == *model && fit.strategy_label == group.strategy_label)
            else {
                continue;
            };
            let Some(quantity) = group.strategy.learned_quantity() else { continue };
            let (name, value) =
                if quantity == Quantity::GateMean { ("gates", "mean gate") } else { ("learned scalars", "scalar") };
            let over_training =
                BandPanel::per_lsc(format!("{} {name} over training", group.strategy_label), &gate_curves(group));
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

/// `text` with every character other than ASCII letters, digits and `-` replaced by `_`, for file
/// names.
fn slug(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}
