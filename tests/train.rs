//! `scalelong train` end to end: outputs, exact resume, SIGKILL, bad input (tiny synthetic runs).

use scalelong_tests::*;
use std::time::{Duration, Instant};

#[test]
fn trains_writes_everything_and_resumes_exactly() {
    let dir = TempDir::new("resume");
    let config = write_config(&dir, "tiny.toml", TINY_CONFIG);

    let whole = train(&dir, &config, "whole", &[]);
    assert!(whole.status.success(), "{}", stderr(&whole));
    let run = dir.join("whole");
    for file in [
        "config.json",
        "status.json",
        "metrics.jsonl",
        "diagnostics.jsonl",
        "eval.jsonl",
        "samples/step_0000008.png",
        "checkpoint/model.bpk",
        "checkpoint/ema.bpk",
        "checkpoint/optimizer.bin",
        "checkpoint/state.json",
    ] {
        assert!(run.join(file).exists(), "{file} missing");
    }
    let png = std::fs::read(run.join("samples/step_0000008.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let metrics = jsonl(&run.join("metrics.jsonl"));
    assert_eq!(steps_of(&metrics), (1..=8).collect::<Vec<_>>());
    for key in ["loss", "lr", "grad_norm", "step_time_s", "examples_per_s"] {
        assert!(metrics.iter().all(|m| m[key].as_f64().is_some_and(f64::is_finite)), "{key}");
    }
    let evals = jsonl(&run.join("eval.jsonl"));
    assert_eq!(steps_of(&evals), vec![3, 6, 8]);

    // Stop after 3 steps, then resume to 8: the same losses, step for step.
    let first = train(&dir, &config, "split", &["--set", "steps=3"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let again = train(&dir, &config, "split", &[]);
    assert!(
        !again.status.success() && stderr(&again).contains("--resume"),
        "a second start without --resume must refuse"
    );
    let changed = train(&dir, &config, "split", &["--resume", "--set", "optimizer.lr=0.01", "--set", "batch_size=4"]);
    assert!(
        !changed.status.success() && stderr(&changed).contains("batch_size, optimizer.lr differ"),
        "a resume with another config must refuse, naming the keys: {}",
        stderr(&changed)
    );
    let resumed = train(&dir, &config, "split", &["--resume"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let split = jsonl(&dir.join("split/metrics.jsonl"));
    assert_eq!(steps_of(&split), (1..=8).collect::<Vec<_>>(), "metrics continue from the checkpoint's step");
    let losses = |m: &[serde_json::Value]| m.iter().map(|l| l["loss"].as_f64().unwrap()).collect::<Vec<_>>();
    assert_eq!(losses(&split), losses(&metrics), "resume is bit-identical on the flex backend");
    let diag = |name: &str| std::fs::read_to_string(dir.join(name).join("diagnostics.jsonl")).unwrap();
    assert_eq!(diag("split"), diag("whole"), "diagnostics too");
}

#[test]
fn a_killed_run_resumes_from_its_last_checkpoint_with_no_corrupt_file() {
    let dir = TempDir::new("kill");
    let text =
        TINY_CONFIG.replace("steps = 8", "steps = 100000").replace("checkpoint_every = 3", "checkpoint_every = 4");
    let config = write_config(&dir, "long.toml", &text);
    let out = dir.join("run");
    let mut child = std::process::Command::new(binary())
        .args(["train", "--config", config.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !(out.join("checkpoint/state.json").exists() && jsonl_len(&out.join("metrics.jsonl")) >= 10) {
        assert!(started.elapsed() < Duration::from_secs(120), "the run made no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Every complete file parses; a torn last log line is the only damage allowed.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint/state.json")).unwrap()).unwrap();
    let saved = state["step"].as_u64().unwrap();
    assert!(saved >= 4 && saved.is_multiple_of(4));
    serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(out.join("status.json")).unwrap()).unwrap();
    serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();

    let target = saved + 6;
    let resumed = train(&dir, &config, "run", &["--resume", "--set", &format!("steps={target}")]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(steps_of(&jsonl(&out.join("metrics.jsonl"))), (1..=target).collect::<Vec<_>>());
    let diag_steps = steps_of(&jsonl(&out.join("diagnostics.jsonl")));
    assert!(diag_steps.windows(2).all(|w| w[0] <= w[1]), "no step recorded twice out of order");
    assert!(leftover_tmp_files(&out).is_empty(), "{:?}", leftover_tmp_files(&out));
}

fn jsonl_len(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

/// Runs `train` expecting failure; returns stderr and checks nothing was left half-written.
fn fails(dir: &TempDir, config_text: &str, out: &str, extra: &[&str]) -> String {
    let config = write_config(dir, &format!("{out}.toml"), config_text);
    let output = train(dir, &config, out, extra);
    assert!(!output.status.success(), "{out}: should fail");
    assert!(leftover_tmp_files(&dir.0).is_empty());
    stderr(&output)
}

#[test]
fn bad_inputs_fail_clearly_and_leave_nothing_half_written() {
    let dir = TempDir::new("bad");
    let err = fails(&dir, &TINY_CONFIG.replace("strategy = \"ls\"", "strategy = { cs = 1.5 }"), "kappa", &[]);
    assert!(err.contains("kappa") && err.contains("1.5"), "{err}");
    assert!(!dir.join("kappa").exists(), "a config error creates no run folder");

    let err = fails(&dir, &format!("{TINY_CONFIG}\nbatchsize = 4\n"), "unknown", &[]);
    assert!(err.contains("batchsize"), "{err}");
    let err = fails(&dir, TINY_CONFIG, "typo", &["--set", "model.dept=3"]);
    assert!(err.contains("model.dept"), "{err}");
    let err = fails(&dir, TINY_CONFIG, "wrongtype", &["--set", "steps=\"many\""]);
    assert!(err.contains("steps") || err.contains("integer"), "{err}");

    let missing = TINY_CONFIG.replace(
        r#"dataset = { kind = "synthetic", n = 64, channels = 1, size = 16, seed = 1 }"#,
        r#"dataset = { kind = "idx", images = "nowhere/train-images.gz", test_images = "nowhere/t10k.gz" }"#,
    );
    let err = fails(&dir, &missing, "missing", &[]);
    assert!(err.contains("nowhere/train-images.gz"), "{err}");

    // A corrupt and a truncated IDX file.
    std::fs::write(dir.join("corrupt.idx"), b"this is not an idx file at all").unwrap();
    let mut truncated = vec![0u8, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 16, 0, 0, 0, 16];
    truncated.extend(vec![7u8; 100]);
    std::fs::write(dir.join("truncated.idx"), truncated).unwrap();
    for (name, expected) in [("corrupt.idx", "magic"), ("truncated.idx", "truncated")] {
        let text = missing.replace("nowhere/train-images.gz", name);
        let err = fails(&dir, &text, name, &[]);
        assert!(err.contains(name) && err.to_lowercase().contains(expected), "{err}");
    }

    // A corrupt checkpoint.
    let config = write_config(&dir, "ok.toml", TINY_CONFIG);
    assert!(train(&dir, &config, "ckpt", &["--set", "steps=3"]).status.success());
    std::fs::write(dir.join("ckpt/checkpoint/model.bpk"), b"garbage").unwrap();
    let output = train(&dir, &config, "ckpt", &["--resume"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("model.bpk"), "{}", stderr(&output));
}

#[test]
fn a_huge_learning_rate_marks_the_run_diverged_and_keeps_the_last_good_checkpoint() {
    let dir = TempDir::new("diverge");
    let config = write_config(&dir, "tiny.toml", &TINY_CONFIG.replace("steps = 8", "steps = 400"));
    let output = train(&dir, &config, "run", &["--set", "optimizer.lr=1e30", "--set", "warmup_steps=0"]);
    assert_eq!(output.status.code(), Some(3), "exit status 3 means diverged: {}", stderr(&output));
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/status.json")).unwrap()).unwrap();
    assert_eq!(status["state"], "diverged");
    let step = status["step"].as_u64().unwrap();
    assert!(step >= 1 && status["message"].as_str().unwrap().contains("non-finite"));
    if step > 3 {
        assert!(dir.join("run/checkpoint/state.json").exists(), "the last good checkpoint is kept");
    }
}

#[test]
fn recording_diagnostics_every_step_changes_no_loss() {
    let dir = TempDir::new("observe");
    let config = write_config(&dir, "tiny.toml", TINY_CONFIG);
    let with = train(&dir, &config, "with", &["--set", "diagnostics.every=1"]);
    let without = train(&dir, &config, "without", &["--set", "diagnostics.every=0"]);
    assert!(with.status.success() && without.status.success());
    let losses = |run: &str| {
        jsonl(&dir.join(run).join("metrics.jsonl")).iter().map(|m| m["loss"].as_f64().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(losses("with"), losses("without"), "bit-identical on the flex backend");
    assert!(jsonl(&dir.join("with/diagnostics.jsonl")).len() > 8);
    assert!(std::fs::read_to_string(dir.join("without/diagnostics.jsonl")).unwrap().is_empty());
}

#[test]
fn skip_edits_run_at_the_end_of_training_and_again_from_the_command_line() {
    let dir = TempDir::new("skip-edits");
    let config = write_config(&dir, "tiny.toml", TINY_CONFIG);
    let edits = r#"eval.skip_edits=[{ kind = "skip-tuning", rho_outer = 1.0, rho_inner = 0.5 }, { kind = "freeu" }, { kind = "importance", factors = [0.0, 0.5] }]"#;
    let out = train(&dir, &config, "run", &["--set", "strategy=mp-cat", "--set", edits]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = dir.join("run");
    let lines = jsonl(&run.join("skip_eval.jsonl"));
    // Unedited, the ramp, FreeU, then 2 LSCs x 2 factors.
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["none", "skip-tuning", "freeu", "importance", "importance", "importance", "importance"]);
    assert_eq!(lines[3]["setting"], "LSC 1 x 0");
    // The unedited line is the final evaluation itself: same images, same noise.
    let last_eval = jsonl(&run.join("eval.jsonl")).pop().unwrap();
    assert_eq!(lines[0]["heldout_loss"], last_eval["heldout_loss"]);
    let losses: Vec<f64> = lines.iter().map(|l| l["heldout_loss"].as_f64().unwrap()).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[1..].iter().all(|l| *l != losses[0]), "every edit changes the network: {losses:?}");

    // The command line replaces the file with the settings it is given, the same numbers for the same settings.
    let file = write_config(&dir, "edits.toml", "skip_edits = [{ kind = \"importance\", factors = [0.0] }]\n");
    let again = scalelong(&["skip-eval", run.to_str().unwrap(), "--edits", file.to_str().unwrap()], dir.path());
    assert!(again.status.success(), "{}", stderr(&again));
    let replaced = jsonl(&run.join("skip_eval.jsonl"));
    assert_eq!(replaced.len(), 1 + 2);
    assert_eq!(replaced[0], lines[0]);
    assert_eq!(replaced[1], lines[3], "LSC 1 x 0 evaluates to the same line");
    assert!(leftover_tmp_files(&run).is_empty());

    let bad = write_config(&dir, "bad.toml", "skip_edits = [{ kind = \"importance\", factors = [] }]\n");
    let refused = scalelong(&["skip-eval", run.to_str().unwrap(), "--edits", bad.to_str().unwrap()], dir.path());
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("bad.toml: skip_edits[0].factors"), "{}", stderr(&refused));
    assert_eq!(jsonl(&run.join("skip_eval.jsonl")), replaced, "a refused command changes nothing");
}

/// Grey pixels of a PNG, with its width and height.
fn grey_png(path: &std::path::Path) -> (Vec<u8>, u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    pixels.truncate(info.buffer_size());
    (pixels, info.width, info.height)
}

#[test]
fn sample_draws_a_run_unedited_and_under_each_edit_from_the_same_noise() {
    let dir = TempDir::new("sample");
    let config = write_config(&dir, "tiny.toml", TINY_CONFIG);
    let out = train(&dir, &config, "run", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    write_config(
        &dir,
        "edits.toml",
        "skip_edits = [{ kind = \"skip-tuning\", rho_outer = 1.0, rho_inner = 0.0 }, { kind = \"freeu\" }]\n",
    );
    let sample = |seed: &str, out: &str| {
        let args = ["sample", "run", "--edits", "edits.toml", "--count", "3", "--seed", seed, "--out", out];
        let output = scalelong(&args, dir.path());
        assert!(output.status.success(), "{}", stderr(&output));
        grey_png(&dir.join(out))
    };
    let (pixels, width, height) = sample("7", "a.png");
    // 3 samples of 16x16 a row, 3 rows (unedited, the ramp, FreeU), 2-pixel gaps.
    assert_eq!((width, height), (3 * 18 + 2, 3 * 18 + 2));
    let rows = std::fs::read_to_string(dir.join("a.txt")).unwrap();
    assert_eq!(rows.lines().collect::<Vec<_>>(), ["unedited", "rho 1 -> 0", "b 1.2/1.4 s 0.9/0.2 threshold 1"]);
    let row =
        |pixels: &[u8], r: usize| pixels[(2 + r * 18) * width as usize..(2 + r * 18 + 16) * width as usize].to_vec();
    assert_ne!(row(&pixels, 0), row(&pixels, 1), "the ramp to 0 changes the samples");
    assert_eq!(sample("7", "b.png").0, pixels, "one seed, the same grid");
    assert_ne!(row(&sample("8", "c.png").0, 0), row(&pixels, 0), "another seed, other samples");
    assert!(leftover_tmp_files(dir.path()).is_empty());

    let missing = scalelong(&["sample", "nowhere"], dir.path());
    assert!(!missing.status.success() && stderr(&missing).contains("nowhere"), "{}", stderr(&missing));
}
