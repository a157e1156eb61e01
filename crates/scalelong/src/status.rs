//! Where a sweep stands, read from its folder alone (`sweep.json`, each run's `status.json`,
//! `config.json`, `metrics.jsonl` and `eval.jsonl`), so the same table serves the sweep's own live
//! display and `scalelong status runs/NAME` for a sweep running elsewhere (another shell, a
//! cluster's job array writing to a shared disk).
//!
//! Nothing here takes a run's lock: a probe of the lock while a sweep process tries to take it
//! would make that process skip the run. A run whose `status.json` says running but whose
//! `metrics.jsonl` has not been written for a while is shown with that age, so a stopped run can be
//! told from a live one by eye.

use anyhow::{Context, Result};
use scalelong_schema::{EvalLine, MetricsLine, RunConfig, RunState, Status, SweepManifest, read_json, read_jsonl};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// One run's place in its sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct RunProgress {
    pub id: String,
    pub phase: Phase,
    /// Optimizer steps taken (the last logged step).
    pub step: u64,
    /// Steps the run is configured for; `None` before its `config.json` exists.
    pub steps: Option<u64>,
    /// Mean training loss over the last logged lines (the raw loss jumps with the sampled timesteps).
    pub loss: Option<f64>,
    /// The last held-out loss and the step it was measured at.
    pub heldout: Option<(u64, f64)>,
    /// Seconds a step takes, from the last logged throughput (diagnostics and evaluation included).
    pub seconds_per_step: Option<f64>,
    /// Time since `metrics.jsonl` was last written.
    pub quiet_for: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No folder or no `status.json` yet.
    Waiting,
    Running,
    Completed,
    Diverged,
}

/// Training-loss lines averaged for the table's loss column.
const LOSS_LINES: usize = 5;

impl RunProgress {
    /// Reads the run folder `dir` (missing files read as not yet written).
    pub fn read(id: &str, dir: &Path) -> Self {
        let phase = match Status::read(dir).map(|status| status.state) {
            None => Phase::Waiting,
            Some(RunState::Running) => Phase::Running,
            Some(RunState::Completed) => Phase::Completed,
            Some(RunState::Diverged) => Phase::Diverged,
        };
        let config = read_json::<RunConfig>(&dir.join("config.json")).ok();
        let (steps, batch) = (config.as_ref().map(|c| c.steps), config.as_ref().map(|c| c.batch_size));
        let metrics_path = dir.join("metrics.jsonl");
        let metrics: Vec<MetricsLine> = read_jsonl(&metrics_path).unwrap_or_default();
        let last = &metrics[metrics.len().saturating_sub(LOSS_LINES)..];
        let finite: Vec<f64> = last.iter().map(|line| line.loss).filter(|loss| loss.is_finite()).collect();
        let loss = (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64);
        let seconds_per_step = match (metrics.last(), batch) {
            (Some(line), Some(batch)) if line.examples_per_s > 0.0 => Some(batch as f64 / line.examples_per_s),
            _ => None,
        };
        let heldout = read_jsonl::<EvalLine>(&dir.join("eval.jsonl"))
            .unwrap_or_default()
            .last()
            .map(|line| (line.step, line.heldout_loss));
        let quiet_for = std::fs::metadata(&metrics_path)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok());
        Self {
            id: id.to_string(),
            phase,
            step: metrics.last().map_or(0, |line| line.step),
            steps,
            loss,
            heldout,
            seconds_per_step,
            quiet_for,
        }
    }

    /// Seconds until this run ends at its current pace; 0 when it has ended.
    fn seconds_left(&self, fallback: Option<(u64, f64)>) -> Option<f64> {
        match self.phase {
            Phase::Completed | Phase::Diverged => Some(0.0),
            Phase::Running | Phase::Waiting => {
                let (steps, pace) = match (self.steps, self.seconds_per_step) {
                    (Some(steps), Some(pace)) => (steps, pace),
                    _ => {
                        let (steps, pace) = fallback?;
                        (self.steps.unwrap_or(steps), self.seconds_per_step.unwrap_or(pace))
                    }
                };
                Some(steps.saturating_sub(self.step) as f64 * pace)
            }
        }
    }
}

