//! `scalelong frontier`: each grid cell's largest trained learning rate, found by bisection in log
//! lr between two rates of a frontier file (a sweep file without a learning-rate axis, plus
//! `[frontier] low, high, resolution`).
//!
//! Every probe is an ordinary run folder of the sweep folder, named by its cell and rate
//! (`cs_seed0_lr0.01`), judged trained, collapsed or diverged by the report's rule
//! ([`judge_run`]); a failed probe stays, and the report reads every probe. The search is a pure
//! function of the probes' outcomes ([`search`]), so an interrupted search resumes by reading back
//! the probes it finished, and any process can tell from the folder how far each cell got. Several
//! processes share one folder as `scalelong sweep`'s do: a lock per cell hands each cell's
//! (sequential) search to one of them, a lock per run keeps any run to one trainer.

use crate::progress::log_line;
use crate::sweep::{self, Found, PlannedRun, SweepFile, SweepPlan, inspect, lock_run, run_id_part};
use crate::train::{self, Outcome};
use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::Device;
use scalelong_analysis::run_rules::{RunOutcome, judge_run};
use scalelong_schema::{
    Censoring, EvalLine, Frontier, LrBracket, RunConfig, Status, SweepManifest, SweepRun, read_jsonl, write_json_atomic,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The config key the search varies.
const LR_KEY: &str = "optimizer.lr";
/// More halvings than this would probe rates closer than [`LR_DIGITS`] tell apart long before
/// any run could.
const MAX_HALVINGS: u32 = 10;
/// Significant digits of a probed rate between the ends, so that folder names read
/// (`lr0.005946`, not `lr0.005946035575013606`) and the config holds the rate the name says.
const LR_DIGITS: usize = 4;

/// `[frontier]` of a frontier file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontierSection {
    /// The rate every cell is expected to train at (checked when the search ends there).
    pub low: f64,
    /// The rate every cell is expected to fail at (checked when the search ends there).
    pub high: f64,
    /// The largest ratio of smallest failed to largest trained rate to stop at, e.g. 1.19 for
    /// 2^(1/4).
    pub resolution: f64,
}

/// The rates a search may probe: `low * (high / low)^(rung / top)` for rung `0..=top`, `top` a
/// power of two (its exponent, the halvings, the fewest that bring neighbouring rungs within the
/// resolution).
#[derive(Debug, Clone, PartialEq)]
pub struct LrLadder {
    low: f64,
    high: f64,
    halvings: u32,
}

impl LrLadder {
    /// An error names the field and what was expected.
    pub fn new(section: &FrontierSection) -> Result<Self> {
        let FrontierSection { low, high, resolution } = *section;
        if !(low.is_finite() && high.is_finite() && low > 0.0 && high > low) {
            bail!("low = {low}, high = {high}: expected 0 < low < high");
        }
        if !(resolution.is_finite() && resolution > 1.0) {
            bail!("resolution = {resolution}: expected a ratio above 1, e.g. 1.19 for 2^(1/4)");
        }
        // A hair of slack, so that a resolution written as (high/low)^(1/2^k) itself is met.
        let needed = (high / low).ln() / (resolution.ln() * (1.0 + 1e-9));
        let halvings = (0..=MAX_HALVINGS).find(|&h| f64::from(1u32 << h) >= needed).ok_or_else(|| {
            anyhow!(
                "resolution = {resolution}: high / low = {} would need more than {MAX_HALVINGS} halvings",
                high / low
            )
        })?;
        let ladder = Self { low, high, halvings };
        if let Some(rung) = (0..ladder.top()).find(|&rung| ladder.lr(rung) >= ladder.lr(rung + 1)) {
            bail!(
                "resolution = {resolution}: the rates {} and {} are the same to {LR_DIGITS} significant digits",
                ladder.lr(rung),
                ladder.lr(rung + 1)
            );
        }
        Ok(ladder)
    }

