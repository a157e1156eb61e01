//! `scalelong sweep`: a grid over config keys, expanded into one run folder per combination.
//!
//! Completed runs are skipped, interrupted ones resumed from their checkpoint, diverged ones
//! recorded and left; a per-run lock file lets several processes (`--shard i/n`, or a scheduler
//! running the `--list` commands) share one sweep folder without running a run twice.

use crate::train::{self, Outcome};
use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use scalelong_schema::{RunConfig, RunState, Status, SweepManifest, SweepRun, apply_override, write_json_atomic};
use serde::Deserialize;
use std::fs::File;
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
}

/// A sweep file expanded: every run with its resolved config.
#[derive(Debug, Clone)]
pub struct SweepPlan {
    pub name: String,
    pub base_config: PathBuf,
    pub axes: toml::Table,
    pub runs: Vec<PlannedRun>,
}

#[derive(Debug, Clone)]
pub struct PlannedRun {
    pub id: String,
    /// This run's value on each grid axis.
    pub axis_values: toml::Table,
    /// `key=value` overrides in `--set` form: the shared ones, then this run's axis values.
    pub settings: Vec<String>,
    pub config: RunConfig,
}

impl SweepPlan {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{}: cannot read sweep file", path.display()))?;
        let file: SweepFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        let base_config = path.parent().unwrap_or(Path::new(".")).join(&file.base);
        let base_text = std::fs::read_to_string(&base_config)
            .with_context(|| format!("{}: base = {:?}: cannot read", path.display(), file.base))?;
        let base: toml::Table =
            toml::from_str(&base_text).map_err(|e| anyhow::anyhow!("{}: {e}", base_config.display()))?;

        let shared: Vec<String> = file.set.iter().map(|(k, v)| format!("{k}={}", inline(v))).collect();
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
        Ok(Self { name: file.name, base_config, axes: file.grid, runs })
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
}

/// Runs share `shard` (`(i, n)`: runs whose index is `i` mod `n`) of the sweep.
pub fn run(plan: &SweepPlan, runs_root: &Path, shard: (usize, usize), device: &Device) -> Result<SweepSummary> {
    let folder = plan.folder(runs_root);
    std::fs::create_dir_all(&folder).with_context(|| format!("{}: cannot create", folder.display()))?;
    write_json_atomic(&folder.join("sweep.json"), &plan.manifest())?;
    let mut summary = SweepSummary::default();
    for (index, run) in plan.runs.iter().enumerate().filter(|(i, _)| i % shard.1 == shard.0) {
        let dir = folder.join(&run.id);
        std::fs::create_dir_all(&dir)?;
        let lock = File::create(dir.join(".lock"))?;
        if lock.try_lock().is_err() {
            summary.locked_elsewhere.push(run.id.clone());
            continue;
        }
        match Status::read(&dir).map(|s| s.state) {
            Some(RunState::Completed) => summary.skipped.push(run.id.clone()),
            Some(RunState::Diverged) => summary.diverged.push(run.id.clone()),
            _ => {
                eprintln!("[{}/{}] {}", index + 1, plan.runs.len(), run.id);
                match train::train(&run.config, &dir, device, true).with_context(|| format!("run {}", run.id))? {
                    Outcome::Completed => summary.trained.push(run.id.clone()),
                    Outcome::Diverged { step } => {
                        eprintln!("{} diverged at step {step}; the sweep goes on", run.id);
                        summary.diverged.push(run.id.clone());
                    }
                }
            }
        }
        drop(lock);
    }
    Ok(summary)
}

/// Runs `scalelong <args>` in `jobs` processes at once, each on an equal share of this machine's
/// threads (`RAYON_NUM_THREADS`). Every process walks the whole share of the sweep; the per-run
/// locks hand each run to whichever process reaches it first, so the processes work off one queue
/// and finish together. An error when any process fails.
pub fn run_in_processes(args: &[String], jobs: usize) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_job = (threads / jobs).max(1);
    let exe = std::env::current_exe().context("cannot find this program's path to start the sweep's processes")?;
    let children = (0..jobs)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(args)
                .env("RAYON_NUM_THREADS", per_job.to_string())
                .spawn()
                .with_context(|| format!("cannot start {}", exe.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let failed = children
        .into_iter()
        .map(|mut child| child.wait().map(|status| status.success()).unwrap_or(false))
        .filter(|ok| !ok)
        .count();
    if failed > 0 {
        bail!("{failed} of the sweep's {jobs} processes failed (their errors are above)");
    }
    Ok(())
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
fn run_id_part(key: &str, value: &toml::Value) -> String {
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
