//! "The runs": one row per run, its status (trained, collapsed, diverged, unfinished), plateau,
//! spikes and final numbers, also written as `summary.{csv,parquet}`.

use anyhow::Result;
use polars::prelude::*;
use scalelong_analysis::run_rules::RunOutcome;

use super::{ReportContext, Section};
use crate::assess::Judged;
use crate::format_number;
use crate::page::{Page, TableCell, escape};
use crate::tables::Table;

pub struct Runs {
    rows: Vec<SummaryRow>,
    table: Table,
}

impl Runs {
    pub fn build(ctx: &ReportContext) -> Result<Self> {
        let rows = summary_rows(ctx.judged);
        let table = Table { stem: "summary", frame: summary_frame(&rows)? };
        Ok(Self { rows, table })
    }
}

impl Section for Runs {
    fn tables(&self) -> Vec<&Table> {
        vec![&self.table]
    }

    fn render(&self, page: &mut Page) {
        page.push("<h2>The runs</h2>\n");
        let not_plateaued = self.rows.iter().filter(|row| row.plateaued == Some(false)).count();
        let not_trained = self.rows.iter().filter(|row| row.status != RunOutcome::Trained).count();
        page.push(&format!(
            "<p>{} runs: {} did not train (collapsed, diverged or unfinished), {} trained runs did not plateau{}.</p>\n",
            self.rows.len(),
            not_trained,
            not_plateaued,
            if not_plateaued > 0 { " (flagged below): their final numbers are a snapshot mid-descent" } else { "" }
        ));
        let rows: Vec<Vec<TableCell>> = self
            .rows
            .iter()
            .map(|row| {
                let plateau = match (row.tail_drop, row.plateaued) {
                    (Some(drop), Some(true)) => TableCell::Text(format!("yes ({}%)", format_number(drop * 100.0))),
                    (Some(drop), _) => TableCell::Html(format!(
                        "<span class=\"flag\">no ({}%)</span>",
                        escape(&format_number(drop * 100.0))
                    )),
                    _ => TableCell::Text("not evaluated".to_string()),
                };
                vec![
                    TableCell::Text(row.run_id.clone()),
                    TableCell::Text(row.model.clone()),
                    TableCell::Html(page.strategy(&row.strategy_label)),
                    TableCell::Text(row.seed.to_string()),
                    TableCell::Number(Some(row.lr)),
                    TableCell::Text(row.status_text.clone()),
                    TableCell::Number(row.heldout_loss),
                    plateau,
                    TableCell::Text(format!("{} / {}", row.loss_spikes, row.grad_spikes)),
                    TableCell::Number(row.fd),
                    TableCell::Number(row.classifier_accuracy),
                ]
            })
            .collect();
        page.html_table(
            &[
                "run",
                "model",
                "strategy",
                "seed",
                "lr",
                "status",
                "final held-out loss",
                "plateau (drop over the last fifth)",
                "spikes (loss / gradient norm)",
                "FD",
                "classifier accuracy",
            ],
            &rows,
        );
        page.table_links(&self.table);
    }
}

/// One run: what became of it and its final numbers.
struct SummaryRow {
    run_id: String,
    model: String,
    strategy_label: String,
    seed: u64,
    lr: f64,
    /// trained, collapsed, diverged or unfinished, with the step where it stopped.
    status: RunOutcome,
    status_text: String,
    heldout_loss: Option<f64>,
    zero_loss: f64,
    /// The held-out loss's relative drop over the last fifth of training (`None`: not covered).
    tail_drop: Option<f64>,
    plateaued: Option<bool>,
    loss_spikes: usize,
    grad_spikes: usize,
    fd: Option<f64>,
    classifier_accuracy: Option<f64>,
}

fn summary_rows(judged: &[Judged]) -> Vec<SummaryRow> {
    judged
        .iter()
        .map(|Judged { run, assessment }| {
            let eval = run.last_eval.as_ref();
            let stopped = run.status.as_ref().map(|status| status.step);
            let status_text = match (assessment.status, stopped) {
                (RunOutcome::Diverged, Some(step)) => format!("diverged at step {step}"),
                (RunOutcome::Unfinished, Some(step)) => format!("unfinished (step {step} of {})", run.steps),
                (RunOutcome::Unfinished, None) => "unfinished (no status.json)".to_string(),
                (status, _) => status.text().to_string(),
            };
            SummaryRow {
                run_id: run.id.clone(),
                model: run.model.clone(),
                strategy_label: run.strategy_label.clone(),
                seed: run.seed,
                lr: run.lr,
                status: assessment.status,
                status_text,
                heldout_loss: assessment.final_heldout,
                zero_loss: assessment.zero_loss,
                tail_drop: assessment.plateau.as_ref().map(|plateau| plateau.relative_drop),
                plateaued: assessment.plateau.as_ref().map(|plateau| plateau.plateaued),
                loss_spikes: assessment.loss_spikes,
                grad_spikes: assessment.grad_spikes,
                fd: eval.and_then(|eval| eval.fd).filter(|fd| fd.is_finite()),
                classifier_accuracy: eval.and_then(|eval| eval.classifier_accuracy),
            }
        })
        .collect()
}

fn summary_frame(rows: &[SummaryRow]) -> PolarsResult<DataFrame> {
    df! {
        "run_id" => rows.iter().map(|row| row.run_id.as_str()).collect::<Vec<_>>(),
        "model" => rows.iter().map(|row| row.model.as_str()).collect::<Vec<_>>(),
        "strategy" => rows.iter().map(|row| row.strategy_label.as_str()).collect::<Vec<_>>(),
        "seed" => rows.iter().map(|row| row.seed).collect::<Vec<_>>(),
        "lr" => rows.iter().map(|row| row.lr).collect::<Vec<_>>(),
        "status" => rows.iter().map(|row| row.status_text.as_str()).collect::<Vec<_>>(),
        "heldout_loss" => rows.iter().map(|row| row.heldout_loss).collect::<Vec<_>>(),
        "zero_predictor_loss" => rows.iter().map(|row| row.zero_loss).collect::<Vec<_>>(),
        "last_fifth_relative_drop" => rows.iter().map(|row| row.tail_drop).collect::<Vec<_>>(),
        "plateaued" => rows.iter().map(|row| row.plateaued).collect::<Vec<_>>(),
        "loss_spikes" => rows.iter().map(|row| row.loss_spikes as u64).collect::<Vec<_>>(),
        "grad_norm_spikes" => rows.iter().map(|row| row.grad_spikes as u64).collect::<Vec<_>>(),
        "fd" => rows.iter().map(|row| row.fd).collect::<Vec<_>>(),
        "classifier_accuracy" => rows.iter().map(|row| row.classifier_accuracy).collect::<Vec<_>>(),
    }
}
