//! `scalelong frontier` end to end on tiny synthetic runs: each cell bracketed, every probe kept as
//! a run folder of the sweep, a second start reading the probes back, a lost probe trained again
//! alone, and the report reading `frontier.json`.

use scalelong_tests::*;
use std::collections::BTreeMap;

/// Strategies 1 and CS at seed 0, searched between a rate the tiny network learns at in a few steps
/// and one it diverges or collapses at, in two rungs (resolution 100 over a 10^4 interval).
const FRONTIER: &str = r#"
name = "tiny"
base = "tiny.toml"
[grid]
strategy = ["1", "cs"]
seed = [0]
[frontier]
low = 3e-3
high = 30.0
resolution = 100.0
[set]
steps = 40
checkpoint_every = 0
"diagnostics.every" = 0
"optimizer.schedule" = { kind = "constant" }
"#;

fn frontier_args(file: &std::path::Path, extra: &[&'static str]) -> Vec<String> {
    let mut args: Vec<String> = ["frontier", file.to_str().unwrap(), "--runs", "runs"].map(String::from).to_vec();
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args
}

fn run(dir: &TempDir, args: &[String]) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = scalelong(&args, &dir.0);
    assert!(output.status.success(), "{}", stderr(&output));
    output
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Every probe's `metrics.jsonl`, by run folder.
fn probe_logs(dir: &TempDir) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("runs/tiny"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("config.json").is_file())
        .map(|path| {
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(path.join("metrics.jsonl")).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_tiny_frontier_brackets_each_cell_keeps_every_probe_and_resumes() {
    let dir = TempDir::new("frontier");
    write_config(&dir, "tiny.toml", TINY_CONFIG);
    let file = write_config(&dir, "frontier.toml", FRONTIER);
    run(&dir, &frontier_args(&file, &["--jobs", "2"]));

    let frontier = read_json(&dir.join("runs/tiny/frontier.json"));
    assert_eq!(frontier["step_ratio"].as_f64().unwrap(), 100.0);
    let brackets = frontier["brackets"].as_array().unwrap();
    let cells: Vec<&str> = brackets.iter().map(|b| b["cell"].as_str().unwrap()).collect();
    assert_eq!(cells, ["1_seed0", "cs_seed0"]);
    // sweep.json lists exactly the probes, cell by cell in the order they ran, and the rates as an axis.
    let manifest = read_json(&dir.join("runs/tiny/sweep.json"));
    let listed: Vec<&str> = manifest["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    let probes: Vec<&str> =
        brackets.iter().flat_map(|b| b["probes"].as_array().unwrap().iter().map(|p| p.as_str().unwrap())).collect();
    assert_eq!(listed, probes);
    assert!(manifest["axes"]["optimizer.lr"].is_array());

    // The report judges every probe; each bracket is a trained probe next to a failed one (or a
    // censored end), with every failed probe kept.
    let report = scalelong(&["report", "runs/tiny", "--out", "reports/tiny"], &dir.0);
    assert!(report.status.success(), "{}", stderr(&report));
    let csv = std::fs::read_to_string(dir.join("reports/tiny/summary.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (id_column, status_column) = (column("run_id"), column("status"));
    let status: BTreeMap<String, String> = csv
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[id_column].to_string(), fields[status_column].to_string())
        })
        .collect();
    assert_eq!(status.len(), probes.len(), "one row per probe:\n{csv}");
    let probe_at = |bracket: &serde_json::Value, lr: f64| {
        let id = bracket["probes"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).find(|id| {
            let config = read_json(&dir.join("runs/tiny").join(id).join("config.json"));
            config["optimizer"]["lr"].as_f64() == Some(lr)
        });
        id.unwrap_or_else(|| panic!("no probe at {lr} in {bracket}")).to_string()
    };
    let mut failed_probes = 0;
    for bracket in brackets {
        let censored = bracket["censored"].as_str();
        match bracket["largest_trained_lr"].as_f64() {
            Some(lr) => assert_eq!(status[&probe_at(bracket, lr)], "trained", "{bracket}"),
            None => assert_eq!(censored, Some("failed_at_low"), "{bracket}"),
        }
        match bracket["smallest_failed_lr"].as_f64() {
            Some(lr) => {
                let failed = &status[&probe_at(bracket, lr)];
                assert!(failed.starts_with("collapsed") || failed.starts_with("diverged"), "{failed}: {bracket}");
            }
            None => assert_eq!(censored, Some("trained_at_high"), "{bracket}"),
        }
        failed_probes +=
            bracket["probes"].as_array().unwrap().iter().filter(|id| status[id.as_str().unwrap()] != "trained").count();
    }
    assert!(failed_probes > 0, "the failed probes are kept:\n{csv}");
    assert!(brackets.iter().any(|b| b["largest_trained_lr"].is_f64()), "some probe trained:\n{csv}");
    let html = std::fs::read_to_string(dir.join("reports/tiny/index.html")).unwrap();
    assert!(html.contains("bracketed by bisection"), "the report names the bracket");

    // Started again: every probe is read back, none trained.
    let logs = probe_logs(&dir);
    let again = run(&dir, &frontier_args(&file, &[]));
    assert!(stderr(&again).contains(&format!("0 probes trained, {} read back", probes.len())), "{}", stderr(&again));
    assert_eq!(probe_logs(&dir), logs);

    // A search interrupted before its last probe: only that probe is trained again, and the
    // search ends where it did.
    let last = *probes.last().unwrap();
    std::fs::remove_dir_all(dir.join("runs/tiny").join(last)).unwrap();
    std::fs::remove_file(dir.join("runs/tiny/frontier.json")).unwrap();
    let resumed = run(&dir, &frontier_args(&file, &[]));
    assert!(
        stderr(&resumed).contains(&format!("1 probes trained, {} read back", probes.len() - 1)),
        "{}",
        stderr(&resumed)
    );
    assert_eq!(read_json(&dir.join("runs/tiny/frontier.json")), frontier);
    let mut relogged = probe_logs(&dir);
    assert!(relogged.remove(last).is_some(), "{last} trained again");
    assert_eq!(relogged, logs.into_iter().filter(|(id, _)| id != last).collect(), "the other probes untouched");
}

#[test]
fn a_frontier_file_that_sets_the_learning_rate_or_has_no_bracket_is_refused() {
    let dir = TempDir::new("frontier-refused");
    write_config(&dir, "tiny.toml", TINY_CONFIG);
    for (text, expected) in [
        (FRONTIER.replace("seed = [0]", "seed = [0]\n\"optimizer.lr\" = [1e-3, 2e-3]"), "grid: sets optimizer.lr"),
        (FRONTIER.replace("resolution = 100.0", "resolution = 1.0"), "[frontier] resolution = 1"),
        (FRONTIER.replace("low = 3e-3", "low = 300.0"), "expected 0 < low < high"),
        (FRONTIER.replace("resolution = 100.0", "resolution = 100.0\nsteps = 3"), "unknown field `steps`"),
        (FRONTIER.replace("[frontier]", "[bracket]"), "no [frontier] section"),
    ] {
        let file = write_config(&dir, "frontier.toml", &text);
        let output = scalelong(&["frontier", file.to_str().unwrap(), "--runs", "runs"], &dir.0);
        assert!(!output.status.success(), "{expected}: accepted");
        assert!(stderr(&output).contains(expected), "{expected:?} not in {}", stderr(&output));
        assert!(!dir.join("runs/tiny").exists(), "{expected}: nothing may be written");
    }
}