/// Every run of one sweep folder, in the manifest's order.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepStatus {
    pub name: String,
    pub runs: Vec<RunProgress>,
}

impl SweepStatus {
    /// Reads the sweep folder `dir` (one with `sweep.json`).
    pub fn read(dir: &Path) -> Result<Self> {
        let manifest: SweepManifest = read_json(&dir.join("sweep.json"))
            .with_context(|| format!("{}: not a sweep folder (no readable sweep.json)", dir.display()))?;
        let runs = manifest.runs.iter().map(|run| RunProgress::read(&run.id, &dir.join(&run.id))).collect();
        Ok(Self { name: manifest.name, runs })
    }

    fn count(&self, phase: Phase) -> usize {
        self.runs.iter().filter(|run| run.phase == phase).count()
    }

    /// The typical run's length and pace (the median over runs that have them), for runs that
    /// have not logged yet.
    fn typical(&self) -> Option<(u64, f64)> {
        let median = |mut values: Vec<f64>| -> Option<f64> {
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied()
        };
        let steps = median(self.runs.iter().filter_map(|run| run.steps.map(|s| s as f64)).collect())?;
        let pace = median(self.runs.iter().filter_map(|run| run.seconds_per_step).collect())?;
        Some((steps as u64, pace))
    }

    /// Seconds until every run has ended, with `processes` training at once (at least the number
    /// running now): the work left at each run's pace, shared among the processes. `None` before
    /// any run has logged its pace.
    pub fn seconds_left(&self, processes: usize) -> Option<f64> {
        let typical = self.typical();
        let mut total = 0.0;
        for run in &self.runs {
            total += run.seconds_left(typical)?;
        }
        Some(total / processes.max(self.count(Phase::Running)).max(1) as f64)
    }

    /// The headline: runs done, running and left, and the sweep's ETA.
    pub fn headline(&self, processes: usize) -> String {
        let (completed, diverged) = (self.count(Phase::Completed), self.count(Phase::Diverged));
        let eta = self.seconds_left(processes).map_or("unknown".to_string(), duration);
        format!(
            "sweep {}: {} of {} runs done ({completed} completed, {diverged} diverged), {} running, {} waiting; \
             ETA {eta}",
            self.name,
            completed + diverged,
            self.runs.len(),
            self.count(Phase::Running),
            self.count(Phase::Waiting),
        )
    }

    /// The headline and one line per running run (all runs with `all`): id, step, loss, last
    /// held-out loss, ETA, and how long ago it last logged.
    pub fn table(&self, processes: usize, all: bool) -> Vec<String> {
        let mut lines = vec![self.headline(processes)];
        let typical = self.typical();
        let shown: Vec<&RunProgress> = self.runs.iter().filter(|run| all || run.phase == Phase::Running).collect();
        if shown.is_empty() {
            return lines;
        }
        let width = shown.iter().map(|run| run.id.len()).max().unwrap_or(0).max(3);
        lines.push(format!(
            "  {:<width$}  {:<9}  {:>11}  {:>7}  {:>14}  {:>8}  {}",
            "run", "state", "step", "loss", "held-out", "ETA", "last log"
        ));
        for run in shown {
            let state = match run.phase {
                Phase::Waiting => "waiting",
                Phase::Running => "running",
                Phase::Completed => "completed",
                Phase::Diverged => "diverged",
            };
            let step = match run.steps {
                Some(steps) => format!("{}/{steps}", run.step),
                None => run.step.to_string(),
            };
            let loss = run.loss.map_or("-".to_string(), |loss| format!("{loss:.4}"));
            let heldout = run.heldout.map_or("-".to_string(), |(step, loss)| format!("{loss:.4} @{step}"));
            let eta = match run.phase {
                Phase::Running => run.seconds_left(typical).map_or("-".to_string(), duration),
                _ => "-".to_string(),
            };
            let quiet = match (run.phase, run.quiet_for) {
                (Phase::Waiting, _) | (_, None) => "-".to_string(),
                (_, Some(age)) => format!("{} ago", duration(age.as_secs_f64())),
            };
            lines.push(format!(
                "  {:<width$}  {state:<9}  {step:>11}  {loss:>7}  {heldout:>14}  {eta:>8}  {quiet}",
                run.id
            ));
        }
        lines
    }
}

