//! The report page: one self-contained HTML file. Figures and samples are embedded as PNG data URIs
//! (the page needs nothing else to display offline) and also linked as the files beside it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use scalelong_analysis::dose_response::{ALPHA, PERMUTATIONS};
use scalelong_analysis::inference::{Interval, LEVEL, POWER};
use scalelong_analysis::theorems::{DESCENT_REMAINING, MIN_SETTLED_RECORDS};

use super::ReportContent;
use super::figures::Figure;
use super::format_number;
use crate::claims::{
    CLAIMED_FD_RATIO, CLAIMED_LR_RATIO, CLAIMED_SHARE_DIFFERENCE, CLAIMED_SPEEDUP, SMALLEST_EFFECT, summary,
};
use crate::learned;
use crate::sweep_data::RunData;
use scalelong_analysis::run_rules::RunOutcome;
use scalelong_analysis::run_rules::{COLLAPSE_FRACTION, PLATEAU_MAX_DROP, PLATEAU_TAIL, SPIKE_K, SPIKE_WINDOW};
use scalelong_schema::{EditKind, SkipScaling};

/// Counts the images that did not decode into `#broken-images` once the page has loaded, so a
/// headless browser's DOM dump shows whether every embedded image is valid.
const IMAGE_CHECK_SCRIPT: &str = r#"<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (image) { return !(image.complete && image.naturalWidth > 0); });
  document.getElementById("image-count").textContent = String(images.length);
  document.getElementById("broken-images").textContent = String(broken.length);
});
</script>"#;

