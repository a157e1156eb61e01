//! The paper's claims, judged from this sweep's numbers: which held, which did not, which the
//! sweep could not measure. Every sentence is built from the measured values; no outcome is assumed.

use std::collections::BTreeMap;

use scalelong_analysis::stats::mean;
use scalelong_analysis::theorems::Verdict;
use scalelong_schema::SkipScaling;

use super::analysis::{DECAY_KAPPA_MAX, DECAY_R2_MIN, GateFit, ModelChecks};
use super::format_number;
use super::tables::SummaryRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Held,
    DidNotHold,
    Inconclusive,
    NotMeasured,
}

impl Outcome {
    fn phrase(self) -> &'static str {
        match self {
            Outcome::Held => "held",
            Outcome::DidNotHold => "did not hold",
            Outcome::Inconclusive => "was inconclusive",
            Outcome::NotMeasured => "was not measured",
        }
    }
}

pub struct Claim {
    /// `(a) Faster training`, ...
    pub name: &'static str,
    pub outcome: Outcome,
    /// The numbers behind the outcome, one clause.
    pub evidence: String,
}

pub fn assess_claims(
    summary: &[SummaryRow],
    model_checks: &[ModelChecks],
    gate_fits: &[GateFit],
    has_ls_runs: bool,
) -> Vec<Claim> {
    vec![
        faster_training(summary),
        theorem_claim("(b) Smaller feature-norm oscillation for smaller coefficients (Thm 3.1)", model_checks, 0),
        theorem_claim("(c) Gradient scale follows the bound (Thm 3.3)", model_checks, 1),
        theorem_claim("(d) Robustness to perturbed inputs (Thm 3.4)", model_checks, 2),
        gate_decay(gate_fits, has_ls_runs),
    ]
}

/// All claims as one paragraph: a count, then one sentence per claim.
pub fn paragraph(claims: &[Claim]) -> String {
    let count = |outcome| claims.iter().filter(|claim| claim.outcome == outcome).count();
    let mut text = format!(
        "Of the paper's {} claims checked here, {} held, {} did not hold, {} {} inconclusive and {} {} \
         not measured in this sweep.",
        claims.len(),
        count(Outcome::Held),
        count(Outcome::DidNotHold),
        count(Outcome::Inconclusive),
        if count(Outcome::Inconclusive) == 1 { "was" } else { "were" },
        count(Outcome::NotMeasured),
        if count(Outcome::NotMeasured) == 1 { "was" } else { "were" },
    );
    for claim in claims {
        text.push_str(&format!(" {} {}: {}.", claim.name, claim.outcome.phrase(), claim.evidence));
    }
    text
}

/// (a): every CS and LS strategy reaches strategy `1`'s final smoothed loss in every comparable run,
/// with a mean speed-up of at least 1.
fn faster_training(summary: &[SummaryRow]) -> Claim {
    let name = "(a) Faster training";
    let scaled: Vec<&SummaryRow> = summary
        .iter()
        .filter(|row| matches!(row.strategy, SkipScaling::Constant { .. } | SkipScaling::Learnable { .. }))
        .collect();
    let comparable: Vec<&SummaryRow> = scaled.iter().copied().filter(|row| row.target_loss.is_some()).collect();
    if comparable.is_empty() {
        let evidence = if scaled.is_empty() {
            "the sweep has no CS or LS run"
        } else {
            "no CS or LS run has a strategy-1 run with the same other settings and logged losses to compare with"
        };
        return Claim { name, outcome: Outcome::NotMeasured, evidence: evidence.to_string() };
    }
    let mut by_strategy: BTreeMap<&str, (Vec<f64>, usize)> = BTreeMap::new();
    for row in &comparable {
        let (speedups, not_reached) = by_strategy.entry(row.strategy_label.as_str()).or_default();
        match row.speedup_vs_1 {
            Some(speedup) => speedups.push(speedup),
            None => *not_reached += 1,
        }
    }
    let mut all_faster = true;
    let parts: Vec<String> = by_strategy
        .iter()
        .map(|(label, (speedups, not_reached))| {
            let strategy_mean = mean(speedups);
            all_faster &= *not_reached == 0 && strategy_mean.is_some_and(|speedup| speedup >= 1.0);
            let mut part = match strategy_mean {
                Some(speedup) => {
                    format!("{label} {}x (mean of {} runs)", format_number(speedup), speedups.len())
                }
                None => format!("{label} no speed-up"),
            };
            if *not_reached > 0 {
                part.push_str(&format!(", {not_reached} run(s) never reached the target"));
            }
            part
        })
        .collect();
    let speedups: Vec<f64> = comparable.iter().filter_map(|row| row.speedup_vs_1).collect();
    let overall = mean(&speedups).map_or("none".to_string(), |speedup| format!("{}x", format_number(speedup)));
    Claim {
        name,
        outcome: if all_faster { Outcome::Held } else { Outcome::DidNotHold },
        evidence: format!(
            "speed-up to strategy 1's final smoothed training loss {}; overall mean {overall} (the paper reports \
             about 1.5x)",
            parts.join("; ")
        ),
    }
}