    /// The highest rung (`high`); rung 0 is `low`.
    pub fn top(&self) -> u32 {
        1 << self.halvings
    }

    /// The learning rate of `rung`: the ends exactly as given, the rungs between them rounded to
    /// [`LR_DIGITS`] significant digits.
    pub fn lr(&self, rung: u32) -> f64 {
        match rung {
            0 => self.low,
            rung if rung >= self.top() => self.high,
            rung => {
                let exact = self.low * (self.high / self.low).powf(f64::from(rung) / f64::from(self.top()));
                format!("{exact:.*e}", LR_DIGITS - 1).parse().unwrap_or(exact)
            }
        }
    }

    /// The ratio of neighbouring rungs: what an uncensored bracket spans.
    pub fn step_ratio(&self) -> f64 {
        (self.high / self.low).powf(1.0 / f64::from(self.top()))
    }
}

/// Where a cell's search stands, given the outcomes of the probes it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// The rungs probed (their outcomes known), in the order the search asked for them.
    pub probed: Vec<u32>,
    pub state: SearchState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchState {
    /// The search needs this rung's outcome next.
    Probe(u32),
    /// It is done.
    Bracket(RungBracket),
}

/// A search's answer in rungs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RungBracket {
    /// `None`: failed at rung 0.
    pub largest_trained: Option<u32>,
    /// `None`: trained at the top rung.
    pub smallest_failed: Option<u32>,
    pub censored: Option<Censoring>,
}

/// The bisection over rungs `0..=top` (`top` a power of two), given `trained(rung)`: a probe's
/// outcome where known (true: trained; false: collapsed or diverged). It halves the bracket
/// between rung 0 (taken to train) and `top` (taken to fail) until the two are neighbours, then
/// probes an end the bracket still rests on without having run it: an end that does not hold (a
/// run that fails at rung 0 or trains at `top`) makes the bracket censored, one-sided; the search
/// never goes past the ends. With the frontier inside, that is `log2(top)` probes, one more when
/// it lies next to an end. The outcomes are assumed to fall with the rate (as a run's does once it
/// stops learning); where they do not, the bracket is still a trained rate next to a failed one.
pub fn search(top: u32, trained: impl Fn(u32) -> Option<bool>) -> Walk {
    let mut probed = Vec::new();
    let (mut below, mut above) = (0, top);
    while above - below > 1 {
        let middle = below + (above - below) / 2;
        let Some(outcome) = trained(middle) else { return Walk { probed, state: SearchState::Probe(middle) } };
        probed.push(middle);
        if outcome {
            below = middle;
        } else {
            above = middle;
        }
    }
    let bracket =
        |largest_trained, smallest_failed, censored| RungBracket { largest_trained, smallest_failed, censored };
    // An end is checked only while the bracket still rests on it (the halving never probes one).
    for (end, expected_trained, resting_on) in [(0, true, below == 0), (top, false, above == top)] {
        if !resting_on {
            continue;
        }
        let Some(outcome) = trained(end) else { return Walk { probed, state: SearchState::Probe(end) } };
        probed.push(end);
        if outcome != expected_trained {
            let censored = if end == 0 {
                bracket(None, Some(0), Some(Censoring::FailedAtLow))
            } else {
                bracket(Some(top), None, Some(Censoring::TrainedAtHigh))
            };
            return Walk { probed, state: SearchState::Bracket(censored) };
        }
    }
    Walk { probed, state: SearchState::Bracket(bracket(Some(below), Some(above), None)) }
}

/// [`search`] driven to its end or to a probe whose outcome `outcome_of` cannot give now
/// (`Ok(None)`: not run, or running elsewhere); `outcome_of` is asked once per rung.
pub fn drive(top: u32, mut outcome_of: impl FnMut(u32) -> Result<Option<bool>>) -> Result<Walk> {
    let mut known: BTreeMap<u32, bool> = BTreeMap::new();
    loop {
        let walk = search(top, |rung| known.get(&rung).copied());
        let SearchState::Probe(rung) = walk.state else { return Ok(walk) };
        match outcome_of(rung)? {
            Some(trained) => known.insert(rung, trained),
            None => return Ok(walk),
        };
    }
}

