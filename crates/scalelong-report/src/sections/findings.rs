//! "What this sweep found": the regime of the runs beside the paper's, a few sentences on what
//! held, and the claims table. It opens the page, but its rows are the claims every other section
//! judged, so it is built from them, last.

use scalelong_analysis::dose_response::PredictedOrdering;
use scalelong_analysis::run_rules::RunOutcome;
use scalelong_analysis::verdict::Verdict;

use super::methods::schedule_text;
use super::{ReportContext, Section};
use crate::assess::Judged;
use crate::claims::{Claim, Finding};
use crate::format_number;
use crate::page::{Page, TableCell, escape};

pub struct Findings<'a> {
    ctx: &'a ReportContext<'a>,
    /// In the order of the table.
    claims: Vec<Claim>,
}

impl<'a> Findings<'a> {
    pub fn new(ctx: &'a ReportContext<'a>, claims: Vec<Claim>) -> Self {
        Self { ctx, claims }
    }
}

impl Section for Findings<'_> {
    fn render(&self, page: &mut Page) {
        page.push("<h2>What this sweep found</h2>\n");
        page.push(&regime_paragraph(self.ctx));
        page.push(&format!("<p id=\"claims\">{}</p>\n", escape(&summary(&self.claims))));
        // Verdicts about runs still learning, or not all there, are about a moment, not an outcome.
        let judged = self.ctx.judged;
        let count = |f: &dyn Fn(&Judged) -> bool| judged.iter().filter(|j| f(j)).count();
        let unfinished = count(&|j| j.assessment.status == RunOutcome::Unfinished);
        let not_plateaued = count(&|j| {
            j.assessment.status == RunOutcome::Trained && j.assessment.plateau.as_ref().is_some_and(|p| !p.plateaued)
        });
        let mut caveats = Vec::new();
        if unfinished > 0 {
            caveats.push(format!("{unfinished} of {} runs are unfinished or were never evaluated", judged.len()));
        }
        if not_plateaued > 0 {
            caveats.push(format!(
                "{not_plateaued} trained runs had not reached a plateau: their held-out loss was still falling, so their \
                 comparisons describe a point on the way, not where the runs end"
            ));
        }
        if !caveats.is_empty() {
            page.push(&format!("<p class=\"flag\">Read with care: {}.</p>\n", escape(&caveats.join("; "))));
        }
        let rows: Vec<Vec<TableCell>> = self
            .claims
            .iter()
            .map(|claim| {
                vec![
                    TableCell::Text(claim.name.clone()),
                    TableCell::Text(claim.claimed.clone()),
                    TableCell::Html(format!("<span class=\"{}\">{}</span>", claim.finding.class(), claim.finding)),
                    TableCell::Text(claim.size.clone()),
                    TableCell::Text(claim.effect.clone()),
                    TableCell::Text(claim.p_value.clone()),
                    TableCell::Text(claim.detectable.clone()),
                    TableCell::Text(claim.rests_on.clone()),
                    TableCell::Text(claim.note.clone()),
                ]
            })
            .collect();
        page.html_table(
            &[
                "claim",
                "claimed effect (stated before the numbers)",
                "direction",
                "size of interest",
                "measured, 95% interval",
                "p (Holm)",
                "smallest detectable",
                "rests on",
                "note",
            ],
            &rows,
        );
    }
}

/// The regime of these runs beside the paper's, above the claims, so that a null here is not read as a
/// refutation of the paper and a positive not as a confirmation at its scale.
fn regime_paragraph(ctx: &ReportContext) -> String {
    format!(
        "<p id=\"regime\" class=\"flag\">Regime: {} steps at batch {} on {} ({}), learning rate {} ({}) after {} \
         warm-up steps. The paper's: 500k steps at batch 128 on CIFAR-10 with the width-512, depth-12 U-ViT-S/2, \
         AdamW lr 2e-4 (betas 0.99/0.999) constant after 2.5k warm-up steps. These are small networks trained briefly on \
         a CPU: a null here does not refute the paper's claims at its scale, and a positive does not confirm \
         them there.</p>\n",
        escape(&ctx.distinct(|run| run.steps.to_string())),
        escape(&ctx.distinct(|run| run.config.batch_size.to_string())),
        escape(&ctx.distinct(|run| run.config.data.dataset.kind().to_string())),
        escape(&ctx.models.join(", ")),
        escape(&ctx.distinct(|run| format_number(run.lr))),
        escape(&ctx.distinct(|run| schedule_text(run.config.optimizer.schedule))),
        escape(&ctx.distinct(|run| run.config.warmup_steps.to_string())),
    )
}

/// A few plain sentences above the table: what held, what did not, what the sweep cannot tell.
fn summary(claims: &[Claim]) -> String {
    let count = |finding| claims.iter().filter(|claim| claim.finding == finding).count();
    let names = |finding| {
        claims.iter().filter(|claim| claim.finding == finding).map(|claim| claim.name.as_str()).collect::<Vec<_>>()
    };
    let mut text = format!(
        "{} claims were tested: {} held (the claimed direction established), {} did not hold (the opposite direction \
         established), {} had no direction established and {} could not be measured here; of the bounds' \
         orderings, {} were observed and {} not observed.",
        claims.len(),
        count(Finding::Verdict(Verdict::Held)),
        count(Finding::Verdict(Verdict::DidNotHold)),
        count(Finding::Verdict(Verdict::Inconclusive)),
        count(Finding::NotMeasured),
        count(Finding::Ordering(PredictedOrdering::Observed)),
        count(Finding::Ordering(PredictedOrdering::NotObserved))
    );
    for (finding, phrase) in [
        (Finding::Verdict(Verdict::Held), "Held"),
        (Finding::Verdict(Verdict::DidNotHold), "Did not hold"),
        (Finding::Ordering(PredictedOrdering::Observed), "Orderings observed"),
    ] {
        let held = names(finding);
        if !held.is_empty() {
            text.push_str(&format!(" {phrase}: {}.", held.join("; ")));
        }
    }
    if count(Finding::Verdict(Verdict::Inconclusive)) > 0 {
        text.push_str(
            " A claim without an established direction is not a claim refuted: its size column says whether the \
             sweep excludes the effect of interest (then the effect, if any, is smaller) or not (then more seeds \
             would be needed).",
        );
    }
    text
}
