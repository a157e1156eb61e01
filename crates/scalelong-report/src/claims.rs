//! The paper's claims judged from this sweep's numbers, each with the effect it claims stated up
//! front, the measured effect with its 95% interval, the smallest effect the sweep could have
//! detected, and the runs it rests on. The verdict comes from the interval alone
//! ([`scalelong_analysis::verdict::verdict`]): held when it supports the claimed direction, did
//! not hold only when it excludes the claimed effect, inconclusive otherwise. Nothing is assumed.

use scalelong_analysis::inference::Interval;
use scalelong_analysis::verdict::{ClaimedEffect, Verdict, claimed_magnitude_excluded, verdict};

use scalelong_analysis::inference::{LEVEL, mean_correlation_interval, mean_interval};
use scalelong_schema::{EditKind, SkipScaling};

use crate::analysis::GateFit;
use crate::bounds::{self, BoundCheck};
use crate::compare::{Comparison, Direction, Measure};
use crate::format_number;
use crate::learned::decay_claim;
use crate::skips::{EditRow, ImportanceProfile, SkipFindings, SpectralRow};
use crate::tables::{Bisection, StableLrRow};

/// The paper's speed-up: "about 1.5x faster" training.
pub const CLAIMED_SPEEDUP: f64 = 1.5;
/// The larger stable learning rate a stabilising strategy should allow: one step of the sweep's
/// 1-2-5 grid (2x).
pub const CLAIMED_LR_RATIO: f64 = 2.0;
/// The FD ratio (edited over unedited) of interest for a sampling-time edit: 10% lower. Skip-Tuning
/// and FreeU report larger gains on large models; a tenth is the smallest worth a user's attention.
pub const CLAIMED_FD_RATIO: f64 = 0.9;
/// The smallest rank correlation of interest (a moderate one): an interval entirely on the near side
/// of it excludes the effect.
pub const SMALLEST_EFFECT: f64 = 0.3;
/// The difference of low-frequency shares (skip minus main path) of interest: 5 percentage points.
pub const CLAIMED_SHARE_DIFFERENCE: f64 = -0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    Held,
    DidNotHold,
    Inconclusive,
    /// A bound's ordering (claims (b)-(d)): a bound is an upper bound, so its check reads an
    /// ordering as seen or not seen, never as a bound that held or failed.
    OrderingObserved,
    OrderingNotObserved,
    #[default]
    NotMeasured,
}

impl Outcome {
    pub fn text(self) -> &'static str {
        match self {
            Outcome::Held => "held: direction established",
            Outcome::DidNotHold => "did not hold: the opposite direction established",
            Outcome::Inconclusive => "direction not established",
            Outcome::OrderingObserved => "the predicted ordering was observed",
            Outcome::OrderingNotObserved => "the predicted ordering was not observed",
            Outcome::NotMeasured => "not measured",
        }
    }

    /// The CSS class of the verdict on the page.
    pub fn class(self) -> &'static str {
        match self {
            Outcome::Held | Outcome::OrderingObserved => "held",
            Outcome::DidNotHold => "not-held",
            Outcome::Inconclusive | Outcome::OrderingNotObserved | Outcome::NotMeasured => "inconclusive",
        }
    }
}

impl From<Verdict> for Outcome {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Held => Outcome::Held,
            Verdict::DidNotHold => Outcome::DidNotHold,
            Verdict::Inconclusive => Outcome::Inconclusive,
        }
    }
}

/// One row of the claims table.
#[derive(Default)]
pub struct Claim {
    /// `(a) CS(0.5) trains faster than 1 on uvit-small`.
    pub name: String,
    /// The effect claimed and the scale it is measured on, stated before the numbers.
    pub claimed: String,
    pub outcome: Outcome,
    /// The measured effect with its interval and method.
    pub effect: String,
    /// The smallest effect this sweep could have detected (80% power), where a test has one.
    pub detectable: String,
    /// Whether the interval excludes the effect of interest (`1.2x excluded` / `1.2x not
    /// excluded`): the size, read apart from the direction the verdict gives.
    pub size: String,
    /// The exact p-value and, in brackets, after Holm's correction, where the claim has them.
    pub p_value: String,
    /// What the numbers come from.
    pub rests_on: String,
    /// Anything a reader needs next to the verdict (a magnitude below the claim, gates that did not
    /// move).
    pub note: String,
}