/// (b) to (d): held when every model with rows supports the check, did not hold when any refutes it.
fn theorem_claim(name: &'static str, model_checks: &[ModelChecks], index: usize) -> Claim {
    let checked: Vec<(&str, &scalelong_analysis::theorems::TheoremCheck)> = model_checks
        .iter()
        .map(|model| (model.model.as_str(), &model.checks[index]))
        .filter(|(_, check)| !check.rows.is_empty())
        .collect();
    if checked.is_empty() {
        return Claim {
            name,
            outcome: Outcome::NotMeasured,
            evidence: "the diagnostics it needs were not recorded in this sweep".to_string(),
        };
    }
    let verdicts: Vec<Verdict> = checked.iter().map(|(_, check)| check.verdict).collect();
    let outcome = if verdicts.iter().all(|verdict| *verdict == Verdict::Supported) {
        Outcome::Held
    } else if verdicts.contains(&Verdict::Refuted) {
        Outcome::DidNotHold
    } else {
        Outcome::Inconclusive
    };
    let evidence = checked
        .iter()
        .map(|(model, check)| {
            format!("{} {} for {model} ({})", check.theorem, check.verdict, check.explanation.trim_end_matches('.'))
        })
        .collect::<Vec<_>>()
        .join("; ");
    Claim { name, outcome, evidence }
}

/// (e): every fitted LS gate profile decays (see [`DECAY_KAPPA_MAX`], [`DECAY_R2_MIN`]).
fn gate_decay(gate_fits: &[GateFit], has_ls_runs: bool) -> Claim {
    let name = "(e) LS gates decay exponentially with the LSC index";
    let not_measured = |evidence: &str| Claim { name, outcome: Outcome::NotMeasured, evidence: evidence.to_string() };
    if !has_ls_runs {
        return not_measured("the sweep has no LS run");
    }
    let fitted: Vec<&GateFit> = gate_fits.iter().filter(|fit| fit.fit.is_some()).collect();
    if fitted.is_empty() {
        return not_measured("no LS run recorded gate means on LSCs 1..N that an exponential could be fitted to");
    }
    let all_decay = fitted.iter().all(|fit| fit.shows_exponential_decay() == Some(true));
    let evidence = fitted
        .iter()
        .filter_map(|gates| {
            let fit = gates.fit?;
            Some(format!(
                "{} on {}: kappa_hat {}, R^2 {}",
                gates.strategy_label,
                gates.model,
                format_number(fit.kappa_hat),
                format_number(fit.r2)
            ))
        })
        .collect::<Vec<_>>()
        .join("; ");
    Claim {
        name,
        outcome: if all_decay { Outcome::Held } else { Outcome::DidNotHold },
        evidence: format!("{evidence} (held means kappa_hat <= {DECAY_KAPPA_MAX} and R^2 >= {DECAY_R2_MIN})"),
    }
}
