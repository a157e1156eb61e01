//! Runs grouped by model and strategy: what every table, figure and claim of the report aggregates
//! over (a strategy's seeds), either over every setting of the other axes or at one of them.

use scalelong_analysis::run_rules::RunOutcome;
use scalelong_schema::SkipScaling;

use crate::analysis::rank_order;
use crate::assess::Judged;
use crate::sweep_data::RunData;

/// The runs of one model and one strategy, in sweep order.
pub struct RunGroup<'a> {
    pub model: &'a str,
    pub strategy: SkipScaling,
    pub strategy_label: &'a str,
    /// For a cell of the design ([`RunGroup::per_cell`]), the other axes' values its runs share
    /// ([`RunData::setting`]); `None` for a group over every setting ([`RunGroup::per_strategy`]).
    pub setting: Option<&'a str>,
    pub runs: Vec<&'a Judged<'a>>,
}

impl<'a> RunGroup<'a> {
    /// One group per model and strategy, whatever else the runs vary (a learning-rate axis): by
    /// model, then strategy in [`SkipScaling::rank`] order.
    pub fn per_strategy(judged: &'a [Judged<'a>]) -> Vec<Self> {
        group(judged, false)
    }

    /// One group per cell of the design: model, the setting of the other axes, and strategy, sorted
    /// in that order.
    pub fn per_cell(judged: &'a [Judged<'a>]) -> Vec<Self> {
        group(judged, true)
    }

    pub fn count(&self, status: RunOutcome) -> usize {
        self.runs.iter().filter(|judged| judged.assessment.status == status).count()
    }

    pub fn run_data(&self) -> impl Iterator<Item = &'a RunData> + '_ {
        self.runs.iter().map(|judged| judged.run)
    }

    /// The runs that trained: neither collapsed, diverged nor unfinished.
    pub fn trained(&self) -> impl Iterator<Item = &'a RunData> + '_ {
        self.runs.iter().filter(|judged| judged.assessment.status == RunOutcome::Trained).map(|judged| judged.run)
    }
}

fn group<'a>(judged: &'a [Judged<'a>], per_setting: bool) -> Vec<RunGroup<'a>> {
    let mut groups: Vec<RunGroup<'a>> = Vec::new();
    for j in judged {
        let run = j.run;
        let setting = per_setting.then_some(run.setting.as_str());
        let same = |group: &&mut RunGroup| {
            group.model == run.model && group.strategy_label == run.strategy_label && group.setting == setting
        };
        match groups.iter_mut().find(same) {
            Some(group) => group.runs.push(j),
            None => groups.push(RunGroup {
                model: &run.model,
                strategy: run.strategy,
                strategy_label: &run.strategy_label,
                setting,
                runs: vec![j],
            }),
        }
    }
    groups.sort_by(|a, b| {
        (a.model.cmp(b.model))
            .then(a.setting.cmp(&b.setting))
            .then(rank_order(a.strategy, b.strategy))
            .then(a.strategy_label.cmp(b.strategy_label))
    });
    groups
}
