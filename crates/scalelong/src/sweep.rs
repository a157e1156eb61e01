//! `scalelong sweep`: a grid over config keys, expanded into one run folder per combination.
//!
//! Completed runs are skipped, interrupted ones resumed from their checkpoint, diverged ones
//! recorded and left; a per-run lock file lets several processes (`--shard i/n`, or a scheduler
//! running the `--list` commands) share one sweep folder without running a run twice.

use crate::progress::log_line;
use crate::status::SweepStatus;
use crate::train::{self, Outcome};
use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use scalelong_schema::{
    AnalysisPlan, RunConfig, RunState, Status, SweepManifest, SweepRun, apply_override, read_json, write_json_atomic,
};
use serde::Deserialize;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    pub name: String,
    /// The run config every run starts from, relative to the sweep file.
    pub base: PathBuf,
    /// Axis key (dotted, as for `--set`) -> the values it takes; every combination is one run.
    pub grid: toml::Table,
    /// Overrides shared by every run.
    #[serde(default)]
    pub set: toml::Table,
    /// The analysis fixed before the runs, copied into `sweep.json` for the report.
    #[serde(default)]
    pub analysis: AnalysisPlan,
}

/// A sweep file expanded: every run with its resolved config.
#[derive(Debug, Clone)]
pub struct SweepPlan {
    pub name: String,
    pub base_config: PathBuf,
    pub axes: toml::Table,
    pub runs: Vec<PlannedRun>,
    pub analysis: AnalysisPlan,
}

#[derive(Debug, Clone)]
pub struct PlannedRun {
    pub id: String,
    /// This run's value on each grid axis.
    pub axis_values: toml::Table,
    /// `key=value` overrides in `--set` form: the file's shared ones, the command line's, then this
    /// run's axis values.
    pub settings: Vec<String>,
    pub config: RunConfig,
}

impl SweepPlan {
    /// The sweep file at `path`, with `overrides` (`key=value`, as `train --set` takes them)
    /// applied to every run after the file's `[set]`; a grid axis cannot be overridden.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{}: cannot read sweep file", path.display()))?;
        let file: SweepFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        Self::from_file(path, file, overrides)
    }

    /// The sweep `file`, read from `path` (its `base` is relative to it), expanded as [`Self::load`]
    /// does.
    pub fn from_file(path: &Path, file: SweepFile, overrides: &[String]) -> Result<Self> {
        let base_config = path.parent().unwrap_or(Path::new(".")).join(&file.base);
        let base_text = std::fs::read_to_string(&base_config)
            .with_context(|| format!("{}: base = {:?}: cannot read", path.display(), file.base))?;
        let base: toml::Table =
            toml::from_str(&base_text).map_err(|e| anyhow::anyhow!("{}: {e}", base_config.display()))?;

        let mut shared: Vec<String> = file.set.iter().map(|(k, v)| format!("{k}={}", inline(v))).collect();
        for item in overrides {
            let key = item.split_once('=').map_or(item.as_str(), |(key, _)| key).trim();
            let nested = |outer: &str, inner: &str| inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('.'));
            if let Some(axis) = file.grid.keys().find(|axis| *axis == key || nested(axis, key) || nested(key, axis)) {
                bail!("--set {item}: {axis} is an axis of {}'s grid; edit the grid instead", path.display());
            }
            shared.push(item.clone());
        }
        let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
        for (key, values) in &file.grid {
            match values {
                toml::Value::Array(values) if !values.is_empty() => axes.push((key.clone(), values.clone())),
                _ => bail!("{}: grid.{key}: expected a non-empty list of values", path.display()),
            }
        }
        let mut runs = Vec::new();
        for combination in cartesian(&axes) {
            let id = combination.iter().map(|(k, v)| run_id_part(k, v)).collect::<Vec<_>>().join("_");
            let mut settings = shared.clone();
            settings.extend(combination.iter().map(|(k, v)| format!("{k}={}", inline(v))));
            let mut table = base.clone();
            for item in &settings {
                apply_override(&mut table, item)?;
            }
            let config = crate::config::from_table(table).with_context(|| format!("{}: run {id}", path.display()))?;
            let axis_values = combination.into_iter().collect();
            runs.push(PlannedRun { id, axis_values, settings, config });
        }
        let mut ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        ids.sort();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            bail!("{}: two runs would share the folder {:?}; make the grid values distinct", path.display(), w[0]);
        }
        if let Some(target) = file.analysis.speed_targets.iter().find(|t| !(t.is_finite() && **t > 0.0)) {
            bail!("{}: analysis.speed_targets: expected positive held-out losses, got {target}", path.display());
        }
        Ok(Self { name: file.name, base_config, axes: file.grid, runs, analysis: file.analysis })
    }

    /// What `sweep.json` records of the plan.
    pub fn manifest(&self) -> SweepManifest {
        SweepManifest {
            name: self.name.clone(),
            base_config: Some(self.base_config.clone()),
            axes: self.axes.clone(),
            runs: self
                .runs
                .iter()
                .map(|run| SweepRun { id: run.id.clone(), overrides: run.axis_values.clone() })
                .collect(),
            analysis: self.analysis.clone(),
        }
    }

    pub fn folder(&self, runs_root: &Path) -> PathBuf {
        runs_root.join(&self.name)
    }

    /// One shell command per run, for a scheduler (each resumes if started again).
    pub fn commands(&self, runs_root: &Path) -> Vec<String> {
        self.runs
            .iter()
            .map(|run| {
                let sets: String = run.settings.iter().map(|o| format!(" --set {}", shell_quote(o))).collect();
                format!(
                    "scalelong train --config {}{sets} --out {} --resume",
                    shell_quote(&self.base_config.display().to_string()),
                    shell_quote(&self.folder(runs_root).join(&run.id).display().to_string())
                )
            })
            .collect()
    }
}