/// `1h02m`, `4m05s`, `12s`.
pub fn duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0).round() as u64;
    match seconds {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalelong_schema::{JsonlLog, SweepRun, write_json_atomic};

    fn metrics(step: u64, loss: f64) -> MetricsLine {
        // 32 examples a batch at 16 examples/s: 2 s a step.
        MetricsLine { step, loss, lr: 1e-3, grad_norm: 1.0, step_time_s: 1.5, examples_per_s: 16.0 }
    }

    fn write_run(dir: &Path, state: Option<RunState>, logged: &[(u64, f64)]) {
        std::fs::create_dir_all(dir).unwrap();
        let config = RunConfig { steps: 100, batch_size: 32, ..RunConfig::default() };
        write_json_atomic(&dir.join("config.json"), &config).unwrap();
        if let Some(state) = state {
            Status { state, step: logged.last().map_or(0, |l| l.0), message: None }.write(dir).unwrap();
        }
        let lines: Vec<MetricsLine> = logged.iter().map(|&(step, loss)| metrics(step, loss)).collect();
        JsonlLog::open(&dir.join("metrics.jsonl")).unwrap().append(&lines).unwrap();
    }

    /// Three runs (completed, running at step 40, waiting): counts, per-run ETA and the sweep's ETA
    /// from the logged pace, and the table's running line.
    #[test]
    fn a_sweep_folder_reads_as_done_running_and_waiting() {
        let dir = std::env::temp_dir().join(format!("scalelong-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ids = ["a_seed0", "a_seed1", "a_seed2"];
        let manifest = SweepManifest {
            name: "demo".into(),
            base_config: None,
            axes: toml::Table::new(),
            runs: ids.iter().map(|id| SweepRun { id: id.to_string(), overrides: toml::Table::new() }).collect(),
            analysis: Default::default(),
        };
        write_json_atomic(&dir.join("sweep.json"), &manifest).unwrap();
        write_run(&dir.join(ids[0]), Some(RunState::Completed), &[(50, 0.5), (100, 0.3)]);
        write_run(&dir.join(ids[1]), Some(RunState::Running), &[(10, 0.9), (20, 0.7), (30, 0.6), (40, 0.5)]);

        let status = SweepStatus::read(&dir).unwrap();
        let phases: Vec<Phase> = status.runs.iter().map(|run| run.phase).collect();
        assert_eq!(phases, [Phase::Completed, Phase::Running, Phase::Waiting]);
        let running = &status.runs[1];
        assert_eq!((running.step, running.steps), (40, Some(100)));
        assert!((running.loss.unwrap() - 0.675).abs() < 1e-12, "mean of the logged losses");
        assert_eq!(running.seconds_per_step, Some(2.0));
        // Running: 60 steps left at 2 s; waiting: 100 steps at the typical pace; on 2 processes.
        assert_eq!(status.seconds_left(2), Some((60.0 * 2.0 + 100.0 * 2.0) / 2.0));
        let table = status.table(2, false);
        assert_eq!(table[0], "sweep demo: 1 of 3 runs done (1 completed, 0 diverged), 1 running, 1 waiting; ETA 2m40s");
        assert_eq!(table.len(), 3, "headline, header and the one running run: {table:?}");
        assert!(table[2].contains("a_seed1") && table[2].contains("40/100") && table[2].contains("2m00s"), "{table:?}");
        assert_eq!(status.table(2, true).len(), 5, "every run with --all");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_without_a_manifest_is_named() {
        let error = SweepStatus::read(Path::new("/nonexistent/sweep")).unwrap_err();
        assert!(format!("{error:#}").contains("/nonexistent/sweep: not a sweep folder"), "{error:#}");
    }

    #[test]
    fn durations_read_as_clock_time() {
        assert_eq!(duration(12.4), "12s");
        assert_eq!(duration(245.0), "4m05s");
        assert_eq!(duration(3720.0), "1h02m");
    }
}
