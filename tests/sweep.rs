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
        html.split(['"', '\'']).filter(|s| s.ends_with(".png") || s.ends_with(".csv") || s.ends_with(".parquet"))
    {
        assert!(dir.join("reports/tiny").join(reference).exists(), "{reference} referenced but missing");
    }
    for strategy in ["1", "CS(0.5)", "LS"] {
        assert!(html.contains(strategy), "{strategy} missing from the report");
    }
    let csv = std::fs::read_to_string(dir.join("reports/tiny/summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 6, "one row per run:\n{csv}");
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
