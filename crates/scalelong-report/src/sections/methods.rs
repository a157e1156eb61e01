//! "How the runs were judged": the design as the runs' configs say it, the rules that judge a run,
//! and how each claim is tested, with every constant the rules and claims use.

use scalelong_analysis::dose_response::{ALPHA, PERMUTATIONS};
use scalelong_analysis::inference::{LEVEL, POWER};
use scalelong_analysis::run_rules::{COLLAPSE_FRACTION, PLATEAU_MAX_DROP, PLATEAU_TAIL, SPIKE_K, SPIKE_WINDOW};
use scalelong_analysis::theorems::{DESCENT_REMAINING, MIN_SETTLED_RECORDS};
use scalelong_schema::LrSchedule;

use super::frontier::CLAIMED_LR_RATIO;
use super::sampling_time::{CLAIMED_FD_RATIO, CLAIMED_SHARE_DIFFERENCE, SMALLEST_EFFECT};
use super::side_by_side::CLAIMED_SPEEDUP;
use super::{ReportContext, Section};
use crate::format_number;
use crate::page::{Page, escape};

pub struct Methods<'a> {
    ctx: &'a ReportContext<'a>,
}

impl<'a> Methods<'a> {
    pub fn build(ctx: &'a ReportContext<'a>) -> Self {
        Self { ctx }
    }
}

impl Section for Methods<'_> {
    fn render(&self, page: &mut Page) {
        page.push("<h2>How the runs were judged</h2>\n");
        let ctx = self.ctx;
        page.push(&format!(
            "<p>Design, as the runs' configs say: models {}; strategies {}; seeds {}; {} steps at batch {}; AdamW with \
             learning rate {} (beta1 {}, beta2 {}, weight decay {}), {} warm-up steps, then {}; EMA {}; the held-out \
             loss of the EMA weights on {} test images in {} timestep bins at every evaluation ({}); the FD on {} \
             samples.</p>\n",
            escape(&ctx.models.join(", ")),
            escape(&ctx.strategies.iter().map(|(_, label)| label.as_str()).collect::<Vec<_>>().join(", ")),
            escape(&ctx.distinct(|run| run.seed.to_string())),
            escape(&ctx.distinct(|run| run.steps.to_string())),
            escape(&ctx.distinct(|run| run.config.batch_size.to_string())),
            escape(&ctx.distinct(|run| format_number(run.lr))),
            escape(&ctx.distinct(|run| format_number(run.config.optimizer.beta1))),
            escape(&ctx.distinct(|run| format_number(run.config.optimizer.beta2))),
            escape(&ctx.distinct(|run| format_number(run.config.optimizer.weight_decay))),
            escape(&ctx.distinct(|run| run.config.warmup_steps.to_string())),
            escape(&ctx.distinct(|run| schedule_text(run.config.optimizer.schedule))),
            escape(&ctx.distinct(|run| format_number(run.config.ema_decay))),
            escape(&ctx.distinct(|run| run.config.eval.heldout_images.to_string())),
            escape(&ctx.distinct(|run| run.config.eval.t_bins.to_string())),
            escape(&ctx.distinct(|run| match run.config.checkpoint_every {
                0 => "at the end only".to_string(),
                every => format!("every {every} steps and at the end"),
            })),
            escape(&ctx.distinct(|run| run.config.eval.fd_samples.to_string())),
        ));
        page.push(&format!(
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
        page.push(&format!(
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
}

/// A learning-rate schedule in words.
pub fn schedule_text(schedule: LrSchedule) -> String {
    match schedule {
        LrSchedule::Constant => "constant".to_string(),
        LrSchedule::Cosine { final_fraction } => format!("cosine decay to {} of it", format_number(final_fraction)),
    }
}