/// A frontier file expanded: the grid's cells (a sweep plan without the learning rate) and the
/// rates their searches may probe.
#[derive(Debug, Clone)]
pub struct FrontierPlan {
    pub cells: SweepPlan,
    pub section: FrontierSection,
    pub ladder: LrLadder,
}

/// One probe: a cell at a rung.
struct Probe {
    id: String,
    lr: f64,
    config: RunConfig,
}

impl FrontierPlan {
    /// The frontier file at `path`: a sweep file (`name`, `base`, `[grid]`, `[set]`, `[analysis]`)
    /// with `[frontier]` and no `optimizer.lr` in the grid or `[set]`.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{}: cannot read frontier file", path.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e.message()))?;
        let section = table.remove("frontier").ok_or_else(|| {
            anyhow!("{}: no [frontier] section: expected low, high and resolution (e.g. 1.19)", path.display())
        })?;
        let section: FrontierSection =
            section.try_into().map_err(|e| anyhow!("{}: [frontier]: {e}", path.display()))?;
        let ladder = LrLadder::new(&section).map_err(|e| anyhow!("{}: [frontier] {e:#}", path.display()))?;
        let file: SweepFile = toml::Value::Table(table).try_into().map_err(|e| anyhow!("{}: {e}", path.display()))?;
        for (section_name, keys) in [("grid", &file.grid), ("set", &file.set)] {
            let lr_set = keys.contains_key(LR_KEY)
                || keys.get("optimizer").and_then(toml::Value::as_table).is_some_and(|t| t.contains_key("lr"));
            if lr_set {
                bail!("{}: {section_name}: sets {LR_KEY}, which the frontier searches; remove it", path.display());
            }
        }
        let cells = SweepPlan::from_file(path, file, &[])?;
        if let Some(cell) = cells.runs.iter().find(|cell| !cell.config.evaluate) {
            bail!(
                "{}: run {}: evaluate = false, but a probe is judged by its final evaluation",
                path.display(),
                cell.id
            );
        }
        Ok(Self { cells, section, ladder })
    }

    pub fn folder(&self, runs_root: &Path) -> PathBuf {
        self.cells.folder(runs_root)
    }

    fn probe(&self, cell: &PlannedRun, rung: u32) -> Probe {
        let lr = self.ladder.lr(rung);
        let mut config = cell.config.clone();
        config.optimizer.lr = lr;
        Probe { id: format!("{}_{}", cell.id, run_id_part(LR_KEY, &toml::Value::Float(lr))), lr, config }
    }

    /// Each cell's search as far as the probes in `folder` take it (reads only); `on_changed` sees
    /// each probe whose folder holds a run of another config (the search stops there).
    fn walks(&self, folder: &Path, mut on_changed: impl FnMut(&str, Vec<String>)) -> Result<Vec<Walk>> {
        let mut walks = Vec::new();
        for cell in &self.cells.runs {
            walks.push(drive(self.ladder.top(), |rung| {
                let probe = self.probe(cell, rung);
                let dir = folder.join(&probe.id);
                match inspect(&dir, &probe.config) {
                    Found::Completed | Found::Diverged => trained(&dir).map(Some),
                    Found::Changed(keys) => {
                        on_changed(&probe.id, keys);
                        Ok(None)
                    }
                    Found::Train | Found::Extend { .. } => Ok(None),
                }
            })?);
        }
        Ok(walks)
    }

    /// An error naming every probe whose folder holds a run of another config than the one now
    /// planned, with the keys that differ; `Ok` when there is none. Reads only.
    pub fn refuse_changed_probes(&self, runs_root: &Path) -> Result<()> {
        let folder = self.folder(runs_root);
        let mut changed = Vec::new();
        self.walks(&folder, |id, keys| changed.push(format!("\n  {id}: {} differ", keys.join(", "))))?;
        if changed.is_empty() {
            return Ok(());
        }
        bail!(
            "frontier {}: {} probe(s) in {} were trained with another config than the one now planned; nothing was \
             trained or overwritten:{}\nRestore the old config, or give the frontier file another name.",
            self.cells.name,
            changed.len(),
            folder.display(),
            changed.concat()
        )
    }

    /// What `sweep.json` records: each cell's probes so far and the one it waits for, the rates
    /// probed as the learning-rate axis (so the report reads the folder as a sweep over it).
    fn manifest(&self, walks: &[Walk]) -> SweepManifest {
        let mut runs = Vec::new();
        let mut lrs: Vec<f64> = Vec::new();
        for (cell, walk) in self.cells.runs.iter().zip(walks) {
            let pending = match walk.state {
                SearchState::Probe(rung) => Some(rung),
                SearchState::Bracket(_) => None,
            };
            for rung in walk.probed.iter().copied().chain(pending) {
                let probe = self.probe(cell, rung);
                let mut overrides = cell.axis_values.clone();
                overrides.insert(LR_KEY.to_string(), toml::Value::Float(probe.lr));
                runs.push(SweepRun { id: probe.id, overrides });
                lrs.push(probe.lr);
            }
        }
        lrs.sort_by(f64::total_cmp);
        lrs.dedup();
        let mut axes = self.cells.axes.clone();
        axes.insert(LR_KEY.to_string(), toml::Value::Array(lrs.into_iter().map(toml::Value::Float).collect()));
        SweepManifest {
            name: self.cells.name.clone(),
            base_config: Some(self.cells.base_config.clone()),
            axes,
            runs,
            analysis: self.cells.analysis.clone(),
        }
    }

    /// `frontier.json`'s content when every cell's search has ended, `None` while one has not.
    fn frontier(&self, walks: &[Walk]) -> Option<Frontier> {
        let mut brackets = Vec::new();
        for (cell, walk) in self.cells.runs.iter().zip(walks) {
            let SearchState::Bracket(bracket) = walk.state else { return None };
            brackets.push(LrBracket {
                cell: cell.id.clone(),
                model: cell.config.model.describe(),
                strategy: cell.config.strategy.label(),
                seed: cell.config.seed,
                largest_trained_lr: bracket.largest_trained.map(|rung| self.ladder.lr(rung)),
                smallest_failed_lr: bracket.smallest_failed.map(|rung| self.ladder.lr(rung)),
                censored: bracket.censored,
                probes: walk.probed.iter().map(|&rung| self.probe(cell, rung).id).collect(),
            });
        }
        Some(Frontier {
            low: self.section.low,
            high: self.section.high,
            resolution: self.section.resolution,
            step_ratio: self.ladder.step_ratio(),
            brackets,
        })
    }
}

