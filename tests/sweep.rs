//! `scalelong sweep` and `report` end to end on tiny synthetic runs.

use scalelong_tests::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SWEEP: &str = r#"
name = "tiny"
base = "tiny.toml"
[grid]
strategy = ["1", "cs", "ls"]
seed = [0, 1]
[set]
steps = 6
checkpoint_every = 0
"#;

fn setup(name: &str, steps: u64) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new(name);
    write_config(&dir, "tiny.toml", TINY_CONFIG);
    let sweep = write_config(&dir, "sweep.toml", &SWEEP.replace("steps = 6", &format!("steps = {steps}")));
    (dir, sweep)
}

fn sweep_args<'a>(sweep: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["sweep", sweep.to_str().unwrap(), "--runs", "runs"];
    args.extend_from_slice(extra);
    args
}

/// Each run of the sweep completed, with one metrics line per step: trained exactly once.
fn assert_complete(dir: &TempDir, steps: u64) {
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("runs/tiny/sweep.json")).unwrap()).unwrap();
    let runs = plan["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    for run in runs {
        let folder = dir.join("runs/tiny").join(run["id"].as_str().unwrap());
        let status: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("status.json")).unwrap()).unwrap();
        assert_eq!(status["state"], "completed", "{}", folder.display());
        assert_eq!(
            steps_of(&jsonl(&folder.join("metrics.jsonl"))),
            (1..=steps).collect::<Vec<_>>(),
            "{}",
            folder.display()
        );
    }
}