/// What happened to each run of this process's share.
#[derive(Debug, Default)]
pub struct SweepSummary {
    pub trained: Vec<String>,
    pub skipped: Vec<String>,
    pub diverged: Vec<String>,
    pub locked_elsewhere: Vec<String>,
    /// Completed runs continued to a longer `steps` (a constant learning rate allows it).
    pub extended: Vec<String>,
    /// Runs of another config moved aside (`--retrain-changed`) and trained again; also in
    /// `trained` or `diverged`.
    pub replaced: Vec<String>,
}

impl SweepSummary {
    /// One line: what this process did.
    pub fn describe(&self, sweep: &str) -> String {
        let mut line = format!(
            "sweep {sweep}: {} trained, {} already complete, {} diverged, {} running elsewhere",
            self.trained.len(),
            self.skipped.len(),
            self.diverged.len(),
            self.locked_elsewhere.len()
        );
        if !self.extended.is_empty() {
            line.push_str(&format!(", {} extended to more steps", self.extended.len()));
        }
        if !self.replaced.is_empty() {
            line.push_str(&format!(", {} retrained after a config change", self.replaced.len()));
        }
        line
    }
}

/// What a run's folder holds, against the run now planned for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing trained yet, or an interrupted run of the planned config: train it (resuming
    /// where it stopped).
    Train,
    /// Completed with the planned config.
    Completed,
    /// Diverged with the planned config (or a length it never reached).
    Diverged,
    /// Completed at `from` steps under a constant learning rate, now planned longer: resuming it
    /// gives what a run trained that long from the start gives, bit for bit on the CPU.
    Extend { from: u64 },
    /// Trained with another config: the dotted keys that differ.
    Changed(Vec<String>),
}

/// What the run folder `dir` holds against `planned`: its `config.json` compared with the
/// rule `train --resume` applies ([`RunConfig::continuation_conflicts`]).
pub fn inspect(dir: &Path, planned: &RunConfig) -> Found {
    let status = Status::read(dir);
    let stored = dir.join("config.json");
    if stored.exists() {
        let stored: RunConfig = match read_json(&stored) {
            Ok(config) => config,
            Err(err) => return Found::Changed(vec![format!("config.json (unreadable: {err:#})")]),
        };
        let reached = status.as_ref().map_or(0, |s| s.step);
        let conflicts = stored.continuation_conflicts(planned, reached);
        if !conflicts.is_empty() {
            return Found::Changed(conflicts);
        }
    }
    match status {
        Some(Status { state: RunState::Completed, step, .. }) if planned.steps > step => Found::Extend { from: step },
        Some(Status { state: RunState::Completed, .. }) => Found::Completed,
        Some(Status { state: RunState::Diverged, .. }) => Found::Diverged,
        _ => Found::Train,
    }
}