/// Whether the finished run in `dir` trained, by the report's rule; an error when it finished
/// without an evaluation to judge it by.
fn trained(dir: &Path) -> Result<bool> {
    let state = Status::read(dir).map(|status| status.state);
    // The line written last at the largest step (a resumed run may repeat a step).
    let last = read_jsonl::<EvalLine>(&dir.join("eval.jsonl"))?.into_iter().max_by_key(|line| line.step);
    match judge_run(state, last.as_ref()) {
        RunOutcome::Unfinished => {
            bail!("{}: finished, but eval.jsonl holds no evaluation to judge it by", dir.display())
        }
        outcome => Ok(outcome == RunOutcome::Trained),
    }
}

/// What this process did.
#[derive(Debug, Default)]
pub struct FrontierSummary {
    /// Probes trained here (a diverged one included).
    pub trained: Vec<String>,
    /// Probes finished before, read back.
    pub read_back: Vec<String>,
    /// Cells whose search another process holds.
    pub cells_elsewhere: Vec<String>,
    /// Where `frontier.json` was written, once every cell's search has ended.
    pub written: Option<PathBuf>,
}

impl FrontierSummary {
    pub fn describe(&self, name: &str) -> String {
        format!(
            "frontier {name}: {} probes trained, {} read back, {} cells searched by other processes; {}",
            self.trained.len(),
            self.read_back.len(),
            self.cells_elsewhere.len(),
            written_text(self.written.as_deref())
        )
    }
}