/// Every claim the sweep can speak to, in the order (a) speed, (b)-(d) the bounds, (e) the learned
/// profiles, (f) the stable learning rate.
pub fn assess_claims(
    comparisons: &[Comparison],
    bound_checks: &[BoundCheck],
    gate_fits: &[GateFit],
    stable_lr: Option<&[StableLrRow]>,
    skips: &SkipFindings,
) -> Vec<Claim> {
    let mut claims: Vec<Claim> = Vec::new();
    claims.extend(comparisons.iter().flat_map(comparison_claims));
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
    claims.extend(bounds::claims(bound_checks));
    // The paper's observation is about its LS gates; every learned profile (LS gates shared or one
    // per LSC, learned scalars) is read the same way, a decay counting only where it was learned.
    claims.extend(gate_fits.iter().map(decay_claim));
    if let Some(rows) = stable_lr {
        claims.extend(rows.iter().filter_map(|row| stability_claim(row, rows)));
    }
    claims.extend(importance_claims(&skips.importance));
    claims.extend(skips.edits.iter().filter(|row| row.strategy == SkipScaling::Original).filter_map(edit_claim));
    claims.extend(spectral_claims(&skips.spectral));
    claims
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
            outcome: verdict(&interval, &effect).into(),
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
        outcome: verdict(interval, &effect).into(),
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
            outcome: verdict(&interval, &effect).into(),
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

/// A few plain sentences above the table: what held, what did not, what the sweep cannot tell.
pub fn summary(claims: &[Claim]) -> String {
    let count = |outcome| claims.iter().filter(|claim| claim.outcome == outcome).count();
    let names = |outcome| {
        claims.iter().filter(|claim| claim.outcome == outcome).map(|claim| claim.name.as_str()).collect::<Vec<_>>()
    };
    let mut text = format!(
        "{} claims were tested: {} held (the claimed direction established), {} did not hold (the opposite direction \
         established), {} had no direction established and {} could not be measured here; of the bounds' \
         orderings, {} were observed and {} not observed.",
        claims.len(),
        count(Outcome::Held),
        count(Outcome::DidNotHold),
        count(Outcome::Inconclusive),
        count(Outcome::NotMeasured),
        count(Outcome::OrderingObserved),
        count(Outcome::OrderingNotObserved)
    );
    for (outcome, phrase) in [
        (Outcome::Held, "Held"),
        (Outcome::DidNotHold, "Did not hold"),
        (Outcome::OrderingObserved, "Orderings observed"),
    ] {
        let held = names(outcome);
        if !held.is_empty() {
            text.push_str(&format!(" {phrase}: {}.", held.join("; ")));
        }
    }
    if count(Outcome::Inconclusive) > 0 {
        text.push_str(
            " A claim without an established direction is not a claim refuted: its size column says whether the \
             sweep excludes the effect of interest (then the effect, if any, is smaller) or not (then more seeds \
             would be needed).",
        );
    }
    text
}

pub(crate) fn not_measured(name: &str, why: &str) -> Claim {
    Claim {
        name: name.to_string(),
        claimed: String::new(),
        outcome: Outcome::NotMeasured,
        effect: why.to_string(),
        detectable: String::new(),
        size: String::new(),
        p_value: String::new(),
        rests_on: String::new(),
        note: String::new(),
    }
}

/// `1.23 [0.95, 1.6] (95% paired Student t over 3 seeds)`, with `unit` after each number.
pub(crate) fn interval_text(interval: &Interval, unit: &str) -> String {
    format!(
        "{}{unit} [{}{unit}, {}{unit}] ({})",
        format_number(interval.estimate),
        format_number(interval.low),
        format_number(interval.high),
        interval.describe()
    )
}

fn setting_suffix(setting: &str) -> String {
    if setting.is_empty() { String::new() } else { format!(" ({setting})") }
}

/// `1.2x excluded` or `1.2x not excluded`: whether the interval lies short of the effect of interest.
fn size_text(interval: &Interval, effect: &ClaimedEffect) -> String {
    let excluded = if claimed_magnitude_excluded(interval, effect) { "excluded" } else { "not excluded" };
    format!("{} {excluded}", format_number(effect.claimed))
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
            let outcome = match reading.direction() {
                Direction::Claimed => Outcome::Held,
                Direction::Opposite => Outcome::DidNotHold,
                Direction::NotEstablished => Outcome::Inconclusive,
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
                outcome,
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
        outcome: verdict(ratio, &effect).into(),
        effect: interval_text(ratio, "x"),
        detectable: String::new(),
        size: size_text(ratio, &effect),
        p_value: String::new(),
        rests_on,
        note,
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