/// An error naming every run of `shard` whose folder holds a run of another config than the
/// one planned, with the keys that differ; `Ok` when there is none. Reads only.
pub fn refuse_changed_runs(plan: &SweepPlan, runs_root: &Path, shard: (usize, usize)) -> Result<()> {
    let folder = plan.folder(runs_root);
    let changed: Vec<(&str, Vec<String>)> = plan
        .runs
        .iter()
        .enumerate()
        .filter(|(i, _)| i % shard.1 == shard.0)
        .filter_map(|(_, run)| match inspect(&folder.join(&run.id), &run.config) {
            Found::Changed(keys) => Some((run.id.as_str(), keys)),
            _ => None,
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    Err(changed_error(plan, &folder, &changed))
}

fn changed_error(plan: &SweepPlan, folder: &Path, changed: &[(&str, Vec<String>)]) -> anyhow::Error {
    let mut message = format!(
        "sweep {}: {} run(s) in {} were trained with another config than the one now planned; nothing was \
         trained or overwritten:",
        plan.name,
        changed.len(),
        folder.display()
    );
    for (id, keys) in changed {
        message.push_str(&format!("\n  {id}: {} differ", keys.join(", ")));
    }
    if changed.iter().any(|(_, keys)| keys.iter().any(|k| k == "steps")) {
        message.push_str(
            "\n(steps may grow for a finished run only under a constant learning rate: a cosine decay depends on \
             the total steps, so the steps already taken would have had other rates)",
        );
    }
    message.push_str(
        "\nRestore the old config, give the sweep another name, or pass --retrain-changed to move these runs aside \
         (to <run>.replaced-<UTC time>, kept) and train them again.",
    );
    anyhow::anyhow!(message)
}

/// Runs share `shard` (`(i, n)`: runs whose index is `i` mod `n`) of the sweep. A run whose
/// folder holds a run of another config is an error naming it and the keys that differ, before
/// anything is trained; with `retrain_changed` it is moved aside and trained again.
pub fn run(
    plan: &SweepPlan,
    runs_root: &Path,
    shard: (usize, usize),
    retrain_changed: bool,
    device: &Device,
) -> Result<SweepSummary> {
    if !retrain_changed {
        refuse_changed_runs(plan, runs_root, shard)?;
    }
    let folder = plan.folder(runs_root);
    std::fs::create_dir_all(&folder).with_context(|| format!("{}: cannot create", folder.display()))?;
    write_json_atomic(&folder.join("sweep.json"), &plan.manifest())?;
    let mut summary = SweepSummary::default();
    for (index, run) in plan.runs.iter().enumerate().filter(|(i, _)| i % shard.1 == shard.0) {
        let dir = folder.join(&run.id);
        let Some(mut lock) = lock_run(&dir)? else {
            summary.locked_elsewhere.push(run.id.clone());
            continue;
        };
        let mut found = inspect(&dir, &run.config);
        if let Found::Changed(keys) = &found
            && retrain_changed
        {
            // The lock moves with the folder; the fresh folder gets its own.
            let moved = move_aside(&dir)?;
            eprintln!(
                "{}: trained with another config ({} differ); moved to {}, training it again",
                run.id,
                keys.join(", "),
                moved.display()
            );
            summary.replaced.push(run.id.clone());
            drop(lock);
            let Some(fresh_lock) = lock_run(&dir)? else {
                summary.locked_elsewhere.push(run.id.clone());
                continue;
            };
            lock = fresh_lock;
            found = inspect(&dir, &run.config);
        }
        match found {
            Found::Completed => summary.skipped.push(run.id.clone()),
            Found::Diverged => summary.diverged.push(run.id.clone()),
            // Only another process can have trained it with another config since the check above.
            Found::Changed(keys) => return Err(changed_error(plan, &folder, &[(run.id.as_str(), keys)])),
            found @ (Found::Train | Found::Extend { .. }) => {
                let position = format!("[{}/{}] {}", index + 1, plan.runs.len(), run.id);
                match found {
                    Found::Extend { from } => {
                        log_line(&format!("{position}: extending from step {from} to {}", run.config.steps))
                    }
                    _ => log_line(&position),
                }
                match train::train(&run.config, &dir, device, true).with_context(|| format!("run {}", run.id))? {
                    Outcome::Completed if matches!(found, Found::Extend { .. }) => {
                        summary.extended.push(run.id.clone())
                    }
                    Outcome::Completed => summary.trained.push(run.id.clone()),
                    Outcome::Diverged { step } => {
                        log_line(&format!("{} diverged at step {step}; the sweep goes on", run.id));
                        summary.diverged.push(run.id.clone());
                    }
                }
            }
        }
        drop(lock);
    }
    Ok(summary)
}

/// The lock of the run folder `dir` (created if missing), `None` while another process holds it.
pub(crate) fn lock_run(dir: &Path) -> Result<Option<File>> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let path = dir.join(".lock");
    let lock = File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?;
    Ok(lock.try_lock().is_ok().then_some(lock))
}

/// Renames the run folder `dir` to `<run>.replaced-<UTC time>` beside it (never over an existing
/// folder) and returns the new path. Such folders are not in `sweep.json`, so reports skip them.
fn move_aside(dir: &Path) -> Result<PathBuf> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stamp = utc_stamp(std::time::SystemTime::now());
    for attempt in 0..100 {
        let suffix = if attempt == 0 { String::new() } else { format!("-{attempt}") };
        let target = dir.with_file_name(format!("{name}.replaced-{stamp}{suffix}"));
        if !target.exists() {
            std::fs::rename(dir, &target)
                .with_context(|| format!("{}: cannot move to {}", dir.display(), target.display()))?;
            return Ok(target);
        }
    }
    bail!("{}: cannot move aside: 100 folders named {name}.replaced-{stamp}* exist", dir.display())
}