/// Whether `frontier.json` was written, in words.
fn written_text(written: Option<&Path>) -> String {
    match written {
        Some(path) => format!("{} written", path.display()),
        None => "frontier.json not written yet: some cells are still being searched".to_string(),
    }
}

/// `scalelong frontier FILE`: every cell's search, in `jobs` processes at once (each takes cells
/// from the shared list through their locks), then `frontier.json` in the sweep folder.
pub fn run(file: &Path, runs_root: &Path, jobs: usize, device_name: &str) -> Result<()> {
    if jobs == 0 {
        bail!("--jobs: must be at least 1");
    }
    let plan = FrontierPlan::load(file)?;
    let jobs = jobs.min(plan.cells.runs.len().max(1));
    if jobs > 1 {
        // Refused here once, rather than by each process.
        plan.refuse_changed_probes(runs_root)?;
        let args: Vec<String> = vec![
            "frontier".into(),
            file.display().to_string(),
            "--runs".into(),
            runs_root.display().to_string(),
            "--device".into(),
            device_name.into(),
        ];
        sweep::run_in_processes(&args, jobs, None)?;
        let written = write_frontier(&plan, runs_root)?;
        eprintln!("frontier {}: {}", plan.cells.name, written_text(written.as_deref()));
        return Ok(());
    }
    let device = crate::device::parse(device_name)?.autodiff();
    let summary = search_cells(&plan, runs_root, &device)?;
    // A process started by the branch above leaves the summary to its parent.
    if std::env::var_os(sweep::SWEEP_CHILD_ENV).is_none() {
        eprintln!("{}", summary.describe(&plan.cells.name));
    }
    Ok(())
}

/// Searches every cell no other process holds, training the probes not yet run; writes
/// `sweep.json` as the probes start and `frontier.json` once every cell's search has ended.
pub fn search_cells(plan: &FrontierPlan, runs_root: &Path, device: &Device) -> Result<FrontierSummary> {
    plan.refuse_changed_probes(runs_root)?;
    let folder = plan.folder(runs_root);
    let locks = folder.join(".locks");
    std::fs::create_dir_all(&locks).with_context(|| format!("{}: cannot create", locks.display()))?;
    write_manifest(plan, &folder)?;
    let mut summary = FrontierSummary::default();
    for (index, cell) in plan.cells.runs.iter().enumerate() {
        let Some(cell_lock) = try_lock(&locks.join(format!("{}.lock", cell.id)))? else {
            summary.cells_elsewhere.push(cell.id.clone());
            continue;
        };
        let position = format!("[cell {}/{}]", index + 1, plan.cells.runs.len());
        drive(plan.ladder.top(), |rung| {
            let probe = plan.probe(cell, rung);
            let dir = folder.join(&probe.id);
            let Some(run_lock) = lock_run(&dir)? else {
                log_line(&format!("{position} {}: being trained by another process; this cell waits for it", probe.id));
                return Ok(None);
            };
            write_manifest(plan, &folder)?;
            match inspect(&dir, &probe.config) {
                Found::Completed | Found::Diverged => summary.read_back.push(probe.id.clone()),
                Found::Changed(keys) => {
                    bail!("{}: trained with another config since the start ({} differ)", dir.display(), keys.join(", "))
                }
                Found::Train | Found::Extend { .. } => {
                    log_line(&format!("{position} {} (lr {})", probe.id, probe.lr));
                    let outcome = train::train(&probe.config, &dir, device, true)
                        .with_context(|| format!("probe {}", probe.id))?;
                    if let Outcome::Diverged { step } = outcome {
                        log_line(&format!("{} diverged at step {step}: a failed probe, kept", probe.id));
                    }
                    summary.trained.push(probe.id.clone());
                }
            }
            drop(run_lock);
            let trained = trained(&dir)?;
            log_line(&format!("{position} {}: {}", probe.id, if trained { "trained" } else { "failed" }));
            Ok(Some(trained))
        })?;
        drop(cell_lock);
    }
    summary.written = write_frontier(plan, runs_root)?;
    write_manifest(plan, &folder)?;
    Ok(summary)
}