#[test]
fn a_tiny_sweep_runs_through_the_report() {
    let (dir, sweep) = setup("sweep-report", 6);
    let list = scalelong(&sweep_args(&sweep, &["--list"]), &dir.0);
    let commands = String::from_utf8(list.stdout).unwrap();
    assert_eq!(commands.lines().count(), 6);
    assert!(commands.lines().all(|l| l.starts_with("scalelong train --config") && l.ends_with("--resume")));

    let output = scalelong(&sweep_args(&sweep, &[]), &dir.0);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_complete(&dir, 6);
    let again = scalelong(&sweep_args(&sweep, &[]), &dir.0);
    assert!(stderr(&again).contains("0 trained, 6 already complete"), "{}", stderr(&again));

    let report = scalelong(&["report", "runs/tiny", "--out", "reports/tiny"], &dir.0);
    assert!(report.status.success(), "{}", stderr(&report));
    let html = std::fs::read_to_string(dir.join("reports/tiny/index.html")).unwrap();
    for reference in
        html.split(['"', '\'']).filter(|s| [".png", ".svg", ".csv", ".parquet"].iter().any(|end| s.ends_with(end)))
    {
        assert!(dir.join("reports/tiny").join(reference).exists(), "{reference} referenced but missing");
    }
    // Every figure also as SVG, linked beside its PNG.
    let svgs: Vec<String> = html.split('"').filter(|s| s.ends_with(".svg")).map(str::to_string).collect();
    assert!(svgs.len() >= 3, "{svgs:?}");
    for svg in svgs {
        let text = std::fs::read_to_string(dir.join("reports/tiny").join(&svg)).unwrap();
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"), "{svg} is not an SVG document");
        assert!(html.contains(&svg.replace(".svg", ".png")), "{svg} without its PNG");
    }
    for strategy in ["1", "CS(0.5)", "LS"] {
        assert!(html.contains(strategy), "{strategy} missing from the report");
    }
    let csv = std::fs::read_to_string(dir.join("reports/tiny/summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 6, "one row per run:\n{csv}");
}

/// With --jobs 2 off a terminal, the processes' lines interleave on stderr, each carrying its run's
/// name; the sweep ends with one summary of every run, not one per process; `status` reads the
/// same folder.
#[test]
fn a_sweep_in_processes_names_each_line_and_sums_up_once() {
    let (dir, sweep) = setup("sweep-jobs", 6);
    let output = scalelong(&sweep_args(&sweep, &["--jobs", "2"]), &dir.0);
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    assert_complete(&dir, 6);
    let ids = ["1_seed0", "1_seed1", "cs_seed0", "cs_seed1", "ls_seed0", "ls_seed1"];
    let step_lines: Vec<&str> = log.lines().filter(|line| line.contains(" loss ") && line.contains(" lr ")).collect();
    assert_eq!(step_lines.len(), 6 * 6, "one line per step and run:\n{log}");
    for line in step_lines {
        assert!(ids.iter().any(|id| line.starts_with(&format!("[{id}] step "))), "a line without its run: {line}");
    }
    let summaries: Vec<&str> = log.lines().filter(|line| line.starts_with("sweep tiny")).collect();
    assert_eq!(
        summaries,
        ["sweep tiny: 6 of 6 runs done (6 completed, 0 diverged), 0 running, 0 waiting; ETA 0s"],
        "{log}"
    );

    let status = scalelong(&["status", "runs/tiny", "--all"], &dir.0);
    assert!(status.status.success(), "{}", stderr(&status));
    let table = String::from_utf8(status.stdout).unwrap();
    assert_eq!(table.lines().count(), 1 + 1 + 6, "headline, header, one line per run:\n{table}");
    assert!(table.lines().skip(2).all(|line| line.contains("completed") && line.contains("6/6")), "{table}");
    let missing = scalelong(&["status", "runs/none"], &dir.0);
    assert!(!missing.status.success() && stderr(&missing).contains("runs/none: not a sweep folder"));
}

#[test]
fn a_killed_sweep_finishes_without_redoing_completed_runs() {
    let (dir, sweep) = setup("sweep-kill", 40);
    let mut child =
        Command::new(binary()).args(sweep_args(&sweep, &[])).current_dir(&dir.0).stderr(Stdio::null()).spawn().unwrap();
    let first_done = dir.join("runs/tiny/1_seed0/status.json");
    let started = Instant::now();
    while !std::fs::read_to_string(&first_done).is_ok_and(|s| s.contains("completed")) {
        assert!(started.elapsed() < Duration::from_secs(120), "no run completed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let finished = std::fs::read(dir.join("runs/tiny/1_seed0/metrics.jsonl")).unwrap();

    let output = scalelong(&sweep_args(&sweep, &[]), &dir.0);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("] 1_seed0"), "a completed run was started again");
    assert_eq!(std::fs::read(dir.join("runs/tiny/1_seed0/metrics.jsonl")).unwrap(), finished);
    assert_complete(&dir, 40);
}

#[test]
fn concurrent_processes_share_one_sweep_folder_without_running_a_run_twice() {
    let (dir, sweep) = setup("sweep-shards", 20);
    // Two shards, and a third process over the whole sweep racing both: the per-run lock and the
    // status file keep every run to one trainer.
    let spawn = |extra: &'static [&'static str]| {
        Command::new(binary())
            .args(sweep_args(&sweep, extra))
            .current_dir(&dir.0)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn(&["--shard", "0/2"]), spawn(&["--shard", "1/2"]), spawn(&[])];
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert_complete(&dir, 20);
}

/// A two-run sweep (strategies 1 and CS, seed 0) of `steps` steps; `extra` goes into `[set]`.
fn small_sweep(steps: u64, extra: &str) -> String {
    format!(
        "name = \"tiny\"\nbase = \"tiny.toml\"\n[grid]\nstrategy = [\"1\", \"cs\"]\nseed = [0]\n[set]\nsteps = {steps}\n\
         checkpoint_every = 0\n{extra}\n"
    )
}

fn metrics_of(dir: &TempDir, run: &str) -> Vec<u8> {
    std::fs::read(dir.join(&format!("runs/tiny/{run}/metrics.jsonl"))).unwrap()
}

/// `(loss, grad_norm)` per step of a run.
fn losses(dir: &TempDir, run: &str) -> Vec<(f64, f64)> {
    jsonl(&dir.join(&format!("runs/tiny/{run}/metrics.jsonl")))
        .iter()
        .map(|line| (line["loss"].as_f64().unwrap(), line["grad_norm"].as_f64().unwrap()))
        .collect()
}

fn replaced_folders(dir: &TempDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("runs/tiny"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".replaced-"))
        .collect();
    names.sort();
    names
}

#[test]
fn an_edited_sweep_refuses_its_changed_runs_and_retrains_only_those_with_the_flag() {
    let dir = TempDir::new("sweep-edited");
    write_config(&dir, "tiny.toml", TINY_CONFIG);
    let sweep = write_config(&dir, "sweep.toml", &small_sweep(4, ""));
    let first = scalelong(&sweep_args(&sweep, &[]), &dir.0);
    assert!(first.status.success(), "{}", stderr(&first));
    let (before_1, before_cs) = (metrics_of(&dir, "1_seed0"), metrics_of(&dir, "cs_seed0"));
    let manifest = std::fs::read(dir.join("runs/tiny/sweep.json")).unwrap();

    // Edited: every run now differs in batch_size. Refused, each run named with the key.
    write_config(&dir, "sweep.toml", &small_sweep(4, "batch_size = 4"));
    let refused = scalelong(&sweep_args(&sweep, &[]), &dir.0);
    let message = stderr(&refused);
    assert!(!refused.status.success(), "a changed sweep must be refused:\n{message}");
    for line in ["1_seed0: batch_size differ", "cs_seed0: batch_size differ", "--retrain-changed"] {
        assert!(message.contains(line), "{line:?} missing from:\n{message}");
    }
    // The same with --jobs 2 (checked before any process starts).
    let refused_jobs = scalelong(&sweep_args(&sweep, &["--jobs", "2"]), &dir.0);
    assert!(!refused_jobs.status.success() && stderr(&refused_jobs).contains("1_seed0: batch_size differ"));
    assert_eq!(metrics_of(&dir, "1_seed0"), before_1, "nothing overwritten");
    assert_eq!(metrics_of(&dir, "cs_seed0"), before_cs, "nothing overwritten");
    assert_eq!(std::fs::read(dir.join("runs/tiny/sweep.json")).unwrap(), manifest, "sweep.json untouched");
    assert!(replaced_folders(&dir).is_empty());

    // The flag on one shard: only its run is moved aside (kept whole) and trained again.
    let one = scalelong(&sweep_args(&sweep, &["--retrain-changed", "--shard", "0/2"]), &dir.0);
    assert!(one.status.success(), "{}", stderr(&one));
    let replaced = replaced_folders(&dir);
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert!(replaced[0].starts_with("1_seed0.replaced-"), "{replaced:?}");
    assert_eq!(std::fs::read(dir.join("runs/tiny").join(&replaced[0]).join("metrics.jsonl")).unwrap(), before_1);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("runs/tiny/1_seed0/config.json")).unwrap()).unwrap();
    assert_eq!(config["batch_size"], 4);
    assert_eq!(metrics_of(&dir, "cs_seed0"), before_cs, "the other shard's run is left alone");

    // Now only cs_seed0 differs: the refusal names it alone; the flag retrains it alone.
    let refused = scalelong(&sweep_args(&sweep, &[]), &dir.0);
    let message = stderr(&refused);
    assert!(!refused.status.success() && message.contains("cs_seed0: batch_size differ"), "{message}");
    assert!(!message.contains("1_seed0:"), "an up-to-date run was named:\n{message}");
    let rest = scalelong(&sweep_args(&sweep, &["--retrain-changed"]), &dir.0);
    let message = stderr(&rest);
    assert!(rest.status.success(), "{message}");
    assert!(message.contains("1 trained, 1 already complete") && message.contains("1 retrained"), "{message}");
    assert_eq!(replaced_folders(&dir).len(), 2);
    let report = scalelong(&["report", "runs/tiny", "--out", "reports/tiny"], &dir.0);
    assert!(report.status.success(), "{}", stderr(&report));
    let csv = std::fs::read_to_string(dir.join("reports/tiny/summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2, "the replaced folders stay out of the report:\n{csv}");
}

#[test]
fn more_steps_extend_a_finished_sweep_exactly_under_a_constant_rate_and_are_refused_under_cosine() {
    let dir = TempDir::new("sweep-extended");
    write_config(&dir, "tiny.toml", TINY_CONFIG);
    let sweep = write_config(&dir, "sweep.toml", &small_sweep(4, ""));
    let short = scalelong(&sweep_args(&sweep, &[]), &dir.0);
    assert!(short.status.success(), "{}", stderr(&short));
    write_config(&dir, "sweep.toml", &small_sweep(7, ""));
    let extended = scalelong(&sweep_args(&sweep, &[]), &dir.0);
    let message = stderr(&extended);
    assert!(extended.status.success(), "{message}");
    assert!(message.contains("extending from step 4 to 7") && message.contains("2 extended"), "{message}");
    assert!(replaced_folders(&dir).is_empty());

    // The same sweep trained to 7 steps from the start: the same losses and gradients, bit for bit.
    let fresh = TempDir::new("sweep-extended-fresh");
    write_config(&fresh, "tiny.toml", TINY_CONFIG);
    let fresh_sweep = write_config(&fresh, "sweep.toml", &small_sweep(7, ""));
    let output = scalelong(&sweep_args(&fresh_sweep, &[]), &fresh.0);
    assert!(output.status.success(), "{}", stderr(&output));
    for run in ["1_seed0", "cs_seed0"] {
        assert_eq!(losses(&dir, run), losses(&fresh, run), "{run}: extension differs from a 7-step run");
        assert_eq!(losses(&dir, run).len(), 7);
    }

    // Under a cosine decay the rates depend on the total steps: a longer sweep is a changed one.
    let cosine = "optimizer = { schedule = { kind = \"cosine\", final_fraction = 0.1 } }";
    write_config(&dir, "sweep.toml", &small_sweep(7, cosine));
    let retrained = scalelong(&sweep_args(&sweep, &["--retrain-changed"]), &dir.0);
    assert!(retrained.status.success(), "{}", stderr(&retrained));
    write_config(&dir, "sweep.toml", &small_sweep(9, cosine));
    let refused = scalelong(&sweep_args(&sweep, &[]), &dir.0);
    let message = stderr(&refused);
    assert!(!refused.status.success(), "{message}");
    assert!(message.contains("1_seed0: steps differ") && message.contains("cosine"), "{message}");
}

#[test]
fn sweep_set_overrides_every_run_but_not_a_grid_axis() {
    let (dir, sweep) = setup("sweep-set", 6);
    let list =
        scalelong(&sweep_args(&sweep, &["--list", "--set", "batch_size=4", "--set", "optimizer.lr=0.003"]), &dir.0);
    assert!(list.status.success(), "{}", stderr(&list));
    let commands = String::from_utf8(list.stdout).unwrap();
    assert_eq!(commands.lines().count(), 6);
    for line in commands.lines() {
        assert!(
            line.contains(" --set batch_size=4 --set optimizer.lr=0.003 --set ") && line.contains("strategy="),
            "{line}"
        );
    }
    for axis in ["strategy=ls", "seed=3"] {
        let refused = scalelong(&sweep_args(&sweep, &["--list", "--set", axis]), &dir.0);
        assert!(!refused.status.success() && stderr(&refused).contains("is an axis"), "{}", stderr(&refused));
    }
}
