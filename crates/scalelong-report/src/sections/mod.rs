//! The report page as a list of sections. Each computes what it shows from the sweep
//! ([`ReportContext`]), lists the figures and tables it writes beside the page and the claims it
//! judges, and renders its part of the page. [`write_report`](crate::write_report) builds every
//! section before it writes a file, so bad input leaves no half-written report, then writes each
//! one's files and renders them in page order.
//!
//! The claims table ([`findings`]) opens the page but its rows come from the sections below it, so
//! it is built from theirs and is not in the list.

pub mod findings;
pub mod frontier;
pub mod learned_coefficients;
pub mod methods;
pub mod runs;
pub mod samples;
pub mod sampling_time;
pub mod side_by_side;
pub mod theorem_checks;
pub mod training_curves;

use std::path::Path;

use anyhow::Result;
use scalelong_schema::SkipScaling;

use crate::assess::Judged;
use crate::claims::Claim;
use crate::figures::Figure;
use crate::page::Page;
use crate::plot::Palette;
use crate::run_group::RunGroup;
use crate::sweep_data::{RunData, SweepData};
use crate::tables::Table;

pub use samples::SampleImage;

/// What every section builds from.
pub struct ReportContext<'a> {
    pub sweep: &'a SweepData,
    pub sweep_dir: &'a Path,
    /// Every run with its assessment, in sweep order.
    pub judged: &'a [Judged<'a>],
    /// Every run of each model and strategy ([`RunGroup::per_strategy`]).
    pub groups: &'a [RunGroup<'a>],
    /// Model labels, sorted.
    pub models: &'a [&'a str],
    /// Every strategy once, in [`SkipScaling::rank`] order, with its label.
    pub strategies: &'a [(SkipScaling, String)],
    pub palette: &'a Palette,
}

impl<'a> ReportContext<'a> {
    /// The groups of `model`, in strategy order.
    pub fn groups_of<'s>(&'s self, model: &'s str) -> impl Iterator<Item = &'a RunGroup<'a>> + 's {
        self.groups.iter().filter(move |group| group.model == model)
    }

    /// The distinct values of `f` over the runs, sorted and joined: what the runs' configs say of
    /// one key.
    pub fn distinct(&self, f: impl Fn(&RunData) -> String) -> String {
        let mut values: Vec<String> = self.sweep.runs.iter().map(f).collect();
        values.sort();
        values.dedup();
        values.join(", ")
    }
}

/// One part of the page.
pub trait Section {
    /// Appends this section to the page.
    fn render(&self, page: &mut Page);

    /// The rows this section adds to the claims table.
    fn claims(&self) -> Vec<Claim> {
        Vec::new()
    }

    /// The figures it writes into `figures/`, in the order it shows them.
    fn figures(&self) -> Vec<&Figure> {
        Vec::new()
    }

    /// The tables it writes beside the page, in the order it links them.
    fn tables(&self) -> Vec<&Table> {
        Vec::new()
    }

    /// The sample grids it copies into `samples/`.
    fn samples(&self) -> &[SampleImage] {
        &[]
    }
}

/// A section the sweep has no data for (no learning-rate axis, no frontier) is `None`: nothing on
/// the page, no files, no claims.
impl<S: Section> Section for Option<S> {
    fn render(&self, page: &mut Page) {
        if let Some(section) = self {
            section.render(page);
        }
    }

    fn claims(&self) -> Vec<Claim> {
        self.as_ref().map_or_else(Vec::new, S::claims)
    }

    fn figures(&self) -> Vec<&Figure> {
        self.as_ref().map_or_else(Vec::new, S::figures)
    }

    fn tables(&self) -> Vec<&Table> {
        self.as_ref().map_or_else(Vec::new, S::tables)
    }

    fn samples(&self) -> &[SampleImage] {
        self.as_ref().map_or(&[], S::samples)
    }
}

/// Every section below the claims table, in page order.
pub fn below_the_claims<'a>(ctx: &'a ReportContext<'a>) -> Result<Vec<Box<dyn Section + 'a>>> {
    Ok(vec![
        Box::new(methods::Methods::build(ctx)),
        Box::new(runs::Runs::build(ctx)?),
        Box::new(side_by_side::SideBySide::build(ctx)?),
        Box::new(frontier::StabilityFrontier::build(ctx)?),
        Box::new(training_curves::heldout_loss(ctx)?),
        Box::new(training_curves::training_loss(ctx)?),
        Box::new(training_curves::feature_norm(ctx)?),
        Box::new(training_curves::per_lsc_norms(ctx)?),
        Box::new(learned_coefficients::LearnedCoefficients::build(ctx)?),
        Box::new(sampling_time::SamplingTime::build(ctx)?),
        Box::new(theorem_checks::TheoremChecks::build(ctx)?),
        Box::new(samples::Samples::build(ctx)?),
    ])
}