/// Rewrites `sweep.json` from the probes on disk, under a lock, so that of two processes the one
/// that read the folder last writes last.
fn write_manifest(plan: &FrontierPlan, folder: &Path) -> Result<()> {
    let path = folder.join(".locks").join("sweep.json.lock");
    let lock = File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?;
    lock.lock().with_context(|| format!("{}: cannot lock", path.display()))?;
    let walks = plan.walks(folder, |_, _| {})?;
    write_json_atomic(&folder.join("sweep.json"), &plan.manifest(&walks))
}

/// Writes `frontier.json` when every cell's search has ended; its path, or `None` while some have
/// not.
fn write_frontier(plan: &FrontierPlan, runs_root: &Path) -> Result<Option<PathBuf>> {
    let folder = plan.folder(runs_root);
    let walks = plan.walks(&folder, |_, _| {})?;
    let Some(frontier) = plan.frontier(&walks) else { return Ok(None) };
    let path = folder.join("frontier.json");
    write_json_atomic(&path, &frontier)?;
    Ok(Some(path))
}

/// The lock file at `path` (created if missing), `None` while another process holds it.
fn try_lock(path: &Path) -> Result<Option<File>> {
    let lock = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    Ok(lock.try_lock().is_ok().then_some(lock))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder(low: f64, high: f64, resolution: f64) -> LrLadder {
        LrLadder::new(&FrontierSection { low, high, resolution }).unwrap()
    }

    /// The search driven by a planted frontier: every rung up to `last_trained` trains.
    fn planted(top: u32, last_trained: i64) -> Walk {
        drive(top, |rung| Ok(Some(i64::from(rung) <= last_trained))).unwrap()
    }

    #[test]
    fn the_ladder_halves_until_neighbours_are_within_the_resolution() {
        let lr = ladder(5e-3, 2e-2, 1.19);
        assert_eq!(lr.top(), 8, "4x down to 2^(1/4): three halvings");
        assert!((lr.step_ratio() - 2f64.powf(0.25)).abs() < 1e-12);
        let rates: Vec<f64> = (0..=8).map(|rung| lr.lr(rung)).collect();
        assert_eq!(rates, [5e-3, 5.946e-3, 7.071e-3, 8.409e-3, 1e-2, 1.189e-2, 1.414e-2, 1.682e-2, 2e-2]);
        assert_eq!(ladder(5e-3, 2e-2, 2f64.powf(0.25)).top(), 8, "the exact ratio is met");
        assert_eq!(ladder(5e-3, 2e-2, 1.18).top(), 16);
        assert_eq!(ladder(5e-3, 2e-2, 4.0).top(), 1, "no halving: the ends alone");
        for (low, high, resolution, expected) in [
            (2e-2, 5e-3, 1.19, "expected 0 < low < high"),
            (0.0, 5e-3, 1.19, "expected 0 < low < high"),
            (5e-3, 2e-2, 1.0, "expected a ratio above 1"),
            (5e-3, 2e-2, f64::NAN, "expected a ratio above 1"),
            (5e-3, 2e-2, 1.0001, "more than 10 halvings"),
        ] {
            let error = LrLadder::new(&FrontierSection { low, high, resolution }).unwrap_err().to_string();
            assert!(error.contains(expected), "{low} {high} {resolution}: {error}");
        }
    }

    #[test]
    fn a_planted_frontier_is_bracketed_within_the_resolution_in_three_probes() {
        let lr = ladder(5e-3, 2e-2, 1.19);
        // Seeds with their frontier at different rungs: each is found exactly, between two
        // neighbouring rungs (a ratio of 2^(1/4) <= 1.19), from 3 probes.
        for last_trained in 1..=6 {
            let walk = planted(lr.top(), last_trained);
            let expected = RungBracket {
                largest_trained: Some(last_trained as u32),
                smallest_failed: Some(last_trained as u32 + 1),
                censored: None,
            };
            assert_eq!(walk.state, SearchState::Bracket(expected), "frontier after rung {last_trained}");
            assert_eq!(walk.probed.len(), 3, "{walk:?}");
            assert_eq!(walk.probed[0], 4, "the first probe halves the interval in log lr");
            let ratio = lr.lr(last_trained as u32 + 1) / lr.lr(last_trained as u32);
            assert!(ratio <= 1.19, "{ratio}");
        }
        // Frontier on the third rung: 1e-2 fails, 7.071e-3 trains, 8.409e-3 fails. The failed
        // probes are part of the walk, nothing is dropped.
        assert_eq!(planted(8, 2).probed, [4, 2, 3]);
    }

    #[test]
    fn a_frontier_next_to_an_end_checks_that_end() {
        // Just above low: all of 1e-2, 7.071e-3, 5.946e-3 fail; low itself is then probed, and holds.
        let walk = planted(8, 0);
        assert_eq!(walk.probed, [4, 2, 1, 0]);
        let bracket = RungBracket { largest_trained: Some(0), smallest_failed: Some(1), censored: None };
        assert_eq!(walk.state, SearchState::Bracket(bracket));
        // Just below high: high is probed, and fails as expected.
        let walk = planted(8, 7);
        assert_eq!(walk.probed, [4, 6, 7, 8]);
        let bracket = RungBracket { largest_trained: Some(7), smallest_failed: Some(8), censored: None };
        assert_eq!(walk.state, SearchState::Bracket(bracket));
    }

    #[test]
    fn an_end_that_does_not_hold_is_reported_censored() {
        let walk = planted(8, -1);
        assert_eq!(walk.probed, [4, 2, 1, 0], "failed everywhere, low included");
        let bracket =
            RungBracket { largest_trained: None, smallest_failed: Some(0), censored: Some(Censoring::FailedAtLow) };
        assert_eq!(walk.state, SearchState::Bracket(bracket));
        let walk = planted(8, 100);
        assert_eq!(walk.probed, [4, 6, 7, 8], "trained everywhere, high included; nothing past it");
        let bracket =
            RungBracket { largest_trained: Some(8), smallest_failed: None, censored: Some(Censoring::TrainedAtHigh) };
        assert_eq!(walk.state, SearchState::Bracket(bracket));
        // With no halving, both ends are probed, low first.
        assert_eq!(planted(1, 0).probed, [0, 1]);
        assert_eq!(planted(1, -1).probed, [0], "failed at low: high is not needed");
    }

    #[test]
    fn a_search_resumes_from_the_outcomes_it_has() {
        // Known outcomes of the first two probes: the search asks for the third, and with it
        // ends as the uninterrupted search does.
        let known = BTreeMap::from([(4, true), (6, false)]);
        let walk = search(8, |rung| known.get(&rung).copied());
        assert_eq!(walk, Walk { probed: vec![4, 6], state: SearchState::Probe(5) });
        let mut asked = Vec::new();
        let resumed = drive(8, |rung| {
            asked.push(rung);
            Ok(known.get(&rung).copied().or(Some(rung <= 5)))
        })
        .unwrap();
        assert_eq!(resumed, planted(8, 5));
        assert_eq!(asked, [4, 6, 5], "each probe asked for once");
        // A probe that cannot be judged now stops the drive there.
        let stopped = drive(8, |rung| Ok(known.get(&rung).copied())).unwrap();
        assert_eq!(stopped.state, SearchState::Probe(5));
    }
}