/// `20261206T201502Z`: the UTC time to the second (days to a civil date as in H. Hinnant's
/// `civil_from_days`).
fn utc_stamp(time: std::time::SystemTime) -> String {
    let seconds = time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, second_of_day) = ((seconds / 86_400) as i64, seconds % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
    format!("{year:04}{month:02}{day:02}T{h:02}{m:02}{s:02}Z")
}

/// Set in the environment of the processes [`run_in_processes`] starts: such a process leaves the
/// sweep's summary to its parent, which sees every process's runs.
pub const SWEEP_CHILD_ENV: &str = "SCALELONG_SWEEP_CHILD";
/// Seconds between redraws of the live sweep table.
const REDRAW_SECONDS: u64 = 2;

/// Runs `scalelong <args>` in `jobs` processes at once, each on an equal share of this machine's
/// threads (`RAYON_NUM_THREADS`). Every process walks the whole share of the sweep; the per-run
/// locks hand each run to whichever process reaches it first, so the processes work off one queue
/// and finish together. An error when any process fails.
///
/// With `watch` (the sweep folder) and stderr on a terminal, the processes' own lines go to
/// `<watch>/sweep.log` and this process draws one table in their place, redrawn every
/// [`REDRAW_SECONDS`] ([`crate::status::SweepStatus::table`]: runs done, running, waiting, each
/// running run's step, loss and ETA, the sweep's ETA). Off a terminal the processes write to stderr
/// as they go, every line prefixed with its run id.
pub fn run_in_processes(args: &[String], jobs: usize, watch: Option<&Path>) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_job = (threads / jobs).max(1);
    let exe = std::env::current_exe().context("cannot find this program's path to start the sweep's processes")?;
    let live = watch.filter(|_| std::io::stderr().is_terminal());
    let log = match live {
        Some(folder) => {
            std::fs::create_dir_all(folder).with_context(|| format!("{}: cannot create", folder.display()))?;
            let path = folder.join("sweep.log");
            let file = File::options()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("{}: cannot open", path.display()))?;
            Some((path, file))
        }
        None => None,
    };
    let mut children = (0..jobs)
        .map(|_| -> Result<std::process::Child> {
            let mut command = std::process::Command::new(&exe);
            command.args(args).env("RAYON_NUM_THREADS", per_job.to_string()).env(SWEEP_CHILD_ENV, "1");
            if let Some((_, file)) = &log {
                command.stderr(file.try_clone()?);
            }
            command.spawn().with_context(|| format!("cannot start {}", exe.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut failed = 0;
    match live {
        Some(folder) => {
            let mut drawn = 0;
            let mut running = children.len();
            while running > 0 {
                running = 0;
                for child in &mut children {
                    running += usize::from(matches!(child.try_wait(), Ok(None)));
                }
                if let Ok(status) = SweepStatus::read(folder) {
                    drawn = redraw(drawn, &status.table(jobs, false));
                }
                if running > 0 {
                    std::thread::sleep(std::time::Duration::from_secs(REDRAW_SECONDS));
                }
            }
            for child in &mut children {
                failed += usize::from(!child.wait().is_ok_and(|status| status.success()));
            }
            if let Ok(status) = SweepStatus::read(folder) {
                redraw(drawn, &[status.headline(jobs)]);
            }
        }
        None => {
            for mut child in children {
                failed += usize::from(!child.wait().is_ok_and(|status| status.success()));
            }
            if let Some(status) = watch.and_then(|folder| SweepStatus::read(folder).ok()) {
                eprintln!("{}", status.headline(jobs));
            }
        }
    }
    if failed > 0 {
        let errors = match &log {
            Some((path, _)) => format!("their errors are at the end of {}", path.display()),
            None => "their errors are above".to_string(),
        };
        bail!("{failed} of the sweep's {jobs} processes failed ({errors})");
    }
    Ok(())
}

/// Replaces the `drawn` lines printed last on the terminal with `lines`; returns how many it drew.
fn redraw(drawn: usize, lines: &[String]) -> usize {
    let mut text = String::new();
    if drawn > 0 {
        // Up to the first line drawn, then clear everything below.
        text.push_str(&format!("\x1b[{drawn}A\r\x1b[J"));
    }
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes()).and_then(|()| stderr.flush());
    lines.len()
}

/// Run folders as given, a sweep folder (one with `sweep.json`) as its runs in the manifest's order.
pub fn expand_run_folders(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut runs = Vec::new();
    for path in paths {
        let manifest = path.join("sweep.json");
        if manifest.exists() {
            let sweep: SweepManifest = scalelong_schema::read_json(&manifest)?;
            runs.extend(sweep.runs.iter().map(|run| path.join(&run.id)));
        } else if path.is_dir() {
            runs.push(path.clone());
        } else {
            bail!("{}: not a run folder or a sweep folder", path.display());
        }
    }
    Ok(runs)
}

/// `"i/n"` with 0 <= i < n.
pub fn parse_shard(text: &str) -> Result<(usize, usize)> {
    let parsed = text.split_once('/').and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)));
    match parsed {
        Some((i, n)) if n > 0 && i < n => Ok((i, n)),
        _ => bail!("--shard {text}: expected i/n with 0 <= i < n, e.g. 0/2 and 1/2"),
    }
}

