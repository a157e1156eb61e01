//! A row of the claims table: one of the paper's claims judged from this sweep's numbers, with the
//! effect it claims stated up front, the measured effect with its 95% interval, the smallest effect
//! the sweep could have detected, and the runs it rests on. Each section judges its own claims
//! ([`Section::claims`](crate::sections::Section::claims)); the table at the top of the page lists
//! them by letter. The verdict comes from the interval alone
//! ([`scalelong_analysis::verdict::verdict`]): held when it supports the claimed direction, did
//! not hold only when it excludes the claimed effect, inconclusive otherwise. Nothing is assumed.

use std::fmt;

use scalelong_analysis::dose_response::PredictedOrdering;
use scalelong_analysis::inference::Interval;
use scalelong_analysis::verdict::{ClaimedEffect, Verdict, claimed_magnitude_excluded};

use crate::format_number;

/// What the sweep says of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Finding {
    /// The direction the claim's interval (or its Holm-adjusted exact test) establishes.
    Verdict(Verdict),
    /// A bound's ordering (claims (b)-(d)): a bound is an upper bound, so its check reads an
    /// ordering as seen or not seen, never as a bound that held or failed.
    Ordering(PredictedOrdering),
    #[default]
    NotMeasured,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Verdict(Verdict::Held) => f.write_str("held: direction established"),
            Finding::Verdict(Verdict::DidNotHold) => f.write_str("did not hold: the opposite direction established"),
            Finding::Verdict(Verdict::Inconclusive) => f.write_str("direction not established"),
            Finding::Ordering(ordering) => ordering.fmt(f),
            Finding::NotMeasured => f.write_str("not measured"),
        }
    }
}

impl Finding {
    /// The CSS class of the finding on the page.
    pub fn class(self) -> &'static str {
        match self {
            Finding::Verdict(Verdict::Held) | Finding::Ordering(PredictedOrdering::Observed) => "held",
            Finding::Verdict(Verdict::DidNotHold) => "not-held",
            Finding::Verdict(Verdict::Inconclusive)
            | Finding::Ordering(PredictedOrdering::NotObserved)
            | Finding::NotMeasured => "inconclusive",
        }
    }
}

/// One row of the claims table.
#[derive(Default)]
pub struct Claim {
    /// `(a) CS(0.5) trains faster than 1 on uvit-small`: the letter in brackets first, which orders
    /// the table.
    pub name: String,
    /// The effect claimed and the scale it is measured on, stated before the numbers.
    pub claimed: String,
    pub finding: Finding,
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

impl Claim {
    /// `(a)` of `(a) CS(0.5) trains faster than 1`.
    fn letter(&self) -> &str {
        self.name.split_once(' ').map_or(self.name.as_str(), |(letter, _)| letter)
    }
}

/// The claims of every section in the paper's order, (a) speed, (b)-(d) the bounds, (e) the learned
/// profiles, (f) the stable learning rate, (g)-(i) the skips at sampling time, whichever section
/// judged them; a section's claims of one letter keep their order.
pub fn in_letter_order(mut claims: Vec<Claim>) -> Vec<Claim> {
    claims.sort_by(|a, b| a.letter().cmp(b.letter()));
    claims
}

pub fn not_measured(name: &str, why: &str) -> Claim {
    Claim { name: name.to_string(), effect: why.to_string(), ..Claim::default() }
}

/// `1.23 [0.95, 1.6] (95% paired Student t over 3 seeds)`, with `unit` after each number.
pub fn interval_text(interval: &Interval, unit: &str) -> String {
    format!(
        "{}{unit} [{}{unit}, {}{unit}] ({})",
        format_number(interval.estimate),
        format_number(interval.low),
        format_number(interval.high),
        interval.describe()
    )
}

/// `1.2x excluded` or `1.2x not excluded`: whether the interval lies short of the effect of interest.
pub fn size_text(interval: &Interval, effect: &ClaimedEffect) -> String {
    let excluded = if claimed_magnitude_excluded(interval, effect) { "excluded" } else { "not excluded" };
    format!("{} {excluded}", format_number(effect.claimed))
}