const STYLE: &str = r#"<style>
body { font-family: "DejaVu Sans", Verdana, sans-serif; margin: 2em auto; max-width: 1320px; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta, figcaption, .note { color: #555; }
.note { font-style: italic; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 0.2em; margin-right: 0.3em; vertical-align: -0.1em; }
.held { color: #1a7f37; font-weight: bold; } .not-held { color: #b42318; font-weight: bold; }
.inconclusive { color: #9a6700; font-weight: bold; }
.flag { color: #b42318; font-weight: bold; }
.samples img { image-rendering: pixelated; width: 192px; display: block; }
#claims { font-size: 1.05em; }
</style>"#;

/// A table cell: text, or a number right-aligned.
pub enum Cell {
    Text(String),
    Number(Option<f64>),
    /// Trusted markup built by this module (swatches, images).
    Html(String),
}

pub fn render(content: &ReportContent) -> String {
    let sweep = content.sweep;
    let mut page = String::new();
    page.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>ScaleLong report: {}</title>\n{STYLE}\n</head>\n<body>\n",
        escape(&sweep.name)
    ));
    page.push_str(&format!("<h1>ScaleLong report: {}</h1>\n", escape(&sweep.name)));
    let strategies: Vec<String> =
        content.strategies.iter().map(|(_, label)| format!("{}{}", swatch(content, label), escape(label))).collect();
    page.push_str(&format!(
        "<p class=\"meta\">{} runs read from <code>{}</code>. Models: {}. Strategies: {}.{}</p>\n",
        sweep.runs.len(),
        escape(&content.sweep_dir.display().to_string()),
        escape(&content.models.join(", ")),
        strategies.join(", "),
        if sweep.not_started.is_empty() {
            String::new()
        } else {
            format!(" Listed in sweep.json but not started: {}.", escape(&sweep.not_started.join(", ")))
        }
    ));

    claims_section(content, &mut page);
    methods_section(content, &mut page);
    runs_section(content, &mut page);
    side_by_side_section(content, &mut page);
    frontier_section(content, &mut page);
    page.push_str("<h2>Held-out loss</h2>\n");
    optional_figure(&mut page, content.heldout_figure.as_ref(), "No run was evaluated, so the held-out loss was");

    page.push_str("<h2>Training loss</h2>\n");
    optional_figure(&mut page, content.loss_figure.as_ref(), "No run logged a training loss");
    page.push_str("<h2>Hidden-feature norm (the paper's Figure 1)</h2>\n");
    optional_figure(&mut page, content.feature_norm_figure.as_ref(), "The feature norm of the last decoder block was");
    page.push_str("<h2>Per-LSC feature and gradient norms</h2>\n");
    figures_or_note(&mut page, content.heatmap_figures, "Per-LSC feature and gradient norms were");
    gates_section(content, &mut page);
    skips_section(content, &mut page);
    theorems_section(content, &mut page);
    samples_section(content, &mut page);

    page.push_str(
        "<footer class=\"meta\"><p>Images on this page: <span id=\"image-count\">not counted (scripts off)</span>; \
         failed to decode: <span id=\"broken-images\">not counted (scripts off)</span>.</p></footer>\n",
    );
    page.push_str(IMAGE_CHECK_SCRIPT);
    page.push_str("\n</body>\n</html>\n");
    page
}

/// `estimate [low, high]`, or blank.
fn interval_cell(interval: Option<&Interval>) -> Cell {
    match interval {
        Some(i) => {
            Cell::Text(format!("{} [{}, {}]", format_number(i.estimate), format_number(i.low), format_number(i.high)))
        }
        None => Cell::Text(String::new()),
    }
}

fn claims_section(content: &ReportContent, page: &mut String) {
    page.push_str("<h2>What this sweep found</h2>\n");
    page.push_str(&regime_paragraph(content));
    page.push_str(&format!("<p id=\"claims\">{}</p>\n", escape(&summary(content.claims))));
    // Verdicts about runs still learning, or not all there, are about a moment, not an outcome.
    let count = |f: &dyn Fn(&crate::tables::SummaryRow) -> bool| content.summary.iter().filter(|row| f(row)).count();
    let unfinished = count(&|row| row.status == RunOutcome::Unfinished);
    let not_plateaued = count(&|row| row.status == RunOutcome::Trained && row.plateaued == Some(false));
    let mut caveats = Vec::new();
    if unfinished > 0 {
        caveats.push(format!("{unfinished} of {} runs are unfinished or were never evaluated", content.summary.len()));
    }
    if not_plateaued > 0 {
        caveats.push(format!(
            "{not_plateaued} trained runs had not reached a plateau: their held-out loss was still falling, so their \
             comparisons describe a point on the way, not where the runs end"
        ));
    }
    if !caveats.is_empty() {
        page.push_str(&format!("<p class=\"flag\">Read with care: {}.</p>\n", escape(&caveats.join("; "))));
    }
    let rows: Vec<Vec<Cell>> = content
        .claims
        .iter()
        .map(|claim| {
            vec![
                Cell::Text(claim.name.clone()),
                Cell::Text(claim.claimed.clone()),
                Cell::Html(format!("<span class=\"{}\">{}</span>", claim.outcome.class(), claim.outcome.text())),
                Cell::Text(claim.size.clone()),
                Cell::Text(claim.effect.clone()),
                Cell::Text(claim.p_value.clone()),
                Cell::Text(claim.detectable.clone()),
                Cell::Text(claim.rests_on.clone()),
                Cell::Text(claim.note.clone()),
            ]
        })
        .collect();
    page.push_str(&table(
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
    ));
}

/// The regime of these runs beside the paper's, above the claims, so that a null here is not read as a
/// refutation of the paper and a positive not as a confirmation at its scale.
fn regime_paragraph(content: &ReportContent) -> String {
    let distinct = |f: &dyn Fn(&RunData) -> String| distinct_values(&content.sweep.runs, f);
    format!(
        "<p id=\"regime\" class=\"flag\">Regime: {} steps at batch {} on {} ({}), learning rate {} ({}) after {} \
         warm-up steps. The paper's: 500k steps at batch 128 on CIFAR-10 with the width-512, depth-12 U-ViT-S/2, \
         AdamW lr 2e-4 (betas 0.99/0.999) constant after 2.5k warm-up steps. These are small networks trained briefly on \
         a CPU: a null here does not refute the paper's claims at its scale, and a positive does not confirm \
         them there.</p>\n",
        escape(&distinct(&|run| run.steps.to_string())),
        escape(&distinct(&|run| run.config.batch_size.to_string())),
        escape(&distinct(&|run| run.config.data.dataset.kind().to_string())),
        escape(&content.models.join(", ")),
        escape(&distinct(&|run| format_number(run.lr))),
        escape(&distinct(&|run| schedule_text(run.config.optimizer.schedule))),
        escape(&distinct(&|run| run.config.warmup_steps.to_string())),
    )
}

/// The distinct values of `f` over `runs`, sorted and joined: what the runs' configs say of one key.
fn distinct_values(runs: &[RunData], f: &dyn Fn(&RunData) -> String) -> String {
    let mut values: Vec<String> = runs.iter().map(f).collect();
    values.sort();
    values.dedup();
    values.join(", ")
}

fn schedule_text(schedule: scalelong_schema::LrSchedule) -> String {
    match schedule {
        scalelong_schema::LrSchedule::Constant => "constant".to_string(),
        scalelong_schema::LrSchedule::Cosine { final_fraction } => {
            format!("cosine decay to {} of it", format_number(final_fraction))
        }
    }
}

fn methods_section(content: &ReportContent, page: &mut String) {
    page.push_str("<h2>How the runs were judged</h2>\n");
    let distinct = |f: &dyn Fn(&RunData) -> String| distinct_values(&content.sweep.runs, f);
    page.push_str(&format!(
        "<p>Design, as the runs' configs say: models {}; strategies {}; seeds {}; {} steps at batch {}; AdamW with \
         learning rate {} (beta1 {}, beta2 {}, weight decay {}), {} warm-up steps, then {}; EMA {}; the held-out \
         loss of the EMA weights on {} test images in {} timestep bins at every evaluation ({}); the FD on {} \
         samples.</p>\n",
        escape(&content.models.join(", ")),
        escape(&content.strategies.iter().map(|(_, label)| label.as_str()).collect::<Vec<_>>().join(", ")),
        escape(&distinct(&|run| run.seed.to_string())),
        escape(&distinct(&|run| run.steps.to_string())),
        escape(&distinct(&|run| run.config.batch_size.to_string())),
        escape(&distinct(&|run| format_number(run.lr))),
        escape(&distinct(&|run| format_number(run.config.optimizer.beta1))),
        escape(&distinct(&|run| format_number(run.config.optimizer.beta2))),
        escape(&distinct(&|run| format_number(run.config.optimizer.weight_decay))),
        escape(&distinct(&|run| run.config.warmup_steps.to_string())),
        escape(&distinct(&|run| schedule_text(run.config.optimizer.schedule))),
        escape(&distinct(&|run| format_number(run.config.ema_decay))),
        escape(&distinct(&|run| run.config.eval.heldout_images.to_string())),
        escape(&distinct(&|run| run.config.eval.t_bins.to_string())),
        escape(&distinct(&|run| match run.config.checkpoint_every {
            0 => "at the end only".to_string(),
            every => format!("every {every} steps and at the end"),
        })),
        escape(&distinct(&|run| run.config.eval.fd_samples.to_string())),
    ));
    page.push_str(&format!(
        "<p>A run's status: <b>diverged</b> when its loss or gradient went non-finite; <b>collapsed</b> when it \
         finished but its final held-out loss is at least {collapse} of the zero predictor's (the loss of \
         predicting no noise, about 1): finite but not learning; <b>trained</b> otherwise. Every finished run \
         enters the paired comparisons with strategy 1 (a collapsed or diverged run is an outcome: it counts as a \
         failure, ends at the zero predictor's loss and reaches no speed target); a cell's mean loss is over its \
         trained runs. <b>Plateau</b>: the held-out loss fell by less than \
         {drop}% over the last {tail}% of training (the loss at the step {tail}% before the end is interpolated \
         between evaluations); a run that did not plateau is flagged. <b>Spikes</b>: logged training losses or \
         gradient norms above the mean of the {window} logged values before them by more than {k} of their \
         standard deviations.</p>\n",
        collapse = format_number(COLLAPSE_FRACTION),
        drop = format_number(PLATEAU_MAX_DROP * 100.0),
        tail = format_number(PLATEAU_TAIL * 100.0),
        window = SPIKE_WINDOW,
        k = format_number(SPIKE_K),
    ));
    page.push_str(&format!(
        "<p>Intervals are {level}%. Over a cell's seeds: Student t. Against strategy 1: paired by seed (runs with one \
         seed share their initialisation, data order, noise and held-out batch), by exact tests over the seed \
         pairs: McNemar's for failures (with Newcombe's paired score interval for the difference of failure \
         rates), and sign-flip tests for the log ratios of final losses, of steps to each speed target and of the \
         held-out curves' geometric means (intervals: the ratios the test does not reject). Speed targets are \
         held-out losses fixed in the sweep file before its runs; a run that never reaches one counts at its last \
         step (censored, which can only understate a difference). Holm's correction runs across the strategies \
         compared with 1, measure by measure. \
         The bounds (claims (b)-(d)) are read as dose-responses: each quantity against the bound's factor over \
         networks that differ only in their coefficients, within seeds (each seed's Spearman, averaged; a \
         permutation test of the networks within each seed, {permutations} permutations, one-sided; the predicted \
         ordering counts as observed at p <= {alpha}), at initialisation (`scalelong dose-response`: CS over a kappa \
         grid) and during training (the runs with fixed coefficients, after each run's descent: from the first \
         record where the probe loss is within {remaining}% of its fall, at least {settled} records). A bound is an \
         upper bound: an ordering not observed does not refute it. \
         Each claim is read twice. Its <b>direction</b>: <b>held</b> when its \
         interval (for the comparisons with strategy 1, its Holm-adjusted exact test) lies on the claimed side of no \
         effect; <b>did not hold</b> only when it lies on the other side; <b>not established</b> otherwise. Its \
         <b>size</b>: whether the interval excludes the effect of interest (for the comparisons with 1: 2 fewer \
         failures in 8 seeds, a 0.9x final loss or curve, a 1.2x speed-up to a target, the paper reporting about \
         {speedup}x; a correlation of {effect}, or -{effect} for the LSC importance; kappa_hat 0.9; a {lr}x larger \
         learning rate; an FD {fd_ratio}x the unedited one's; a low-frequency share {share} below the main \
         path's). \"1.2x excluded\" is not \"not faster\". The smallest detectable effect is the one a paired test over these \
         seeds finds with {power}% power at the measured spread.</p>\n",
        level = format_number(LEVEL * 100.0),
        permutations = PERMUTATIONS,
        alpha = format_number(ALPHA),
        remaining = format_number(DESCENT_REMAINING * 100.0),
        settled = MIN_SETTLED_RECORDS,
        speedup = format_number(CLAIMED_SPEEDUP),
        effect = format_number(SMALLEST_EFFECT),
        lr = format_number(CLAIMED_LR_RATIO),
        power = format_number(POWER * 100.0),
        fd_ratio = format_number(CLAIMED_FD_RATIO),
        share = format_number(-CLAIMED_SHARE_DIFFERENCE),
    ));
}

fn runs_section(content: &ReportContent, page: &mut String) {
    page.push_str("<h2>The runs</h2>\n");
    let not_plateaued = content.summary.iter().filter(|row| row.plateaued == Some(false)).count();
    let not_trained = content.summary.iter().filter(|row| row.status != RunOutcome::Trained).count();
    page.push_str(&format!(
        "<p>{} runs: {} did not train (collapsed, diverged or unfinished), {} trained runs did not plateau{}.</p>\n",
        content.summary.len(),
        not_trained,
        not_plateaued,
        if not_plateaued > 0 { " (flagged below): their final numbers are a snapshot mid-descent" } else { "" }
    ));
    let rows: Vec<Vec<Cell>> = content
        .summary
        .iter()
        .map(|row| {
            let plateau = match (row.tail_drop, row.plateaued) {
                (Some(drop), Some(true)) => Cell::Text(format!("yes ({}%)", format_number(drop * 100.0))),
                (Some(drop), _) => {
                    Cell::Html(format!("<span class=\"flag\">no ({}%)</span>", escape(&format_number(drop * 100.0))))
                }
                _ => Cell::Text("not evaluated".to_string()),
            };
            vec![
                Cell::Text(row.run_id.clone()),
                Cell::Text(row.model.clone()),
                Cell::Html(format!("{}{}", swatch(content, &row.strategy_label), escape(&row.strategy_label))),
                Cell::Text(row.seed.to_string()),
                Cell::Number(Some(row.lr)),
                Cell::Text(row.status_text.clone()),
                Cell::Number(row.heldout_loss),
                plateau,
                Cell::Text(format!("{} / {}", row.loss_spikes, row.grad_spikes)),
                Cell::Number(row.fd),
                Cell::Number(row.classifier_accuracy),
            ]
        })
        .collect();
    page.push_str(&table(
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
    ));
    page.push_str(&table_links(&content.table_files.summary));
}

fn side_by_side_section(content: &ReportContent, page: &mut String) {
    page.push_str("<h2>Strategies side by side</h2>\n");
    page.push_str("<p>Per cell, the mean over its trained seeds with a 95% Student t interval.</p>\n");
    let rows: Vec<Vec<Cell>> = content
        .cells
        .iter()
        .map(|cell| {
            vec![
                Cell::Text(cell.model.clone()),
                Cell::Html(format!("{}{}", swatch(content, &cell.strategy_label), escape(&cell.strategy_label))),
                Cell::Text(cell.setting.clone()),
                Cell::Text(format!(
                    "{} of {} ({} collapsed, {} diverged)",
                    cell.count(RunOutcome::Trained),
                    cell.runs.len(),
                    cell.count(RunOutcome::Collapsed),
                    cell.count(RunOutcome::Diverged)
                )),
                interval_cell(cell.final_loss.as_ref()),
                interval_cell(cell.fd.as_ref()),
            ]
        })
        .collect();
    page.push_str(&table(&["model", "strategy", "setting", "trained runs", "final held-out loss", "FD"], &rows));
    page.push_str(&table_links(&content.table_files.cells));
    if content.comparisons.is_empty() {
        page.push_str(&note("A strategy-1 run to compare with was"));
        return;
    }
    page.push_str(
        "<p>Against strategy 1, paired by seed over every seed both runs finished (a collapsed or diverged run \
         kept: it counts as a failure, ends at the zero predictor's loss and reaches no target): the difference of \
         failure rates (negative: fewer failures), the ratio of final held-out losses and of the curves' geometric \
         means (below 1: lower than strategy 1's), and the speed-up to each fixed target (above 1: gets there \
         first; a run that never does is counted at its last step, censored). Each with its 95% interval, the \
         exact p-value and the p-value after Holm's correction across the strategies, the direction that p \
         establishes, and whether the interval excludes the effect of interest.</p>\n",
    );
    let rows: Vec<Vec<Cell>> = content
        .comparisons
        .iter()
        .flat_map(|c| c.readings.iter().map(move |reading| (c, reading)))
        .map(|(c, reading)| {
            let of_interest = reading.measure.effect().claimed;
            vec![
                Cell::Text(c.model.clone()),
                Cell::Html(format!("{}{}", swatch(content, &c.strategy_label), escape(&c.strategy_label))),
                Cell::Text(c.setting.clone()),
                Cell::Text(c.seeds.len().to_string()),
                Cell::Text(reading.measure.name()),
                interval_cell(reading.interval.as_ref()),
                Cell::Text(format!(
                    "{} ({})",
                    reading.p_value.map_or("-".to_string(), format_number),
                    reading.p_holm.map_or("-".to_string(), format_number)
                )),
                Cell::Text(crate::tables::direction_text(reading.direction()).to_string()),
                Cell::Text(match reading.size_excluded() {
                    Some(true) => format!("{} excluded", format_number(of_interest)),
                    Some(false) => format!("{} not excluded", format_number(of_interest)),
                    None => String::new(),
                }),
                Cell::Text(if reading.censored > 0 { reading.censored.to_string() } else { String::new() }),
            ]
        })
        .collect();
    page.push_str(&table(
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
    ));
    page.push_str(&table_links(&content.table_files.comparisons));
}

fn frontier_section(content: &ReportContent, page: &mut String) {
    let Some(stable_rows) = content.stable_lr else { return };
    page.push_str("<h2>Stability frontier</h2>\n");
    page.push_str(
        "<p>The largest learning rate at which every seed of the strategy trained (neither collapsed nor diverged), \
         and per seed the largest at which that seed trained.",
    );
    if let Some(bisection) = stable_rows.iter().find_map(|row| row.bisection.as_ref()) {
        page.push_str(&format!(
            " Each seed's frontier was bracketed by bisection in log learning rate (<code>scalelong frontier</code>, \
             frontier.json) between a trained rate and a failed one {} times larger, the failed one in brackets; a seed \
             that trained at the top of the searched interval or failed at its bottom is censored and marked.",
            format_number(bisection.step_ratio)
        ));
    }
    page.push_str("</p>\n");
    let rows: Vec<Vec<Cell>> = stable_rows
        .iter()
        .map(|row| {
            vec![
                Cell::Text(row.model.clone()),
                Cell::Html(format!("{}{}", swatch(content, &row.strategy_label), escape(&row.strategy_label))),
                row.largest_stable_lr.map_or(Cell::Text("none".to_string()), |lr| Cell::Number(Some(lr))),
                Cell::Text(crate::tables::per_seed_text(row)),
                interval_cell(row.ratio_to_1.as_ref()),
                Cell::Text(row.lrs_tried.iter().map(|lr| format_number(*lr)).collect::<Vec<_>>().join(", ")),
            ]
        })
        .collect();
    page.push_str(&table(
        &[
            "model",
            "strategy",
            "largest stable lr",
            "per seed",
            "over strategy 1's (95% interval)",
            "learning rates run",
        ],
        &rows,
    ));
    page.push_str(&table_links(&content.table_files.stable_lr));
    for figure in content.frontier_figures {
        page.push_str(&figure_html(figure));
    }
}

fn gates_section(content: &ReportContent, page: &mut String) {
    page.push_str("<h2>Learned coefficients: LS gates and learned scalars</h2>\n");
    if !content.has_learned_runs {
        page.push_str(&note("The sweep has no LS or learned-scalar run, so learned coefficients were"));
        return;
    }
    if content.gate_fits.is_empty() {
        page.push_str(&note("The learned coefficients' statistics were"));
        return;
    }
    page.push_str(
        "<p>Per LSC i (1 = outermost): the mean gate (LS) or the learned scalar at the first and the last \
         diagnostics record (mean over the runs), the seed-to-seed spread of the last (standard deviation over runs), \
         and whether they moved from their start by more than that spread. The fit: a * kappa_hat^(i-1) to the final means (pooled), and \
         kappa_hat fitted per run with its 95% interval over runs.</p>\n",
    );
    let rows: Vec<Vec<Cell>> = content
        .gate_fits
        .iter()
        .map(|gates| {
            let per_lsc = |values: &[f64]| values.iter().map(|v| format_number(*v)).collect::<Vec<_>>().join(", ");
            let moved = gates.moved.iter().map(|m| if *m { "yes" } else { "no" }).collect::<Vec<_>>().join(", ");
            vec![
                Cell::Text(gates.model.clone()),
                Cell::Html(format!("{}{}", swatch(content, &gates.strategy_label), escape(&gates.strategy_label))),
                Cell::Text(per_lsc(&gates.initial_means)),
                Cell::Text(per_lsc(&gates.final_means)),
                Cell::Text(per_lsc(&gates.final_spread)),
                if gates.any_moved() {
                    Cell::Text(moved)
                } else {
                    Cell::Html(format!("<span class=\"flag\">{} (none moved)</span>", escape(&moved)))
                },
                Cell::Number(gates.fit.map(|fit| fit.a)),
                Cell::Number(gates.fit.map(|fit| fit.kappa_hat)),
                Cell::Number(gates.fit.map(|fit| fit.r2)),
                interval_cell(gates.kappa.as_ref()),
            ]
        })
        .collect();
    page.push_str(&table(
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
    ));
    page.push_str(&table_links(&content.table_files.gate_fits));
    for figure in content.gate_figures {
        page.push_str(&figure_html(figure));
    }
    gate_inputs_part(content, page);
}

/// What the LS gates saw, and whether a shared gate could tell the LSCs apart (learned.rs).
fn gate_inputs_part(content: &ReportContent, page: &mut String) {
    if !content.gate_fits.iter().any(|fit| matches!(fit.strategy, SkipScaling::Learnable { .. })) {
        return;
    }
    page.push_str("<h3>What the LS gates see</h3>\n");
    if content.gate_inputs.is_empty() {
        page.push_str(&note("The LS gates' pooled inputs were"));
        return;
    }
    page.push_str(
        "<p>A gate turns its LSC's pooled input p_i (for the U-ViT the skip averaged over its D channels, one number \
         per token; for the conv UNet averaged over space, one per channel) into that LSC's coefficients, so a gate \
         shared by all LSCs gives two LSCs different coefficients only where their inputs differ. Per LSC, at each \
         run's last diagnostics record (mean over runs): the mean gate and its spread, the input's mean, RMS and \
         standard deviations over positions and over probe samples, its cosine to LSC 1's input, and its RMS \
         distance from LSC 1's input over the spread of LSC 1's input over samples (below 1, two LSCs' inputs \
         differ less than two images' inputs at one LSC; docs/method.md §3.4).</p>\n",
    );
    for profile in content.gate_inputs {
        page.push_str(&format!(
            "<p>{}<b>{} on {}</b> ({} runs). {}</p>\n",
            swatch(content, &profile.strategy_label),
            escape(&profile.strategy_label),
            escape(&profile.model),
            profile.runs,
            escape(&learned::separation_text(profile))
        ));
    }
    page.push_str(&table(&learned::GATE_INPUT_HEADERS, &learned::gate_input_cells(content.gate_inputs)));
    page.push_str(&table_links(&content.table_files.gate_inputs));
}

/// Sampling-time skip edits, the importance of each LSC and the skips' spectra (docs/method.md §3.5).
fn skips_section(content: &ReportContent, page: &mut String) {
    let skips = content.skips;
    page.push_str("<h2>Long skips at sampling time: edits, importance, spectra</h2>\n");
    if skips.edits.is_empty() && skips.spectral.is_empty() {
        page.push_str(&note(
            "No trained run has skip_eval.jsonl or low-frequency shares (set eval.skip_edits, or run `scalelong \
             skip-eval`), so sampling-time edits were",
        ));
        return;
    }
    let strategy_cell = |label: &str| Cell::Html(format!("{}{}", swatch(content, label), escape(label)));
    if !skips.edits.is_empty() {
        page.push_str(
            "<p>Each trained run's final EMA weights, unedited and under each setting, on the same held-out images \
             and noise and with the same FD sampling noise: every change is paired by run, with a 95% paired \
             Student t interval over the runs (the FD ratio on the log scale).</p>\n",
        );
        let rows: Vec<Vec<Cell>> = skips
            .edits
            .iter()
            .filter(|row| row.kind != EditKind::Importance)
            .map(|row| {
                vec![
                    Cell::Text(row.model.clone()),
                    strategy_cell(&row.strategy_label),
                    Cell::Text(row.setting.clone()),
                    Cell::Text(row.runs.to_string()),
                    interval_cell(row.heldout.as_ref()),
                    interval_cell(row.heldout_change.as_ref()),
                    interval_cell(row.fd.as_ref()),
                    interval_cell(row.fd_ratio.as_ref()),
                ]
            })
            .collect();
        page.push_str(&table(
            &["model", "strategy", "setting", "runs", "held-out loss", "change", "FD", "FD over unedited"],
            &rows,
        ));
        page.push_str(&table_links(&content.table_files.skip_edits));
    }
    if !skips.importance.is_empty() {
        page.push_str(
            "<p>The importance of LSC i: the held-out loss increase when it alone is scaled by the factor (mean over \
             runs, LSC 1 first), Spearman's correlation of that increase with i per run (mean with its 95% \
             interval over runs; negative: importance falls inward), and the coefficient each LSC carried at the \
             end of training.</p>\n",
        );
        let join = |values: Vec<String>| values.join(", ");
        let rows: Vec<Vec<Cell>> = skips
            .importance
            .iter()
            .map(|p| {
                vec![
                    Cell::Text(p.model.clone()),
                    strategy_cell(&p.strategy_label),
                    Cell::Number(Some(p.factor)),
                    Cell::Text(join(
                        p.increase
                            .iter()
                            .map(|(_, i)| i.map_or("-".to_string(), |i| format_number(i.estimate)))
                            .collect(),
                    )),
                    interval_cell(p.spearman.as_ref()),
                    Cell::Text(join(p.coefficients.iter().map(|(_, c)| format_number(*c)).collect())),
                ]
            })
            .collect();
        page.push_str(&table(
            &["model", "strategy", "factor", "loss increase, LSC 1..N", "Spearman with i", "coefficient, LSC 1..N"],
            &rows,
        ));
        page.push_str(&table_links(&content.table_files.importance));
    }
    if !skips.spectral.is_empty() {
        page.push_str(
            "<p>The share of energy in the spatial frequencies within 1 of zero (per axis of the feature map or token \
             grid) at the last diagnostics record, of each skip and of the main path it is fused with (mean over \
             runs, LSC 1 first), and per run their difference averaged over LSCs (mean with its 95% interval).</p>\n",
        );
        let rows: Vec<Vec<Cell>> = skips
            .spectral
            .iter()
            .map(|row| {
                let join = |f: &dyn Fn(&(u32, f64, f64)) -> f64| {
                    row.per_lsc.iter().map(|lsc| format_number(f(lsc))).collect::<Vec<_>>().join(", ")
                };
                vec![
                    Cell::Text(row.model.clone()),
                    strategy_cell(&row.strategy_label),
                    Cell::Text(join(&|lsc| lsc.1)),
                    Cell::Text(join(&|lsc| lsc.2)),
                    interval_cell(row.difference.as_ref()),
                ]
            })
            .collect();
        page.push_str(&table(
            &["model", "strategy", "skip share, LSC 1..N", "main-path share", "skip minus main"],
            &rows,
        ));
        page.push_str(&table_links(&content.table_files.spectral));
    }
    for figure in content.skip_figures {
        page.push_str(&figure_html(figure));
    }
}

fn theorems_section(content: &ReportContent, page: &mut String) {
    page.push_str("<h2>Theorem checks</h2>\n");
    page.push_str(
        "<p>Each bound as a dose-response: the quantity it speaks of against the bound's factor, over networks \
         that differ only in their skip coefficients, compared within seeds (docs/method.md §4). At \
         initialisation from the sweep folder's dose_response.jsonl (`just dose-response`), during training from \
         the runs with fixed coefficients (1, 1/sqrt2, CS; learned ones are left out). A bound is an upper bound: \
         \"not observed\" does not refute it.</p>\n",
    );
    if content.bound_checks.is_empty() {
        page.push_str(&note("The diagnostics and the dose-response the theorem checks need were"));
        return;
    }
    page.push_str(&table_links(&content.table_files.theorem_rows));
    let rows: Vec<Vec<Cell>> = content
        .bound_checks
        .iter()
        .map(|bound| {
            let response = &bound.check.response;
            vec![
                Cell::Text(format!("{} on {}, {}", bound.check.theorem.name(), bound.model, bound.check.source)),
                Cell::Text(bound.check.quantity.clone()),
                Cell::Text(bound.check.theorem.factor().to_string()),
                Cell::Text(response.ordering.to_string()),
                interval_cell(response.spearman.as_ref()),
                interval_cell(response.slope.as_ref()),
                Cell::Number(response.p_value),
                Cell::Number(Some(response.seeds as f64)),
            ]
        })
        .collect();
    page.push_str(&table(
        &["check", "quantity", "factor", "label", "within-seed Spearman", "log-log slope", "p (one-sided)", "seeds"],
        &rows,
    ));
    for (bound, figure) in content.bound_checks.iter().zip(content.bound_figures) {
        let check = &bound.check;
        page.push_str(&format!(
            "<h3>{} on {}, {}</h3>\n<p>{}</p>\n",
            check.theorem.name(),
            escape(&bound.model),
            check.source,
            escape(&check.response.explanation)
        ));
        if !check.excluded.is_empty() {
            page.push_str(&format!("<p>Left out: {}.</p>\n", escape(&check.excluded.join("; "))));
        }
        if let Some(figure) = figure {
            page.push_str(&figure_html(figure));
        }
    }
}

fn samples_section(content: &ReportContent, page: &mut String) {
    page.push_str("<h2>Samples</h2>\n");
    if content.samples.is_empty() {
        page.push_str(&note("Sample grids were"));
        return;
    }
    page.push_str("<p>The newest sample grid of every run (EMA weights, fixed noise), strategies side by side.</p>\n");
    for model in content.models {
        let columns: Vec<&str> = content
            .strategies
            .iter()
            .map(|(_, label)| label.as_str())
            .filter(|label| {
                content.samples.iter().any(|sample| sample.model == *model && sample.strategy_label == *label)
            })
            .collect();
        if columns.is_empty() {
            continue;
        }
        let cells: Vec<Cell> = columns
            .iter()
            .map(|label| {
                let images: String = content
                    .samples
                    .iter()
                    .filter(|sample| sample.model == *model && sample.strategy_label == *label)
                    .map(|sample| {
                        format!(
                            "<figure><img src=\"{}\" alt=\"samples of {}\"><figcaption>{} (seed {}, step {}) \
                             <a href=\"{}\">file</a></figcaption></figure>",
                            data_uri(&sample.png),
                            escape(&sample.run_id),
                            escape(&sample.run_id),
                            sample.seed,
                            sample.step,
                            escape(&sample.relative_path)
                        )
                    })
                    .collect();
                Cell::Html(images)
            })
            .collect();
        let headers: Vec<String> =
            columns.iter().map(|label| format!("{}{}", swatch(content, label), escape(label))).collect();
        page.push_str(&format!("<h3>{}</h3>\n<table class=\"samples\"><tr>", escape(model)));
        for header in headers {
            page.push_str(&format!("<th>{header}</th>"));
        }
        page.push_str("</tr>\n<tr>");
        for cell in &cells {
            page.push_str(&cell_html(cell));
        }
        page.push_str("</tr></table>\n");
    }
}

fn optional_figure(page: &mut String, figure: Option<&Figure>, missing_subject: &str) {
    match figure {
        Some(figure) => page.push_str(&figure_html(figure)),
        None => page.push_str(&note(missing_subject)),
    }
}

fn figures_or_note(page: &mut String, figures: &[Figure], missing_subject: &str) {
    if figures.is_empty() {
        page.push_str(&note(missing_subject));
    }
    for figure in figures {
        page.push_str(&figure_html(figure));
    }
}

/// `<subject> not recorded in this sweep.`
fn note(subject: &str) -> String {
    format!("<p class=\"note\">{} not recorded in this sweep.</p>\n", escape(subject))
}

fn figure_html(figure: &Figure) -> String {
    format!(
        "<figure><img src=\"{}\" alt=\"{}\"><figcaption><b>{}.</b> {} <a href=\"figures/{}\">PNG file</a>, \
         <a href=\"figures/{}\">SVG file</a></figcaption></figure>\n",
        data_uri(&figure.image.png),
        escape(&figure.title),
        escape(&figure.title),
        escape(&figure.caption),
        escape(&figure.file_name),
        escape(&figure.svg_file_name())
    )
}

fn table_links(files: &[String]) -> String {
    if files.is_empty() {
        return String::new();
    }
    let links: Vec<String> =
        files.iter().map(|file| format!("<a href=\"{}\">{}</a>", escape(file), escape(file))).collect();
    format!("<p class=\"meta\">As files: {}.</p>\n", links.join(", "))
}

fn table(headers: &[&str], rows: &[Vec<Cell>]) -> String {
    let mut html = String::from("<table>\n<tr>");
    for header in headers {
        html.push_str(&format!("<th>{}</th>", escape(header)));
    }
    html.push_str("</tr>\n");
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            html.push_str(&cell_html(cell));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}

fn cell_html(cell: &Cell) -> String {
    match cell {
        Cell::Text(text) => format!("<td>{}</td>", escape(text)),
        Cell::Number(value) => format!("<td class=\"number\">{}</td>", value.map(format_number).unwrap_or_default()),
        Cell::Html(html) => format!("<td>{html}</td>"),
    }
}

fn swatch(content: &ReportContent, label: &str) -> String {
    format!("<span class=\"swatch\" style=\"background:{}\"></span>", content.palette.css(label))
}

fn data_uri(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", BASE64.encode(png))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