fn cartesian(axes: &[(String, Vec<toml::Value>)]) -> Vec<Vec<(String, toml::Value)>> {
    axes.iter().fold(vec![Vec::new()], |acc, (key, values)| {
        acc.iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut next = prefix.clone();
                    next.push((key.clone(), v.clone()));
                    next
                })
            })
            .collect()
    })
}

/// A TOML value as it would be written after `key = ` on one line (tables inline).
fn inline(value: &toml::Value) -> String {
    value.to_string()
}

/// A string or table names itself (`cs`, `uvit-deep`, `mp-cat0.3`); a number gets its key's last
/// segment (`seed0`, `lr0.003`), so that run folders read without the sweep file.
pub(crate) fn run_id_part(key: &str, value: &toml::Value) -> String {
    match value {
        toml::Value::String(_) | toml::Value::Table(_) => slug(value),
        _ => format!("{}{}", key.rsplit('.').next().unwrap_or(key), slug(value)),
    }
}

/// A folder-name-safe rendering of a grid value: `"1/sqrt2"` -> `1-sqrt2`, `{ cs = 0.7 }` -> `cs0.7`.
fn slug(value: &toml::Value) -> String {
    let raw = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Table(t) => t.iter().map(|(k, v)| format!("{k}{}", slug(v))).collect(),
        other => other.to_string(),
    };
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect()
}

fn shell_quote(text: &str) -> String {
    if text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:".contains(c)) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_read_as_calendar_time() {
        let at = |seconds: u64| utc_stamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(951_782_400), "20000229T000000Z", "a leap day");
        assert_eq!(at(1_796_587_502), "20261206T200502Z");
    }
}
